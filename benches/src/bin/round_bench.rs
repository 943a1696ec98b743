//! A whole federated round with secure aggregation vs plain summation: an in-process
//! coordinator on 127.0.0.1 and N simulated institutions (real gRPC, real secure aggregation,
//! synthetic updates), a model of ≈ d parameters. Prints per-round medians and the ratio.
//!
//! `cargo run --release -p confide-benches --bin round_bench -- [N] [d] [rounds]`
//! (defaults 10, 1000000, 5).

use std::sync::Arc;
use std::time::Duration;

use confide_benches::sim::SimWorker;
use confide_proto::v1::{self as pb, admin_client::AdminClient};

fn telco_paths() -> (std::path::PathBuf, std::path::PathBuf) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    (
        root.join("../shared/datasets/telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"),
        root.join("datasets/schemas/telco_churn.toml"),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run_job(
    n: usize,
    d: usize,
    rounds: u64,
    plain: bool,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (csv, schema_path) = telco_paths();
    let schema_text = std::fs::read_to_string(&schema_path)?;
    let schema = confide_datasets::DatasetSchema::parse(&schema_text, "telco schema")?;
    let table = confide_datasets::load_csv(&csv, &schema)?;
    let stats = Arc::new(confide_datasets::local_stats(&table, &schema));
    let input_dim = schema.input_dim();
    // One hidden layer sized so the model has ≈ d parameters.
    let hidden = (d.saturating_sub(1) / (input_dim + 2)).max(1);

    let config = confide_coordinator::CoordinatorConfig {
        data_dir: dir.path().join("coordinator"),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(confide_coordinator::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..n {
        let w = Arc::new(SimWorker::new(
            &format!("sim{i:04}"),
            i as u64 + 1,
            &schema.name,
            &schema.fingerprint(),
            stats.clone(),
        ));
        let url = url.clone();
        tokio::spawn(async move { w.run(url).await });
    }
    let mut admin = AdminClient::connect(url.clone()).await?;
    let spec = format!(
        "name = \"round-bench\"\ndataset = \"{}\"\ninsecure_plain_aggregation = {plain}\n[model]\nkind = \"mlp\"\nhidden = [{hidden}]\n\
         [training]\nrounds = {rounds}\nlearning_rate = 0.01\n[selection]\nmin_workers = {n}\nround_deadline_secs = 600\n\
         [evaluation]\nevery = 1000000\n[secure_aggregation]\nstage_timeout_secs = 600\n",
        schema.name
    );
    let job_id = admin
        .submit_job(pb::SubmitJobRequest {
            spec_toml: spec,
            schema_toml: schema_text,
        })
        .await?
        .into_inner()
        .job_id;
    let job = loop {
        let job = admin
            .get_job(pb::GetJobRequest {
                job_id: job_id.clone(),
            })
            .await?
            .into_inner();
        if matches!(job.status.as_str(), "completed" | "failed" | "cancelled") {
            break job;
        }
        eprint!("\r{} job: {} round {}/{} {}", if plain { "plain " } else { "secure" }, job.status, job.rounds_completed, rounds, job.error);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    if job.status != "completed" {
        return Err(format!("job {}: {}", job.status, job.error).into());
    }
    // The last round also evaluates; time the training rounds only.
    Ok(job
        .rounds
        .iter()
        .filter(|r| r.round < rounds)
        .map(|r| r.duration_secs)
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10);
    let d = args.get(1).copied().unwrap_or(1_000_000);
    let rounds = args.get(2).copied().unwrap_or(5) as u64;
    let plain = run_job(n, d, rounds, true).await?;
    let secure = run_job(n, d, rounds, false).await?;
    let (p, s) = (median(plain.clone()), median(secure.clone()));
    println!("| N | d | plain round (median s) | secure round (median s) | ratio | target |");
    println!("|---|---|---|---|---|---|");
    println!("| {n} | {d} | {p:.3} | {s:.3} | {:.2}x | <= 1.3x |", s / p);
    println!("plain rounds: {plain:.3?}\nsecure rounds: {secure:.3?}");
    Ok(())
}
