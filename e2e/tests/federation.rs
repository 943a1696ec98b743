//! A real federation trains a churn model: one coordinator and three bank workers as separate
//! processes on 127.0.0.1, a job submitted through the CLI, secure aggregation on (the
//! default). The federated model's held-out AUC must be within 0.01 of the same model trained
//! centrally on the union of the banks' data with the same budget.

use std::time::Duration;

use confide_core::job::{LocalOptimizer, LocalTraining};
use confide_core::metrics::EvalContribution;
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing, RawTable};
use confide_e2e::{Cluster, partition_telco, telco, telco_job};
use confide_worker::ml;

const BANKS: [&str; 3] = ["bank1", "bank2", "bank3"];
const ROUNDS: u64 = 8;

/// Loads every bank's split and concatenates the encoded rows.
fn union(partition: &std::path::Path, split: &str, schema: &DatasetSchema, prep: Option<&Preprocessing>) -> (Vec<RawTable>, Option<confide_datasets::Encoded>) {
    let tables: Vec<RawTable> = BANKS
        .iter()
        .map(|b| confide_datasets::load_csv(partition.join(b).join(format!("{split}.csv")), schema).expect("load"))
        .collect();
    let encoded = prep.map(|p| {
        let parts: Vec<_> = tables.iter().map(|t| p.encode(t).expect("encode")).collect();
        let dim = parts[0].dim;
        confide_datasets::Encoded {
            features: parts.iter().flat_map(|e| e.features.iter().copied()).collect(),
            labels: parts.iter().flat_map(|e| e.labels.iter().copied()).collect(),
            rows: parts.iter().map(|e| e.rows).sum(),
            dim,
        }
    });
    (tables, encoded)
}

#[test]
fn federated_churn_matches_centralised_training() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 42);
    for bank in BANKS {
        cluster.add_telco_worker(bank, &partition);
    }
    let job = cluster.submit(&telco_job("churn-e2e", "kind = \"logistic_regression\"", ROUNDS, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let rounds = done["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), ROUNDS as usize);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        assert_eq!(r["participants"].as_array().map(Vec::len), Some(3), "{r:#}");
        assert!(r["metrics"]["auc"].as_f64().is_some(), "every round is evaluated: {r:#}");
    }
    let federated_auc = rounds.last().and_then(|r| r["metrics"]["auc"].as_f64()).expect("auc");

    // The same model, data and budget, trained centrally: ROUNDS epochs over the union.
    let (_, schema_path) = telco();
    let schema = DatasetSchema::from_file(&schema_path).expect("schema");
    let (train_tables, _) = union(&partition, "train", &schema, None);
    let mut stats = vec![0.0; confide_datasets::stats_len(&schema)];
    for t in &train_tables {
        for (s, x) in stats.iter_mut().zip(confide_datasets::local_stats(t, &schema)) {
            *s += x;
        }
    }
    let prep = Preprocessing::from_aggregate(&schema, &stats).expect("prep");
    let (_, train) = union(&partition, "train", &schema, Some(&prep));
    let (_, test) = union(&partition, "test", &schema, Some(&prep));
    let (train, test) = (train.expect("train"), test.expect("test"));
    let spec = ModelSpec::LogisticRegression;
    let init = ModelParams::init(spec.layout(prep.input_dim()), 7);
    let local = LocalTraining {
        epochs: ROUNDS as usize,
        batch_size: 32,
        learning_rate: 0.05,
        optimizer: LocalOptimizer::Momentum,
        prox_mu: 0.0,
        pos_weight: None,
        seed: 7,
        l2: 0.0,
        feedback: Default::default(),
        negatives: 4,
    };
    let central = ml::train_local(&spec, &init, &train, &ml::TrainConfig::from(&local), ml::Device::Cpu).expect("central");
    let central_eval = ml::evaluate(&spec, &central.params, &test, 10_000, ml::Device::Cpu).expect("eval");
    let central_auc = central_eval.metrics()["auc"];

    // And the federated global model, pulled through the CLI, scored locally on the same rows.
    let model_path = cluster.dir.path().join("model.safetensors");
    let out = cluster.confide(&["model", "pull", &job, "-o", model_path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&model_path).expect("model file");
    let global = ModelParams::from_safetensors(&bytes, &spec.layout(prep.input_dim())).expect("model");
    let pulled: EvalContribution = ml::evaluate(&spec, &global, &test, 10_000, ml::Device::Cpu).expect("eval");
    let pulled_auc = pulled.metrics()["auc"];

    println!("federated AUC {federated_auc:.4} (re-scored {pulled_auc:.4}), centralised AUC {central_auc:.4}");
    assert!((pulled_auc - federated_auc).abs() < 1e-3, "the securely aggregated evaluation matches a local re-scoring");
    assert!((federated_auc - central_auc).abs() <= 0.01, "federated {federated_auc:.4} vs centralised {central_auc:.4}");
    assert!(federated_auc > 0.8, "the churn model learned something: {federated_auc}");
}

#[test]
fn watch_streams_every_round_and_get_reports_completion() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 1);
    for bank in BANKS {
        cluster.add_telco_worker(bank, &partition);
    }
    let job = cluster.submit(&telco_job("watch-e2e", "kind = \"mlp\"\nhidden = [8]", 3, ""));
    let out = cluster.confide(&["job", "watch", &job]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "watch: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    for r in 1..=3 {
        assert!(text.contains(&format!("round {r:>3}")), "round {r} missing from watch output:\n{text}");
    }
    assert!(text.contains("completed after 3 rounds"), "{text}");
    let list = cluster.confide(&["job", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&job));

    // Operators see the same through Prometheus.
    let metrics = cluster.scrape_metrics();
    for line in [
        "confide_rounds_completed_total 3",
        "confide_round_duration_seconds_count 3",
        "confide_round_participants_total{status=\"contributed\"} 9",
        "confide_workers_connected 3",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    let bytes_in: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("confide_contribution_bytes_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("bytes received");
    assert!(bytes_in > 0.0);
}
