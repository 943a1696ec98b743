//! Who is calling: the identity in the client certificate the TLS layer verified against the
//! federation CA. A worker is the institution named in its certificate, never a claimed id;
//! admin RPCs need an admin certificate; revoked certificates are refused. In `--insecure-dev`
//! mode there are no certificates and claims are taken as given.

use confide_tls::{Peer, Role};
use tonic::{Request, Status};

use crate::Shared;

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
    if shared.config.revoked.iter().any(|r| r.eq_ignore_ascii_case(&peer.fingerprint)) {
        return Err(Status::permission_denied(format!("certificate of `{}` ({}) is revoked", peer.name, peer.fingerprint)));
    }
    Ok(Caller::Verified(peer))
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
