//! Survival with real processes on loopback: a coordinator SIGKILLed at random points of a job
//! ten times, a worker SIGKILLed mid-round and restarted, a worker that stalls past the stage
//! deadline. No completed round is lost, and rounds complete through dropout handling.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};
use serde_json::Value;

fn statuses(round: &Value) -> Vec<(String, String)> {
    round["participants"]
        .as_array()
        .map(|ps| ps.iter().map(|p| (p["worker_id"].as_str().unwrap_or("").to_string(), p["status"].as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default()
}

/// Every round exactly once, in order, with an intact checkpoint.
fn assert_rounds_intact(cluster: &Cluster, job: &Value, rounds: u64) {
    let list = job["rounds"].as_array().expect("rounds");
    assert_eq!(list.len() as u64, rounds, "{job:#}");
    for (i, r) in list.iter().enumerate() {
        assert_eq!(r["round"].as_u64(), Some(i as u64 + 1));
        let hash = r["model_hash"].as_str().expect("hash");
        let bytes = std::fs::read(cluster.dir.path().join("coordinator/checkpoints").join(format!("{hash}.safetensors"))).expect("checkpoint");
        assert_eq!(confide_core::sha256_hex(&bytes), hash);
    }
}

#[test]
fn coordinator_sigkilled_ten_times_in_one_job_still_completes_it() {
    // Every restart retries the round, and its evaluation: the banks allow that many.
    let (mut cluster, _) = Cluster::telco_federation_policy(3, 31, false, "max_evaluations_per_round = 20\n");
    let rounds = 12;
    let job = cluster.submit(&telco_job("crashy", "kind = \"mlp\"\nhidden = [32]", rounds, "").replace("local_epochs = 1", "local_epochs = 2"));
    // Pseudo-random kill points (fixed seed, so a failure reproduces): 150-950 ms apart.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut committed: Vec<(u64, String)> = Vec::new();
    for _ in 0..10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(150 + x % 800));
        cluster.kill_coordinator();
        cluster.start_coordinator();
        let now = cluster.job(&job);
        for r in now["rounds"].as_array().expect("rounds") {
            let entry = (r["round"].as_u64().unwrap_or(0), r["model_hash"].as_str().unwrap_or("").to_string());
            if let Some(seen) = committed.iter().find(|(n, _)| *n == entry.0) {
                assert_eq!(seen, &entry, "a committed round changed after a crash");
            } else {
                committed.push(entry);
            }
        }
        if now["status"] == "completed" {
            break;
        }
    }
    let done = cluster.wait_finished(&job, Duration::from_secs(300));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert_rounds_intact(&cluster, &done, rounds);
    for (round, hash) in &committed {
        assert_eq!(done["rounds"][(*round - 1) as usize]["model_hash"].as_str(), Some(hash.as_str()));
    }
}

#[test]
fn a_worker_sigkilled_mid_round_is_dropped_and_rejoins_after_restart() {
    let (mut cluster, partition) = Cluster::telco_federation_with(3, 37, true);
    confide_e2e::partition_telco(&partition.join("../extra"), 4, 37);
    cluster.add_telco_worker("bank4", &partition.join("../extra"));
    cluster.wait_workers(4, Duration::from_secs(30));
    let rounds = 8;
    let job = cluster.submit(&telco_job("worker-crash", "kind = \"mlp\"\nhidden = [32]", rounds, "").replace("local_epochs = 1", "local_epochs = 3"));
    let at_kill = cluster.wait_for(&job, Duration::from_secs(120), "round 1", |j| j["rounds_completed"].as_u64().unwrap_or(0) >= 1);
    cluster.kill_worker("bank4");
    // The round in flight may still hold bank4's masked input; the one after it cannot.
    let killed_at = at_kill["rounds_completed"].as_u64().unwrap_or(1);
    cluster.wait_for(&job, Duration::from_secs(120), "a round without bank4", |j| {
        j["rounds_completed"].as_u64().unwrap_or(0) >= killed_at + 2 || j["status"] != "running"
    });
    let config = cluster.dir.path().join("bank4.toml");
    cluster.spawn_worker("bank4", &config);
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert_rounds_intact(&cluster, &done, rounds);
    let rounds_list = done["rounds"].as_array().expect("rounds");
    let bank4 = |r: &Value| {
        r["participants"].as_array().and_then(|ps| ps.iter().find(|p| p["worker_id"] == "bank4")).cloned().unwrap_or(Value::Null)
    };
    // The crash shows in a round after the first: dropped from training, or (when the kill hit
    // the evaluation phase) contributed with the evaluation dropout as the reason.
    let crash_seen = rounds_list[1..].iter().map(bank4).any(|p| p["status"] != "contributed" || p["reason"] != "");
    assert!(crash_seen, "bank4's crash is recorded: {rounds_list:#?}\n{}", cluster.logs());
    // After the restart it rejoins: it contributed to the last round.
    let last = bank4(&rounds_list[rounds_list.len() - 1]);
    assert_eq!(last["status"], "contributed", "bank4 rejoined: {last:#}");
}

#[test]
fn a_worker_that_stalls_past_the_stage_deadline_is_dropped_and_the_round_completes() {
    let (mut cluster, partition) = Cluster::telco_federation_with(3, 41, true);
    confide_e2e::partition_telco(&partition.join("../extra"), 4, 41);
    cluster.add_telco_worker_with_env("bank4", &partition.join("../extra"), &[("CONFIDE_FAULT", "stall-before-masked-input:train")]);
    cluster.wait_workers(4, Duration::from_secs(30));
    let job = cluster.submit(&format!(
        "{}\n[secure_aggregation]\nstage_timeout_secs = 3\n",
        telco_job("stall", "kind = \"logistic_regression\"", 2, "")
    ));
    let done = cluster.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let round1 = statuses(&done["rounds"][0]);
    assert!(round1.contains(&("bank4".to_string(), "dropped".to_string())), "{round1:?}");
    assert_eq!(round1.iter().filter(|(_, s)| s == "contributed").count(), 3, "{round1:?}");
}
