//! # The task machine — one task's whole logic, without I/O
//!
//! [`TaskMachine`] owns everything a bank decides and does for one task of the coordinator's:
//! it decodes the wire [`pb::Task`] once into a typed [`Task`], applies the bank's admission
//! rules before any key or share leaves, drives the [`confide_secagg::Client`] (or the insecure
//! plain mode), and decides what is reported. It is sans-IO in the style of `quinn-proto` (and
//! of `confide_secagg`): no sockets, no clock, no OS randomness, no files, neither tokio nor
//! tonic. The caller passes the time in as a [`std::time::Instant`] and a fresh 32-byte random
//! seed, executes the [`Effect`]s the machine yields and feeds the results back.
//!
//! ## How to drive it
//!
//! 1. For every message on the task stream call [`receive`]`(profile, wire, in_progress,
//!    max_tasks, seed)`: it routes a relay or a cancellation to the running machine named by its
//!    task id, and otherwise creates a [`TaskMachine`] (over the cap, one that only reports
//!    "worker busy"). [`TaskMachine::from_wire`] does the same for one task.
//! 2. After creating a machine and after every `handle_*` call, drain
//!    [`TaskMachine::poll_effect`] and execute each [`Effect`]:
//!    - [`Effect::Admit`]: check the request against the bank's durable policy and the
//!      federation CA ([`crate::policy::Policy::admit_request`]) and answer
//!      [`TaskMachine::handle_admission`]. Nothing has left the bank before the answer.
//!    - [`Effect::Fetch`]: download the content-addressed blob (verified against its hash,
//!      refusing more than `max_bytes`) and answer [`TaskMachine::handle_fetched`].
//!    - [`Effect::Compute`]: run the local computation ([`crate::compute::Compute`]) off the
//!      async threads and answer [`TaskMachine::handle_computed`].
//!    - [`Effect::Submit`]: upload the contribution (a crash drill may act around a secagg
//!      message of the named [`MessageKind`]) and answer [`TaskMachine::handle_submitted`]`(result,
//!      now)`. The machine has at most one submission outstanding, so uploads keep their order.
//!    - [`Effect::Finished`]: the task is over; drop the machine (later results are ignored).
//! 3. Hand every relayed secure-aggregation message to [`TaskMachine::handle_relay`]`(bytes,
//!    now)` and a coordinator's cancellation to [`TaskMachine::handle_cancel`].
//! 4. Arm a timer for [`TaskMachine::poll_timeout`] and call [`TaskMachine::handle_timeout`]`(now)`
//!    when it fires (the secagg client's own deadline, and the [`LOCAL_FAILURE_GRACE`] below).
//!
//! Fetch and compute run concurrently with the key exchange: the keys are advertised as soon as
//! the task is admitted, and the vector is masked once it is ready.
//!
//! ## Rules
//!
//! - Malformed input (no kind, an unreadable model spec, preprocessing or training config, an
//!   impossible secure-aggregation setup) is a [`FailureKind::Protocol`] failure, never a panic.
//! - Admission, in order: the dataset is offered (policy) with the same schema fingerprint
//!   (data); score buckets within [`SCORE_BUCKETS`] (protocol) and the bank's
//!   [`Floors::max_score_buckets`] (policy); at least max(bank's, job's) `min_participants`
//!   institutions (policy); the bank's [`Floors`] on what the coordinator chose (policy): a
//!   threshold of at least [`min_threshold`] of the share holders, a sparse graph only from
//!   [`MIN_SPARSE_PARTICIPANTS`] on with at least `Graph::recommended_degree(n)` neighbours, a
//!   training range of at most [`Floors::max_update_clip`] and an exact range of at least
//!   [`Floors::min_exact_clip`]; then, through the driver, peer-certificate bindings and the
//!   durable policy (model kinds, rounds per job, jobs per day, evaluations per round).
//! - Values outside the session's fixed-point range are clipped for training updates (bounded-
//!   update FedAvg; the count is in [`TaskOutcome::Contributed`]) and refused (data) for
//!   statistics and evaluation, which must be exact.
//! - An institution-level DP job (`terms.dp` in institution mode) is refused (policy) from its
//!   first task when its dropout allowance is below the bank's [`Floors::min_dropout_allowance`];
//!   its training tasks also in plain mode, or when the session's grid and clip
//!   would let the noisy sum wrap ([`confide_core::discrete_noise::NoisePlan::check_ring`]);
//!   otherwise the computed `[Δ…, 1, 0]` becomes Δ clipped to C, rounded to the grid, plus this
//!   bank's discrete Gaussian share (drawn from the task's fresh seed), then 1 and 0 — exact grid
//!   values, so the encoder rounds nothing. The bank helps unmask only a sum over at least
//!   `n − dropout_allowance` inputs (the noise shares its bound counts).
//! - When the protocol ends early while the local computation still runs, the computation's own
//!   failure (a data error naming file and line, say) is the more useful report: the machine
//!   waits up to [`LOCAL_FAILURE_GRACE`] of the caller's time for it, then reports the protocol's
//!   reason.
//! - A failure is reported to the coordinator as a [`pb::TaskFailure`]; a cancellation is not
//!   answered.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_core::discrete_noise::NoisePlan;
use confide_core::job::{LocalTraining, PrivacyMode};
use confide_core::model::ModelSpec;
use confide_datasets::Preprocessing;
use confide_proto::v1::{self as pb, contribution::Body, task::Kind};
use confide_secagg::{Client, ClientEvent, ClientPolicy, Error as SecAggError, MessageKind, ServerMessage, SessionParams};
use ed25519_dalek::SigningKey;

pub use crate::failure::{Failure, FailureKind};
pub use confide_core::outcome::DatasetProblem;

/// Largest checkpoint a worker downloads.
pub const MAX_MODEL_BYTES: u64 = 4 << 30;
/// Largest TorchScript module a worker downloads.
pub const MAX_MODULE_BYTES: u64 = confide_core::model::MAX_MODULE_BYTES as u64;
/// How long a machine waits, after the protocol ended early, for the local computation's own
/// failure.
pub const LOCAL_FAILURE_GRACE: Duration = Duration::from_secs(2);
/// Score buckets an evaluation task may ask for.
pub const SCORE_BUCKETS: RangeInclusive<usize> = 2..=1_000_000;
/// Relays kept while the admission is pending (an honest coordinator sends none before the
/// bank's key advertisement).
const MAX_EARLY_RELAYS: usize = 64;

/// A dataset, by name and schema fingerprint (what a bank offers, what a task names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    /// Name jobs refer to.
    pub name: String,
    /// SHA-256 of the dataset schema.
    pub schema_fingerprint: String,
}

/// A dataset the bank configured but does not offer now, and why (see [`crate::catalog`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableDataset {
    /// Name jobs refer to.
    pub name: String,
    /// What is wrong with it (the details are in the bank's log only).
    pub problem: DatasetProblem,
}

/// Who the bank is and what it offers: everything a machine needs of its bank, as plain data
/// (no libtorch, no connection), so a test can build one for any scripted bank.
#[derive(Clone)]
pub struct BankProfile {
    /// The institution's id.
    pub institution_id: String,
    /// The long-term key its secure-aggregation advertisements are signed with.
    pub identity: SigningKey,
    /// The datasets it offers.
    pub datasets: Vec<DatasetRef>,
    /// The datasets it configured but does not offer now (a task naming one is refused as
    /// [`FailureKind::DatasetUnavailable`]).
    pub unavailable: Vec<UnavailableDataset>,
    /// Offered datasets whose training labels are all one class: their statistics and training
    /// tasks are refused as [`FailureKind::OneClassLabels`] — from the job's first task, so the
    /// bank is in none of the training-side sums rather than leaving them part-way (which the
    /// other banks' count protection would refuse) — while evaluation on the test split runs.
    pub one_class: Vec<String>,
    /// Its floor on institutions per round (the job's may be higher, never lower).
    pub min_participants: u32,
    /// The federation CA (with mutual TLS): every peer key must be bound by a certificate it
    /// signed. Checked by the driver when admitting ([`AdmissionRequest::federation_ca`]).
    pub federation_ca: Option<PathBuf>,
    /// The bank's own choice to send vectors in the clear when a task asks for plain
    /// aggregation (`--insecure-dev`, or `[policy] allow_plain_aggregation`); never the task's.
    pub allow_plain_aggregation: bool,
    /// Send failure details (file, line, values) to the coordinator, not just the kind and a
    /// reference (`[policy] share_error_details`, development federations only).
    pub share_error_details: bool,
    /// Its bounds on what the coordinator chooses for a session.
    pub floors: Floors,
}

/// A bank's bounds on the session parameters the coordinator chooses, checked before anything
/// leaves the bank ([`FailureKind::Policy`] when broken). From `[policy]` in the worker's
/// configuration ([`crate::config::PolicyConfig::floors`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floors {
    /// The threshold must be at least `⌈fraction·h⌉` of the `h` share holders, and never below
    /// [`min_threshold`]`(h)` whatever this says.
    pub min_threshold_fraction: f64,
    /// Most score buckets an evaluation may ask for.
    pub max_score_buckets: usize,
    /// Largest fixed-point clip of a training update.
    pub max_update_clip: f64,
    /// Smallest fixed-point clip of statistics and evaluation (values are refused, not
    /// clipped, outside it).
    pub min_exact_clip: f64,
    /// Smallest dropout allowance an institution-level DP job may assume (`[privacy]
    /// min_dropout_allowance`).
    pub min_dropout_allowance: u32,
}

impl Default for Floors {
    fn default() -> Self {
        crate::config::PolicyConfig::default().floors()
    }
}

/// The smallest threshold a bank accepts for `holders` share holders: `⌊2h/3⌋ + 1`. With any
/// majority `t > h/2` a coordinator colluding with one bank can show two groups of honest
/// banks different survivor sets in the unmasking stage and collect both masks of a victim
/// (at h = 5, t = 3: {colluder, a, b} reveal the self-mask, {colluder, c, d} the mask key); two
/// disjoint groups of honest holders plus the colluders need more than h when t exceeds 2h/3.
pub fn min_threshold(holders: usize) -> usize {
    (2 * holders / 3 + 1).min(holders)
}

/// The fewest participants a bank accepts a sparse (SecAgg+) graph for: below it the complete
/// graph is cheap, and small neighbourhoods are where a coordinator's choice of neighbours
/// would matter most.
pub const MIN_SPARSE_PARTICIPANTS: usize = confide_secagg::params::COMPLETE_GRAPH_LIMIT;

impl std::fmt::Debug for BankProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BankProfile")
            .field("institution_id", &self.institution_id)
            .field("datasets", &self.datasets)
            .field("unavailable", &self.unavailable)
            .field("one_class", &self.one_class)
            .field("min_participants", &self.min_participants)
            .field("federation_ca", &self.federation_ca)
            .finish_non_exhaustive()
    }
}

/// Which task, of which round of which job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskId {
    /// The coordinator's task id.
    pub task_id: String,
    /// Its job.
    pub job_id: String,
    /// Its round.
    pub round: u64,
}

/// A task, decoded once from the wire.
#[derive(Debug, Clone)]
pub struct Task {
    /// What to compute.
    pub kind: TaskKind,
    /// How the result is summed across institutions.
    pub aggregation: Aggregation,
    /// The whole job's terms (None from a coordinator that does not send them).
    pub terms: Option<JobTerms>,
}

/// What the whole job asks of the bank, checked at every task so the first one already refuses
/// a job the bank's policy cannot serve to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTerms {
    /// Training rounds the job runs at most.
    pub rounds: u64,
    /// The job's model.
    pub model: ModelSpec,
    /// Score buckets its evaluations ask for.
    pub score_buckets: usize,
    /// Its differential privacy (None: not DP), from which the bank computes its own spend.
    pub dp: Option<confide_core::spend::DpJob>,
}

/// What a task computes.
#[derive(Debug, Clone)]
pub enum TaskKind {
    /// The additive statistics of the training split.
    Stats {
        /// The dataset.
        dataset: DatasetRef,
        /// A tree model's job: the fine histograms of federated binning follow the statistics.
        fine_histograms: bool,
    },
    /// Local training from the global model: the weighted update.
    Train {
        /// The dataset.
        dataset: DatasetRef,
        /// The global model.
        model: ModelRef,
        /// The federation's preprocessing.
        prep: Prep,
        /// Local hyper-parameters.
        local: LocalTraining,
    },
    /// One level of a tree model's growing tree: the bank's gradient, hessian and row-count
    /// histograms for its open nodes (see [`crate::trees`]).
    Grow {
        /// The dataset.
        dataset: DatasetRef,
        /// The committed ensemble.
        model: ModelRef,
        /// The growing tree, parsed once.
        tree: Arc<confide_gbdt::GrowingTree>,
        /// Weight of positive rows in the loss.
        pos_weight: f64,
    },
    /// Evaluation of the model on the test split: additive metric sums.
    Evaluate {
        /// The dataset.
        dataset: DatasetRef,
        /// The model evaluated.
        model: ModelRef,
        /// The federation's preprocessing.
        prep: Prep,
        /// Score histogram buckets (within [`SCORE_BUCKETS`]).
        buckets: usize,
    },
}

