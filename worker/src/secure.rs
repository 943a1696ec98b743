//! The worker's side of secure aggregation: drives a `confide_secagg::Client` with the
//! coordinator's relayed messages. (Filled in once `confide-secagg` lands.)

use confide_proto::v1::{self as pb, federation_client::FederationClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::daemon::Worker;
use crate::tasks::Failure;
use crate::transport::TaskAddress;

/// Contributes `vector` through secure aggregation.
pub async fn contribute(
    _worker: &Worker,
    _client: &mut FederationClient<Channel>,
    _addr: &TaskAddress,
    _setup: &pb::AggregationSetup,
    _vector: Vec<f64>,
    _relays: mpsc::Receiver<Vec<u8>>,
) -> Result<(), Failure> {
    Err(Failure::new("protocol", "secure aggregation is not built yet"))
}
