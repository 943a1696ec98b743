//! `confide-coordinator`: serves the Federation and Admin gRPC services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use confide_coordinator::CoordinatorConfig;

/// Confide coordinator: schedules federated rounds and securely aggregates bank updates.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (flags override it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (e.g. 127.0.0.1:7070; port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the state database and checkpoints.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the bound address to this file once listening (for scripts using port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve plaintext gRPC without client certificates. Development only: prints a warning.
    #[arg(long)]
    insecure_dev: bool,
    /// Start even though the state database does not match its manifest (it is empty, lost
    /// commits, or belongs to another data directory): the database is used as it is and the
    /// manifest rewritten to match. Only after restoring a backup on purpose, or accepting the loss.
    #[arg(long)]
    accept_state_loss: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confide-coordinator: {e:#}");
            // 2: bad certificate files, or state on disk the operator must fix (README exit
            // codes); 1: any other failure.
            ExitCode::from(e.downcast_ref::<confide_coordinator::RunError>().map_or(1, |e| e.exit_code()))
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => CoordinatorConfig::from_file(path)?,
        None => CoordinatorConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.insecure_dev = args.insecure_dev;
    config.accept_state_loss = args.accept_state_loss;
    if args.accept_state_loss {
        eprintln!("confide-coordinator: WARNING: --accept-state-loss: a database that does not match its manifest is used as it is");
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if args.insecure_dev {
        eprintln!("confide-coordinator: WARNING: --insecure-dev: plaintext, unauthenticated connections (development only)");
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    confide_coordinator::run(config, listener, shutdown).await?;
    Ok(())
}
