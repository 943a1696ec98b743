//! Identity faults as an operator meets them, with real processes over loopback: every wrong
//! certificate file is named at start (exit 2) by the worker, the coordinator and the CLI; a
//! connection that cannot work — a server certificate from another CA or expired, our
//! certificate rejected by the server, TLS on one side only — ends the worker with the reason
//! (exit 3) instead of being retried as "coordinator unreachable"; and a second process with an
//! identity already connected is refused, on both sides, while the first keeps its stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use confide_e2e::{Cluster, binary, partition_telco};

/// Runs `cmd` to its end (killing it after `limit`): its exit code (None when it had to be
/// killed) and everything it printed.
fn run_for(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!("{}{}", std::fs::read_to_string(&err).unwrap_or_default(), std::fs::read_to_string(&out).unwrap_or_default());
    (code, text)
}

/// `confide certs ARGS`, which must succeed.
fn certs(args: &[&str]) {
    let out = Command::new(binary("confide")).arg("certs").args(args).output().expect("confide certs");
    assert!(out.status.success(), "confide certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Issues `name` in `role` from the cluster's CA into `out` (extra flags appended).
fn issue_into(cluster: &Cluster, out: &Path, role: &str, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (pki, out_s) = (cluster.pki(), out.display().to_string());
    let mut args = vec!["issue", "--ca-dir", &pki, "--role", role, "--name", name, "--out", &out_s];
    args.extend_from_slice(extra);
    certs(&args);
    (out.join(format!("{name}.pem")), out.join(format!("{name}.key")))
}

/// A second federation CA (`dir/ca.pem`), unrelated to the cluster's.
fn rogue_ca(dir: &Path) -> String {
    let d = dir.display().to_string();
    certs(&["init", "--dir", &d]);
    d
}

/// bank1's worker configuration (TLS with its real certificate), for the tests to edit.
fn bank1_config(cluster: &Cluster) -> String {
    let partition = partition_telco(&cluster.dir.path().join("partition"), 1, 61);
    let (_, schema) = confide_e2e::telco();
    let bank = partition.join("bank1");
    let path = cluster.write_worker_config("bank1", &[("telco_churn", &schema, &bank.join("train.csv"), &bank.join("test.csv"))], "");
    std::fs::read_to_string(path).expect("config")
}

/// Runs `confide-worker` on `config` text (written beside the cluster) until it exits.
fn worker(cluster: &Cluster, name: &str, config: &str, extra: &[&str], limit: Duration) -> (Option<i32>, String) {
    let path = cluster.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("config");
    run_for(Command::new(binary("confide-worker")).arg("--config").arg(&path).args(extra).env("RUST_LOG", "info"), limit)
}

/// `config` with its certificate and key paths replaced.
fn with_files(cluster: &Cluster, config: &str, cert: &Path, key: &Path) -> String {
    let (_, real_cert, real_key) = cluster.tls_files("bank1");
    config.replace(&format!("{real_cert:?}"), &format!("{cert:?}")).replace(&format!("{real_key:?}"), &format!("{key:?}"))
}

#[test]
fn a_worker_names_each_wrong_certificate_file_at_start_and_exits_2() {
    let cluster = Cluster::start();
    let config = bank1_config(&cluster);
    let (_, cert, key) = cluster.tls_files("bank1");
    let scratch = cluster.dir.path().join("bad");
    std::fs::create_dir_all(&scratch).expect("dir");
    let start = |name: &str, text: &str| worker(&cluster, name, text, &[], Duration::from_secs(60));

    let missing = scratch.join("absent.pem");
    let (code, said) = start("missing", &with_files(&cluster, &config, &missing, &key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("certificate {}: file not found", missing.display())), "{said}");

    let garbage = scratch.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").expect("write");
    let (code, said) = start("garbage", &with_files(&cluster, &config, &garbage, &key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("certificate {} is not a PEM certificate", garbage.display())), "{said}");

    let (_, other_key) = issue_into(&cluster, &scratch, "institution", "bank2", &[]);
    let (code, said) = start("mismatch", &with_files(&cluster, &config, &cert, &other_key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("the key {} does not belong to the certificate {}", other_key.display(), cert.display())), "{said}");

    let expired_dir = scratch.join("expired");
    let (old, old_key) = issue_into(&cluster, &expired_dir, "institution", "bank1", &["--backdate-days", "30", "--days", "10"]);
    let (code, said) = start("expired", &with_files(&cluster, &config, &old, &old_key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("your certificate {} expired on 20", old.display())), "{said}");
    assert!(said.contains("(valid from 20") && said.contains("it is now 20"), "both dates and now: {said}");

    let future_dir = scratch.join("future");
    let (early, early_key) = issue_into(&cluster, &future_dir, "institution", "bank1", &["--backdate-days", "-10", "--days", "30"]);
    let (code, said) = start("future", &with_files(&cluster, &config, &early, &early_key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("your certificate {} is not valid until 20", early.display())), "{said}");

    let admin_dir = scratch.join("admin");
    let (admin, admin_key) = issue_into(&cluster, &admin_dir, "admin", "bank1", &[]);
    let (code, said) = start("role", &with_files(&cluster, &config, &admin, &admin_key));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("is for `bank1` in role `admin`, but a bank's worker needs a certificate in role `institution`"), "{said}");

    let rogue = rogue_ca(&scratch.join("rogue"));
    let rogue_out = scratch.join("rogue-issued");
    let out = rogue_out.display().to_string();
    certs(&["issue", "--ca-dir", &rogue, "--role", "institution", "--name", "bank1", "--out", &out]);
    let (code, said) = start("foreign", &with_files(&cluster, &config, &rogue_out.join("bank1.pem"), &rogue_out.join("bank1.key")));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("was not issued by the federation CA") && said.contains("unknown CA"), "{said}");
}

