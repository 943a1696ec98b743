//! Durable coordinator state: an embedded SQLite database plus content-addressed checkpoints.
//!
//! Everything a restarted coordinator needs lives here: registered workers, jobs with their
//! validated specs, every completed round with its participants and metrics, and the hashes of
//! the model and server-optimizer checkpoints. A round becomes durable in one transaction, after
//! its checkpoint files are on disk (see [`checkpoints`]); killing the process at any point
//! therefore leaves either the previous completed round or the new one, never half of one.
//!
//! Beside the database the store keeps a [`manifest`] (store id and commit generation), so a
//! database that lost commits or was replaced is refused at start instead of silently served.

pub mod checkpoints;
pub mod manifest;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use confide_core::outcome::ParticipantStatus;
use rusqlite::{Connection, OptionalExtension, params};

pub use checkpoints::CheckpointDir;
pub use manifest::StateProblem;

/// Errors of the durable store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, is corrupted, locked by another process, or a query failed.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A checkpoint file could not be written or read.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint's content does not match its hash (disk corruption or tampering).
    #[error("checkpoint {hash} is corrupted: content hashes to {actual}")]
    Corrupted {
        /// Hash the file is stored under.
        hash: String,
        /// Hash of what was read.
        actual: String,
    },
    /// A hash is not of the form the store writes (64 hex digits).
    #[error("`{0}` is not a checkpoint hash")]
    BadHash(String),
    /// A stored JSON column could not be read back.
    #[error("stored record is unreadable: {0}")]
    Record(String),
    /// The database does not match the rest of the data directory (see [`manifest`]): serving
    /// it would silently lose committed state, so the coordinator refuses to start.
    #[error("refusing to start on the state in {data_dir}: {problem}; {}", manifest::RECOVERY)]
    StateLost {
        /// The data directory.
        data_dir: PathBuf,
        /// What does not match.
        problem: StateProblem,
    },
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Accepted, not started yet (or waiting for workers).
    Pending,
    /// Rounds are running.
    Running,
    /// Round budget or early stopping reached.
    Completed,
    /// Gave up; `error` says why.
    Failed,
    /// Cancelled by the team.
    Cancelled,
}

impl JobStatus {
    /// Lower-case name used in the database, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status a stored name stands for (an unknown name reads as pending).
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => JobStatus::Pending,
        }
    }

    /// True once the job will run no more rounds.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Job id (UUID).
    pub id: String,
    /// Name from the spec.
    pub name: String,
    /// Validated [`confide_core::job::JobSpec`] as JSON.
    pub spec_json: String,
    /// The dataset schema's TOML text.
    pub schema_toml: String,
    /// Lifecycle state.
    pub status: JobStatus,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// Why the job failed.
    pub error: Option<String>,
    /// Why the job stopped before its round budget.
    pub stop_reason: Option<String>,
    /// Federated preprocessing statistics (JSON), once computed.
    pub preprocessing_json: Option<String>,
    /// Number of completed rounds.
    pub rounds_completed: u64,
    /// Hash of the latest global model checkpoint.
    pub model_hash: Option<String>,
    /// Hash of the latest server-optimizer checkpoint.
    pub state_hash: Option<String>,
    /// Where the completed job's model was exported.
    pub export_dir: Option<String>,
    /// Why the automatic export failed.
    pub export_error: Option<String>,
    /// Coordinator starts that resumed this job since its last committed round (or clean
    /// shutdown): each one that is still counted at the next start ended in a crash.
    pub resume_attempts: u32,
    /// SHA-256 of the submission (job file, schema, model files, catalogue), for duplicate hints.
    pub submission_sha256: Option<String>,
    /// The submitter's idempotency key, if one was given (unique).
    pub idempotency_key: Option<String>,
}

/// A job to store, as submitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewJob<'a> {
    /// Job id (UUID).
    pub id: &'a str,
    /// Name from the spec.
    pub name: &'a str,
    /// Validated spec as JSON.
    pub spec_json: &'a str,
    /// The schema's TOML text.
    pub schema_toml: &'a str,
    /// The item catalogue (JSON array of ids), recommendation jobs only.
    pub catalogue_json: Option<&'a str>,
    /// SHA-256 of the submission.
    pub submission_sha256: Option<&'a str>,
    /// The submitter's idempotency key.
    pub idempotency_key: Option<&'a str>,
}

/// The outcome of [`Store::insert_new_job`].
#[derive(Debug, Clone)]
pub enum Inserted {
    /// The job was stored.
    New,
    /// A job with the same idempotency key already exists; nothing was stored.
    ExistingKey(Box<JobRecord>),
}

/// How one worker fared in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantRecord {
    /// Worker (institution) id.
    pub worker_id: String,
    /// How it fared.
    pub status: ParticipantStatus,
    /// Why, when it did not contribute.
    pub reason: String,
}

/// A completed round.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRecord {
    /// 1-based round number.
    pub round: u64,
    /// Hash of the model this round produced.
    pub model_hash: String,
    /// Hash of the server-optimizer state after this round.
    pub state_hash: String,
    /// Federated metrics (evaluation of the produced model, training loss).
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds the round took.
    pub duration_secs: f64,
    /// RFC 3339 completion time.
    pub completed_at: String,
    /// Outcome per selected worker.
    pub participants: Vec<ParticipantRecord>,
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    /// Institution id.
    pub id: String,
    /// Offered datasets and capabilities, as JSON.
    pub info_json: String,
    /// RFC 3339 time of the last registration.
    pub last_seen: String,
}

