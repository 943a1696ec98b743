//! The worker's side of secure aggregation: drives a `confide_secagg::Client` with the
//! coordinator's relayed messages while the local contribution is being computed.
//!
//! The client advertises its keys as soon as the task arrives (so key exchange overlaps local
//! training), masks the vector once it is ready, and sends unmasking shares only if the bank's
//! policy holds: at least `min_participants` institutions (the larger of the job's and this
//! bank's own floor), never fewer.

use std::future::Future;
use std::time::Instant;

use confide_proto::v1::{self as pb, Contribution, contribution::Body, federation_client::FederationClient};
use confide_secagg::{Client, ClientEvent, ClientMessage, ClientPolicy, ServerMessage};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::fault::Fault;
use crate::tasks::Failure;
use crate::transport::{self, TaskAddress};

/// What to do with values outside the session's fixed-point range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    /// Clip them (model updates: bounded-update FedAvg; the count is logged).
    Clip,
    /// Refuse the task (statistics and metrics must be exact).
    Fail,
}

async fn send(client: &mut FederationClient<Channel>, addr: &TaskAddress, msg: ClientMessage) -> Result<(), Failure> {
    let c = Contribution { body: Some(Body::Secagg(msg.encode())) };
    transport::submit(client, addr, &c).await.map_err(|e| Failure::new("protocol", e))
}

/// Who is contributing: the institution's identity and its own rules.
#[derive(Debug, Clone, Copy)]
pub struct Contributor<'a> {
    /// The institution's long-term signing key.
    pub identity: &'a ed25519_dalek::SigningKey,
    /// The bank's floor on participants per round.
    pub min_participants: u32,
    /// A crash drill, if configured.
    pub fault: Option<&'a Fault>,
    /// The federation CA (with mutual TLS): every peer key must be bound by a certificate it signed.
    pub federation_ca: Option<&'a std::path::Path>,
}

/// The coordinator relays the peers' keys; only keys bound by certificates the federation CA
/// signed, for the institution they are listed as, count. Anything else is refused before a
/// single key or share leaves this bank.
pub fn check_peer_bindings(ca: &std::path::Path, secure: &pb::SecureAggregationSetup) -> Result<(), Failure> {
    for peer in &secure.peers {
        let bound = confide_tls::verify_institution_key(ca, &peer.certificate, &peer.institution_id)
            .map_err(|e| Failure::new("policy", format!("refusing secure aggregation: peer {}: {e}", peer.participant_id)))?;
        if bound.as_slice() != peer.verifying_key.as_slice() {
            return Err(Failure::new(
                "policy",
                format!("refusing secure aggregation: the key given for `{}` is not the one in its certificate", peer.institution_id),
            ));
        }
    }
    Ok(())
}

/// When the protocol ends early while the local computation still runs, the computation's own
/// failure (a data error naming file and line, say) is the more useful report: wait briefly
/// for it, and fall back to the protocol's reason.
async fn prefer_local_failure(compute: std::pin::Pin<&mut impl Future<Output = Result<Vec<f64>, Failure>>>, ended: Failure) -> Failure {
    match tokio::time::timeout(std::time::Duration::from_secs(2), compute).await {
        Ok(Err(local)) => local,
        _ => ended,
    }
}