#[test]
fn the_coordinator_names_its_wrong_certificate_files_at_start_and_exits_2() {
    let cluster = Cluster::start();
    let scratch = cluster.dir.path().join("coordinator-bad");
    let (ca, _, _) = cluster.tls_files("coordinator");
    let start = |cert: &Path, key: &Path| {
        let config = scratch.join("c.toml");
        std::fs::write(&config, format!("[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n")).expect("config");
        run_for(
            Command::new(binary("confide-coordinator"))
                .arg("--config")
                .arg(&config)
                .args(["--listen", "127.0.0.1:0", "--data-dir"])
                .arg(scratch.join("data")),
            Duration::from_secs(30),
        )
    };
    let (old, old_key) = issue_into(&cluster, &scratch, "coordinator", "coordinator", &["--backdate-days", "400", "--days", "365"]);
    let (code, said) = start(&old, &old_key);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("your certificate {} expired on 20", old.display())), "{said}");

    let (bank, bank_key) = issue_into(&cluster, &scratch, "institution", "bank5", &["--san", "127.0.0.1"]);
    let (code, said) = start(&bank, &bank_key);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("is for `bank5` in role `institution`, but the coordinator needs a certificate in role `coordinator`"), "{said}");

    let no_key = scratch.join("absent.key");
    let (code, said) = start(&old, &no_key);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("key {}: file not found", no_key.display())), "{said}");
}

#[test]
fn the_cli_names_its_expired_or_foreign_certificate_before_connecting() {
    let cluster = Cluster::start();
    cluster.issue("admin", "former", &["--backdate-days", "30", "--days", "10"]);
    let out = cluster.confide_as("former", &["job", "list"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let (_, cert, _) = cluster.tls_files("former");
    assert!(said.contains(&format!("your certificate {} expired on 20", cert.display())), "{said}");
    assert!(!said.contains("transport error"), "{said}");

    // Plaintext against the TLS coordinator.
    let out = Command::new(binary("confide"))
        .args(["job", "list"])
        .env("CONFIDE_COORDINATOR", cluster.url().replace("https://", "http://"))
        .output()
        .expect("confide");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("the coordinator speaks TLS but this client is configured without TLS"), "{said}");

    // `--days` below one would write a certificate that is already expired.
    for days in ["0", "-3"] {
        let pki = cluster.pki();
        let out = Command::new(binary("confide"))
            .args(["certs", "issue", "--ca-dir", &pki, "--role", "admin", "--name", "nobody", "--out", &pki, "--days", days])
            .output()
            .expect("confide");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--days must be at least 1"), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!cluster.tls_files("nobody").1.exists(), "nothing written");
    }
}

#[test]
fn a_server_that_rejects_our_certificate_or_presents_a_bad_one_ends_the_worker_with_the_reason() {
    let cluster = Cluster::start();
    let config = bank1_config(&cluster);
    let scratch = cluster.dir.path().join("servers");
    let (ca, real_cert, real_key) = cluster.tls_files("coordinator");
    let point = |addr: &str| config.replace(&cluster.url(), &format!("https://{addr}"));
    let limit = Duration::from_secs(60);

    // A coordinator certificate from another CA.
    let rogue = rogue_ca(&scratch.join("rogue"));
    let rogue_out = scratch.join("rogue-issued");
    let out = rogue_out.display().to_string();
    certs(&["issue", "--ca-dir", &rogue, "--role", "coordinator", "--name", "coordinator", "--san", "127.0.0.1", "--out", &out]);
    let addr = confide_e2e::tls_stand_in(&ca, &rogue_out.join("coordinator.pem"), &rogue_out.join("coordinator.key"));
    let (code, said) = worker(&cluster, "foreign-server", &point(&addr), &[], limit);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("the server's certificate was not issued by this federation's CA (unknown CA)"), "{said}");
    assert!(!said.contains("coordinator unreachable"), "not retried as unreachable: {said}");

    // An expired coordinator certificate.
    let (old, old_key) =
        issue_into(&cluster, &scratch, "coordinator", "coordinator", &["--san", "127.0.0.1", "--backdate-days", "30", "--days", "10"]);
    let addr = confide_e2e::tls_stand_in(&ca, &old, &old_key);
    let (code, said) = worker(&cluster, "expired-server", &point(&addr), &[], limit);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("the coordinator's certificate expired on 20"), "{said}");

    // A coordinator that trusts another CA: it rejects bank1's certificate with a TLS alert.
    let addr = confide_e2e::tls_stand_in(&scratch.join("rogue/ca.pem"), &real_cert, &real_key);
    let (code, said) = worker(&cluster, "rejecting-server", &point(&addr), &[], limit);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(
            "the coordinator rejected this worker's certificate: it was not issued by the coordinator's federation CA (unknown CA)"
        ),
        "{said}"
    );
    // ... and the CLI's admin certificate likewise.
    let (_, admin, admin_key) = cluster.tls_files("tester");
    let out = Command::new(binary("confide"))
        .args(["job", "list"])
        .env("CONFIDE_COORDINATOR", format!("https://{addr}"))
        .env("CONFIDE_CA", &ca)
        .env("CONFIDE_CERT", admin)
        .env("CONFIDE_KEY", admin_key)
        .output()
        .expect("confide");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("rejected this client's certificate: it was not issued by the coordinator's federation CA (unknown CA)"),
        "{said}"
    );
}

