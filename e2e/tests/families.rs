//! The tabular model families train federatedly from the example job files in `examples/jobs/`,
//! submitted through the CLI to a real coordinator and three real bank workers with secure
//! aggregation and mutual TLS:
//!
//! - credit-default scorecard (logistic regression, positives up-weighted) on the UCI Taiwan
//!   data, with label-skewed (Dirichlet) banks;
//! - bank churn MLP on Churn_Modelling, one bank per country (partition by `Geography`);
//! - credit-default gradient-boosted trees (50 trees of depth 5) on the UCI Taiwan data, IID
//!   banks: binning, every tree level and evaluation through secure aggregation.
//!
//! - Telco churn from Parquet files: banks whose data sits in Parquet train with banks that
//!   hold CSV, under the same schema and missing-value policy.
//!
//! (Telco churn from CSV is covered by `federation.rs`; recommendation and custom models by their own
//! tests.) The thresholds are below what the jobs reach on these splits and above what an
//! untrained or broken model could score.

use std::path::PathBuf;
use std::time::Duration;

use confide_datasets::partition::{PartitionConfig, Scheme};
use confide_e2e::{Cluster, partition_dataset, repo_root, shared_datasets};
use serde_json::Value;

/// Runs `job_file` on three banks holding `csv` split by `scheme` (drawn from `seed`); returns
/// the finished job.
fn run_family(dataset: &str, csv: PathBuf, scheme: Scheme, seed: u64, job_file: &str) -> (Cluster, Value) {
    let schema = repo_root().join(format!("datasets/schemas/{dataset}.toml"));
    let mut cluster = Cluster::start();
    let cfg = PartitionConfig { institutions: Some(3), scheme, seed, ..Default::default() };
    let partition = partition_dataset(&csv, &schema, &cluster.dir.path().join("partition"), &cfg);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&partition)
        .expect("partition folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    assert_eq!(folders.len(), 3, "three institutions: {folders:?}");
    for (i, folder) in folders.iter().enumerate() {
        cluster.add_dataset_worker(&format!("bank{}", i + 1), dataset, &schema, folder);
    }
    cluster.wait_workers(3, Duration::from_secs(60));
    let job = cluster.submit_file(&repo_root().join("examples/jobs").join(job_file));
    let done = cluster.wait_finished(&job, Duration::from_secs(420));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    (cluster, done)
}

fn final_metric(job: &Value, name: &str) -> f64 {
    let rounds = job["rounds"].as_array().expect("rounds");
    rounds.last().and_then(|r| r["metrics"][name].as_f64()).unwrap_or_else(|| panic!("no {name}: {job:#}"))
}

