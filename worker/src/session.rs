//! The session driver: the tokio side of a bank, shared by the real worker and the benchmarks'
//! simulated institutions. It dials out to the coordinator (TLS when configured), registers,
//! opens the task stream and runs one [`TaskMachine`] per task — routing relays and
//! cancellations to them, executing their [`Effect`]s (policy checks, blob downloads through a
//! small cache, the blocking [`Compute`] on the blocking pool, uploads with the crash drills
//! around secure-aggregation messages) and firing their timers — and reconnects with
//! exponential backoff whenever the coordinator is unreachable or restarts. Every
//! [`crate::catalog::POLL_INTERVAL`] it has the computation look at its data files
//! ([`Compute::refresh`]) and registers again when the offers changed. What waiting
//! cannot fix — a certificate fault, TLS on one side only, another process holding this
//! identity — ends [`run`] with a [`Refused`] naming it.
//!
//! Everything a task decides lives in [`crate::task`]; this file only moves bytes and time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confide_proto::v1::{self as pb, RegisterRequest, SubscribeRequest, contribution::Body, federation_client::FederationClient};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::audit::{self, AuditLog};
use crate::compute::Compute;
use crate::failure::Failure;
use crate::fault::Fault;
use crate::policy::Policy;
use crate::task::{self, BankProfile, Blob, BlobRequest, Effect, Incoming, Submission, TaskMachine, TaskOutcome};
use crate::transport::{self, TaskAddress};

/// Blobs kept in memory (the current global, the one being evaluated, a custom module).
const BLOB_CACHE: usize = 5;

/// One bank as the driver runs it: who it is, what it computes, its rules and where its
/// coordinator is.
pub struct Bank<C> {
    /// Identity, offered datasets and floor on participants, as the task machines see them.
    pub profile: BankProfile,
    /// The local computation.
    pub compute: C,
    /// The bank's durable rules.
    pub policy: Policy,
    /// What it put into which sums.
    pub ledger: crate::ledger::Ledger,
    /// The privacy budget each dataset has left: DP tasks are charged here at admission.
    pub budget: crate::budget::Budget,
    /// Coordinator URL (`https://` with `tls`, else `http://`).
    pub coordinator: String,
    /// Mutual TLS files (None: plaintext, development only).
    pub tls: Option<confide_tls::TlsFiles>,
    /// A crash drill, if configured.
    pub fault: Option<Fault>,
    /// Tasks run at once; more are answered "worker busy".
    pub max_concurrent_tasks: usize,
    /// Downloaded checkpoints and modules, by hash.
    pub blobs: BlobCache,
    /// The bank's audit log: every upload is recorded here before it is sent, and not sent if
    /// it cannot be recorded. None only for the benchmarks' simulated banks.
    pub audit: Option<AuditLog>,
}

impl<C> std::fmt::Debug for Bank<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bank")
            .field("institution", &self.profile.institution_id)
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl<C: Compute> Bank<C> {
    /// This institution's id.
    pub fn id(&self) -> &str {
        &self.profile.institution_id
    }

    /// The profile the next task's machine gets: the datasets as the computation offers them
    /// now (they change when files do), the rest as configured.
    fn task_profile(&self) -> BankProfile {
        BankProfile {
            datasets: self.compute.offers(),
            unavailable: self.compute.unavailable(),
            one_class: self.compute.one_class(),
            ..self.profile.clone()
        }
    }

    fn register_request(&self) -> RegisterRequest {
        RegisterRequest {
            institution_id: self.profile.institution_id.clone(),
            datasets: self
                .compute
                .offers()
                .iter()
                .map(|d| pb::DatasetOffer { name: d.name.clone(), schema_fingerprint: d.schema_fingerprint.clone() })
                .collect(),
            capabilities: self.compute.capabilities(),
            signing_public_key: self.profile.identity.verifying_key().to_bytes().to_vec(),
            min_participants: self.profile.min_participants,
            unavailable_datasets: self.compute.unavailable().into_iter().map(|u| pb::UnavailableDataset::new(u.name, u.problem)).collect(),
        }
    }
}

