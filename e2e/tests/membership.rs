//! Who is in the federation, with real processes: a running coordinator re-reads its revocation
//! file (a revoked admin and a revoked, connected bank are locked out without a restart), and a
//! worker refuses a server whose CA-signed certificate is not the coordinator's.

use std::path::Path;
use std::time::{Duration, Instant};

use confide_e2e::{Cluster, partition_telco};

/// Polls `what` until it holds, panicking with `context()` after `timeout`.
fn eventually(timeout: Duration, what: &str, mut holds: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !holds() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bank_connected(cluster: &Cluster, bank: &str) -> bool {
    let workers = String::from_utf8_lossy(&cluster.confide(&["workers"]).stdout).to_string();
    workers.lines().any(|l| l.starts_with(bank) && l.contains(" connected "))
}

#[test]
fn a_running_coordinator_re_reads_its_revocation_file() {
    let (mut cluster, _) = Cluster::telco_federation(3, 51);
    let file = cluster.dir.path().join("revoked.txt");
    std::fs::write(&file, "# nobody revoked yet\n").expect("revocation file");
    cluster.coordinator_toml = format!("revocation_file = {:?}\n", file);
    cluster.kill_coordinator();
    cluster.start_coordinator();
    cluster.wait_workers(3, Duration::from_secs(60));
    cluster.issue("admin", "alice", &[]);
    assert!(cluster.confide_as("alice", &["job", "list"]).status.success(), "alice is an admin");

    // The operator revokes alice and bank3 by editing the file; the coordinator keeps running.
    let fingerprint = |name: &str| confide_tls::fingerprint_of(&cluster.tls_files(name).1).expect("fingerprint");
    std::fs::write(&file, format!("# left the team\n{}\n# key leaked\n{}\n", fingerprint("alice"), fingerprint("bank3")))
        .expect("revoke");
    let out = cluster.confide_as("alice", &["job", "list"]);
    assert!(!out.status.success(), "a revoked admin is refused at once");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"), "{}", String::from_utf8_lossy(&out.stderr));
    // bank3's open task stream is closed, and its reconnection refused, saying why.
    eventually(Duration::from_secs(20), "bank3 is disconnected", || !bank_connected(&cluster, "bank3"), || cluster.logs());
    eventually(Duration::from_secs(20), "bank3 is told it is revoked", || cluster.read_log("bank3").contains("revoked"), || cluster.logs());
    assert!(cluster.read_log("coordinator").contains("certificate revoked: task stream closed"), "{}", cluster.logs());
    // Everyone else goes on.
    assert!(cluster.confide(&["job", "list"]).status.success(), "the other admin still gets in");
    assert!(bank_connected(&cluster, "bank1") && bank_connected(&cluster, "bank2"), "{}", cluster.logs());
}

/// A TLS server presenting `name`'s certificate (not a coordinator's; the real coordinator
/// refuses to start with one); returns its address.
fn impostor(cluster: &Cluster, name: &str) -> String {
    let (ca, cert, key) = cluster.tls_files(name);
    confide_e2e::tls_stand_in(&ca, &cert, &key)
}

#[test]
fn a_worker_refuses_a_server_whose_certificate_is_not_the_coordinators() {
    let mut cluster = Cluster::start();
    // bank9's certificate is CA-signed and valid for 127.0.0.1, exactly like the coordinator's,
    // but in the institution role.
    cluster.issue("institution", "bank9", &["--san", "127.0.0.1"]);
    let addr = impostor(&cluster, "bank9");
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 53);
    let (_, schema) = confide_e2e::telco();
    let bank = partition.join("bank1");
    let config = cluster.write_worker_config("bank1", &[("telco_churn", &schema, &bank.join("train.csv"), &bank.join("test.csv"))], "");
    let text = std::fs::read_to_string(&config).expect("config").replace(&cluster.url(), &format!("https://{addr}"));
    std::fs::write(&config, text).expect("point bank1 at the impostor");
    cluster.spawn_worker("bank1", Path::new(&config));
    let why = "the server's certificate is for `bank9` in role `institution`, not the federation's coordinator";
    eventually(Duration::from_secs(60), "bank1 says why it refuses the server", || cluster.read_log("bank1").contains(why), || cluster.logs());
    let log = cluster.read_log("bank1");
    assert!(log.contains("ERROR"), "said loudly, not as a routine retry:\n{log}");
    assert!(!log.contains("registered with the coordinator"), "nothing was sent to the impostor:\n{log}");
}
