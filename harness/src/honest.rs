//! An honest bank: the worker's real [`TaskMachine`]s (admission, secure-aggregation client,
//! reporting) driven exactly as the worker's session drives them, with the bank's real
//! [`Policy`] (in memory) and [`FakeCompute`] in place of libtorch. Secure aggregation is real:
//! keys, shares, masks and the consistency round all go through the coordinator's machine.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use confide_coordinator::hub::WorkerInfo;
use confide_core::contribution::{TRAIN_EXTRAS, TrainContribution};
use confide_core::metrics::EvalContribution;
use confide_proto::v1 as pb;
use confide_worker::config::PolicyConfig;
use confide_worker::policy::Policy;
use confide_worker::task::{
    self, BankProfile, Blob, ComputeRequest, DatasetRef, Effect, Failure, Incoming, TaskKind, TaskMachine, TaskOutcome,
};

use crate::fixture::{self, FakeCompute};
use crate::{Bank, Upload};

/// What a bank sent, by task id, in order.
pub type Wiretap = Arc<std::sync::Mutex<Vec<(String, pb::Contribution)>>>;

/// What a bank's local computations returned, with their requests, in order: the vectors
/// before the task machine encodes and masks them ([`HonestBank::computations`]).
pub type ComputeTap = Arc<std::sync::Mutex<Vec<(ComputeRequest, Vec<f64>)>>>;

/// Tasks one honest bank runs at once (the worker's default cap).
const MAX_TASKS: usize = 8;

/// A bank running the worker's task logic.
pub struct HonestBank {
    profile: BankProfile,
    compute: FakeCompute,
    policy: Policy,
    ledger: confide_worker::ledger::Ledger,
    machines: BTreeMap<String, TaskMachine>,
    uploads: VecDeque<Upload>,
    downloads: VecDeque<(String, Blob, String)>,
    seeds: u64,
    /// How each task ended, in order: (task id, outcome).
    pub outcomes: Vec<(String, TaskOutcome)>,
    /// Every contribution this bank sent, in order (what left the bank); shared, so a test
    /// keeps a tap on it after handing the bank to a federation ([`HonestBank::wiretap`]).
    sent: Wiretap,
    /// A local computation failure to report instead of computing (a broken data file).
    pub fail_with: Option<Failure>,
    /// The seed the last training computation was asked to train from.
    last_training_seed: std::cell::Cell<Option<u64>>,
    /// Tree jobs' boosters, as the worker keeps them per dataset.
    boosters: confide_worker::trees::Boosters,
    /// Every successful computation's request and vector.
    computed: ComputeTap,
}

impl std::fmt::Debug for HonestBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HonestBank").field("id", &self.profile.institution_id).finish()
    }
}

/// The signing key of harness bank `id` (fixed per id, so tests are reproducible).
pub fn identity(id: &str) -> ed25519_dalek::SigningKey {
    let digest = confide_core::sha256_hex(format!("harness identity {id}").as_bytes());
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    ed25519_dalek::SigningKey::from_bytes(&secret)
}

impl HonestBank {
    /// An honest bank `id` holding `compute`'s data, under `policy`.
    pub fn new(id: &str, compute: FakeCompute, policy: PolicyConfig) -> Self {
        let profile = BankProfile {
            institution_id: id.into(),
            identity: identity(id),
            datasets: vec![DatasetRef { name: "toy".into(), schema_fingerprint: fixture::schema().fingerprint() }],
            unavailable: Vec::new(),
            one_class: Vec::new(),
            min_participants: policy.min_participants,
            federation_ca: None,
            allow_plain_aggregation: policy.allow_plain_aggregation,
            share_error_details: policy.share_error_details,
            floors: policy.floors(),
        };
        Self {
            profile,
            compute,
            ledger: confide_worker::ledger::Ledger::in_memory(policy.protect_counts),
            policy: Policy::in_memory(policy),
            machines: BTreeMap::new(),
            uploads: VecDeque::new(),
            downloads: VecDeque::new(),
            seeds: 0,
            outcomes: Vec::new(),
            sent: Wiretap::default(),
            fail_with: None,
            last_training_seed: std::cell::Cell::new(None),
            boosters: Default::default(),
            computed: Default::default(),
        }
    }

