//! # confide-harness — a whole federation in memory, on a virtual clock
//!
//! Drives one coordinator [`JobMachine`] and N banks deterministically, with no sockets,
//! threads, database or wall clock, so tests can state what a round does as a specification:
//! deadlines, dropouts at every phase, refusals, cancel, retries, resume from the store's
//! committed state after a crash, and a full disk during a commit.
//!
//! - [`Federation`] carries the machine's effects out the way the tokio runner does (routes
//!   tasks to banks, contributions back, writes to a [`MemoryStore`]) and advances the
//!   [`VirtualClock`] to the next timeout when nothing else can happen.
//! - A bank is anything implementing [`Bank`]: [`ScriptedBank`] answers in plain or scripted
//!   ways (silence, failure reports, wrong vectors — the hook for playing a malicious or
//!   broken bank); [`honest::HonestBank`] is the worker's real `TaskMachine` with a fake
//!   `Compute`, secure aggregation included.
//! - [`fixture`] makes small tabular datasets whose statistics give a real preprocessing.
//!
//! Later tests play a malicious coordinator by feeding scripted wire messages straight into
//! banks ([`Bank::deliver`]) instead of going through the machine.

pub mod fixture;
#[cfg(feature = "honest")]
pub mod honest;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use confide_coordinator::hub::WorkerInfo;
use confide_coordinator::round::errors::PhaseError;
use confide_coordinator::round::machine::{Effect, JobEnd, JobMachine, JobSnapshot};
use confide_proto::v1::{self as pb, contribution::Body};
pub use confide_secagg::testing::VirtualClock;

pub use store::MemoryStore;

/// A bank as the coordinator sees it: it takes tasks and relays, and uploads contributions.
pub trait Bank {
    /// What it registered (id, datasets, signing key).
    fn info(&self) -> WorkerInfo;
    /// A task, relay or cancel arrived on its task stream.
    fn deliver(&mut self, now: Instant, task: pb::Task);
    /// Its next upload: (task id, job id, round, contribution).
    fn poll_upload(&mut self) -> Option<Upload>;
    /// The coordinator's answer to its last upload of `task_id`.
    fn handle_ack(&mut self, _now: Instant, _task_id: &str, _result: Result<(), String>) {}
    /// The next blob it wants to download (by hash).
    fn poll_download(&mut self) -> Option<String> {
        None
    }
    /// The answer to its last download: the bytes, or None when the coordinator refused.
    fn handle_download(&mut self, _now: Instant, _bytes: Option<std::sync::Arc<Vec<u8>>>) {}
    /// When it wants [`Bank::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Time passed.
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// One contribution a bank uploads.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The task it answers.
    pub task_id: String,
    /// What it sends.
    pub body: Body,
}

/// How the job of a [`Federation`] ended, readable by tests.
#[derive(Debug)]
pub enum Ended {
    /// Not yet.
    Running,
    /// [`JobEnd`] as the machine gave it.
    Finished(JobEnd),
}

/// A coordinator machine, its store and its banks.
pub struct Federation {
    /// The virtual clock.
    pub clock: VirtualClock,
    /// The coordinator's job.
    pub machine: JobMachine,
    /// What the coordinator has written.
    pub store: MemoryStore,
    banks: BTreeMap<String, Box<dyn Bank>>,
    connected: BTreeSet<String>,
    /// Open tasks: task id → the bank it was given to.
    open: BTreeMap<String, String>,
    /// Every task the machine assigned, in order: (bank, task).
    pub assigned: Vec<(String, pb::Task)>,
    /// Every relay and cancel sent, in order: (bank, message).
    pub relayed: Vec<(String, pb::Task)>,
    /// Every event published, in order: (round, event).
    pub events: Vec<(u64, pb::job_event::Kind)>,
    /// Contributions the machine rejected: (bank, error).
    pub rejected: Vec<(String, PhaseError)>,
    /// How the job ended.
    pub ended: Ended,
    reseeds: u8,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("banks", &self.banks.keys()).field("ended", &self.ended).finish()
    }
}

/// Upper bound on steps of [`Federation::run`] (a machine that never settles is a bug).
const MAX_STEPS: usize = 200_000;

