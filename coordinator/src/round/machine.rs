//! The whole life of one job, as a pure state machine: wait for eligible workers → federated
//! preprocessing statistics → round after round of select → train → server optimizer step →
//! evaluate → commit, until the round budget or early stopping.
//!
//! A tree model (`kind = "gbdt"`) runs the same life with one tree per round: its statistics
//! carry the fine histograms of federated binning (the feature space and its cut points come
//! from their sum), and its round is one secure sum per tree level instead of
//! one training sum — the level's splits are chosen from the summed gradient histograms
//! ([`confide_gbdt::GrowingTree::apply_level`]), and the next level goes to the banks whose
//! histograms were in the sum. The finished tree joins the ensemble, which is evaluated and
//! committed like any round's model. A leaf floor the federation's rows cannot meet fails the
//! job with that reason.
//!
//! [`JobMachine`] has no sockets, no tokio, no database, no wall clock and no OS randomness (in
//! the style of `quinn-proto`, like `confide-secagg` below it). Time comes in as the caller's
//! `now`, randomness (task ids, secure-aggregation session ids) from the seed it is built with,
//! and everything it wants done leaves as an [`Effect`]. The secure-aggregation server sits
//! inside it (through [`Phase`]). The tokio driver is [`super::runner`]; tests drive it on a
//! virtual clock (the workspace's `confide-harness` crate, and `fuzz/`).
//!
//! ## How to drive it
//! 1. Load the job's committed state into a [`JobSnapshot`] and call [`JobMachine::new`]
//!    (resuming after a crash is exactly this: the machine starts from the last committed
//!    round, so an interrupted round is run again).
//! 2. Tell it who is connected ([`JobMachine::handle_workers`]) now and whenever that changes.
//! 3. After every call, drain [`JobMachine::poll_effect`] in order and carry each effect out:
//!    - [`Effect::Assign`]: open a route for the task's contributions, send it to the worker
//!      (if it cannot be sent, call [`JobMachine::handle_disconnect`]);
//!    - [`Effect::Relay`]: send a secure-aggregation relay or a cancel for an assigned task;
//!    - [`Effect::CloseTasks`]: refuse further contributions to those tasks;
//!    - [`Effect::Persist`]: write it durably, then report with [`JobMachine::handle_persisted`]
//!      (the machine emits nothing else until then, so nothing is sent that depends on an
//!      unwritten checkpoint);
//!    - [`Effect::Publish`]: show the event to the job's watchers;
//!    - [`Effect::Finish`]: record how the job ended; the machine is done.
//! 4. Feed what arrives: [`JobMachine::handle_contribution`] (its error goes back to the
//!    sender), [`JobMachine::handle_disconnect`], [`JobMachine::handle_stop`] (cancel or
//!    shutdown), and [`JobMachine::handle_timeout`] once [`JobMachine::poll_timeout`] passed.
//!
//! ## Store faults
//! A write that fails transiently (full disk, I/O error) pauses the job; after a backoff
//! (1 s doubling to 60 s) the machine asks for the very same write again, so the round is not
//! lost and the job survives. A permanent fault (corruption) fails the job.
//!
//! ## What users see
//! After every call the machine knows the job's [`Activity`] ([`JobMachine::activity`]):
//! waiting for participants (with the reason, from what the connected banks offer), training,
//! or stalled on the store (`stalled: no space left on device` for a full disk, until a write
//! succeeds again). A change is published as an event once (a new waiting reason counts as a
//! change; a new training round does not, the round events say that).
//!
//! ## Limits and refusals
//! - Start deadline: a job whose first phase cannot start within it fails with the waiting
//!   reason; idle timeout: a started job that cannot start its next round or retry within it
//!   fails the same way (both [`JobLimits`]; 0 = no limit).
//! - A bank whose failure is deterministic ([`FailureKind::is_deterministic`]: its data, its
//!   policy) is left out of the retry when enough others remain; otherwise the job fails at
//!   once, naming it, rather than repeating the same failing task.
//! - Divergence: a round whose training or evaluation loss is not finite, or more than
//!   [`DIVERGENCE_RATIO`] times round 1's and [`DIVERGENCE_MARGIN`] above it, or (for a binary
//!   classifier) more than [`DIVERGENCE_RATIO`] times a coin flip's log loss, fails the job
//!   before it is committed, with a hint to lower the learning rate.
//! - Early stopping with `restore_best` (the default) ends the job with the best round's model:
//!   the job's views pick it by [`schedule::final_round`].
//!
//! [`FailureKind::is_deterministic`]: confide_core::outcome::FailureKind::is_deterministic

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_core::contribution::TrainContribution;
use confide_core::job::JobSpec;
use confide_core::metrics::{EvalContribution, RECOMMENDATION_EVAL_LEN, RecommendationEval};
use confide_core::model::{ModelParams, ModelSpec, ParamLayout, rec_names};
use confide_core::outcome::ParticipantStatus;
use confide_core::strategy::{ServerOptimizer, ServerState};
use confide_datasets::{DatasetSchema, Preprocessing};
use confide_gbdt::{GbdtModel, GrowParams, GrowingTree};
use confide_proto::v1::{self as pb, contribution::Body, task::Kind};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::activity::{self, Activity, ActivityKind};
use super::errors::{JobError, PhaseError};
use super::phase::{Phase, PhaseFailure, PhaseOutcome};
use super::schedule::{self, EarlyStopping};
use super::secure::{Encoding, SecurePhase};
use crate::config::JobDefaults;
use crate::hub::WorkerInfo;
use crate::store::{ParticipantRecord, RoundRecord, StoreError};

/// First pause after a transient store fault; it doubles up to [`MAX_STORE_BACKOFF`].
pub const STORE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between retries of a failing write.
pub const MAX_STORE_BACKOFF: Duration = Duration::from_secs(60);

/// A loss more than this many times its reference has diverged (with [`DIVERGENCE_MARGIN`]).
pub const DIVERGENCE_RATIO: f64 = 10.0;
/// ... and more than this far above it in absolute terms, so a tiny round-1 loss (0.01 → 0.1)
/// is not taken for divergence.
pub const DIVERGENCE_MARGIN: f64 = 1.0;

/// How long a job waits for participants, resolved from its job file and the coordinator's
/// defaults (`None` = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The job's first phase must start within this.
    pub start_deadline: Option<Duration>,
    /// A started job's next round (or retry) must start within this.
    pub idle_timeout: Option<Duration>,
}

impl JobLimits {
    /// The job file's `[selection]` values where set, the coordinator's defaults elsewhere.
    pub fn resolve(spec: &JobSpec, defaults: &JobDefaults) -> Self {
        let limit = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        Self {
            start_deadline: limit(spec.selection.start_deadline_secs.unwrap_or(defaults.start_deadline_secs)),
            idle_timeout: limit(spec.selection.idle_timeout_secs.unwrap_or(defaults.idle_timeout_secs)),
        }
    }
}

