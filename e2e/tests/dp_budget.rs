//! The bank's privacy-budget ledger with real coordinator, worker and CLI processes: a bank with
//! `require_dp = true` refuses a job that is not DP (the job's view names the bank and why); a
//! budget that fits one DP job refuses the next on the same dataset as `budget_exhausted`, and
//! still does after the worker restarts (`budget show --json` unchanged); two DP jobs submitted
//! at once never charge more than the budget together; every charge is in the bank's audit log,
//! which still verifies.
//!
//! Three banks without limits carry every job; `bank4` is the one with the rules. The spend the
//! tests expect comes from `confide_core::spend` on bank4's own rows (as the worker loads them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use confide_core::spend::{BankRows, DpJob, Spend, job_spend};
use confide_e2e::{Cluster, binary, partition_telco, telco, telco_job};
use confide_proto::v1 as pb;
use serde_json::Value;

const ROUNDS: u64 = 2;
const SIGMA: f64 = 1.0;

/// A federation of bank1..bank3 (no limits) and bank4 whose `telco_churn` dataset has `keys`
/// (e.g. `epsilon_budget = 3.0`); returns it with bank4's config file and rows.
fn federation(seed: u64, keys: &str) -> (Cluster, PathBuf, BankRows) {
    let mut cluster = Cluster::start();
    // bank4 is in some jobs' sums and not in others: the other banks' count protection would
    // (rightly) refuse the sums without it, which is not what these tests are about.
    cluster.tolerate_dropouts = true;
    let partition = partition_telco(&cluster.dir.path().join("partition"), 4, seed);
    for i in 1..=3 {
        cluster.add_telco_worker(&format!("bank{i}"), &partition);
    }
    let (_, schema) = telco();
    let dir = partition.join("bank4");
    let config = cluster.write_worker_config("bank4", &[("telco_churn", &schema, &dir.join("train.csv"), &dir.join("test.csv"))], "");
    // The dataset table is the file's last: its keys go at the end.
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(keys);
    std::fs::write(&config, text).expect("config");
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(60));
    (cluster, config, rows(&schema, &dir))
}

/// bank4's rows as its worker counts them.
fn rows(schema: &Path, dir: &Path) -> BankRows {
    let schema = confide_datasets::DatasetSchema::from_file(schema).expect("schema");
    let count = |f: &str| confide_datasets::load_table(&dir.join(f), &schema).expect("table").rows as u64;
    BankRows { train: count("train.csv"), test: count("test.csv") }
}

/// A record-level DP logistic regression job of [`ROUNDS`] rounds at σ = [`SIGMA`].
fn dp_job(name: &str) -> String {
    let privacy = format!("[privacy]\nmode = \"record\"\nnoise_multiplier = {SIGMA}\ndelta = 1e-5\n");
    telco_job(name, "kind = \"logistic_regression\"", ROUNDS, "") + &privacy
}

/// ε at δ = 1e-5 of `jobs` such jobs at a bank of `rows`.
fn epsilon_of(jobs: usize, rows: BankRows) -> f64 {
    let spec = confide_core::job::JobSpec::from_toml(&dp_job("x")).expect("job");
    let dp = DpJob::of(&spec).expect("dp");
    let one = job_spend(&dp, rows, dp.rounds).expect("spend");
    let mut total = Spend::default();
    (0..jobs).for_each(|_| total.absorb(&one));
    total.epsilon(1e-5).expect("eps")
}

fn worker_cli(args: &[&str], config: &Path) -> (bool, String, String) {
    let out = Command::new(binary("confide-worker")).args(args).arg("--config").arg(config).output().expect("confide-worker");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `confide-worker budget show --json`'s entry for telco_churn.
fn budget(config: &Path) -> Value {
    let (ok, out, err) = worker_cli(&["budget", "show", "--json"], config);
    assert!(ok, "budget show: {err}");
    let doc: Value = serde_json::from_str(&out).expect("budget JSON");
    doc["datasets"].as_array().and_then(|d| d.iter().find(|d| d["dataset"] == "telco_churn")).cloned().expect("telco_churn")
}

/// `bank`'s outcome in each round of a finished job.
fn outcomes(done: &Value, bank: &str) -> Vec<Value> {
    let rounds = done["rounds"].as_array().cloned().unwrap_or_default();
    rounds
        .iter()
        .filter_map(|r| r["participants"].as_array().and_then(|ps| ps.iter().find(|p| p["worker_id"] == bank)).cloned())
        .collect()
}

/// The coordinator's audit heads of `job` (`GetJob` as the admin).
fn audit_heads(cluster: &Cluster, job: &str) -> Vec<pb::AuditHead> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut admin = pb::admin_client::AdminClient::new(cluster.channel_as("tester").await);
        admin.get_job(pb::GetJobRequest { job_id: job.into() }).await.expect("get job").into_inner().audit_heads
    })
}