/// A few content-addressed blobs, most recent last; the bytes are shared, never copied.
#[derive(Debug, Default)]
pub struct BlobCache {
    entries: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
}

impl BlobCache {
    /// The blob `hash`, if cached.
    pub fn get(&self, hash: &str) -> Option<Arc<Vec<u8>>> {
        lock(&self.entries).iter().find(|(h, _)| h == hash).map(|(_, b)| b.clone())
    }

    /// Caches `blob` as `hash`, evicting the oldest beyond the cache's size.
    pub fn insert(&self, hash: &str, blob: Arc<Vec<u8>>) {
        let mut entries = lock(&self.entries);
        if entries.iter().any(|(h, _)| h == hash) {
            return;
        }
        entries.push_back((hash.to_string(), blob));
        while entries.len() > BLOB_CACHE {
            entries.pop_front();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the bank stopped trying to reach the coordinator: a fault that reconnecting cannot fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// A certificate or TLS-mode fault found when connecting.
    #[error("cannot use the coordinator at {url}: {fault}")]
    Connect {
        /// The coordinator URL.
        url: String,
        /// What is wrong.
        fault: confide_tls::fault::ConnectFault,
    },
    /// Another process holds this identity's task stream (the coordinator's message).
    #[error("{0}")]
    Duplicate(String),
}

/// How long a refusal as a duplicate identity is retried before the worker gives up: long
/// enough for the coordinator to notice that this bank's previous connection (a crashed or
/// restarted process) is gone, which it does as soon as that connection closes.
const DUPLICATE_GRACE: Duration = Duration::from_secs(10);

/// The pause between retries within [`DUPLICATE_GRACE`].
const DUPLICATE_RETRY: Duration = Duration::from_secs(2);

/// Runs the bank until `shutdown` completes, reconnecting with backoff (0.5 s doubling to
/// 30 s; back to 0.5 s once a connection got as far as registering) while the coordinator is
/// unreachable; returns [`Refused`] for faults that retrying cannot fix.
pub async fn run<C: Compute>(bank: Arc<Bank<C>>, shutdown: impl Future<Output = ()>) -> Result<(), Refused> {
    tokio::pin!(shutdown);
    // The data watch runs whether or not the coordinator is reachable, so the operator hears of
    // a bad file at once; dropping the set at return stops it.
    let (changed, mut offers) = tokio::sync::watch::channel(0u64);
    let mut watch = JoinSet::new();
    watch.spawn(watch_data(bank.clone(), changed));
    let mut backoff = Duration::from_millis(500);
    let mut duplicate_since: Option<Instant> = None;
    loop {
        let mut registered = false;
        let mut pause = None;
        // A session registers with the offers of its start; only later changes matter to it.
        offers.mark_unchanged();
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = session(&bank, &mut registered, &mut offers) => match r {
                Ok(()) => tracing::warn!(worker = %bank.id(), "task stream closed by the coordinator; reconnecting"),
                Err(e) if e.code() == tonic::Code::AlreadyExists => {
                    let since = *duplicate_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= DUPLICATE_GRACE {
                        tracing::error!(worker = %bank.id(), error = %e.message(), "refused: this identity is connected from another process");
                        return Err(Refused::Duplicate(e.message().to_string()));
                    }
                    tracing::warn!(worker = %bank.id(), error = %e.message(), retry_in = ?DUPLICATE_RETRY, "refused as a duplicate; retrying in case the other connection is a stale one being closed");
                    pause = Some(DUPLICATE_RETRY);
                }
                Err(e) => {
                    duplicate_since = None;
                    // Before registering, a failure may be the certificates or the TLS mode:
                    // those are said once and end the worker instead of being retried forever.
                    let fault = match registered {
                        false => {
                            let connector = bank.tls.as_ref().and_then(|f| confide_tls::coordinator_endpoint(f, &bank.coordinator).ok()).map(|(_, c)| c);
                            confide_tls::fault::diagnose(&e, &bank.coordinator, connector.as_ref(), "worker").await
                        }
                        true => None,
                    };
                    if let Some(fault) = fault {
                        tracing::error!(worker = %bank.id(), coordinator = %bank.coordinator, error = %fault, "refused: not retrying");
                        return Err(Refused::Connect { url: bank.coordinator.clone(), fault });
                    }
                    if e.code() == tonic::Code::PermissionDenied {
                        // The coordinator refuses this bank's certificate (e.g. revoked): an
                        // operator must act, so say it loudly (the list is re-read live, so keep trying).
                        tracing::error!(worker = %bank.id(), error = %e.message(), retry_in = ?backoff, "refused: no tasks are taken until this is fixed");
                    } else {
                        tracing::warn!(worker = %bank.id(), error = %e.message(), retry_in = ?backoff, "coordinator unreachable; retrying");
                    }
                }
            },
        }
        if registered && pause.is_none() {
            backoff = Duration::from_millis(500);
            duplicate_since = None;
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(pause.unwrap_or(backoff)) => {}
        }
        if pause.is_none() {
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// Has the computation re-check its data files every [`crate::catalog::POLL_INTERVAL`]
/// (off the async threads: a changed file is read in full), bumping `changed` when the offers
/// changed.
async fn watch_data<C: Compute>(bank: Arc<Bank<C>>, changed: tokio::sync::watch::Sender<u64>) {
    let mut tick = tokio::time::interval(crate::catalog::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let checker = bank.clone();
        match tokio::task::spawn_blocking(move || checker.compute.refresh()).await {
            Ok(true) => changed.send_modify(|generation| *generation += 1),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "the data check panicked"),
        }
    }
}

/// The result of an effect executed off the session loop, for the machine of generation `.0`.
type Completion = (u64, Done);

/// What came back for a machine.
enum Done {
    Fetched(Blob, Result<Arc<Vec<u8>>, Failure>),
    Computed(Result<Vec<f64>, Failure>),
    Submitted(Result<(), Failure>),
}

/// One connection's tasks.
struct Session<C> {
    bank: Arc<Bank<C>>,
    client: FederationClient<Channel>,
    worker_id: String,
    /// Running machines by task id, with the generation their completions carry (so a late
    /// result never reaches a newer task of the same id).
    machines: HashMap<String, (u64, TaskMachine)>,
    next_generation: u64,
    /// Effects in progress; dropped (aborted) with the session.
    pending: JoinSet<Completion>,
}

async fn session<C: Compute>(
    bank: &Arc<Bank<C>>,
    registered: &mut bool,
    offers: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), tonic::Status> {
    let invalid = |e: String| tonic::Status::invalid_argument(e);
    let configure = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
    };
    let unreachable = |e: tonic::transport::Error| {
        let mut status = tonic::Status::unavailable(format!("connecting to {}: {}", bank.coordinator, chain(&e)));
        // Kept for [`confide_tls::fault::diagnose`], which reads the TLS error inside.
        status.set_source(Arc::new(e));
        status
    };
    // With TLS the server must prove the coordinator role, not merely a CA-signed certificate
    // (every bank and admin holds one of those), before anything is sent.
    let channel = match &bank.tls {
        Some(files) => {
            let (endpoint, connector) = confide_tls::coordinator_endpoint(files, &bank.coordinator).map_err(|e| invalid(e.to_string()))?;
            configure(endpoint).connect_with_connector(connector).await.map_err(unreachable)?
        }
        None => {
            let endpoint = Endpoint::from_shared(bank.coordinator.clone()).map_err(|e| invalid(e.to_string()))?;
            configure(endpoint).connect().await.map_err(unreachable)?
        }
    };
    let mut client = FederationClient::new(channel).max_decoding_message_size(8 << 20);
    let reply = client.register(bank.register_request()).await?.into_inner();
    tracing::info!(worker = %reply.worker_id, protocol = reply.protocol_version, "registered with the coordinator");
    *registered = true;
    let mut stream = client.subscribe(SubscribeRequest { worker_id: reply.worker_id.clone() }).await?.into_inner();
    let mut s = Session {
        bank: bank.clone(),
        client,
        worker_id: reply.worker_id,
        machines: HashMap::new(),
        next_generation: 0,
        pending: JoinSet::new(),
    };
    loop {
        let deadline = s.machines.values().filter_map(|(_, m)| m.poll_timeout()).min();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.message() => match message? {
                Some(wire) => s.on_task(wire),
                None => return Ok(()),
            },
            Ok(()) = offers.changed() => {
                // Registering again replaces what the coordinator knows of this bank's datasets;
                // the task stream stays open.
                let request = bank.register_request();
                let (offered, unavailable) = (request.datasets.len(), request.unavailable_datasets.len());
                s.client.register(request).await?;
                tracing::info!(offered, unavailable, "datasets changed: registered again with the coordinator");
            },
            Some(joined) = s.pending.join_next(), if !s.pending.is_empty() => match joined {
                Ok((generation, done)) => s.on_done(generation, done),
                Err(e) => tracing::error!(error = %e, "a task effect panicked"),
            },
            () = timer => {
                let now = Instant::now();
                let ids: Vec<String> = s.machines.keys().cloned().collect();
                for id in ids {
                    if let Some((_, m)) = s.machines.get_mut(&id) {
                        m.handle_timeout(now);
                    }
                    s.drive(&id);
                }
            }
        }
    }
}

impl<C: Compute> Session<C> {
    /// A message on the task stream.
    fn on_task(&mut self, wire: pb::Task) {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let bank = &self.bank;
        match task::receive(&bank.task_profile(), wire, self.machines.len(), bank.max_concurrent_tasks, seed) {
            Incoming::Relay { task_id, message } => match self.machines.get_mut(&task_id) {
                Some((_, m)) => {
                    m.handle_relay(&message, Instant::now());
                    self.drive(&task_id);
                }
                None => tracing::debug!(task = %task_id, "relay for a task not in progress"),
            },
            Incoming::Cancel { task_id, reason } => {
                if let Some((_, m)) = self.machines.get_mut(&task_id) {
                    m.handle_cancel(reason);
                    self.drive(&task_id);
                }
            }
            Incoming::Start(machine) => {
                let task_id = machine.id().task_id.clone();
                if self.machines.contains_key(&task_id) {
                    tracing::warn!(task = %task_id, "task already in progress; duplicate ignored");
                    return;
                }
                self.next_generation += 1;
                self.machines.insert(task_id.clone(), (self.next_generation, *machine));
                self.drive(&task_id);
            }
        }
    }