impl TaskKind {
    /// `stats`, `train`, `grow` or `evaluate` (the crash drills' and the logs' name).
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Stats { .. } => "stats",
            TaskKind::Train { .. } => "train",
            TaskKind::Grow { .. } => "grow",
            TaskKind::Evaluate { .. } => "evaluate",
        }
    }

    /// The dataset the task reads.
    pub fn dataset(&self) -> &DatasetRef {
        match self {
            TaskKind::Stats { dataset, .. }
            | TaskKind::Train { dataset, .. }
            | TaskKind::Grow { dataset, .. }
            | TaskKind::Evaluate { dataset, .. } => dataset,
        }
    }

    /// The model the task runs, if any.
    pub fn model(&self) -> Option<&ModelRef> {
        match self {
            TaskKind::Stats { .. } => None,
            TaskKind::Train { model, .. } | TaskKind::Grow { model, .. } | TaskKind::Evaluate { model, .. } => Some(model),
        }
    }
}

/// A model as a task names it.
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// Content address (SHA-256 hex) of the safetensors checkpoint.
    pub hash: String,
    /// Announced checkpoint size (a download announcing more is refused).
    pub size_bytes: u64,
    /// The model family, parsed once.
    pub spec: ModelSpec,
    /// For a `torchscript` model: the content address of its scripted module.
    pub module_sha256: Option<String>,
}

/// The federation's preprocessing with a stable id.
#[derive(Debug, Clone)]
pub struct Prep {
    /// SHA-256 hex of the preprocessing JSON as sent: the key local caches of encoded splits use.
    pub id: String,
    /// The preprocessing, parsed once.
    pub preprocessing: Arc<Preprocessing>,
}

/// How a task's vector is summed.
#[derive(Debug, Clone)]
pub enum Aggregation {
    /// Debug only: the vector travels in the clear.
    Plain {
        /// The length the coordinator expects.
        vector_len: usize,
        /// Institutions the coordinator says take part.
        participants: usize,
    },
    /// Secure aggregation.
    Secure(Box<SecureSetup>),
}

impl Aggregation {
    /// The length of the contributed vector.
    pub fn vector_len(&self) -> usize {
        match self {
            Aggregation::Plain { vector_len, .. } => *vector_len,
            Aggregation::Secure(s) => s.params.vector_len,
        }
    }
}

/// A secure-aggregation session as a task sets it up.
#[derive(Debug, Clone)]
pub struct SecureSetup {
    /// The session's parameters (checked by `SessionParams::validate`).
    pub params: SessionParams,
    /// This bank's participant id.
    pub participant_id: confide_secagg::ParticipantId,
    /// The job's floor on institutions per round.
    pub min_participants: u32,
    /// The peers with their institution ids and certificates (for the CA check).
    pub peers: Vec<pb::SecAggPeer>,
}

impl Task {
    /// Decodes a task's wire kind and the job's terms (`round` is the task's round, which the
    /// session binds).
    pub fn decode(kind: Option<Kind>, round: u64, terms: Option<pb::JobTerms>) -> Result<Task, Failure> {
        let (kind, aggregation) = match kind {
            None => return Err(Failure::protocol("task has no kind")),
            Some(Kind::Secagg(_) | Kind::Cancel(_)) => return Err(Failure::protocol("not a task: a relay or a cancellation")),
            Some(Kind::Stats(t)) => (TaskKind::Stats { dataset: dataset(t.dataset)?, fine_histograms: t.fine_histograms }, t.aggregation),
            Some(Kind::TreeLevel(t)) => {
                let tree: confide_gbdt::GrowingTree =
                    serde_json::from_str(&t.tree_json).map_err(|e| Failure::protocol(format!("growing tree: {e}")))?;
                if !(t.pos_weight.is_finite() && t.pos_weight > 0.0) {
                    return Err(Failure::protocol("a tree level's positive-class weight must be a positive number"));
                }
                let model = model(t.model)?;
                if model.spec.gbdt().is_none() {
                    return Err(Failure::protocol(format!("a tree level for a `{}` model", model.spec.kind_name())));
                }
                (TaskKind::Grow { dataset: dataset(t.dataset)?, model, tree: Arc::new(tree), pos_weight: t.pos_weight }, t.aggregation)
            }
            Some(Kind::Train(t)) => {
                let local = serde_json::from_str(&t.train_config_json).map_err(|e| Failure::protocol(format!("training config: {e}")))?;
                let kind = TaskKind::Train { dataset: dataset(t.dataset)?, model: model(t.model)?, prep: prep(&t.preprocessing_json)?, local };
                (kind, t.aggregation)
            }
            Some(Kind::Evaluate(t)) => {
                let kind = TaskKind::Evaluate {
                    dataset: dataset(t.dataset)?,
                    model: model(t.model)?,
                    prep: prep(&t.preprocessing_json)?,
                    buckets: t.score_buckets as usize,
                };
                (kind, t.aggregation)
            }
        };
        let aggregation = aggregation.ok_or_else(|| Failure::protocol("task carries no aggregation setup"))?;
        let vector_len = usize::try_from(aggregation.vector_len).map_err(|_| Failure::protocol("vector length overflows"))?;
        let aggregation = if aggregation.insecure_plain {
            Aggregation::Plain { vector_len, participants: aggregation.participants as usize }
        } else {
            let secure = aggregation.secure.ok_or_else(|| Failure::protocol("secure aggregation setup missing"))?;
            let params = confide_proto::secagg::params_from(&secure, round, aggregation.vector_len).map_err(Failure::protocol)?;
            Aggregation::Secure(Box::new(SecureSetup {
                params,
                participant_id: secure.participant_id,
                min_participants: secure.min_participants,
                peers: secure.peers,
            }))
        };
        let terms = terms.map(job_terms).transpose()?;
        Ok(Task { kind, aggregation, terms })
    }
}

fn job_terms(t: pb::JobTerms) -> Result<JobTerms, Failure> {
    let model = serde_json::from_str(&t.model_spec_json).map_err(|e| Failure::protocol(format!("job terms: model spec: {e}")))?;
    let dp = if t.dp_json.is_empty() {
        None
    } else {
        let dp: confide_core::spend::DpJob =
            serde_json::from_str(&t.dp_json).map_err(|e| Failure::protocol(format!("job terms: differential privacy: {e}")))?;
        // A coordinator could send σ = 0 (or NaN) and call it DP: nothing is computed from terms
        // the bank cannot rely on.
        dp.validate().map_err(|e| Failure::protocol(format!("job terms: {e}")))?;
        Some(dp)
    };
    Ok(JobTerms { rounds: t.rounds, model, score_buckets: t.score_buckets as usize, dp })
}

fn dataset(r: Option<pb::DatasetRef>) -> Result<DatasetRef, Failure> {
    let r = r.ok_or_else(|| Failure::protocol("task names no dataset"))?;
    Ok(DatasetRef { name: r.name, schema_fingerprint: r.schema_fingerprint })
}

fn model(r: Option<pb::ModelRef>) -> Result<ModelRef, Failure> {
    let r = r.ok_or_else(|| Failure::protocol("task names no model"))?;
    let spec: ModelSpec = serde_json::from_str(&r.spec_json).map_err(|e| Failure::protocol(format!("model spec: {e}")))?;
    let module_sha256 = match &spec {
        ModelSpec::TorchScript(ts) => {
            Some(ts.module_sha256.clone().ok_or_else(|| Failure::protocol("torchscript model without a module hash"))?)
        }
        _ => None,
    };
    Ok(ModelRef { hash: r.hash, size_bytes: r.size_bytes, spec, module_sha256 })
}

fn prep(json: &str) -> Result<Prep, Failure> {
    let preprocessing: Preprocessing = serde_json::from_str(json).map_err(|e| Failure::protocol(format!("preprocessing: {e}")))?;
    Ok(Prep { id: confide_core::sha256_hex(json.as_bytes()), preprocessing: Arc::new(preprocessing) })
}

/// Something the driver must do for a machine.
#[derive(Debug)]
pub enum Effect {
    /// Check the durable policy and the peers' certificates; answer
    /// [`TaskMachine::handle_admission`].
    Admit(AdmissionRequest),
    /// Download a blob; answer [`TaskMachine::handle_fetched`].
    Fetch(BlobRequest),
    /// Run the local computation; answer [`TaskMachine::handle_computed`].
    Compute(ComputeRequest),
    /// Upload a contribution; answer [`TaskMachine::handle_submitted`].
    Submit(Submission),
    /// The set of institutions in the sum is final: check it against the bank's contribution
    /// ledger ([`crate::ledger::Ledger::admit`], which records it) and answer
    /// [`TaskMachine::handle_ledger`]. The unmasking shares — without which the sum stays
    /// hidden — leave only after the answer.
    Ledger(crate::ledger::SumCheck),
    /// The task is over.
    Finished(TaskOutcome),
}

/// What the driver checks before the bank takes part (see [`crate::policy::Policy::admit_request`]).
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    /// The job.
    pub job_id: String,
    /// The round.
    pub round: u64,
    /// The dataset the task reads (its privacy budget is charged).
    pub dataset: String,
    /// What the task does with the bank's data.
    pub purpose: Purpose,
    /// The whole job's terms, checked against the bank's policy at every task.
    pub terms: Option<JobTerms>,
    /// The round's peers (empty in plain mode), to be checked against `federation_ca`.
    pub peers: Vec<pb::SecAggPeer>,
    /// The federation CA from the bank's profile; None skips the certificate check.
    pub federation_ca: Option<PathBuf>,
}

/// What a task does with the bank's data, as its policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Purpose {
    /// Additive statistics.
    Statistics,
    /// Training `model` (counts against the rounds-per-job limit).
    Training {
        /// The model trained.
        model: ModelSpec,
    },
    /// Evaluating `model`.
    Evaluation {
        /// The model evaluated.
        model: ModelSpec,
    },
}

/// Which blob of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob {
    /// The model checkpoint (safetensors).
    Checkpoint,
    /// A `torchscript` model's scripted module.
    Module,
}

/// A content-addressed download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRequest {
    /// Which blob of the task.
    pub blob: Blob,
    /// Its SHA-256 hex; the driver verifies the bytes against it.
    pub hash: String,
    /// A download announcing more is refused.
    pub max_bytes: u64,
}

/// The local computation a task needs, with everything it reads.
#[derive(Clone)]
pub struct ComputeRequest {
    /// The job (recommendation models keep their user side per job).
    pub job_id: String,
    /// The round.
    pub round: u64,
    /// The length the vector must have.
    pub vector_len: usize,
    /// What to compute.
    pub kind: TaskKind,
    /// The checkpoint's bytes (training and evaluation), verified against its hash.
    pub checkpoint: Option<Arc<Vec<u8>>>,
    /// A `torchscript` model's module bytes, verified against its hash.
    pub module: Option<Arc<Vec<u8>>>,
    /// The job's differential privacy (None: not DP): statistics and evaluations get Gaussian
    /// noise, training runs DP-SGD (record mode) and contributes unweighted updates.
    pub dp: Option<confide_core::spend::DpJob>,
    /// Seed of the statistics' and evaluations' noise, secret to the bank.
    pub noise_seed: u64,
}

impl std::fmt::Debug for ComputeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeRequest")
            .field("job_id", &self.job_id)
            .field("round", &self.round)
            .field("vector_len", &self.vector_len)
            .field("kind", &self.kind)
            .field("checkpoint_bytes", &self.checkpoint.as_ref().map(|b| b.len()))
            .field("module_bytes", &self.module.as_ref().map(|b| b.len()))
            .field("dp", &self.dp)
            .finish_non_exhaustive()
    }
}

/// One upload to the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// What is uploaded.
    pub contribution: pb::Contribution,
    /// For a secure-aggregation message, its kind (crash drills act around masked inputs).
    pub secagg: Option<MessageKind>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// The contribution went out (and, with secure aggregation, the bank's part of the protocol
    /// is complete).
    Contributed {
        /// Values clipped to the secure-aggregation range (training updates only).
        clipped: usize,
        /// The vector travelled in the clear (insecure plain mode).
        plain: bool,
    },
    /// The task failed; `report` says whether the coordinator got the failure report.
    Failed {
        /// Why (the full reason, for the bank's own log).
        failure: Failure,
        /// The reference the report carried.
        reference: String,
        /// The upload of the failure report.
        report: Result<(), Failure>,
    },
    /// The coordinator cancelled the task; nothing more was sent.
    Cancelled {
        /// The coordinator's reason.
        reason: String,
    },
}

/// What a message on the task stream is for.
#[derive(Debug)]
pub enum Incoming {
    /// A new task: drive this machine.
    Start(Box<TaskMachine>),
    /// A relayed secure-aggregation message for a running task.
    Relay {
        /// The task.
        task_id: String,
        /// The message's bytes.
        message: Vec<u8>,
    },
    /// The coordinator abandoned a task.
    Cancel {
        /// The task.
        task_id: String,
        /// Why.
        reason: String,
    },
}

/// Routes one message of the task stream. A new task beyond `max_tasks` in progress is answered
/// at once with an [`FailureKind::Internal`] failure ("worker busy"), not queued.
pub fn receive(profile: &BankProfile, wire: pb::Task, in_progress: usize, max_tasks: usize, seed: [u8; 32]) -> Incoming {
    let pb::Task { task_id, job_id, round, kind, terms } = wire;
    match kind {
        Some(Kind::Secagg(relay)) => Incoming::Relay { task_id, message: relay.message },
        Some(Kind::Cancel(c)) => Incoming::Cancel { task_id, reason: c.reason },
        kind => {
            let id = TaskId { task_id, job_id, round };
            if in_progress >= max_tasks {
                let busy = Failure::internal(format!("worker busy: {in_progress} tasks in progress"));
                return Incoming::Start(Box::new(TaskMachine::refuse(id, busy)));
            }
            let task = Task::decode(kind, round, terms);
            Incoming::Start(Box::new(TaskMachine::new(profile, id, task, seed)))
        }
    }
}

