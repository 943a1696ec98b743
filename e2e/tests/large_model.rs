//! Models larger than the gRPC message limit travel as chunked streams both ways: a round of an
//! MLP whose checkpoint is over 64 MB (≈17 M parameters) completes.

use std::time::Duration;

use confide_e2e::{Cluster, partition_telco, telco_job};

/// Keeps the first `rows` data rows of a CSV (so the big model trains quickly).
fn truncate(path: &std::path::Path, rows: usize) {
    let text = std::fs::read_to_string(path).expect("read");
    let kept: Vec<&str> = text.lines().take(rows + 1).collect();
    std::fs::write(path, kept.join("\n") + "\n").expect("write");
}

#[test]
fn a_model_over_64_megabytes_completes_a_round() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 13);
    for bank in ["bank1", "bank2", "bank3"] {
        truncate(&partition.join(bank).join("train.csv"), 96);
        truncate(&partition.join(bank).join("test.csv"), 48);
        cluster.add_telco_worker(bank, &partition);
    }
    let job_toml = telco_job("large", "kind = \"mlp\"\nhidden = [4096, 4096]", 1, "")
        .replace("batch_size = 32", "batch_size = 96")
        .replace("learning_rate = 0.05", "learning_rate = 0.001");
    let job = cluster.submit(&job_toml);
    let done = cluster.wait_finished(&job, Duration::from_secs(400));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let hash = done["model_hash"].as_str().expect("hash");
    let size = std::fs::metadata(cluster.dir.path().join("coordinator/checkpoints").join(format!("{hash}.safetensors")))
        .expect("checkpoint")
        .len();
    assert!(size > 64 << 20, "checkpoint is {size} bytes");
    // And it comes back out through the CLI in chunks.
    let out_path = cluster.dir.path().join("large.safetensors");
    let out = cluster.confide(&["model", "pull", &job, "-o", out_path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&out_path).expect("pulled").len(), size);
}