/// A bank's latest audit head for a job: the hash of the bank's own audit record of its last
/// upload, as its submission header carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditHeadRecord {
    /// Worker (institution) id.
    pub worker_id: String,
    /// The round of that upload.
    pub round: u64,
    /// SHA-256 hex of the bank's audit record.
    pub head: String,
    /// The bank's cumulative ε for the job with that upload, as its budget ledger computed it
    /// (0: not DP, or a bank that does not report it).
    pub dp_spent_epsilon: f64,
    /// RFC 3339 time the coordinator received it.
    pub recorded_at: String,
}

/// The coordinator's database and checkpoint directory.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    path: PathBuf,
    data_dir: PathBuf,
    checkpoints: CheckpointDir,
}

/// The connection and the commit generation it has reached (kept together so the manifest is
/// written in commit order).
#[derive(Debug)]
struct Inner {
    conn: Connection,
    store_id: String,
    generation: u64,
}

/// How [`Store::open_with`] treats state that does not match its manifest.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open anyway and rewrite the manifest to match the database (`--accept-state-loss`):
    /// for an operator who restored an older backup on purpose, or accepts the loss.
    pub accept_state_loss: bool,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    info_json TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    schema_toml TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    error TEXT,
    stop_reason TEXT,
    preprocessing_json TEXT,
    rounds_completed INTEGER NOT NULL DEFAULT 0,
    model_hash TEXT,
    state_hash TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    state_hash TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    duration_secs REAL NOT NULL,
    completed_at TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS participants (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    completed INTEGER NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS participants_by_round ON participants(job_id, round);
CREATE TABLE IF NOT EXISTS job_catalogues (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    items_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_heads (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    worker_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    head TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (job_id, worker_id)
);
"#;

/// Columns added to `jobs` after the first release, with their types; [`Store::open`] adds
/// those an older database lacks.
const ADDED_JOB_COLUMNS: [(&str, &str); 5] = [
    ("export_dir", "TEXT"),
    ("export_error", "TEXT"),
    ("resume_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("submission_sha256", "TEXT"),
    ("idempotency_key", "TEXT"),
];

/// Indexes over added columns (created once the columns exist).
const ADDED_INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_submission ON jobs(submission_sha256);
";

/// Columns added to `audit_heads` after it was introduced.
const ADDED_AUDIT_HEAD_COLUMNS: [(&str, &str); 1] = [("dp_spent_epsilon", "REAL NOT NULL DEFAULT 0")];

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    add_columns(conn, "jobs", &ADDED_JOB_COLUMNS)?;
    add_columns(conn, "audit_heads", &ADDED_AUDIT_HEAD_COLUMNS)?;
    conn.execute_batch(ADDED_INDEXES)
}

fn add_columns(conn: &Connection, table: &str, columns: &[(&str, &str)]) -> rusqlite::Result<()> {
    let mut st = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let present: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    for (name, kind) in columns {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

/// A stored participant status; an unknown name is an error, never a default.
fn status_column(r: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<ParticipantStatus> {
    let name: String = r.get(index)?;
    name.parse().map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
}

impl StoreError {
    /// True for faults that may clear by themselves (a full disk, an I/O error, a locked
    /// database): the job pauses and retries. Corruption and unreadable records are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { .. } => true,
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::OutOfMemory
            ),
            _ => false,
        }
    }

    /// True when the fault is a full disk (ENOSPC, a quota, or SQLite's `SQLITE_FULL`): the
    /// job stalls until space returns. Implies [`Self::is_transient`].
    pub fn is_disk_full(&self) -> bool {
        /// ENOSPC and EDQUOT on Linux.
        const NO_SPACE: [i32; 2] = [28, 122];
        match self {
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error().is_some_and(|e| NO_SPACE.contains(&e))
            }
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } => e.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}

/// Current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The store id and generation a database records (none and 0 for a new or pre-manifest one).
fn read_meta(conn: &Connection) -> rusqlite::Result<(Option<String>, u64)> {
    let has_meta: bool =
        conn.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'", [], |r| r.get(0))?;
    if !has_meta {
        return Ok((None, 0));
    }
    let value = |key: &str| {
        conn.query_row("SELECT value FROM store_meta WHERE key = ?1", params![key], |r| r.get::<_, String>(0)).optional()
    };
    let generation = value("generation")?.and_then(|g| g.parse().ok()).unwrap_or(0);
    Ok((value("store_id")?, generation))
}

/// Removes temporary files a crash or a full disk left in the data directory (the manifest's).
fn remove_temporary_files(data_dir: &Path) {
    for entry in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(manifest::MANIFEST_FILE) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Inner {
    fn manifest(&self) -> manifest::Manifest {
        manifest::Manifest {
            format: manifest::FORMAT,
            store_id: self.store_id.clone(),
            generation: self.generation,
            updated_at: now_rfc3339(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) `data_dir/state.sqlite3` and `data_dir/checkpoints/`,
    /// refusing state that does not match its manifest (see [`Self::open_with`]).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, OpenOptions::default())
    }

    /// Opens (creating if needed) `data_dir/state.sqlite3` and `data_dir/checkpoints/`.
    ///
    /// A corrupted file, a file that is not a database, or one locked by another coordinator
    /// gives a [`StoreError::Sqlite`] naming the file. An empty or missing database beside
    /// other state, a database behind its manifest, or a database of another store gives
    /// [`StoreError::StateLost`] and touches nothing, unless `options.accept_state_loss`.
    pub fn open_with(data_dir: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::Io { path: data_dir.to_path_buf(), source })?;
        remove_temporary_files(data_dir);
        let path = data_dir.join("state.sqlite3");
        let lost = |problem| StoreError::StateLost { data_dir: data_dir.to_path_buf(), problem };
        let manifest = manifest::read(data_dir)?;
        // Checked before SQLite opens (and so creates) the file.
        let db_state = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing"),
            Ok(m) if m.len() == 0 => Some("empty (0 bytes)"),
            _ => None,
        };
        if let Some(state) = db_state {
            let found = manifest::evidence(data_dir, manifest.as_ref());
            if !found.is_empty() && !options.accept_state_loss {
                return Err(lost(StateProblem::EmptyDatabase { state, found }));
            }
        }
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        // WAL + FULL sync: a committed round survives SIGKILL and power loss.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(err)?;
        if check != "ok" {
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("integrity check failed: {check}")),
            )));
        }
        // Compared before any schema change, so a refused database is left exactly as found.
        let (db_id, db_generation) = read_meta(&conn).map_err(err)?;
        if !options.accept_state_loss
            && let Some(m) = &manifest
        {
            match &db_id {
                None => {
                    return Err(lost(StateProblem::ForeignDatabase {
                        database: "has no store id (a new or foreign database)".into(),
                        manifest: m.store_id.clone(),
                    }));
                }
                Some(id) if *id != m.store_id => {
                    return Err(lost(StateProblem::ForeignDatabase {
                        database: format!("belongs to store {id}"),
                        manifest: m.store_id.clone(),
                    }));
                }
                Some(_) if db_generation < m.generation => {
                    return Err(lost(StateProblem::MissingCommits { database: db_generation, manifest: m.generation }));
                }
                Some(_) => {}
            }
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        add_missing_columns(&conn).map_err(err)?;
        let store_id = match db_id {
            Some(id) => id,
            // A new database, or one from before manifests: it gets its id (and the manifest's,
            // when the loss was accepted), at generation 0.
            None => {
                let id = manifest.as_ref().map_or_else(|| uuid::Uuid::new_v4().to_string(), |m| m.store_id.clone());
                conn.execute(
                    "INSERT OR REPLACE INTO store_meta (key, value) VALUES ('store_id', ?1), ('generation', ?2)",
                    params![id, db_generation.to_string()],
                )
                .map_err(err)?;
                id
            }
        };
        if manifest.as_ref().is_some_and(|m| m.store_id != store_id || m.generation != db_generation) {
            tracing::warn!(data_dir = %data_dir.display(), generation = db_generation, "the manifest is rewritten to match the database");
        }
        let checkpoints = CheckpointDir::open(&data_dir.join("checkpoints"))?;
        let inner = Inner { conn, store_id, generation: db_generation };
        manifest::write(data_dir, &inner.manifest())?;
        Ok(Self { inner: Mutex::new(inner), path, data_dir: data_dir.to_path_buf(), checkpoints })
    }

    /// The checkpoint directory.
    pub fn checkpoints(&self) -> &CheckpointDir {
        &self.checkpoints
    }

    /// The commit generation the database has reached (what the manifest records).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a read.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&mut self.lock().conn).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Runs a write in one transaction that also advances the generation, then records the
    /// new generation in the manifest. A manifest that cannot be written (a full disk) stays
    /// behind the database, which the next start accepts; the commit stands.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut inner = self.lock();
        let generation = inner.generation + 1;
        let out = (|| {
            let tx = inner.conn.transaction()?;
            let out = f(&tx)?;
            tx.execute("UPDATE store_meta SET value = ?1 WHERE key = 'generation'", params![generation.to_string()])?;
            tx.commit()?;
            Ok(out)
        })()
        .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })?;
        inner.generation = generation;
        if let Err(e) = manifest::write(&self.data_dir, &inner.manifest()) {
            tracing::warn!(error = %e, generation, "could not update the store manifest (retried at the next commit)");
        }
        Ok(out)
    }

    /// Records (or refreshes) a worker's registration.
    pub fn upsert_worker(&self, id: &str, info_json: &str) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write(|c| {
            c.execute(
                "INSERT INTO workers (id, info_json, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET info_json = excluded.info_json, last_seen = excluded.last_seen",
                params![id, info_json, now],
            )
            .map(|_| ())
        })
    }

    /// Every registered worker.
    pub fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id, info_json, last_seen FROM workers ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok(WorkerRecord { id: r.get(0)?, info_json: r.get(1)?, last_seen: r.get(2)? })
            })?;
            rows.collect()
        })
    }

    /// Stores a newly submitted job as pending.
    pub fn insert_job(&self, id: &str, name: &str, spec_json: &str, schema_toml: &str) -> Result<(), StoreError> {
        self.insert_job_with_catalogue(id, name, spec_json, schema_toml, None)
    }

    /// Stores a newly submitted job as pending, with its item catalogue (a JSON array of item
    /// ids, recommendation jobs only) in the same transaction.
    pub fn insert_job_with_catalogue(
        &self,
        id: &str,
        name: &str,
        spec_json: &str,
        schema_toml: &str,
        catalogue_json: Option<&str>,
    ) -> Result<(), StoreError> {
        self.insert_new_job(&NewJob { id, name, spec_json, schema_toml, catalogue_json, ..NewJob::default() }).map(|_| ())
    }

    /// Stores a newly submitted job as pending, with its catalogue, submission hash and
    /// idempotency key, in one transaction. When a job with the same idempotency key exists,
    /// nothing is stored and that job is returned (checked in the same transaction, so two
    /// concurrent submissions with one key store one job).
    pub fn insert_new_job(&self, job: &NewJob<'_>) -> Result<Inserted, StoreError> {
        let now = now_rfc3339();
        let sql = format!("SELECT {} FROM jobs WHERE idempotency_key = ?1", Self::JOB_COLUMNS);
        self.write(|tx| {
            if let Some(key) = job.idempotency_key
                && let Some(existing) = tx.query_row(&sql, params![key], Self::job_from_row).optional()?
            {
                return Ok(Inserted::ExistingKey(Box::new(existing)));
            }
            tx.execute(
                "INSERT INTO jobs (id, name, spec_json, schema_toml, status, created_at, updated_at, submission_sha256, idempotency_key)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?6, ?7)",
                params![job.id, job.name, job.spec_json, job.schema_toml, now, job.submission_sha256, job.idempotency_key],
            )?;
            if let Some(items) = job.catalogue_json {
                tx.execute("INSERT INTO job_catalogues (job_id, items_json) VALUES (?1, ?2)", params![job.id, items])?;
            }
            Ok(Inserted::New)
        })
    }

    /// The job stored with idempotency key `key`, if any.
    pub fn job_by_idempotency_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {} FROM jobs WHERE idempotency_key = ?1", Self::JOB_COLUMNS);
        self.with(|c| c.query_row(&sql, params![key], Self::job_from_row).optional())
    }

    /// The most recent job submitted with the same submission hash, if any.
    pub fn latest_job_by_submission(&self, sha256: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE submission_sha256 = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            Self::JOB_COLUMNS
        );
        self.with(|c| c.query_row(&sql, params![sha256], Self::job_from_row).optional())
    }

    /// Counts a coordinator start resuming `id` and returns how many earlier resumes were
    /// still counted (each ended without a committed round or a clean shutdown: a crash).
    /// The count is reset by [`Self::complete_round`] and [`Self::clear_resume_attempts`].
    pub fn begin_resume(&self, id: &str) -> Result<u32, StoreError> {
        self.write(|tx| {
            let before: u32 = tx.query_row("SELECT resume_attempts FROM jobs WHERE id = ?1", params![id], |r| r.get(0))?;
            tx.execute("UPDATE jobs SET resume_attempts = resume_attempts + 1 WHERE id = ?1", params![id])?;
            Ok(before)
        })
    }

    /// Forgets every job's resume count: the coordinator stopped cleanly, so none of its
    /// resumes crashed.
    pub fn clear_resume_attempts(&self) -> Result<(), StoreError> {
        self.write(|tx| tx.execute("UPDATE jobs SET resume_attempts = 0 WHERE resume_attempts > 0", []).map(|_| ()))
    }

    /// A job's item catalogue (JSON array of ids), if it has one.
    pub fn job_catalogue(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT items_json FROM job_catalogues WHERE job_id = ?1", params![id], |r| r.get(0))
                .optional()
        })
    }

    fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
        Ok(JobRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            spec_json: r.get(2)?,
            schema_toml: r.get(3)?,
            status: JobStatus::parse(&r.get::<_, String>(4)?),
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            error: r.get(7)?,
            stop_reason: r.get(8)?,
            preprocessing_json: r.get(9)?,
            rounds_completed: r.get::<_, i64>(10)?.max(0) as u64,
            model_hash: r.get(11)?,
            state_hash: r.get(12)?,
            export_dir: r.get(13)?,
            export_error: r.get(14)?,
            resume_attempts: r.get(15)?,
            submission_sha256: r.get(16)?,
            idempotency_key: r.get(17)?,
        })
    }

    const JOB_COLUMNS: &'static str = "id, name, spec_json, schema_toml, status, created_at, updated_at, error, \
         stop_reason, preprocessing_json, rounds_completed, model_hash, state_hash, export_dir, export_error, \
         resume_attempts, submission_sha256, idempotency_key";

    /// Records the outcome of the automatic export of a completed job: the directory written,
    /// or why it failed (the other is cleared).
    pub fn set_export(&self, id: &str, dir: Option<&str>, error: Option<&str>) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute("UPDATE jobs SET export_dir = ?2, export_error = ?3 WHERE id = ?1", params![id, dir, error])
                .map(|_| ())
        })
    }

    /// Keeps `head` (with the bank's cumulative ε `dp_spent_epsilon`) as `worker_id`'s latest
    /// audit head for `job_id`, unless one of a later round is already stored (uploads of one
    /// round may arrive in any order; later rounds win).
    pub fn set_audit_head(&self, job_id: &str, worker_id: &str, round: u64, head: &str, dp_spent_epsilon: f64) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write(|c| {
            c.execute(
                "INSERT INTO audit_heads (job_id, worker_id, round, head, recorded_at, dp_spent_epsilon) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(job_id, worker_id) DO UPDATE SET round = excluded.round, head = excluded.head,
                     recorded_at = excluded.recorded_at, dp_spent_epsilon = excluded.dp_spent_epsilon
                 WHERE excluded.round >= audit_heads.round",
                params![job_id, worker_id, round as i64, head, now, dp_spent_epsilon],
            )
            .map(|_| ())
        })
    }

    /// Every bank's latest audit head for `job_id`, by worker id.
    pub fn audit_heads(&self, job_id: &str) -> Result<Vec<AuditHeadRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT worker_id, round, head, recorded_at, dp_spent_epsilon FROM audit_heads WHERE job_id = ?1 ORDER BY worker_id",
            )?;
            let rows = st.query_map(params![job_id], |r| {
                Ok(AuditHeadRecord {
                    worker_id: r.get(0)?,
                    round: r.get::<_, i64>(1)?.max(0) as u64,
                    head: r.get(2)?,
                    recorded_at: r.get(3)?,
                    dp_spent_epsilon: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// One job, if it exists.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", Self::JOB_COLUMNS);
        self.with(|c| c.query_row(&sql, params![id], Self::job_from_row).optional())
    }

    /// All jobs, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {} FROM jobs ORDER BY created_at, id", Self::JOB_COLUMNS);
        self.with(|c| {
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], Self::job_from_row)?;
            rows.collect()
        })
    }

    /// Sets a job's status, with the reason it failed or stopped early.
    pub fn set_job_status(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<&str>,
        stop_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write(|c| {
            c.execute(
                "UPDATE jobs SET status = ?2, error = COALESCE(?3, error),
                 stop_reason = COALESCE(?4, stop_reason), updated_at = ?5 WHERE id = ?1",
                params![id, status.as_str(), error, stop_reason, now],
            )
            .map(|_| ())
        })
    }

    /// Stores the federated preprocessing statistics and the initial model (round 0).
    pub fn set_job_start(
        &self,
        id: &str,
        preprocessing_json: &str,
        model_hash: &str,
        state_hash: &str,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write(|c| {
            c.execute(
                "UPDATE jobs SET preprocessing_json = ?2, model_hash = ?3, state_hash = ?4, updated_at = ?5
                 WHERE id = ?1 AND rounds_completed = 0",
                params![id, preprocessing_json, model_hash, state_hash, now],
            )
            .map(|_| ())
        })
    }

    /// Makes a round durable: its record, its participants and the job's new head, atomically.
    /// The checkpoints it names must already be written.
    pub fn complete_round(&self, job_id: &str, attempt: u32, round: &RoundRecord) -> Result<(), StoreError> {
        let metrics_json = serde_json::to_string(&round.metrics).map_err(|e| StoreError::Record(e.to_string()))?;
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO rounds (job_id, round, model_hash, state_hash, metrics_json, duration_secs, completed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![job_id, round.round as i64, round.model_hash, round.state_hash, metrics_json, round.duration_secs, round.completed_at],
            )?;
            for p in &round.participants {
                tx.execute(
                    "INSERT INTO participants (job_id, round, attempt, worker_id, status, reason, completed, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
                    params![job_id, round.round as i64, attempt, p.worker_id, p.status.as_str(), p.reason, round.completed_at],
                )?;
            }
            // A committed round also ends the count of crashed resumes (see `begin_resume`).
            tx.execute(
                "UPDATE jobs SET rounds_completed = ?2, model_hash = ?3, state_hash = ?4, status = 'running', updated_at = ?5,
                 resume_attempts = 0 WHERE id = ?1",
                params![job_id, round.round as i64, round.model_hash, round.state_hash, round.completed_at],
            )?;
            Ok(())
        })
    }

    /// Records the outcomes of a failed attempt at a round (the round will be retried).
    pub fn record_failed_attempt(
        &self,
        job_id: &str,
        round: u64,
        attempt: u32,
        participants: &[ParticipantRecord],
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write(|tx| {
            for p in participants {
                tx.execute(
                    "INSERT INTO participants (job_id, round, attempt, worker_id, status, reason, completed, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                    params![job_id, round as i64, attempt, p.worker_id, p.status.as_str(), p.reason, now],
                )?;
            }
            Ok(())
        })
    }

    /// Completed rounds of a job, in order, with their participants.
    pub fn rounds(&self, job_id: &str) -> Result<Vec<RoundRecord>, StoreError> {
        Ok(self.rounds_where(Some(job_id))?.into_iter().map(|(_, r)| r).collect())
    }

    /// Every job's completed rounds as (job id, round), in job and round order: two queries
    /// for any number of jobs.
    pub fn all_rounds(&self) -> Result<Vec<(String, RoundRecord)>, StoreError> {
        self.rounds_where(None)
    }

    fn rounds_where(&self, job: Option<&str>) -> Result<Vec<(String, RoundRecord)>, StoreError> {
        type Row = (String, i64, String, String, String, f64, String);
        let (rounds, parts) = self.with(|c| {
            let mut st = c.prepare(
                "SELECT job_id, round, model_hash, state_hash, metrics_json, duration_secs, completed_at
                 FROM rounds WHERE ?1 IS NULL OR job_id = ?1 ORDER BY job_id, round",
            )?;
            let rows = st.query_map(params![job], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?;
            let rounds: Vec<Row> = rows.collect::<rusqlite::Result<_>>()?;
            let mut st = c.prepare(
                "SELECT job_id, round, worker_id, status, reason FROM participants
                 WHERE completed = 1 AND (?1 IS NULL OR job_id = ?1) ORDER BY job_id, round, worker_id",
            )?;
            let parts = st.query_map(params![job], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, i64>(1)?),
                    ParticipantRecord { worker_id: r.get(2)?, status: status_column(r, 3)?, reason: r.get(4)? },
                ))
            })?;
            let mut by_round: HashMap<(String, i64), Vec<ParticipantRecord>> = HashMap::new();
            for p in parts {
                let (key, record) = p?;
                by_round.entry(key).or_default().push(record);
            }
            Ok((rounds, by_round))
        })?;
        let mut parts = parts;
        rounds
            .into_iter()
            .map(|(job_id, round, model_hash, state_hash, metrics_json, duration_secs, completed_at)| {
                let metrics = serde_json::from_str(&metrics_json).map_err(|e| StoreError::Record(e.to_string()))?;
                let participants = parts.remove(&(job_id.clone(), round)).unwrap_or_default();
                let record = RoundRecord { round: round.max(0) as u64, model_hash, state_hash, metrics, duration_secs, completed_at, participants };
                Ok((job_id, record))
            })
            .collect()
    }

    /// Outcomes of failed attempts at rounds not (yet) completed: why workers failed or refused.
    pub fn failed_attempts(&self, job_id: &str) -> Result<Vec<(u64, u32, ParticipantRecord)>, StoreError> {
        Ok(self.failed_attempts_where(Some(job_id))?.into_iter().map(|(_, a)| a).collect())
    }

    /// Every job's failed-attempt outcomes as (job id, outcome), in one query.
    pub fn all_failed_attempts(&self) -> Result<Vec<(String, (u64, u32, ParticipantRecord))>, StoreError> {
        self.failed_attempts_where(None)
    }

    #[allow(clippy::type_complexity)] // (job, (round, attempt, outcome)), named in the callers' docs
    fn failed_attempts_where(&self, job: Option<&str>) -> Result<Vec<(String, (u64, u32, ParticipantRecord))>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT job_id, round, attempt, worker_id, status, reason FROM participants
                 WHERE completed = 0 AND (?1 IS NULL OR job_id = ?1) ORDER BY job_id, round, attempt, worker_id",
            )?;
            let rows = st.query_map(params![job], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, u32>(2)?,
                        ParticipantRecord { worker_id: r.get(3)?, status: status_column(r, 4)?, reason: r.get(5)? },
                    ),
                ))
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(n: u64) -> RoundRecord {
        RoundRecord {
            round: n,
            model_hash: format!("{n:064x}"),
            state_hash: format!("{:064x}", n + 100),
            metrics: BTreeMap::from([("auc".to_string(), 0.8)]),
            duration_secs: 1.5,
            completed_at: now_rfc3339(),
            participants: vec![ParticipantRecord { worker_id: "bank1".into(), status: ParticipantStatus::Contributed, reason: String::new() }],
        }
    }

    /// A database of the first release's tables (SCHEMA still creates them; only migrations
    /// add columns) holding one completed job `old`.
    fn first_release_database(dir: &std::path::Path) -> Connection {
        let conn = Connection::open(dir.join("state.sqlite3")).expect("create");
        conn.execute_batch(SCHEMA).expect("old schema");
        conn.execute(
            "INSERT INTO jobs (id, name, spec_json, schema_toml, status, created_at, updated_at)
             VALUES ('old', 'churn', '{}', '', 'completed', 't', 't')",
            [],
        )
        .expect("old job");
        conn
    }

    #[test]
    fn a_database_from_before_exports_gains_the_export_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(first_release_database(dir.path()));
        let store = Store::open(dir.path()).expect("opens and migrates");
        let job = store.job("old").expect("query").expect("kept");
        assert_eq!((job.export_dir, job.export_error), (None, None));
        store.set_export("old", None, Some("disk full")).expect("record failure");
        assert_eq!(store.job("old").expect("query").expect("job").export_error.as_deref(), Some("disk full"));
        store.set_export("old", Some("/data/jobs/old/export"), None).expect("record success");
        let job = store.job("old").expect("query").expect("job");
        assert_eq!((job.export_dir.as_deref(), job.export_error), (Some("/data/jobs/old/export"), None));
        drop(store);
        Store::open(dir.path()).expect("a migrated database reopens");
    }

    #[test]
    fn audit_heads_from_before_dp_gain_the_spent_epsilon_column_as_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h1, h2) = ("1".repeat(64), "2".repeat(64));
        {
            let conn = first_release_database(dir.path());
            conn.execute("INSERT INTO audit_heads (job_id, worker_id, round, head, recorded_at) VALUES ('old', 'bank1', 1, ?1, 't')", [&h1])
                .expect("old head");
        }
        let store = Store::open(dir.path()).expect("opens and migrates");
        let heads = store.audit_heads("old").expect("heads");
        assert_eq!((heads[0].head.as_str(), heads[0].dp_spent_epsilon), (h1.as_str(), 0.0), "a head from before is not DP");
        store.set_audit_head("old", "bank1", 2, &h2, 1.25).expect("a later upload");
        assert_eq!(store.audit_heads("old").expect("heads")[0].dp_spent_epsilon, 1.25);
        drop(store);
        Store::open(dir.path()).expect("a migrated database reopens");
    }

    #[test]
    fn completed_rounds_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.insert_job("j1", "churn", "{}", "").expect("insert");
            store.complete_round("j1", 1, &round(1)).expect("round 1");
            store.complete_round("j1", 1, &round(2)).expect("round 2");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let job = store.job("j1").expect("query").expect("exists");
        assert_eq!(job.rounds_completed, 2);
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.model_hash.as_deref(), Some(round(2).model_hash.as_str()));
        let rounds = store.rounds("j1").expect("rounds");
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[1].participants[0].worker_id, "bank1");
        assert_eq!(rounds[1].metrics["auc"], 0.8);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("state.sqlite3"), vec![0x42u8; 8192]).expect("write");
        let err = Store::open(dir.path()).expect_err("garbage must be refused");
        let msg = err.to_string();
        assert!(msg.contains("state.sqlite3"), "{msg}");
    }

    #[test]
    fn a_database_locked_by_another_process_is_a_clear_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("create"));
        let other = Connection::open(dir.path().join("state.sqlite3")).expect("open");
        other.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;").expect("lock");
        let err = Store::open(dir.path()).expect_err("locked");
        let msg = err.to_string();
        assert!(msg.contains("state.sqlite3") && msg.contains("locked"), "{msg}");
    }

    #[test]
    fn the_latest_audit_head_per_bank_is_kept_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h1, h2, h3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        {
            let store = Store::open(dir.path()).expect("open");
            store.insert_job("j1", "churn", "{}", "").expect("insert");
            store.insert_job("j2", "churn", "{}", "").expect("insert");
            store.set_audit_head("j1", "bank2", 1, &h1, 0.0).expect("bank2 round 1");
            store.set_audit_head("j1", "bank1", 1, &h1, 0.5).expect("bank1 round 1");
            store.set_audit_head("j1", "bank1", 2, &h2, 0.75).expect("bank1 round 2");
            store.set_audit_head("j1", "bank1", 1, &h3, 0.6).expect("a late upload of round 1");
            store.set_audit_head("j2", "bank1", 1, &h3, 0.0).expect("another job");
            assert!(store.set_audit_head("nope", "bank1", 1, &h1, 0.0).is_err(), "only for a stored job");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let heads: Vec<(String, u64, String)> =
            store.audit_heads("j1").expect("heads").into_iter().map(|h| (h.worker_id, h.round, h.head)).collect();
        assert_eq!(heads, vec![("bank1".into(), 2, h2), ("bank2".into(), 1, h1)]);
        let spent: Vec<f64> = store.audit_heads("j1").expect("heads").iter().map(|h| h.dp_spent_epsilon).collect();
        assert_eq!(spent, [0.75, 0.0], "the ε of the latest upload, with its head");
        assert_eq!(store.audit_heads("j2").expect("heads")[0].head, h3);
        assert!(store.audit_heads("j3").expect("none").is_empty());
    }

    fn problem(err: StoreError) -> StateProblem {
        match err {
            StoreError::StateLost { problem, .. } => problem,
            other => panic!("expected a refusal, got {other}"),
        }
    }

    #[test]
    fn every_commit_advances_the_generation_the_manifest_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.generation(), 0);
        store.insert_job("j1", "churn", "{}", "").expect("insert");
        store.complete_round("j1", 1, &round(1)).expect("round 1");
        let m = manifest::read(dir.path()).expect("read").expect("written");
        assert_eq!((m.generation, store.generation()), (2, 2));
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert_eq!(store.generation(), 2);
        assert_eq!(manifest::read(dir.path()).expect("read").expect("kept").store_id, m.store_id);
    }

    #[test]
    fn an_empty_or_missing_database_beside_a_manifest_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.insert_job("j1", "churn", "{}", "").expect("insert");
            store.checkpoints().put(b"model").expect("checkpoint");
        }
        let db = dir.path().join("state.sqlite3");
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("state.sqlite3{suffix}")));
        }
        std::fs::write(&db, b"").expect("truncate");
        let manifest_before = std::fs::read(dir.path().join("manifest.json")).expect("manifest");
        let err = Store::open(dir.path()).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("state.sqlite3 is empty (0 bytes)") && msg.contains("1 checkpoint file(s)"), "{msg}");
        assert!(msg.contains("--accept-state-loss") && msg.contains("backup"), "{msg}");
        assert!(matches!(problem(err), StateProblem::EmptyDatabase { .. }));
        assert_eq!(std::fs::metadata(&db).expect("db").len(), 0, "the empty file is not initialised");
        assert_eq!(std::fs::read(dir.path().join("manifest.json")).expect("manifest"), manifest_before, "nothing overwritten");

        std::fs::remove_file(&db).expect("remove");
        assert!(matches!(problem(Store::open(dir.path()).expect_err("refused")), StateProblem::EmptyDatabase { state: "missing", .. }));
        assert!(!db.exists(), "a refused open creates no database");

        let store = Store::open_with(dir.path(), OpenOptions { accept_state_loss: true }).expect("accepted");
        assert!(store.jobs().expect("jobs").is_empty());
        drop(store);
        Store::open(dir.path()).expect("the accepted state is the new baseline");
    }

    #[test]
    fn a_database_behind_its_manifest_is_refused_with_the_number_of_missing_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.sqlite3");
        let backup = dir.path().join("backup.sqlite3");
        {
            let store = Store::open(dir.path()).expect("open");
            store.insert_job("j1", "churn", "{}", "").expect("insert");
            store.with(|c| c.execute_batch(&format!("VACUUM INTO '{}'", backup.display()))).expect("backup at generation 1");
            store.complete_round("j1", 1, &round(1)).expect("round 1");
            store.complete_round("j1", 1, &round(2)).expect("round 2");
        }
        std::fs::copy(&backup, &db).expect("restore the old backup");
        let err = Store::open(dir.path()).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("2 committed transaction(s) are missing"), "{msg}");
        assert_eq!(problem(err), StateProblem::MissingCommits { database: 1, manifest: 3 });
        let store = Store::open_with(dir.path(), OpenOptions { accept_state_loss: true }).expect("accepted");
        assert_eq!(store.job("j1").expect("query").expect("kept").rounds_completed, 0, "the backup's state");
    }

    #[test]
    fn a_database_of_another_store_is_refused() {
        let (here, there) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        drop(Store::open(here.path()).expect("open"));
        drop(Store::open(there.path()).expect("open"));
        std::fs::copy(there.path().join("state.sqlite3"), here.path().join("state.sqlite3")).expect("swap");
        let msg = Store::open(here.path()).expect_err("refused").to_string();
        assert!(msg.contains("belongs to store") && msg.contains("manifest.json names store"), "{msg}");
    }

    #[test]
    fn a_database_from_before_manifests_gets_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join("state.sqlite3")).expect("create");
            conn.execute_batch(SCHEMA.split("CREATE TABLE IF NOT EXISTS store_meta").next().expect("old tables")).expect("old schema");
        }
        drop(Store::open(dir.path()).expect("an old database opens"));
        assert!(manifest::read(dir.path()).expect("read").is_some());
        Store::open(dir.path()).expect("and reopens against its new manifest");
    }

    #[test]
    fn resume_attempts_count_until_a_round_commits_or_a_clean_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_job("j1", "churn", "{}", "").expect("insert");
        assert_eq!(store.begin_resume("j1").expect("first"), 0);
        assert_eq!(store.begin_resume("j1").expect("second"), 1);
        assert_eq!(store.job("j1").expect("q").expect("job").resume_attempts, 2);
        store.complete_round("j1", 1, &round(1)).expect("round");
        assert_eq!(store.begin_resume("j1").expect("after a round"), 0);
        store.clear_resume_attempts().expect("clean stop");
        assert_eq!(store.job("j1").expect("q").expect("job").resume_attempts, 0);
    }

    #[test]
    fn an_idempotency_key_stores_one_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let job = |id| NewJob { id, name: "churn", spec_json: "{}", submission_sha256: Some("ab"), idempotency_key: Some("k1"), ..NewJob::default() };
        assert!(matches!(store.insert_new_job(&job("j1")).expect("first"), Inserted::New));
        let Inserted::ExistingKey(existing) = store.insert_new_job(&job("j2")).expect("second") else { panic!("stored twice") };
        assert_eq!(existing.id, "j1");
        assert_eq!(store.jobs().expect("jobs").len(), 1);
        assert_eq!(store.latest_job_by_submission("ab").expect("q").map(|j| j.id), Some("j1".to_string()));
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_faults() {
        let full = StoreError::Io { path: "x".into(), source: std::io::Error::from_raw_os_error(28) };
        assert!(full.is_disk_full() && full.is_transient());
        let sqlite_full = StoreError::Sqlite {
            path: "x".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None),
        };
        assert!(sqlite_full.is_disk_full() && sqlite_full.is_transient());
        let denied = StoreError::Io { path: "x".into(), source: std::io::Error::from_raw_os_error(13) };
        assert!(!denied.is_disk_full());
    }

    #[test]
    fn failed_attempts_are_kept_apart_from_completed_rounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_job("j1", "churn", "{}", "").expect("insert");
        let p = ParticipantRecord { worker_id: "bank2".into(), status: ParticipantStatus::Failed, reason: "bad.csv line 3".into() };
        store.record_failed_attempt("j1", 1, 1, std::slice::from_ref(&p)).expect("attempt");
        assert!(store.rounds("j1").expect("rounds").is_empty());
        assert_eq!(store.failed_attempts("j1").expect("attempts"), vec![(1, 1, p)]);
    }
}
