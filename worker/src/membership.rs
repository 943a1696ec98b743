//! Who is in the federation, as this bank sees it: the checks a round's peer list must pass
//! before a single key or share leaves the bank, whatever the coordinator relays.
//!
//! - **No one twice** (always): an institution id, a participant id, a verifying key or a
//!   certificate listed twice is refused — a coordinator could otherwise count one bank (or
//!   itself, holding one stolen certificate) as several participants and push a round past the
//!   bank's floor on institutions with fewer real members.
//! - **Pinned members** (`[[federation.members]]`, optional): every peer must be a listed
//!   institution presenting the listed certificate (its SHA-256 fingerprint, as
//!   `confide certs fingerprint` prints it); the bank itself is a member with its own
//!   certificate. Without a list, any institution the federation CA signed for counts.
//! - **Revoked certificates** (`federation.revocation_file`, optional): the file is re-read
//!   whenever it changes ([`confide_tls::revocation::RevocationList`]), so a revocation takes
//!   effect on the next admission without restarting the worker; an unreadable file refuses
//!   every round rather than un-revoking anyone.
//!
//! [`crate::policy::Policy::admit_request`] runs [`Membership::check`] with the CA binding
//! check ([`crate::secure::check_peer_bindings`]); refusals are `policy` failures naming the
//! peer at fault.

use std::collections::{BTreeMap, BTreeSet};

use confide_proto::v1 as pb;
use confide_tls::revocation::RevocationList;

use crate::config::FederationConfig;
use crate::failure::Failure;

/// This bank's view of the federation's membership.
#[derive(Debug, Default)]
pub struct Membership {
    /// This bank's institution id and its own certificate's fingerprint (None without TLS):
    /// the one peer entry not in the pinned list.
    own: Option<(String, Option<String>)>,
    /// Pinned members: institution id → certificate fingerprint (lower-case). None: any
    /// CA-signed institution.
    members: Option<BTreeMap<String, String>>,
    /// Revoked certificates, re-read when the file changes.
    revocation: Option<RevocationList>,
}

fn refuse(reason: impl std::fmt::Display) -> Failure {
    Failure::policy(format!("refusing secure aggregation: {reason}"))
}

impl Membership {
    /// Only the duplicate checks: any CA-signed institution may be a peer.
    pub fn open_to_all() -> Self {
        Self::default()
    }

    /// The membership `config` describes, for institution `own_id` holding the certificate
    /// with fingerprint `own_fingerprint`. Reads the revocation file once, so a missing or
    /// malformed one stops the worker at start.
    pub fn from_config(config: &FederationConfig, own_id: &str, own_fingerprint: Option<String>) -> Result<Self, Failure> {
        let members = (!config.members.is_empty())
            .then(|| config.members.iter().map(|m| (m.institution.clone(), m.fingerprint.to_ascii_lowercase())).collect());
        let revocation = match &config.revocation_file {
            Some(path) => Some(RevocationList::open(path).map_err(Failure::policy)?),
            None => None,
        };
        let own = Some((own_id.to_string(), own_fingerprint.map(|f| f.to_ascii_lowercase())));
        Ok(Self { own, members, revocation })
    }

    /// Checks a round's peer list (the bank's own entry included): no one twice, no revoked
    /// certificate, only pinned members when a list is configured.
    pub fn check(&self, peers: &[pb::SecAggPeer]) -> Result<(), Failure> {
        no_one_twice(peers)?;
        let revoked = match &self.revocation {
            Some(list) => Some(list.current().map_err(|e| refuse(format!("{e}; no round is joined until it can be read")))?),
            None => None,
        };
        let fingerprint = |peer: &pb::SecAggPeer| (!peer.certificate.is_empty()).then(|| confide_core::sha256_hex(&peer.certificate));
        if let Some(revoked) = &revoked {
            for peer in peers {
                if let Some(fp) = fingerprint(peer).filter(|fp| revoked.contains(fp)) {
                    return Err(refuse(format!("the certificate of `{}` ({fp}) is revoked", peer.institution_id)));
                }
            }
        }
        let Some(members) = &self.members else { return Ok(()) };
        // Every name first, then every certificate: an outsider is named as such, whatever
        // the order of the list.
        let mut expected = Vec::with_capacity(peers.len());
        for peer in peers {
            let id = &peer.institution_id;
            match &self.own {
                Some((own_id, own_fp)) if own_id == id => expected.push((peer, own_fp.as_ref())),
                _ => {
                    let pinned = members.get(id).ok_or_else(|| refuse(format!("`{id}` is not among this bank's pinned federation members")))?;
                    expected.push((peer, Some(pinned)));
                }
            }
        }
        for (peer, pinned) in expected {
            // This bank's own entry without TLS has no certificate to compare (validation
            // refuses a pinned list without TLS; simulated banks have none).
            let Some(pinned) = pinned else { continue };
            let id = &peer.institution_id;
            let fp = fingerprint(peer).ok_or_else(|| refuse(format!("`{id}` presents no certificate to check against its pinned fingerprint")))?;
            if fp != *pinned {
                return Err(refuse(format!("`{id}` presents certificate {fp}, not the pinned {pinned}")));
            }
        }
        Ok(())
    }
}

