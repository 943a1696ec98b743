//! `confide-worker audit verify` and `audit show`, run as the built binary against a log the
//! library wrote: intact, then tampered with.

use std::path::Path;
use std::process::{Command, Output};

use confide_worker::audit::{AuditLog, Entry, FailureNote, Phase, Sent};

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confide-worker")).args(args).output().expect("run confide-worker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn entry(job: &str, round: u64, sent: Sent, failure: Option<FailureNote>) -> Entry {
    Entry {
        time: "2025-03-01T12:00:00Z".into(),
        job: job.into(),
        round,
        task: format!("task-{round}"),
        phase: Phase::Train,
        sent,
        vector_len: matches!(sent, Sent::MaskedInput).then_some(42),
        model_hash: Some("ab".repeat(32)),
        participants: vec!["bank1".into(), "bank2".into(), "bank3".into()],
        threshold: Some(2),
        failure,
        privacy_budget_spent: None,
        budget: None,
    }
}

/// A development bank's config (no TLS: the identity key file signs) and a log of 3 records.
fn bank(dir: &Path) -> String {
    let config = dir.join("bank.toml");
    std::fs::write(&config, "coordinator = \"http://127.0.0.1:1\"\ninstitution_id = \"bank1\"\ndata_dir = \"data\"\n")
        .expect("config");
    let data = dir.join("data");
    let key = confide_worker::identity::load_or_create(&data).expect("identity");
    let log = AuditLog::open(&data.join("audit.log"), key).expect("log");
    log.append(entry("job-a", 1, Sent::KeyAdvertisement, None)).expect("append");
    log.append(entry("job-a", 1, Sent::MaskedInput, None)).expect("append");
    let refusal = FailureNote { kind: "policy".into(), reason: "model kind `mlp` is not allowed".into() };
    log.append(entry("job-b", 1, Sent::FailureReport, Some(refusal))).expect("append");
    config.display().to_string()
}

#[test]
fn verify_accepts_an_intact_log_and_names_the_first_tampered_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bank(dir.path());
    let ok = worker(&["audit", "verify", "--config", &config]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(stdout(&ok).starts_with("3 records, chain and signatures intact, head "), "{}", stdout(&ok));
    let records = confide_worker::audit::read_records(&dir.path().join("data/audit.log")).expect("records");
    let job = worker(&["audit", "verify", "--config", &config, "--job", "job-a"]);
    assert!(stdout(&job).contains(&format!("job job-a: audit head {}", records[1].hash)), "{}", stdout(&job));

    let path = dir.path().join("data/audit.log");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replacen("\"vector_len\":42", "\"vector_len\":7", 1)).expect("tamper");
    let bad = worker(&["audit", "verify", "--config", &config]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(stdout(&bad).contains("record 2: content does not match its hash"), "{}", stdout(&bad));
}

#[test]
fn show_lists_the_records_as_a_table_or_json_filtered_by_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bank(dir.path());
    let table = worker(&["audit", "show", "--config", &config]);
    assert!(table.status.success(), "{table:?}");
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("SEQ") && lines[0].contains("PARTICIPANTS") && lines[0].ends_with("REASON"), "{text}");
    assert!(lines[2].contains("masked_input") && lines[2].contains("42") && lines[2].contains("bank1,bank2,bank3"), "{text}");
    assert!(lines[3].contains("failure_report") && lines[3].contains("policy: model kind `mlp` is not allowed"), "{text}");

    let json = worker(&["audit", "show", "--config", &config, "--job", "job-b", "--json"]);
    assert!(json.status.success(), "{json:?}");
    let records: Vec<serde_json::Value> =
        stdout(&json).lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0]["seq"].as_u64(), records[0]["sent"].as_str()), (Some(3), Some("failure_report")));
}
