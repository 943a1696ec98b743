//! The tokio driver of one job: loads the job's committed state from the store, builds its
//! [`JobMachine`] and carries out what the machine asks — sending tasks through the hub,
//! routing contributions back, arming its timer, writing to the store off the async threads,
//! publishing events — until the machine finishes, then records how the job ended.
//!
//! All of the round's logic is in [`super::machine`]; this file owns only the clock, the
//! channels, the OS randomness the machine is seeded with, and the store calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_datasets::DatasetSchema;
use confide_proto::v1 as pb;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::errors::JobError;
use super::machine::{Effect, Head, JobEnd, JobMachine, JobSnapshot, MAX_STORE_BACKOFF, Persist, STORE_BACKOFF};
use crate::Shared;
use crate::hub::Inbound;
use crate::store::{JobStatus, StoreError, now_rfc3339};

/// Runs a job to its end and records how it ended.
pub async fn run(shared: &Arc<Shared>, job_id: &str, cancel: CancellationToken) {
    let end = drive(shared, job_id, &cancel).await;
    shared.metrics.set_job_activity(job_id, None);
    shared.jobs.set_activity(job_id, None);
    let recorded = match &end {
        JobEnd::Completed { stop_reason } => {
            // Exported before the job reads as completed, so whoever sees `completed` finds
            // the export (or its recorded error) in place; a crash in between re-runs both.
            crate::export::export_completed(shared, job_id, stop_reason.clone()).await;
            tracing::info!(job = %job_id, "job completed");
            let reason = stop_reason.clone();
            blocking(shared, job_id, move |s, id| s.store.set_job_status(id, JobStatus::Completed, None, reason.as_deref())).await
        }
        JobEnd::Stopped => {
            tracing::info!(job = %job_id, "job runner stopped (job cancelled, or coordinator shutting down)");
            Ok(())
        }
        JobEnd::Failed(e) => {
            tracing::error!(job = %job_id, error = %e, "job failed");
            let error = e.to_string();
            blocking(shared, job_id, move |s, id| s.store.set_job_status(id, JobStatus::Failed, Some(&error), None)).await
        }
    };
    if let Err(e) = recorded {
        tracing::error!(job = %job_id, error = %e, "could not record the job's end");
    }
    if matches!(end, JobEnd::Stopped) {
        return;
    }
    let view = blocking(shared, job_id, |s, id| crate::jobs::views::load_job(s, id)).await;
    if let Ok(Some(view)) = view {
        shared.jobs.publish(pb::JobEvent {
            job_id: job_id.into(),
            round: view.rounds_completed,
            kind: Some(pb::job_event::Kind::JobFinished(view)),
        });
    }
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    job_id: &str,
    f: impl FnOnce(&Shared, &str) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (shared, id) = (Arc::clone(shared), job_id.to_string());
    tokio::task::spawn_blocking(move || f(&shared, &id)).await.unwrap_or_else(|e| {
        Err(StoreError::Io { path: "store task".into(), source: std::io::Error::other(format!("store task panicked: {e}")) })
    })
}

/// What loading a job's snapshot can end in.
enum Loaded {
    Snapshot(Box<JobSnapshot>),
    /// Already completed, failed or cancelled.
    Final,
    Gone,
}