impl Federation {
    /// A federation running `snapshot`'s job with `banks`, all connected.
    pub fn new(snapshot: JobSnapshot, banks: Vec<Box<dyn Bank>>) -> Self {
        let clock = VirtualClock::default();
        let store = MemoryStore::from_snapshot(&snapshot);
        let machine = JobMachine::new(snapshot, [7; 32], clock.now()).unwrap_or_else(|e| panic!("job snapshot: {e}"));
        let banks: BTreeMap<String, Box<dyn Bank>> = banks.into_iter().map(|b| (b.info().id, b)).collect();
        let connected = banks.keys().cloned().collect();
        let mut f = Self {
            clock,
            machine,
            store,
            banks,
            connected,
            open: BTreeMap::new(),
            assigned: Vec::new(),
            relayed: Vec::new(),
            events: Vec::new(),
            rejected: Vec::new(),
            ended: Ended::Running,
            reseeds: 0,
        };
        f.announce_workers();
        f
    }

    /// The workers the coordinator sees connected.
    fn connected_infos(&self) -> Vec<WorkerInfo> {
        self.banks.iter().filter(|(id, _)| self.connected.contains(*id)).map(|(_, b)| b.info()).collect()
    }

    fn announce_workers(&mut self) {
        let infos = self.connected_infos();
        self.machine.handle_workers(self.clock.now(), infos);
    }

    /// Disconnects a bank (its task stream closes).
    pub fn disconnect(&mut self, bank: &str) {
        self.connected.remove(bank);
        self.machine.handle_disconnect(self.clock.now(), bank);
        self.announce_workers();
    }

    /// Reconnects a bank.
    pub fn connect(&mut self, bank: &str) {
        if self.banks.contains_key(bank) {
            self.connected.insert(bank.to_string());
            self.announce_workers();
        }
    }

    /// A bank joins (registers and connects).
    pub fn add_bank(&mut self, bank: Box<dyn Bank>) {
        let id = bank.info().id;
        self.banks.insert(id.clone(), bank);
        self.connect(&id);
    }

    /// Replaces a bank (a restarted worker keeps its id; it lost what was in memory).
    pub fn replace_bank(&mut self, bank: Box<dyn Bank>) {
        let id = bank.info().id;
        self.banks.insert(id.clone(), bank);
        self.machine.handle_disconnect(self.clock.now(), &id);
        self.announce_workers();
    }

    /// The banks, for another federation (their ledgers and policies keep what they recorded).
    pub fn into_banks(self) -> Vec<Box<dyn Bank>> {
        self.banks.into_values().collect()
    }

    /// The coordinator crashes and restarts: a new machine is built from what the store has
    /// committed, and every bank reconnects.
    pub fn crash_and_resume(&mut self) {
        self.reseeds = self.reseeds.wrapping_add(1);
        let snapshot = self.store.snapshot();
        self.machine = JobMachine::new(snapshot, [self.reseeds; 32], self.clock.now()).unwrap_or_else(|e| panic!("resume: {e}"));
        self.open.clear();
        self.ended = Ended::Running;
        self.announce_workers();
    }

    /// Cancels the job (or shuts the coordinator down).
    pub fn stop(&mut self) {
        self.machine.handle_stop();
    }

