//! Operational metrics in the Prometheus text format, served on their own HTTP listener
//! (`metrics_listen`): rounds, round durations, participant outcomes (dropouts among them),
//! contribution bytes in, model bytes out, connected workers, and what each running job is
//! doing (`confide_job_activity{job,activity,reason} 1`: waiting for participants, training,
//! stalled on its store). Structured events go to the `tracing` log, each with its job and round
//! ids.

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

/// Labels of a running job's activity: one series per job, for what it does now.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    /// Job id.
    pub job: String,
    /// `waiting`, `training` or `stalled`.
    pub activity: String,
    /// Why (e.g. `waiting for participants: 1 of 3 connected banks offers …`).
    pub reason: String,
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
    /// 1 for each running job's current activity (the series of a job's past activities and
    /// of ended jobs are removed).
    job_activity: Family<ActivityLabels, Gauge>,
    /// The series each job shows now.
    job_activity_now: std::sync::Mutex<std::collections::HashMap<String, ActivityLabels>>,
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
        let job_activity = Family::<ActivityLabels, Gauge>::default();
        registry.register("rounds_completed", "Rounds committed", rounds_completed.clone());
        registry.register("round_attempts_failed", "Round attempts that failed", round_attempts_failed.clone());
        registry.register("round_duration_seconds", "Wall-clock seconds per committed round", round_duration.clone());
        registry.register("round_participants", "Participant outcomes in committed rounds", participants.clone());
        registry.register("contribution_bytes_received", "Bytes of contributions received from workers", bytes_in.clone());
        registry.register("model_bytes_sent", "Bytes of models sent to workers and the CLI", bytes_out.clone());
        registry.register("workers_connected", "Workers with an open task stream", workers_connected.clone());
        registry.register("job_activity", "What each running job is doing now (waiting, training, stalled), with why", job_activity.clone());
        Self {
            registry,
            rounds_completed,
            round_attempts_failed,
            round_duration,
            participants,
            bytes_in,
            bytes_out,
            workers_connected,
            job_activity,
            job_activity_now: Default::default(),
        }
    }
}

impl Metrics {
    /// Shows `job`'s activity now (None: the job ended, its series goes).
    pub fn set_job_activity(&self, job: &str, activity: Option<&crate::round::activity::Activity>) {
        let mut now = self.job_activity_now.lock().unwrap_or_else(|p| p.into_inner());
        let labels = activity.map(|a| ActivityLabels { job: job.into(), activity: a.kind.as_str().into(), reason: a.reason.clone() });
        if now.get(job) == labels.as_ref() {
            return;
        }
        if let Some(old) = now.remove(job) {
            self.job_activity.remove(&old);
        }
        if let Some(labels) = labels {
            self.job_activity.get_or_create(&labels).set(1);
            now.insert(job.into(), labels);
        }
    }

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
