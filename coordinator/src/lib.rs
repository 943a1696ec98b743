//! Confide's coordinator: it takes training jobs from the data-science team, schedules rounds,
//! hands tasks to the banks' workers over the streams they open, sums their contributions
//! (securely by default), applies the server optimizer and keeps every round durable.
//!
//! Layout: [`store`] (SQLite + checkpoints), [`hub`] (connected workers, task routing),
//! [`round`] (the job's pure state machine and the tokio runner that drives it),
//! [`jobs`] (the running set, submission checks and API views), [`service`] (the two gRPC services),
//! [`telemetry`] (Prometheus metrics), [`export`] (model export when a job completes).
//! [`run`] serves until a shutdown future completes, so tests start it on `127.0.0.1:0`.

pub mod config;
pub mod export;
pub mod hub;
pub mod jobs;
pub mod round;
pub mod service;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use confide_proto::v1::{admin_server::AdminServer, federation_server::FederationServer};
use tokio::net::TcpListener;

pub use config::CoordinatorConfig;

/// State shared by the services and job runners.
#[derive(Debug)]
pub struct Shared {
    /// Durable state.
    pub store: store::Store,
    /// Connected workers and open tasks.
    pub hub: hub::Hub,
    /// Jobs running in this process.
    pub jobs: jobs::Jobs,
    /// Settings.
    pub config: CoordinatorConfig,
    /// Operational metrics.
    pub metrics: Arc<telemetry::Metrics>,
    /// Revoked certificates (the config's list and its live revocation file).
    pub revocations: service::auth::Revocations,
}

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The state could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics listener could not be bound.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    /// TLS is not configured, or its files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The revocation file is missing or malformed.
    #[error(transparent)]
    Revocation(#[from] confide_tls::revocation::RevocationError),
    /// The coordinator's own certificate, key or CA file is unusable (bad input: exit 2).
    #[error("TLS: {0}")]
    Identity(#[from] confide_tls::check::IdentityError),
}

impl RunError {
    /// The process exit code for this error: 2 for bad input the operator must fix — the
    /// state on disk is refused ([`store::StoreError::StateLost`]) or the certificate files
    /// are wrong — 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Store(store::StoreError::StateLost { .. }) | RunError::Identity(_) => 2,
            _ => 1,
        }
    }
}

/// Opens the store, resumes unfinished jobs and serves both services on `listener` until
/// `shutdown` completes.
pub async fn run(config: CoordinatorConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let tls = match (&config.tls, config.insecure_dev) {
        (Some(files), _) => {
            // Checked here so a wrong file is named at start, not found by each worker's handshake.
            confide_tls::check::check_identity(files, confide_tls::check::Holder::Coordinator, None)?;
            Some(confide_tls::server_config(files).map_err(|e| RunError::Tls(e.to_string()))?)
        }
        (None, true) => {
            tracing::warn!("INSECURE development mode: plaintext gRPC, no client certificates; never use with real data");
            None
        }
        (None, false) => {
            return Err(RunError::Tls("mutual TLS is required: configure [tls] (ca, cert, key), or pass --insecure-dev for a plaintext development coordinator".into()));
        }
    };
    let revocations = service::auth::Revocations::from_config(&config)?;
    // Refuses a database that lost state (see `store::manifest`) before anything is served.
    let store = store::Store::open_with(&config.data_dir, store::OpenOptions { accept_state_loss: config.accept_state_loss })?;
    let metrics = Arc::new(telemetry::Metrics::default());
    let shared = Arc::new(Shared { store, hub: hub::Hub::default(), jobs: jobs::Jobs::default(), config, metrics, revocations });
    let stop_background = tokio_util::sync::CancellationToken::new();
    if shared.revocations.is_live() {
        tokio::spawn(service::auth::drop_revoked_workers(shared.clone(), stop_background.clone()));
    }
    if let Some(addr) = shared.config.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(RunError::Metrics)?;
        tracing::info!(addr = ?listener.local_addr().ok(), "Prometheus metrics at /metrics");
        let serve = telemetry::serve(shared.metrics.clone(), shared.hub.clone(), listener, stop_background.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let resumed = jobs::resume_all(&shared)?;
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, resumed, data_dir = %shared.config.data_dir.display(), "coordinator listening");
    let max = shared.config.max_message_bytes;
    let federation = FederationServer::new(service::federation::FederationService::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(service::admin::AdminService::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // On shutdown, stop the runners (their jobs resume on the next start) and close the workers'
    // task streams, so the server's graceful shutdown is not held open by long-lived streams.
    let stopping = shared.clone();
    let shutdown = async move {
        shutdown.await;
        stop_background.cancel();
        stopping.jobs.stop_all();
        stopping.hub.disconnect_all();
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .concurrency_limit_per_connection(shared.config.max_concurrent_streams as usize)
        .max_concurrent_streams(Some(shared.config.max_concurrent_streams))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(federation)
        .add_service(admin)
        .serve_with_incoming_shutdown(no_delay(listener), shutdown)
        .await?;
    // Wait for every runner to return, so no store write is cut off when the process exits.
    shared.jobs.drain().await;
    // A clean stop: none of this start's resumes crashed (see `jobs::QUARANTINE_AFTER_CRASHED_RESUMES`).
    if let Err(e) = shared.store.clear_resume_attempts() {
        tracing::warn!(error = %e, "could not clear the jobs' resume counts");
    }
    Ok(())
}

/// The accepted connections with Nagle's algorithm off. A round is a chain of small messages
/// (secure-aggregation relays, acknowledgements) each waiting for the last: with Nagle on, a
/// small write waits for the peer's delayed ACK (40 ms on Linux), which made a tree level —
/// four relay stages — cost about 300 ms of idle time. (`serve_with_incoming` bypasses tonic's
/// own `tcp_nodelay`.)
fn no_delay(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not turn Nagle's algorithm off");
            }
        })
    })
}
