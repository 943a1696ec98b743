//! The data-science workflow around jobs: several jobs with different server strategies run
//! at once on the same banks, and a cancelled job stops and says so.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};

#[test]
fn concurrent_jobs_with_fedprox_fedadam_and_fedyogi_all_complete() {
    let (cluster, _) = Cluster::telco_federation(3, 17);
    let strategies = [
        ("prox", "[strategy]\nkind = \"fedprox\"\nmu = 0.1\n"),
        ("adam", "[strategy]\nkind = \"fedadam\"\nserver_learning_rate = 0.05\n"),
        ("yogi", "[strategy]\nkind = \"fedyogi\"\nserver_learning_rate = 0.05\n"),
    ];
    let jobs: Vec<(String, String)> = strategies
        .iter()
        .map(|(name, strategy)| {
            let toml = format!("{}\n{strategy}", telco_job(name, "kind = \"logistic_regression\"", 4, ""));
            (name.to_string(), cluster.submit(&toml))
        })
        .collect();
    for (name, id) in &jobs {
        let done = cluster.wait_finished(id, Duration::from_secs(180));
        assert_eq!(done["status"], "completed", "{name}: {done:#}\n{}", cluster.logs());
        assert_eq!(done["rounds"].as_array().map(Vec::len), Some(4), "{name}");
        let auc = done["rounds"][3]["metrics"]["auc"].as_f64().expect("auc");
        assert!(auc > 0.75, "{name} learned: AUC {auc}");
        assert_eq!(done["spec"]["strategy"]["kind"], *name.replace("prox", "fedprox").replace("adam", "fedadam").replace("yogi", "fedyogi"));
    }
}

#[test]
fn a_cancelled_job_stops_and_reports_it() {
    let (cluster, _) = Cluster::telco_federation(3, 19);
    let job = cluster.submit(&telco_job("long", "kind = \"mlp\"\nhidden = [16]", 500, ""));
    cluster.wait_for(&job, Duration::from_secs(120), "a first round", |j| j["rounds_completed"].as_u64().unwrap_or(0) >= 1);
    let out = cluster.confide(&["job", "cancel", &job]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = cluster.wait_finished(&job, Duration::from_secs(30));
    assert_eq!(done["status"], "cancelled");
    let stopped_at = done["rounds_completed"].as_u64().expect("rounds");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.job(&job)["rounds_completed"].as_u64(), Some(stopped_at), "no round runs after cancelling");
    // Watching a finished job replays its rounds and ends with exit code 1 (not completed).
    let watch = cluster.confide(&["job", "watch", &job]);
    assert_eq!(watch.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&watch.stdout).contains("cancelled"));
    // Unknown ids are a clear error.
    let out = cluster.confide(&["job", "get", "no-such-job"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job `no-such-job`"));
}

#[test]
fn early_stopping_ends_the_job_before_its_round_budget_and_says_why() {
    let (cluster, _) = Cluster::telco_federation(3, 23);
    // No round can improve AUC by a whole unit, so the job stops after `patience` evaluations.
    let job = cluster.submit(&format!(
        "{}\n[early_stopping]\nmetric = \"auc\"\npatience = 2\nmin_delta = 1.0\n",
        telco_job("early", "kind = \"logistic_regression\"", 50, "")
    ));
    let done = cluster.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["rounds_completed"].as_u64(), Some(3), "first evaluation sets the best, two more without improvement stop it");
    assert!(done["stop_reason"].as_str().unwrap_or("").contains("early stopping"), "{done:#}");
}

/// Three banks, and a fourth with `policy` lines in its configuration.
fn with_bank4(tolerate_dropouts: bool, policy: &str) -> Cluster {
    let (mut cluster, partition) = Cluster::telco_federation_with(3, 29, tolerate_dropouts);
    let bank4 = partition.join("../partition4");
    confide_e2e::partition_telco(&bank4, 4, 29);
    let (_, schema) = confide_e2e::telco();
    let dir = bank4.join("bank4");
    let config = cluster.write_worker_config("bank4", &[("telco_churn", &schema, &dir.join("train.csv"), &dir.join("test.csv"))], policy);
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(30));
    cluster
}

#[test]
fn a_bank_policy_refusal_is_reported_and_the_round_goes_on_without_it() {
    // A bank that trains only MLPs refuses a logistic job at its first task (the job's terms
    // travel with every task); its reason names the policy key, not the bank's data.
    let cluster = with_bank4(true, "[policy]\nallowed_models = [\"mlp\"]\n");
    let job = cluster.submit(&telco_job("policy", "kind = \"logistic_regression\"", 3, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let round1 = &done["rounds"][0]["participants"];
    let bank4_outcome = round1.as_array().and_then(|ps| ps.iter().find(|p| p["worker_id"] == "bank4")).expect("bank4 selected");
    assert_eq!(bank4_outcome["status"], "refused", "{round1:#}");
    let reason = bank4_outcome["reason"].as_str().unwrap_or("");
    assert!(reason.contains("`logistic_regression` is not allowed by this bank (policy.allowed_models: mlp)"), "{bank4_outcome:#}");
    let text = String::from_utf8_lossy(&cluster.confide(&["job", "get", &job]).stdout).to_string();
    assert!(text.contains("bank4 refused"), "{text}");
}

/// By default a bank will not let a sum be revealed whose contributors, next to the sums its
/// counts were already in, would give away another bank's count: rounds 1-2 summed banks 1-4,
/// so round 3 over banks 1-3 alone would reveal bank4's training rows (`train_examples`).
#[test]
fn banks_refuse_a_round_whose_contributors_would_isolate_one_banks_count() {
    let mut cluster = with_bank4(false, "");
    let job = cluster.submit(&telco_job("isolate", "kind = \"logistic_regression\"", 3, "[selection]\nmax_round_attempts = 2"));
    cluster.wait_for(&job, Duration::from_secs(120), "round 2", |j| j["rounds_completed"].as_u64() >= Some(2));
    // bank4 leaves after round 2: the coordinator is stopped before round 3 can commit, and
    // resumes it without bank4.
    cluster.kill_coordinator();
    cluster.kill_worker("bank4");
    cluster.start_coordinator();
    let done = cluster.wait_finished(&job, Duration::from_secs(180));
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["rounds_completed"], 2, "{done:#}");
    let error = done["error"].as_str().unwrap_or("");
    // Refusals are deterministic: the round is not retried with the same banks.
    assert!(error.starts_with("round 3 not retried"), "{error}");
    for bank in ["bank1", "bank2", "bank3"] {
        assert!(error.contains(&format!("{bank} refused: policy refusal ({bank}'s log, ref ")), "{error}");
        let log = cluster.read_log(bank);
        assert!(log.contains("would reveal bank4's count"), "{bank} says why in its own log:\n{log}");
    }
}