fn finished(cluster: &Cluster, job: &str) -> Value {
    let done = cluster.wait_finished(job, Duration::from_secs(300));
    assert_eq!(done["status"], "completed", "the other banks carry the job: {done:#}\n{}", cluster.logs());
    done
}

/// Waits for `job` to end, whatever its status (bank4 leaving a job part-way may fail it).
fn ended(cluster: &Cluster, job: &str) -> Value {
    cluster.wait_finished(job, Duration::from_secs(300))
}

/// True when bank4 was refused in some round of `done` with `reason` in its outcome.
fn refused_with(done: &Value, reason: &str) -> bool {
    outcomes(done, "bank4").iter().any(|o| o["status"] == "refused" && o["reason"].as_str().is_some_and(|r| r.contains(reason)))
}

#[test]
fn a_bank_that_requires_dp_refuses_a_job_that_is_not_and_the_view_names_both() {
    let (cluster, config, _) = federation(21, "require_dp = true\n");
    let job = cluster.submit(&telco_job("plain", "kind = \"logistic_regression\"", 1, ""));
    let done = finished(&cluster, &job);
    let reason = "requires differential privacy at this bank (require_dp)";
    assert!(refused_with(&done, reason), "{:#}", outcomes(&done, "bank4").into_iter().collect::<Value>());
    assert!(outcomes(&done, "bank4").iter().all(|o| o["status"] != "contributed"));
    let text = String::from_utf8_lossy(&cluster.confide(&["job", "get", &job]).stdout).to_string();
    assert!(text.contains("bank4 refused") && text.contains("require_dp"), "{text}");
    let b = budget(&config);
    assert_eq!((b["charges"].as_u64(), b["void"].as_bool()), (Some(0), Some(false)), "a refused job spends nothing: {b:#}");
    // bank1 has no rules: the plain job ran there, and its ledger says the bound is void.
    let bank1 = cluster.dir.path().join("bank1.toml");
    assert_eq!(budget(&bank1)["void"], true);
    let (ok, text, err) = worker_cli(&["budget", "show"], &bank1);
    assert!(ok && text.contains("BOUND VOID") && text.contains(&job), "{text}{err}");
}

#[test]
fn a_budget_for_one_job_refuses_the_next_keeps_its_spend_across_restarts_and_is_audited() {
    let partition_seed = 22;
    // The rows are known only after partitioning; the budget is set from them and the worker
    // restarted with it (nothing was charged yet).
    let (mut cluster, config, rows) = federation(partition_seed, "");
    let (one, two) = (epsilon_of(1, rows), epsilon_of(2, rows));
    let limit = (one + two) / 2.0;
    let text = std::fs::read_to_string(&config).expect("config") + &format!("epsilon_budget = {limit}\n");
    std::fs::write(&config, text).expect("config");
    cluster.kill_worker("bank4");
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(60));

    // (b) The first DP job fits and bank4 contributes; the second is refused at its first task.
    let first = cluster.submit(&dp_job("dp-1"));
    let done = finished(&cluster, &first);
    assert!(outcomes(&done, "bank4").iter().any(|o| o["status"] == "contributed"), "{done:#}");
    let after_one = budget(&config);
    let spent = after_one["epsilon_spent"]["total"].as_f64().expect("spent");
    assert!(spent <= limit && spent >= one * 0.999, "spent {spent}, one job {one}, budget {limit}: {after_one:#}");
    // The other banks go on: their DP statistics differ from job to job (noise), so their
    // contribution ledgers let them into sums without bank4.
    let second = cluster.submit(&dp_job("dp-2"));
    let done = finished(&cluster, &second);
    assert!(refused_with(&done, "privacy budget exhausted"), "{:#}", outcomes(&done, "bank4").into_iter().collect::<Value>());
    let log = cluster.read_log("bank4");
    assert!(log.contains("remaining"), "the remaining budget is in the bank's own log");
    let refused = budget(&config);
    assert_eq!(refused["charges"], after_one["charges"], "a refused job is not charged");
    let (ok, text, _) = worker_cli(&["budget", "show"], &config);
    assert!(ok && text.contains(&format!("budget     ε = {limit}")) && text.contains(&format!("job {first}: ε = ")), "{text}");
    assert!(!text.contains("VOID"), "{text}");
    // The coordinator got the kind and a reference, not the remaining budget.
    let view = String::from_utf8_lossy(&cluster.confide(&["job", "get", &second, "--json"]).stdout).to_string();
    assert!(!view.contains("remaining"), "{view}");
    // The job that ran has bank4's spend next to its audit head (what the model card lists).
    let heads = audit_heads(&cluster, &first);
    let reported = heads.iter().find(|h| h.worker_id == "bank4").map_or(0.0, |h| h.dp_spent_epsilon);
    assert!(reported > 0.0 && reported <= spent + 1e-9, "bank4's reported ε {reported}: {heads:?}");
    assert!(heads.iter().all(|h| h.worker_id == "bank4" || h.dp_spent_epsilon > 0.0), "every bank reports its spend: {heads:?}");

    // (c) Restarted, the worker keeps its spend and still refuses.
    cluster.kill_worker("bank4");
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(60));
    assert_eq!(budget(&config), refused, "the ledger survives the restart unchanged");
    let third = cluster.submit(&dp_job("dp-3"));
    assert!(refused_with(&finished(&cluster, &third), "privacy budget exhausted"));

    // (e) The audit log verifies and lists each charge.
    let (ok, out, err) = worker_cli(&["audit", "verify"], &config);
    assert!(ok, "audit verify: {out}{err}");
    let (ok, out, err) = worker_cli(&["audit", "show", "--json"], &config);
    assert!(ok, "audit show: {err}");
    let charges: Vec<Value> =
        out.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["sent"] == "budget_charge").collect();
    assert_eq!(charges.len() as u64, refused["charges"].as_u64().expect("charges"), "one audit record per charge");
    let last = charges.last().expect("a charge");
    assert_eq!(last["job"], first.as_str());
    let cumulative = last["budget"]["cumulative"].as_f64().expect("cumulative");
    let remaining = last["budget"]["remaining"].as_f64().expect("remaining");
    assert!((cumulative - spent).abs() < 1e-8 && (remaining - (limit - spent)).abs() < 1e-8, "{last:#}");
    let (ok, table, _) = worker_cli(&["audit", "show", "--job", &first], &config);
    assert!(ok && table.contains("budget_charge") && table.contains("remaining"), "{table}");
}

