//! The worker daemon: dial out to the coordinator, register, take tasks from the stream it
//! opened, compute contributions from local data and send them back — reconnecting with
//! exponential backoff whenever the coordinator is unreachable or restarts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_core::job::LocalTraining;
use confide_core::model::ModelSpec;
use confide_datasets::Preprocessing;
use confide_proto::v1::{
    self as pb, Capabilities, Contribution, DatasetOffer, RegisterRequest, SubscribeRequest, TaskFailure,
    contribution::Body, federation_client::FederationClient, task::Kind,
};
use tch::Device;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::config::{DeviceChoice, WorkerConfig};
use crate::secure::OutOfRange;
use crate::tasks::{self, Failure, LocalDataset, ModelInput};
use crate::transport::{self, TaskAddress};

/// Largest model a worker downloads.
const MAX_MODEL_BYTES: u64 = 4 << 30;
/// Largest TorchScript module a worker downloads.
const MAX_MODULE_BYTES: u64 = confide_core::model::MAX_MODULE_BYTES as u64;
/// Blobs kept in memory (the current global, the one being evaluated, a custom module).
const MODEL_CACHE: usize = 5;

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A dataset's schema could not be loaded.
    #[error("dataset `{name}`: {failure}")]
    Dataset {
        /// Dataset name.
        name: String,
        /// Why.
        failure: Failure,
    },
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The TLS files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] confide_tls::TlsError),
    /// The bank's policy state could not be loaded.
    #[error("policy: {0}")]
    Policy(Failure),
    /// CUDA was required but is not available.
    #[error("compute.device = \"cuda\" but libtorch sees no CUDA device")]
    NoCuda,
}

/// A running worker's state, shared by its task handlers.
pub struct Worker {
    config: WorkerConfig,
    datasets: HashMap<String, Arc<LocalDataset>>,
    identity: ed25519_dalek::SigningKey,
    device: Device,
    models: Mutex<Vec<(String, Arc<Vec<u8>>)>>,
    fault: Option<crate::fault::Fault>,
    policy: crate::policy::Policy,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("institution", &self.config.institution_id).field("device", &self.device).finish()
    }
}

