//! Faults at admission, provoked as a data scientist or an operator would: a job file whose
//! model is too large for the coordinator (refused at submit with the size, the limit and its
//! configuration key, and not resumed once the limit is lowered), a job whose resumes keep
//! crashing the coordinator (quarantined, the coordinator starts), and the same job file
//! submitted twice (a hint naming the earlier job; `--idempotency-key` makes it a no-op).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use confide_e2e::{Cluster, telco_job};

fn write_job(cluster: &Cluster, name: &str, toml: &str) -> PathBuf {
    let path = cluster.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("job file");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn job_count(cluster: &Cluster) -> usize {
    let out = cluster.confide(&["job", "list"]);
    assert!(out.status.success(), "job list: {}", text(&out.stderr));
    text(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

/// The job was accepted and waits or runs (no bank is connected in these tests).
fn assert_unfinished(cluster: &Cluster, id: &str) {
    let job = cluster.job(id);
    assert!(matches!(job["status"].as_str(), Some("pending" | "running")), "{job:#}\n{}", cluster.logs());
}

#[test]
fn a_model_too_large_for_the_coordinator_is_refused_at_submit_naming_size_limit_and_key() {
    let mut cluster = Cluster::start();
    // The job file: each layer is within the per-layer bound, the model is 4.3e9 parameters.
    let huge = write_job(&cluster, "huge", &telco_job("huge", "kind = \"mlp\"\nhidden = [65536, 65536]", 3, ""));
    let out = cluster.confide(&["job", "submit", huge.to_str().expect("utf-8")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2: {err}");
    assert!(
        err.contains("the model `mlp[65536,65536]` has 4298113025 parameters")
            && err.contains("parameters, above this coordinator's limit of 100000000 (`max_model_parameters` in the coordinator's configuration)"),
        "{err}"
    );
    assert_eq!(job_count(&cluster), 0, "nothing was stored");

    // The memory estimate (model, FedAdam's two moments, aggregation) has its own limit.
    cluster.coordinator_toml = "max_job_memory_bytes = 1000000".into();
    cluster.kill_coordinator();
    cluster.start_coordinator();
    let adam = telco_job("adam", "kind = \"mlp\"\nhidden = [1024]", 3, "[strategy]\nkind = \"fedadam\"\n");
    let out = cluster.confide(&["job", "submit", write_job(&cluster, "adam", &adam).to_str().expect("utf-8")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("of coordinator memory") && err.contains("2 server-optimizer vector(s)")
            && err.contains("above this coordinator's limit of 976.6 KiB (`max_job_memory_bytes`"),
        "{err}"
    );
    // A small job still fits, and the coordinator is unharmed.
    let small = cluster.submit(&telco_job("small", "kind = \"logistic_regression\"", 3, ""));
    assert_unfinished(&cluster, &small);
}

#[test]
fn a_stored_job_above_a_lowered_limit_is_failed_at_start_not_resumed() {
    let mut cluster = Cluster::start();
    // Accepted under the default limits; no bank connects, so it waits.
    let job = cluster.submit(&telco_job("wide", "kind = \"mlp\"\nhidden = [256]", 3, ""));
    cluster.coordinator_toml = "max_model_parameters = 1000".into();
    cluster.kill_coordinator();
    cluster.start_coordinator();
    let failed = cluster.wait_finished(&job, Duration::from_secs(30));
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("not resumed: the model `mlp[256]` has ") && error.contains("limit of 1000 (`max_model_parameters`"),
        "{error}"
    );
}

/// How often the coordinator's log says it resumed a job.
fn resumes(cluster: &Cluster) -> usize {
    cluster.read_log("coordinator").matches("resuming job").count()
}

#[test]
fn a_job_whose_resumes_keep_crashing_the_coordinator_is_quarantined_and_the_coordinator_starts() {
    let mut cluster = Cluster::start();
    // A coordinator whose memory limit makes this job a plausible culprit (MLP[256], about half
    // a MiB of the 2 MiB): a small job's crashes are not blamed on it (see the survival tests).
    cluster.coordinator_toml = "max_job_memory_bytes = 2097152\n".into();
    cluster.kill_coordinator();
    cluster.start_coordinator();
    // No bank connects, so no round commits: every SIGKILL below lands during a resume, as an
    // OOM kill would while the job allocates its model.
    let job = cluster.submit(&telco_job("crashes", "kind = \"mlp\"\nhidden = [256]", 3, ""));
    cluster.kill_coordinator();
    for crashed in 1..=2 {
        cluster.start_coordinator();
        let deadline = Instant::now() + Duration::from_secs(30);
        while resumes(&cluster) < crashed {
            assert!(Instant::now() < deadline, "the coordinator did not resume the job:\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_unfinished(&cluster, &job);
        cluster.kill_coordinator();
    }
    cluster.start_coordinator();
    let quarantined = cluster.wait_finished(&job, Duration::from_secs(30));
    assert_eq!(quarantined["status"], "failed", "{quarantined:#}");
    assert_eq!(
        quarantined["error"],
        "quarantined: the coordinator stopped while resuming this job 2 times (possibly killed for memory); not resumed"
    );
    assert_eq!(resumes(&cluster), 2, "not resumed a third time");
    // The coordinator serves normally: a new job is accepted and runs.
    let next = cluster.submit(&telco_job("next", "kind = \"logistic_regression\"", 3, ""));
    assert_unfinished(&cluster, &next);
}

#[test]
fn a_repeated_job_file_is_hinted_and_an_idempotency_key_makes_the_repeat_a_no_op() {
    let cluster = Cluster::start();
    let file = write_job(&cluster, "churn", &telco_job("churn", "kind = \"logistic_regression\"", 3, ""));
    let path = file.to_str().expect("utf-8");
    let first = cluster.submit_file(&file);
    let out = cluster.confide(&["job", "submit", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = text(&out.stdout).trim().to_string();
    assert_ne!(second, first, "without a key the identical job still runs");
    let created = cluster.job(&first)["created_at"].as_str().map(str::to_string);
    let note = text(&out.stderr);
    assert!(note.starts_with("note: an identical job was submitted at ") && note.trim_end().ends_with(&format!(" as {first}")), "{note}");
    if let Some(created) = created {
        assert!(note.contains(&created), "the earlier job's submission time: {note}");
    }

    let keyed = cluster.confide(&["job", "submit", "--idempotency-key", "nightly-42", path]);
    assert!(keyed.status.success(), "{}", text(&keyed.stderr));
    let keyed_id = text(&keyed.stdout).trim().to_string();
    let before = job_count(&cluster);
    let again = cluster.confide(&["job", "submit", "--idempotency-key", "nightly-42", path]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), keyed_id, "the earlier job's id");
    assert!(text(&again.stderr).contains(&format!("as {keyed_id}; nothing new was submitted")), "{}", text(&again.stderr));
    assert_eq!(job_count(&cluster), before, "no job was added");

    // The key with a changed job file is refused as bad input.
    let changed = write_job(&cluster, "changed", &telco_job("churn", "kind = \"logistic_regression\"", 4, ""));
    let out = cluster.confide(&["job", "submit", "--idempotency-key", "nightly-42", changed.to_str().expect("utf-8")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("idempotency key `nightly-42` was already used at ") && err.contains(&format!("for a different job ({keyed_id})")), "{err}");
    assert_eq!(job_count(&cluster), before);
}