/// A job's committed state, as the store holds it: what [`JobMachine::new`] starts from.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    /// Job id.
    pub job_id: String,
    /// The validated job.
    pub spec: JobSpec,
    /// The dataset schema the job was submitted with.
    pub schema: DatasetSchema,
    /// The job's head once its statistics phase committed; None before (the job starts there).
    pub head: Option<Head>,
    /// Rounds committed.
    pub rounds_completed: u64,
    /// Metrics of the committed rounds, in order (early stopping picks up from them).
    pub past_metrics: Vec<BTreeMap<String, f64>>,
    /// A recommendation job's item catalogue.
    pub catalogue: Option<Vec<String>>,
    /// A custom model's submitted initial parameters (safetensors).
    pub initial_params: Option<Vec<u8>>,
    /// The coordinator's defaults for the job's waiting limits.
    pub defaults: JobDefaults,
}

/// The latest committed model and everything needed to continue from it.
#[derive(Debug, Clone)]
pub struct Head {
    /// The federation's preprocessing.
    pub prep: Preprocessing,
    /// The global model's checkpoint (safetensors).
    pub model: Vec<u8>,
    /// The server optimizer's checkpoint, if any.
    pub optimizer_state: Option<Vec<u8>>,
}

/// Content-addressed bytes to write (a checkpoint); cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// SHA-256 hex of `bytes`: the name the store files it under.
    pub hash: String,
    /// The content.
    pub bytes: Arc<Vec<u8>>,
}

impl Blob {
    /// A blob of `bytes`, hashed.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { hash: confide_core::sha256_hex(&bytes), bytes: Arc::new(bytes) }
    }
}

/// A durable write the machine waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// The statistics phase's result: preprocessing, initial model and optimizer state (round 0).
    Start {
        /// Preprocessing as JSON.
        prep_json: String,
        /// Initial model.
        model: Blob,
        /// Initial optimizer state.
        optimizer_state: Blob,
    },
    /// A provisional checkpoint (the model being evaluated, which becomes the round's model
    /// once the round commits).
    Checkpoint(Blob),
    /// The outcomes of a failed attempt at a round (0 = statistics).
    FailedAttempt {
        /// The round.
        round: u64,
        /// The attempt.
        attempt: u32,
        /// Outcome per selected worker.
        participants: Vec<ParticipantRecord>,
    },
    /// A completed round: write both checkpoints, then the record in one transaction. The
    /// record's `completed_at` is left empty for the driver to stamp with the wall clock.
    Round {
        /// The attempt that completed it.
        attempt: u32,
        /// The round's record.
        record: RoundRecord,
        /// Its model.
        model: Blob,
        /// Its optimizer state.
        optimizer_state: Blob,
    },
}

/// How a job ended.
#[derive(Debug)]
pub enum JobEnd {
    /// Round budget reached, or stopped early (with the reason).
    Completed {
        /// Why it stopped before its round budget.
        stop_reason: Option<String>,
    },
    /// It cannot go on.
    Failed(JobError),
    /// Cancelled or shut down: its stored status is left as it is.
    Stopped,
}

/// What the machine wants done; see the module docs for each.
#[derive(Debug)]
pub enum Effect {
    /// Open a route for a new task's contributions and send it to `worker`.
    Assign {
        /// Recipient.
        worker: String,
        /// The task (statistics, training or evaluation).
        task: pb::Task,
    },
    /// Send a message about an assigned task (a secure-aggregation relay, a cancel).
    Relay {
        /// Recipient.
        worker: String,
        /// The message.
        task: pb::Task,
    },
    /// Close these tasks: later contributions to them are refused.
    CloseTasks(Vec<String>),
    /// Write durably, then call [`JobMachine::handle_persisted`].
    Persist(Persist),
    /// Show an event to the job's watchers.
    Publish {
        /// The round it concerns (0 = statistics).
        round: u64,
        /// The event.
        event: pb::job_event::Kind,
    },
    /// The job is over.
    Finish(JobEnd),
}

/// Which aggregation a phase performs.
#[derive(Debug)]
enum Step {
    /// Preprocessing statistics (round 0).
    Statistics,
    /// Local training; sums weighted updates.
    Train,
    /// One level of a tree model's current tree; sums the banks' gradient histograms for its
    /// open nodes. A round runs one per level until the tree is complete.
    Grow(Box<Growth>),
    /// Evaluation of the advanced model; sums metric histograms.
    Evaluate(Box<Advanced>),
}

/// A tree model's round between levels.
#[derive(Debug)]
struct Growth {
    tree: GrowingTree,
    /// Outcomes of the banks an earlier level of this tree went on without (they dropped or
    /// failed); the next levels are asked of the banks whose histograms were in the sum.
    left_out: Vec<ParticipantRecord>,
}

/// A round's model after the server step, not yet committed.
#[derive(Debug)]
struct Advanced {
    global: ModelParams,
    /// A tree model's ensemble with the round's tree (None for parameter-vector models).
    trees: Option<GbdtModel>,
    optimizer: ServerOptimizer,
    model: Blob,
    metrics: BTreeMap<String, f64>,
    train_participants: Vec<ParticipantRecord>,
}

/// The job once its statistics committed.
#[derive(Debug)]
struct Trained {
    prep: Preprocessing,
    prep_json: String,
    layout: ParamLayout,
    global: ModelParams,
    /// A tree model's committed ensemble (None for parameter-vector models; their `global`
    /// and `optimizer` are empty for a tree model).
    trees: Option<GbdtModel>,
    optimizer: ServerOptimizer,
    /// The committed global model as shipped in training tasks.
    model_ref: pb::ModelRef,
}

/// One attempt at a round.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// 0 = statistics.
    round: u64,
    attempt: u32,
    /// When the attempt began waiting for workers (round durations count from here).
    started: Instant,
}

#[derive(Debug)]
struct Aggregation {
    step: Step,
    at: Attempt,
    phase: Phase,
    /// Task id per participant.
    tasks: BTreeMap<String, String>,
}

/// What to do once a write is durable.
#[derive(Debug)]
enum Then {
    StartTraining(Box<Trained>),
    Evaluate(Box<Advanced>, Attempt, Vec<String>),
    RoundCommitted(Box<Advanced>, u64),
    Retry { at: Attempt, reason: String },
}

#[derive(Debug)]
struct Pending {
    write: Persist,
    then: Then,
}

#[derive(Debug)]
enum Stage {
    Waiting(Attempt),
    Aggregating(Box<Aggregation>),
    Persisting(Box<Pending>),
    Stalled { until: Instant, pending: Box<Pending> },
    Finished,
}