impl Worker {
    /// Loads schemas and the identity key, and picks the device.
    pub fn new(config: WorkerConfig) -> Result<Arc<Self>, StartError> {
        let mut datasets = HashMap::new();
        for d in &config.datasets {
            let ds = LocalDataset::open(d.clone()).map_err(|failure| StartError::Dataset { name: d.name.clone(), failure })?;
            datasets.insert(d.name.clone(), Arc::new(ds));
        }
        // With TLS the certificate's key is the identity (bound by the federation CA); the
        // generated key file is for development without TLS.
        let identity = match &config.tls {
            Some(tls) => tls.signing_key()?,
            None => crate::identity::load_or_create(&config.data_dir)?,
        };
        if let Some(t) = config.compute.threads {
            crate::ml::set_cpu_threads(t);
        }
        let device = match config.compute.device {
            DeviceChoice::Auto => crate::ml::default_device(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            DeviceChoice::Cuda => return Err(StartError::NoCuda),
        };
        let policy = crate::policy::Policy::load(config.policy.clone(), &config.data_dir).map_err(StartError::Policy)?;
        let fault = crate::fault::Fault::from_env();
        Ok(Arc::new(Self { config, datasets, identity, device, models: Mutex::new(Vec::new()), fault, policy }))
    }

    /// This institution's id.
    pub fn id(&self) -> &str {
        &self.config.institution_id
    }

    fn register_request(&self) -> RegisterRequest {
        let cuda_devices = tch::Cuda::device_count().max(0) as u32;
        RegisterRequest {
            institution_id: self.config.institution_id.clone(),
            datasets: self
                .datasets
                .values()
                .map(|d| DatasetOffer { name: d.config.name.clone(), schema_fingerprint: d.fingerprint.clone() })
                .collect(),
            capabilities: Some(Capabilities {
                cuda: matches!(self.device, Device::Cuda(_)),
                cuda_devices,
                worker_version: env!("CARGO_PKG_VERSION").into(),
            }),
            signing_public_key: self.identity.verifying_key().to_bytes().to_vec(),
            min_participants: self.config.policy.min_participants,
        }
    }
}

/// Runs the worker until `shutdown` completes, reconnecting with backoff (0.5 s doubling to
/// 30 s; back to 0.5 s once a connection got as far as registering).
pub async fn run(worker: Arc<Worker>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut registered = false;
        tokio::select! {
            _ = &mut shutdown => return,
            r = session(&worker, &mut registered) => match r {
                Ok(()) => tracing::warn!(worker = %worker.id(), "task stream closed by the coordinator; reconnecting"),
                Err(e) => tracing::warn!(worker = %worker.id(), error = %e, retry_in = ?backoff, "coordinator unreachable"),
            },
        }
        if registered {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Handles of the tasks in progress: relay channel and cancellation.
type Running = HashMap<String, (mpsc::Sender<Vec<u8>>, CancellationToken)>;

async fn session(worker: &Arc<Worker>, registered: &mut bool) -> Result<(), tonic::Status> {
    let mut endpoint =
        Endpoint::from_shared(worker.config.coordinator.clone()).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    if let Some(files) = &worker.config.tls {
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        let tls = confide_tls::client_config(files, &host).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        endpoint = endpoint.tls_config(tls).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting to {}: {e}", worker.config.coordinator)))?;
    let mut client = FederationClient::new(channel).max_decoding_message_size(8 << 20);
    let reply = client.register(worker.register_request()).await?.into_inner();
    tracing::info!(worker = %reply.worker_id, protocol = reply.protocol_version, "registered with the coordinator");
    *registered = true;
    let mut tasks = client.subscribe(SubscribeRequest { worker_id: reply.worker_id.clone() }).await?.into_inner();
    let mut running: Running = HashMap::new();
    let session_cancel = CancellationToken::new();
    let _cancel_on_exit = session_cancel.clone().drop_guard();
    while let Some(task) = tasks.message().await? {
        running.retain(|_, (tx, _)| !tx.is_closed());
        let pb::Task { task_id, job_id, round, kind } = task;
        match kind {
            Some(Kind::Secagg(relay)) => match running.get(&task_id) {
                Some((tx, _)) => {
                    let _ = tx.send(relay.message).await;
                }
                None => tracing::debug!(task = %task_id, "relay for a task not in progress"),
            },
            Some(Kind::Cancel(c)) => {
                if let Some((_, cancel)) = running.remove(&task_id) {
                    tracing::info!(task = %task_id, reason = %c.reason, "task cancelled by the coordinator");
                    cancel.cancel();
                }
            }
            Some(kind) => {
                let (tx, rx) = mpsc::channel(64);
                let cancel = session_cancel.child_token();
                running.insert(task_id.clone(), (tx, cancel.clone()));
                let addr = TaskAddress { worker_id: reply.worker_id.clone(), task_id, job_id, round };
                let worker = worker.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = handle_task(worker, client, addr, kind, rx) => {}
                    }
                });
            }
            None => tracing::warn!(task = %task_id, "task without a kind ignored"),
        }
    }
    Ok(())
}

/// Does one task end to end: compute the vector, aggregate it (or report the failure).
async fn handle_task(
    worker: Arc<Worker>,
    mut client: FederationClient<Channel>,
    addr: TaskAddress,
    kind: Kind,
    relays: mpsc::Receiver<Vec<u8>>,
) {
    let (setup, out_of_range, task) = match &kind {
        Kind::Stats(t) => (t.aggregation.clone(), OutOfRange::Fail, "stats"),
        Kind::Train(t) => (t.aggregation.clone(), OutOfRange::Clip, "train"),
        Kind::Evaluate(t) => (t.aggregation.clone(), OutOfRange::Fail, "evaluate"),
        Kind::Secagg(_) | Kind::Cancel(_) => (None, OutOfRange::Fail, "none"),
    };
    let mut transfer = client.clone();
    let admitted = worker.admit(&addr, &kind);
    let computation = compute(&worker, &mut transfer, &addr, kind);
    let result = match setup {
        _ if admitted.is_err() => admitted,
        None => Err(Failure::new("protocol", "task carries no aggregation setup")),
        Some(setup) if setup.insecure_plain => {
            tracing::warn!(job = %addr.job_id, round = addr.round, "INSECURE plain aggregation: this contribution is visible to the coordinator");
            match computation.await {
                Err(f) => Err(f),
                Ok(vector) if vector.len() as u64 != setup.vector_len => Err(Failure::new(
                    "protocol",
                    format!("computed {} values, the task expects {}", vector.len(), setup.vector_len),
                )),
                Ok(vector) => {
                    let c = Contribution { body: Some(Body::Plain(pb::PlainVector { values: vector })) };
                    transport::submit(&mut client, &addr, &c).await.map_err(|e| Failure::new("protocol", e))
                }
            }
        }
        Some(setup) => crate::secure::contribute(worker.contributor(), &mut client, &addr, &setup, computation, out_of_range, task, relays).await,
    };
    match result {
        Ok(()) => tracing::info!(job = %addr.job_id, round = addr.round, task = %addr.task_id, "contribution accepted"),
        Err(failure) => {
            tracing::error!(job = %addr.job_id, round = addr.round, %failure, "task failed; reporting to the coordinator");
            let c = Contribution {
                body: Some(Body::Failure(TaskFailure { kind: failure.kind.into(), reason: failure.reason.clone() })),
            };
            if let Err(e) = transport::submit(&mut client, &addr, &c).await {
                tracing::warn!(error = %e, "could not report the failure");
            }
        }
    }
}

/// The task's contribution vector, computed from local data.
async fn compute(
    worker: &Arc<Worker>,
    client: &mut FederationClient<Channel>,
    addr: &TaskAddress,
    kind: Kind,
) -> Result<Vec<f64>, Failure> {
    match kind {
        Kind::Stats(t) => {
            let ds = worker.dataset(t.dataset.as_ref())?;
            blocking(move || ds.stats()).await
        }
        Kind::Train(t) => {
            let ds = worker.dataset(t.dataset.as_ref())?;
            let fetched = worker.model(client, addr, t.model.as_ref()).await?;
            let prep = parse_prep(&t.preprocessing_json)?;
            let local: LocalTraining = serde_json::from_str(&t.train_config_json)
                .map_err(|e| Failure::new("protocol", format!("training config: {e}")))?;
            let device = worker.device;
            let prep_key = t.preprocessing_json;
            blocking(move || {
                let model = fetched.input(&prep, &prep_key);
                tasks::train_contribution(&ds, &model, &local, device)
            })
            .await
        }
        Kind::Evaluate(t) => {
            let ds = worker.dataset(t.dataset.as_ref())?;
            let fetched = worker.model(client, addr, t.model.as_ref()).await?;
            let prep = parse_prep(&t.preprocessing_json)?;
            let buckets = t.score_buckets as usize;
            if !(2..=1_000_000).contains(&buckets) {
                return Err(Failure::new("protocol", format!("score_buckets {buckets} out of range")));
            }
            let device = worker.device;
            let prep_key = t.preprocessing_json;
            blocking(move || {
                let model = fetched.input(&prep, &prep_key);
                tasks::eval_contribution(&ds, &model, buckets, device)
            })
            .await
        }
        Kind::Secagg(_) | Kind::Cancel(_) => Err(Failure::new("protocol", "not a task")),
    }
}

/// A task's model as downloaded: spec, checkpoint and, for `torchscript`, the module.
struct FetchedModel {
    spec: ModelSpec,
    checkpoint: Arc<Vec<u8>>,
    module: Option<Arc<Vec<u8>>>,
}

impl FetchedModel {
    fn input<'a>(&'a self, prep: &'a Preprocessing, prep_key: &'a str) -> ModelInput<'a> {
        ModelInput {
            spec: &self.spec,
            checkpoint: &self.checkpoint,
            module: self.module.as_deref().map(Vec::as_slice),
            prep,
            prep_key,
        }
    }
}