/// Where the task stands.
#[derive(Debug)]
enum Phase {
    /// The admission request is out.
    Admitting,
    /// Admitted: protocol and local computation running.
    Working,
    /// The protocol ended early while the local computation runs: waiting until `until` for
    /// its own failure, else reporting `failure`.
    Grace { failure: Failure, until: Instant },
    /// The failure report is queued or being uploaded.
    Reporting(Failure),
    /// Over.
    Finished,
}

/// Where the local computation stands.
#[derive(Debug)]
enum Local {
    /// Not started (before admission, or never for an undecodable task).
    Idle,
    /// Downloading the model's blobs.
    Fetching { checkpoint: Option<Arc<Vec<u8>>>, module: Option<Arc<Vec<u8>>> },
    /// The compute request is out.
    Computing,
    /// The vector was handed on (or the computation failed).
    Done,
}

/// What the outstanding upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    Secagg,
    Plain,
    Report,
}

/// One task's logic. See the module docs for the call order.
pub struct TaskMachine {
    /// Which task.
    id: TaskId,
    /// The decoded task (None when it could not be decoded: the machine only reports).
    task: Option<Arc<Task>>,
    /// The bank's key (used once, when the secagg client is created).
    identity: Option<SigningKey>,
    /// The bank's floor on participants.
    bank_min_participants: u32,
    /// The federation CA, passed on in the admission request.
    federation_ca: Option<PathBuf>,
    /// The seed of the secagg client's randomness (taken once).
    seed: Option<[u8; 32]>,
    /// Bank-secret randomness mixed into local training's seed, so a rerun of the same
    /// training (same job, round, model and data) gives a different vector (drawn from the seed).
    training_salt: u64,
    /// Bank-secret seed of the Gaussian noise on DP statistics and evaluations (drawn from the
    /// seed: the coordinator cannot predict, and so subtract, it).
    record_noise_seed: u64,
    /// The reference a failure report carries (random, drawn from the seed), so the bank's
    /// operator finds the details in its own log.
    reference: String,
    /// Institution-level DP training: how this bank noises its update.
    noise: Option<NoisePlan>,
    /// The seed of the noise generator (from the task's fresh seed, domain-separated; never the
    /// coordinator's training seed, which the coordinator knows).
    noise_seed: [u8; 32],
    /// Send failure details to the coordinator (development federations).
    share_error_details: bool,
    /// Digest and counts of the vector this bank masked, once it did.
    contributed: Option<(String, Vec<String>)>,
    /// The survivors the coordinator listed for the consistency check.
    survivors: Option<Vec<confide_secagg::ParticipantId>>,
    /// The unmask request, held until the ledger admits the sum.
    held_unmask: Option<ServerMessage>,
    /// Where the task stands.
    phase: Phase,
    /// Where the local computation stands.
    local: Local,
    /// The secure-aggregation client, while the protocol runs.
    client: Option<Client>,
    /// The bank's part of the protocol is complete (its last messages may still be queued).
    protocol_done: bool,
    /// Effects for the driver.
    effects: VecDeque<Effect>,
    /// Uploads waiting for the outstanding one.
    uploads: VecDeque<(Upload, Submission)>,
    /// The outstanding upload.
    uploading: Option<Upload>,
    /// Relays received before the client existed, with their time of arrival.
    early_relays: VecDeque<(Vec<u8>, Instant)>,
    /// Values clipped to the secure-aggregation range.
    clipped: usize,
}

impl std::fmt::Debug for TaskMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMachine")
            .field("id", &self.id)
            .field("task", &self.task_name())
            .field("phase", &self.phase)
            .field("local", &self.local)
            .field("stage", &self.client.as_ref().map(Client::stage))
            .finish_non_exhaustive()
    }
}

impl TaskMachine {
    /// A machine for one wire task (a relay or cancellation given here is a protocol failure).
    pub fn from_wire(profile: &BankProfile, wire: pb::Task, seed: [u8; 32]) -> TaskMachine {
        let pb::Task { task_id, job_id, round, kind, terms } = wire;
        TaskMachine::new(profile, TaskId { task_id, job_id, round }, Task::decode(kind, round, terms), seed)
    }

    /// A machine for a decoded task (or one that could not be decoded, which it reports). It
    /// checks the rules it can decide alone, then asks for admission ([`Effect::Admit`]).
    pub fn new(profile: &BankProfile, id: TaskId, task: Result<Task, Failure>, seed: [u8; 32]) -> TaskMachine {
        let mut m = TaskMachine {
            identity: Some(profile.identity.clone()),
            bank_min_participants: profile.min_participants,
            federation_ca: profile.federation_ca.clone(),
            seed: Some(seed),
            training_salt: derived(&seed, "training").0,
            record_noise_seed: derived(&seed, "record-noise").0,
            reference: derived(&seed, "reference").1,
            noise_seed: derived_seed(&seed, "noise"),
            share_error_details: profile.share_error_details,
            ..TaskMachine::blank(id)
        };
        let task = match task {
            Ok(t) => Arc::new(t),
            Err(f) => {
                m.report(f);
                return m;
            }
        };
        m.task = Some(task.clone());
        if let Err(f) = bank_rules(profile, &task) {
            m.report(f);
            return m;
        }
        match noise_plan(&profile.floors, &task) {
            Ok(plan) => m.noise = plan,
            Err(f) => {
                m.report(f);
                return m;
            }
        }
        let purpose = match &task.kind {
            TaskKind::Stats { .. } => Purpose::Statistics,
            TaskKind::Train { model, .. } | TaskKind::Grow { model, .. } => Purpose::Training { model: model.spec.clone() },
            TaskKind::Evaluate { model, .. } => Purpose::Evaluation { model: model.spec.clone() },
        };
        let peers = match &task.aggregation {
            Aggregation::Plain { .. } => Vec::new(),
            Aggregation::Secure(s) => s.peers.clone(),
        };
        m.effects.push_back(Effect::Admit(AdmissionRequest {
            job_id: m.id.job_id.clone(),
            round: m.id.round,
            dataset: task.kind.dataset().name.clone(),
            purpose,
            terms: task.terms.clone(),
            peers,
            federation_ca: m.federation_ca.clone(),
        }));
        m
    }

    /// A machine that only reports `failure` (a task the worker cannot take, e.g. when busy).
    pub fn refuse(id: TaskId, failure: Failure) -> TaskMachine {
        let mut m = TaskMachine::blank(id);
        // The reason is the worker's own state (busy), not the bank's data.
        m.share_error_details = true;
        m.report(failure);
        m
    }

    /// A machine with nothing decided yet and no secrets.
    fn blank(id: TaskId) -> TaskMachine {
        TaskMachine {
            id,
            task: None,
            identity: None,
            bank_min_participants: 0,
            federation_ca: None,
            seed: None,
            training_salt: 0,
            record_noise_seed: 0,
            reference: String::new(),
            noise: None,
            noise_seed: [0; 32],
            share_error_details: false,
            contributed: None,
            survivors: None,
            held_unmask: None,
            phase: Phase::Admitting,
            local: Local::Idle,
            client: None,
            protocol_done: false,
            effects: VecDeque::new(),
            uploads: VecDeque::new(),
            uploading: None,
            early_relays: VecDeque::new(),
            clipped: 0,
        }
    }

    /// Which task.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// The decoded task (None when it could not be decoded).
    pub fn task(&self) -> Option<&Task> {
        self.task.as_deref()
    }

