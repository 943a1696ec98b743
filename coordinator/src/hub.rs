//! Connected workers and the routes to them.
//!
//! A worker's `Subscribe` stream is the only way to reach it (banks accept no inbound
//! connections). The hub keeps, per worker, the sending half of that stream and what the worker
//! registered (datasets, capabilities, signing key), and routes each task's contributions to the
//! job runner that owns the task.
//!
//! One identity, one live stream: a second process with the same certificate is refused
//! ([`AlreadyConnected`]) instead of replacing the first, which used to knock the two off each
//! other every half second. A stream is live until its receiving half is dropped — tonic drops
//! it when the worker's connection closes (at once when its process dies; within the HTTP/2
//! keepalive timeout when its machine vanishes) — so a restarted worker is not locked out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use confide_proto::v1::{Capabilities, DatasetOffer, Task, UnavailableDataset, contribution::Body};
use tokio::sync::mpsc;

/// What a worker registered.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Institution id.
    pub id: String,
    /// Datasets offered.
    pub datasets: Vec<DatasetOffer>,
    /// Datasets the bank configured but does not offer now (shown by `confide workers`).
    pub unavailable: Vec<UnavailableDataset>,
    /// Hardware.
    pub capabilities: Capabilities,
    /// Ed25519 key the institution signs secure-aggregation advertisements with.
    pub signing_public_key: Vec<u8>,
    /// The bank's own floor on participants per round.
    pub min_participants: u32,
    /// Its client certificate (DER; empty in `--insecure-dev` mode), forwarded to peers.
    pub certificate: Vec<u8>,
}

impl WorkerInfo {
    /// True when the worker offers `dataset` with schema `fingerprint`.
    pub fn offers(&self, dataset: &str, fingerprint: &str) -> bool {
        self.datasets.iter().any(|d| d.name == dataset && d.schema_fingerprint == fingerprint)
    }
}

/// A contribution routed to the job runner that issued the task.
#[derive(Debug)]
pub struct Inbound {
    /// The sender.
    pub worker_id: String,
    /// The task it answers.
    pub task_id: String,
    /// What it sent.
    pub body: Body,
    /// Where to report whether the contribution was accepted.
    pub ack: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// An open task: which worker it was given to, and where its contributions go.
#[derive(Debug, Clone)]
struct OpenTask {
    worker_id: String,
    job_id: String,
    round: u64,
    inbox: mpsc::Sender<Inbound>,
}

#[derive(Debug)]
struct Session {
    generation: u64,
    tx: mpsc::Sender<Result<Task, tonic::Status>>,
    /// When it connected (Unix seconds), for the refusal of a duplicate.
    since: i64,
    /// A duplicate was refused already (it is logged as an error once per session).
    duplicate_reported: bool,
    /// The client's address on the connection the stream is on: a registration from the same
    /// address and port is the same process refreshing its offers, not a second process.
    peer: Option<std::net::SocketAddr>,
}

/// A second process presented an identity whose task stream is live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("institution {worker} is already connected from another process (since {since}); stop the other worker or use a different certificate")]
pub struct AlreadyConnected {
    /// The institution.
    pub worker: String,
    /// When the live stream connected (UTC).
    pub since: String,
    /// True for the first refusal during that stream (log it loudly once, not on every retry).
    pub first: bool,
}

#[derive(Debug, Default)]
struct Inner {
    registered: HashMap<String, WorkerInfo>,
    sessions: HashMap<String, Session>,
    tasks: HashMap<String, OpenTask>,
    next_generation: u64,
    /// Per worker, the blobs named in tasks it was sent (most recent last): the only ones it
    /// may download.
    grants: HashMap<String, VecDeque<String>>,
}

/// Blobs a worker may still download, per worker (a model and a module per task, for the last
/// few tasks; older grants lapse).
const GRANTS_PER_WORKER: usize = 32;

/// The blobs a task names: its model checkpoint and, for a custom model, its module.
pub fn blobs_of(task: &Task) -> Vec<String> {
    use confide_proto::v1::task::Kind;
    let model = match &task.kind {
        Some(Kind::Train(t)) => t.model.as_ref(),
        Some(Kind::Evaluate(t)) => t.model.as_ref(),
        Some(Kind::TreeLevel(t)) => t.model.as_ref(),
        _ => None,
    };
    let Some(model) = model else { return Vec::new() };
    let mut hashes = vec![model.hash.clone()];
    if let Ok(confide_core::model::ModelSpec::TorchScript(ts)) = serde_json::from_str(&model.spec_json)
        && let Some(h) = ts.module_sha256
    {
        hashes.push(h);
    }
    hashes
}

/// Registry of workers, their task streams, and open tasks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    /// Wakes job runners waiting for workers whenever one connects.
    connected: Arc<tokio::sync::Notify>,
}

