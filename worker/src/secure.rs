//! The bank's check on the peers of a secure-aggregation round: with mutual TLS, every peer
//! key the coordinator relays must be bound by a certificate the federation CA signed, for the
//! institution it is listed as. It reads the CA file, so the task machine ([`crate::task`])
//! asks for it through its admission request ([`crate::policy::Policy::admit_request`]) instead
//! of calling it; the protocol itself is driven by the machine.

use confide_proto::v1 as pb;

use crate::failure::Failure;

/// The coordinator relays the peers' keys; only keys bound by certificates the federation CA
/// signed, for the institution they are listed as, count. Anything else is refused before a
/// single key or share leaves this bank.
pub fn check_peer_bindings(ca: &std::path::Path, peers: &[pb::SecAggPeer]) -> Result<(), Failure> {
    for peer in peers {
        let bound = confide_tls::verify_institution_key(ca, &peer.certificate, &peer.institution_id)
            .map_err(|e| Failure::policy(format!("refusing secure aggregation: peer {}: {e}", peer.participant_id)))?;
        if bound.as_slice() != peer.verifying_key.as_slice() {
            return Err(Failure::policy(format!(
                "refusing secure aggregation: the key given for `{}` is not the one in its certificate",
                peer.institution_id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A peer entry as an honest coordinator builds it, from `name`'s certificate in `dir`
    /// (issued here).
    pub(crate) fn peer(dir: &std::path::Path, id: u32, name: &str) -> pb::SecAggPeer {
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
        check_peer_bindings(&ca, &honest.peers).expect("honest setup");

        let mut substituted = honest.clone();
        substituted.peers[1].verifying_key = vec![9; 32];
        let err = check_peer_bindings(&ca, &substituted.peers).expect_err("substituted key");
        assert_eq!(err.kind, crate::failure::FailureKind::Policy);
        assert!(err.reason.contains("not the one in its certificate"), "{err}");

        let mut swapped = honest.clone();
        swapped.peers[1].certificate = honest.peers[0].certificate.clone();
        assert!(check_peer_bindings(&ca, &swapped.peers).is_err(), "bank1's certificate cannot vouch for bank2");

        let mut missing = honest;
        missing.peers[0].certificate.clear();
        assert!(check_peer_bindings(&ca, &missing.peers).is_err(), "no certificate, no key");
    }
}