/// Refuses a peer list naming any institution, participant, key or certificate twice.
fn no_one_twice(peers: &[pb::SecAggPeer]) -> Result<(), Failure> {
    let (mut ids, mut participants, mut keys, mut certs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for peer in peers {
        let id = &peer.institution_id;
        if !ids.insert(id.as_str()) {
            return Err(refuse(format!("institution `{id}` is listed twice")));
        }
        if !participants.insert(peer.participant_id) {
            return Err(refuse(format!("participant {} is listed twice", peer.participant_id)));
        }
        if !keys.insert(peer.verifying_key.as_slice()) {
            return Err(refuse(format!("the key given for `{id}` is also given for another institution")));
        }
        if !peer.certificate.is_empty() && !certs.insert(peer.certificate.as_slice()) {
            return Err(refuse(format!("the certificate given for `{id}` is also given for another institution")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::MemberConfig;
    use crate::failure::FailureKind;
    use crate::secure::tests::peer;

    /// A federation's PKI in `dir` with institutions `names`; returns their honest peer entries
    /// (participant ids 1..).
    fn pki(dir: &Path, names: &[&str]) -> Vec<pb::SecAggPeer> {
        confide_tls::init_ca(dir, 1).expect("ca");
        names.iter().enumerate().map(|(i, name)| peer(dir, i as u32 + 1, name)).collect()
    }

    fn fingerprint(dir: &Path, name: &str) -> String {
        confide_tls::fingerprint_of(&dir.join(format!("{name}.pem"))).expect("fingerprint")
    }

    /// bank1's membership with `members` pinned (by their current certificates).
    fn pinned(dir: &Path, members: &[&str], revocation_file: Option<&Path>) -> Membership {
        let config = FederationConfig {
            members: members.iter().map(|m| MemberConfig { institution: (*m).into(), fingerprint: fingerprint(dir, m) }).collect(),
            revocation_file: revocation_file.map(Path::to_path_buf),
        };
        Membership::from_config(&config, "bank1", Some(fingerprint(dir, "bank1"))).expect("membership")
    }

    fn refused(result: Result<(), Failure>, what: &str) -> String {
        let err = result.expect_err(what);
        assert_eq!(err.kind, FailureKind::Policy, "{what}: {err}");
        err.reason
    }

    #[test]
    fn only_pinned_members_with_their_pinned_certificates_are_peers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let honest = pki(d, &["bank1", "bank2", "bank3"]);
        let outsider = peer(d, 4, "bank4");
        let members = pinned(d, &["bank2", "bank3"], None);
        members.check(&honest).expect("the pinned federation (and this bank itself)");

        // A CA-signed institution outside the list.
        let mut with_outsider = honest.clone();
        with_outsider.push(outsider);
        let reason = refused(members.check(&with_outsider), "an institution outside the list");
        assert!(reason.contains("`bank4` is not among this bank's pinned federation members"), "{reason}");

        // A listed institution with another (CA-signed) certificate: re-issued by whoever holds
        // the CA key, or by a coordinator that does.
        let before = fingerprint(d, "bank3");
        let reissued = peer(d, 3, "bank3");
        let mut swapped = honest.clone();
        swapped[2] = reissued;
        let reason = refused(members.check(&swapped), "a pinned id with another certificate");
        assert!(reason.contains(&format!("not the pinned {before}")), "{reason}");

        // Even this bank's own name with a certificate that is not its own.
        let mut own = honest.clone();
        own[0].certificate = swapped[2].certificate.clone();
        own[0].institution_id = "bank1".into();
        assert!(members.check(&own).is_err(), "bank1's entry must carry bank1's certificate");

        // No certificate at all for a pinned member.
        let mut bare = honest.clone();
        bare[1].certificate.clear();
        assert!(refused(members.check(&bare), "no certificate").contains("presents no certificate"));

        // No list: any CA-signed institution, as before.
        Membership::open_to_all().check(&with_outsider).expect("without a list every institution counts");
    }

    #[test]
    fn no_institution_key_or_certificate_counts_twice_with_or_without_a_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let honest = pki(d, &["bank1", "bank2", "bank3"]);
        for m in [Membership::open_to_all(), pinned(d, &["bank2", "bank3"], None)] {
            // bank2 listed twice under two participant ids.
            let mut twice = honest.clone();
            let mut again = honest[1].clone();
            again.participant_id = 4;
            twice.push(again);
            assert!(refused(m.check(&twice), "the same id twice").contains("`bank2` is listed twice"));

            // One key (and certificate) under two names: one bank counted as two.
            let mut alias = honest.clone();
            let mut bank4 = honest[2].clone();
            (bank4.participant_id, bank4.institution_id) = (4, "bank4".into());
            alias.push(bank4.clone());
            assert!(refused(m.check(&alias), "one key under two ids").contains("also given for another institution"));

            // The same certificate under two names with different (unbound) keys.
            let mut cert_alias = honest.clone();
            bank4.verifying_key = vec![7; 32];
            cert_alias.push(bank4);
            assert!(refused(m.check(&cert_alias), "one certificate under two ids").contains("certificate given for `bank4`"));

            let mut ids = honest.clone();
            ids[2].participant_id = 1;
            assert!(refused(m.check(&ids), "one participant id twice").contains("participant 1 is listed twice"));
        }
    }

    #[test]
    fn a_revoked_peer_is_refused_as_soon_as_the_file_lists_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let honest = pki(d, &["bank1", "bank2", "bank3"]);
        let file = d.join("revoked.txt");
        std::fs::write(&file, "# nobody yet\n").expect("write");
        let config = FederationConfig { members: Vec::new(), revocation_file: Some(file.clone()) };
        let m = Membership::from_config(&config, "bank1", Some(fingerprint(d, "bank1"))).expect("membership");
        m.check(&honest).expect("nobody revoked");
        let fp = fingerprint(d, "bank3");
        std::fs::write(&file, format!("# bank3's key leaked\n{fp}\n")).expect("revoke");
        let reason = refused(m.check(&honest), "a revoked peer");
        assert!(reason.contains(&format!("`bank3` ({fp}) is revoked")), "{reason}");
        // Pinned or not: revocation wins over the list.
        let p = pinned(d, &["bank2", "bank3"], Some(&file));
        assert!(p.check(&honest).is_err(), "a pinned member's certificate can still be revoked");
        // A file that vanished refuses every round rather than un-revoking anyone.
        std::fs::remove_file(&file).expect("remove");
        assert!(refused(m.check(&honest), "no revocation file").contains("no round is joined"));
        assert!(Membership::from_config(&config, "bank1", None).is_err(), "a missing file stops the worker at start");
    }

    #[test]
    fn a_peer_certificate_from_outside_the_federation_ca_is_refused() {
        // The membership checks come with the CA binding check in the bank's admission: a
        // pinned fingerprint of a certificate some other CA signed still does not get in.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let honest = pki(d, &["bank1", "bank2", "bank3"]);
        let rogue_dir = tempfile::tempdir().expect("tempdir");
        let rogue = pki(rogue_dir.path(), &["bank3"]);
        let mut forged = honest.clone();
        forged[2] = pb::SecAggPeer { participant_id: 3, ..rogue[0].clone() };
        let config = FederationConfig {
            members: vec![
                MemberConfig { institution: "bank2".into(), fingerprint: fingerprint(d, "bank2") },
                MemberConfig { institution: "bank3".into(), fingerprint: fingerprint(rogue_dir.path(), "bank3") },
            ],
            revocation_file: None,
        };
        let m = Membership::from_config(&config, "bank1", Some(fingerprint(d, "bank1"))).expect("membership");
        m.check(&forged).expect("the list alone matches (an operator pinned the wrong certificate)");
        let policy = crate::policy::Policy::in_memory(Default::default()).with_membership(m);
        let request = crate::task::AdmissionRequest {
            job_id: "j".into(),
            round: 1,
            dataset: "d".into(),
            purpose: crate::task::Purpose::Statistics,
            terms: None,
            peers: forged,
            federation_ca: Some(d.join("ca.pem")),
        };
        let reason = refused(policy.admit_request(&request), "not signed by the federation CA");
        assert!(reason.contains("not signed by the federation CA"), "{reason}");
    }
}