/// One job's state machine; see the module docs for the calling order.
#[derive(Debug)]
pub struct JobMachine {
    id: String,
    spec: JobSpec,
    schema: DatasetSchema,
    fingerprint: String,
    model_spec_json: String,
    catalogue: Option<Vec<String>>,
    initial_params: Option<Vec<u8>>,
    rng: ChaCha20Rng,
    workers: Vec<WorkerInfo>,
    trained: Option<Box<Trained>>,
    early: EarlyStopping,
    stage: Stage,
    effects: VecDeque<Effect>,
    backoff: Duration,
    /// Banks that failed an earlier attempt at the current round deterministically (their
    /// policy refused, their data is bad): a retry goes without them when enough others remain
    /// (they would only fail it again, and their keys would count towards the threshold the
    /// others must reach); when too few remain the job fails at once.
    excluded: BTreeMap<String, ParticipantRecord>,
    limits: JobLimits,
    /// When this machine started (the start deadline counts from here).
    born: Instant,
    /// True once a phase started in this machine's life (the start deadline no longer applies).
    ever_started: bool,
    /// Why the last store write failed, until one succeeds (the job is stalled meanwhile).
    stalled: Option<String>,
    /// The activity last computed (published when it changes).
    activity: Option<Activity>,
    /// Round 1's metrics: the reference divergence is measured against.
    first_metrics: Option<BTreeMap<String, f64>>,
    /// The round of the last phase started (what a write in flight belongs to).
    last_round: u64,
}

