//! Who is calling: the identity in the client certificate the TLS layer verified against the
//! federation CA. A worker is the institution named in its certificate, never a claimed id;
//! admin RPCs need an admin certificate; revoked certificates are refused ([`Revocations`]:
//! the config's `revoked` list and its `revocation_file`, re-read whenever it changes, so a
//! revocation needs no restart; [`drop_revoked_workers`] closes the task streams of workers
//! already connected). In `--insecure-dev` mode there are no certificates and claims are taken
//! as given.

use std::collections::BTreeSet;
use std::time::Duration;

use confide_tls::revocation::{RevocationError, RevocationList};
use confide_tls::{Peer, Role};
use tonic::{Request, Status};

use crate::Shared;
use crate::config::CoordinatorConfig;

/// The certificates this coordinator refuses.
#[derive(Debug, Default)]
pub struct Revocations {
    /// The config's `revoked` list (lower-case), fixed at start.
    fixed: BTreeSet<String>,
    /// The revocation file, re-read when it changes.
    file: Option<RevocationList>,
}

impl Revocations {
    /// The config's list and file (read once here, so a missing or malformed file is an error
    /// at start).
    pub fn from_config(config: &CoordinatorConfig) -> Result<Self, RevocationError> {
        let fixed = config.revoked.iter().map(|r| r.to_ascii_lowercase()).collect();
        let file = config.revocation_file.as_deref().map(RevocationList::open).transpose()?;
        Ok(Self { fixed, file })
    }

    /// True when `fingerprint` is revoked now; an unreadable file is an error (callers refuse).
    pub fn is_revoked(&self, fingerprint: &str) -> Result<bool, RevocationError> {
        if self.fixed.contains(&fingerprint.to_ascii_lowercase()) {
            return Ok(true);
        }
        match &self.file {
            Some(list) => list.is_revoked(fingerprint),
            None => Ok(false),
        }
    }

    /// True when a file may change while running (only then is watching worth it).
    pub fn is_live(&self) -> bool {
        self.file.is_some()
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Identified by a verified certificate.
    Verified(Peer),
    /// Development mode without TLS.
    Insecure,
}

/// Identifies the caller of `request`.
pub fn caller<T>(shared: &Shared, request: &Request<T>) -> Result<Caller, Status> {
    if shared.config.tls.is_none() {
        return Ok(Caller::Insecure);
    }
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let peer = Peer::from_der(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let revoked = shared.revocations.is_revoked(&peer.fingerprint).map_err(|e| {
        tracing::error!(error = %e, "revocation list unusable: refusing every caller until it is fixed");
        Status::unavailable("the coordinator's revocation list is unreadable; try again later")
    })?;
    if revoked {
        return Err(Status::permission_denied(format!("certificate of `{}` ({}) is revoked", peer.name, peer.fingerprint)));
    }
    Ok(Caller::Verified(peer))
}

/// How often connected workers are checked against the revocation file.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// Until `stop`, closes the task stream of any connected worker whose certificate becomes
/// revoked (new RPCs are refused by [`caller`] already; this ends the one already open). The
/// file is only re-read when it changed, so the check costs a `stat` a second.
pub async fn drop_revoked_workers(shared: std::sync::Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(REVOCATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for worker in shared.hub.connected() {
            if worker.certificate.is_empty() {
                continue;
            }
            let fingerprint = confide_core::sha256_hex(&worker.certificate);
            // An unreadable file refuses new RPCs (see `caller`); the open streams are left to
            // the next readable version rather than all dropped at once on a transient error.
            if shared.revocations.is_revoked(&fingerprint).unwrap_or(false) && shared.hub.disconnect(&worker.id) {
                tracing::warn!(worker = %worker.id, %fingerprint, "certificate revoked: task stream closed");
            }
        }
    }
}

/// The caller must be the institution `claimed`.
pub fn require_institution(caller: &Caller, claimed: &str) -> Result<(), Status> {
    match caller {
        Caller::Insecure => Ok(()),
        Caller::Verified(p) if p.role == Some(Role::Institution) && p.name == claimed => Ok(()),
        Caller::Verified(p) if p.role == Some(Role::Institution) => {
            Err(Status::permission_denied(format!("certificate is for `{}`, not `{claimed}`", p.name)))
        }
        Caller::Verified(p) => Err(Status::permission_denied(format!("`{}` holds no institution certificate", p.name))),
    }
}

/// The caller must hold an admin certificate.
pub fn require_admin(caller: &Caller) -> Result<(), Status> {
    match caller {
        Caller::Insecure => Ok(()),
        Caller::Verified(p) if p.role == Some(Role::Admin) => Ok(()),
        Caller::Verified(p) => Err(Status::permission_denied(format!("`{}` holds no admin certificate", p.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_list_and_the_live_file_both_revoke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("revoked.txt");
        std::fs::write(&file, "").expect("write");
        let (old, new) = ("A".repeat(64), "b".repeat(64));
        let config = CoordinatorConfig { revoked: vec![old.clone()], revocation_file: Some(file.clone()), ..Default::default() };
        let r = Revocations::from_config(&config).expect("revocations");
        assert!(r.is_live());
        assert!(r.is_revoked(&old.to_ascii_lowercase()).expect("read"), "the config's list, any case");
        assert!(!r.is_revoked(&new).expect("read"));
        std::fs::write(&file, format!("{new} # alice left\n")).expect("revoke");
        assert!(r.is_revoked(&new).expect("read"), "the file is re-read while running");
        std::fs::remove_file(&file).expect("remove");
        assert!(r.is_revoked(&new).is_err(), "a vanished file is an error, not an empty list");
        assert!(Revocations::from_config(&config).is_err(), "and stops a coordinator at start");
        assert!(!Revocations::from_config(&CoordinatorConfig::default()).expect("none").is_live());
    }
}
