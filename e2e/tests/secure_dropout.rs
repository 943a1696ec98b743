//! Secure aggregation survives dropouts over real gRPC: seven banks (the banks' threshold floor
//! ⌊2n/3⌋ + 1 = 5 tolerates two dropouts), one crashing right after it sent its masked input and
//! one right before. The round still completes, with exactly the
//! four inputs that were sent — the dead bank's masks are removed from the shares the others
//! hold — and the model it produces is a good churn model.

use std::time::Duration;

use confide_e2e::{Cluster, partition_telco, telco, telco_job};

fn train_rows(partition: &std::path::Path, bank: &str) -> f64 {
    let (_, schema) = telco();
    let schema = confide_datasets::DatasetSchema::from_file(&schema).expect("schema");
    confide_datasets::load_csv(partition.join(bank).join("train.csv"), &schema).expect("load").rows as f64
}

#[test]
fn a_round_completes_when_banks_crash_before_and_after_sending_masked_input() {
    let mut cluster = Cluster::start();
    // Dropouts are the point here: the banks' count protection would refuse the smaller sums.
    cluster.tolerate_dropouts = true;
    let partition = partition_telco(&cluster.dir.path().join("partition"), 7, 21);
    for bank in ["bank1", "bank2", "bank3", "bank6", "bank7"] {
        cluster.add_telco_worker(bank, &partition);
    }
    cluster.add_telco_worker_with_env("bank4", &partition, &[("CONFIDE_FAULT", "after-masked-input:train")]);
    cluster.add_telco_worker_with_env("bank5", &partition, &[("CONFIDE_FAULT", "before-masked-input:train")]);
    // All seven are connected before the job starts, so all seven are selected (fraction 1).
    cluster.wait_workers(7, Duration::from_secs(30));
    let job = cluster.submit(&telco_job("dropouts", "kind = \"logistic_regression\"", 3, ""));
    let after_first = cluster.wait_for(&job, Duration::from_secs(120), "round 1", |j| {
        j["rounds_completed"].as_u64().unwrap_or(0) >= 1 || j["status"] == "failed"
    });
    assert!(after_first["rounds"].as_array().is_some_and(|r| !r.is_empty()), "{after_first:#}\n{}", cluster.logs());
    let round1 = &after_first["rounds"][0];
    let status = |bank: &str| {
        round1["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["worker_id"] == bank))
            .map(|p| p["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(status("bank4"), "contributed", "bank4's masked input is in the sum: {round1:#}");
    assert_eq!(status("bank5"), "dropped", "bank5 never sent its masked input: {round1:#}");
    for bank in ["bank1", "bank2", "bank3", "bank6", "bank7"] {
        assert_eq!(status(bank), "contributed", "{round1:#}");
    }
    // The weight element of the secure sum is exactly the rows of the six contributors.
    let expected: f64 = ["bank1", "bank2", "bank3", "bank4", "bank6", "bank7"].iter().map(|b| train_rows(&partition, b)).sum();
    assert_eq!(round1["metrics"]["train_examples"].as_f64(), Some(expected), "{round1:#}");
    let auc = round1["metrics"]["auc"].as_f64().expect("auc");
    assert!(auc > 0.78, "the securely aggregated model is a real churn model: {auc}");
    assert!(cluster.read_log("bank4").contains("crash drill"), "bank4 crashed on purpose");
    // The five survivors finish the job.
    let done = cluster.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
}