impl JobMachine {
    /// A machine resuming `snapshot` at `now`, drawing its randomness from `seed`. Fails when
    /// the committed state cannot be read back.
    pub fn new(snapshot: JobSnapshot, seed: [u8; 32], now: Instant) -> Result<Self, JobError> {
        let JobSnapshot { job_id, spec, schema, head, rounds_completed, past_metrics, catalogue, initial_params, defaults } = snapshot;
        let model_spec_json = serde_json::to_string(&spec.model).map_err(|e| JobError::StoredState(e.to_string()))?;
        let mut early = EarlyStopping::new(spec.early_stopping.clone());
        for (i, m) in past_metrics.iter().enumerate() {
            early.observe(i as u64 + 1, m);
        }
        let limits = JobLimits::resolve(&spec, &defaults);
        let mut machine = Self {
            id: job_id,
            fingerprint: schema.fingerprint(),
            spec,
            schema,
            model_spec_json,
            catalogue,
            initial_params,
            rng: ChaCha20Rng::from_seed(seed),
            workers: Vec::new(),
            trained: None,
            early,
            stage: Stage::Finished,
            effects: VecDeque::new(),
            backoff: STORE_BACKOFF,
            excluded: Default::default(),
            limits,
            born: now,
            ever_started: false,
            stalled: None,
            activity: None,
            first_metrics: past_metrics.first().cloned(),
            last_round: rounds_completed,
        };
        let Some(head) = head else {
            machine.stage = Stage::Waiting(Attempt { round: 0, attempt: 1, started: now });
            return Ok(machine);
        };
        let layout = machine.spec.model.layout(head.prep.input_dim());
        let (global, trees) = if machine.spec.model.gbdt().is_some() {
            let trees = GbdtModel::from_bytes(&head.model).map_err(|e| JobError::StoredState(format!("model checkpoint: {e}")))?;
            (ModelParams::init(layout.clone(), machine.spec.seed), Some(trees))
        } else {
            let global =
                ModelParams::from_safetensors(&head.model, &layout).map_err(|e| JobError::StoredState(format!("model checkpoint: {e}")))?;
            (global, None)
        };
        let optimizer = match head.optimizer_state {
            Some(bytes) if ServerOptimizer::is_adaptive(&machine.spec.strategy) => {
                let state = ServerState::from_bytes(&bytes, layout.len())
                    .map_err(|e| JobError::StoredState(format!("optimizer checkpoint: {e}")))?;
                ServerOptimizer::with_state(machine.spec.strategy.clone(), state)
            }
            _ => ServerOptimizer::new(machine.spec.strategy.clone(), layout.len()),
        };
        let prep_json = serde_json::to_string(&head.prep).map_err(|e| JobError::StoredState(e.to_string()))?;
        let model_ref = machine.model_ref(&Blob::new(head.model));
        machine.trained = Some(Box::new(Trained { prep: head.prep, prep_json, layout, global, trees, optimizer, model_ref }));
        if let Some(reason) = machine.early.should_stop() {
            machine.finish(JobEnd::Completed { stop_reason: Some(reason) });
        } else if rounds_completed >= machine.spec.training.rounds {
            machine.finish(JobEnd::Completed { stop_reason: None });
        } else {
            machine.stage = Stage::Waiting(Attempt { round: rounds_completed + 1, attempt: 1, started: now });
        }
        Ok(machine)
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.id
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next (None: only events move it on).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Waiting(at) => self.give_up_at(at).map(|(t, _)| t),
            Stage::Aggregating(agg) => Some(agg.phase.poll_timeout()),
            Stage::Stalled { until, .. } => Some(*until),
            Stage::Persisting(_) | Stage::Finished => None,
        }
    }

    /// What the job is doing now (None once it finished).
    pub fn activity(&self) -> Option<&Activity> {
        self.activity.as_ref()
    }

    /// True until the job's first phase starts (no head committed, none started here): the
    /// start deadline applies, and giving up reads as "could not start".
    fn never_started(&self) -> bool {
        !self.ever_started && self.trained.is_none()
    }

    /// When a job waiting for `at` gives up, and the limit that says so (the earlier of its
    /// start deadline and its idle timeout).
    fn give_up_at(&self, at: &Attempt) -> Option<(Instant, Duration)> {
        let start = self.limits.start_deadline.filter(|_| self.never_started()).map(|d| (self.born + d, d));
        let idle = self.limits.idle_timeout.map(|d| (at.started + d, d));
        match (start, idle) {
            (Some(s), Some(i)) => Some(if i.0 < s.0 { i } else { s }),
            (s, i) => s.or(i),
        }
    }

    /// True once [`Effect::Finish`] was emitted.
    pub fn is_finished(&self) -> bool {
        matches!(self.stage, Stage::Finished)
    }

    /// The workers connected now, with what they registered.
    pub fn handle_workers(&mut self, now: Instant, connected: Vec<WorkerInfo>) {
        self.workers = connected;
        if let Stage::Aggregating(agg) = &mut self.stage {
            let gone: Vec<String> = agg.phase.pending().filter(|w| !self.workers.iter().any(|c| &c.id == w)).collect();
            for w in gone {
                agg.phase.handle_disconnect(&w, now);
            }
        }
        self.pump(now);
    }

    /// A contribution from `worker` to `task_id`. The error (if any) is for the sender; the
    /// round goes on either way.
    pub fn handle_contribution(&mut self, now: Instant, worker: &str, task_id: &str, body: Body) -> Result<(), PhaseError> {
        let Stage::Aggregating(agg) = &mut self.stage else { return Err(PhaseError::Over) };
        match agg.tasks.get(worker) {
            Some(t) if t == task_id => {}
            Some(_) => return Err(PhaseError::Over),
            None => return Err(PhaseError::NotParticipant(worker.into())),
        }
        let r = agg.phase.handle_contribution(worker, body, now);
        self.pump(now);
        r
    }

    /// `worker`'s task stream closed (or its task could not be sent, or it reconnected and
    /// lost its tasks).
    pub fn handle_disconnect(&mut self, now: Instant, worker: &str) {
        if let Stage::Aggregating(agg) = &mut self.stage {
            agg.phase.handle_disconnect(worker, now);
        }
        self.pump(now);
    }

    /// Advances time to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Waiting(at) => {
                self.stage = Stage::Waiting(at);
                if let Some((when, limit)) = self.give_up_at(&at)
                    && now >= when
                    && !self.try_start(now)
                {
                    let (reason, limit_secs) = (self.waiting_reason(), limit.as_secs());
                    self.finish(JobEnd::Failed(if self.never_started() {
                        JobError::NotStarted { limit_secs, reason }
                    } else {
                        JobError::Idle { round: at.round, limit_secs, reason }
                    }));
                }
            }
            Stage::Aggregating(mut agg) => {
                agg.phase.handle_timeout(now);
                self.stage = Stage::Aggregating(agg);
            }
            Stage::Stalled { until, pending } if now >= until => {
                tracing::info!(job = %self.id, "retrying the store write");
                self.effects.push_back(Effect::Persist(pending.write.clone()));
                self.stage = Stage::Persisting(pending);
            }
            other => self.stage = other,
        }
        self.pump(now);
    }

    /// The job was cancelled, or the coordinator is shutting down: tell the workers still busy
    /// with its phase to stop, and end.
    pub fn handle_stop(&mut self) {
        if let Stage::Aggregating(agg) = std::mem::replace(&mut self.stage, Stage::Finished) {
            self.close(&agg, "job stopped");
        }
        self.finish(JobEnd::Stopped);
    }

    /// The outcome of the last [`Effect::Persist`].
    pub fn handle_persisted(&mut self, now: Instant, result: Result<(), StoreError>) {
        let Stage::Persisting(pending) = std::mem::replace(&mut self.stage, Stage::Finished) else {
            // Not waiting for a write (stopped meanwhile): nothing to do.
            return;
        };
        match result {
            Ok(()) => {
                self.backoff = STORE_BACKOFF;
                self.stalled = None;
                self.then(now, pending.then);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(job = %self.id, error = %e, retry_in = ?self.backoff, "store write failed; the job is paused and will retry");
                self.stalled = Some(if e.is_disk_full() { activity::DISK_FULL.to_string() } else { format!("stalled: {e}") });
                self.stage = Stage::Stalled { until: now + self.backoff, pending };
                self.backoff = (self.backoff * 2).min(MAX_STORE_BACKOFF);
            }
            Err(e) => self.finish(JobEnd::Failed(JobError::Store(e))),
        }
        self.pump(now);
    }

    fn finish(&mut self, end: JobEnd) {
        self.stage = Stage::Finished;
        self.activity = None;
        self.effects.push_back(Effect::Finish(end));
    }

    fn persist(&mut self, write: Persist, then: Then) {
        self.effects.push_back(Effect::Persist(write.clone()));
        self.stage = Stage::Persisting(Box::new(Pending { write, then }));
    }

    /// Relays the phase's messages, starts what can start and ends what is over, until nothing
    /// changes; then publishes the job's activity if it changed.
    fn pump(&mut self, now: Instant) {
        self.advance(now);
        self.update_activity();
    }

    /// The activity the stage shows, and its event when it changed (see the module docs).
    fn update_activity(&mut self) {
        let (kind, reason) = match &self.stage {
            Stage::Finished => return,
            Stage::Stalled { .. } | Stage::Persisting(_) if self.stalled.is_some() => {
                (ActivityKind::Stalled, self.stalled.clone().unwrap_or_default())
            }
            Stage::Waiting(_) => (ActivityKind::Waiting, self.waiting_reason()),
            _ => (ActivityKind::Training, self.training_reason()),
        };
        let changed = match &self.activity {
            None => true,
            Some(last) => last.kind != kind || (kind != ActivityKind::Training && last.reason != reason),
        };
        let activity = Activity { kind, reason };
        if changed {
            let round = self.current_round();
            self.effects.push_back(Effect::Publish { round, event: pb::job_event::Kind::ActivityChanged(activity.to_proto()) });
        }
        self.activity = Some(activity);
    }

    /// The round the job works on now (0 = statistics).
    fn current_round(&self) -> u64 {
        match &self.stage {
            Stage::Waiting(at) => at.round,
            Stage::Aggregating(agg) => agg.at.round,
            _ => self.last_round,
        }
    }

    fn training_reason(&self) -> String {
        match self.current_round() {
            0 => "computing the federation's preprocessing statistics".into(),
            r => format!("round {r} of {}", self.spec.training.rounds),
        }
    }

    /// Why the waiting attempt cannot start with the connected workers.
    fn waiting_reason(&self) -> String {
        let (offering, eligible) = (self.offering(), self.eligible());
        let floored: Vec<&WorkerInfo> = self.workers.iter().filter(|w| offering.contains(&w.id) && !eligible.contains(&w.id)).collect();
        activity::waiting_reason(&self.workers, &self.spec.dataset, &self.fingerprint, self.spec.selection.min_workers, &floored)
    }

    fn advance(&mut self, now: Instant) {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Finished) {
                Stage::Waiting(at) => {
                    self.stage = Stage::Waiting(at);
                    if !self.try_start(now) {
                        return;
                    }
                }
                Stage::Aggregating(mut agg) => {
                    while let Some((worker, message)) = agg.phase.poll_transmit() {
                        if let Some(task_id) = agg.tasks.get(&worker) {
                            let task = self.task(task_id.clone(), agg.at.round, Kind::Secagg(pb::SecAggRelay { message }));
                            self.effects.push_back(Effect::Relay { worker, task });
                        }
                    }
                    let Some(outcome) = agg.phase.outcome().cloned() else {
                        self.stage = Stage::Aggregating(agg);
                        return;
                    };
                    self.close(&agg, "phase over");
                    let Aggregation { step, at, .. } = *agg;
                    self.phase_over(now, step, at, outcome);
                }
                other => {
                    self.stage = other;
                    return;
                }
            }
        }
    }

    /// Ids of the connected workers that offer the job's dataset with its schema.
    fn offering(&self) -> Vec<String> {
        self.workers.iter().filter(|w| w.offers(&self.spec.dataset, &self.fingerprint)).map(|w| w.id.clone()).collect()
    }

    /// The offering workers that would take part: a bank whose own floor on participants is
    /// above the number that could take part would refuse the task, so it is left out (until
    /// nobody else drops out).
    fn eligible(&self) -> Vec<String> {
        let mut pool: Vec<&WorkerInfo> = self.workers.iter().filter(|w| w.offers(&self.spec.dataset, &self.fingerprint)).collect();
        loop {
            let n = pool.len();
            pool.retain(|w| w.min_participants as usize <= n);
            if pool.len() == n {
                return pool.into_iter().map(|w| w.id.clone()).collect();
            }
        }
    }

    /// Starts the waiting attempt's phase if enough eligible workers are connected.
    fn try_start(&mut self, now: Instant) -> bool {
        let Stage::Waiting(at) = self.stage else { return false };
        let mut eligible = self.eligible();
        if eligible.len() < self.spec.selection.min_workers {
            return false;
        }
        let willing: Vec<String> = eligible.iter().filter(|w| !self.excluded.contains_key(*w)).cloned().collect();
        if willing.len() >= self.spec.selection.min_workers {
            eligible = willing;
        }
        let participants = schedule::select(&eligible, &self.spec.selection, self.spec.seed, at.round, at.attempt);
        if at.round == 0 {
            self.start_phase(now, Step::Statistics, at, &participants);
        } else {
            let event = pb::job_event::Kind::RoundStarted(pb::RoundStarted {
                participants: participants.clone(),
                rounds_total: self.spec.training.rounds,
            });
            self.effects.push_back(Effect::Publish { round: at.round, event });
            let step = match (&self.spec.model, self.trained.as_deref().and_then(|t| t.trees.as_ref())) {
                (confide_core::model::ModelSpec::Gbdt(g), Some(trees)) => {
                    // Tree r − 1 of the ensemble; its column sample is the job's seed's, so a
                    // retry grows it on the same features.
                    let index = at.round - 1;
                    let features = confide_gbdt::grow::column_sample(self.spec.seed, index, trees.features.len(), g.colsample_bytree);
                    Step::Grow(Box::new(Growth { tree: GrowingTree::new(index, features), left_out: Vec::new() }))
                }
                _ => Step::Train,
            };
            self.start_phase(now, step, at, &participants);
        }
        true
    }

    fn fresh_task_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }

    fn task(&self, task_id: String, round: u64, kind: Kind) -> pb::Task {
        // The job's terms travel with every task, so a bank refuses a job its policy cannot
        // serve at the first task, not at the round that crosses its limit.
        let terms = pb::JobTerms {
            rounds: self.spec.training.rounds,
            model_spec_json: self.model_spec_json.clone(),
            score_buckets: self.spec.evaluation.score_buckets,
            dp_json: confide_core::spend::DpJob::of(&self.spec).and_then(|dp| serde_json::to_string(&dp).ok()).unwrap_or_default(),
        };
        pb::Task { task_id, job_id: self.id.clone(), round, kind: Some(kind), terms: Some(terms) }
    }

    fn dataset_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef { name: self.spec.dataset.clone(), schema_fingerprint: self.fingerprint.clone() }
    }

    fn model_ref(&self, blob: &Blob) -> pb::ModelRef {
        pb::ModelRef { hash: blob.hash.clone(), size_bytes: blob.bytes.len() as u64, spec_json: self.model_spec_json.clone() }
    }

    /// Vector length and encoding of a step's contributions.
    fn vector_of(&self, step: &Step) -> (usize, Encoding) {
        let trained = self.trained.as_deref();
        match step {
            Step::Statistics => {
                let binning = if self.spec.model.gbdt().is_some() { confide_gbdt::features::fine_histogram_len(&self.schema) } else { 0 };
                (confide_datasets::stats_len(&self.schema) + binning, Encoding::Statistics)
            }
            Step::Grow(growth) => {
                let len = trained.and_then(|t| t.trees.as_ref()).map_or(0, |m| growth.tree.vector_len(&m.features));
                (len, Encoding::Histograms)
            }
            Step::Train => {
                let params = trained.map_or(0, |t| t.layout.len());
                let institution_dp = self.spec.privacy.as_ref().is_some_and(|p| p.mode == confide_core::job::PrivacyMode::Institution);
                let encoding =
                    if institution_dp { Encoding::NoisyUpdate } else { Encoding::WeightedUpdate { rows: trained.map_or(1, |t| t.prep.rows) } };
                (TrainContribution::vector_len(params), encoding)
            }
            Step::Evaluate(_) if self.spec.model.is_recommendation() => (RECOMMENDATION_EVAL_LEN, Encoding::Counts),
            Step::Evaluate(_) => (EvalContribution::vector_len(self.spec.evaluation.score_buckets as usize), Encoding::Counts),
        }
    }

    /// The task a participant gets for a step.
    fn task_kind(&self, step: &Step, round: u64, index: u64, aggregation: pb::AggregationSetup) -> Kind {
        let dataset = Some(self.dataset_ref());
        let aggregation = Some(aggregation);
        match (step, self.trained.as_deref()) {
            (Step::Statistics, _) | (_, None) => {
                Kind::Stats(pb::StatsTask { dataset, aggregation, fine_histograms: self.spec.model.gbdt().is_some() })
            }
            (Step::Grow(growth), Some(t)) => Kind::TreeLevel(pb::TreeLevelTask {
                dataset,
                model: Some(t.model_ref.clone()),
                tree_json: serde_json::to_string(&growth.tree).unwrap_or_default(),
                pos_weight: self.spec.training.pos_weight.unwrap_or(1.0),
                aggregation,
            }),
            (Step::Train, Some(t)) => Kind::Train(pb::TrainTask {
                dataset,
                model: Some(t.model_ref.clone()),
                preprocessing_json: t.prep_json.clone(),
                train_config_json: serde_json::to_string(&self.spec.local_training(round, index)).unwrap_or_default(),
                aggregation,
            }),
            (Step::Evaluate(adv), Some(t)) => Kind::Evaluate(pb::EvaluateTask {
                dataset,
                model: Some(self.model_ref(&adv.model)),
                preprocessing_json: t.prep_json.clone(),
                score_buckets: self.spec.evaluation.score_buckets,
                aggregation,
            }),
        }
    }

    /// Hands a task to each participant and starts summing their contributions.
    fn start_phase(&mut self, now: Instant, step: Step, at: Attempt, participants: &[String]) {
        self.ever_started = true;
        self.last_round = at.round;
        let (vector_len, encoding) = self.vector_of(&step);
        let deadline = now + Duration::from_secs(self.spec.selection.round_deadline_secs);
        let min = self.spec.selection.min_workers.min(participants.len());
        let (present, absent): (Vec<String>, Vec<String>) =
            participants.iter().cloned().partition(|w| self.workers.iter().any(|c| &c.id == w));
        let (mut phase, setups) = if self.spec.insecure_plain_aggregation {
            let setups = present
                .iter()
                .map(|w| {
                    let setup = pb::AggregationSetup {
                        insecure_plain: true,
                        vector_len: vector_len as u64,
                        secure: None,
                        participants: participants.len() as u32,
                    };
                    (w.clone(), setup)
                })
                .collect();
            (Phase::plain(participants, vector_len, min, deadline), setups)
        } else if present.len() < 2 {
            let outcome = PhaseOutcome {
                sum: Err(PhaseFailure { reason: format!("only {} selected workers still connected", present.len()) }),
                participants: absent.iter().map(|w| record(w, ParticipantStatus::Dropped, "disconnected before the phase")).collect(),
                deterministic: Vec::new(),
            };
            return self.phase_over(now, step, at, outcome);
        } else {
            let mut session_id = [0u8; 32];
            self.rng.fill_bytes(&mut session_id);
            match SecurePhase::new(&self.spec, &present, &self.workers, vector_len, encoding, at.round, session_id, now) {
                Ok((secure, setups)) => (Phase::secure(participants, vector_len, min, deadline, secure), setups),
                Err(e) => {
                    let outcome = PhaseOutcome {
                        sum: Err(PhaseFailure { reason: format!("secure aggregation setup: {e}") }),
                        participants: participants.iter().map(|w| record(w, ParticipantStatus::Failed, &e)).collect(),
                        deterministic: Vec::new(),
                    };
                    return self.phase_over(now, step, at, outcome);
                }
            }
        };
        for w in &absent {
            phase.handle_disconnect(w, now);
        }
        let index: BTreeMap<&str, u64> = participants.iter().enumerate().map(|(i, w)| (w.as_str(), i as u64)).collect();
        let mut tasks = BTreeMap::new();
        for (worker, setup) in setups {
            let task_id = self.fresh_task_id();
            let kind = self.task_kind(&step, at.round, index.get(worker.as_str()).copied().unwrap_or_default(), setup);
            let task = self.task(task_id.clone(), at.round, kind);
            tasks.insert(worker.clone(), task_id);
            self.effects.push_back(Effect::Assign { worker, task });
        }
        self.stage = Stage::Aggregating(Box::new(Aggregation { step, at, phase, tasks }));
    }

    /// Closes a phase's tasks and tells the workers still busy with it to stop.
    fn close(&mut self, agg: &Aggregation, reason: &str) {
        for w in agg.phase.pending().collect::<Vec<_>>() {
            if let Some(task_id) = agg.tasks.get(&w) {
                let task = self.task(task_id.clone(), agg.at.round, Kind::Cancel(pb::CancelTask { reason: reason.into() }));
                self.effects.push_back(Effect::Relay { worker: w, task });
            }
        }
        self.effects.push_back(Effect::CloseTasks(agg.tasks.values().cloned().collect()));
    }

    /// Takes a finished phase's outcome to the job's next step.
    fn phase_over(&mut self, now: Instant, step: Step, at: Attempt, outcome: PhaseOutcome) {
        let PhaseOutcome { sum, participants, deterministic } = outcome;
        self.exclude(&participants, &deterministic);
        match step {
            Step::Statistics => match sum {
                Ok(sum) => match self.start_training(&sum) {
                    Ok((write, trained)) => self.persist(write, Then::StartTraining(trained)),
                    Err(e) => self.finish(JobEnd::Failed(e)),
                },
                Err(f) => self.attempt_failed(at, format!("preprocessing statistics: {}", f.reason), participants),
            },
            Step::Train => match sum {
                Ok(sum) => self.server_step(now, at, &sum, participants),
                Err(f) => self.attempt_failed(at, f.reason, participants),
            },
            Step::Grow(growth) => match sum {
                Ok(sum) => self.grow_step(now, at, *growth, &sum, participants),
                Err(f) => {
                    let participants = merge_left_out(participants, growth.left_out);
                    self.attempt_failed(at, format!("tree level {}: {}", growth.tree.depth, f.reason), participants)
                }
            },
            Step::Evaluate(mut adv) => {
                let participants = merge(std::mem::take(&mut adv.train_participants), participants);
                match sum.map_err(|f| f.reason).and_then(|s| self.eval_metrics(&s)) {
                    Ok(metrics) => {
                        adv.metrics.extend(metrics);
                        adv.train_participants = participants;
                        self.commit(now, at, adv);
                    }
                    Err(reason) => self.attempt_failed(at, format!("evaluation: {reason}"), participants),
                }
            }
        }
    }

    /// The preprocessing from the summed statistics, the initial model and optimizer.
    fn start_training(&self, summed: &[f64]) -> Result<(Persist, Box<Trained>), JobError> {
        // A DP job's statistics carry each bank's Gaussian noise: counts may come out negative.
        // A tree model's statistics end with the fine histograms of federated binning.
        let (summed, binning) = match self.spec.model.gbdt() {
            Some(_) => summed.split_at(confide_datasets::stats_len(&self.schema).min(summed.len())),
            None => (summed, &[][..]),
        };
        let mut prep = if self.spec.privacy.is_some() {
            Preprocessing::from_noisy_aggregate(&self.schema, summed)?
        } else {
            Preprocessing::from_aggregate(&self.schema, summed)?
        };
        if let Some(rec) = prep.recommendation.as_mut() {
            // Every institution indexes items and ranks held-out items identically.
            rec.items = self.catalogue.clone().ok_or_else(|| JobError::StoredState("recommendation job has no item catalogue".into()))?;
            rec.ranking_negatives = self.spec.evaluation.ranking_negatives;
            rec.top_k = self.spec.evaluation.top_k;
            rec.eval_seed = self.spec.seed;
            rec.feedback = self.spec.training.feedback;
        }
        let layout = self.spec.model.layout(prep.input_dim());
        let mut global = match &self.spec.model {
            ModelSpec::TorchScript(ts) => {
                if let Some(dim) = ts.input_dim
                    && dim != prep.input_dim()
                {
                    return Err(JobError::Model(format!(
                        "the torchscript module was built for {dim} inputs, the federation encodes {}",
                        prep.input_dim()
                    )));
                }
                let bytes = self.initial_params.as_deref().ok_or_else(|| JobError::Model("torchscript job without stored initial parameters".into()))?;
                ModelParams::from_safetensors(bytes, &layout).map_err(|e| JobError::Model(format!("initial parameters: {e}")))?
            }
            _ => ModelParams::init(layout.clone(), self.spec.seed),
        };
        if let (Some(rec), Some(bias)) = (&prep.recommendation, global.tensor_mut(rec_names::GLOBAL_BIAS)) {
            // The global bias starts at the federation's mean rating (securely summed).
            bias[0] = rec.mean_rating as f32;
        }
        let trees = match self.spec.model.gbdt() {
            Some(g) => {
                if (prep.rows) < g.min_leaf_rows {
                    return Err(JobError::Trees(confide_gbdt::GbdtError::LeafFloor { rows: prep.rows as f64, floor: g.min_leaf_rows }));
                }
                let features = confide_gbdt::FeatureSet::from_fine_histograms(&self.schema, binning, g.max_bin as usize)?;
                Some(GbdtModel { base_margin: 0.0, features, trees: Vec::new() })
            }
            None => None,
        };
        let optimizer = ServerOptimizer::new(self.spec.strategy.clone(), layout.len());
        let prep_json = serde_json::to_string(&prep).map_err(|e| JobError::StoredState(e.to_string()))?;
        let model = Blob::new(match &trees {
            Some(t) => t.to_bytes(),
            None => self.checkpoint_bytes(&global, 0),
        });
        let optimizer_state = Blob::new(optimizer.state().to_bytes());
        let model_ref = self.model_ref(&model);
        let write = Persist::Start { prep_json: prep_json.clone(), model, optimizer_state };
        Ok((write, Box::new(Trained { prep, prep_json, layout, global, trees, optimizer, model_ref })))
    }

    fn checkpoint_bytes(&self, params: &ModelParams, round: u64) -> Vec<u8> {
        let meta = std::collections::HashMap::from([
            ("confide.job".to_string(), self.id.clone()),
            ("confide.round".to_string(), round.to_string()),
            ("confide.model".to_string(), self.spec.model.label()),
        ]);
        params.to_safetensors(Some(meta))
    }

    /// Applies the summed training contributions with the server optimizer.
    fn server_step(&mut self, now: Instant, at: Attempt, sum: &[f64], participants: Vec<ParticipantRecord>) {
        let Some(trained) = self.trained.as_deref() else {
            return self.finish(JobEnd::Failed(JobError::StoredState("training before statistics".into())));
        };
        let Some(summed) = TrainContribution::from_slice(sum, trained.layout.len()) else {
            return self.attempt_failed(at, "aggregate has the wrong length".into(), participants);
        };
        let mut global = trained.global.clone();
        let mut optimizer = trained.optimizer.clone();
        if let Err(e) = optimizer.step(&mut global, &summed.weighted_update, summed.weight) {
            return self.attempt_failed(at, format!("aggregate refused: {e}"), participants);
        }
        let contributors: Vec<String> = participants.iter().filter(|p| p.status.contributed()).map(|p| p.worker_id.clone()).collect();
        let mut metrics = BTreeMap::from([("contributors".to_string(), contributors.len() as f64)]);
        // DP contributions are unweighted and carry no loss (counts and losses are statistics
        // of the data): their sum's weight is the number of banks, and there is no train loss.
        if self.spec.privacy.is_none() {
            metrics.insert("train_loss".to_string(), summed.mean_loss());
            metrics.insert("train_examples".to_string(), summed.weight.round());
        }
        let model = Blob::new(self.checkpoint_bytes(&global, at.round));
        let adv = Box::new(Advanced { global, trees: None, optimizer, model, metrics, train_participants: participants });
        self.evaluate_or_commit(now, at, adv, contributors);
    }

    /// Applies a tree level's summed histograms (see [`GrowingTree::apply_level`]): the next
    /// level goes to the banks whose histograms are in this sum; a finished tree joins the
    /// ensemble and is evaluated and committed like a training round's model. A leaf floor the
    /// federation's rows cannot meet fails the job with that reason.
    fn grow_step(&mut self, now: Instant, at: Attempt, growth: Growth, sum: &[f64], participants: Vec<ParticipantRecord>) {
        let Growth { mut tree, left_out } = growth;
        let (Some(trained), Some(g)) = (self.trained.as_deref(), self.spec.model.gbdt()) else {
            return self.finish(JobEnd::Failed(JobError::StoredState("a tree level without a tree model".into())));
        };
        let Some(ensemble) = trained.trees.as_ref() else {
            return self.finish(JobEnd::Failed(JobError::StoredState("a tree level before binning".into())));
        };
        let params = GrowParams::new(g, self.spec.training.learning_rate);
        let depth = tree.depth;
        if tree.derives() && participants.iter().any(|p| !p.status.contributed()) {
            // A node derived as parent − sibling needs the sibling summed over the banks the
            // parent was: with one of them missing, the level is asked again for every node.
            let (contributed, dropped): (Vec<ParticipantRecord>, Vec<ParticipantRecord>) =
                participants.into_iter().partition(|p| p.status.contributed());
            let contributors: Vec<String> = contributed.iter().map(|p| p.worker_id.clone()).collect();
            tree.send_all();
            let growth = Growth { tree, left_out: merge_left_out(dropped, left_out) };
            return self.start_phase(now, Step::Grow(Box::new(growth)), at, &contributors);
        }
        if let Some(sigma) = self.spec.privacy.as_ref().and_then(|p| p.noise_multiplier) {
            // A DP job's sum carries every contributing bank's noise of σ·Δ per entry: the
            // split search keeps sides whose hessian the noise could have made (post-processing).
            let banks = participants.iter().filter(|p| p.status.contributed()).count().max(1) as f64;
            let delta = confide_core::spend::tree_level_sensitivity(tree.features.len(), self.spec.training.pos_weight.unwrap_or(1.0));
            tree.set_noise(sigma * delta * banks.sqrt());
        }
        match tree.apply_level(sum, &ensemble.features, &params) {
            Ok(()) => {}
            Err(e @ confide_gbdt::GbdtError::LeafFloor { .. }) => return self.finish(JobEnd::Failed(JobError::Trees(e))),
            Err(e) => return self.attempt_failed(at, format!("tree level {depth}: {e}"), merge_left_out(participants, left_out)),
        }
        let (contributed, dropped): (Vec<ParticipantRecord>, Vec<ParticipantRecord>) =
            participants.into_iter().partition(|p| p.status.contributed());
        let contributors: Vec<String> = contributed.iter().map(|p| p.worker_id.clone()).collect();
        let mut left_out = left_out;
        left_out.extend(dropped);
        if !tree.is_done() {
            let growth = Growth { tree, left_out };
            return self.start_phase(now, Step::Grow(Box::new(growth)), at, &contributors);
        }
        let Some(finished) = tree.finish() else {
            return self.finish(JobEnd::Failed(JobError::StoredState("a complete tree with open nodes".into())));
        };
        let mut model = ensemble.clone();
        let leaves = finished.nodes.iter().filter(|n| matches!(n, confide_gbdt::Node::Leaf { .. })).count();
        let tree_depth = finished.depth();
        model.trees.push(finished);
        let metrics = BTreeMap::from([
            ("contributors".to_string(), contributors.len() as f64),
            ("tree_leaves".to_string(), leaves as f64),
            ("tree_depth".to_string(), f64::from(tree_depth)),
        ]);
        let blob = Blob::new(model.to_bytes());
        let participants = merge_left_out(contributed, left_out);
        let adv = Box::new(Advanced {
            global: trained.global.clone(),
            trees: Some(model),
            optimizer: trained.optimizer.clone(),
            model: blob,
            metrics,
            train_participants: participants,
        });
        self.evaluate_or_commit(now, at, adv, contributors);
    }

    /// Evaluates a round's model when the job evaluates this round, else commits it.
    fn evaluate_or_commit(&mut self, now: Instant, at: Attempt, adv: Box<Advanced>, contributors: Vec<String>) {
        if self.spec.evaluates(at.round) {
            // The evaluated model is written first: workers download it by hash.
            self.persist(Persist::Checkpoint(adv.model.clone()), Then::Evaluate(adv, at, contributors));
        } else {
            self.commit(now, at, adv);
        }
    }

    fn eval_metrics(&self, sum: &[f64]) -> Result<BTreeMap<String, f64>, String> {
        if self.spec.model.is_recommendation() {
            let c = RecommendationEval::from_slice(sum).ok_or("evaluation vector has the wrong length")?;
            Ok(c.metrics(self.spec.evaluation.top_k))
        } else {
            let c = EvalContribution::from_slice(sum, self.spec.evaluation.score_buckets as usize).ok_or("evaluation vector has the wrong length")?;
            Ok(c.metrics())
        }
    }

    fn commit(&mut self, now: Instant, at: Attempt, mut adv: Box<Advanced>) {
        if let Some(detail) = self.divergence(at.round, &adv.metrics) {
            return self.finish(JobEnd::Failed(JobError::Diverged { round: at.round, detail }));
        }
        // Banks that failed an earlier attempt deterministically and were left out of this one
        // show with that outcome.
        for (worker, record) in &self.excluded {
            if !adv.train_participants.iter().any(|p| &p.worker_id == worker) {
                adv.train_participants.push(record.clone());
            }
        }
        adv.train_participants.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let optimizer_state = Blob::new(adv.optimizer.state().to_bytes());
        let record = RoundRecord {
            round: at.round,
            model_hash: adv.model.hash.clone(),
            state_hash: optimizer_state.hash.clone(),
            metrics: adv.metrics.clone(),
            duration_secs: now.saturating_duration_since(at.started).as_secs_f64(),
            completed_at: String::new(),
            participants: adv.train_participants.clone(),
        };
        let write = Persist::Round { attempt: at.attempt, record, model: adv.model.clone(), optimizer_state };
        self.persist(write, Then::RoundCommitted(adv, at.round));
    }

    /// The job's end when banks failed deterministically and too few others remain to retry
    /// without them (None: retry).
    fn not_retried(&self, round: u64) -> Option<JobError> {
        if self.excluded.is_empty() {
            return None;
        }
        let remaining = self.eligible().iter().filter(|w| !self.excluded.contains_key(*w)).count();
        let needed = self.spec.selection.min_workers;
        if remaining >= needed {
            return None;
        }
        let failures = self.excluded.values().map(|p| format!("{} {}: {}", p.worker_id, p.status, p.reason)).collect::<Vec<_>>().join("; ");
        Some(JobError::NotRetried { round, failures, remaining, needed })
    }

    /// Why round `round`'s metrics show divergence, if they do (see the module docs).
    fn divergence(&self, round: u64, metrics: &BTreeMap<String, f64>) -> Option<String> {
        // A binary classifier's losses are log losses: a coin flip scores ln 2 (a positive
        // class weight scales the training loss up to that factor).
        let coin = (!self.spec.model.is_recommendation()).then(|| {
            let weight = self.spec.training.pos_weight.unwrap_or(1.0).max(1.0);
            (std::f64::consts::LN_2 * weight, std::f64::consts::LN_2)
        });
        let losses = [("train loss", "train_loss", coin.map(|c| c.0)), ("evaluation log loss", "log_loss", coin.map(|c| c.1)), ("evaluation rmse", "rmse", None)];
        for (label, key, coin) in losses {
            let Some(&value) = metrics.get(key) else { continue };
            if !value.is_finite() {
                return Some(format!("{label} {value} is not finite"));
            }
            let first = self.first_metrics.as_ref().and_then(|m| m.get(key)).copied().filter(|f| f.is_finite());
            if let Some(first) = first.filter(|_| round > 1)
                && value > first * DIVERGENCE_RATIO
                && value > first + DIVERGENCE_MARGIN
            {
                return Some(format!("{label} {} (round 1: {})", loss(value), loss(first)));
            }
            if let Some(coin) = coin
                && value > coin * DIVERGENCE_RATIO
            {
                return Some(format!("{label} {} (a coin flip scores {})", loss(value), loss(coin)));
            }
        }
        None
    }

    /// Remembers the banks that failed this attempt deterministically (see [`Self::excluded`]).
    fn exclude(&mut self, participants: &[ParticipantRecord], deterministic: &[String]) {
        for p in participants.iter().filter(|p| p.status == ParticipantStatus::Refused || deterministic.contains(&p.worker_id)) {
            self.excluded.insert(p.worker_id.clone(), p.clone());
        }
    }

    fn attempt_failed(&mut self, at: Attempt, reason: String, participants: Vec<ParticipantRecord>) {
        tracing::warn!(job = %self.id, round = at.round, attempt = at.attempt, %reason, "round attempt failed");
        self.persist(Persist::FailedAttempt { round: at.round, attempt: at.attempt, participants }, Then::Retry { at, reason });
    }

    /// Continues once a write is durable.
    fn then(&mut self, now: Instant, then: Then) {
        match then {
            Then::StartTraining(trained) => {
                self.excluded.clear();
                self.trained = Some(trained);
                self.stage = Stage::Waiting(Attempt { round: 1, attempt: 1, started: now });
            }
            Then::Evaluate(adv, at, contributors) => self.start_phase(now, Step::Evaluate(adv), at, &contributors),
            Then::RoundCommitted(adv, round) => {
                self.excluded.clear();
                self.early.observe(round, &adv.metrics);
                if round == 1 {
                    self.first_metrics = Some(adv.metrics.clone());
                }
                if let Some(t) = self.trained.as_deref_mut() {
                    t.model_ref = pb::ModelRef {
                        hash: adv.model.hash.clone(),
                        size_bytes: adv.model.bytes.len() as u64,
                        spec_json: self.model_spec_json.clone(),
                    };
                    let Advanced { global, optimizer, trees, .. } = *adv;
                    t.global = global;
                    t.optimizer = optimizer;
                    t.trees = trees;
                }
                if let Some(reason) = self.early.should_stop() {
                    self.finish(JobEnd::Completed { stop_reason: Some(reason) });
                } else if round >= self.spec.training.rounds {
                    self.finish(JobEnd::Completed { stop_reason: None });
                } else {
                    self.stage = Stage::Waiting(Attempt { round: round + 1, attempt: 1, started: now });
                }
            }
            Then::Retry { at, reason } => {
                let event = pb::job_event::Kind::RoundFailed(pb::RoundAttemptFailed { reason: reason.clone() });
                self.effects.push_back(Effect::Publish { round: at.round, event });
                if let Some(end) = self.not_retried(at.round) {
                    self.finish(JobEnd::Failed(end));
                } else if at.attempt >= self.spec.selection.max_round_attempts {
                    let attempts = at.attempt;
                    let end = if at.round == 0 {
                        JobError::StatisticsFailed { attempts, last: reason }
                    } else {
                        JobError::RoundFailed { round: at.round, attempts, last: reason }
                    };
                    self.finish(JobEnd::Failed(end));
                } else {
                    self.stage = Stage::Waiting(Attempt { round: at.round, attempt: at.attempt + 1, started: now });
                }
            }
        }
    }
}

