//! Faults a job owner meets before and between rounds, over real processes: jobs no bank fits
//! (a schema one level off, a dataset nobody offers, more banks asked for than are connected)
//! and a federation whose workers all stop mid-job. Each job says why it waits — in
//! `confide job get`, `confide job watch` (once per change) and the Prometheus metrics — and
//! fails after its start deadline or idle timeout with that reason. Also: early stopping ends
//! the job with the best round's model (`restore_best`), in `FetchModel` and the export.

use std::process::{Command, Stdio};
use std::time::Duration;

use confide_e2e::{Cluster, binary, telco, telco_job};

/// The Telco schema with `edit` applied, written beside the cluster's files.
fn edited_schema(cluster: &Cluster, file: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let (_, schema) = telco();
    let text = std::fs::read_to_string(&schema).expect("telco schema");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit applies");
    let path = cluster.dir.path().join(file);
    std::fs::write(&path, edited).expect("schema copy");
    path
}

fn short(fp: &str) -> String {
    format!("{}…", &fp[..12])
}

fn fingerprint(path: &std::path::Path) -> String {
    confide_datasets::DatasetSchema::from_file(path).expect("schema").fingerprint()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn jobs_no_bank_fits_say_why_and_fail_at_their_start_deadline() {
    let (cluster, _) = Cluster::telco_federation(3, 61);
    cluster.wait_workers(3, Duration::from_secs(60));
    let (_, telco_schema) = telco();
    let banks_fp = fingerprint(&telco_schema);
    // `confide workers` shows what each bank offers, so the owner can compare.
    let workers = text(&cluster.confide(&["workers"]));
    for bank in ["bank1", "bank2", "bank3"] {
        let line = workers.lines().find(|l| l.starts_with(bank)).unwrap_or_else(|| panic!("{bank} listed: {workers}"));
        assert!(line.contains(&format!("telco_churn (schema {})", &banks_fp[..12])), "{workers}");
    }

    let deadline = "[selection]\nstart_deadline_secs = 8\n\n[training]";
    // A schema one level off (gender gains a level): the banks' fingerprint differs.
    let one_level = edited_schema(&cluster, "one_level.toml", |t| t.replace(r#"levels = ["Female", "Male"]"#, r#"levels = ["Female", "Male", "Other"]"#));
    let job_fp = fingerprint(&one_level);
    let level_job = cluster.submit(
        &telco_job("one-level", "kind = \"logistic_regression\"", 2, "")
            .replace(&telco_schema.display().to_string(), &one_level.display().to_string())
            .replace("[training]", deadline),
    );
    // A dataset no bank offers.
    let renamed = edited_schema(&cluster, "renamed.toml", |t| t.replace(r#"name = "telco_churn""#, r#"name = "telco_churn_2024""#));
    let renamed_fp = fingerprint(&renamed);
    let nobody_job = cluster.submit(
        &telco_job("nobody", "kind = \"logistic_regression\"", 2, "")
            .replace(&telco_schema.display().to_string(), &renamed.display().to_string())
            .replace("dataset = \"telco_churn\"", "dataset = \"telco_churn_2024\"")
            .replace("[training]", deadline),
    );
    // More banks asked for than are connected.
    let many_job = cluster.submit(
        &telco_job("five", "kind = \"logistic_regression\"", 2, "").replace("[training]", &deadline.replace("[selection]", "[selection]\nmin_workers = 5")),
    );

    let expected = [
        (
            &level_job,
            format!(
                "waiting for participants: 0 of 3 connected banks offer telco_churn with schema {}, 3 needed; bank1 offers fingerprint {b}; \
                 bank2 offers fingerprint {b}; bank3 offers fingerprint {b}",
                short(&job_fp),
                b = short(&banks_fp)
            ),
        ),
        (
            &nobody_job,
            format!(
                "waiting for participants: 0 of 3 connected banks offer telco_churn_2024 with schema {}, 3 needed; bank1 does not offer \
                 telco_churn_2024; bank2 does not offer telco_churn_2024; bank3 does not offer telco_churn_2024",
                short(&renamed_fp)
            ),
        ),
        (&many_job, format!("waiting for participants: 3 of 3 connected banks offer telco_churn with schema {}, 5 needed", short(&banks_fp))),
    ];

    // `job watch` prints the reason once (not once per check) and exits 1 when the job fails.
    let watch = Command::new(binary("confide"))
        .args(["job", "watch", &many_job])
        .env("CONFIDE_COORDINATOR", cluster.url())
        .envs({
            let (ca, cert, key) = cluster.tls_files("tester");
            [("CONFIDE_CA", ca), ("CONFIDE_CERT", cert), ("CONFIDE_KEY", key)]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");

    for (job, reason) in &expected {
        let seen = cluster.wait_for(job, Duration::from_secs(30), "the waiting reason", |j| j["activity"] == "waiting");
        assert_eq!(seen["activity_reason"], reason.as_str(), "{seen:#}");
        let get = text(&cluster.confide(&["job", "get", job]));
        assert!(get.contains(&format!("activity {reason}\n")), "{get}");
    }
    let metrics = cluster.scrape_metrics();
    assert!(
        metrics.contains(&format!("confide_job_activity{{job=\"{many_job}\",activity=\"waiting\",reason=\"{}\"}} 1", expected[2].1)),
        "{metrics}"
    );

    for (job, reason) in &expected {
        let done = cluster.wait_finished(job, Duration::from_secs(60));
        assert_eq!(done["status"], "failed", "{done:#}");
        assert_eq!(done["error"], format!("no round could start within 8s: {reason}"), "{done:#}");
        assert!(done["activity"].is_null(), "a failed job does nothing: {done:#}");
    }
    let watched = watch.wait_with_output().expect("watch ends");
    let out = text(&watched);
    assert_eq!(watched.status.code(), Some(1), "{out}");
    assert_eq!(out.lines().filter(|l| *l == expected[2].1).count(), 1, "the reason once: {out}");
    assert!(out.contains(&format!("failed after 0 rounds; error: no round could start within 8s: {}", expected[2].1)), "{out}");
    assert!(!cluster.scrape_metrics().contains(&format!("job=\"{many_job}\"")), "an ended job's activity series is gone");
}

#[test]
fn when_every_worker_stops_mid_job_it_says_so_and_fails_after_its_idle_timeout() {
    let (mut cluster, _) = Cluster::telco_federation(3, 62);
    cluster.wait_workers(3, Duration::from_secs(60));
    let job = cluster.submit(&telco_job(
        "orphaned",
        "kind = \"logistic_regression\"",
        20,
        "[selection]\nround_deadline_secs = 10\nidle_timeout_secs = 12",
    ));
    cluster.wait_for(&job, Duration::from_secs(120), "two rounds", |j| j["rounds_completed"].as_u64() >= Some(2));
    for bank in ["bank1", "bank2", "bank3"] {
        cluster.kill_worker(bank);
    }
    let (_, schema) = telco();
    let reason = format!("waiting for participants: no bank is connected; 3 needed offering telco_churn with schema {}", short(&fingerprint(&schema)));
    let waiting = cluster.wait_for(&job, Duration::from_secs(60), "the job to wait", |j| j["activity"] == "waiting");
    assert_eq!(waiting["activity_reason"], reason.as_str(), "{waiting:#}");
    let done = cluster.wait_finished(&job, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done:#}");
    let round = done["rounds_completed"].as_u64().expect("rounds") + 1;
    assert_eq!(done["error"], format!("idle for 12s with no round progress (round {round} could not start): {reason}"), "{done:#}");
    let get = text(&cluster.confide(&["job", "get", &job]));
    assert!(get.contains(&format!("error    idle for 12s with no round progress (round {round} could not start): {reason}")), "{get}");
}

#[test]
fn early_stopping_ends_with_the_best_rounds_model_and_the_card_says_which() {
    let (cluster, _) = Cluster::telco_federation(3, 63);
    cluster.wait_workers(3, Duration::from_secs(60));
    // No later round beats round 1's AUC by 0.5: round 1 stays the best, patience 2 stops
    // after round 3, and the job ends with round 1's model, not the last one.
    let job = cluster.submit(&telco_job(
        "best",
        "kind = \"logistic_regression\"",
        10,
        "[early_stopping]\nmetric = \"auc\"\npatience = 2\nmin_delta = 0.5",
    ));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert_eq!(done["rounds_completed"], 3, "{done:#}");
    let best = done["rounds"][0]["model_hash"].as_str().expect("round 1 hash").to_string();
    let last = done["rounds"][2]["model_hash"].as_str().expect("round 3 hash").to_string();
    assert_ne!(best, last);
    assert_eq!(done["model_hash"], best.as_str(), "{done:#}");
    assert_eq!(done["model_round"], 1, "{done:#}");
    // FetchModel hands out the best round's model.
    let pulled = cluster.dir.path().join("pulled.safetensors");
    let out = cluster.confide(&["model", "pull", &job, "--output", pulled.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(confide_core::sha256_hex(&std::fs::read(&pulled).expect("pulled")), best);
    // The automatic export is of it, and its model card says which round it is.
    let dir = std::path::PathBuf::from(done["export_dir"].as_str().expect("exported"));
    let card = std::fs::read_to_string(dir.join("model_card.md")).expect("model card");
    assert!(card.contains(&format!("| model checkpoint | `{best}` |")), "{card}");
    assert!(card.contains("| model from round | 1 (the best round by the early-stopping metric) |"), "{card}");
}
