//! The federation's PKI and mutual TLS.
//!
//! - One federation CA (`confide certs init`) signs every certificate (`confide certs issue`).
//! - A certificate says who its holder is and in which role: the subject's common name is the
//!   name (an institution id, an admin's name, `coordinator`), its organisational unit the
//!   [`Role`]. Every key is Ed25519: an institution's certificate key is also the long-term key
//!   that signs its secure-aggregation advertisements, so the coordinator cannot substitute
//!   keys without also forging a certificate.
//! - [`TlsFiles`] names a holder's CA, certificate and key; [`server_config`] and
//!   [`client_config`] turn them into tonic's rustls configurations (client certificates
//!   required). [`Peer::from_der`] reads the identity back out of a presented certificate.
//! - [`coordinator_endpoint`] dials the coordinator accepting only a certificate in the
//!   coordinator role ([`connect`]); [`revocation::RevocationList`] is a revocation file
//!   re-read whenever it changes.
//! - [`check::check_identity`] names what is wrong with a holder's own files before it dials
//!   or listens; [`fault::diagnose`] names why a connection failed and whether retrying helps.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519,
};
use serde::Deserialize;

pub mod check;
pub mod connect;
pub mod fault;
pub mod revocation;

pub use connect::{CoordinatorConnector, NotTheCoordinator, coordinator_endpoint};

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The coordinator (server certificate).
    Coordinator,
    /// A bank's worker: may call the Federation service as itself.
    Institution,
    /// A member of the data-science team: may call the Admin service.
    Admin,
}

impl Role {
    /// The name written in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Institution => "institution",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "coordinator" => Some(Role::Coordinator),
            "institution" => Some(Role::Institution),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Errors making or reading certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A name is not usable in a certificate.
    #[error("name {0:?} must be 1-128 characters of [A-Za-z0-9._-]")]
    BadName(String),
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    #[cfg(unix)]
    if private {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        return f.write_all(contents.as_bytes()).map_err(io);
    }
    let _ = private;
    std::fs::write(path, contents).map_err(io)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// Creates a federation CA in `dir` (`ca.pem`, `ca.key`), valid for `days`.
pub fn init_ca(dir: &Path, days: i64) -> Result<(), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "Confide federation CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = params.self_signed(&key).map_err(cert_err)?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)
}

/// Issues a certificate for `name` in `role`, signed by the CA in `ca_dir`, valid for `days`,
/// with extra subject alternative names `sans` (host names or IP addresses the holder serves
/// on). Writes `out/<name>.pem` and `out/<name>.key`; returns the certificate's fingerprint.
pub fn issue(ca_dir: &Path, role: Role, name: &str, sans: &[String], days: i64, out: &Path) -> Result<String, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    issue_from(ca_dir, role, name, sans, now - time::Duration::hours(1), now + time::Duration::days(days), out)
}

/// [`issue`], valid from `not_before` to `not_after` (tests make expired and not-yet-valid
/// certificates with it).
pub fn issue_from(
    ca_dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    out: &Path,
) -> Result<String, TlsError> {
    let valid = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(TlsError::BadName(name.into()));
    }
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join("ca.pem"))?, ca_key).map_err(cert_err)?;
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_err)?;
    let mut names = vec![name.to_string()];
    names.extend(sans.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    write(&out.join(format!("{name}.pem")), &cert.pem(), false)?;
    write(&out.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    Ok(confide_core::sha256_hex(cert.der()))
}

/// The DER bytes of the certificate in a PEM file.
pub fn certificate_der(pem_path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(pem_path)?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    Ok(parsed.contents)
}

/// SHA-256 fingerprint of the certificate in a PEM file (what revocation lists name).
pub fn fingerprint_of(pem_path: &Path) -> Result<String, TlsError> {
    Ok(confide_core::sha256_hex(&certificate_der(pem_path)?))
}

/// The files that make up a holder's TLS identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This holder's certificate (PEM).
    pub cert: PathBuf,
    /// This holder's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The holder's private key as an Ed25519 signing key (institutions sign secure-aggregation
    /// advertisements with it).
    pub fn signing_key(&self) -> Result<ed25519_dalek::SigningKey, TlsError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        ed25519_dalek::SigningKey::from_pkcs8_pem(&read(&self.key)?)
            .map_err(|e| TlsError::Certificate(format!("{}: not an Ed25519 PKCS#8 key: {e}", self.key.display())))
    }

    fn identity(&self) -> Result<tonic::transport::Identity, TlsError> {
        Ok(tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?))
    }

    fn ca_cert(&self) -> Result<tonic::transport::Certificate, TlsError> {
        Ok(tonic::transport::Certificate::from_pem(read(&self.ca)?))
    }
}

