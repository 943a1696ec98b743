//! Jobs in this coordinator process: submission, the running set, events, and their API views.
//!
//! Each running job has one runner task ([`crate::round::runner`]), a cancellation token and
//! a broadcast channel of [`JobEvent`]s that `WatchJob` streams subscribe to. On start-up every
//! job the database says is unfinished is resumed from its last completed round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use confide_core::job::JobSpec;
use confide_core::model::ModelSpec;
use confide_datasets::DatasetSchema;
use confide_proto::v1::{self as pb, JobEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::store::{JobRecord, JobStatus, RoundRecord, StoreError};

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The job file is invalid.
    #[error(transparent)]
    Job(#[from] confide_core::job::JobError),
    /// The schema text is invalid.
    #[error("dataset schema: {0}")]
    Schema(String),
    /// The schema names another dataset than the job.
    #[error("the job trains on dataset `{job}` but the schema describes `{schema}`")]
    DatasetMismatch {
        /// Dataset in the job file.
        job: String,
        /// Dataset in the schema.
        schema: String,
    },
    /// The custom model's files are unusable, or files came with a built-in model.
    #[error("{0}")]
    Model(String),
    /// The state could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    events: broadcast::Sender<JobEvent>,
}

/// The jobs running in this process.
#[derive(Debug, Default)]
pub struct Jobs {
    running: Mutex<HashMap<String, Running>>,
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

    /// Asks a running job to stop. False when it is not running here.
    pub fn cancel(&self, job_id: &str) -> bool {
        self.lock().get(job_id).map(|r| r.cancel.cancel()).is_some()
    }

    /// Stops every runner in this process without changing the jobs' stored status, so they
    /// resume when the coordinator starts again (shutdown).
    pub fn stop_all(&self) {
        for r in self.lock().values() {
            r.cancel.cancel();
        }
    }

    fn insert(&self, job_id: &str) -> Option<CancellationToken> {
        let mut running = self.lock();
        if running.contains_key(job_id) {
            return None;
        }
        let cancel = CancellationToken::new();
        let (events, _) = broadcast::channel(1024);
        running.insert(job_id.to_string(), Running { cancel: cancel.clone(), events });
        Some(cancel)
    }

    pub(crate) fn remove(&self, job_id: &str) {
        self.lock().remove(job_id);
    }
}

/// The files a job's model comes with (a TorchScript module and its initial parameters).
#[derive(Debug, Default, Clone, Copy)]
pub struct ModelFiles<'a> {
    /// The scripted module (`torch.jit.save` output).
    pub module: &'a [u8],
    /// Initial parameters (safetensors).
    pub parameters: &'a [u8],
}

/// Validates and stores a job, then starts it. Returns the job id.
///
/// A `torchscript` model's module and initial parameters are validated and stored
/// content-addressed; the stored spec names them by hash and records their layout.
pub fn submit(shared: &Arc<Shared>, spec_toml: &str, schema_toml: &str, files: ModelFiles<'_>) -> Result<String, SubmitError> {
    let mut spec = JobSpec::from_toml(spec_toml)?;
    let schema = DatasetSchema::parse(schema_toml, "submitted schema").map_err(|e| SubmitError::Schema(e.to_string()))?;
    if schema.name != spec.dataset {
        return Err(SubmitError::DatasetMismatch { job: spec.dataset.clone(), schema: schema.name.clone() });
    }
    match &mut spec.model {
        ModelSpec::TorchScript(ts) => {
            let params = ts.resolve(files.module, files.parameters).map_err(|e| SubmitError::Model(e.to_string()))?;
            if let Some(dim) = ts.input_dim
                && dim != schema.input_dim()
            {
                return Err(SubmitError::Model(format!(
                    "torchscript model: the module was built for {dim} inputs, the schema encodes {} (`confide schema width` prints it)",
                    schema.input_dim()
                )));
            }
            let checkpoints = shared.store.checkpoints();
            checkpoints.put(files.module)?;
            ts.parameters_sha256 = Some(checkpoints.put(&params.to_safetensors(None))?);
        }
        _ if !files.module.is_empty() || !files.parameters.is_empty() => {
            return Err(SubmitError::Model(format!(
                "model files were sent with a `{}` model; only `kind = \"torchscript\"` takes a module and parameters",
                spec.model.kind_name()
            )));
        }
        _ => {}
    }
    let id = uuid::Uuid::new_v4().to_string();
    let spec_json = serde_json::to_string(&spec).map_err(|e| SubmitError::Schema(e.to_string()))?;
    shared.store.insert_job(&id, &spec.name, &spec_json, schema_toml)?;
    if spec.insecure_plain_aggregation {
        tracing::warn!(job = %id, "job uses INSECURE plain aggregation: the coordinator sees every institution's update (debugging only)");
    }
    start(shared, &id);
    Ok(id)
}

