//! Durable coordinator state: an embedded SQLite database plus content-addressed checkpoints.
//!
//! Everything a restarted coordinator needs lives here: registered workers, jobs with their
//! validated specs, every completed round with its participants and metrics, and the hashes of
//! the model and server-optimizer checkpoints. A round becomes durable in one transaction, after
//! its checkpoint files are on disk (see [`checkpoints`]); killing the process at any point
//! therefore leaves either the previous completed round or the new one, never half of one.

pub mod checkpoints;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use confide_core::outcome::ParticipantStatus;
use rusqlite::{Connection, OptionalExtension, params};

pub use checkpoints::CheckpointDir;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHeadRecord {
    /// Worker (institution) id.
    pub worker_id: String,
    /// The round of that upload.
    pub round: u64,
    /// SHA-256 hex of the bank's audit record.
    pub head: String,
    /// RFC 3339 time the coordinator received it.
    pub recorded_at: String,
}

/// The coordinator's database and checkpoint directory.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    checkpoints: CheckpointDir,
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
const ADDED_JOB_COLUMNS: [(&str, &str); 2] = [("export_dir", "TEXT"), ("export_error", "TEXT")];

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info('jobs')")?;
    let present: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    for (name, kind) in ADDED_JOB_COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {kind}"))?;
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

    /// True when the fault is a full disk (ENOSPC, or SQLite's SQLITE_FULL): the job shows
    /// `stalled: no space left on device` until a write succeeds again.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(ENOSPC),
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } => e.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}

/// Linux's "no space left on device".
const ENOSPC: i32 = 28;

/// Current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) `data_dir/state.sqlite3` and `data_dir/checkpoints/`.
    ///
    /// A corrupted file, a file that is not a database, or one locked by another coordinator
    /// gives a [`StoreError::Sqlite`] naming the file.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::Io { path: data_dir.to_path_buf(), source })?;
        let path = data_dir.join("state.sqlite3");
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
        conn.execute_batch(SCHEMA).map_err(err)?;
        add_missing_columns(&conn).map_err(err)?;
        let checkpoints = CheckpointDir::open(&data_dir.join("checkpoints"))?;
        Ok(Self { conn: Mutex::new(conn), path, checkpoints })
    }

    /// The checkpoint directory.
    pub fn checkpoints(&self) -> &CheckpointDir {
        &self.checkpoints
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Records (or refreshes) a worker's registration.
    pub fn upsert_worker(&self, id: &str, info_json: &str) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.with(|c| {
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
        let now = now_rfc3339();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO jobs (id, name, spec_json, schema_toml, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                params![id, name, spec_json, schema_toml, now],
            )?;
            if let Some(items) = catalogue_json {
                tx.execute("INSERT INTO job_catalogues (job_id, items_json) VALUES (?1, ?2)", params![id, items])?;
            }
            tx.commit()
        })
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
        })
    }

    const JOB_COLUMNS: &'static str = "id, name, spec_json, schema_toml, status, created_at, updated_at, error, \
         stop_reason, preprocessing_json, rounds_completed, model_hash, state_hash, export_dir, export_error";

    /// Records the outcome of the automatic export of a completed job: the directory written,
    /// or why it failed (the other is cleared).
    pub fn set_export(&self, id: &str, dir: Option<&str>, error: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("UPDATE jobs SET export_dir = ?2, export_error = ?3 WHERE id = ?1", params![id, dir, error])
                .map(|_| ())
        })
    }

    /// Keeps `head` as `worker_id`'s latest audit head for `job_id`, unless one of a later round
    /// is already stored (uploads of one round may arrive in any order; later rounds win).
    pub fn set_audit_head(&self, job_id: &str, worker_id: &str, round: u64, head: &str) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.with(|c| {
            c.execute(
                "INSERT INTO audit_heads (job_id, worker_id, round, head, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job_id, worker_id) DO UPDATE SET round = excluded.round, head = excluded.head,
                     recorded_at = excluded.recorded_at
                 WHERE excluded.round >= audit_heads.round",
                params![job_id, worker_id, round as i64, head, now],
            )
            .map(|_| ())
        })
    }

    /// Every bank's latest audit head for `job_id`, by worker id.
    pub fn audit_heads(&self, job_id: &str) -> Result<Vec<AuditHeadRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT worker_id, round, head, recorded_at FROM audit_heads WHERE job_id = ?1 ORDER BY worker_id",
            )?;
            let rows = st.query_map(params![job_id], |r| {
                Ok(AuditHeadRecord {
                    worker_id: r.get(0)?,
                    round: r.get::<_, i64>(1)?.max(0) as u64,
                    head: r.get(2)?,
                    recorded_at: r.get(3)?,
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
        self.with(|c| {
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
        self.with(|c| {
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
        self.with(|c| {
            let tx = c.transaction()?;
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
            tx.execute(
                "UPDATE jobs SET rounds_completed = ?2, model_hash = ?3, state_hash = ?4, status = 'running', updated_at = ?5
                 WHERE id = ?1",
                params![job_id, round.round as i64, round.model_hash, round.state_hash, round.completed_at],
            )?;
            tx.commit()
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
        self.with(|c| {
            let tx = c.transaction()?;
            for p in participants {
                tx.execute(
                    "INSERT INTO participants (job_id, round, attempt, worker_id, status, reason, completed, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                    params![job_id, round as i64, attempt, p.worker_id, p.status.as_str(), p.reason, now],
                )?;
            }
            tx.commit()
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

    #[test]
    fn a_database_from_before_exports_gains_the_export_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // SCHEMA still creates the first release's tables; only the migration adds columns.
            let conn = Connection::open(dir.path().join("state.sqlite3")).expect("create");
            conn.execute_batch(SCHEMA).expect("old schema");
            conn.execute(
                "INSERT INTO jobs (id, name, spec_json, schema_toml, status, created_at, updated_at)
                 VALUES ('old', 'churn', '{}', '', 'completed', 't', 't')",
                [],
            )
            .expect("old job");
        }
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
            store.set_audit_head("j1", "bank2", 1, &h1).expect("bank2 round 1");
            store.set_audit_head("j1", "bank1", 1, &h1).expect("bank1 round 1");
            store.set_audit_head("j1", "bank1", 2, &h2).expect("bank1 round 2");
            store.set_audit_head("j1", "bank1", 1, &h3).expect("a late upload of round 1");
            store.set_audit_head("j2", "bank1", 1, &h3).expect("another job");
            assert!(store.set_audit_head("nope", "bank1", 1, &h1).is_err(), "only for a stored job");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let heads: Vec<(String, u64, String)> =
            store.audit_heads("j1").expect("heads").into_iter().map(|h| (h.worker_id, h.round, h.head)).collect();
        assert_eq!(heads, vec![("bank1".into(), 2, h2), ("bank2".into(), 1, h1)]);
        assert_eq!(store.audit_heads("j2").expect("heads")[0].head, h3);
        assert!(store.audit_heads("j3").expect("none").is_empty());
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