#[test]
fn tls_on_one_side_only_is_said_and_ends_the_worker() {
    // A plaintext worker against the TLS coordinator (today: an h2 FRAME_SIZE_ERROR, forever).
    let cluster = Cluster::start();
    let config = bank1_config(&cluster);
    let tls_table = config.find("\n[tls]").expect("tls table");
    let rest = &config[tls_table + 1..];
    let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
    let plain =
        format!("{}{}", &config[..tls_table + 1], &rest[end..]).replace(&cluster.url(), &cluster.url().replace("https://", "http://"));
    let (code, said) = worker(&cluster, "plain", &plain, &["--insecure-dev"], Duration::from_secs(60));
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("the coordinator speaks TLS but this worker is configured without TLS (insecure dev)"), "{said}");
    assert!(!said.contains("FRAME_SIZE_ERROR") || said.contains("speaks TLS"), "{said}");

    // A TLS worker against a plaintext development coordinator.
    let insecure = Cluster::start_insecure();
    let tls_to_plain = config.replace(&cluster.url(), &format!("https://{}", insecure.addr));
    let (code, said) = worker(&cluster, "tls-to-plain", &tls_to_plain, &[], Duration::from_secs(60));
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("the coordinator does not speak TLS (is it running with --insecure-dev?) but this worker is configured with TLS"),
        "{said}"
    );
}

#[test]
fn a_second_worker_with_a_connected_identity_is_refused_on_both_sides_and_the_first_keeps_its_stream() {
    let mut cluster = Cluster::start();
    let config = bank1_config(&cluster);
    let path = cluster.dir.path().join("bank1.toml");
    std::fs::write(&path, &config).expect("config");
    cluster.spawn_worker("bank1", &path);
    cluster.wait_workers(1, Duration::from_secs(60));

    // The same certificate from another process (its own data directory, as on another machine).
    let twin = config
        .replace(&cluster.worker_data_dir("bank1").display().to_string(), &cluster.worker_data_dir("bank1-twin").display().to_string());
    let started = Instant::now();
    let (code, said) = worker(&cluster, "bank1-twin", &twin, &[], Duration::from_secs(60));
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("institution bank1 is already connected from another process (since 20"), "{said}");
    assert!(said.contains("stop the other worker or use a different certificate"), "{said}");
    assert!(started.elapsed() >= Duration::from_secs(8), "a short grace for a stale connection first: {:?}", started.elapsed());
    let coordinator = cluster.read_log("coordinator");
    let refusals: Vec<&str> = coordinator.lines().filter(|l| l.contains("ERROR") && l.contains("already connected")).collect();
    assert_eq!(refusals.len(), 1, "logged once as an error naming the identity:\n{coordinator}");
    assert!(refusals[0].contains("bank1"), "{}", refusals[0]);
    // The first kept its stream all along.
    let first = cluster.read_log("bank1");
    assert!(!first.contains("task stream closed by the coordinator"), "{first}");
    cluster.wait_workers(1, Duration::from_secs(5));

    // A worker that crashed is not locked out: its restart connects at once.
    cluster.kill_worker("bank1");
    cluster.spawn_worker("bank1", &path);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.read_log("bank1").matches("registered with the coordinator").count() < 2 {
        assert!(Instant::now() < deadline, "the restarted worker registers:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}