/// A loss as the divergence message shows it.
fn loss(v: f64) -> String {
    if v.abs() < 1e6 { format!("{v:.4}") } else { format!("{v:.3e}") }
}

fn record(worker: &str, status: ParticipantStatus, reason: &str) -> ParticipantRecord {
    ParticipantRecord { worker_id: worker.to_string(), status, reason: reason.to_string() }
}

/// A tree round's outcomes: the last level's, then those of the banks earlier levels went on
/// without (by worker id).
fn merge_left_out(mut participants: Vec<ParticipantRecord>, left_out: Vec<ParticipantRecord>) -> Vec<ParticipantRecord> {
    for record in left_out {
        if !participants.iter().any(|p| p.worker_id == record.worker_id) {
            participants.push(record);
        }
    }
    participants
}

/// Combines train and evaluation outcomes: the status is the training one (whether the
/// worker's update is in the model); an evaluation failure is added as the reason.
fn merge(train: Vec<ParticipantRecord>, eval: Vec<ParticipantRecord>) -> Vec<ParticipantRecord> {
    train
        .into_iter()
        .map(|t| match eval.iter().find(|e| e.worker_id == t.worker_id) {
            Some(e) if !e.status.contributed() && t.status.contributed() => {
                ParticipantRecord { reason: format!("evaluation {}: {}", e.status, e.reason), ..t }
            }
            _ => t,
        })
        .collect()
}