/// Starts the runner of a stored job (no-op when it already runs).
pub fn start(shared: &Arc<Shared>, job_id: &str) {
    let Some(cancel) = shared.jobs.insert(job_id) else { return };
    let shared = Arc::clone(shared);
    let job_id = job_id.to_string();
    tokio::spawn(async move {
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

/// The API view of a round.
pub fn round_proto(r: &RoundRecord) -> pb::RoundSummary {
    pb::RoundSummary {
        round: r.round,
        status: "completed".into(),
        participants: r
            .participants
            .iter()
            .map(|p| pb::ParticipantOutcome { worker_id: p.worker_id.clone(), status: p.status.clone(), reason: p.reason.clone() })
            .collect(),
        metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        duration_secs: r.duration_secs,
        model_hash: r.model_hash.clone(),
        completed_at: r.completed_at.clone(),
    }
}

/// The API view of a job, with its rounds.
pub fn job_proto(shared: &Shared, job: &JobRecord) -> Result<pb::Job, StoreError> {
    let rounds = shared.store.rounds(&job.id)?;
    let rounds_total = serde_json::from_str::<JobSpec>(&job.spec_json).map(|s| s.training.rounds).unwrap_or(0);
    let mut error = job.error.clone().unwrap_or_default();
    if error.is_empty() && !job.status.is_final() {
        // Surface why the current round keeps failing (e.g. a worker's data error).
        if let Some((round, attempt, p)) = shared
            .store
            .failed_attempts(&job.id)?
            .into_iter()
            .rev()
            .find(|(r, _, p)| *r > job.rounds_completed && p.status != "contributed")
        {
            error = format!("round {round} attempt {attempt}: {} {}: {}", p.worker_id, p.status, p.reason);
        }
    }
    Ok(pb::Job {
        id: job.id.clone(),
        name: job.name.clone(),
        status: job.status.as_str().into(),
        spec_json: job.spec_json.clone(),
        rounds_completed: job.rounds_completed,
        rounds_total,
        created_at: job.created_at.clone(),
        updated_at: job.updated_at.clone(),
        error,
        rounds: rounds.iter().map(round_proto).collect(),
        model_hash: job.model_hash.clone().unwrap_or_default(),
        stop_reason: job.stop_reason.clone().unwrap_or_default(),
        schema_toml: job.schema_toml.clone(),
        preprocessing_json: job.preprocessing_json.clone().unwrap_or_default(),
        export_dir: job.export_dir.clone().unwrap_or_default(),
        export_error: job.export_error.clone().unwrap_or_default(),
    })
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
    use std::collections::HashMap;

    use confide_core::model::{INPUT_DIM_KEY, ModelParams, ParamLayout, TensorSpec};

    use super::*;

    const MODULE: &[u8] = b"PK\x03\x04 stands in for a torch.jit.save archive (the coordinator never runs it)";

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        Arc::new(Shared {
            store: crate::store::Store::open(dir).expect("store"),
            hub: crate::hub::Hub::default(),
            jobs: Jobs::default(),
            config: crate::config::CoordinatorConfig::default(),
            metrics: Arc::new(crate::telemetry::Metrics::default()),
        })
    }

    fn telco_schema() -> (String, usize) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/schemas/telco_churn.toml");
        let text = std::fs::read_to_string(path).expect("schema");
        let width = DatasetSchema::parse(&text, "telco").expect("parses").input_dim();
        (text, width)
    }

    fn job(model: &str) -> String {
        format!("name = \"j\"\ndataset = \"telco_churn\"\n[model]\n{model}\n[training]\nrounds = 1\nlearning_rate = 0.1\n")
    }

    const TORCHSCRIPT: &str = "kind = \"torchscript\"\nmodule = \"model.pt\"\nparameters = \"init.safetensors\"";

    /// Initial parameters of a linear module built for `width` inputs.
    fn parameters(width: usize) -> ModelParams {
        let layout = ParamLayout {
            tensors: vec![
                TensorSpec { name: "fc.weight".into(), shape: vec![1, width] },
                TensorSpec { name: "fc.bias".into(), shape: vec![1] },
            ],
        };
        ModelParams::init(layout, 3)
    }

    #[tokio::test]
    async fn a_torchscript_job_stores_its_module_and_initial_values_by_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, width) = telco_schema();
        let params = parameters(width);
        let bytes = params.to_safetensors(Some(HashMap::from([(INPUT_DIM_KEY.to_string(), width.to_string())])));
        let files = ModelFiles { module: MODULE, parameters: &bytes };
        let id = submit(&shared, &job(TORCHSCRIPT), &schema, files).expect("accepted");
        shared.jobs.stop_all();

        let stored = shared.store.job(&id).expect("read").expect("stored");
        let spec: JobSpec = serde_json::from_str(&stored.spec_json).expect("spec");
        let ModelSpec::TorchScript(ts) = spec.model else { panic!("stored as {:?}", spec.model) };
        assert_eq!(ts.module_sha256.as_deref(), Some(confide_core::sha256_hex(MODULE).as_str()));
        assert_eq!((ts.layout, ts.input_dim), (params.layout.clone(), Some(width)));
        let checkpoints = shared.store.checkpoints();
        assert_eq!(checkpoints.get(&confide_core::sha256_hex(MODULE)).expect("module stored"), MODULE);
        let initial = checkpoints.get(ts.parameters_sha256.as_deref().expect("parameters hash")).expect("stored");
        assert_eq!(ModelParams::from_safetensors(&initial, &params.layout).expect("reads"), params);
    }

    #[tokio::test]
    async fn model_files_that_do_not_fit_the_job_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, width) = telco_schema();
        let refuse = |model: &str, files: ModelFiles<'_>| submit(&shared, &job(model), &schema, files).expect_err("refused").to_string();

        let narrow = parameters(width - 1)
            .to_safetensors(Some(HashMap::from([(INPUT_DIM_KEY.to_string(), (width - 1).to_string())])));
        let err = refuse(TORCHSCRIPT, ModelFiles { module: MODULE, parameters: &narrow });
        assert!(err.contains(&format!("built for {} inputs, the schema encodes {width}", width - 1)), "{err}");
        let err = refuse(TORCHSCRIPT, ModelFiles::default());
        assert!(err.contains("empty"), "{err}");
        let good = parameters(width).to_safetensors(None);
        let err = refuse("kind = \"mlp\"\nhidden = [4]", ModelFiles { module: MODULE, parameters: &good });
        assert!(err.contains("only `kind = \"torchscript\"`"), "{err}");
        assert!(shared.store.jobs().expect("jobs").is_empty(), "nothing refused was stored");
    }
}