/// Contributes the vector `compute` yields through secure aggregation.
#[allow(clippy::too_many_arguments)] // each argument is a distinct input of one protocol run
pub async fn contribute(
    me: Contributor<'_>,
    client: &mut FederationClient<Channel>,
    addr: &TaskAddress,
    setup: &pb::AggregationSetup,
    compute: impl Future<Output = Result<Vec<f64>, Failure>>,
    out_of_range: OutOfRange,
    task: &str,
    mut relays: mpsc::Receiver<Vec<u8>>,
) -> Result<(), Failure> {
    let secure = setup.secure.as_ref().ok_or_else(|| Failure::new("protocol", "secure aggregation setup missing"))?;
    let params = confide_proto::secagg::params_from(secure, addr.round, setup.vector_len).map_err(|e| Failure::new("protocol", e))?;
    if let Some(ca) = me.federation_ca {
        check_peer_bindings(ca, secure)?;
    }
    let min = me.min_participants.max(secure.min_participants) as usize;
    if params.participants.len() < min {
        return Err(Failure::new(
            "policy",
            format!("{} institutions in this round; this bank requires at least {min}", params.participants.len()),
        ));
    }
    let clip = params.encoding.clip;
    // The round-level floor was checked above on the whole participant list; the client's own
    // checks count share holders (a SecAgg+ neighbourhood of k + 1 under a sparse graph), so
    // they get the floor capped at that size.
    let min = min.min(params.holders());
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let mut sa = Client::new(params, secure.participant_id, me.identity.clone(), ClientPolicy { min_participants: min }, seed)
        .map_err(|e| Failure::new("protocol", e))?;

    tokio::pin!(compute);
    let mut computing = true;
    loop {
        while let Some(msg) = sa.poll_transmit() {
            let kind = msg.payload.kind();
            if let Some(f) = me.fault {
                f.check(task, kind, false).await;
            }
            send(client, addr, msg).await?;
            if let Some(f) = me.fault {
                f.check(task, kind, true).await;
            }
        }
        while let Some(ev) = sa.poll_event() {
            let ended = match ev {
                ClientEvent::Done => return Ok(()),
                ClientEvent::Refused(r) => Failure::new("policy", format!("refused to continue secure aggregation: {r}")),
                ClientEvent::Failed(e) => Failure::new("protocol", e),
                ClientEvent::Aborted(stage) => Failure::new("protocol", format!("the coordinator aborted secure aggregation at {stage:?}")),
                _ => continue,
            };
            return Err(if computing { prefer_local_failure(compute.as_mut(), ended).await } else { ended });
        }
        tokio::select! {
            vector = &mut compute, if computing => {
                computing = false;
                let mut vector = vector?;
                let outside = vector.iter().filter(|v| v.abs() > clip).count();
                if outside > 0 {
                    match out_of_range {
                        OutOfRange::Clip => {
                            tracing::warn!(job = %addr.job_id, round = addr.round, outside, clip, "clipping update values to the secure-aggregation range");
                            vector.iter_mut().for_each(|v| *v = v.clamp(-clip, clip));
                        }
                        OutOfRange::Fail => {
                            let worst = vector.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                            return Err(Failure::new("data", format!(
                                "{outside} aggregate values exceed the secure-aggregation range ±{clip:e} (largest {worst:e}); rescale the data"
                            )));
                        }
                    }
                }
                sa.set_input(&vector).map_err(|e| Failure::new("protocol", e))?;
            }
            relay = relays.recv() => {
                let bytes = relay.ok_or_else(|| Failure::new("protocol", "task stream closed during secure aggregation"))?;
                let msg = ServerMessage::decode(&bytes).map_err(|e| Failure::new("protocol", e))?;
                sa.handle_message(msg, Instant::now()).map_err(|e| Failure::new("protocol", e))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer entry as an honest coordinator builds it, from `name`'s certificate in `dir`.
    fn peer(dir: &std::path::Path, id: u32, name: &str) -> pb::SecAggPeer {
        confide_tls::issue(dir, confide_tls::Role::Institution, name, &[], 1, dir).expect("issue");
        let cert = dir.join(format!("{name}.pem"));
        let files = confide_tls::TlsFiles { ca: dir.join("ca.pem"), cert: cert.clone(), key: dir.join(format!("{name}.key")) };
        pb::SecAggPeer {
            participant_id: id,
            institution_id: name.into(),
            verifying_key: files.signing_key().expect("key").verifying_key().to_bytes().to_vec(),
            certificate: confide_tls::certificate_der(&cert).expect("der"),
        }
    }

    #[test]
    fn a_coordinator_cannot_substitute_or_reassign_peer_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        confide_tls::init_ca(dir.path(), 1).expect("ca");
        let ca = dir.path().join("ca.pem");
        let honest = pb::SecureAggregationSetup { peers: vec![peer(dir.path(), 1, "bank1"), peer(dir.path(), 2, "bank2")], ..Default::default() };
        check_peer_bindings(&ca, &honest).expect("honest setup");

        let mut substituted = honest.clone();
        substituted.peers[1].verifying_key = vec![9; 32];
        let err = check_peer_bindings(&ca, &substituted).expect_err("substituted key");
        assert_eq!(err.kind, "policy");
        assert!(err.reason.contains("not the one in its certificate"), "{err}");

        let mut swapped = honest.clone();
        swapped.peers[1].certificate = honest.peers[0].certificate.clone();
        assert!(check_peer_bindings(&ca, &swapped).is_err(), "bank1's certificate cannot vouch for bank2");

        let mut missing = honest;
        missing.peers[0].certificate.clear();
        assert!(check_peer_bindings(&ca, &missing).is_err(), "no certificate, no key");
    }
}
