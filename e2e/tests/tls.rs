//! Mutual TLS on every connection: identities come from certificates issued by the federation
//! CA, never from claims. Unknown, revoked or wrong-role certificates are refused.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};
use confide_proto::v1::{RegisterRequest, federation_client::FederationClient};

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start();
    // A second, unrelated CA issues an "admin" certificate.
    let rogue = cluster.dir.path().join("rogue");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(confide_e2e::binary("confide")).arg("certs").args(args).output().expect("certs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let rogue_dir = rogue.display().to_string();
    run(&["init", "--dir", &rogue_dir]);
    run(&["issue", "--ca-dir", &rogue_dir, "--role", "admin", "--name", "tester", "--out", &rogue_dir]);
    let (ca, _, _) = cluster.tls_files("tester");
    let out = std::process::Command::new(confide_e2e::binary("confide"))
        .args(["job", "list"])
        .env("CONFIDE_COORDINATOR", cluster.url())
        .env("CONFIDE_CA", ca)
        .env("CONFIDE_CERT", rogue.join("tester.pem"))
        .env("CONFIDE_KEY", rogue.join("tester.key"))
        .output()
        .expect("confide");
    assert!(!out.status.success(), "a certificate from another CA must not get in");
    // And plaintext does not reach a TLS coordinator either.
    let plain = std::process::Command::new(confide_e2e::binary("confide"))
        .args(["job", "list"])
        .env("CONFIDE_COORDINATOR", cluster.url().replace("https://", "http://"))
        .output()
        .expect("confide");
    assert!(!plain.status.success());
    // The real admin certificate works.
    assert!(cluster.confide(&["job", "list"]).status.success());
}

#[test]
fn an_expired_certificate_is_refused() {
    let cluster = Cluster::start();
    cluster.issue("admin", "former", &["--backdate-days", "30", "--days", "10"]);
    let out = cluster.confide_as("former", &["job", "list"]);
    assert!(!out.status.success(), "an expired certificate must not get in");
    assert!(cluster.confide(&["job", "list"]).status.success(), "a valid one still does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_names_come_from_the_certificate() {
    let cluster = Cluster::start();
    cluster.issue("institution", "bank1", &[]);
    // A bank certificate cannot use the Admin service.
    let out = cluster.confide_as("bank1", &["job", "list"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("in role `institution`, but the confide CLI needs a certificate in role `admin`"), "{said}");
    // Nor claim to be another bank.
    let mut client = FederationClient::new(cluster.channel_as("bank1").await);
    let claim = |id: &str| RegisterRequest { institution_id: id.into(), ..Default::default() };
    let err = client.register(claim("bank2")).await.expect_err("impersonation");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Nor substitute its secure-aggregation signing key.
    let mut forged = claim("bank1");
    forged.signing_public_key = vec![7; 32];
    let err = client.register(forged).await.expect_err("key substitution");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // As itself, with the certificate's key, it registers.
    client.register(claim("bank1")).await.expect("register as itself");
    // An admin certificate cannot act as a worker.
    let mut admin = FederationClient::new(cluster.channel_as("tester").await);
    assert_eq!(admin.register(claim("tester")).await.expect_err("admin as worker").code(), tonic::Code::PermissionDenied);
}

#[test]
fn a_revoked_certificate_is_refused_and_the_federation_goes_on_without_it() {
    let (mut cluster, _) = Cluster::telco_federation(3, 43);
    let (_, cert, _) = cluster.tls_files("bank3");
    let der_fingerprint = confide_tls::fingerprint_of(&cert).expect("fingerprint");
    cluster.revoked.push(der_fingerprint);
    cluster.kill_coordinator();
    cluster.start_coordinator();
    std::thread::sleep(Duration::from_secs(2));
    let workers = String::from_utf8_lossy(&cluster.confide(&["workers"]).stdout).to_string();
    assert!(!workers.lines().any(|l| l.starts_with("bank3") && l.contains(" connected ")), "{workers}");
    assert!(cluster.read_log("bank3").contains("revoked"), "bank3 is told why:\n{}", cluster.read_log("bank3"));
    // With bank3 locked out only two institutions remain, below the floor of three: the job
    // waits, then fails saying so.
    let job = cluster.submit(&telco_job("revoked", "kind = \"logistic_regression\"", 1, "").replace(
        "[training]",
        "[selection]\nwait_for_workers_secs = 3\nmax_round_attempts = 1\n\n[training]",
    ));
    let done = cluster.wait_finished(&job, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "two banks are below the floor of three: {done:#}");
    let error = done["error"].as_str().unwrap_or("");
    assert!(error.starts_with("no round could start within 3s: waiting for participants: 2 of 2 connected banks offer telco_churn"), "{done:#}");
}


#[test]
fn plaintext_needs_the_explicit_insecure_dev_flag_and_warns() {
    // Without [tls] and without --insecure-dev the coordinator refuses to start, saying why.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(confide_e2e::binary("confide-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("coordinator");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mutual TLS is required"), "{}", String::from_utf8_lossy(&out.stderr));

    // With it, a development federation runs in plaintext, and every side says so.
    let mut cluster = Cluster::start_insecure();
    let parts = confide_e2e::partition_telco(&cluster.dir.path().join("partition"), 3, 47);
    for bank in ["bank1", "bank2", "bank3"] {
        cluster.add_telco_worker(bank, &parts);
    }
    let job = cluster.submit(&telco_job("dev", "kind = \"logistic_regression\"", 1, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done:#}");
    assert!(cluster.read_log("coordinator").contains("INSECURE development mode"));
    assert!(cluster.read_log("bank1").contains("--insecure-dev"));
}
