//! A development identity: the Ed25519 key a worker signs its secure-aggregation key
//! advertisements with when it runs without TLS (`--insecure-dev`).
//!
//! With mutual TLS (the normal case) the institution's certificate key is that identity, bound
//! by the federation CA (see `confide_tls`). This file-based key is created on first start with
//! the OS's randomness, stored with owner-only permissions in the data directory, and never
//! leaves the machine (only its public half is sent).

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

/// The identity file could not be read or created.
#[derive(Debug, thiserror::Error)]
#[error("identity key {path}: {message}")]
pub struct IdentityError {
    /// Key file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Loads `data_dir/identity.ed25519`, creating it on first use.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = data_dir.join("identity.ed25519");
    let err = |message: String| IdentityError { path: path.clone(), message };
    if path.exists() {
        return load(data_dir);
    }
    std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let tmp = path.with_extension("tmp");
    write_private(&tmp, key.as_bytes()).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// Loads `data_dir/identity.ed25519`, which must exist (e.g. to verify the audit log it signed).
pub fn load(data_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = data_dir.join("identity.ed25519");
    let err = |message: String| IdentityError { path: path.clone(), message };
    let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| err(format!("expected 32 bytes, found {}", bytes.len())))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