    /// An effect's result.
    fn on_done(&mut self, generation: u64, done: Done) {
        let Some(task_id) = self.machines.iter().find(|(_, (g, _))| *g == generation).map(|(id, _)| id.clone()) else {
            return;
        };
        if let Some((_, m)) = self.machines.get_mut(&task_id) {
            match done {
                Done::Fetched(blob, result) => m.handle_fetched(blob, result),
                Done::Computed(result) => m.handle_computed(result),
                Done::Submitted(result) => m.handle_submitted(result, Instant::now()),
            }
        }
        self.drive(&task_id);
    }

    /// Executes the effects of `task_id`'s machine until it waits for something.
    fn drive(&mut self, task_id: &str) {
        loop {
            let Some((generation, m)) = self.machines.get_mut(task_id) else { return };
            let generation = *generation;
            let Some(effect) = m.poll_effect() else { return };
            let id = m.id().clone();
            let task_name = m.task_name();
            match effect {
                Effect::Admit(request) => {
                    // The policy first (a task it refuses is not charged), then the budget: the
                    // charge is on disk and in the audit log before the machine sends anything.
                    let result = self.bank.policy.admit_request(&request).and_then(|()| charge(&self.bank, &request, &id.task_id));
                    m.handle_admission(result);
                }
                Effect::Ledger(check) => {
                    let result = self.bank.ledger.admit(&check);
                    if let Err(e) = &result {
                        tracing::warn!(job = %id.job_id, round = id.round, institutions = ?check.institutions, reason = %e, "refusing to unmask");
                    }
                    m.handle_ledger(result, Instant::now());
                }
                Effect::Fetch(request) => {
                    let (bank, mut client, worker_id) = (self.bank.clone(), self.client.clone(), self.worker_id.clone());
                    self.pending.spawn(async move {
                        let result = fetch(&bank, &mut client, &worker_id, &request).await;
                        (generation, Done::Fetched(request.blob, result))
                    });
                }
                Effect::Compute(request) => {
                    let bank = self.bank.clone();
                    self.pending.spawn(async move {
                        let result = tokio::task::spawn_blocking(move || bank.compute.compute(request))
                            .await
                            .unwrap_or_else(|e| Err(Failure::internal(format!("task panicked: {e}"))));
                        (generation, Done::Computed(result))
                    });
                }
                Effect::Submit(mut submission) => {
                    let (bank, mut client) = (self.bank.clone(), self.client.clone());
                    let dp_spent_epsilon =
                        m.task().map_or(0.0, |t| self.bank.budget.job_epsilon(&t.kind.dataset().name, &id.job_id));
                    let entry = audit_entry(m, &submission, now_rfc3339());
                    let addr =
                        TaskAddress { worker_id: self.worker_id.clone(), task_id: id.task_id, job_id: id.job_id, round: id.round };
                    if matches!(submission.contribution.body, Some(Body::Plain(_))) {
                        tracing::warn!(job = %addr.job_id, round = addr.round, "INSECURE plain aggregation: this contribution is visible to the coordinator");
                    }
                    self.pending.spawn(async move {
                        let recorder = bank.clone();
                        let recorded = tokio::task::spawn_blocking(move || record(recorder.audit.as_ref(), entry))
                            .await
                            .unwrap_or_else(|e| Err(Failure::internal(format!("audit log: recording panicked: {e}"))));
                        let audit_head = match recorded {
                            Ok(head) => head,
                            Err(failure) if is_failure_report(&submission) => {
                                // The report cannot be recorded: send a fixed internal failure
                                // that carries nothing of the bank's, so the coordinator still
                                // learns the bank is out, instead of the unrecorded reason.
                                tracing::error!(%failure, "failure report not recorded; reporting only that the audit log is unavailable");
                                submission.contribution = unrecorded_report();
                                String::new()
                            }
                            Err(failure) => {
                                tracing::error!(%failure, "upload not recorded in the audit log: not sent");
                                return (generation, Done::Submitted(Err(failure)));
                            }
                        };
                        let drill = bank.fault.as_ref().zip(submission.secagg);
                        if let Some((fault, kind)) = drill {
                            fault.check(task_name, kind, false).await;
                        }
                        let result = transport::submit(&mut client, &addr, &submission.contribution, &audit_head, dp_spent_epsilon)
                            .await
                            .map_err(Failure::protocol);
                        if let (Some((fault, kind)), Ok(())) = (drill, &result) {
                            fault.check(task_name, kind, true).await;
                        }
                        (generation, Done::Submitted(result))
                    });
                }
                Effect::Finished(outcome) => {
                    log_outcome(&id, &outcome);
                    self.machines.remove(task_id);
                    return;
                }
            }
        }
    }
}

/// Charges an admitted task to its dataset's privacy budget ([`crate::budget::Budget::charge`],
/// with the bank's own row counts) and records a DP task's charge in the audit log. A refusal
/// is logged here with its full reason (the remaining budget); the coordinator gets its kind.
fn charge<C: Compute>(bank: &Bank<C>, request: &task::AdmissionRequest, task_id: &str) -> Result<(), Failure> {
    use crate::budget::{ChargeRequest, TaskClass};
    let (class, phase) = match request.purpose {
        task::Purpose::Statistics => (TaskClass::Stats, audit::Phase::Stats),
        task::Purpose::Training { .. } => (TaskClass::Train, audit::Phase::Train),
        task::Purpose::Evaluation { .. } => (TaskClass::Evaluate, audit::Phase::Evaluate),
    };
    let dp = request.terms.as_ref().and_then(|t| t.dp.as_ref());
    let charged = bank.budget.charge(&ChargeRequest {
        job_id: &request.job_id,
        round: request.round,
        dataset: &request.dataset,
        task: class,
        dp,
        rows: dp.and_then(|_| bank.compute.rows(&request.dataset)),
    });
    let charged = match charged {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(job = %request.job_id, round = request.round, dataset = %request.dataset, kind = %e.kind, reason = %e.reason, "privacy budget: task refused");
            return Err(e);
        }
    };
    tracing::info!(job = %request.job_id, round = request.round, dataset = %request.dataset, epsilon = charged.epsilon, cumulative = charged.cumulative, remaining = ?charged.remaining, "privacy budget: task charged");
    let entry = audit::Entry {
        time: now_rfc3339(),
        job: request.job_id.clone(),
        round: request.round,
        task: task_id.to_string(),
        phase,
        sent: audit::Sent::BudgetCharge,
        vector_len: None,
        model_hash: None,
        participants: Vec::new(),
        threshold: None,
        failure: None,
        privacy_budget_spent: Some(audit_number(charged.epsilon)),
        budget: Some(audit::BudgetNote {
            dataset: request.dataset.clone(),
            delta: charged.delta,
            epsilon: audit_number(charged.epsilon),
            cumulative: audit_number(charged.cumulative),
            remaining: charged.remaining.map(audit_number),
        }),
    };
    // Conservative: the charge stands even if it cannot be recorded, and the task is refused.
    record(bank.audit.as_ref(), entry).map(|_| ())
}

