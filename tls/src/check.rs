//! A holder's own TLS files, checked before it dials or listens.
//!
//! A certificate problem found only in the handshake looks, to the holder, like an unreachable
//! peer (and was retried forever). [`check_identity`] reads the CA, certificate and key a
//! process was configured with and names the first thing that is wrong with them — a missing
//! file, text that is not PEM, a key that is not the certificate's, a certificate outside its
//! validity (with both dates and the time now), one in the wrong role or for another name, or
//! one the configured federation CA did not sign — so the process can exit at once with a
//! message that says which file to fix.

use std::path::{Path, PathBuf};

use x509_parser::certificate::X509Certificate;

use crate::{Peer, Role, TlsFiles};

/// Which of a holder's three files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The federation CA certificate.
    Ca,
    /// The holder's certificate.
    Certificate,
    /// The holder's private key.
    Key,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Ca => "federation CA certificate",
            FileKind::Certificate => "certificate",
            FileKind::Key => "key",
        })
    }
}

/// What is wrong with a holder's own TLS files. Every variant names the file to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read (missing, permissions).
    #[error("{kind} {path}: {reason}")]
    Unreadable {
        /// Which file.
        kind: FileKind,
        /// The file.
        path: PathBuf,
        /// What the operating system said (`file not found` for a missing one).
        reason: String,
    },
    /// A file is not a PEM certificate or key.
    #[error("{kind} {path} is not a PEM {expected}: {reason}")]
    NotPem {
        /// Which file.
        kind: FileKind,
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key (PKCS#8)`.
        expected: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The key's public half is not the one in the certificate.
    #[error(
        "the key {key} does not belong to the certificate {cert} (their public keys differ): configure the key issued with this certificate"
    )]
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// The current time is after the certificate's notAfter.
    #[error("{whose} {path} expired on {not_after} (valid from {not_before}; it is now {now}): issue a new one with `confide certs issue`")]
    Expired {
        /// `your certificate` or `the federation CA certificate`.
        whose: &'static str,
        /// The certificate.
        path: PathBuf,
        /// Its notBefore, UTC.
        not_before: String,
        /// Its notAfter, UTC.
        not_after: String,
        /// Now, UTC.
        now: String,
    },
    /// The current time is before the certificate's notBefore.
    #[error("{whose} {path} is not valid until {not_before} (valid to {not_after}; it is now {now}): check this machine's clock")]
    NotYetValid {
        /// `your certificate` or `the federation CA certificate`.
        whose: &'static str,
        /// The certificate.
        path: PathBuf,
        /// Its notBefore, UTC.
        not_before: String,
        /// Its notAfter, UTC.
        not_after: String,
        /// Now, UTC.
        now: String,
    },
    /// The certificate holds another role than this process needs.
    #[error("the certificate {path} is for `{name}` in role `{found}`, but {holder} needs a certificate in role `{expected}` (confide certs issue --role {expected})", expected = expected.as_str())]
    WrongRole {
        /// The certificate.
        path: PathBuf,
        /// Its common name.
        name: String,
        /// Its role (`none` when it names no known role).
        found: String,
        /// The role this process needs.
        expected: Role,
        /// This process, e.g. `a worker`.
        holder: &'static str,
    },
    /// The certificate is for another name than the one this process acts as.
    #[error(
        "the certificate {path} is for `{found}`, but this process acts as `{expected}`: use `{expected}`'s certificate, or fix the configured name"
    )]
    WrongName {
        /// The certificate.
        path: PathBuf,
        /// Its common name.
        found: String,
        /// The configured name.
        expected: String,
    },
    /// The configured federation CA did not sign the certificate.
    #[error(
        "the certificate {cert} was not issued by the federation CA {ca} (unknown CA; it names issuer `{issuer}`): use a certificate issued by this federation's CA, or configure the CA that issued it"
    )]
    UnknownCa {
        /// The certificate.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// The issuer the certificate names.
        issuer: String,
    },
}

/// Who is checking, for messages and the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// `confide-coordinator`.
    Coordinator,
    /// `confide-worker`.
    Worker,
    /// The `confide` CLI.
    Cli,
}

impl Holder {
    fn role(self) -> Role {
        match self {
            Holder::Coordinator => Role::Coordinator,
            Holder::Worker => Role::Institution,
            Holder::Cli => Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Holder::Coordinator => "the coordinator",
            Holder::Worker => "a bank's worker",
            Holder::Cli => "the confide CLI",
        }
    }
}

/// A UTC time as these messages print it: `2026-12-01 23:33:31 UTC`.
pub fn utc(unix_seconds: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix_seconds} (seconds since 1970)"))
}

fn read(kind: FileKind, path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::Unreadable {
        kind,
        path: path.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::NotFound { "file not found".into() } else { e.to_string() },
    })
}

fn pem_certificate(kind: FileKind, path: &Path) -> Result<Vec<u8>, IdentityError> {
    let text = read(kind, path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| not_pem(kind, path, e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(not_pem(kind, path, format!("found a `{}` block", pem.label)));
    }
    Ok(pem.contents)
}

fn not_pem(kind: FileKind, path: &Path, reason: String) -> IdentityError {
    IdentityError::NotPem { kind, path: path.to_path_buf(), expected: "certificate", reason }
}

fn parse<'a>(kind: FileKind, path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, IdentityError> {
    x509_parser::parse_x509_certificate(der).map(|(_, c)| c).map_err(|e| not_pem(kind, path, e.to_string()))
}

