//! Dialling the coordinator over mutual TLS, accepting only a server whose certificate holds
//! the coordinator role.
//!
//! tonic's own [`crate::client_config`] accepts any server certificate the federation CA
//! signed for the host name — an institution's or an admin's included, since every
//! certificate carries both TLS usages. A bank's worker must not hand its secure-aggregation
//! messages to another bank posing as the coordinator, so it dials through
//! [`CoordinatorConnector`]: the usual WebPKI checks (CA, validity, host name) and then the
//! role in the certificate, inside the handshake, before a single request is sent.
//!
//! Use: [`coordinator_endpoint`] gives the tonic endpoint (its URL rewritten to `http://`,
//! because the connector, not tonic, does the TLS) and the connector to pass to
//! [`tonic::transport::Endpoint::connect_with_connector`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

use crate::{Peer, Role, TlsError, TlsFiles, cert_err, read};

/// The server presented a CA-signed certificate that is not a coordinator's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server's certificate is for `{name}` in role `{role}`, not the federation's coordinator: refusing to connect")]
pub struct NotTheCoordinator {
    /// The certificate's common name.
    pub name: String,
    /// Its role (`unknown` when it names none).
    pub role: String,
}

/// WebPKI server verification, then the coordinator role.
#[derive(Debug)]
struct CoordinatorVerifier {
    /// CA, validity and host-name checks.
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        check_coordinator_role(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Refuses a (CA-verified) server certificate whose role is not `coordinator`.
fn check_coordinator_role(der: &[u8]) -> Result<(), rustls::Error> {
    let bad = |e: TlsError| rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))));
    let peer = Peer::from_der(der).map_err(bad)?;
    if peer.role == Some(Role::Coordinator) {
        return Ok(());
    }
    let wrong = NotTheCoordinator { name: peer.name, role: peer.role.map_or("unknown", Role::as_str).to_string() };
    Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(wrong)))))
}

/// Dials the coordinator: TCP, then mutual TLS that accepts only a coordinator certificate.
#[derive(Clone)]
pub struct CoordinatorConnector {
    /// The rustls client (our certificate, the role-checking verifier, ALPN h2).
    tls: tokio_rustls::TlsConnector,
    /// The name the server's certificate must be valid for.
    server_name: ServerName<'static>,
    /// `host:port` to dial.
    authority: String,
}

impl std::fmt::Debug for CoordinatorConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConnector").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for CoordinatorConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// Dials the configured coordinator (the URI tonic passes is the rewritten `http://` one,
    /// for the same host and port).
    fn call(&mut self, _: Uri) -> Self::Future {
        let (tls, name, authority) = (self.tls.clone(), self.server_name.clone(), self.authority.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await.map_err(|e| match not_the_coordinator(&e) {
                // rustls prints a certificate error's cause with `Debug`; say it plainly.
                Some(wrong) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, wrong),
                None => e,
            })?;
            Ok(TokioIo::new(stream))
        })
    }
}

impl CoordinatorConnector {
    /// Dials once more only to see how the handshake ends, for a connection that failed
    /// without saying why. With TLS 1.3 the server judges our certificate after our side of the
    /// handshake is done, so its refusal (an alert: unknown CA, expired, revoked) reaches only
    /// the connection's background reader, and the call fails as a bare `transport error`.
    /// Here the first read after the handshake returns that alert (or the server's first bytes).
    pub async fn diagnose(&self, client: &'static str) -> Option<crate::fault::ConnectFault> {
        let wait = std::time::Duration::from_secs(5);
        let tcp = tokio::time::timeout(wait, TcpStream::connect(&self.authority)).await.ok()?.ok()?;
        let mut tls = match tokio::time::timeout(wait, self.tls.connect(self.server_name.clone(), tcp)).await.ok()? {
            Ok(tls) => tls,
            Err(e) => return crate::fault::classify(&e, client),
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(wait, tokio::io::AsyncReadExt::read(&mut tls, &mut first)).await {
            Ok(Err(e)) => crate::fault::classify(&e, client),
            _ => None,
        }
    }
}

/// The role refusal inside a failed handshake, if that is why it failed.
fn not_the_coordinator(e: &std::io::Error) -> Option<NotTheCoordinator> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other.0.downcast_ref::<NotTheCoordinator>().cloned(),
        _ => None,
    }
}

fn pem_der(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    let text = read(path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("{}: not PEM: {e}", path.display())))?;
    Ok(pem.contents)
}