/// Reads the job's committed state: spec, schema, head checkpoints, past rounds.
fn load_snapshot(shared: &Shared, job_id: &str) -> Result<Result<Loaded, JobError>, StoreError> {
    let store = &shared.store;
    let Some(job) = store.job(job_id)? else { return Ok(Ok(Loaded::Gone)) };
    if job.status.is_final() {
        return Ok(Ok(Loaded::Final));
    }
    let spec = match serde_json::from_str(&job.spec_json) {
        Ok(s) => s,
        Err(e) => return Ok(Err(JobError::StoredState(format!("job spec unreadable: {e}")))),
    };
    let schema = match DatasetSchema::parse(&job.schema_toml, "stored schema") {
        Ok(s) => s,
        Err(e) => return Ok(Err(JobError::StoredState(e.to_string()))),
    };
    let head = match (&job.preprocessing_json, &job.model_hash) {
        (Some(p), Some(model_hash)) => {
            let prep = match serde_json::from_str(p) {
                Ok(p) => p,
                Err(e) => return Ok(Err(JobError::StoredState(format!("preprocessing unreadable: {e}")))),
            };
            let model = store.checkpoints().get(model_hash)?;
            let optimizer_state = job.state_hash.as_deref().map(|h| store.checkpoints().get(h)).transpose()?;
            Some(Head { prep, model, optimizer_state })
        }
        _ => None,
    };
    let catalogue = match store.job_catalogue(job_id)? {
        Some(json) => match serde_json::from_str(&json) {
            Ok(items) => Some(items),
            Err(e) => return Ok(Err(JobError::StoredState(format!("item catalogue unreadable: {e}")))),
        },
        None => None,
    };
    let initial_params = match &spec {
        confide_core::job::JobSpec { model: confide_core::model::ModelSpec::TorchScript(ts), .. } if head.is_none() => {
            ts.parameters_sha256.as_deref().map(|h| store.checkpoints().get(h)).transpose()?
        }
        _ => None,
    };
    let past_metrics = store.rounds(job_id)?.into_iter().map(|r| r.metrics).collect();
    store.set_job_status(job_id, JobStatus::Running, None, None)?;
    Ok(Ok(Loaded::Snapshot(Box::new(JobSnapshot {
        job_id: job_id.to_string(),
        spec,
        schema,
        head,
        rounds_completed: job.rounds_completed,
        past_metrics,
        catalogue,
        initial_params,
        defaults: shared.config.job_defaults,
    }))))
}

/// Loads the job (waiting out transient store faults), then drives its machine to the end.
async fn drive(shared: &Arc<Shared>, job_id: &str, cancel: &CancellationToken) -> JobEnd {
    let mut backoff = STORE_BACKOFF;
    let snapshot = loop {
        match blocking(shared, job_id, |s, id| load_snapshot(s, id)).await {
            Ok(Ok(Loaded::Snapshot(s))) => break s,
            Ok(Ok(Loaded::Final | Loaded::Gone)) => return JobEnd::Stopped,
            Ok(Err(e)) => return JobEnd::Failed(e),
            Err(e) if e.is_transient() => {
                tracing::warn!(job = %job_id, error = %e, retry_in = ?backoff, "cannot load the job; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return JobEnd::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
            }
            Err(e) => return JobEnd::Failed(JobError::Store(e)),
        }
    };
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let mut machine = match JobMachine::new(*snapshot, seed, Instant::now()) {
        Ok(m) => m,
        Err(e) => return JobEnd::Failed(e),
    };
    machine.handle_workers(Instant::now(), shared.hub.connected());
    let (inbox_tx, mut inbox) = mpsc::channel::<Inbound>(64);
    // The task-stream session each open task went to: a worker that reconnects has lost its tasks.
    let mut sessions: HashMap<String, (String, Option<u64>)> = HashMap::new();
    loop {
        while let Some(effect) = machine.poll_effect() {
            match effect {
                Effect::Assign { worker, task } => {
                    shared.hub.open_task(&task.task_id, &worker, job_id, task.round, inbox_tx.clone());
                    sessions.insert(task.task_id.clone(), (worker.clone(), shared.hub.generation(&worker)));
                    shared.hub.grant_blobs(&worker, &task);
                    if !shared.hub.send(&worker, task).await {
                        machine.handle_disconnect(Instant::now(), &worker);
                    }
                }
                Effect::Relay { worker, task } => {
                    if !shared.hub.send(&worker, task).await {
                        machine.handle_disconnect(Instant::now(), &worker);
                    }
                }
                Effect::CloseTasks(ids) => {
                    for id in &ids {
                        sessions.remove(id);
                    }
                    shared.hub.close_tasks(ids.iter());
                }
                Effect::Persist(write) => {
                    let result = persist(shared, job_id, write).await;
                    machine.handle_persisted(Instant::now(), result);
                }
                Effect::Publish { round, event } => {
                    if matches!(event, pb::job_event::Kind::ActivityChanged(_)) {
                        // Recorded before it is published: a watcher that joins in between
                        // reads it from the view.
                        shared.jobs.set_activity(job_id, machine.activity());
                    }
                    publish(shared, job_id, round, event)
                }
                Effect::Finish(end) => {
                    shared.hub.close_tasks(sessions.keys());
                    return end;
                }
            }
        }
        // What `GetJob` and the metrics show; the machine published the change as an event.
        shared.jobs.set_activity(job_id, machine.activity());
        shared.metrics.set_job_activity(job_id, machine.activity());
        let wake = machine.poll_timeout().map_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600), tokio::time::Instant::from_std);
        tokio::select! {
            _ = cancel.cancelled() => machine.handle_stop(),
            msg = inbox.recv() => {
                // The runner holds a sender, so the inbox never closes while it runs.
                if let Some(Inbound { worker_id, task_id, body, ack }) = msg {
                    let r = machine.handle_contribution(Instant::now(), &worker_id, &task_id, body);
                    if let Err(e) = &r {
                        tracing::warn!(job = %job_id, worker = %worker_id, error = %e, "contribution rejected");
                    }
                    let _ = ack.send(r.map_err(|e| e.to_string()));
                }
            }
            _ = tokio::time::sleep_until(wake) => machine.handle_timeout(Instant::now()),
            _ = shared.hub.wait_for_change() => {
                let now = Instant::now();
                let moved: Vec<String> = sessions
                    .values()
                    .filter(|(w, generation)| shared.hub.generation(w) != *generation || !shared.hub.is_connected(w))
                    .map(|(w, _)| w.clone())
                    .collect();
                for w in moved {
                    machine.handle_disconnect(now, &w);
                }
                machine.handle_workers(now, shared.hub.connected());
            }
        }
    }
}

