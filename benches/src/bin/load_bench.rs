//! Load: N simulated institutions (default 200) in this process, each with its own institution
//! certificate, connected over gRPC with mutual TLS to a real `confide-coordinator` process,
//! running securely aggregated rounds of a model with ≈ d parameters (default 10^5). Reports
//! round times and the coordinator's peak RSS (VmHWM).
//!
//! `cargo run --release -p confide-benches --bin load_bench -- [N] [d] [rounds]`

use confide_benches::federation::ProcessFederation;
use confide_benches::sim::{TelcoFixture, median, submit_and_wait};

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(200);
    let d = args.get(1).copied().unwrap_or(100_000);
    let rounds = args.get(2).copied().unwrap_or(3) as u64;
    let fixture = TelcoFixture::load()?;
    let federation = ProcessFederation::start()?;
    fixture.spawn_sims(federation.url(), n, Some(&federation.pki()))?;
    let job = submit_and_wait(federation.url(), Some(&federation.admin()), fixture.job_toml(n, d, rounds, false), fixture.schema_toml.clone()).await;
    let rss = peak_rss_kib(federation.coordinator_pid());
    drop(federation);
    let job = job?;
    if job.status != "completed" {
        return Err(format!("job {}: {}", job.status, job.error).into());
    }
    let times: Vec<f64> = job.rounds.iter().map(|r| r.duration_secs).collect();
    println!("| workers | d | rounds | round time median (s) | max (s) | coordinator peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {d} | {rounds} | {:.2} | {:.2} | {} MiB |",
        median(times.clone()),
        times.iter().copied().fold(0.0, f64::max),
        rss.map_or("?".into(), |k| (k / 1024).to_string())
    );
    println!("round times: {times:.2?}");
    Ok(())
}
