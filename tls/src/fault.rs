//! Why a connection to the coordinator failed, in words, and whether waiting can help.
//!
//! tonic reports every failed dial as `transport error`, and a plaintext client talking to a
//! TLS server as an HTTP/2 `FRAME_SIZE_ERROR` (the TLS alert's record header read as a frame
//! length). [`classify`] digs the rustls error out of such a chain (through `io::Error`,
//! hyper's and h2's wrappers) and names it: the server's certificate is from another CA,
//! expired, for another host or not the coordinator's; or the server refused *our*
//! certificate (the TLS alert it sent: unknown CA, expired, revoked). What it cannot tell from
//! the error — one side speaking TLS and the other not — [`probe`] finds by asking the server
//! directly. Every [`ConnectFault`] is permanent: a process should say it and stop, where a
//! refused or timed-out connection (no fault found) is worth retrying.

use std::error::Error;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::NotTheCoordinator;
use crate::check::utc;

/// Why the coordinator refused our certificate, from the TLS alert it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `unknown_ca`: our certificate is not from the coordinator's federation CA.
    UnknownCa,
    /// `certificate_expired`.
    Expired,
    /// `certificate_revoked`.
    Revoked,
    /// Another certificate alert (its rustls name).
    Other(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnknownCa => f.write_str("it was not issued by the coordinator's federation CA (unknown CA)"),
            Rejection::Expired => f.write_str("it has expired"),
            Rejection::Revoked => f.write_str("it is revoked"),
            Rejection::Other(alert) => write!(f, "TLS alert {alert}"),
        }
    }
}

/// A connection fault that retrying cannot fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectFault {
    /// The server's certificate is not signed by our federation CA.
    #[error(
        "the server's certificate was not issued by this federation's CA (unknown CA): check the coordinator URL and the configured `ca` file"
    )]
    ServerUnknownCa,
    /// The server's certificate has expired.
    #[error("the coordinator's certificate expired{}: its operator must issue a new one", on(.not_after))]
    ServerExpired {
        /// Its notAfter, when rustls said.
        not_after: Option<String>,
    },
    /// The server's certificate is not valid yet.
    #[error("the coordinator's certificate is not valid yet{}: check the clocks", until(.not_before))]
    ServerNotYetValid {
        /// Its notBefore, when rustls said.
        not_before: Option<String>,
    },
    /// The server's certificate does not name the host in the URL.
    #[error(
        "the coordinator's certificate is not valid for the host in the coordinator URL: use a host it names (confide certs issue --san)"
    )]
    ServerWrongName,
    /// The server's certificate is CA-signed but not in the coordinator role.
    #[error(transparent)]
    NotTheCoordinator(#[from] NotTheCoordinator),
    /// The server's certificate was refused for another reason.
    #[error("the coordinator's certificate was refused: {0}")]
    ServerBadCertificate(String),
    /// The server refused our certificate.
    #[error("the coordinator rejected this {client}'s certificate: {reason}")]
    Rejected {
        /// `worker`, `client`.
        client: &'static str,
        /// From its alert.
        reason: Rejection,
    },
    /// We speak TLS; the server does not.
    #[error("the coordinator does not speak TLS (is it running with --insecure-dev?) but this {client} is configured with TLS")]
    ServerWithoutTls {
        /// `worker`, `client`.
        client: &'static str,
    },
    /// The server speaks TLS; we do not.
    #[error("the coordinator speaks TLS but this {client} is configured without TLS (insecure dev)")]
    ServerSpeaksTls {
        /// `worker`, `client`.
        client: &'static str,
    },
}

fn on(date: &Option<String>) -> String {
    date.as_ref().map(|d| format!(" on {d}")).unwrap_or_default()
}

fn until(date: &Option<String>) -> String {
    date.as_ref().map(|d| format!(" (valid from {d})")).unwrap_or_default()
}

