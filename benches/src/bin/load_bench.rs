//! Load: N simulated institutions (default 200) in this process, each with its own institution
//! certificate, connected over gRPC with mutual TLS to a real `confide-coordinator` process,
//! running securely aggregated rounds of a model with ≈ d parameters (default 10^5). Reports
//! round times and the coordinator's peak RSS (VmHWM).
//!
//! `cargo run --release -p confide-benches --bin load_bench -- [N] [d] [rounds]`

use std::process::{Command, Stdio};
use std::time::Duration;

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
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let coordinator = exe.parent().ok_or("no target dir")?.join("confide-coordinator");
    let addr_file = dir.path().join("addr");
    let pki = dir.path().join("pki");
    confide_tls::init_ca(&pki, 1)?;
    confide_tls::issue(&pki, confide_tls::Role::Coordinator, "coordinator", &["127.0.0.1".into()], 1, &pki)?;
    confide_tls::issue(&pki, confide_tls::Role::Admin, "bench", &[], 1, &pki)?;
    let files = |name: &str| confide_tls::TlsFiles { ca: pki.join("ca.pem"), cert: pki.join(format!("{name}.pem")), key: pki.join(format!("{name}.key")) };
    let config = dir.path().join("coordinator.toml");
    let c = files("coordinator");
    std::fs::write(&config, format!("[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n", c.ca, c.cert, c.key))?;
    let mut child = Command::new(&coordinator)
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("coordinator"))
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e} (build it with --release first)", coordinator.display()))?;
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let url = format!("https://{}", addr.trim());
    fixture.spawn_sims(&url, n, Some(&pki))?;
    let job = submit_and_wait(&url, Some(&files("bench")), fixture.job_toml(n, d, rounds, false), fixture.schema_toml.clone()).await;
    let rss = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
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
