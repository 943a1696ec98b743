//! The worker's small durable JSON state files (the policy's usage counters, the contribution
//! ledger): read once at start, rewritten whole and atomically (temp file, fsync, rename) on
//! every change, so a crash leaves the old version or the new one, never half of either.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failure::Failure;

/// The state in `path`; None when the file does not exist. An unreadable or malformed file is
/// an error (`Err` names the file and says it is `what`), so the state cannot be reset by
/// corrupting it.
pub fn read<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: unreadable {what}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces the state in `path` with `value`, durably.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::internal(format!("{}: {e}", path.display()));
    let bytes = serde_json::to_vec_pretty(value).map_err(Failure::internal)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