/// `x` to 9 decimals, as the audit log records an ε: the record's hash covers its parsed JSON,
/// and a number of at most 15 significant digits reads back as exactly the same f64 (a full
/// 17-digit one may not, and the record would then fail its own hash check).
fn audit_number(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// Describes `submission`, about to be uploaded by `machine`, for the audit log at `time`
/// (RFC 3339): phase, what is sent, the vector's length, the model, the secure session's
/// participants and threshold, and for a failure report its full local reason.
pub fn audit_entry(machine: &TaskMachine, submission: &Submission, time: String) -> audit::Entry {
    let id = machine.id();
    let task = machine.task();
    let secure = task.and_then(|t| match &t.aggregation {
        task::Aggregation::Secure(setup) => Some(setup),
        task::Aggregation::Plain { .. } => None,
    });
    let (sent, vector_len, failure) = match (&submission.contribution.body, submission.secagg) {
        (Some(Body::Plain(v)), _) => (audit::Sent::PlainVector, Some(v.values.len() as u64), None),
        (Some(Body::Failure(wire)), _) => {
            let note = match machine.reporting() {
                Some(f) => audit::FailureNote { kind: f.kind.as_str().to_string(), reason: f.reason.clone() },
                None => audit::FailureNote { kind: "unknown".into(), reason: wire.reason.clone() },
            };
            (audit::Sent::FailureReport, None, Some(note))
        }
        (_, Some(kind)) => {
            let sent = audit::Sent::from(kind);
            let len = (sent == audit::Sent::MaskedInput).then(|| secure.map(|s| s.params.vector_len as u64)).flatten();
            (sent, len, None)
        }
        (_, None) => (audit::Sent::OtherSecagg, None, None),
    };
    audit::Entry {
        time,
        job: id.job_id.clone(),
        round: id.round,
        task: id.task_id.clone(),
        phase: audit::Phase::from_task_name(machine.task_name()),
        sent,
        vector_len,
        model_hash: task.and_then(|t| t.kind.model()).map(|m| m.hash.clone()),
        participants: secure.map(|s| s.peers.iter().map(|p| p.institution_id.clone()).collect()).unwrap_or_default(),
        threshold: secure.map(|s| s.params.threshold as u64),
        failure,
        privacy_budget_spent: None,
        budget: None,
    }
}

/// Records one upload (blocking: the write is fsynced) and returns the audit head to send with
/// it; without a log (simulated banks), an empty head. A record that cannot be written is an
/// internal failure, and the upload must not go out.
pub fn record(log: Option<&AuditLog>, entry: audit::Entry) -> Result<String, Failure> {
    match log {
        None => Ok(String::new()),
        Some(log) => log.append(entry).map(|r| r.hash).map_err(|e| Failure::internal(format!("audit log: {e}"))),
    }
}

fn is_failure_report(submission: &Submission) -> bool {
    matches!(submission.contribution.body, Some(Body::Failure(_)))
}

/// The failure report sent when the real one could not be recorded.
fn unrecorded_report() -> pb::Contribution {
    let failure = Failure::internal("the bank's audit log could not be written; nothing else was sent");
    pb::Contribution { body: Some(Body::Failure(failure.to_wire())) }
}

/// Now, UTC, RFC 3339 (empty should formatting ever fail).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A blob from the cache, or downloaded (verified against its hash) and cached.
async fn fetch<C>(
    bank: &Bank<C>,
    client: &mut FederationClient<Channel>,
    worker_id: &str,
    request: &BlobRequest,
) -> Result<Arc<Vec<u8>>, Failure> {
    if let Some(b) = bank.blobs.get(&request.hash) {
        return Ok(b);
    }
    let bytes = transport::download_model(client, worker_id, &request.hash, request.max_bytes).await.map_err(Failure::protocol)?;
    let blob = Arc::new(bytes);
    bank.blobs.insert(&request.hash, blob.clone());
    Ok(blob)
}

/// An error and its causes on one line (tonic's transport error alone says only "transport
/// error"; the cause says, for instance, that the server is not the coordinator).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn log_outcome(id: &task::TaskId, outcome: &TaskOutcome) {
    let (job, round, task) = (&id.job_id, id.round, &id.task_id);
    match outcome {
        TaskOutcome::Contributed { clipped, .. } => {
            if *clipped > 0 {
                tracing::warn!(%job, round, clipped, "update values were clipped to the secure-aggregation range");
            }
            tracing::info!(%job, round, %task, "contribution accepted");
        }
        TaskOutcome::Failed { failure, reference, report } => {
            tracing::error!(%job, round, %task, reference = %reference, %failure, "task failed; its kind and reference were reported to the coordinator");
            if let Err(e) = report {
                tracing::warn!(error = %e, "could not report the failure");
            }
        }
        TaskOutcome::Cancelled { reason } => tracing::info!(%task, %reason, "task cancelled by the coordinator"),
    }
}

