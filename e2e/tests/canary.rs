//! Customer rows never leave the bank: unique canary values are planted in a worker's data and
//! every byte the worker sends to the coordinator is captured by a loopback proxy; none of the
//! canaries may appear in it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_e2e::{Cluster, partition_telco, telco, telco_job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to `upstream`, recording what clients send.
async fn recording_proxy(upstream: String, sent: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else { continue };
            let sent = sent.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
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
    // Plaintext on purpose: the point is to read every byte the worker sends, which mutual TLS
    // (the default everywhere else) would encrypt.
    let mut cluster = Cluster::start_insecure();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 11);
    let mut canaries = plant(&partition.join("bank1/train.csv"), "TR");
    canaries.extend(plant(&partition.join("bank1/test.csv"), "TE"));

    let sent = Arc::new(Mutex::new(Vec::new()));
    let proxy = recording_proxy(cluster.addr.clone(), sent.clone()).await;
    let (_, schema) = telco();
    let bank1 = partition.join("bank1");
    let config = cluster
        .write_worker_config("bank1", &[("telco_churn", &schema, &bank1.join("train.csv"), &bank1.join("test.csv"))], "")
        .to_path_buf();
    let text = std::fs::read_to_string(&config).expect("config").replace(&cluster.url(), &format!("http://{proxy}"));
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
    assert!(bytes.windows(b"telco_churn".len()).any(|w| w == b"telco_churn"), "the capture is readable plaintext gRPC");
    let hay = String::from_utf8_lossy(&bytes);
    for c in &canaries {
        assert!(!hay.contains(c.as_str()), "canary {c} leaked to the coordinator");
    }
    assert!(!hay.contains("CANARY"), "no canary prefix at all");
}