/// The tonic endpoint and connector for the coordinator at `url` (`https://host:port`),
/// presenting `files`' certificate and trusting only a coordinator certificate signed by its CA.
pub fn coordinator_endpoint(files: &TlsFiles, url: &str) -> Result<(tonic::transport::Endpoint, CoordinatorConnector), TlsError> {
    let uri: Uri = url.parse().map_err(|e| TlsError::Certificate(format!("coordinator URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(TlsError::Certificate(format!("coordinator URL {url:?}: with TLS the URL must be https://")));
    }
    let host = uri.host().ok_or_else(|| TlsError::Certificate(format!("coordinator URL {url:?} names no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(cert_err)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_der(&files.ca)?)).map_err(cert_err)?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(cert_err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(&files.key)?));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CoordinatorVerifier { inner }))
        .with_client_auth_cert(vec![CertificateDer::from(pem_der(&files.cert)?)], key)
        .map_err(cert_err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}")).map_err(cert_err)?;
    let connector = CoordinatorConnector { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name, authority };
    Ok((endpoint, connector))
}

#[cfg(test)]
mod tests {
    use tower_service::Service;

    use super::*;

    /// A TLS server on 127.0.0.1 presenting `name`'s certificate (requiring a client
    /// certificate from the same CA); returns its port.
    async fn serve_as(dir: &std::path::Path, name: &str) -> u16 {
        serve_trusting(dir, name, &dir.join("ca.pem")).await
    }

    /// [`serve_as`], trusting client certificates from the CA in `client_ca`.
    async fn serve_trusting(dir: &std::path::Path, name: &str, client_ca: &std::path::Path) -> u16 {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(pem_der(client_ca).expect("ca"))).expect("root");
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(&dir.join(format!("{name}.key"))).expect("key")));
        let cert = CertificateDer::from(pem_der(&dir.join(format!("{name}.pem"))).expect("cert"));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(clients)
            .with_single_cert(vec![cert], key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_server_holding_an_institution_or_admin_certificate_is_not_the_coordinator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        crate::init_ca(d, 1).expect("ca");
        let sans = ["127.0.0.1".to_string()];
        crate::issue(d, Role::Coordinator, "coordinator", &sans, 1, d).expect("coordinator");
        crate::issue(d, Role::Institution, "bank2", &sans, 1, d).expect("bank2");
        crate::issue(d, Role::Admin, "alice", &sans, 1, d).expect("alice");
        crate::issue(d, Role::Institution, "bank1", &[], 1, d).expect("bank1");
        let bank1 = TlsFiles { ca: d.join("ca.pem"), cert: d.join("bank1.pem"), key: d.join("bank1.key") };
        for (server, role) in [("bank2", "institution"), ("alice", "admin")] {
            let port = serve_as(d, server).await;
            let (_, mut connector) = coordinator_endpoint(&bank1, &format!("https://127.0.0.1:{port}")).expect("connector");
            let err = connector.call(Uri::from_static("http://ignored")).await.expect_err("a non-coordinator server is refused");
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{server}` in role `{role}`, not the federation's coordinator")), "{msg}");
        }
        let port = serve_as(d, "coordinator").await;
        let (endpoint, mut connector) = coordinator_endpoint(&bank1, &format!("https://127.0.0.1:{port}")).expect("connector");
        assert_eq!(endpoint.uri().scheme_str(), Some("http"), "the connector, not tonic, does the TLS");
        connector.call(Uri::from_static("http://ignored")).await.expect("the coordinator is accepted");
        assert!(coordinator_endpoint(&bank1, "http://127.0.0.1:1").is_err(), "TLS needs an https URL");
    }

    #[tokio::test]
    async fn a_server_refusing_our_certificate_is_told_apart_from_an_unreachable_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        crate::init_ca(d, 1).expect("ca");
        crate::issue(d, Role::Coordinator, "coordinator", &["127.0.0.1".to_string()], 1, d).expect("coordinator");
        crate::issue(d, Role::Institution, "bank1", &[], 1, d).expect("bank1");
        let other = tempfile::tempdir().expect("tempdir");
        crate::init_ca(other.path(), 1).expect("other ca");
        let bank1 = TlsFiles { ca: d.join("ca.pem"), cert: d.join("bank1.pem"), key: d.join("bank1.key") };
        let port = serve_trusting(d, "coordinator", &other.path().join("ca.pem")).await;
        let (_, connector) = coordinator_endpoint(&bank1, &format!("https://127.0.0.1:{port}")).expect("connector");
        let fault = connector.diagnose("worker").await.expect("the server's alert is read");
        assert!(
            matches!(fault, crate::fault::ConnectFault::Rejected { reason: crate::fault::Rejection::UnknownCa, .. }),
            "{fault}"
        );
        let port = serve_as(d, "coordinator").await;
        let (_, connector) = coordinator_endpoint(&bank1, &format!("https://127.0.0.1:{port}")).expect("connector");
        assert_eq!(connector.diagnose("worker").await, None, "a coordinator that accepts us");
    }
}