#[cfg(test)]
mod tests {
    //! What the driver records for the audit log, from a real [`TaskMachine`]'s submissions.

    use confide_proto::v1::task::Kind;
    use confide_secagg::Graph;
    use confide_secagg::testing;

    use super::*;
    use crate::audit::{Phase, Sent};
    use crate::task::DatasetRef;

    fn profile() -> BankProfile {
        BankProfile {
            institution_id: "bank1".into(),
            identity: testing::identity(1),
            datasets: vec![DatasetRef { name: "telco".into(), schema_fingerprint: "f00d".into() }],
            unavailable: Vec::new(),
            one_class: Vec::new(),
            min_participants: 3,
            federation_ca: None,
            allow_plain_aggregation: false,
            share_error_details: false,
            // The test session's small fixed-point range stands below the default exact floor.
            floors: crate::task::Floors { min_exact_clip: 1.0, ..crate::task::Floors::default() },
        }
    }

    /// A secure statistics task of three banks, as bank 1 receives it.
    fn secure_stats() -> TaskMachine {
        // Threshold 3 of 3: the bank's floor is ⌊2h/3⌋ + 1.
        let mut params = testing::session_params(3, 3, 4, Graph::Complete, 32);
        params.round = 7;
        let institutions = params.participants.keys().map(|&id| (id, (format!("bank{id}"), Vec::new()))).collect();
        let aggregation = pb::AggregationSetup {
            insecure_plain: false,
            vector_len: 4,
            secure: Some(confide_proto::secagg::setup_for(&params, 1, &institutions, 3)),
            participants: 3,
        };
        let dataset = Some(pb::DatasetRef { name: "telco".into(), schema_fingerprint: "f00d".into() });
        let kind = Kind::Stats(pb::StatsTask { dataset, aggregation: Some(aggregation), fine_histograms: false });
        let wire = pb::Task { task_id: "task-1".into(), job_id: "job-1".into(), round: 7, kind: Some(kind), terms: None };
        TaskMachine::from_wire(&profile(), wire, [7; 32])
    }