    /// `stats`, `train`, `evaluate`, or `none` for an undecodable task.
    pub fn task_name(&self) -> &'static str {
        self.task.as_ref().map_or("none", |t| t.kind.name())
    }

    /// The failure being reported, with its full local reason (while the failure report is
    /// queued or uploading).
    pub fn reporting(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Reporting(f) => Some(f),
            _ => None,
        }
    }

    /// True once [`Effect::Finished`] was queued.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// The secure-aggregation stage the bank is in (None without a running client).
    pub fn stage(&self) -> Option<confide_secagg::Stage> {
        self.client.as_ref().map(Client::stage)
    }

    /// The next effect to execute.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Grace { until, .. } => Some(*until),
            Phase::Working => self.client.as_ref().and_then(Client::poll_timeout),
            _ => None,
        }
    }

    /// The driver's answer to [`Effect::Admit`].
    pub fn handle_admission(&mut self, result: Result<(), Failure>) {
        if !matches!(self.phase, Phase::Admitting) {
            return;
        }
        let Some(task) = self.task.clone() else { return };
        if let Err(f) = result {
            return self.report(f);
        }
        self.phase = Phase::Working;
        if let Aggregation::Secure(setup) = &task.aggregation {
            let (Some(identity), Some(seed)) = (self.identity.take(), self.seed.take()) else {
                return self.report(Failure::internal("task admitted twice"));
            };
            // The round-level floor was checked on the whole participant list; the client's own
            // checks count share holders (a SecAgg+ neighbourhood of k + 1 under a sparse
            // graph), so they get the floor capped at that size.
            let floor = self.bank_min_participants.max(setup.min_participants) as usize;
            let policy = ClientPolicy { min_participants: floor.min(setup.params.holders()) };
            match Client::new(setup.params.clone(), setup.participant_id, identity, policy, seed) {
                Ok(client) => self.client = Some(client),
                Err(e) => return self.report(Failure::protocol(e)),
            }
            self.drain_client(None);
        }
        self.start_local(&task);
        let early: Vec<(Vec<u8>, Instant)> = self.early_relays.drain(..).collect();
        for (bytes, at) in early {
            self.relay(&bytes, at);
        }
    }

    /// The driver's answer to [`Effect::Fetch`] (bytes verified against the requested hash).
    pub fn handle_fetched(&mut self, blob: Blob, result: Result<Arc<Vec<u8>>, Failure>) {
        if !matches!(self.local, Local::Fetching { .. }) {
            return;
        }
        let bytes = match result {
            Ok(b) => b,
            Err(f) => return self.local_failure(f),
        };
        let Local::Fetching { checkpoint, module } = &mut self.local else { return };
        match blob {
            Blob::Checkpoint => *checkpoint = Some(bytes),
            Blob::Module => *module = Some(bytes),
        }
        let Some(task) = self.task.clone() else { return };
        let needs_module = task.kind.model().is_some_and(|m| m.module_sha256.is_some());
        if checkpoint.is_some() && (module.is_some() || !needs_module) {
            let (checkpoint, module) = (checkpoint.take(), module.take());
            self.request_compute(&task, checkpoint, module);
        }
    }

    /// The driver's answer to [`Effect::Compute`]: the vector, or the computation's failure.
    pub fn handle_computed(&mut self, result: Result<Vec<f64>, Failure>) {
        if !matches!(self.local, Local::Computing) {
            return;
        }
        self.local = Local::Done;
        let mut vector = match result {
            Ok(v) => v,
            Err(f) => return self.local_failure(f),
        };
        if let Phase::Grace { failure, .. } = &self.phase {
            // The computation succeeded after all: the protocol's reason stands.
            let failure = failure.clone();
            return self.report(failure);
        }
        if !matches!(self.phase, Phase::Working) {
            return;
        }
        let Some(task) = self.task.clone() else { return };
        match &task.aggregation {
            Aggregation::Plain { vector_len, .. } => {
                if vector.len() != *vector_len {
                    return self
                        .report(Failure::protocol(format!("computed {} values, the task expects {vector_len}", vector.len())));
                }
                let contribution = pb::Contribution { body: Some(Body::Plain(pb::PlainVector { values: vector })) };
                self.upload(Upload::Plain, Submission { contribution, secagg: None });
            }
            Aggregation::Secure(setup) => {
                if let Some(plan) = &self.noise {
                    vector = match noisy_update(plan, &vector, self.noise_seed) {
                        Ok(v) => v,
                        Err(f) => return self.report(f),
                    };
                }
                let clip = setup.params.encoding.clip;
                let outside = vector.iter().filter(|v| v.abs() > clip).count();
                if outside > 0 {
                    if matches!(task.kind, TaskKind::Train { .. }) {
                        vector.iter_mut().for_each(|v| *v = v.clamp(-clip, clip));
                        self.clipped = outside;
                    } else {
                        // The report names neither the values nor how far out they are: the
                        // coordinator chose the range and must not learn the bank's sums from it.
                        return self.report(Failure::new(
                            FailureKind::OutOfRange,
                            format!("aggregate values exceed the secure-aggregation range ±{clip:e}; rescale the data"),
                        ));
                    }
                }
                // A DP job's vectors carry no exact count: a training vector's weight is the
                // constant 1, and the counts in statistics and evaluations carry the bank's
                // noise, so differencing sums reveals only what the bank's budget accounts for.
                let dp = task.terms.as_ref().is_some_and(|t| t.dp.is_some());
                let counts = if dp || self.noise.is_some() { Vec::new() } else { counts_of(&task, &vector) };
                self.contributed = Some((crate::ledger::SumCheck::digest_of(&vector), counts));
                let Some(client) = self.client.as_mut() else { return };
                if let Err(e) = client.set_input(&vector) {
                    return self.report(Failure::protocol(e));
                }
                self.drain_client(None);
            }
        }
    }

    /// A relayed secure-aggregation message from the coordinator.
    pub fn handle_relay(&mut self, bytes: &[u8], now: Instant) {
        match self.phase {
            Phase::Admitting if self.task.is_some() && self.early_relays.len() < MAX_EARLY_RELAYS => {
                self.early_relays.push_back((bytes.to_vec(), now));
            }
            Phase::Working => self.relay(bytes, now),
            _ => {}
        }
    }

    /// The driver's answer to [`Effect::Submit`].
    pub fn handle_submitted(&mut self, result: Result<(), Failure>, now: Instant) {
        let Some(upload) = self.uploading.take() else { return };
        match (upload, &self.phase) {
            (Upload::Report, Phase::Reporting(failure)) => {
                let failure = failure.clone();
                let reference = self.reference.clone();
                self.finish(TaskOutcome::Failed { failure, reference, report: result });
                return;
            }
            (Upload::Plain, Phase::Working) => match result {
                Ok(()) => return self.finish(TaskOutcome::Contributed { clipped: 0, plain: true }),
                Err(f) => return self.report(f),
            },
            (Upload::Secagg, Phase::Working) => {
                if let Err(f) = result {
                    return self.protocol_ended(f, Some(now));
                }
            }
            _ => {}
        }
        self.next_upload();
        self.maybe_done();
    }

    /// The coordinator cancelled the task: stop, send nothing more.
    pub fn handle_cancel(&mut self, reason: impl Into<String>) {
        if self.is_finished() {
            return;
        }
        self.effects.clear();
        self.uploads.clear();
        self.finish(TaskOutcome::Cancelled { reason: reason.into() });
    }

    /// Time passed: the secagg client's deadline and the local-failure grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Grace { failure, until } if now >= *until => {
                let failure = failure.clone();
                self.report(failure);
            }
            Phase::Working => {
                if let Some(client) = self.client.as_mut() {
                    client.handle_timeout(now);
                    self.drain_client(Some(now));
                }
            }
            _ => {}
        }
    }

    /// Starts the local computation of an admitted task.
    fn start_local(&mut self, task: &Task) {
        match task.kind.model() {
            None => self.request_compute(task, None, None),
            Some(model) => {
                self.local = Local::Fetching { checkpoint: None, module: None };
                let max_bytes = model.size_bytes.min(MAX_MODEL_BYTES);
                self.effects.push_back(Effect::Fetch(BlobRequest { blob: Blob::Checkpoint, hash: model.hash.clone(), max_bytes }));
                if let Some(hash) = &model.module_sha256 {
                    self.effects.push_back(Effect::Fetch(BlobRequest {
                        blob: Blob::Module,
                        hash: hash.clone(),
                        max_bytes: MAX_MODULE_BYTES,
                    }));
                }
            }
        }
    }

    fn request_compute(&mut self, task: &Task, checkpoint: Option<Arc<Vec<u8>>>, module: Option<Arc<Vec<u8>>>) {
        self.local = Local::Computing;
        let mut kind = task.kind.clone();
        if let TaskKind::Train { local, .. } = &mut kind {
            // The coordinator's seed alone would make a rerun of this training give the same
            // vector, which two sums over different institutions would then isolate.
            local.seed ^= self.training_salt;
        }
        self.effects.push_back(Effect::Compute(ComputeRequest {
            job_id: self.id.job_id.clone(),
            round: self.id.round,
            vector_len: task.aggregation.vector_len(),
            kind,
            checkpoint,
            module,
            dp: task.terms.as_ref().and_then(|t| t.dp.clone()),
            noise_seed: self.record_noise_seed,
        }));
    }

    /// Hands one relay to the client. The unmask request waits for the ledger: the survivors
    /// the coordinator listed are the sum's final set of institutions.
    fn relay(&mut self, bytes: &[u8], now: Instant) {
        if self.client.is_none() {
            return;
        }
        let msg = match ServerMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => return self.protocol_ended(Failure::protocol(e), Some(now)),
        };
        match &msg.payload {
            confide_secagg::ServerPayload::ConsistencyRequest { survivors, .. } => {
                // Fewer inputs in the sum than the noise shares the job counts: its noise would
                // fall short of the bound, so this bank helps reveal nothing.
                if let Some(plan) = &self.noise
                    && survivors.len() < plan.noise_shares
                {
                    let f = Failure::policy(format!(
                        "refusing to reveal a sum holding the noise of {} banks: the job's privacy counts {} ({} listed, privacy.dropout_allowance = {})",
                        survivors.len(),
                        plan.noise_shares,
                        plan.participants,
                        plan.participants - plan.noise_shares
                    ));
                    return self.protocol_ended(f.shareable(), Some(now));
                }
                self.survivors = Some(survivors.clone())
            }
            confide_secagg::ServerPayload::UnmaskRequest(_) if self.held_unmask.is_none() => {
                if let Some(check) = self.sum_check() {
                    self.held_unmask = Some(msg);
                    self.effects.push_back(Effect::Ledger(check));
                    return;
                }
            }
            _ => {}
        }
        self.deliver(msg, now);
    }

    /// The sum this bank's unmasking shares would reveal, for the ledger.
    fn sum_check(&self) -> Option<crate::ledger::SumCheck> {
        let (digest, counts) = self.contributed.clone()?;
        let survivors = self.survivors.as_ref()?;
        let Some(Aggregation::Secure(setup)) = self.task.as_deref().map(|t| &t.aggregation) else { return None };
        let institutions = survivors
            .iter()
            .map(|id| {
                setup.peers.iter().find(|p| p.participant_id == *id).map_or_else(|| format!("#{id}"), |p| p.institution_id.clone())
            })
            .collect();
        Some(crate::ledger::SumCheck { digest, institutions, counts })
    }

    /// The driver's answer to [`Effect::Ledger`]: the held unmask request goes to the client,
    /// or the bank refuses to let the sum be revealed.
    pub fn handle_ledger(&mut self, result: Result<(), Failure>, now: Instant) {
        let Some(msg) = self.held_unmask.take() else { return };
        match result {
            Ok(()) => self.deliver(msg, now),
            Err(f) => self.protocol_ended(f, Some(now)),
        }
    }

    fn deliver(&mut self, msg: ServerMessage, now: Instant) {
        let Some(client) = self.client.as_mut() else { return };
        match client.handle_message(msg, now) {
            Ok(()) => self.drain_client(Some(now)),
            Err(SecAggError::Refused(r)) => {
                self.protocol_ended(Failure::policy(format!("refused to continue secure aggregation: {r}")), Some(now))
            }
            Err(e) => self.protocol_ended(Failure::protocol(e), Some(now)),
        }
    }

    /// Moves the client's messages to the upload queue and acts on its events.
    fn drain_client(&mut self, now: Option<Instant>) {
        let Some(client) = self.client.as_mut() else { return };
        while let Some(msg) = client.poll_transmit() {
            let kind = msg.payload.kind();
            let contribution = pb::Contribution { body: Some(Body::Secagg(msg.encode())) };
            self.uploads.push_back((Upload::Secagg, Submission { contribution, secagg: Some(kind) }));
        }
        let mut ended = None;
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Done => self.protocol_done = true,
                ClientEvent::Refused(r) => {
                    ended = Some(Failure::policy(format!("refused to continue secure aggregation: {r}")));
                }
                ClientEvent::Failed(e) => ended = Some(Failure::protocol(e)),
                ClientEvent::Aborted(stage) => {
                    ended = Some(Failure::protocol(format!("the coordinator aborted secure aggregation at {stage:?}")));
                }
                _ => {}
            }
            if ended.is_some() {
                break;
            }
        }
        if self.protocol_done {
            // Its last messages are queued; the secrets can go.
            self.client = None;
        }
        if let Some(f) = ended {
            return self.protocol_ended(f, now);
        }
        self.next_upload();
        self.maybe_done();
    }

    /// The protocol ended without the bank's part being complete.
    fn protocol_ended(&mut self, failure: Failure, now: Option<Instant>) {
        if !matches!(self.phase, Phase::Working) {
            return;
        }
        self.client = None;
        self.uploads.retain(|(u, _)| *u != Upload::Secagg);
        match (&self.local, now) {
            (Local::Fetching { .. } | Local::Computing, Some(now)) => {
                self.phase = Phase::Grace { failure, until: now + LOCAL_FAILURE_GRACE };
            }
            _ => self.report(failure),
        }
    }

    /// The local computation (a download, or the computation itself) failed: its reason is
    /// reported, also in preference to a protocol that already ended.
    fn local_failure(&mut self, failure: Failure) {
        self.local = Local::Done;
        if matches!(self.phase, Phase::Working | Phase::Grace { .. }) {
            self.report(failure);
        }
    }

    /// Stops everything and queues the failure report.
    fn report(&mut self, failure: Failure) {
        if matches!(self.phase, Phase::Reporting(_) | Phase::Finished) {
            return;
        }
        self.client = None;
        self.local = Local::Done;
        self.early_relays.clear();
        self.uploads.clear();
        let wire = failure.to_report(&self.reference, self.share_error_details);
        let contribution = pb::Contribution { body: Some(Body::Failure(wire)) };
        self.uploads.push_back((Upload::Report, Submission { contribution, secagg: None }));
        self.phase = Phase::Reporting(failure);
        self.next_upload();
    }

    fn upload(&mut self, what: Upload, submission: Submission) {
        self.uploads.push_back((what, submission));
        self.next_upload();
    }

    /// Releases the next upload when none is outstanding.
    fn next_upload(&mut self) {
        if self.uploading.is_some() || self.is_finished() {
            return;
        }
        if let Some((what, submission)) = self.uploads.pop_front() {
            self.uploading = Some(what);
            self.effects.push_back(Effect::Submit(submission));
        }
    }

    /// Finishes once the bank's part of the protocol is complete and uploaded.
    fn maybe_done(&mut self) {
        if self.protocol_done && matches!(self.phase, Phase::Working) && self.uploading.is_none() && self.uploads.is_empty() {
            let clipped = self.clipped;
            self.finish(TaskOutcome::Contributed { clipped, plain: false });
        }
    }

    fn finish(&mut self, outcome: TaskOutcome) {
        self.phase = Phase::Finished;
        self.client = None;
        self.local = Local::Done;
        self.uploading = None;
        self.effects.push_back(Effect::Finished(outcome));
    }
}

/// The bank's rules a machine decides alone, before asking for admission.
/// The counts a task's vector carries, as ledger keys (dataset, fingerprint, split, what, value):
/// training rows in statistics and training vectors, test rows and positives in evaluation
/// vectors. They stay constant while the vectors around them change, so the ledger keeps the
/// sets of institutions each was summed over.
fn counts_of(task: &Task, vector: &[f64]) -> Vec<String> {
    let d = task.kind.dataset();
    let key = |what: &str, v: f64| format!("{}/{}/{what}={v}", d.name, d.schema_fingerprint);
    match &task.kind {
        TaskKind::Stats { .. } => vector.first().map(|&rows| vec![key("train-rows", rows)]).unwrap_or_default(),
        // A root level's row counts per slot are the same for every tree (without a row
        // sample): summed over two sets of banks differing by one, they would give that bank's
        // counts, so the root's count histogram is kept like a count.
        TaskKind::Grow { tree, .. } if tree.depth == 0 => {
            let counts: Vec<f64> = vector.iter().skip(2).step_by(confide_gbdt::hist::STATS).copied().collect();
            let digest = crate::ledger::SumCheck::digest_of(&counts);
            vec![format!("{}/{}/gbdt-root-counts={digest}", d.name, d.schema_fingerprint)]
        }
        TaskKind::Grow { .. } => Vec::new(),
        TaskKind::Train { .. } => {
            let n = vector.len().checked_sub(confide_core::contribution::TRAIN_EXTRAS).and_then(|i| vector.get(i));
            n.map(|&n| vec![key("train-rows", n)]).unwrap_or_default()
        }
        TaskKind::Evaluate { model, buckets, .. } if !model.spec.is_recommendation() => {
            match confide_core::metrics::EvalContribution::from_slice(vector, *buckets) {
                Some(e) => vec![key("test-rows", e.n), key("test-positives", e.positives)],
                None => Vec::new(),
            }
        }
        TaskKind::Evaluate { .. } => {
            let users = confide_core::metrics::RecommendationEval::from_slice(vector).map(|e| e.users);
            users.map(|u| vec![key("test-users", u)]).unwrap_or_default()
        }
    }
}

/// A value and a short hex reference derived from a task's seed for `purpose` (domain-separated
/// from the secure-aggregation client's use of the same seed).
fn derived(seed: &[u8; 32], purpose: &str) -> (u64, String) {
    let d = derived_seed(seed, purpose);
    let value = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (value, hex::encode(&d[..6]))
}

/// A 32-byte seed derived from a task's seed for `purpose` (as [`derived`]).
fn derived_seed(seed: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut input = Vec::with_capacity(48);
    input.extend_from_slice(b"confide-task-");
    input.extend_from_slice(purpose.as_bytes());
    input.extend_from_slice(seed);
    let mut out = [0u8; 32];
    // A SHA-256 hex digest always decodes to 32 bytes.
    let _ = hex::decode_to_slice(confide_core::sha256_hex(&input), &mut out);
    out
}