    /// A tap on everything this bank sends from now on (what left the bank).
    pub fn wiretap(&self) -> Wiretap {
        Arc::clone(&self.sent)
    }

    /// A tap on the vectors this bank's computations return from now on (what the task machine
    /// then encodes, masks and sends).
    pub fn computations(&self) -> ComputeTap {
        Arc::clone(&self.computed)
    }

    /// The seed its last local training started from (the task's, mixed with the bank's secret).
    pub fn last_training_seed(&self) -> Option<u64> {
        self.last_training_seed.get()
    }

    /// With the default policy.
    pub fn with_defaults(id: &str, compute: FakeCompute) -> Self {
        Self::new(id, compute, PolicyConfig::default())
    }

    /// Boxed, for [`crate::Federation::new`].
    pub fn boxed(self) -> Box<dyn Bank> {
        Box::new(self)
    }

    fn seed(&mut self) -> [u8; 32] {
        self.seeds += 1;
        let digest = confide_core::sha256_hex(format!("{} {}", self.profile.institution_id, self.seeds).as_bytes());
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&digest.as_bytes()[..32]);
        seed
    }

    /// The deterministic local computation.
    fn run(&self, req: &ComputeRequest) -> Result<Vec<f64>, Failure> {
        if let Some(f) = &self.fail_with {
            return Err(f.clone());
        }
        if let TaskKind::Train { local, .. } = &req.kind {
            self.last_training_seed.set(Some(local.seed));
        }
        // A DP tree job's banks add the worker's noise (its terms, the request's noise seed).
        let dp = req.dp.as_ref().map(|dp| (dp, req.noise_seed));
        match &req.kind {
            // A tree job's tasks run the worker's real tree code on the bank's table (evaluation
            // scores the same rows: the harness has one split).
            TaskKind::Stats { fine_histograms: true, .. } => confide_worker::trees::binning_stats(&self.compute.table, &fixture::schema(), dp),
            TaskKind::Stats { .. } => Ok(confide_datasets::local_stats(&self.compute.table, &fixture::schema())),
            TaskKind::Grow { model, tree, pos_weight, .. } => {
                let checkpoint = req.checkpoint.as_deref().ok_or_else(|| Failure::internal("the checkpoint was not fetched"))?;
                let subsample = model.spec.gbdt().map_or(1.0, |g| g.subsample);
                let (table, schema) = (&self.compute.table, fixture::schema());
                confide_worker::trees::level_contribution(&self.boosters, table, &schema, &req.job_id, checkpoint, tree, *pos_weight, subsample, dp)
            }
            TaskKind::Evaluate { model, buckets, .. } if model.spec.gbdt().is_some() => {
                let checkpoint = req.checkpoint.as_deref().ok_or_else(|| Failure::internal("the checkpoint was not fetched"))?;
                confide_worker::trees::eval_contribution(&self.compute.table, &fixture::schema(), checkpoint, *buckets, dp)
            }
            TaskKind::Train { local, .. } => {
                let params = req.vector_len.checked_sub(TRAIN_EXTRAS).ok_or_else(|| Failure::protocol("vector too short"))?;
                let global = vec![0.0f32; params];
                // Like real training, the result depends (slightly) on the seed it starts from.
                let delta = self.compute.delta + (local.seed % 997) as f64 * 1e-9;
                let local: Vec<f32> = global.iter().map(|g| g + delta as f32).collect();
                let (samples, loss) = if self.compute.unweighted { (1, 0.0) } else { (self.compute.rows(), self.compute.loss) };
                let c = TrainContribution::from_training(&local, &global, samples, loss).map_err(Failure::training)?;
                Ok(c.to_vec())
            }
            TaskKind::Evaluate { buckets, .. } => {
                // Like a real model's, the scores change from round to round.
                let labels = &self.compute.table.labels;
                let shift = req.round as usize;
                let probs: Vec<f32> = (0..labels.len()).map(|i| (((i + shift) % 10) as f32 + 0.5) / 10.0).collect();
                Ok(EvalContribution::from_predictions(&probs, labels, *buckets).to_vec())
            }
        }
    }

    /// Carries out a machine's effects, as the worker's session does (computations answer at
    /// once: the harness's banks are fast).
    fn drive(&mut self, task_id: &str, now: Instant) {
        loop {
            let Some(machine) = self.machines.get_mut(task_id) else { return };
            let Some(effect) = machine.poll_effect() else { return };
            match effect {
                Effect::Admit(req) => {
                    let r = self.policy.admit_request(&req);
                    if let Some(m) = self.machines.get_mut(task_id) {
                        m.handle_admission(r);
                    }
                }
                Effect::Ledger(check) => {
                    let r = self.ledger.admit(&check);
                    if let Some(m) = self.machines.get_mut(task_id) {
                        m.handle_ledger(r, now);
                    }
                }
                Effect::Fetch(req) => self.downloads.push_back((task_id.to_string(), req.blob, req.hash)),
                Effect::Compute(req) => {
                    let r = self.run(&req);
                    if let Ok(v) = &r {
                        self.computed.lock().unwrap_or_else(|p| p.into_inner()).push((req.clone(), v.clone()));
                    }
                    if let Some(m) = self.machines.get_mut(task_id) {
                        m.handle_computed(r);
                    }
                }
                Effect::Submit(s) => {
                    self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((task_id.to_string(), s.contribution.clone()));
                    if let Some(body) = s.contribution.body {
                        self.uploads.push_back(Upload { task_id: task_id.to_string(), body });
                    }
                }
                Effect::Finished(outcome) => {
                    self.outcomes.push((task_id.to_string(), outcome));
                    self.machines.remove(task_id);
                    return;
                }
            }
        }
    }
}

