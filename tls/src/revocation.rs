//! Revocation lists that can change while a process runs.
//!
//! A revocation file names one certificate fingerprint per line (the SHA-256 of the
//! certificate's DER, 64 hexadecimal digits, as `confide certs issue` and
//! `confide certs fingerprint` print it); blank lines and everything after a `#` are ignored.
//! [`RevocationList`] re-reads the file whenever its modification time, size or inode changes,
//! so an operator revokes a certificate by editing the file: no restart. A file that cannot be
//! read or parsed is an error, never an empty list — callers refuse the peer (fail closed)
//! rather than let a truncated or deleted file un-revoke everyone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A revocation file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The file could not be read (missing, permissions).
    #[error("revocation file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// A line is not a certificate fingerprint.
    #[error("revocation file {path}, line {line}: expected a SHA-256 fingerprint (64 hexadecimal digits)")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Fingerprints listed in a revocation file's text (lower-cased). `path` only names the file
/// in errors.
pub fn parse(path: &Path, text: &str) -> Result<BTreeSet<String>, RevocationError> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        if !is_fingerprint(entry) {
            return Err(RevocationError::BadLine { path: path.to_path_buf(), line: i + 1 });
        }
        out.insert(entry.to_ascii_lowercase());
    }
    Ok(out)
}

/// True for a SHA-256 fingerprint as this PKI writes them: 64 hexadecimal digits.
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What identifies one version of the file: when a new one is written in place or renamed
/// over it, at least one of these changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Stamp { modified: meta.modified().ok(), len: meta.len(), inode }
}

/// A revocation file, re-read when it changes.
#[derive(Debug)]
pub struct RevocationList {
    /// The file.
    path: PathBuf,
    /// The last version read and its fingerprints.
    cache: Mutex<Option<(Stamp, Arc<BTreeSet<String>>)>>,
}

impl RevocationList {
    /// Reads `path` once, so a missing or malformed file is reported when the process starts.
    pub fn open(path: &Path) -> Result<Self, RevocationError> {
        let list = Self { path: path.to_path_buf(), cache: Mutex::new(None) };
        list.current()?;
        Ok(list)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprints listed now (the file is read again only when it changed).
    pub fn current(&self) -> Result<Arc<BTreeSet<String>>, RevocationError> {
        let unreadable = |e: std::io::Error| RevocationError::Unreadable { path: self.path.clone(), reason: e.to_string() };
        let now = stamp(&std::fs::metadata(&self.path).map_err(unreadable)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, list)) = cache.as_ref()
            && *seen == now
        {
            return Ok(list.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
        let list = Arc::new(parse(&self.path, &text)?);
        // Stamp what was read: if the file changed between stat and read, the next call sees a
        // different stamp and reads it again.
        *cache = Some((now, list.clone()));
        Ok(list)
    }

    /// True when `fingerprint` is listed now.
    pub fn is_revoked(&self, fingerprint: &str) -> Result<bool, RevocationError> {
        Ok(self.current()?.contains(&fingerprint.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_case_are_ignored_and_garbage_is_an_error() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = format!("# revoked 2024-05-01\n\n{a}  # bank3, key leaked\n  {b}\n");
        let list = parse(Path::new("r.txt"), &text).expect("parses");
        assert_eq!(list, BTreeSet::from([a.clone(), b.to_ascii_lowercase()]));
        let err = parse(Path::new("r.txt"), &format!("{a}\nbank3\n")).expect_err("a name is not a fingerprint");
        assert_eq!(err, RevocationError::BadLine { path: "r.txt".into(), line: 2 });
        assert!(parse(Path::new("r.txt"), &"a".repeat(63)).is_err(), "too short");
    }

    #[test]
    fn the_file_is_re_read_when_it_changes_and_a_missing_one_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "# nobody yet\n").expect("write");
        let list = RevocationList::open(&path).expect("open");
        let fp = "c".repeat(64);
        assert!(!list.is_revoked(&fp).expect("read"));
        std::fs::write(&path, format!("{fp}\n")).expect("rewrite");
        assert!(list.is_revoked(&fp.to_ascii_uppercase()).expect("read"), "seen without a restart");
        // Replaced by rename, as editors and config management do.
        let tmp = dir.path().join("revoked.tmp");
        std::fs::write(&tmp, "# reinstated\n").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert!(!list.is_revoked(&fp).expect("read"));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(list.is_revoked(&fp), Err(RevocationError::Unreadable { .. })), "deleted is not empty");
        std::fs::write(&path, "not a fingerprint\n").expect("write");
        assert!(matches!(list.is_revoked(&fp), Err(RevocationError::BadLine { line: 1, .. })), "garbage is not empty");
        assert!(RevocationList::open(&dir.path().join("absent.txt")).is_err());
    }
}