/// The noise plan of an institution-level DP training task, from the job's public terms and
/// the session the coordinator chose, after the bank's checks: none for any other task.
fn noise_plan(floors: &Floors, task: &Task) -> Result<Option<NoisePlan>, Failure> {
    let Some(p) = task.terms.as_ref().and_then(|t| t.dp.as_ref()).map(|dp| &dp.privacy) else { return Ok(None) };
    if p.mode != PrivacyMode::Institution {
        return Ok(None);
    }
    // Checked at every task of the job, so a bank that will refuse its training is in none of
    // its sums (rather than leaving them part-way).
    if p.dropout_allowance < floors.min_dropout_allowance {
        return Err(Failure::policy(format!(
            "the job counts the noise of all but {} banks; this bank requires a dropout allowance of at least {} (privacy.min_dropout_allowance)",
            p.dropout_allowance, floors.min_dropout_allowance
        ))
        .shareable());
    }
    if !matches!(task.kind, TaskKind::Train { .. }) {
        return Ok(None);
    }
    let Aggregation::Secure(setup) = &task.aggregation else {
        return Err(Failure::policy("institution-level DP adds each bank's noise under the masks; this bank refuses plain aggregation for it"));
    };
    let params = &setup.params;
    let n = params.participants.len();
    let parameters = params.vector_len.checked_sub(confide_core::contribution::TRAIN_EXTRAS).filter(|&d| d > 0);
    let parameters = parameters.ok_or_else(|| Failure::protocol(format!("a training vector of {} values", params.vector_len)))?;
    let refuse = |why: String| Failure::policy(format!("refusing institution-level DP training: {why}")).shareable();
    let plan = NoisePlan::for_grid(p.clip_norm, p.sigma(), 1.0 / params.encoding.scale, parameters, n, p.dropout_allowance)
        .map_err(|e| refuse(format!("the session's grid 1/{}: {e}", params.encoding.scale)))?;
    plan.check_ring(params.modulus_bits).map_err(|e| refuse(e.to_string()))?;
    if params.encoding.clip < plan.encoding_clip() {
        return Err(refuse(format!(
            "the session's clip ±{:e} does not cover this bank's noisy values (±{:e}): they would be clamped",
            params.encoding.clip,
            plan.encoding_clip()
        )));
    }
    Ok(Some(plan))
}

/// The institution-DP contribution: `[Δ…, 1, 0]` from the computation becomes Δ clipped,
/// rounded and noised ([`NoisePlan::privatize`]), then the weight 1 and loss 0 unchanged.
fn noisy_update(plan: &NoisePlan, vector: &[f64], seed: [u8; 32]) -> Result<Vec<f64>, Failure> {
    use rand::SeedableRng;
    let d = plan.dimension;
    let (update, extras) = vector.split_at_checked(d).ok_or_else(|| Failure::internal(format!("computed {} values for {d} parameters", vector.len())))?;
    if extras != [1.0, 0.0] {
        // The weight and the loss are summed exactly: anything else would reveal the bank's rows.
        return Err(Failure::internal("an institution-DP training vector must end in weight 1 and loss 0"));
    }
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let mut noisy = plan.privatize(update, &mut rng).map_err(Failure::internal)?;
    noisy.extend_from_slice(extras);
    Ok(noisy)
}

fn bank_rules(profile: &BankProfile, task: &Task) -> Result<(), Failure> {
    let wanted = task.kind.dataset();
    if let Some(u) = profile.unavailable.iter().find(|u| u.name == wanted.name) {
        return Err(Failure::dataset_unavailable(&u.name, u.problem));
    }
    let offered = profile
        .datasets
        .iter()
        .find(|d| d.name == wanted.name)
        .ok_or_else(|| Failure::policy(format!("dataset `{}` is not offered by this institution", wanted.name)))?;
    if offered.schema_fingerprint != wanted.schema_fingerprint {
        return Err(Failure::data(format!(
            "dataset `{}`: the job's schema (fingerprint {}) differs from this institution's ({})",
            wanted.name, wanted.schema_fingerprint, offered.schema_fingerprint
        )));
    }
    if matches!(task.kind, TaskKind::Stats { .. } | TaskKind::Train { .. } | TaskKind::Grow { .. }) && profile.one_class.contains(&wanted.name) {
        // A fixed text: not which class, nor how many rows.
        return Err(Failure::new(FailureKind::OneClassLabels, FailureKind::OneClassLabels.describe()).shareable());
    }
    let floors = &profile.floors;
    if let Some(terms) = &task.terms
        && terms.score_buckets > floors.max_score_buckets
    {
        return Err(Failure::policy(format!(
            "the job's evaluations ask for {} score buckets; this bank reports at most {} (policy.max_score_buckets)",
            terms.score_buckets, floors.max_score_buckets
        ))
        .shareable());
    }
    if let TaskKind::Evaluate { buckets, .. } = &task.kind {
        if !SCORE_BUCKETS.contains(buckets) {
            return Err(Failure::protocol(format!("score_buckets {buckets} out of range")));
        }
        if *buckets > floors.max_score_buckets {
            return Err(Failure::policy(format!(
                "score_buckets {buckets}: this bank reports at most {} (policy.max_score_buckets)",
                floors.max_score_buckets
            )));
        }
    }
    if let Aggregation::Plain { participants, .. } = &task.aggregation {
        // Plaintext leaves the bank only by the bank's own choice, never on the task's word,
        // and the bank's floor on institutions holds in this mode too.
        if !profile.allow_plain_aggregation {
            return Err(Failure::policy(
                "the task asks for plain (unmasked) aggregation; this bank sends only securely aggregated vectors \
                 (plain needs the worker's --insecure-dev or [policy] allow_plain_aggregation)",
            ));
        }
        let min = profile.min_participants as usize;
        if *participants < min {
            return Err(Failure::policy(format!("{participants} institutions in this round; this bank requires at least {min}")));
        }
    }
    if let Aggregation::Secure(setup) = &task.aggregation {
        let min = profile.min_participants.max(setup.min_participants) as usize;
        let have = setup.params.participants.len();
        if have < min {
            return Err(Failure::policy(format!("{have} institutions in this round; this bank requires at least {min}")));
        }
        session_floors(floors, &task.kind, &setup.params)?;
    }
    Ok(())
}