impl Bank for HonestBank {
    fn info(&self) -> WorkerInfo {
        let key = self.profile.identity.verifying_key();
        fixture::worker_info(&self.profile.institution_id, &self.compute, Some(&key))
    }

    fn deliver(&mut self, now: Instant, wire: pb::Task) {
        let seed = self.seed();
        match task::receive(&self.profile, wire, self.machines.len(), MAX_TASKS, seed) {
            Incoming::Start(machine) => {
                let id = machine.id().task_id.clone();
                self.machines.insert(id.clone(), *machine);
                self.drive(&id, now);
            }
            Incoming::Relay { task_id, message } => {
                if let Some(m) = self.machines.get_mut(&task_id) {
                    m.handle_relay(&message, now);
                    self.drive(&task_id, now);
                }
            }
            Incoming::Cancel { task_id, reason } => {
                if let Some(m) = self.machines.get_mut(&task_id) {
                    m.handle_cancel(reason);
                    self.drive(&task_id, now);
                }
            }
        }
    }

    fn poll_upload(&mut self) -> Option<Upload> {
        self.uploads.pop_front()
    }

    fn handle_ack(&mut self, now: Instant, task_id: &str, result: Result<(), String>) {
        if let Some(m) = self.machines.get_mut(task_id) {
            m.handle_submitted(result.map_err(Failure::protocol), now);
            self.drive(task_id, now);
        }
    }

    fn poll_download(&mut self) -> Option<String> {
        self.downloads.front().map(|(_, _, hash)| hash.clone())
    }

    fn handle_download(&mut self, now: Instant, bytes: Option<Arc<Vec<u8>>>) {
        let Some((task_id, blob, hash)) = self.downloads.pop_front() else { return };
        let result = bytes.ok_or_else(|| Failure::protocol(format!("no blob {hash}")));
        if let Some(m) = self.machines.get_mut(&task_id) {
            m.handle_fetched(blob, result);
            self.drive(&task_id, now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.machines.values().filter_map(TaskMachine::poll_timeout).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> =
            self.machines.iter().filter(|(_, m)| m.poll_timeout().is_some_and(|t| t <= now)).map(|(id, _)| id.clone()).collect();
        for id in due {
            if let Some(m) = self.machines.get_mut(&id) {
                m.handle_timeout(now);
            }
            self.drive(&id, now);
        }
    }
}