    /// Carries out the machine's effects and the banks' uploads until neither has anything
    /// left; true when something happened.
    pub fn step(&mut self) -> bool {
        let mut progressed = false;
        while let Some(effect) = self.machine.poll_effect() {
            progressed = true;
            let now = self.clock.now();
            match effect {
                Effect::Assign { worker, task } => {
                    self.open.insert(task.task_id.clone(), worker.clone());
                    self.assigned.push((worker.clone(), task.clone()));
                    self.send(&worker, task);
                }
                Effect::Relay { worker, task } => {
                    self.relayed.push((worker.clone(), task.clone()));
                    self.send(&worker, task);
                }
                Effect::CloseTasks(ids) => {
                    for id in ids {
                        self.open.remove(&id);
                    }
                }
                Effect::Persist(write) => {
                    let r = self.store.apply(&write);
                    self.machine.handle_persisted(now, r);
                }
                Effect::Publish { round, event } => self.events.push((round, event)),
                Effect::Finish(end) => self.ended = Ended::Finished(end),
            }
        }
        let ids: Vec<String> = self.banks.keys().cloned().collect();
        for id in &ids {
            while let Some(hash) = self.banks.get_mut(id).and_then(|b| b.poll_download()) {
                progressed = true;
                // As the coordinator's hub does: only blobs named in tasks sent to this bank.
                let granted = self.assigned.iter().any(|(w, t)| w == id && confide_coordinator::hub::blobs_of(t).contains(&hash));
                let bytes = if granted { self.store.blobs.get(&hash).cloned() } else { None };
                let now = self.clock.now();
                if let Some(b) = self.banks.get_mut(id) {
                    b.handle_download(now, bytes);
                }
            }
        }
        for id in ids {
            while let Some(upload) = self.banks.get_mut(&id).and_then(|b| b.poll_upload()) {
                progressed = true;
                let now = self.clock.now();
                if !self.connected.contains(&id) {
                    continue;
                }
                let result = match self.open.get(&upload.task_id) {
                    Some(owner) if *owner == id => {
                        self.machine.handle_contribution(now, &id, &upload.task_id, upload.body).map_err(|e| {
                            self.rejected.push((id.clone(), e.clone()));
                            e.to_string()
                        })
                    }
                    Some(_) => Err(format!("task `{}` was not given to worker `{id}`", upload.task_id)),
                    None => Err(format!("task `{}` is not open", upload.task_id)),
                };
                if let Some(b) = self.banks.get_mut(&id) {
                    b.handle_ack(now, &upload.task_id, result);
                }
            }
        }
        progressed
    }

    fn send(&mut self, worker: &str, task: pb::Task) {
        let now = self.clock.now();
        match self.banks.get_mut(worker) {
            Some(b) if self.connected.contains(worker) => b.deliver(now, task),
            _ => self.machine.handle_disconnect(now, worker),
        }
    }

    /// Moves the clock forward by `d` and lets everyone whose timeout passed act.
    pub fn advance(&mut self, d: std::time::Duration) {
        self.clock.advance(d);
        self.fire_timeouts();
    }

    fn fire_timeouts(&mut self) {
        let now = self.clock.now();
        self.machine.handle_timeout(now);
        let due: Vec<String> = self
            .banks
            .iter()
            .filter(|(id, b)| self.connected.contains(*id) && b.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(b) = self.banks.get_mut(&id) {
                b.handle_timeout(now);
            }
        }
    }

    /// Open tasks as (task id, bank).
    pub fn open_tasks(&self) -> Vec<(String, String)> {
        self.open.iter().map(|(t, w)| (t.clone(), w.clone())).collect()
    }

    /// Hands the machine a contribution as if `worker` had uploaded it (a malicious or broken
    /// bank's message), routed like the coordinator's hub does; returns the answer it would get.
    pub fn inject(&mut self, worker: &str, task_id: &str, body: Body) -> Result<(), String> {
        let now = self.clock.now();
        match self.open.get(task_id) {
            Some(owner) if owner == worker => self.machine.handle_contribution(now, worker, task_id, body).map_err(|e| e.to_string()),
            Some(_) => Err(format!("task `{task_id}` was not given to worker `{worker}`")),
            None => Err(format!("task `{task_id}` is not open")),
        }
    }

    /// The earliest timeout anyone asked for.
    fn next_timeout(&self) -> Option<Instant> {
        let banks = self.banks.iter().filter(|(id, _)| self.connected.contains(*id)).filter_map(|(_, b)| b.poll_timeout());
        banks.chain(self.machine.poll_timeout()).min()
    }

    /// Runs until the job ends, or nothing can happen any more (no event, no timeout).
    pub fn run(&mut self) -> &Ended {
        self.run_until(|_| false)
    }

    /// Runs until the job ends, `stop` says so (checked after every step), or nothing can
    /// happen any more.
    pub fn run_until(&mut self, mut stop: impl FnMut(&Federation) -> bool) -> &Ended {
        for _ in 0..MAX_STEPS {
            if matches!(self.ended, Ended::Finished(_)) || stop(self) {
                return &self.ended;
            }
            if self.step() {
                continue;
            }
            let Some(t) = self.next_timeout() else { return &self.ended };
            self.clock.advance_to(t);
            self.fire_timeouts();
        }
        panic!("the federation did not settle in {MAX_STEPS} steps");
    }

