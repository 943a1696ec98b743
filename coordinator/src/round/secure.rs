//! Adapter between a [`super::phase::Phase`] and the secure-aggregation server state machine.
//! (Filled in once `confide-secagg` lands.)

use std::time::Instant;

use confide_core::job::JobSpec;
use confide_proto::v1 as pb;

use super::phase::PhaseError;
use crate::hub::WorkerInfo;

/// What a phase's vector holds, which decides its fixed-point encoding.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// Preprocessing sums, sums of squares and counts.
    Statistics,
    /// Sample-weighted model update followed by Σ weight and Σ weight·loss.
    WeightedUpdate,
    /// Histogram counts and metric sums.
    Counts,
}

/// Secure summation of one phase.
#[derive(Debug)]
pub struct SecurePhase {}

impl SecurePhase {
    /// Sets up the server side and one [`pb::AggregationSetup`] per participant.
    pub fn new(
        _spec: &JobSpec,
        _participants: &[String],
        _workers: &[WorkerInfo],
        _vector_len: usize,
        _encoding: Encoding,
        _now: Instant,
    ) -> Result<(Self, Vec<(String, pb::AggregationSetup)>), String> {
        Err("secure aggregation is not built yet".into())
    }
    pub fn handle_message(&mut self, _from: &str, _bytes: &[u8], _now: Instant) -> Result<(), PhaseError> {
        Err(PhaseError::Over)
    }
    pub fn drop_participant(&mut self, _worker: &str, _now: Instant) {}
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    pub fn handle_timeout(&mut self, _now: Instant) {}
    pub fn abort_at_deadline(&mut self) {}
    pub fn poll_transmit(&mut self) -> Option<(String, Vec<u8>)> {
        None
    }
    pub fn take_dropped(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
    pub fn take_contributed(&mut self) -> Vec<String> {
        Vec::new()
    }
    pub fn take_result(&mut self) -> Option<Result<Vec<f64>, String>> {
        None
    }
}