    /// The next submission, answering admissions with `admission` on the way.
    fn next_submission(m: &mut TaskMachine, admission: &Result<(), Failure>) -> Submission {
        while let Some(effect) = m.poll_effect() {
            match effect {
                Effect::Admit(_) => m.handle_admission(admission.clone()),
                Effect::Submit(s) => return s,
                _ => {}
            }
        }
        panic!("no submission");
    }

    #[test]
    fn a_key_advertisement_is_recorded_with_the_sessions_participants_and_threshold() {
        let mut m = secure_stats();
        let s = next_submission(&mut m, &Ok(()));
        let e = audit_entry(&m, &s, "2025-01-01T00:00:00Z".into());
        assert_eq!((e.sent, e.phase, e.job.as_str(), e.round, e.task.as_str()), (Sent::KeyAdvertisement, Phase::Stats, "job-1", 7, "task-1"));
        assert_eq!(e.participants, ["bank1", "bank2", "bank3"]);
        assert_eq!((e.threshold, e.vector_len, e.failure), (Some(3), None, None));
    }

    #[test]
    fn a_refusal_is_recorded_with_its_full_reason_and_its_hash_is_the_head_sent() {
        let mut m = secure_stats();
        let reason = "job job-1 already had 5 training rounds here (policy.max_rounds_per_job = 5)";
        let s = next_submission(&mut m, &Err(Failure::policy(reason)));
        assert!(is_failure_report(&s));
        let e = audit_entry(&m, &s, "2025-01-01T00:00:00Z".into());
        assert_eq!(e.sent, Sent::FailureReport);
        let note = e.failure.clone().expect("the refusal's reason");
        assert_eq!((note.kind.as_str(), note.reason.as_str()), ("policy", reason));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(audit::FILE_NAME);
        let log = AuditLog::open(&path, testing::identity(1)).expect("open");
        let head = record(Some(&log), e.clone()).expect("recorded");
        assert_eq!(log.head("job-1"), Some(head.clone()));
        let records = audit::read_records(&path).expect("read");
        assert_eq!((records.len(), &records[0].hash, &records[0].entry), (1, &head, &e));
        assert_eq!(record(None, e).expect("no log"), "", "a simulated bank sends an empty head");
    }

