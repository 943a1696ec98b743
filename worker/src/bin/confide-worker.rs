//! `confide-worker`: a bank's worker daemon. Dials out to the coordinator, trains on local data
//! with libtorch, and sends only securely aggregated contributions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use confide_worker::config::WorkerConfig;

/// Confide worker daemon (one per institution).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Worker configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Coordinator URL, overriding the configuration file's `coordinator`.
    #[arg(long)]
    coordinator: Option<String>,
    /// Connect in plaintext without a certificate. Development only: prints a warning.
    #[arg(long)]
    insecure_dev: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = match WorkerConfig::from_file(&args.config) {
        Ok(mut c) => {
            if let Some(url) = args.coordinator {
                c.coordinator = url;
            }
            c.insecure_dev = args.insecure_dev && c.tls.is_none();
            if c.insecure_dev {
                eprintln!("confide-worker: WARNING: --insecure-dev: plaintext, unauthenticated connection (development only)");
            }
            if let Err(e) = c.validate() {
                eprintln!("confide-worker: {}: {e}", args.config.display());
                return ExitCode::from(2);
            }
            c
        }
        Err(e) => {
            eprintln!("confide-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let worker = match confide_worker::daemon::start(config) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("confide-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    confide_worker::daemon::run(worker, shutdown).await;
    ExitCode::SUCCESS
}