/// The validity problem of `cert` at `now` (Unix seconds), if any.
fn validity(whose: &'static str, path: &Path, cert: &X509Certificate<'_>, now: i64) -> Result<(), IdentityError> {
    let (nb, na) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let (not_before, not_after, now_text) = (utc(nb), utc(na), utc(now));
    if now > na {
        return Err(IdentityError::Expired { whose, path: path.to_path_buf(), not_before, not_after, now: now_text });
    }
    if now < nb {
        return Err(IdentityError::NotYetValid { whose, path: path.to_path_buf(), not_before, not_after, now: now_text });
    }
    Ok(())
}

/// Checks `files` for a process acting as `holder` (and, when given, as `name`), at the
/// current time. Returns the identity the certificate carries.
pub fn check_identity(files: &TlsFiles, holder: Holder, name: Option<&str>) -> Result<Peer, IdentityError> {
    check_identity_at(files, holder, name, time::OffsetDateTime::now_utc().unix_timestamp())
}

/// [`check_identity`] at `now` (Unix seconds).
pub fn check_identity_at(files: &TlsFiles, holder: Holder, name: Option<&str>, now: i64) -> Result<Peer, IdentityError> {
    let ca_der = pem_certificate(FileKind::Ca, &files.ca)?;
    let cert_der = pem_certificate(FileKind::Certificate, &files.cert)?;
    let key_text = read(FileKind::Key, &files.key)?;
    let key = rcgen::KeyPair::from_pem(&key_text).map_err(|e| IdentityError::NotPem {
        kind: FileKind::Key,
        path: files.key.clone(),
        expected: "private key (PKCS#8)",
        reason: e.to_string(),
    })?;
    let (ca, cert) = (parse(FileKind::Ca, &files.ca, &ca_der)?, parse(FileKind::Certificate, &files.cert, &cert_der)?);
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(IdentityError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone() });
    }
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(IdentityError::UnknownCa { cert: files.cert.clone(), ca: files.ca.clone(), issuer: cert.issuer().to_string() });
    }
    validity("your certificate", &files.cert, &cert, now)?;
    validity("the federation CA certificate", &files.ca, &ca, now)?;
    let peer = Peer::from_der(&cert_der).map_err(|e| not_pem(FileKind::Certificate, &files.cert, e.to_string()))?;
    if peer.role != Some(holder.role()) {
        return Err(IdentityError::WrongRole {
            path: files.cert.clone(),
            name: peer.name,
            found: peer.role.map_or("none", Role::as_str).to_string(),
            expected: holder.role(),
            holder: holder.describe(),
        });
    }
    if let Some(expected) = name
        && peer.name != expected
    {
        return Err(IdentityError::WrongName { path: files.cert.clone(), found: peer.name, expected: expected.to_string() });
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    #[test]
    fn each_problem_with_the_own_files_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        crate::init_ca(d, 30).expect("ca");
        crate::issue(d, Role::Institution, "bank1", &[], 30, d).expect("bank1");
        crate::issue(d, Role::Institution, "bank2", &[], 30, d).expect("bank2");
        let good = files(d, "bank1");
        assert_eq!(check_identity(&good, Holder::Worker, Some("bank1")).expect("valid").name, "bank1");

        let missing = TlsFiles { cert: d.join("absent.pem"), ..good.clone() };
        let err = check_identity(&missing, Holder::Worker, None).expect_err("missing");
        assert_eq!(err.to_string(), format!("certificate {}: file not found", d.join("absent.pem").display()));

        std::fs::write(d.join("garbage.pem"), "not a certificate").expect("write");
        let garbage = TlsFiles { cert: d.join("garbage.pem"), ..good.clone() };
        assert!(matches!(check_identity(&garbage, Holder::Worker, None), Err(IdentityError::NotPem { kind: FileKind::Certificate, .. })));
        let key_as_cert = TlsFiles { cert: d.join("bank1.key"), ..good.clone() };
        assert!(matches!(check_identity(&key_as_cert, Holder::Worker, None), Err(IdentityError::NotPem { .. })));

        let mismatched = TlsFiles { key: d.join("bank2.key"), ..good.clone() };
        let err = check_identity(&mismatched, Holder::Worker, None).expect_err("mismatch");
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not belong to the certificate"), "{err}");

        let err = check_identity(&good, Holder::Coordinator, None).expect_err("role");
        assert!(
            err.to_string().contains("is for `bank1` in role `institution`, but the coordinator needs a certificate in role `coordinator`"),
            "{err}"
        );
        let err = check_identity(&good, Holder::Worker, Some("bank3")).expect_err("name");
        assert!(matches!(err, IdentityError::WrongName { .. }), "{err}");

        let other = tempfile::tempdir().expect("tempdir");
        crate::init_ca(other.path(), 30).expect("other ca");
        let foreign = TlsFiles { ca: other.path().join("ca.pem"), ..good.clone() };
        let err = check_identity(&foreign, Holder::Worker, None).expect_err("unknown ca");
        assert!(err.to_string().contains("was not issued by the federation CA"), "{err}");

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let err = check_identity_at(&good, Holder::Worker, None, now + 40 * 86_400).expect_err("expired");
        let IdentityError::Expired { whose, not_after, .. } = &err else { panic!("{err}") };
        assert_eq!(*whose, "your certificate", "the holder's own certificate is named first");
        assert!(err.to_string().starts_with(&format!("your certificate {} expired on {not_after}", good.cert.display())), "{err}");
        let err = check_identity_at(&good, Holder::Worker, None, now - 86_400).expect_err("not yet valid");
        assert!(matches!(err, IdentityError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_780_000_000), "2026-05-28 20:26:40 UTC");
    }
}