fn parse_prep(json: &str) -> Result<Preprocessing, Failure> {
    serde_json::from_str(json).map_err(|e| Failure::new("protocol", format!("preprocessing: {e}")))
}

/// Runs CPU/GPU-bound work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Failure> + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(Failure::new("internal", format!("task panicked: {e}"))))
}

impl Worker {
    /// Applies the bank's policy to a task before anything is computed or sent for it.
    /// Training and evaluation run the job's model on local data, so both check its kind (and
    /// a custom module's hash) against the policy.
    fn admit(&self, addr: &TaskAddress, kind: &Kind) -> Result<(), Failure> {
        let spec = |model: Option<&pb::ModelRef>, task: &str| -> Result<ModelSpec, Failure> {
            model
                .and_then(|m| serde_json::from_str(&m.spec_json).ok())
                .ok_or_else(|| Failure::new("protocol", format!("{task} task without a readable model spec")))
        };
        match kind {
            Kind::Train(t) => self.policy.admit_training(&addr.job_id, addr.round, &spec(t.model.as_ref(), "training")?),
            Kind::Evaluate(t) => {
                self.policy.admit_model(&spec(t.model.as_ref(), "evaluation")?)?;
                self.policy.admit_job(&addr.job_id)
            }
            _ => self.policy.admit_job(&addr.job_id),
        }
    }