fn publish(shared: &Shared, job_id: &str, round: u64, kind: pb::job_event::Kind) {
    shared.jobs.publish(pb::JobEvent { job_id: job_id.into(), round, kind: Some(kind) });
}

/// Carries out one durable write off the async threads, and what follows it (metrics, the
/// round's event).
async fn persist(shared: &Arc<Shared>, job_id: &str, write: Persist) -> Result<(), StoreError> {
    match write {
        Persist::Start { prep_json, model, optimizer_state } => {
            blocking(shared, job_id, move |s, id| {
                let cp = s.store.checkpoints();
                let model_hash = cp.put(&model.bytes)?;
                let state_hash = cp.put(&optimizer_state.bytes)?;
                s.store.set_job_start(id, &prep_json, &model_hash, &state_hash)
            })
            .await
        }
        Persist::Checkpoint(blob) => blocking(shared, job_id, move |s, _| s.store.checkpoints().put(&blob.bytes).map(|_| ())).await,
        Persist::FailedAttempt { round, attempt, participants } => {
            blocking(shared, job_id, move |s, id| s.store.record_failed_attempt(id, round, attempt, &participants)).await?;
            shared.metrics.round_attempts_failed.inc();
            Ok(())
        }
        Persist::Round { attempt, mut record, model, optimizer_state } => {
            record.completed_at = now_rfc3339();
            let record = blocking(shared, job_id, move |s, id| {
                let cp = s.store.checkpoints();
                cp.put(&model.bytes)?;
                cp.put(&optimizer_state.bytes)?;
                s.store.complete_round(id, attempt, &record)?;
                Ok(record)
            })
            .await?;
            shared.metrics.rounds_completed.inc();
            shared.metrics.round_duration.observe(record.duration_secs);
            for p in &record.participants {
                shared.metrics.participants.get_or_create(&crate::telemetry::OutcomeLabels { status: p.status.as_str().into() }).inc();
            }
            tracing::info!(job = %job_id, round = record.round, secs = record.duration_secs, metrics = ?record.metrics, "round completed");
            publish(shared, job_id, record.round, pb::job_event::Kind::RoundCompleted(crate::jobs::views::round_proto(&record)));
            Ok(())
        }
    }
}