/// Server side of mutual TLS: present our certificate, require one signed by the CA.
pub fn server_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
    Ok(tonic::transport::ServerTlsConfig::new().identity(files.identity()?).client_ca_root(files.ca_cert()?))
}

/// Client side of mutual TLS towards `domain` (the host name or IP in the coordinator's URL).
pub fn client_config(files: &TlsFiles, domain: &str) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    Ok(tonic::transport::ClientTlsConfig::new().ca_certificate(files.ca_cert()?).identity(files.identity()?).domain_name(domain))
}

/// Who is on the other end of a connection, from the certificate it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Common name: an institution id, an admin's name, `coordinator`.
    pub name: String,
    /// The role in the certificate (None when the OU is missing or unknown).
    pub role: Option<Role>,
    /// SHA-256 of the certificate (DER), as listed in revocation lists.
    pub fingerprint: String,
    /// The certificate's Ed25519 public key.
    pub ed25519: Option<[u8; 32]>,
    /// The certificate itself (DER), forwarded to peers so they can check key bindings.
    pub der: Vec<u8>,
}

impl Peer {
    /// Reads a presented certificate (already verified against the CA by rustls).
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(cert_err)?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string();
        let role = subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()).and_then(Role::parse);
        let spki = cert.public_key();
        let ed25519 = (spki.algorithm.algorithm.to_id_string() == "1.3.101.112")
            .then(|| spki.subject_public_key.data.as_ref().try_into().ok())
            .flatten();
        Ok(Self { name, role, fingerprint: confide_core::sha256_hex(der), ed25519, der: der.to_vec() })
    }
}

/// Checks that `cert_der` is a currently valid institution certificate for `institution`,
/// signed by the federation CA in `ca_pem`, and returns the Ed25519 key it binds. Workers run
/// this on every peer key the coordinator hands them, so a coordinator cannot substitute a
/// peer's secure-aggregation key without forging a CA-signed certificate.
pub fn verify_institution_key(ca_pem: &Path, cert_der: &[u8], institution: &str) -> Result<[u8; 32], TlsError> {
    let pem = read(ca_pem)?;
    let (_, ca_pem_parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_pem_parsed.contents).map_err(cert_err)?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::Certificate(format!("{institution}: unreadable certificate: {e}")))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| TlsError::Certificate(format!("{institution}: certificate not signed by the federation CA")))?;
    if !cert.validity().is_valid() {
        return Err(TlsError::Certificate(format!("{institution}: certificate expired or not yet valid")));
    }
    let peer = Peer::from_der(cert_der)?;
    if peer.role != Some(Role::Institution) || peer.name != institution {
        return Err(TlsError::Certificate(format!("certificate names `{}`, not institution `{institution}`", peer.name)));
    }
    peer.ed25519.ok_or_else(|| TlsError::Certificate(format!("{institution}: certificate has no Ed25519 key")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_name_role_and_the_signing_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), 30).expect("ca");
        let fp = issue(dir.path(), Role::Institution, "bank1", &[], 30, dir.path()).expect("issue");
        let pem = std::fs::read_to_string(dir.path().join("bank1.pem")).expect("pem");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        let peer = Peer::from_der(&der).expect("peer");
        assert_eq!(peer.name, "bank1");
        assert_eq!(peer.role, Some(Role::Institution));
        assert_eq!(peer.fingerprint, fp);
        assert_eq!(fingerprint_of(&dir.path().join("bank1.pem")).expect("fingerprint"), fp);
        let files = TlsFiles { ca: dir.path().join("ca.pem"), cert: dir.path().join("bank1.pem"), key: dir.path().join("bank1.key") };
        let key = files.signing_key().expect("key");
        assert_eq!(Some(key.verifying_key().to_bytes()), peer.ed25519, "the certificate binds the signing key");
        assert!(matches!(issue(dir.path(), Role::Admin, "../evil", &[], 30, dir.path()), Err(TlsError::BadName(_))));

        // Peers can check the binding against the CA.
        let ca = dir.path().join("ca.pem");
        assert_eq!(verify_institution_key(&ca, &der, "bank1").expect("bound"), key.verifying_key().to_bytes());
        assert!(verify_institution_key(&ca, &der, "bank2").is_err(), "another institution's name");
        let other = tempfile::tempdir().expect("tempdir");
        init_ca(other.path(), 30).expect("other ca");
        assert!(verify_institution_key(&other.path().join("ca.pem"), &der, "bank1").is_err(), "another CA");
        issue(dir.path(), Role::Admin, "alice", &[], 30, dir.path()).expect("admin");
        let admin_pem = std::fs::read_to_string(dir.path().join("alice.pem")).expect("pem");
        let admin_der = x509_parser::pem::parse_x509_pem(admin_pem.as_bytes()).expect("pem").1.contents;
        assert!(verify_institution_key(&ca, &admin_der, "alice").is_err(), "not an institution certificate");
    }
}
