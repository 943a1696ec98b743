//! Operational metrics in the Prometheus text format, served on their own HTTP listener
//! (`metrics_listen`): rounds, round durations, participant outcomes (dropouts among them),
//! contribution bytes in, model bytes out, and connected workers. Structured events go to the
//! `tracing` log, each with its job and round ids.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of a participant outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `contributed`, `dropped`, `failed` or `refused`.
    pub status: String,
}

/// The coordinator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rounds committed.
    pub rounds_completed: Counter,
    /// Round attempts that failed (and were retried or failed the job).
    pub round_attempts_failed: Counter,
    /// Wall-clock seconds per committed round.
    pub round_duration: Histogram,
    /// Per-participant outcomes of committed rounds.
    pub participants: Family<OutcomeLabels, Counter>,
    /// Bytes of contributions received from workers.
    pub bytes_in: Counter,
    /// Bytes of models sent to workers and the CLI.
    pub bytes_out: Counter,
    /// Workers with an open task stream.
    pub workers_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("confide");
        let rounds_completed = Counter::default();
        let round_attempts_failed = Counter::default();
        let round_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let participants = Family::<OutcomeLabels, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let workers_connected = Gauge::default();
        registry.register("rounds_completed", "Rounds committed", rounds_completed.clone());
        registry.register("round_attempts_failed", "Round attempts that failed", round_attempts_failed.clone());
        registry.register("round_duration_seconds", "Wall-clock seconds per committed round", round_duration.clone());
        registry.register("round_participants", "Participant outcomes in committed rounds", participants.clone());
        registry.register("contribution_bytes_received", "Bytes of contributions received from workers", bytes_in.clone());
        registry.register("model_bytes_sent", "Bytes of models sent to workers and the CLI", bytes_out.clone());
        registry.register("workers_connected", "Workers with an open task stream", workers_connected.clone());
        Self { registry, rounds_completed, round_attempts_failed, round_duration, participants, bytes_in, bytes_out, workers_connected }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    metrics: Arc<Metrics>,
    hub: crate::hub::Hub,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let hub = hub.clone();
            async move {
                metrics.workers_connected.set(hub.connected().len() as i64);
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