/// The certificate fault inside a failed connection or call, if one is why it failed.
/// `client` names the caller in messages (`worker`, `client`).
pub fn classify(error: &(dyn Error + 'static), client: &'static str) -> Option<ConnectFault> {
    // A chain is short; the bound only guards against a cycle.
    let mut pending = vec![error];
    let mut seen = 0;
    while let Some(e) = pending.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        if let Some(wrong) = e.downcast_ref::<NotTheCoordinator>() {
            return Some(ConnectFault::NotTheCoordinator(wrong.clone()));
        }
        if let Some(fault) = e.downcast_ref::<rustls::Error>().and_then(|r| from_rustls(r, client)) {
            return Some(fault);
        }
        // `io::Error::source` and h2's error skip the error they wrap: look inside by hand.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            pending.push(inner);
        }
        if let Some(io) = e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            pending.push(io);
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    None
}

/// The fault a rustls error stands for (None for errors that are not about certificates).
pub fn from_rustls(error: &rustls::Error, client: &'static str) -> Option<ConnectFault> {
    let unix = |t: &rustls::pki_types::UnixTime| utc(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    Some(match error {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => ConnectFault::ServerUnknownCa,
            CertificateError::Expired => ConnectFault::ServerExpired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => ConnectFault::ServerExpired { not_after: Some(unix(not_after)) },
            CertificateError::NotValidYet => ConnectFault::ServerNotYetValid { not_before: None },
            CertificateError::NotValidYetContext { not_before, .. } => {
                ConnectFault::ServerNotYetValid { not_before: Some(unix(not_before)) }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => ConnectFault::ServerWrongName,
            CertificateError::Other(other) => match other.0.downcast_ref::<NotTheCoordinator>() {
                Some(wrong) => ConnectFault::NotTheCoordinator(wrong.clone()),
                None => ConnectFault::ServerBadCertificate(other.to_string()),
            },
            other => ConnectFault::ServerBadCertificate(other.to_string()),
        },
        rustls::Error::AlertReceived(alert) => {
            let reason = match alert {
                // Every federation CA has the same name, so a certificate from another one is
                // found "issued" by the server's CA and fails its signature check: decrypt_error.
                AlertDescription::UnknownCA | AlertDescription::DecryptError => Rejection::UnknownCa,
                AlertDescription::CertificateExpired => Rejection::Expired,
                AlertDescription::CertificateRevoked => Rejection::Revoked,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::AccessDenied => Rejection::Other(format!("{alert:?}")),
                _ => return None,
            };
            ConnectFault::Rejected { client, reason }
        }
        _ => return None,
    })
}

/// What a server answered to an HTTP/2 greeting sent in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// A TLS record (an alert): the server expects TLS.
    Tls,
    /// An HTTP/2 frame: a plaintext gRPC server.
    PlainHttp2,
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a plaintext gRPC client
/// sends first.
const H2_GREETING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads what a server's first bytes say about it.
pub fn speaks(first: &[u8]) -> Option<Speaks> {
    match first {
        // TLS record: content type alert (21) or handshake (22), then version 3.x.
        [0x15 | 0x16, 0x03, ..] => Some(Speaks::Tls),
        // HTTP/2 frame header: 3 bytes length, then type SETTINGS (4) or GOAWAY (7).
        [_, _, _, 0x04 | 0x07, ..] => Some(Speaks::PlainHttp2),
        _ => None,
    }
}

/// Greets the server at `authority` (`host:port`) in plaintext HTTP/2 and reads what it
/// answers (None when it cannot be reached or says nothing recognisable within two seconds).
pub async fn probe(authority: &str) -> Option<Speaks> {
    let wait = Duration::from_secs(2);
    let mut tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(authority)).await.ok()?.ok()?;
    tcp.write_all(H2_GREETING).await.ok()?;
    let mut buf = [0u8; 9];
    let mut got = 0;
    while got < 4 {
        match tokio::time::timeout(wait, tcp.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    speaks(&buf[..got])
}

/// The `host:port` a coordinator URL dials (default port 443 for https, 80 for http).
pub fn authority(url: &str) -> Option<String> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    Some(format!("{host}:{port}"))
}

/// Why dialling `url` failed with `error`, if retrying cannot help: a certificate fault in the
/// error, else in a fresh handshake through `tls` (our connector; None without TLS), else —
/// when our TLS mode disagrees with what the server speaks — the TLS mismatch.
pub async fn diagnose(
    error: &(dyn Error + Send + Sync + 'static),
    url: &str,
    tls: Option<&crate::CoordinatorConnector>,
    client: &'static str,
) -> Option<ConnectFault> {
    if let Some(fault) = classify(error, client) {
        return Some(fault);
    }
    if let Some(fault) = match tls {
        Some(connector) => connector.diagnose(client).await,
        None => None,
    } {
        return Some(fault);
    }
    match (probe(&authority(url)?).await?, tls.is_some()) {
        (Speaks::Tls, false) => Some(ConnectFault::ServerSpeaksTls { client }),
        (Speaks::PlainHttp2, true) => Some(ConnectFault::ServerWithoutTls { client }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_and_alerts_are_named_through_the_wrappers() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(classify(&unknown, "worker"), Some(ConnectFault::ServerUnknownCa));
        let wrapped = Wrapper(io(rustls::Error::AlertReceived(AlertDescription::CertificateExpired)));
        let fault = classify(&wrapped, "client").expect("inside a wrapper");
        assert_eq!(fault.to_string(), "the coordinator rejected this client's certificate: it has expired");
        let revoked = io(rustls::Error::AlertReceived(AlertDescription::CertificateRevoked));
        assert!(matches!(classify(&revoked, "worker"), Some(ConnectFault::Rejected { reason: Rejection::Revoked, .. })));
        let unknown_ca = io(rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        assert!(classify(&unknown_ca, "worker").expect("alert").to_string().contains("unknown CA"));
        let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(200_000)),
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(0)),
        });
        assert_eq!(
            classify(&io(expired), "worker").expect("expired").to_string(),
            "the coordinator's certificate expired on 1970-01-01 00:00:00 UTC: its operator must issue a new one"
        );
        let wrong = NotTheCoordinator { name: "bank2".into(), role: "institution".into() };
        assert!(matches!(classify(&io_other(wrong), "worker"), Some(ConnectFault::NotTheCoordinator(_))));
        // Not about certificates: worth retrying.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused, "worker"), None);
        assert_eq!(classify(&io(rustls::Error::AlertReceived(AlertDescription::CloseNotify)), "worker"), None);
    }

    /// An error with a source, as hyper's and tonic's are.
    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Wrapper(#[source] std::io::Error);

    fn io_other(e: NotTheCoordinator) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, e)
    }

    #[test]
    fn first_bytes_tell_tls_from_plaintext_http2() {
        assert_eq!(speaks(&[0x15, 0x03, 0x03, 0x00, 0x02]), Some(Speaks::Tls));
        assert_eq!(speaks(&[0x00, 0x00, 0x06, 0x04, 0x00]), Some(Speaks::PlainHttp2));
        assert_eq!(speaks(b"HTTP/1.1 400"), None);
        assert_eq!(speaks(&[]), None);
        assert_eq!(authority("https://127.0.0.1:7070").as_deref(), Some("127.0.0.1:7070"));
        assert_eq!(authority("http://localhost").as_deref(), Some("localhost:80"));
    }

    #[tokio::test]
    async fn a_probe_tells_a_tls_server_from_a_plaintext_one() {
        // A TLS server answers the plaintext greeting with an alert record.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]).await;
            }
        });
        assert_eq!(probe(&addr).await, Some(Speaks::Tls));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed_addr = closed.local_addr().expect("addr").to_string();
        drop(closed);
        assert_eq!(probe(&closed_addr).await, None, "nothing listening: transient");
    }
}