    #[test]
    fn a_budget_charge_record_reads_back_to_its_own_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(audit::FILE_NAME);
        let log = AuditLog::open(&path, testing::identity(1)).expect("open");
        // Numbers of 17 significant digits, as the accountant produces them.
        for (i, x) in [2.165715659029443, 3.1889915626335874, 0.7697577522920178, 1.0125506277526433].into_iter().enumerate() {
            let note = audit::BudgetNote {
                dataset: "telco".into(),
                delta: 1e-5,
                epsilon: audit_number(x),
                cumulative: audit_number(x * 3.0),
                remaining: Some(audit_number(x / 7.0)),
            };
            let entry = audit::Entry {
                time: "2025-01-01T00:00:00Z".into(),
                job: format!("job-{i}"),
                round: 1,
                task: "t".into(),
                phase: Phase::Train,
                sent: Sent::BudgetCharge,
                vector_len: None,
                model_hash: None,
                participants: Vec::new(),
                threshold: None,
                failure: None,
                privacy_budget_spent: Some(note.epsilon),
                budget: Some(note),
            };
            record(Some(&log), entry).expect("recorded");
        }
        drop(log);
        AuditLog::open(&path, testing::identity(1)).expect("the chain verifies when reopened");
        audit::verify(&path, &testing::identity(1).verifying_key()).expect("verify");
    }
}
