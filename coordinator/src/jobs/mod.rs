//! The registry of jobs running in this coordinator process: one runner task each
//! ([`crate::round::runner`]), with a cancellation token and a broadcast channel of
//! [`JobEvent`]s that `WatchJob` streams subscribe to. On start-up every job the database says
//! is unfinished is resumed from its last committed round; on shutdown the runners are stopped
//! and waited for ([`Jobs::drain`]), so no round is half-written when the process exits.
//!
//! Submission checks live in [`submit`] (sizes in [`admission`]), the API views of stored jobs
//! in [`views`].
//!
//! A job whose resumes keep crashing the coordinator (killed for memory, say) is quarantined
//! instead of resumed: see [`QUARANTINE_AFTER_CRASHED_RESUMES`].

pub mod admission;
pub mod submit;
pub mod views;

pub use submit::{Earlier, ModelFiles, SubmitError, Submitted, submit};

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

/// Consecutive resumes of a job that ended with the coordinator stopped uncleanly (and no
/// round committed) before the job is quarantined as failed instead of resumed again: the
/// second. One crash during a resume may have had another cause; a second in a row makes the
/// job the likely cause (a process killed for memory), and resuming it again would take the
/// coordinator and every other job down with it on each start.
///
/// A resume counts from the moment the coordinator starts the job again, so a coordinator
/// killed twice while such a job waits for its banks also quarantines it; a clean shutdown
/// (SIGINT) or a committed round clears the count. When several jobs reach the count at one
/// start (they were resumed together), only the one needing the most memory is quarantined;
/// the others are resumed once more, and a further crash quarantines the next.
///
/// Only a job large enough to plausibly exhaust memory is blamed: one whose estimated
/// coordinator memory is at least [`QUARANTINE_MIN_SHARE`] of `max_job_memory_bytes`. A small
/// job's crashes have another cause (a host restarting the coordinator, an operator's kill),
/// and it is resumed however often that happens, as a durable job must be.
pub const QUARANTINE_AFTER_CRASHED_RESUMES: u32 = 2;

/// The share of `max_job_memory_bytes` (1/8) a job's estimate must reach for its crashed
/// resumes to quarantine it.
pub const QUARANTINE_MIN_SHARE: (u64, u64) = (1, 8);

/// Why a job was quarantined after `crashed` resumes.
pub fn quarantine_reason(crashed: u32) -> String {
    format!("quarantined: the coordinator stopped while resuming this job {crashed} times (possibly killed for memory); not resumed")
}

/// Resumes every unfinished job in the database, counting each resume first (see
/// [`QUARANTINE_AFTER_CRASHED_RESUMES`]). A job whose resumes crashed too often, or that is
/// larger than this coordinator's limits now admit, is marked failed with the reason instead.
pub fn resume_all(shared: &Arc<Shared>) -> Result<usize, StoreError> {
    let unfinished: Vec<JobRecord> = shared.store.jobs()?.into_iter().filter(|j| !j.status.is_final()).collect();
    let memory = |j: &JobRecord| admission::stored_size(&shared.store, j).map_or(0, |(_, size)| size.memory_bytes);
    let (share, of) = QUARANTINE_MIN_SHARE;
    let plausible = |bytes: u64| bytes.saturating_mul(of) >= shared.config.max_job_memory_bytes.saturating_mul(share);
    let suspect = unfinished
        .iter()
        .filter(|j| j.resume_attempts >= QUARANTINE_AFTER_CRASHED_RESUMES)
        .map(|j| (j, memory(j)))
        .filter(|(_, bytes)| plausible(*bytes))
        .max_by_key(|(_, bytes)| *bytes)
        .map(|(j, _)| j.id.clone());
    let mut n = 0;
    for job in unfinished {
        let refusal = if suspect.as_deref() == Some(job.id.as_str()) {
            Some(quarantine_reason(job.resume_attempts))
        } else {
            admission::check_stored(&shared.store, &shared.config, &job).err().map(|e| format!("not resumed: {e}"))
        };
        if let Some(reason) = refusal {
            tracing::error!(job = %job.id, %reason, "job not resumed");
            shared.store.set_job_status(&job.id, JobStatus::Failed, Some(&reason), None)?;
            continue;
        }
        let crashed = shared.store.begin_resume(&job.id)?;
        tracing::info!(job = %job.id, completed = job.rounds_completed, crashed_resumes = crashed, "resuming job");
        start(shared, &job.id);
        n += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(model: &str) -> String {
        format!("name = \"j\"\ndataset = \"telco_churn\"\n[model]\n{model}\n[training]\nrounds = 1\nlearning_rate = 0.1\n")
    }

    #[tokio::test]
    async fn of_jobs_whose_resumes_kept_crashing_the_largest_is_quarantined_and_the_others_resumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/schemas/telco_churn.toml"))
            .expect("schema");
        let shared = Arc::new(Shared {
            store: crate::store::Store::open(dir.path()).expect("store"),
            hub: crate::hub::Hub::default(),
            jobs: Jobs::default(),
            // "large" (MLP[512], about 1 MB) is over an eighth of this limit; "small" is not.
            config: crate::config::CoordinatorConfig { max_job_memory_bytes: 4 << 20, ..Default::default() },
            metrics: Arc::new(crate::telemetry::Metrics::default()),
            revocations: Default::default(),
        });
        for (id, model) in [("small", "kind = \"logistic_regression\""), ("large", "kind = \"mlp\"\nhidden = [512]"), ("fresh", "kind = \"logistic_regression\"")] {
            let spec = confide_core::job::JobSpec::from_toml(&job(model)).expect("spec");
            let spec_json = serde_json::to_string(&spec).expect("json");
            shared.store.insert_job(id, "j", &spec_json, &schema).expect("insert");
        }
        for id in ["small", "large", "small", "large"] {
            shared.store.begin_resume(id).expect("a resume that crashed");
        }
        assert_eq!(resume_all(&shared).expect("resume"), 2);
        shared.jobs.stop_all();
        // Once the large one is gone, the small one's crashes are still not blamed on it: it is
        // too small to have exhausted the coordinator's memory.
        shared.store.begin_resume("small").expect("another crash");
        assert_eq!(resume_all(&shared).expect("resume"), 2, "small and fresh resumed again");
        shared.jobs.stop_all();
        let status = |id: &str| shared.store.job(id).expect("query").expect("job");
        assert_eq!(status("large").status, JobStatus::Failed);
        assert_eq!(status("large").error.as_deref(), Some(quarantine_reason(2).as_str()));
        assert!(!status("small").status.is_final(), "small is not failed");
        assert_eq!(status("small").resume_attempts, 5, "resumed after every crash");
        assert_eq!(status("fresh").resume_attempts, 2);
    }
}
