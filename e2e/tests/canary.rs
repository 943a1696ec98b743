//! Customer rows never leave the bank: unique canary values are planted in a worker's data and
//! every byte the worker sends to the coordinator is captured; none of the canaries may appear
//! in it. The federation runs with mutual TLS as always: the capturing proxy terminates the
//! worker's TLS with a coordinator certificate from the test's own CA, reads the plaintext, and
//! re-encrypts towards the coordinator with the bank's certificate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_e2e::{Cluster, partition_telco, telco, telco_job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// TLS material of the intercepting proxy: it poses as the coordinator towards the worker and
/// as the bank towards the coordinator (the test owns the federation's CA, so it can).
fn proxy_tls(cluster: &Cluster, bank: &str) -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |p: &std::path::Path| CertificateDer::pem_file_iter(p).expect("pem").collect::<Result<Vec<_>, _>>().expect("certs");
    let key = |p: &std::path::Path| PrivateKeyDer::from_pem_file(p).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (ca, coord_cert, coord_key) = cluster.tls_files("coordinator");
    let (_, bank_cert, bank_key) = cluster.tls_files(bank);
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&ca) {
        roots.add(c).expect("root");
    }
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().expect("verifier");
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&coord_cert), key(&coord_key))
        .expect("server config");
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&bank_cert), key(&bank_key))
        .expect("client config");
    client.alpn_protocols = vec![b"h2".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(server)), tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// Forwards TLS connections to `upstream`, recording the plaintext clients send.
async fn recording_proxy(
    upstream: String,
    tls: (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector),
    sent: Arc<Mutex<Vec<u8>>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr").to_string();
    let (acceptor, connector) = tls;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, connector, upstream, sent) = (acceptor.clone(), connector.clone(), upstream.clone(), sent.clone());
            tokio::spawn(async move {
                let Ok(client) = acceptor.accept(client).await else { return };
                let Ok(tcp) = TcpStream::connect(&upstream).await else { return };
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                let Ok(server) = connector.connect(name, tcp).await else { return };
                let (mut cr, mut cw) = tokio::io::split(client);
                let (mut sr, mut sw) = tokio::io::split(server);
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]);
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

fn plant(path: &std::path::Path, tag: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read");
    let mut canaries = Vec::new();
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 0 {
                return line.to_string();
            }
            let canary = format!("CANARY{tag}{i:05}X");
            canaries.push(canary.clone());
            // customerID is the first column.
            let rest = line.split_once(',').map_or("", |(_, r)| r);
            format!("{canary},{rest}")
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
    canaries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_from_the_data_appears_in_any_byte_the_worker_sends() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 11);
    let mut canaries = plant(&partition.join("bank1/train.csv"), "TR");
    canaries.extend(plant(&partition.join("bank1/test.csv"), "TE"));

    let sent = Arc::new(Mutex::new(Vec::new()));
    let (_, schema) = telco();
    let bank1 = partition.join("bank1");
    let config = cluster.write_worker_config("bank1", &[("telco_churn", &schema, &bank1.join("train.csv"), &bank1.join("test.csv"))], "");
    let proxy = recording_proxy(cluster.addr.clone(), proxy_tls(&cluster, "bank1"), sent.clone()).await;
    let text = std::fs::read_to_string(&config).expect("config").replace(&cluster.url(), &format!("https://{proxy}"));
    std::fs::write(&config, text).expect("config");
    cluster.spawn_worker("bank1", &config);
    cluster.add_telco_worker("bank2", &partition);
    cluster.add_telco_worker("bank3", &partition);

    let job = cluster.submit(&telco_job("canary", "kind = \"mlp\"\nhidden = [8]", 2, ""));
    let done = tokio::task::spawn_blocking(move || {
        let done = cluster.wait_finished(&job, Duration::from_secs(120));
        let logs = cluster.logs();
        (done, logs)
    })
    .await
    .expect("join");
    assert_eq!(done.0["status"], "completed", "{:#}\n{}", done.0, done.1);

    let bytes = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(bytes.len() > 10_000, "the proxy saw the worker's contributions ({} bytes)", bytes.len());
    assert!(bytes.windows(b"telco_churn".len()).any(|w| w == b"telco_churn"), "the capture is the decrypted gRPC plaintext");
    let hay = String::from_utf8_lossy(&bytes);
    for c in &canaries {
        assert!(!hay.contains(c.as_str()), "canary {c} leaked to the coordinator");
    }
    assert!(!hay.contains("CANARY"), "no canary prefix at all");
}