/// Why a contribution could not be routed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RouteError {
    /// No open task has this id (unknown, or its round is over).
    #[error("task `{0}` is not open (unknown, or its round is over)")]
    UnknownTask(String),
    /// The task was given to another worker.
    #[error("task `{task}` was not given to worker `{worker}`")]
    WrongWorker {
        /// Task id.
        task: String,
        /// Claimed sender.
        worker: String,
    },
    /// Job or round in the header do not match the task.
    #[error("task `{task}` belongs to job {job} round {round}, not the job and round in the header")]
    WrongRound {
        /// Task id.
        task: String,
        /// The task's job.
        job: String,
        /// The task's round.
        round: u64,
    },
    /// The job runner is gone.
    #[error("the job that issued task `{0}` is no longer running")]
    Closed(String),
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a worker's registration.
    pub fn register(&self, info: WorkerInfo) {
        self.lock().registered.insert(info.id.clone(), info);
    }

    /// True when the worker registered (in this coordinator's lifetime).
    pub fn is_registered(&self, worker_id: &str) -> bool {
        self.lock().registered.contains_key(worker_id)
    }

    /// Refuses `worker_id` when it has a live task stream (a closed one no longer counts) on
    /// another connection than `peer`'s: the stream's own connection may register again to
    /// refresh its offers.
    pub fn ensure_not_connected(&self, worker_id: &str, peer: Option<std::net::SocketAddr>) -> Result<(), AlreadyConnected> {
        Self::refuse_live(&mut self.lock(), worker_id, peer)
    }

    fn refuse_live(inner: &mut Inner, worker_id: &str, peer: Option<std::net::SocketAddr>) -> Result<(), AlreadyConnected> {
        match inner.sessions.get_mut(worker_id) {
            Some(s) if !s.tx.is_closed() && !(peer.is_some() && s.peer == peer) => {
                let first = !s.duplicate_reported;
                s.duplicate_reported = true;
                Err(AlreadyConnected { worker: worker_id.to_string(), since: confide_tls::check::utc(s.since), first })
            }
            _ => Ok(()),
        }
    }

    /// Opens a task stream for a worker, replacing a closed older one; refused while an older
    /// one is live. Returns its receiving half and its generation (to tell a stale disconnect
    /// from the current session).
    pub fn connect(
        &self,
        worker_id: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(mpsc::Receiver<Result<Task, tonic::Status>>, u64), AlreadyConnected> {
        let (tx, rx) = mpsc::channel(256);
        let mut inner = self.lock();
        // A second stream is refused even from the same connection: one stream per identity.
        Self::refuse_live(&mut inner, worker_id, None)?;
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        inner.sessions.insert(worker_id.to_string(), Session { generation, tx, since, duplicate_reported: false, peer });
        drop(inner);
        self.connected.notify_waiters();
        Ok((rx, generation))
    }

    /// Closes one worker's task stream (its certificate was revoked); false when it had none.
    pub fn disconnect(&self, worker_id: &str) -> bool {
        self.lock().sessions.remove(worker_id).is_some()
    }

    /// Closes every worker's task stream (coordinator shutdown; workers reconnect later).
    pub fn disconnect_all(&self) {
        self.lock().sessions.clear();
    }

    /// Workers with an open task stream, with what they registered.
    pub fn connected(&self) -> Vec<WorkerInfo> {
        let inner = self.lock();
        let mut v: Vec<WorkerInfo> = inner
            .sessions
            .iter()
            .filter(|(_, s)| !s.tx.is_closed())
            .filter_map(|(id, _)| inner.registered.get(id).cloned())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// True when the worker's task stream is open.
    pub fn is_connected(&self, worker_id: &str) -> bool {
        self.lock().sessions.get(worker_id).is_some_and(|s| !s.tx.is_closed())
    }

    /// Completes when another worker connects (or after a short while, to re-check liveness).
    pub async fn wait_for_change(&self) {
        let notified = self.connected.notified();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), notified).await;
    }

    /// Sends a task down a worker's stream. False when the worker is not connected.
    pub async fn send(&self, worker_id: &str, task: Task) -> bool {
        let tx = self.lock().sessions.get(worker_id).map(|s| s.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(task)).await.is_ok(),
            None => false,
        }
    }

    /// Lets `worker_id` download the blobs `task` names (call before sending the task).
    pub fn grant_blobs(&self, worker_id: &str, task: &Task) {
        let hashes = blobs_of(task);
        if hashes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let grants = inner.grants.entry(worker_id.to_string()).or_default();
        for h in hashes {
            grants.retain(|g| *g != h);
            grants.push_back(h);
        }
        while grants.len() > GRANTS_PER_WORKER {
            grants.pop_front();
        }
    }

    /// True when `worker_id` was sent a task naming blob `hash` (recently enough). Other jobs'
    /// models, the server optimizer's state and modules of jobs it is not in are refused.
    pub fn may_download(&self, worker_id: &str, hash: &str) -> bool {
        self.lock().grants.get(worker_id).is_some_and(|g| g.iter().any(|h| h == hash))
    }

    /// Opens a task so its contributions reach `inbox`.
    pub fn open_task(&self, task_id: &str, worker_id: &str, job_id: &str, round: u64, inbox: mpsc::Sender<Inbound>) {
        self.lock().tasks.insert(
            task_id.to_string(),
            OpenTask { worker_id: worker_id.into(), job_id: job_id.into(), round, inbox },
        );
    }

    /// Closes tasks; later contributions to them are refused.
    pub fn close_tasks<'a>(&self, task_ids: impl IntoIterator<Item = &'a String>) {
        let mut inner = self.lock();
        for t in task_ids {
            inner.tasks.remove(t);
        }
    }

    /// Validates a contribution's header against the open task and returns the task's inbox.
    pub fn route(&self, worker_id: &str, task_id: &str, job_id: &str, round: u64) -> Result<mpsc::Sender<Inbound>, RouteError> {
        let inner = self.lock();
        let task = inner.tasks.get(task_id).ok_or_else(|| RouteError::UnknownTask(task_id.into()))?;
        if task.worker_id != worker_id {
            return Err(RouteError::WrongWorker { task: task_id.into(), worker: worker_id.into() });
        }
        if task.job_id != job_id || task.round != round {
            return Err(RouteError::WrongRound { task: task_id.into(), job: task.job_id.clone(), round: task.round });
        }
        if task.inbox.is_closed() {
            return Err(RouteError::Closed(task_id.into()));
        }
        Ok(task.inbox.clone())
    }

    /// The generation of a worker's current session, if any.
    pub fn generation(&self, worker_id: &str) -> Option<u64> {
        self.lock().sessions.get(worker_id).map(|s| s.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            datasets: vec![DatasetOffer { name: "telco".into(), schema_fingerprint: "abc".into() }],
            unavailable: vec![],
            capabilities: Capabilities::default(),
            signing_public_key: vec![],
            min_participants: 3,
            certificate: vec![],
        }
    }

    #[tokio::test]
    async fn routes_only_to_the_assigned_worker_and_round() {
        let hub = Hub::default();
        hub.register(info("bank1"));
        let (tx, _rx) = mpsc::channel(1);
        hub.open_task("t1", "bank1", "job", 3, tx);
        assert!(hub.route("bank1", "t1", "job", 3).is_ok());
        assert_eq!(
            hub.route("bank2", "t1", "job", 3).err(),
            Some(RouteError::WrongWorker { task: "t1".into(), worker: "bank2".into() })
        );
        assert!(matches!(hub.route("bank1", "t1", "job", 2), Err(RouteError::WrongRound { .. })));
        hub.close_tasks([&"t1".to_string()]);
        assert_eq!(hub.route("bank1", "t1", "job", 3).err(), Some(RouteError::UnknownTask("t1".into())));
    }

    fn train_task(hash: &str, spec_json: &str) -> Task {
        use confide_proto::v1::{ModelRef, TrainTask, task::Kind};
        let model = ModelRef { hash: hash.into(), size_bytes: 1, spec_json: spec_json.into() };
        Task { kind: Some(Kind::Train(TrainTask { model: Some(model), ..Default::default() })), ..Default::default() }
    }

    #[test]
    fn a_worker_may_download_only_the_blobs_of_tasks_it_was_sent() {
        let hub = Hub::default();
        let module = "m".repeat(64);
        let spec = format!(
            r#"{{"kind":"torchscript","module":"model.pt","parameters":"init.safetensors","module_sha256":"{module}","layout":{{"tensors":[]}}}}"#
        );
        hub.grant_blobs("bank1", &train_task(&"a".repeat(64), &spec));
        assert!(hub.may_download("bank1", &"a".repeat(64)));
        assert!(hub.may_download("bank1", &module), "the custom module of its own task");
        assert!(!hub.may_download("bank2", &"a".repeat(64)), "another bank's task");
        assert!(!hub.may_download("bank1", &"b".repeat(64)), "a blob no task named (another job's model, optimizer state)");
        for i in 0..GRANTS_PER_WORKER {
            hub.grant_blobs("bank1", &train_task(&format!("{i:064}"), "{}"));
        }
        assert!(!hub.may_download("bank1", &"a".repeat(64)), "old grants lapse");
    }

    #[tokio::test]
    async fn a_dropped_stream_means_disconnected() {
        let hub = Hub::default();
        hub.register(info("bank1"));
        let (rx, _) = hub.connect("bank1", None).expect("first stream");
        assert_eq!(hub.connected().len(), 1);
        assert!(hub.connected()[0].offers("telco", "abc"));
        drop(rx);
        assert!(hub.connected().is_empty());
        assert!(!hub.send("bank1", Task::default()).await);
    }

    #[test]
    fn a_second_stream_for_a_live_identity_is_refused_and_a_dead_one_is_replaced() {
        let hub = Hub::default();
        hub.register(info("bank1"));
        let (first, generation) = hub.connect("bank1", None).expect("first stream");
        let err = hub.connect("bank1", None).expect_err("a live stream is not replaced");
        assert!(err.first, "the first refusal is the one to log");
        assert!(
            err.to_string().starts_with("institution bank1 is already connected from another process (since "),
            "{err}"
        );
        let again = hub.ensure_not_connected("bank1", None).expect_err("still live");
        assert!(!again.first, "later refusals during the same stream are not logged again");
        assert_eq!(hub.generation("bank1"), Some(generation), "the first keeps its stream");
        // The first process dies: its stream closes, and a restarted worker gets in.
        drop(first);
        hub.ensure_not_connected("bank1", None).expect("a closed stream does not count");
        let (_second, newer) = hub.connect("bank1", None).expect("replaces the dead stream");
        assert!(newer > generation);
    }

    #[test]
    fn the_live_streams_own_connection_may_register_again_but_no_other() {
        let hub = Hub::default();
        hub.register(info("bank1"));
        let (own, other) = (Some("127.0.0.1:40001".parse().expect("addr")), Some("127.0.0.1:40002".parse().expect("addr")));
        let (_stream, _) = hub.connect("bank1", own).expect("first stream");
        hub.ensure_not_connected("bank1", own).expect("the same connection refreshes its offers");
        hub.ensure_not_connected("bank1", other).expect_err("another connection is another process");
        hub.ensure_not_connected("bank1", None).expect_err("an unknown peer is not trusted as the same one");
        hub.connect("bank1", own).expect_err("still one stream per identity");
    }
}