    /// The local dataset a task names, if offered with the same schema.
    fn dataset(&self, r: Option<&pb::DatasetRef>) -> Result<Arc<LocalDataset>, Failure> {
        let r = r.ok_or_else(|| Failure::new("protocol", "task names no dataset"))?;
        let ds = self
            .datasets
            .get(&r.name)
            .ok_or_else(|| Failure::new("policy", format!("dataset `{}` is not offered by this institution", r.name)))?;
        if ds.fingerprint != r.schema_fingerprint {
            return Err(Failure::new(
                "data",
                format!("dataset `{}`: the job's schema differs from this institution's ({})", r.name, ds.config.schema.display()),
            ));
        }
        Ok(ds.clone())
    }

    /// The task's model spec, checkpoint bytes and, for a `torchscript` model, the module's
    /// bytes; each downloaded once per hash and verified against it.
    async fn model(
        &self,
        client: &mut FederationClient<Channel>,
        addr: &TaskAddress,
        r: Option<&pb::ModelRef>,
    ) -> Result<FetchedModel, Failure> {
        let r = r.ok_or_else(|| Failure::new("protocol", "task names no model"))?;
        let spec: ModelSpec = serde_json::from_str(&r.spec_json).map_err(|e| Failure::new("protocol", format!("model spec: {e}")))?;
        let checkpoint = self.blob(client, addr, &r.hash, r.size_bytes.min(MAX_MODEL_BYTES)).await?;
        let module = match &spec {
            ModelSpec::TorchScript(ts) => {
                let hash = ts
                    .module_sha256
                    .as_deref()
                    .ok_or_else(|| Failure::new("protocol", "torchscript model without a module hash"))?;
                Some(self.blob(client, addr, hash, MAX_MODULE_BYTES).await?)
            }
            _ => None,
        };
        Ok(FetchedModel { spec, checkpoint, module })
    }

    /// A content-addressed blob from the coordinator, from the cache or downloaded and verified.
    async fn blob(
        &self,
        client: &mut FederationClient<Channel>,
        addr: &TaskAddress,
        hash: &str,
        limit: u64,
    ) -> Result<Arc<Vec<u8>>, Failure> {
        if let Some(b) = lock(&self.models).iter().find(|(h, _)| h == hash).map(|(_, b)| b.clone()) {
            return Ok(b);
        }
        let b = Arc::new(
            transport::download_model(client, &addr.worker_id, hash, limit).await.map_err(|e| Failure::new("protocol", e))?,
        );
        let mut models = lock(&self.models);
        models.push((hash.to_string(), b.clone()));
        if models.len() > MODEL_CACHE {
            models.remove(0);
        }
        Ok(b)
    }

    /// This institution as a secure-aggregation contributor.
    pub fn contributor(&self) -> crate::secure::Contributor<'_> {
        crate::secure::Contributor {
            identity: &self.identity,
            min_participants: self.config.policy.min_participants,
            fault: self.fault.as_ref(),
            federation_ca: self.config.tls.as_ref().map(|t| t.ca.as_path()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
