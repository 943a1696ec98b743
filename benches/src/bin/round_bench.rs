//! A whole federated round with secure aggregation vs plain summation: an in-process
//! coordinator on 127.0.0.1 and N simulated institutions (real gRPC, real secure aggregation,
//! synthetic updates), a model of ≈ d parameters. Prints per-round medians and the ratio.
//!
//! `cargo run --release -p confide-benches --bin round_bench -- [N] [d] [rounds]`
//! (defaults 10, 1000000, 5).

use std::time::Duration;

use confide_benches::sim::{TelcoFixture, median, submit_and_wait};

async fn run_job(fixture: &TelcoFixture, n: usize, d: usize, rounds: u64, plain: bool) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Plaintext: this measures aggregation, not TLS (the load bench runs with mutual TLS).
    let config = confide_coordinator::CoordinatorConfig { data_dir: dir.path().join("coordinator"), insecure_dev: true, ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(confide_coordinator::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    fixture.spawn_sims(&url, n, None)?;
    let job = submit_and_wait(&url, None, fixture.job_toml(n, d, rounds, plain), fixture.schema_toml.clone()).await?;
    let _ = stop_tx.send(());
    let _ = server.await;
    if job.status != "completed" {
        return Err(format!("job {}: {}", job.status, job.error).into());
    }
    // The last round also evaluates; time the training rounds only.
    Ok(job.rounds.iter().filter(|r| r.round < rounds).map(|r| r.duration_secs).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(10);
    let d = args.get(1).copied().unwrap_or(1_000_000);
    let rounds = args.get(2).copied().unwrap_or(5) as u64;
    let fixture = TelcoFixture::load()?;
    let plain = run_job(&fixture, n, d, rounds, true).await?;
    let secure = run_job(&fixture, n, d, rounds, false).await?;
    let (p, s) = (median(plain.clone()), median(secure.clone()));
    println!("| N | d | plain round (median s) | secure round (median s) | ratio | target |");
    println!("|---|---|---|---|---|---|");
    println!("| {n} | {d} | {p:.3} | {s:.3} | {:.2}x | <= 1.3x |", s / p);
    println!("plain rounds: {plain:.3?}\nsecure rounds: {secure:.3?}");
    Ok(())
}