/// The bank's bounds on the session the coordinator chose: threshold, masking graph, clip.
fn session_floors(floors: &Floors, kind: &TaskKind, params: &SessionParams) -> Result<(), Failure> {
    let n = params.participants.len();
    if let confide_secagg::Graph::Sparse { k } = params.graph {
        if n < MIN_SPARSE_PARTICIPANTS {
            return Err(Failure::policy(format!(
                "a sparse masking graph for {n} institutions; this bank accepts one from {MIN_SPARSE_PARTICIPANTS} on"
            )));
        }
        let degree = confide_secagg::Graph::recommended_degree(n);
        if k < degree {
            return Err(Failure::policy(format!(
                "sparse masking graph degree {k}; this bank requires at least {degree} for {n} institutions"
            )));
        }
    }
    let holders = params.holders();
    // The small epsilon keeps 2/3 of 3 holders at 2 (f64 rounding), never below the fixed floor.
    let by_fraction = (floors.min_threshold_fraction * holders as f64 - 1e-9).ceil().max(0.0) as usize;
    let required = min_threshold(holders).max(by_fraction.min(holders));
    if params.threshold < required {
        return Err(Failure::policy(format!(
            "secure-aggregation threshold {} of {holders} share holders; this bank requires at least {required}",
            params.threshold
        )));
    }
    let clip = params.encoding.clip;
    match kind {
        TaskKind::Train { .. } if clip > floors.max_update_clip => Err(Failure::policy(format!(
            "update range ±{clip:e}; this bank encodes at most ±{:e} (policy.max_update_clip)",
            floors.max_update_clip
        ))),
        TaskKind::Stats { .. } | TaskKind::Grow { .. } | TaskKind::Evaluate { .. } if clip < floors.min_exact_clip => Err(Failure::policy(format!(
            "exact range ±{clip:e}; this bank requires at least ±{:e} (policy.min_exact_clip)",
            floors.min_exact_clip
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The machine driven like `confide_secagg::testing` drives clients: a few banks' machines
    //! and a real `confide_secagg::Server` on a virtual clock, with every effect answered in
    //! memory (or held back, to play a slow computation).

    use std::collections::BTreeMap;

    use confide_secagg::testing::{self, VirtualClock};
    use confide_secagg::{ClientMessage, Graph, Server, ServerEvent, ServerPayload, Stage};

    use super::*;
    use crate::config::PolicyConfig;
    use crate::policy::Policy;

    const ROUND: u64 = 7;
    const DATASET: &str = "telco";
    const FINGERPRINT: &str = "f00d";

    fn profile(id: u32) -> BankProfile {
        BankProfile {
            institution_id: format!("bank{id}"),
            identity: testing::identity(id),
            datasets: vec![DatasetRef { name: DATASET.into(), schema_fingerprint: FINGERPRINT.into() }],
            unavailable: Vec::new(),
            one_class: Vec::new(),
            min_participants: 3,
            federation_ca: None,
            allow_plain_aggregation: true,
            share_error_details: true,
            floors: Floors { min_exact_clip: 1.0, ..Floors::default() },
        }
    }

    fn params(n: u32, vector_len: usize) -> SessionParams {
        let mut p = testing::session_params(n, min_threshold(n as usize), vector_len, Graph::Complete, 32);
        p.round = ROUND;
        p
    }

    fn secure(params: &SessionParams, me: u32) -> pb::AggregationSetup {
        let institutions = params.participants.keys().map(|&id| (id, (format!("bank{id}"), Vec::new()))).collect();
        pb::AggregationSetup {
            insecure_plain: false,
            vector_len: params.vector_len as u64,
            secure: Some(confide_proto::secagg::setup_for(params, me, &institutions, 3)),
            participants: params.participants.len() as u32,
        }
    }

    fn plain(vector_len: u64) -> pb::AggregationSetup {
        pb::AggregationSetup { insecure_plain: true, vector_len, secure: None, participants: 3 }
    }

    fn wire(me: u32, kind: Kind) -> pb::Task {
        pb::Task { task_id: format!("task-{me}"), job_id: "job-1".into(), round: ROUND, kind: Some(kind), terms: None }
    }

    fn dataset_ref() -> Option<pb::DatasetRef> {
        Some(pb::DatasetRef { name: DATASET.into(), schema_fingerprint: FINGERPRINT.into() })
    }

    fn stats(aggregation: pb::AggregationSetup) -> Kind {
        Kind::Stats(pb::StatsTask { dataset: dataset_ref(), aggregation: Some(aggregation), fine_histograms: false })
    }

    const PREP: &str = r#"{"schema_fingerprint":"f00d","rows":10,"columns":[]}"#;

    fn train_with(aggregation: pb::AggregationSetup, spec_json: &str, prep_json: &str) -> Kind {
        let local = LocalTraining {
            epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            optimizer: Default::default(),
            prox_mu: 0.0,
            pos_weight: None,
            seed: 1,
            l2: 0.0,
            feedback: Default::default(),
            negatives: 1,
        };
        Kind::Train(pb::TrainTask {
            dataset: dataset_ref(),
            model: Some(pb::ModelRef { hash: "ab".repeat(32), size_bytes: 10, spec_json: spec_json.into() }),
            preprocessing_json: prep_json.into(),
            train_config_json: serde_json::to_string(&local).expect("json"),
            aggregation: Some(aggregation),
        })
    }

    const MLP: &str = r#"{"kind":"mlp","hidden":[4]}"#;

    fn train(aggregation: pb::AggregationSetup) -> Kind {
        train_with(aggregation, MLP, PREP)
    }

    /// The kind of failure a submission reports, if it is a failure report.
    fn reported(s: &Submission) -> Option<FailureKind> {
        match &s.contribution.body {
            Some(Body::Failure(f)) => f.typed_kind(),
            _ => None,
        }
    }

    fn failed(outcome: Option<&TaskOutcome>) -> &Failure {
        match outcome {
            Some(TaskOutcome::Failed { failure, .. }) => failure,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// Banks' machines and a secagg server, effects answered in memory.
    #[derive(Default)]
    struct Federation {
        clock: VirtualClock,
        server: Option<Server>,
        machines: BTreeMap<u32, TaskMachine>,
        /// What each bank's computation returns; absent: the request is held.
        results: BTreeMap<u32, Result<Vec<f64>, Failure>>,
        /// A bank's durable policy (absent: admit everything).
        policies: BTreeMap<u32, Policy>,
        /// A bank's contribution ledger (created on first use).
        ledgers: BTreeMap<u32, crate::ledger::Ledger>,
        held: BTreeMap<u32, ComputeRequest>,
        admissions: BTreeMap<u32, Vec<AdmissionRequest>>,
        submitted: BTreeMap<u32, Vec<Submission>>,
        outcomes: BTreeMap<u32, TaskOutcome>,
        server_events: Vec<ServerEvent>,
    }

    impl Federation {
        /// One stats task per bank `1..=n` with their vectors, and the server of the session.
        fn secure_stats(n: u32, inputs: &BTreeMap<u32, Vec<f64>>) -> Federation {
            let params = params(n, inputs.values().next().map_or(0, Vec::len));
            let mut f = Federation::default();
            f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
            for id in 1..=n {
                f.start(id, wire(id, stats(secure(&params, id))));
                if let Some(x) = inputs.get(&id) {
                    f.results.insert(id, Ok(x.clone()));
                }
            }
            f
        }

        fn start(&mut self, id: u32, task: pb::Task) {
            let mut seed = [0x17u8; 32];
            seed[..4].copy_from_slice(&id.to_be_bytes());
            self.machines.insert(id, TaskMachine::from_wire(&profile(id), task, seed));
        }

        /// Executes every machine's effects and delivers the server's messages, until quiet.
        fn run(&mut self) {
            loop {
                let mut busy = false;
                let ids: Vec<u32> = self.machines.keys().copied().collect();
                for id in ids {
                    while self.step(id) {
                        busy = true;
                    }
                }
                if let Some(server) = self.server.as_mut() {
                    while let Some(ev) = server.poll_event() {
                        self.server_events.push(ev);
                    }
                    let out: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
                    for (to, msg) in out {
                        busy = true;
                        if let Some(m) = self.machines.get_mut(&to) {
                            m.handle_relay(&msg.encode(), self.clock.now());
                        }
                    }
                }
                if !busy {
                    return;
                }
            }
        }

        /// Executes one effect of bank `id`; false when it has none.
        fn step(&mut self, id: u32) -> bool {
            let now = self.clock.now();
            let Some(m) = self.machines.get_mut(&id) else { return false };
            let Some(effect) = m.poll_effect() else { return false };
            match effect {
                Effect::Admit(request) => {
                    let result = self.policies.get(&id).map_or(Ok(()), |p| p.admit_request(&request));
                    self.admissions.entry(id).or_default().push(request);
                    m.handle_admission(result);
                }
                Effect::Fetch(request) => m.handle_fetched(request.blob, Ok(Arc::new(Vec::new()))),
                Effect::Ledger(check) => {
                    let result = self.ledgers.entry(id).or_insert_with(|| crate::ledger::Ledger::in_memory(true)).admit(&check);
                    m.handle_ledger(result, now);
                }
                Effect::Compute(request) => match self.results.get(&id) {
                    Some(result) => m.handle_computed(result.clone()),
                    None => {
                        self.held.insert(id, request);
                    }
                },
                Effect::Submit(submission) => {
                    if let (Some(server), Some(Body::Secagg(bytes))) = (self.server.as_mut(), &submission.contribution.body) {
                        let msg = ClientMessage::decode(bytes).expect("the machine sends well-formed messages");
                        let _ = server.handle_message(id, msg, now);
                    }
                    self.submitted.entry(id).or_default().push(submission);
                    m.handle_submitted(Ok(()), now);
                }
                Effect::Finished(outcome) => {
                    self.outcomes.insert(id, outcome);
                }
            }
            true
        }

        fn secagg_sent(&self, id: u32) -> usize {
            self.submitted.get(&id).map_or(0, |s| s.iter().filter(|s| s.secagg.is_some()).count())
        }

        fn sum(&self) -> Option<Vec<f64>> {
            self.server_events.iter().find_map(|e| match e {
                ServerEvent::Finished(o) => Some(o.sum.clone()),
                _ => None,
            })
        }
    }

    fn inputs(rows: &[&[f64]]) -> BTreeMap<u32, Vec<f64>> {
        rows.iter().enumerate().map(|(i, r)| (i as u32 + 1, r.to_vec())).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tolerance, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn a_secure_stats_task_contributes_its_vector_to_the_sum() {
        let x = inputs(&[&[0.5, -0.25, 0.125], &[0.1, 0.2, 0.3], &[-0.3, 0.0, 0.9]]);
        let mut f = Federation::secure_stats(3, &x);
        f.run();
        for id in 1..=3 {
            assert_eq!(f.outcomes.get(&id), Some(&TaskOutcome::Contributed { clipped: 0, plain: false }), "bank {id}");
            assert!(f.machines[&id].is_finished());
            assert!(f.machines.get_mut(&id).and_then(TaskMachine::poll_effect).is_none(), "nothing after Finished");
        }
        let scale = params(3, 3).encoding.scale;
        let sum = f.sum().expect("the round finished");
        assert_close(&sum, &[0.3, -0.05, 1.325], 3.0 / scale);
        let admitted = &f.admissions[&1][0];
        assert_eq!((admitted.purpose.clone(), admitted.round, admitted.peers.len()), (Purpose::Statistics, ROUND, 3));
    }

    #[test]
    fn a_policy_refusal_is_reported_and_no_key_leaves() {
        let params = params(3, 2);
        let mut f = Federation::default();
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        let strict = PolicyConfig { allowed_models: vec!["logistic_regression".into()], ..Default::default() };
        f.policies.insert(1, Policy::in_memory(strict));
        for id in 1..=3 {
            f.start(id, wire(id, train(secure(&params, id))));
            f.results.insert(id, Ok(vec![0.0; 2]));
        }
        f.run();
        let failure = failed(f.outcomes.get(&1));
        assert_eq!(failure.kind, FailureKind::Policy);
        assert!(failure.reason.contains("`mlp` is not allowed"), "{failure}");
        assert_eq!(f.secagg_sent(1), 0, "no key advertisement from the refusing bank");
        let sent = &f.submitted[&1];
        assert_eq!((sent.len(), reported(&sent[0])), (1, Some(FailureKind::Policy)));
        assert!(f.secagg_sent(2) > 0, "the others advertised");
    }

    #[test]
    fn a_coordinator_listing_a_bank_twice_or_an_unpinned_one_gets_no_key_advertisement() {
        use crate::config::{FederationConfig, MemberConfig};
        use crate::membership::Membership;
        let params = params(3, 2);
        // Playing the coordinator: bank1's copy of the setup names bank2 twice (participant 3
        // relabelled), so one real bank would count as two towards bank1's floor.
        let mut twice = secure(&params, 1);
        if let Some(s) = twice.secure.as_mut() {
            s.peers[2].institution_id = "bank2".into();
        }
        // bank1 pins bank2 only, and the coordinator brings bank3.
        let pin_bank2 = FederationConfig {
            members: vec![MemberConfig { institution: "bank2".into(), fingerprint: "f".repeat(64) }],
            revocation_file: None,
        };
        let pinned = Membership::from_config(&pin_bank2, "bank1", None).expect("membership");
        let cases = [
            (twice, Membership::open_to_all(), "`bank2` is listed twice"),
            (secure(&params, 1), pinned, "`bank3` is not among this bank's pinned federation members"),
        ];
        for (setup, membership, why) in cases {
            let mut f = Federation::default();
            f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
            f.policies.insert(1, Policy::in_memory(PolicyConfig::default()).with_membership(membership));
            f.start(1, wire(1, stats(setup)));
            for id in 2..=3 {
                f.start(id, wire(id, stats(secure(&params, id))));
            }
            for id in 1..=3 {
                f.results.insert(id, Ok(vec![0.0; 2]));
            }
            f.run();
            let failure = failed(f.outcomes.get(&1));
            assert_eq!(failure.kind, FailureKind::Policy);
            assert!(failure.reason.contains(why), "{failure}");
            assert_eq!(f.secagg_sent(1), 0, "no key advertisement leaves the refusing bank");
            let sent = &f.submitted[&1];
            assert_eq!((sent.len(), reported(&sent[0])), (1, Some(FailureKind::Policy)), "only the refusal");
            assert!(f.secagg_sent(2) > 0, "the honest setup is not refused");
        }
    }

    #[test]
    fn a_schema_mismatch_or_an_unoffered_dataset_is_refused_before_admission() {
        let params = params(3, 2);
        let changed = pb::DatasetRef { name: DATASET.into(), schema_fingerprint: "beef".into() };
        let unoffered = pb::DatasetRef { name: "cards".into(), schema_fingerprint: FINGERPRINT.into() };
        for (dataset, kind) in [(changed, FailureKind::Data), (unoffered, FailureKind::Policy)] {
            let task = Kind::Stats(pb::StatsTask { dataset: Some(dataset), aggregation: Some(secure(&params, 1)), fine_histograms: false });
            let mut f = Federation::default();
            f.start(1, wire(1, task));
            f.run();
            assert_eq!(failed(f.outcomes.get(&1)).kind, kind);
            assert!(f.admissions.is_empty(), "decided before asking the driver");
            assert_eq!(f.secagg_sent(1), 0);
        }
    }

    /// The failure report a machine sends first (before any admission), with its kind.
    fn first_report(profile: &BankProfile, task: pb::Task) -> pb::TaskFailure {
        let mut m = TaskMachine::from_wire(profile, task, [1; 32]);
        match m.poll_effect() {
            Some(Effect::Submit(Submission { contribution: pb::Contribution { body: Some(Body::Failure(f)) }, .. })) => f,
            other => panic!("not refused before admission: {other:?}"),
        }
    }

    #[test]
    fn an_unavailable_dataset_or_one_class_training_labels_are_refused_by_kind_without_the_data() {
        let params = params(3, 2);
        let unavailable = BankProfile {
            datasets: Vec::new(),
            unavailable: vec![UnavailableDataset { name: DATASET.into(), problem: DatasetProblem::Corrupt }],
            ..profile(1)
        };
        let report = first_report(&unavailable, wire(1, stats(secure(&params, 1))));
        assert_eq!(report.typed_kind(), Some(FailureKind::DatasetUnavailable));
        // Reported without the bank sharing details: the kind of problem, never file or line.
        assert_eq!(report.reason, format!("dataset `{DATASET}` is unavailable at this bank (corrupt file)"));

        let one_class = BankProfile { one_class: vec![DATASET.into()], ..profile(1) };
        let report = first_report(&one_class, wire(1, train(secure(&params, 1))));
        assert_eq!(report.typed_kind(), Some(FailureKind::OneClassLabels));
        assert_eq!(report.reason, "all training labels are one class", "no class, no count");
        let report = first_report(&one_class, wire(1, stats(secure(&params, 1))));
        assert_eq!(report.typed_kind(), Some(FailureKind::OneClassLabels), "refused from the job's first task");
        assert!(matches!(first_effect(&one_class, 1, evaluate(secure(&params, 1), 10)), Effect::Admit(_)), "its test split still serves");
    }

    #[test]
    fn the_jobs_terms_reach_the_admission_and_its_score_buckets_are_checked_at_the_first_task() {
        let params = params(3, 2);
        let terms = |score_buckets: u32| pb::JobTerms { rounds: 3, model_spec_json: r#"{"kind":"logistic_regression"}"#.into(), score_buckets, dp_json: String::new() };
        let task = pb::Task { terms: Some(terms(100)), ..wire(1, stats(secure(&params, 1))) };
        let Effect::Admit(request) = first_effect_of(&profile(1), task) else { panic!("admission first") };
        assert_eq!(request.terms, Some(JobTerms { rounds: 3, model: ModelSpec::LogisticRegression, score_buckets: 100, dp: None }));
        let greedy = pb::Task { terms: Some(terms(20_000)), ..wire(1, stats(secure(&params, 1))) };
        let report = first_report(&profile(1), greedy);
        assert_eq!(report.typed_kind(), Some(FailureKind::Policy));
        assert!(report.reason.contains("20000 score buckets") && report.reason.contains("policy.max_score_buckets"), "{}", report.reason);
        let garbled = pb::Task { terms: Some(pb::JobTerms { model_spec_json: "{".into(), ..terms(100) }), ..wire(1, stats(plain(2))) };
        assert_eq!(first_report(&profile(1), garbled).typed_kind(), Some(FailureKind::Protocol));
    }

    #[test]
    fn dp_terms_a_bank_cannot_rely_on_are_refused_before_anything_leaves() {
        let params = params(3, 2);
        let dp = |sigma: f64| {
            format!(
                r#"{{"privacy":{{"mode":"record","noise_multiplier":{sigma},"delta":1e-5,"clip_norm":1.0,"dropout_allowance":1,"statistics_noise_multiplier":10.0,"evaluation_noise_multiplier":5.0}},"rounds":3,"local_epochs":1,"batch_size":64,"evaluate_every":1}}"#
            )
        };
        let terms = |dp_json: String| pb::JobTerms { rounds: 3, model_spec_json: r#"{"kind":"logistic_regression"}"#.into(), score_buckets: 100, dp_json };
        let honest = pb::Task { terms: Some(terms(dp(1.1))), ..wire(1, stats(secure(&params, 1))) };
        let Effect::Admit(request) = first_effect_of(&profile(1), honest) else { panic!("admission first") };
        assert_eq!(request.terms.and_then(|t| t.dp).and_then(|d| d.privacy.noise_multiplier), Some(1.1));
        // A coordinator calling σ = 0 "differential privacy": refused as a protocol fault, first.
        let report = first_report(&profile(1), pb::Task { terms: Some(terms(dp(0.0))), ..wire(1, stats(secure(&params, 1))) });
        assert_eq!(report.typed_kind(), Some(FailureKind::Protocol));
        assert!(report.reason.contains("privacy.noise_multiplier"), "{}", report.reason);
    }

    fn first_effect_of(profile: &BankProfile, task: pb::Task) -> Effect {
        TaskMachine::from_wire(profile, task, [1; 32]).poll_effect().expect("an effect")
    }

    #[test]
    fn a_round_below_the_banks_floor_is_refused() {
        let params = params(3, 2);
        let mut m = TaskMachine::from_wire(&BankProfile { min_participants: 4, ..profile(1) }, wire(1, stats(secure(&params, 1))), [1; 32]);
        let Some(Effect::Submit(s)) = m.poll_effect() else { panic!("the refusal is reported first") };
        assert_eq!(reported(&s), Some(FailureKind::Policy));
    }

    #[test]
    fn a_cancelled_task_stops_mid_protocol_and_sends_nothing_more() {
        let x = inputs(&[&[0.1], &[0.2], &[0.3]]);
        let mut f = Federation::secure_stats(3, &x);
        f.results.remove(&1);
        f.run();
        assert_eq!(f.machines[&1].stage(), Some(Stage::MaskedInput), "keys and shares exchanged, input pending");
        let sent = f.submitted[&1].len();
        let m = f.machines.get_mut(&1).expect("bank 1");
        m.handle_cancel("job cancelled");
        m.handle_computed(Ok(vec![0.1]));
        m.handle_relay(b"late", f.clock.now());
        f.run();
        assert_eq!(f.outcomes.get(&1), Some(&TaskOutcome::Cancelled { reason: "job cancelled".into() }));
        assert_eq!(f.submitted[&1].len(), sent, "no masked input, no failure report");
        assert_eq!(f.machines[&1].poll_timeout(), None);
    }

    fn abort(params: &SessionParams, to: u32) -> Vec<u8> {
        confide_secagg::ServerMessage { session_id: params.session_id, round: ROUND, recipient: to, payload: ServerPayload::Abort(Stage::MaskedInput) }
            .encode()
    }

    #[test]
    fn an_abort_while_computing_prefers_the_local_failure_within_the_grace() {
        let x = inputs(&[&[0.1], &[0.2], &[0.3]]);
        let mut f = Federation::secure_stats(3, &x);
        f.results.clear();
        f.run();
        let params = params(3, 1);
        let t0 = f.clock.now();
        for id in 1..=3 {
            f.machines.get_mut(&id).expect("bank").handle_relay(&abort(&params, id), t0);
        }
        f.run();
        assert!(f.outcomes.is_empty(), "every bank waits for its computation");
        assert_eq!(f.machines[&1].poll_timeout(), Some(t0 + LOCAL_FAILURE_GRACE));

        // Bank 1's computation fails within the grace: its own reason is reported.
        let local = Failure::data("bank1/train.csv line 42, column tenure: not a number");
        f.machines.get_mut(&1).expect("bank").handle_computed(Err(local.clone()));
        // Bank 2's succeeds: the protocol's reason stands.
        f.machines.get_mut(&2).expect("bank").handle_computed(Ok(vec![0.2]));
        // Bank 3's never answers: the protocol's reason once the grace is over, not before.
        f.machines.get_mut(&3).expect("bank").handle_timeout(t0 + LOCAL_FAILURE_GRACE / 2);
        f.run();
        assert!(!f.outcomes.contains_key(&3), "still within the grace");
        f.machines.get_mut(&3).expect("bank").handle_timeout(t0 + LOCAL_FAILURE_GRACE);
        f.run();

        assert_eq!(failed(f.outcomes.get(&1)), &local);
        for id in [2, 3] {
            let failure = failed(f.outcomes.get(&id));
            assert_eq!(failure.kind, FailureKind::Protocol);
            assert!(failure.reason.contains("aborted secure aggregation"), "{failure}");
        }
        assert_eq!(f.submitted[&1].last().and_then(reported), Some(FailureKind::Data));
    }

    #[test]
    fn out_of_range_values_are_clipped_for_training_and_refused_for_statistics() {
        let mut f = Federation::secure_stats(3, &inputs(&[&[5.0, 0.0], &[0.1, 0.1], &[0.1, 0.1]]));
        f.run();
        let failure = failed(f.outcomes.get(&1));
        assert_eq!(failure.kind, FailureKind::OutOfRange);
        assert!(failure.reason.contains("exceed the secure-aggregation range"), "{failure}");
        assert_eq!(f.submitted[&1].iter().filter(|s| s.secagg == Some(MessageKind::MaskedInput)).count(), 0, "no masked input");

        let params = params(3, 2);
        let mut f = Federation::default();
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        for (id, x) in [(1, vec![5.0, -7.0]), (2, vec![0.1, 0.1]), (3, vec![0.1, 0.1])] {
            f.start(id, wire(id, train(secure(&params, id))));
            f.results.insert(id, Ok(x));
        }
        f.run();
        assert_eq!(f.outcomes.get(&1), Some(&TaskOutcome::Contributed { clipped: 2, plain: false }));
        assert_close(&f.sum().expect("sum"), &[1.2, -0.8], 3.0 / params.encoding.scale);
    }

    #[test]
    fn plain_mode_checks_the_length_then_sends_the_vector() {
        let mut f = Federation::default();
        f.start(1, wire(1, stats(plain(3))));
        f.results.insert(1, Ok(vec![1.0, 2.0]));
        f.start(2, wire(2, stats(plain(3))));
        f.results.insert(2, Ok(vec![1.0, 2.0, 3.0]));
        f.run();
        let failure = failed(f.outcomes.get(&1));
        assert_eq!(failure.kind, FailureKind::Protocol);
        assert!(failure.reason.contains("computed 2 values, the task expects 3"), "{failure}");
        assert_eq!(f.outcomes.get(&2), Some(&TaskOutcome::Contributed { clipped: 0, plain: true }));
        let Some(Body::Plain(v)) = &f.submitted[&2][0].contribution.body else { panic!("a plain vector") };
        assert_eq!(v.values, vec![1.0, 2.0, 3.0]);
        assert!(f.admissions[&2][0].peers.is_empty());
    }

    #[test]
    fn a_malformed_task_is_a_protocol_failure_reported_before_anything_else() {
        let params = params(3, 2);
        let mut bad_setup = secure(&params, 1);
        if let Some(s) = bad_setup.secure.as_mut() {
            s.session_id.truncate(3);
        }
        let cases = [
            ("no kind", pb::Task { kind: None, ..wire(1, stats(plain(1))) }, "no kind"),
            ("spec", wire(1, train_with(plain(2), "{not json", PREP)), "model spec"),
            ("prep", wire(1, train_with(plain(2), MLP, "[1, 2]")), "preprocessing"),
            ("no setup", wire(1, Kind::Stats(pb::StatsTask { dataset: dataset_ref(), aggregation: None, fine_histograms: false })), "no aggregation setup"),
            ("bad session", wire(1, stats(bad_setup)), "session id"),
            ("buckets", wire(1, Kind::Evaluate(pb::EvaluateTask {
                dataset: dataset_ref(),
                model: Some(pb::ModelRef { hash: "ab".repeat(32), size_bytes: 1, spec_json: MLP.into() }),
                preprocessing_json: PREP.into(),
                score_buckets: 1,
                aggregation: Some(plain(3)),
            })), "score_buckets"),
        ];
        for (what, task, reason) in cases {
            let mut m = TaskMachine::from_wire(&profile(1), task, [1; 32]);
            let Some(Effect::Submit(s)) = m.poll_effect() else { panic!("{what}: the failure is reported first") };
            assert_eq!(reported(&s), Some(FailureKind::Protocol), "{what}");
            m.handle_submitted(Ok(()), Instant::now());
            let Some(Effect::Finished(TaskOutcome::Failed { failure, report: Ok(()), .. })) = m.poll_effect() else { panic!("{what}") };
            assert!(failure.reason.contains(reason), "{what}: {failure}");
            assert!(m.poll_effect().is_none());
        }
    }

    #[test]
    fn a_task_over_the_cap_is_answered_busy_at_once() {
        let params = params(3, 2);
        let Incoming::Start(mut busy) = receive(&profile(1), wire(1, stats(secure(&params, 1))), 8, 8, [1; 32]) else {
            panic!("a task")
        };
        let Some(Effect::Submit(s)) = busy.poll_effect() else { panic!("answered at once") };
        assert_eq!(reported(&s), Some(FailureKind::Internal));
        let Some(Body::Failure(f)) = &s.contribution.body else { panic!("a failure") };
        assert_eq!(f.reason, "worker busy: 8 tasks in progress");
        assert!(busy.poll_effect().is_none(), "no admission, no key");

        let Incoming::Start(mut taken) = receive(&profile(1), wire(1, stats(secure(&params, 1))), 7, 8, [1; 32]) else {
            panic!("a task")
        };
        assert!(matches!(taken.poll_effect(), Some(Effect::Admit(_))), "below the cap the task is taken");

        let relay = pb::Task { kind: Some(Kind::Secagg(pb::SecAggRelay { message: vec![1] })), ..wire(1, stats(plain(1))) };
        assert!(matches!(receive(&profile(1), relay, 8, 8, [1; 32]), Incoming::Relay { message, .. } if message == [1]));
        let cancel = pb::Task { kind: Some(Kind::Cancel(pb::CancelTask { reason: "over".into() })), ..wire(1, stats(plain(1))) };
        assert!(matches!(receive(&profile(1), cancel, 8, 8, [1; 32]), Incoming::Cancel { reason, .. } if reason == "over"));
    }

    /// The first effect of a fresh machine for `task` on bank `me` with `profile`.
    fn first_effect(profile: &BankProfile, me: u32, task: Kind) -> Effect {
        let mut m = TaskMachine::from_wire(profile, wire(me, task), [1; 32]);
        m.poll_effect().expect("an effect")
    }

    /// The failure a machine reports first, if it refuses before admission.
    fn refused_first(profile: &BankProfile, me: u32, task: Kind) -> Option<String> {
        match first_effect(profile, me, task) {
            Effect::Submit(s) => match &s.contribution.body {
                Some(Body::Failure(f)) => {
                    assert_eq!(f.typed_kind(), Some(FailureKind::Policy), "{}", f.reason);
                    Some(f.reason.clone())
                }
                other => panic!("a secagg message before admission: {other:?}"),
            },
            Effect::Admit(_) => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_threshold_below_two_thirds_of_the_holders_is_refused_before_any_key_leaves() {
        // n = 5, t = 3: the majority the protocol allows, which one colluder defeats.
        let mut weak = params(5, 2);
        weak.threshold = 3;
        let mut f = Federation::default();
        f.server = Some(Server::new(weak.clone(), f.clock.now()).expect("the server accepts any majority"));
        for id in 1..=5 {
            f.start(id, wire(id, stats(secure(&weak, id))));
            f.results.insert(id, Ok(vec![0.1, 0.2]));
        }
        f.run();
        for id in 1..=5 {
            let failure = failed(f.outcomes.get(&id));
            assert_eq!(failure.kind, FailureKind::Policy, "bank {id}");
            assert!(failure.reason.contains("threshold 3 of 5 share holders; this bank requires at least 4"), "{failure}");
            assert_eq!(f.secagg_sent(id), 0, "bank {id}: no key advertisement");
        }
        assert!(f.admissions.is_empty(), "refused before the driver is asked");
        assert!(f.sum().is_none());

        let strong = params(5, 2);
        assert_eq!(strong.threshold, 4);
        assert!(refused_first(&profile(1), 1, stats(secure(&strong, 1))).is_none(), "⌊2·5/3⌋ + 1 = 4 is admitted");
        // A bank may raise its floor, never lower it.
        let strict = BankProfile { floors: Floors { min_threshold_fraction: 1.0, ..profile(1).floors }, ..profile(1) };
        let reason = refused_first(&strict, 1, stats(secure(&strong, 1))).expect("5 of 5 demanded");
        assert!(reason.contains("requires at least 5"), "{reason}");
    }

    fn sparse(n: u32, k: usize) -> SessionParams {
        let mut p = testing::session_params(n, min_threshold(k + 1), 2, Graph::Sparse { k }, 32);
        p.round = ROUND;
        p
    }

    #[test]
    fn a_sparse_graph_below_the_floors_is_refused() {
        // k = 2 at n = 10: three share holders per secret.
        let reason = refused_first(&profile(1), 1, stats(secure(&sparse(10, 2), 1))).expect("k = 2 at n = 10");
        assert!(reason.contains("sparse masking graph for 10 institutions"), "{reason}");
        let degree = Graph::recommended_degree(64);
        let reason = refused_first(&profile(1), 1, stats(secure(&sparse(64, 2), 1))).expect("k = 2 at n = 64");
        assert!(reason.contains(&format!("degree 2; this bank requires at least {degree}")), "{reason}");
        let reason = refused_first(&profile(1), 1, stats(secure(&sparse(64, degree - 2), 1))).expect("one step below");
        assert!(reason.contains("degree"), "{reason}");
        assert!(refused_first(&profile(1), 1, stats(secure(&sparse(64, degree), 1))).is_none(), "the recommended degree");
    }

    fn evaluate(aggregation: pb::AggregationSetup, buckets: u32) -> Kind {
        Kind::Evaluate(pb::EvaluateTask {
            dataset: dataset_ref(),
            model: Some(pb::ModelRef { hash: "ab".repeat(32), size_bytes: 1, spec_json: MLP.into() }),
            preprocessing_json: PREP.into(),
            score_buckets: buckets,
            aggregation: Some(aggregation),
        })
    }

    #[test]
    fn score_buckets_beyond_the_banks_bound_are_refused() {
        let p = params(3, 2);
        let reason = refused_first(&profile(1), 1, evaluate(secure(&p, 1), 1_000_000)).expect("10^6 buckets");
        assert!(reason.contains("max_score_buckets"), "{reason}");
        assert!(refused_first(&profile(1), 1, evaluate(plain(3), 1_000_000)).is_some(), "in plain mode too");
        assert!(refused_first(&profile(1), 1, evaluate(secure(&p, 1), 10_000)).is_none(), "the job's default");
    }

    #[test]
    fn clip_ranges_outside_the_banks_bounds_are_refused() {
        let mut wide = params(3, 2);
        wide.encoding.clip = 1e12;
        wide.encoding.scale = SessionParams::max_scale(3, 1e12, 64);
        wide.modulus_bits = 64;
        let reason = refused_first(&profile(1), 1, train(secure(&wide, 1))).expect("a training range above the bound");
        assert!(reason.contains("max_update_clip"), "{reason}");
        assert!(refused_first(&profile(1), 1, stats(secure(&wide, 1))).is_none(), "a wide exact range is fine");
        // A narrow exact range lets refusals binary-search the bank's sums: refused by default.
        let default = BankProfile { floors: Floors::default(), ..profile(1) };
        let reason = refused_first(&default, 1, stats(secure(&params(3, 2), 1))).expect("±1 for statistics");
        assert!(reason.contains("min_exact_clip"), "{reason}");
        assert!(refused_first(&default, 1, evaluate(secure(&params(3, 2), 1), 100)).is_some(), "and for evaluation");
        assert!(refused_first(&default, 1, train(secure(&params(3, 2), 1))).is_none(), "training clips instead");
    }

    #[test]
    fn a_second_evaluation_of_the_same_round_is_refused_before_any_key_leaves() {
        let p = params(3, 2);
        let mut f = Federation::default();
        let once = PolicyConfig { max_evaluations_per_round: 1, ..Default::default() };
        f.policies.insert(1, Policy::in_memory(once));
        f.start(1, wire(1, evaluate(secure(&p, 1), 100)));
        f.run();
        assert!(f.secagg_sent(1) > 0, "the first evaluation goes ahead");
        f.submitted.clear();
        f.start(1, wire(1, evaluate(secure(&p, 1), 100)));
        f.run();
        let failure = failed(f.outcomes.get(&1));
        assert_eq!(failure.kind, FailureKind::Policy);
        assert!(failure.reason.contains("at most 1 times"), "{failure}");
        assert_eq!(f.secagg_sent(1), 0, "no key for the second query");
    }

    // ---- institution-level DP: the distributed discrete Gaussian ----

    const DP_C: f64 = 1.0;
    const DP_SIGMA: f64 = 1.0;

    fn dp_terms(allowance: u32) -> pb::JobTerms {
        let privacy = confide_core::job::PrivacySpec {
            mode: PrivacyMode::Institution,
            target_epsilon: None,
            noise_multiplier: Some(DP_SIGMA),
            delta: 1e-6,
            clip_norm: DP_C,
            planned_rows: None,
            dropout_allowance: allowance,
            statistics_noise_multiplier: 1.0,
            evaluation_noise_multiplier: 1.0,
        };
        let dp = confide_core::spend::DpJob { privacy, rounds: 5, local_epochs: 1, batch_size: 8, evaluate_every: 1, tree_levels: None };
        pb::JobTerms {
            rounds: 5,
            model_spec_json: MLP.into(),
            score_buckets: 10,
            dp_json: serde_json::to_string(&dp).expect("json"),
        }
    }

    /// A session for `n` banks with the encoding the coordinator chooses for institution DP.
    fn dp_params(n: u32, parameters: usize, allowance: u32) -> (SessionParams, NoisePlan) {
        let plan = NoisePlan::choose(DP_C, DP_SIGMA, parameters, n as usize, allowance, 32).expect("plan");
        let mut p = params(n, parameters + confide_core::contribution::TRAIN_EXTRAS);
        p.encoding = confide_secagg::FixedPoint { clip: plan.encoding_clip(), scale: plan.scale() };
        (p, plan)
    }

    fn dp_train(params: &SessionParams, me: u32, allowance: u32) -> pb::Task {
        pb::Task { terms: Some(dp_terms(allowance)), ..wire(me, train(secure(params, me))) }
    }

    fn bank_seed(id: u32) -> [u8; 32] {
        let mut seed = [0x17u8; 32];
        seed[..4].copy_from_slice(&id.to_be_bytes());
        seed
    }

    /// Each bank's update (norm 3, clipped to 1 by the bank), `[Δ…, 1, 0]` as the contract says.
    fn dp_update(id: u32, d: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..d).map(|j| ((j as f64 + 1.0) * f64::from(id)).sin()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x *= 3.0 / norm);
        v.extend([1.0, 0.0]);
        v
    }

    /// Runs one institution-DP training round of `n` banks; `noise` false removes the noise step
    /// (the banks hand the computed vector to the encoder as it is).
    fn dp_round(n: u32, d: usize, allowance: u32, noise: bool) -> (Federation, NoisePlan) {
        let (params, plan) = dp_params(n, d, allowance);
        let mut f = Federation::default();
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        for id in 1..=n {
            f.start(id, dp_train(&params, id, allowance));
            let update = if noise {
                dp_update(id, d)
            } else {
                // The noise step removed: the bank still clips, and sends the clipped update.
                f.machines.get_mut(&id).expect("machine").noise = None;
                clipped(id, d).into_iter().chain([1.0, 0.0]).collect()
            };
            f.results.insert(id, Ok(update));
        }
        f.run();
        (f, plan)
    }

    /// What bank `id` contributed, recomputed from its seed (as the bank itself can).
    fn contribution_of(plan: &NoisePlan, id: u32, d: usize) -> Vec<f64> {
        noisy_update(plan, &dp_update(id, d), derived_seed(&bank_seed(id), "noise")).expect("noisy")
    }

    fn clipped(id: u32, d: usize) -> Vec<f64> {
        let mut v = dp_update(id, d)[..d].to_vec();
        confide_core::discrete_noise::clip_l2(&mut v, DP_C);
        v
    }

    fn std_dev(xs: &[f64]) -> f64 {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0)).sqrt()
    }

    #[test]
    fn the_decoded_sum_is_the_clipped_updates_plus_every_banks_noise_and_the_exact_weight() {
        let (n, d) = (4u32, 3000usize);
        let (f, plan) = dp_round(n, d, 1, true);
        let sum = f.sum().expect("the round finished");
        assert!(f.outcomes.values().all(|o| matches!(o, TaskOutcome::Contributed { clipped: 0, .. })), "{:?}", f.outcomes);
        // The encoder added nothing: the sum is exactly the banks' noisy grid values.
        let mut want = vec![0.0; d + 2];
        for id in 1..=n {
            for (w, v) in want.iter_mut().zip(contribution_of(&plan, id, d)) {
                *w += v;
            }
        }
        assert_eq!(sum, want);
        assert_eq!(&sum[d..], &[f64::from(n), 0.0], "weights and losses are summed exactly");
        // Σ clipped + noise: the difference is the noise of n banks (each N_Z(0, s) in grid
        // units) plus the rounding (below γ per bank and coordinate).
        let residual: Vec<f64> =
            (0..d).map(|j| sum[j] - (1..=n).map(|id| clipped(id, d)[j]).sum::<f64>()).collect();
        let expected = (f64::from(n) * plan.variance as f64).sqrt() * plan.gamma;
        let got = std_dev(&residual);
        // Sample standard deviation over d coordinates: standard error σ/√(2d) ≈ 1.3%.
        assert!((got / expected - 1.0).abs() < 0.07, "noise std {got}, expected {expected}");
        let quantisation = f64::from(n) * plan.gamma;
        assert!(quantisation < 1e-6, "the grid is fine: {plan:?}");
    }

    #[test]
    fn colluding_banks_and_the_coordinator_learn_the_victims_update_only_under_the_honest_banks_noise() {
        // The attacker: the coordinator unmasks the sum, and the banks 2..=1+colluders subtract
        // their own exact contributions (they know their noise). Bank 1 is the victim; the other
        // honest banks' updates the test subtracts too (the attacker's best case). What is
        // left besides the victim's clipped update is the honest banks' noise.
        let (n, d, allowance, colluders) = (5u32, 2000usize, 2u32, 2u32);
        let attack = |noise: bool| {
            let (f, plan) = dp_round(n, d, allowance, noise);
            let sum = f.sum().expect("the round finished");
            let colluding: Vec<Vec<f64>> = (2..2 + colluders)
                .map(|id| if noise { contribution_of(&plan, id, d) } else { clipped(id, d) })
                .collect();
            let residual: Vec<f64> = (0..d)
                .map(|j| {
                    let known: f64 = colluding.iter().map(|v| v[j]).sum();
                    let honest_others: f64 = (2 + colluders..=n).map(|id| clipped(id, d)[j]).sum();
                    sum[j] - known - honest_others - clipped(1, d)[j]
                })
                .collect();
            std_dev(&residual)
        };
        let floor = DP_SIGMA * DP_C * (f64::from(n - allowance - colluders) / f64::from(n - allowance)).sqrt();
        let with_noise = attack(true);
        assert!(with_noise >= floor, "residual noise {with_noise} below the honest share {floor}");
        let without = attack(false);
        assert!(without < floor / 100.0, "without the noise step the victim's update is exposed ({without})");
    }

    #[test]
    fn a_dropout_allowance_below_the_banks_floor_is_refused_before_any_key_leaves() {
        let (params, _) = dp_params(4, 20, 0);
        let mut m = TaskMachine::from_wire(&profile(1), dp_train(&params, 1, 0), bank_seed(1));
        let f = m.reporting().cloned().expect("refused");
        assert_eq!(f.kind, FailureKind::Policy);
        assert!(f.reason.contains("min_dropout_allowance"), "{f}");
        assert!(matches!(m.poll_effect(), Some(Effect::Submit(s)) if reported(&s) == Some(FailureKind::Policy)));
        let stats_task = pb::Task { terms: Some(dp_terms(0)), ..wire(1, stats(secure(&params, 1))) };
        let m = TaskMachine::from_wire(&profile(1), stats_task, bank_seed(1));
        assert_eq!(m.reporting().map(|f| f.kind), Some(FailureKind::Policy), "the job is refused from its first task");
        let lenient = BankProfile { floors: Floors { min_dropout_allowance: 0, ..profile(1).floors }, ..profile(1) };
        let m = TaskMachine::from_wire(&lenient, dp_train(&params, 1, 0), bank_seed(1));
        assert!(m.reporting().is_none(), "a bank whose floor is 0 takes it");
    }

    #[test]
    fn a_session_whose_grid_or_clip_lets_the_noise_wrap_or_be_clamped_is_refused() {
        let (good, _) = dp_params(4, 500, 1);
        let mut small = good.clone();
        small.modulus_bits = 20; // the same grid in a ring too small for it: the headroom rule
        let m = TaskMachine::from_wire(&profile(1), dp_train(&small, 1, 1), bank_seed(1));
        assert_eq!(m.reporting().map(|f| f.kind), Some(FailureKind::Protocol));
        let mut odd = good.clone();
        odd.encoding.scale /= 3.0; // not a power of two: grid values would not be exact
        let mut tight = good.clone();
        tight.encoding.clip /= 4.0; // the noise would be clamped
        let mut plain_task = dp_train(&good, 1, 1);
        if let Some(Kind::Train(t)) = &mut plain_task.kind {
            t.aggregation = Some(plain(502));
        }
        for (task, what) in [(dp_train(&odd, 1, 1), "odd grid"), (dp_train(&tight, 1, 1), "clamped"), (plain_task, "plain")] {
            let m = TaskMachine::from_wire(&profile(1), task, bank_seed(1));
            let f = m.reporting().cloned().unwrap_or_else(|| panic!("{what}: not refused"));
            assert_eq!(f.kind, FailureKind::Policy, "{what}: {f}");
        }
        assert!(TaskMachine::from_wire(&profile(1), dp_train(&good, 1, 1), bank_seed(1)).reporting().is_none());
    }

    #[test]
    fn an_institution_dp_vector_not_ending_in_weight_one_and_loss_zero_is_not_sent() {
        let (params, _) = dp_params(4, 10, 1);
        let mut f = Federation::default();
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        f.start(1, dp_train(&params, 1, 1));
        let mut weighted = dp_update(1, 10);
        weighted[10] = 250.0; // a weighted update: the weight is the bank's row count
        f.results.insert(1, Ok(weighted));
        f.run();
        let failure = failed(f.outcomes.get(&1));
        assert_eq!(failure.kind, FailureKind::Internal, "{failure}");
        assert_eq!(f.submitted[&1].iter().filter(|s| s.secagg == Some(MessageKind::MaskedInput)).count(), 0);
    }

    #[test]
    fn a_sum_holding_fewer_noise_shares_than_the_job_counts_is_not_revealed() {
        // 7 banks, threshold 5, allowance 1: the bound counts 6 shares. Two banks never send
        // their masked input; the server would unmask the 5 others' sum, which the banks refuse.
        let (n, d) = (7u32, 50usize);
        let (params, _) = dp_params(n, d, 1);
        let mut f = Federation::default();
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        for id in 1..=n {
            f.start(id, dp_train(&params, id, 1));
            if id <= 5 {
                f.results.insert(id, Ok(dp_update(id, d)));
            }
        }
        f.run();
        let deadline = f.server.as_ref().and_then(Server::poll_timeout).expect("the masked-input stage waits");
        f.clock.advance_to(deadline);
        f.server.as_mut().expect("server").handle_timeout(deadline);
        f.run();
        assert!(f.sum().is_none(), "the sum was revealed");
        for id in 1..=5 {
            let failure = failed(f.outcomes.get(&id));
            assert_eq!(failure.kind, FailureKind::Policy, "{failure}");
            assert!(failure.reason.contains("noise of 5 banks"), "{failure}");
        }
    }

    #[test]
    fn institution_dp_rounds_over_changing_banks_are_not_refused_as_count_differencing() {
        // Four banks, then three of them: with weighted updates the ledger refuses the second
        // sum (it would isolate bank 4's rows); an institution-DP weight is the constant 1.
        let (first, _) = dp_round(4, 20, 1, true);
        assert!(first.sum().is_some());
        let (params, _) = dp_params(3, 20, 1);
        let mut f = Federation { ledgers: first.ledgers, ..Federation::default() };
        f.server = Some(Server::new(params.clone(), f.clock.now()).expect("server"));
        for id in 1..=3 {
            f.start(id, dp_train(&params, id, 1));
            f.results.insert(id, Ok(dp_update(id, 20)));
        }
        f.run();
        assert!(f.sum().is_some(), "refused: {:?}", f.outcomes);
    }
}
