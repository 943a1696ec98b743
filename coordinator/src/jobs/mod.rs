//! The registry of jobs running in this coordinator process: one runner task each
//! ([`crate::round::runner`]), with a cancellation token and a broadcast channel of
//! [`JobEvent`]s that `WatchJob` streams subscribe to. On start-up every job the database says
//! is unfinished is resumed from its last committed round; on shutdown the runners are stopped
//! and waited for ([`Jobs::drain`]), so no round is half-written when the process exits.
//!
//! Submission checks live in [`submit`], the API views of stored jobs in [`views`].

pub mod submit;
pub mod views;

pub use submit::{ModelFiles, SubmitError, submit};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use confide_proto::v1::JobEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::round::activity::Activity;
use crate::store::{JobRecord, JobStatus, StoreError};

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    events: broadcast::Sender<JobEvent>,
    /// What its machine says it is doing (None before it first says).
    activity: Option<Activity>,
}

/// The jobs running in this process.
#[derive(Debug, Default)]
pub struct Jobs {
    running: Mutex<HashMap<String, Running>>,
    /// Every runner task, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to a running job's events (None when it is not running here).
    pub fn subscribe(&self, job_id: &str) -> Option<broadcast::Receiver<JobEvent>> {
        self.lock().get(job_id).map(|r| r.events.subscribe())
    }

    /// Publishes an event to a job's watchers.
    pub fn publish(&self, event: JobEvent) {
        if let Some(r) = self.lock().get(&event.job_id) {
            let _ = r.events.send(event);
        }
    }

    /// Records what a running job is doing now.
    pub fn set_activity(&self, job_id: &str, activity: Option<&Activity>) {
        if let Some(r) = self.lock().get_mut(job_id) {
            r.activity = activity.cloned();
        }
    }

    /// What a job running here is doing (None when it does not run here).
    pub fn activity(&self, job_id: &str) -> Option<Activity> {
        self.lock().get(job_id).and_then(|r| r.activity.clone())
    }

    /// Asks a running job to stop. False when it is not running here.
    pub fn cancel(&self, job_id: &str) -> bool {
        self.lock().get(job_id).map(|r| r.cancel.cancel()).is_some()
    }

    /// Stops every runner in this process without changing the jobs' stored status, so they
    /// resume when the coordinator starts again (shutdown). See [`Self::drain`].
    pub fn stop_all(&self) {
        for r in self.lock().values() {
            r.cancel.cancel();
        }
    }

    /// Stops every runner and waits until all of them have returned (their last store write
    /// included); no runner starts afterwards.
    pub async fn drain(&self) {
        self.tasks.close();
        self.stop_all();
        self.tasks.wait().await;
    }

    fn insert(&self, job_id: &str) -> Option<CancellationToken> {
        let mut running = self.lock();
        if running.contains_key(job_id) {
            return None;
        }
        let cancel = CancellationToken::new();
        let (events, _) = broadcast::channel(1024);
        running.insert(job_id.to_string(), Running { cancel: cancel.clone(), events, activity: None });
        Some(cancel)
    }

    pub(crate) fn remove(&self, job_id: &str) {
        self.lock().remove(job_id);
    }
}

/// Starts the runner of a stored job (no-op when it already runs).
pub fn start(shared: &Arc<Shared>, job_id: &str) {
    let Some(cancel) = shared.jobs.insert(job_id) else { return };
    let shared = Arc::clone(shared);
    let job_id = job_id.to_string();
    shared.jobs.tasks.clone().spawn(async move {
        crate::round::runner::run(&shared, &job_id, cancel).await;
        shared.jobs.remove(&job_id);
    });
}

/// Resumes every unfinished job in the database.
pub fn resume_all(shared: &Arc<Shared>) -> Result<usize, StoreError> {
    let mut n = 0;
    for job in shared.store.jobs()? {
        if !job.status.is_final() {
            tracing::info!(job = %job.id, completed = job.rounds_completed, "resuming job");
            start(shared, &job.id);
            n += 1;
        }
    }
    Ok(n)
}

/// Marks a job cancelled (in the database, and its runner if it runs here).
pub fn cancel(shared: &Shared, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
    let Some(job) = shared.store.job(job_id)? else { return Ok(None) };
    if !job.status.is_final() {
        shared.store.set_job_status(job_id, JobStatus::Cancelled, None, Some("cancelled by the job's owner"))?;
        shared.jobs.cancel(job_id);
    }
    shared.store.job(job_id)
}