    /// The job's end, for assertions: completed (with the stop reason), or panics naming what
    /// happened instead.
    pub fn completed(&self) -> Option<String> {
        match &self.ended {
            Ended::Finished(JobEnd::Completed { stop_reason }) => stop_reason.clone(),
            other => panic!("the job did not complete: {other:?}; events: {:?}", self.events),
        }
    }

    /// The job's error, for assertions (panics when it did not fail).
    pub fn failure(&self) -> String {
        match &self.ended {
            Ended::Finished(JobEnd::Failed(e)) => e.to_string(),
            other => panic!("the job did not fail: {other:?}"),
        }
    }

    /// Reasons of the published `RoundFailed` events, in order.
    pub fn failed_attempt_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                pb::job_event::Kind::RoundFailed(f) => Some(f.reason.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What a [`ScriptedBank`] does with a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// Contribute the honest vector (plain aggregation only).
    Honest,
    /// Never answer.
    Silent,
    /// Report a failure of this kind.
    Fail(confide_core::outcome::FailureKind, String),
    /// Contribute this exact vector instead (a broken or malicious bank).
    Send(Vec<f64>),
}

/// A bank that answers plain-aggregation tasks by script: the honest vector from
/// [`fixture::FakeCompute`], silence, a failure report, or any vector. Per phase and round the
/// script can differ ([`ScriptedBank::on`]).
pub struct ScriptedBank {
    info: WorkerInfo,
    compute: fixture::FakeCompute,
    default: Script,
    scripts: BTreeMap<(fixture::Phase, u64), Script>,
    uploads: std::collections::VecDeque<Upload>,
    /// Every task delivered to it, in order (relays and cancels included).
    pub received: Vec<pb::Task>,
}

impl std::fmt::Debug for ScriptedBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBank").field("id", &self.info.id).finish()
    }
}

impl ScriptedBank {
    /// An honest plain bank named `id` holding `compute`'s data.
    pub fn new(id: &str, compute: fixture::FakeCompute) -> Self {
        let info = fixture::worker_info(id, &compute, None);
        Self { info, compute, default: Script::Honest, scripts: BTreeMap::new(), uploads: Default::default(), received: Vec::new() }
    }

    /// What it does by default.
    pub fn by_default(mut self, script: Script) -> Self {
        self.default = script;
        self
    }

    /// What it does in `phase` of `round`.
    pub fn on(mut self, phase: fixture::Phase, round: u64, script: Script) -> Self {
        self.scripts.insert((phase, round), script);
        self
    }

    /// What it registers as offering instead of the toy dataset (another schema, another
    /// dataset): the coordinator does not select it for a job it does not fit.
    pub fn offering(mut self, datasets: Vec<pb::DatasetOffer>) -> Self {
        self.info.datasets = datasets;
        self
    }

    /// Boxed, for [`Federation::new`].
    pub fn boxed(self) -> Box<dyn Bank> {
        Box::new(self)
    }
}

impl Bank for ScriptedBank {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn deliver(&mut self, _now: Instant, task: pb::Task) {
        self.received.push(task.clone());
        let Some(phase) = task.kind.as_ref().and_then(fixture::Phase::of) else { return };
        let script = self.scripts.get(&(phase, task.round)).unwrap_or(&self.default).clone();
        let body = match script {
            Script::Silent => return,
            Script::Fail(kind, reason) => Body::Failure(pb::TaskFailure::new(kind, reason)),
            Script::Send(values) => Body::Plain(pb::PlainVector { values }),
            Script::Honest => match task.kind.as_ref().map(|k| self.compute.compute(k)) {
                Some(Ok(values)) => Body::Plain(pb::PlainVector { values }),
                Some(Err(f)) => Body::Failure(f),
                None => return,
            },
        };
        self.uploads.push_back(Upload { task_id: task.task_id, body });
    }

    fn poll_upload(&mut self) -> Option<Upload> {
        self.uploads.pop_front()
    }
}
