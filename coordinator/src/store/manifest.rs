//! The store's manifest, `data_dir/manifest.json`: a marker beside the database saying which
//! database belongs here and how many commits it has seen.
//!
//! The database keeps the same store id and a commit generation in its `store_meta` table;
//! every write transaction advances the generation and, once committed, the manifest is
//! rewritten (temporary file, fsync, rename). At start the two are compared, so state that
//! vanished outside the coordinator is refused instead of silently served:
//! - an empty or missing `state.sqlite3` while the manifest, checkpoints or job directories
//!   exist (a bad restore, a truncated copy) — see [`StateProblem::EmptyDatabase`];
//! - a database whose generation is behind the manifest's: committed transactions were lost,
//!   typically a deleted `-wal` file after a crash — [`StateProblem::MissingCommits`];
//! - a database of another store, or one without a store id where a manifest exists —
//!   [`StateProblem::ForeignDatabase`].
//!
//! The manifest is written after the commit, so a crash in between leaves it one generation
//! behind the database, which is accepted (and repaired) at the next start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::checkpoints::write_durably;

/// File name of the manifest inside the data directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What the operator is told to do when the state on disk is refused.
pub const RECOVERY: &str = "to recover, restore state.sqlite3 (with its -wal file) from a backup of this data directory; \
     or move the data directory aside to start a new, empty federation; or, to accept the loss and continue with the \
     database as it is, start once with --accept-state-loss";

/// The manifest's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of this file's layout.
    pub format: u32,
    /// The store's id (UUID), also kept in the database.
    pub store_id: String,
    /// Commits the store has made (the database's generation after the last one).
    pub generation: u64,
    /// RFC 3339 time of the last update.
    pub updated_at: String,
}

/// Current layout version of [`Manifest`].
pub const FORMAT: u32 = 1;

/// Why the state on disk is refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateProblem {
    /// The database is empty or missing while other state of this data directory exists.
    #[error("state.sqlite3 is {state} but this data directory holds {found}")]
    EmptyDatabase {
        /// `missing` or `empty (0 bytes)`.
        state: &'static str,
        /// What was found instead, e.g. `manifest.json (generation 41), 12 checkpoint files, 3 job directories`.
        found: String,
    },
    /// The database has fewer commits than the manifest recorded.
    #[error(
        "state.sqlite3 is at commit {database} but manifest.json recorded commit {manifest}: {} committed transaction(s) are missing (was the state.sqlite3-wal file deleted or not restored?)",
        manifest - database
    )]
    MissingCommits {
        /// The database's generation.
        database: u64,
        /// The manifest's generation.
        manifest: u64,
    },
    /// The database belongs to another store, or carries no store id although a manifest exists.
    #[error("state.sqlite3 {database} but manifest.json names store {manifest}")]
    ForeignDatabase {
        /// `belongs to store <id>` or `has no store id (a new or foreign database)`.
        database: String,
        /// The manifest's store id.
        manifest: String,
    },
    /// The manifest exists but cannot be read.
    #[error("manifest.json is unreadable: {0}")]
    UnreadableManifest(String),
}

/// Reads the manifest; `None` when there is none.
pub fn read(data_dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = data_dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| StoreError::StateLost {
        data_dir: data_dir.to_path_buf(),
        problem: StateProblem::UnreadableManifest(e.to_string()),
    })
}

/// Writes the manifest durably (write, fsync, rename).
pub fn write(data_dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let path = data_dir.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Record(e.to_string()))?;
    write_durably(&path, &bytes).map_err(|source| StoreError::Io { path, source })
}

/// What of this data directory exists besides the database (empty when nothing does):
/// the manifest, checkpoint files, job directories.
pub fn evidence(data_dir: &Path, manifest: Option<&Manifest>) -> String {
    let count = |dir: PathBuf| std::fs::read_dir(dir).map(|d| d.flatten().count()).unwrap_or(0);
    let mut found = Vec::new();
    if let Some(m) = manifest {
        found.push(format!("{MANIFEST_FILE} (store {}, commit {})", m.store_id, m.generation));
    }
    let checkpoints = count(data_dir.join("checkpoints"));
    if checkpoints > 0 {
        found.push(format!("{checkpoints} checkpoint file(s)"));
    }
    let jobs = count(data_dir.join("jobs"));
    if jobs > 0 {
        found.push(format!("{jobs} job director{}", if jobs == 1 { "y" } else { "ies" }));
    }
    found.join(", ")
}
