//! Content-addressed checkpoint files: `checkpoints/<sha256>.safetensors`.
//!
//! A file is written to a temporary name, fsynced, renamed into place and the directory fsynced
//! ([`write_durably`]), so a crash or a full disk leaves either no file or a complete one. Reads verify the content against the
//! hash the file is named by, so a corrupted checkpoint is reported, never loaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The directory of checkpoint files.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
    /// The most recently read checkpoints, verified: every selected worker downloads the same
    /// global model each round, so it is read and hashed once, not once per worker.
    recent: std::sync::Arc<std::sync::Mutex<Vec<(String, Blob)>>>,
}

/// Checkpoint bytes shared between concurrent downloads.
pub type Blob = std::sync::Arc<Vec<u8>>;

/// Verified checkpoints kept in memory.
const RECENT: usize = 4;

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `bytes` to `path` so that a crash or a full disk leaves either the previous file or
/// the complete new one, never a truncated file: a unique temporary name beside it (ending in
/// `.tmp`, removed on failure), fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl CheckpointDir {
    /// Opens (creating) the directory and removes temporary files left by a crash.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir: dir.to_path_buf(), recent: Default::default() })
    }

    /// Path of the checkpoint with `hash`.
    pub fn path(&self, hash: &str) -> Result<PathBuf, StoreError> {
        if !valid_hash(hash) {
            return Err(StoreError::BadHash(hash.to_string()));
        }
        Ok(self.dir.join(format!("{hash}.safetensors")))
    }

    /// Writes `bytes` durably and returns their hash. Writing the same content twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = confide_core::sha256_hex(bytes);
        let path = self.path(&hash)?;
        if path.exists() {
            return Ok(hash);
        }
        write_durably(&path, bytes).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        Ok(hash)
    }

    /// Reads a checkpoint and verifies its content hash, serving recently read ones from memory.
    pub fn get_shared(&self, hash: &str) -> Result<Blob, StoreError> {
        let lock = || self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = lock().iter().find(|(h, _)| h == hash) {
            return Ok(bytes.clone());
        }
        let bytes = std::sync::Arc::new(self.get(hash)?);
        let mut recent = lock();
        recent.push((hash.to_string(), bytes.clone()));
        if recent.len() > RECENT {
            recent.remove(0);
        }
        Ok(bytes)
    }

    /// Reads a checkpoint and verifies its content hash.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash)?;
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        let actual = confide_core::sha256_hex(&bytes);
        if actual != hash {
            return Err(StoreError::Corrupted { hash: hash.to_string(), actual });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = CheckpointDir::open(dir.path()).expect("open");
        let hash = cp.put(b"model bytes").expect("put");
        assert_eq!(cp.get(&hash).expect("get"), b"model bytes");
        assert_eq!(cp.put(b"model bytes").expect("idempotent"), hash);

        std::fs::write(cp.path(&hash).expect("path"), b"tampered").expect("tamper");
        assert!(matches!(cp.get(&hash), Err(StoreError::Corrupted { .. })));
    }

    #[test]
    fn repeated_reads_are_served_from_memory_once_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = CheckpointDir::open(dir.path()).expect("open");
        let hash = cp.put(b"global model").expect("put");
        let first = cp.get_shared(&hash).expect("first read verifies");
        std::fs::remove_file(cp.path(&hash).expect("path")).expect("remove");
        let second = cp.get_shared(&hash).expect("served from memory");
        assert!(std::sync::Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn hashes_are_validated_before_touching_the_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = CheckpointDir::open(dir.path()).expect("open");
        assert!(matches!(cp.get("../../etc/passwd"), Err(StoreError::BadHash(_))));
    }
}