#[test]
fn two_dp_jobs_submitted_at_once_never_charge_more_than_the_budget_together() {
    let (mut cluster, config, rows) = federation(23, "");
    let limit = (epsilon_of(1, rows) + epsilon_of(2, rows)) / 2.0;
    let text = std::fs::read_to_string(&config).expect("config") + &format!("epsilon_budget = {limit}\n");
    std::fs::write(&config, text).expect("config");
    cluster.kill_worker("bank4");
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(60));
    let (a, b) = (cluster.submit(&dp_job("dp-a")), cluster.submit(&dp_job("dp-b")));
    let (a, b) = (ended(&cluster, &a), ended(&cluster, &b));
    let spent = budget(&config);
    let total = spent["epsilon_spent"]["total"].as_f64().expect("total");
    assert!(total <= limit, "spent {total} of {limit}: {spent:#}");
    // The budget fits one job, so bank4 refused a task of one of them (which one, and whether
    // that job still completed without bank4, depends on how the two interleave).
    assert!(cluster.read_log("bank4").contains("budget_exhausted"), "{}", cluster.logs());
    let charged: u64 = spent["jobs"].as_object().map_or(0, |j| j.values().filter_map(|j| j["tasks"].as_u64()).sum());
    assert_eq!(charged, spent["charges"].as_u64().expect("charges"), "{spent:#}");
    let _ = (a, b);
}


#[test]
fn bad_budget_keys_stop_the_worker_naming_the_field_and_a_corrupt_ledger_is_never_reset() {
    let cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 4, 25);
    let (_, schema) = telco();
    let dir = partition.join("bank4");
    let run = |keys: &str| {
        let config = cluster.write_worker_config("bank4", &[("telco_churn", &schema, &dir.join("train.csv"), &dir.join("test.csv"))], "");
        let text = std::fs::read_to_string(&config).expect("config") + keys;
        std::fs::write(&config, text).expect("config");
        let out = Command::new(binary("confide-worker")).arg("--config").arg(&config).output().expect("confide-worker");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string(), config)
    };
    for (keys, field) in [
        ("epsilon_budget = -1.0\n", "datasets.epsilon_budget"),
        ("epsilon_budget = nan\n", "datasets.epsilon_budget"),
        ("delta = 1.5\n", "datasets.delta"),
        ("delta = 0.0\n", "datasets.delta"),
    ] {
        let (code, err, _) = run(keys);
        assert_eq!(code, Some(2), "{keys}: {err}");
        assert!(err.contains(field) && err.contains("telco_churn"), "{keys}: {err}");
    }
    // A ledger that is not this bank's, or not JSON, stops the start (never a fresh budget).
    let ledger = cluster.worker_data_dir("bank4").join("privacy_budget.json");
    std::fs::create_dir_all(ledger.parent().expect("dir")).expect("data dir");
    for text in ["{not json", "{\"datasets\": {}}"] {
        std::fs::write(&ledger, text).expect("ledger");
        let (code, err, config) = run("epsilon_budget = 1.0\n");
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("privacy budget") && err.contains("privacy_budget.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&ledger).expect("kept"), text, "the file is left for the operator");
        let (ok, _, err) = worker_cli(&["budget", "show"], &config);
        assert!(!ok && err.contains("privacy_budget.json"), "budget show refuses it too: {err}");
    }
}