#[test]
fn credit_default_scorecard_trains_on_label_skewed_banks() {
    let csv = shared_datasets().join("uci_credit_card_default/UCI_Credit_Card.csv");
    let (_cluster, job) = run_family(
        "uci_credit_card_default",
        csv,
        // Seed 1: banks of 47 %, 38 % and 1 % defaults. (Seed 42 gave one bank only defaults,
        // whose training the bank now refuses: all training labels are one class.)
        Scheme::Dirichlet { alpha: 0.5 },
        1,
        "credit_default_scorecard.toml",
    );
    let rounds = job["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 10, "the job's round budget");
    for r in rounds {
        assert_eq!(r["participants"].as_array().map(Vec::len), Some(3), "{r:#}");
    }
    // Centralised logistic regression reaches 0.72 on this data (../shared/datasets/README.md);
    // on these skewed banks runs give 0.69-0.71 (local training draws bank-secret randomness).
    let auc = final_metric(&job, "auc");
    assert!(auc > 0.67, "credit AUC {auc}");
    assert!(final_metric(&job, "ks") > 0.30, "{job:#}");
    // Up-weighting the 22 % defaults moves the 0.5 threshold to catch far more of them: this
    // job recalls 0.25-0.43 of the test defaults (local training draws bank-secret randomness,
    // so runs differ: 0.247 and 0.28-0.34 in seven runs on 2026-12-02, 0.35-0.43 before), the
    // same job without `pos_weight` only 0.07.
    let recall = final_metric(&job, "recall");
    assert!(recall > 0.18, "recall {recall} with pos_weight");
}

#[test]
fn bank_churn_mlp_trains_with_one_bank_per_country() {
    let csv = shared_datasets().join("bank_churn_modelling/Churn_Modelling.csv");
    let (_cluster, job) = run_family(
        "bank_churn_modelling",
        csv,
        Scheme::ByColumn { column: "Geography".into() },
        42,
        "bank_churn_mlp.toml",
    );
    let names: Vec<String> = job["rounds"][0]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["worker_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 3, "{job:#}");
    // Logistic regression reaches 0.77 centrally and gradient boosting 0.86; the MLP sits between.
    let auc = final_metric(&job, "auc");
    assert!(auc > 0.80, "bank churn AUC {auc}");
}

#[test]
fn banks_holding_parquet_files_federate_with_a_bank_holding_csv() {
    use confide_datasets::DataFormat;
    let (csv, schema) = confide_e2e::telco();
    let parsed = confide_datasets::DatasetSchema::from_file(&schema).expect("schema");
    let mut cluster = Cluster::start();
    let cfg = PartitionConfig { institutions: Some(3), seed: 42, ..Default::default() };
    let parquet = cluster.dir.path().join("parquet");
    let plain = cluster.dir.path().join("csv");
    confide_datasets::partition::partition_file(&csv, &parsed, &parquet, &cfg, Some(DataFormat::Parquet), true)
        .expect("parquet partition");
    confide_datasets::partition::partition_file(&csv, &parsed, &plain, &cfg, Some(DataFormat::Csv), true)
        .expect("csv partition");
    for bank in ["bank1", "bank2"] {
        let dir = parquet.join(bank);
        assert!(dir.join("train.parquet").exists(), "{}", dir.display());
        let config = cluster.write_worker_config(
            bank,
            &[("telco_churn", &schema, &dir.join("train.parquet"), &dir.join("test.parquet"))],
            "",
        );
        cluster.spawn_worker(bank, &config);
    }
    cluster.add_dataset_worker("bank3", "telco_churn", &schema, &plain.join("bank3"));
    cluster.wait_workers(3, Duration::from_secs(60));
    // Telco has blank TotalCharges cells; the schema imputes them with the federated mean,
    // whether the blank is a CSV empty cell or a Parquet null.
    let job = cluster.submit(&confide_e2e::telco_job("parquet", "kind = \"logistic_regression\"", 4, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert_eq!(done["rounds"][0]["participants"].as_array().map(Vec::len), Some(3), "{done:#}");
    let auc = final_metric(&done, "auc");
    assert!(auc > 0.80, "Telco AUC from Parquet banks {auc}");
}

#[test]
fn credit_default_gbdt_grows_trees_from_securely_summed_histograms() {
    let csv = shared_datasets().join("uci_credit_card_default/UCI_Credit_Card.csv");
    let (_cluster, job) = run_family("uci_credit_card_default", csv, Scheme::Iid, 7, "credit_default_gbdt.toml");
    let rounds = job["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 50, "one round per tree");
    for r in rounds {
        assert_eq!(r["participants"].as_array().map(Vec::len), Some(3), "{r:#}");
        let depth = r["metrics"]["tree_depth"].as_f64().expect("tree depth");
        assert!((1.0..=5.0).contains(&depth), "a tree of depth {depth}: {r:#}");
    }
    // Centralised histogram GBDT reaches 0.782 on this data (5-fold CV, ../shared/datasets/README.md);
    // LR 0.723. A broken split search or binning lands near 0.5–0.72.
    let auc = final_metric(&job, "auc");
    assert!(auc > 0.76, "gbdt credit AUC {auc}");
}
