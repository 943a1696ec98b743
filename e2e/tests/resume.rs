//! Durability: SIGKILL the coordinator in the middle of a round, start it again, and the job
//! resumes from its last completed round — no completed round lost or changed, the interrupted
//! round run again, the job finished.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};

#[test]
fn coordinator_killed_mid_round_resumes_without_losing_rounds() {
    let (mut cluster, _) = Cluster::telco_federation(3, 3);
    // Several local epochs of an MLP make each round long enough to be interrupted.
    let rounds = 6;
    let job_toml = telco_job("resume-e2e", "kind = \"mlp\"\nhidden = [64, 32]", rounds, "")
        .replace("local_epochs = 1", "local_epochs = 4");
    let job = cluster.submit(&job_toml);
    let before = cluster.wait_for(&job, Duration::from_secs(180), "two completed rounds", |j| {
        j["rounds_completed"].as_u64().unwrap_or(0) >= 2
    });
    cluster.kill_coordinator();
    let kept: Vec<(u64, String)> = before["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| (r["round"].as_u64().unwrap_or(0), r["model_hash"].as_str().unwrap_or("").to_string()))
        .collect();

    cluster.start_coordinator();
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let rounds_after = done["rounds"].as_array().expect("rounds");
    assert_eq!(rounds_after.len(), rounds as usize, "every round exactly once: {done:#}");
    for (i, r) in rounds_after.iter().enumerate() {
        assert_eq!(r["round"].as_u64(), Some(i as u64 + 1));
    }
    for (round, hash) in &kept {
        let after = &rounds_after[(*round - 1) as usize];
        assert_eq!(after["model_hash"].as_str(), Some(hash.as_str()), "round {round} was committed before the kill and must be unchanged");
    }
    // Every committed round's checkpoint is on disk and intact.
    for r in rounds_after {
        let hash = r["model_hash"].as_str().expect("hash");
        let path = cluster.dir.path().join("coordinator/checkpoints").join(format!("{hash}.safetensors"));
        let bytes = std::fs::read(&path).expect("checkpoint file");
        assert_eq!(confide_core::sha256_hex(&bytes), hash);
    }
    assert!(cluster.read_log("coordinator").contains("resuming job"), "the restarted coordinator resumed the job");
}
