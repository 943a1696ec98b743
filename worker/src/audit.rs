//! # The bank's audit log — a signed, hash-chained record of everything that left the bank
//!
//! Every upload a worker makes (each secure-aggregation message, a plain vector, a failure
//! report) is first appended to `data_dir/audit.log`, one JSON object per line, and only then
//! sent. The log is the bank's own: a failure's full local reason is kept here, and nothing in
//! it is sent except the hash of the latest record per job (the *audit head*, carried in each
//! submission's header and listed on the model card, so a model validator can match the card
//! against each bank's log).
//!
//! ## Records
//!
//! A [`Record`] is an [`Entry`] (what the caller describes: time, job, round, task, phase, what
//! was sent, vector length, model, participants and threshold, failure) plus:
//! - `seq`: 1 for the first record, then consecutive;
//! - `prev`: the previous record's `hash` ([`GENESIS`] for the first);
//! - `hash`: SHA-256 (hex) of the record's *canonical form* — the JSON object without `hash`
//!   and `signature`, keys sorted at every level, no whitespace ([`canonical_json`]);
//! - `signature`: Ed25519 (hex) by the bank's identity over [`SIGNING_CONTEXT`] followed by the
//!   32 bytes of `hash` (the context keeps these signatures apart from the secure-aggregation
//!   advertisements the same key signs).
//!
//! Because the hash covers the parsed object rather than a struct, fields a later version adds
//! (such as a value for `privacy_budget_spent`) are covered without changing the format.
//!
//! ## Guarantees, and what they are not
//!
//! - Each line is written with one `write` on a file opened for appending and fsynced before
//!   [`AuditLog::append`] returns; concurrent tasks append through one lock. The driver sends
//!   only after `append` returned, so a failed or torn write never stands for an upload.
//! - [`verify`] detects an edited, deleted, reordered or inserted record, a bad signature and a
//!   torn last line, naming the first bad `seq`. Removing whole records *from the end* leaves a
//!   valid shorter chain: that is what the audit heads on the model card are for.
//! - [`AuditLog::open`] checks the chain (not the signatures, so a rotated certificate key does
//!   not stop the bank) and refuses a broken log. A torn last line — a crash during an append,
//!   which never returned, so nothing it described was sent — is cut off with a warning.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use confide_secagg::MessageKind;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// File name of the log inside the worker's data directory.
pub const FILE_NAME: &str = "audit.log";
/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Prefix of the signed message (followed by the record's 32-byte hash).
pub const SIGNING_CONTEXT: &[u8] = b"confide audit record v1\n";

/// The audit log could not be opened, written or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing the file failed (a full disk, permissions).
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record is not what the chain requires.
    #[error("audit log {path}: record {seq}: {fault}")]
    Broken {
        /// The log file.
        path: PathBuf,
        /// The first bad record (its position, 1-based, which an intact record has as `seq`).
        seq: u64,
        /// What is wrong with it.
        fault: Fault,
    },
    /// A record could not be serialised (cannot happen for the types here; kept typed).
    #[error("audit record: {0}")]
    Encode(String),
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The line is not a complete JSON record (a torn write, or garbage).
    #[error("unreadable line: {0}")]
    Unreadable(String),
    /// The last line has no newline: a write that did not complete.
    #[error("torn last line (no newline): the write did not complete")]
    Torn,
    /// `seq` is not the record's position (a record inserted or deleted before it, or reordered).
    #[error("seq is {found}, expected {expected}")]
    Seq {
        /// Expected position.
        expected: u64,
        /// What the record says.
        found: u64,
    },
    /// `prev` is not the previous record's hash (a record deleted, inserted or reordered).
    #[error("prev does not match the previous record's hash")]
    Prev,
    /// The content does not hash to `hash` (the record was edited).
    #[error("content does not match its hash (edited)")]
    Hash,
    /// The signature is not the bank's over `hash`.
    #[error("signature is not the bank's identity's")]
    Signature,
}

/// Which step of a job the task was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Additive statistics of the training split.
    Stats,
    /// Local training.
    Train,
    /// Federated evaluation.
    Evaluate,
    /// A task that could not be decoded (only a failure report is sent).
    Unknown,
}

impl Phase {
    /// The phase named by [`crate::task::TaskKind::name`] (`none` and anything else: unknown).
    pub fn from_task_name(name: &str) -> Phase {
        match name {
            "stats" => Phase::Stats,
            "train" => Phase::Train,
            "evaluate" => Phase::Evaluate,
            _ => Phase::Unknown,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stats => "stats",
            Phase::Train => "train",
            Phase::Evaluate => "evaluate",
            Phase::Unknown => "unknown",
        }
    }
}

/// What left the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sent {
    /// Secure aggregation: the bank's public keys, signed by its identity.
    KeyAdvertisement,
    /// Secure aggregation: shares of its secrets, encrypted to each peer.
    EncryptedShares,
    /// Secure aggregation: the masked input vector.
    MaskedInput,
    /// Secure aggregation: the signature over the surviving participants.
    ConsistencySignature,
    /// Secure aggregation: shares that unmask the sum.
    UnmaskingShares,
    /// Another secure-aggregation client message (a kind newer than this log).
    OtherSecagg,
    /// Insecure plain mode: the vector in the clear.
    PlainVector,
    /// Why the task failed or was refused.
    FailureReport,
    /// Nothing left the bank: a DP task was admitted and charged to the dataset's privacy
    /// budget (recorded before anything of the task is sent; see [`BudgetNote`]).
    BudgetCharge,
}

impl From<MessageKind> for Sent {
    fn from(kind: MessageKind) -> Sent {
        match kind {
            MessageKind::AdvertiseKeys => Sent::KeyAdvertisement,
            MessageKind::ShareKeys => Sent::EncryptedShares,
            MessageKind::MaskedInput => Sent::MaskedInput,
            MessageKind::ConsistencySignature => Sent::ConsistencySignature,
            MessageKind::UnmaskShares => Sent::UnmaskingShares,
            _ => Sent::OtherSecagg,
        }
    }
}

impl Sent {
    /// Snake-case name, as in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Sent::KeyAdvertisement => "key_advertisement",
            Sent::EncryptedShares => "encrypted_shares",
            Sent::MaskedInput => "masked_input",
            Sent::ConsistencySignature => "consistency_signature",
            Sent::UnmaskingShares => "unmasking_shares",
            Sent::OtherSecagg => "other_secagg",
            Sent::PlainVector => "plain_vector",
            Sent::FailureReport => "failure_report",
            Sent::BudgetCharge => "budget_charge",
        }
    }
}

/// A refusal or failure as the bank recorded it (the full local reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureNote {
    /// `data`, `policy`, `training`, `protocol` or `internal`.
    pub kind: String,
    /// The bank's own reason, unabridged.
    pub reason: String,
}

/// What the caller records about one upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// UTC time, RFC 3339, passed by the caller (the log has no clock).
    pub time: String,
    /// The job.
    pub job: String,
    /// The round.
    pub round: u64,
    /// The coordinator's task id.
    pub task: String,
    /// Which step of the job.
    pub phase: Phase,
    /// What was sent.
    pub sent: Sent,
    /// Values in the vector sent (masked input or plain vector; None for other messages).
    pub vector_len: Option<u64>,
    /// The checkpoint the task ran (train and evaluate).
    pub model_hash: Option<String>,
    /// Institution ids of the session's participants (secure aggregation; empty otherwise).
    pub participants: Vec<String>,
    /// Shares needed to reconstruct a secret (secure aggregation).
    pub threshold: Option<u64>,
    /// For a failure report: why (also a refusal by the bank's policy).
    pub failure: Option<FailureNote>,
    /// For a [`Sent::BudgetCharge`]: the ε this task spent on the dataset (at its δ).
    pub privacy_budget_spent: Option<f64>,
    /// For a [`Sent::BudgetCharge`]: the dataset's budget after the charge. Absent from other
    /// records (and from logs written before the ledger), so their hashes are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetNote>,
}

/// A privacy-budget charge as the audit log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetNote {
    /// The dataset charged.
    pub dataset: String,
    /// The δ the dataset's ε is stated at.
    pub delta: f64,
    /// The ε this task spent.
    pub epsilon: f64,
    /// The dataset's cumulative ε after it.
    pub cumulative: f64,
    /// What is left of `epsilon_budget` (None: no budget configured).
    pub remaining: Option<f64>,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position, from 1.
    pub seq: u64,
    /// The previous record's hash ([`GENESIS`] for the first).
    pub prev: String,
    /// What was recorded.
    #[serde(flatten)]
    pub entry: Entry,
    /// SHA-256 hex of the canonical record without `hash` and `signature`.
    pub hash: String,
    /// Ed25519 signature (hex) over [`SIGNING_CONTEXT`] ‖ `hash`.
    pub signature: String,
}

/// The record as hashed (everything but `hash` and `signature`).
#[derive(Serialize)]
struct Unsigned<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    entry: &'a Entry,
}

/// The outcome of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// The last record's hash ([`GENESIS`] for an empty log).
    pub head: String,
    /// The latest record's hash per job (what the model card lists as the bank's audit head).
    pub heads: BTreeMap<String, String>,
}

/// Where the chain stands.
#[derive(Debug)]
struct State {
    file: std::fs::File,
    /// The last record's seq (0 when empty).
    seq: u64,
    /// The last record's hash.
    last: String,
    /// Latest record's hash per job.
    heads: HashMap<String, String>,
}

/// An open audit log: appends are serialised through one lock and fsynced.
pub struct AuditLog {
    path: PathBuf,
    key: SigningKey,
    state: Mutex<State>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log at `path`, signing new records with `key`. The existing
    /// chain is checked (hashes, `seq`, `prev`; not signatures) and a broken one refused; a torn
    /// last line is cut off (see the module docs).
    pub fn open(path: &Path, key: SigningKey) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let (lines, torn) = split_lines(&text);
        let mut scan = Scan::new(path);
        for line in lines {
            scan.push(line, None)?;
        }
        let complete = text.len() - torn.len();
        if !torn.is_empty() {
            tracing::warn!(log = %path.display(), seq = scan.seq + 1, "audit log: cutting off a torn last line (an append that never completed; nothing it described was sent)");
            let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
            f.set_len(complete as u64).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        sync_dir(path).map_err(io)?;
        let state = State { file, seq: scan.seq, last: scan.last, heads: scan.heads };
        Ok(AuditLog { path: path.to_path_buf(), key, state: Mutex::new(state) })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` as the next record, durably (fsynced) before returning it. Nothing of
    /// the upload it describes may be sent unless this returned `Ok`.
    pub fn append(&self, entry: Entry) -> Result<Record, AuditError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = state.seq + 1;
        let prev = state.last.clone();
        let unsigned = serde_json::to_value(Unsigned { seq, prev: &prev, entry: &entry })
            .map_err(|e| AuditError::Encode(e.to_string()))?;
        let hash = confide_core::sha256_hex(canonical_json(&unsigned).as_bytes());
        let signature = hex::encode(self.key.sign(&signed_message(&hash).map_err(AuditError::Encode)?).to_bytes());
        let record = Record { seq, prev, entry, hash, signature };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Encode(e.to_string()))?;
        line.push(b'\n');
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        // One write of the whole line on an O_APPEND file, then fsync: a crash leaves at most a
        // torn last line, which verify reports and open cuts off.
        state.file.write_all(&line).map_err(io)?;
        state.file.sync_data().map_err(io)?;
        state.seq = seq;
        state.last = record.hash.clone();
        state.heads.insert(record.entry.job.clone(), record.hash.clone());
        Ok(record)
    }

    /// The hash of the latest record for `job`, if any.
    pub fn head(&self, job: &str) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).heads.get(job).cloned()
    }
}

/// Checks the whole log at `path` against `key`: every line a complete record, `seq`
/// consecutive from 1, `prev` chaining, content matching `hash`, and `signature` the key's.
/// The error names the first bad record.
pub fn verify(path: &Path, key: &VerifyingKey) -> Result<VerifyReport, AuditError> {
    let text = std::fs::read(path).map_err(|source| AuditError::Io { path: path.to_path_buf(), source })?;
    let (lines, torn) = split_lines(&text);
    let mut scan = Scan::new(path);
    for line in lines {
        scan.push(line, Some(key))?;
    }
    if !torn.is_empty() {
        return Err(scan.broken(scan.seq + 1, Fault::Torn));
    }
    Ok(VerifyReport { records: scan.seq, head: scan.last, heads: scan.heads.into_iter().collect() })
}

/// The newline-terminated lines of `text`, and what follows the last newline (empty for an
/// intact file, a torn write otherwise).
fn split_lines(text: &[u8]) -> (impl Iterator<Item = &[u8]>, &[u8]) {
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (body, torn) = text.split_at(complete);
    let lines = body.split_inclusive(|&b| b == b'\n').map(|l| l.strip_suffix(b"\n").unwrap_or(l));
    (lines, torn)
}

/// Reads the records of the log at `path` for display (no checks beyond parsing; see
/// [`verify`]).
pub fn read_records(path: &Path) -> Result<Vec<Record>, AuditError> {
    let text = std::fs::read(path).map_err(|source| AuditError::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let record = serde_json::from_slice(line).map_err(|e| AuditError::Broken {
            path: path.to_path_buf(),
            seq: i as u64 + 1,
            fault: Fault::Unreadable(e.to_string()),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// A pass over the records, in order.
struct Scan<'a> {
    path: &'a Path,
    seq: u64,
    last: String,
    heads: HashMap<String, String>,
}

impl<'a> Scan<'a> {
    fn new(path: &'a Path) -> Self {
        Scan { path, seq: 0, last: GENESIS.to_string(), heads: HashMap::new() }
    }

    fn broken(&self, seq: u64, fault: Fault) -> AuditError {
        AuditError::Broken { path: self.path.to_path_buf(), seq, fault }
    }

    /// Checks one line as the next record (and its signature when `key` is given).
    fn push(&mut self, line: &[u8], key: Option<&VerifyingKey>) -> Result<(), AuditError> {
        let expected = self.seq + 1;
        let bad = |fault| self.broken(expected, fault);
        let mut value: Value = serde_json::from_slice(line).map_err(|e| bad(Fault::Unreadable(e.to_string())))?;
        let Some(object) = value.as_object_mut() else {
            return Err(bad(Fault::Unreadable("not a JSON object".into())));
        };
        let mut take = |field: &str| match object.remove(field) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad(Fault::Unreadable(format!("`{field}` missing or not a string")))),
        };
        let (hash, signature) = (take("hash")?, take("signature")?);
        let found = object.get("seq").and_then(Value::as_u64);
        if found != Some(expected) {
            return Err(bad(Fault::Seq { expected, found: found.unwrap_or(0) }));
        }
        if object.get("prev").and_then(Value::as_str) != Some(self.last.as_str()) {
            return Err(bad(Fault::Prev));
        }
        if confide_core::sha256_hex(canonical_json(&value).as_bytes()) != hash {
            return Err(bad(Fault::Hash));
        }
        if let Some(key) = key {
            let message = signed_message(&hash).map_err(|_| bad(Fault::Hash))?;
            let sig = hex::decode(&signature)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .ok_or_else(|| bad(Fault::Signature))?;
            key.verify(&message, &sig).map_err(|_| bad(Fault::Signature))?;
        }
        if let Some(job) = value.get("job").and_then(Value::as_str) {
            self.heads.insert(job.to_string(), hash.clone());
        }
        self.seq = expected;
        self.last = hash;
        Ok(())
    }
}

/// [`SIGNING_CONTEXT`] followed by the 32 bytes of a hex hash.
fn signed_message(hash: &str) -> Result<Vec<u8>, String> {
    let digest = hex::decode(hash).map_err(|e| format!("hash {hash:?}: {e}"))?;
    Ok([SIGNING_CONTEXT, &digest].concat())
}

/// The canonical form a record is hashed in: compact JSON with object keys sorted at every
/// level (independent of serde_json's map ordering features).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Fsyncs the directory holding `path`, so a newly created log survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn entry(job: &str, round: u64, sent: Sent) -> Entry {
        Entry {
            time: format!("2025-01-01T00:00:{round:02}Z"),
            job: job.into(),
            round,
            task: format!("t{round}"),
            phase: Phase::Train,
            sent,
            vector_len: matches!(sent, Sent::MaskedInput).then_some(10),
            model_hash: Some("ab".repeat(32)),
            participants: vec!["bank1".into(), "bank2".into(), "bank3".into()],
            threshold: Some(2),
            failure: None,
            privacy_budget_spent: None,
            budget: None,
        }
    }

    /// A log with five records: job a rounds 1-3, job b rounds 1-2, interleaved.
    fn five(dir: &Path) -> PathBuf {
        let path = dir.join(FILE_NAME);
        let log = AuditLog::open(&path, key(1)).expect("open");
        for (job, round) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)] {
            log.append(entry(job, round, Sent::MaskedInput)).expect("append");
        }
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).expect("read").lines().map(str::to_string).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    }

    fn first_bad(path: &Path, key: &SigningKey) -> (u64, Fault) {
        match verify(path, &key.verifying_key()) {
            Err(AuditError::Broken { seq, fault, .. }) => (seq, fault),
            other => panic!("expected a broken log, got {other:?}"),
        }
    }

    #[test]
    fn appended_records_verify_and_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let report = verify(&path, &key(1).verifying_key()).expect("intact");
        assert_eq!(report.records, 5);
        let log = AuditLog::open(&path, key(1)).expect("reopen");
        assert_eq!(log.head("a").as_deref(), Some(report.head.as_str()), "job a wrote last");
        let mut failed = entry("c", 1, Sent::FailureReport);
        failed.failure = Some(FailureNote { kind: "policy".into(), reason: "job exceeds max_rounds_per_job".into() });
        let r = log.append(failed.clone()).expect("append");
        assert_eq!((r.seq, r.prev.as_str()), (6, report.head.as_str()));
        assert_eq!(read_records(&path).expect("read").last().map(|r| &r.entry), Some(&failed));
        assert_eq!(verify(&path, &key(1).verifying_key()).expect("intact").records, 6);
    }

    #[test]
    fn the_first_record_chains_from_genesis_and_an_empty_log_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let log = AuditLog::open(&path, key(1)).expect("open");
        let empty = VerifyReport { records: 0, head: GENESIS.into(), heads: BTreeMap::new() };
        assert_eq!(verify(&path, &key(1).verifying_key()).expect("empty"), empty);
        assert_eq!(log.append(entry("a", 1, Sent::KeyAdvertisement)).expect("append").prev, GENESIS);
    }

    #[test]
    fn head_is_the_latest_record_per_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let records = read_records(&path).expect("read");
        let log = AuditLog::open(&path, key(1)).expect("reopen");
        assert_eq!(log.head("a"), Some(records[4].hash.clone()));
        assert_eq!(log.head("b"), Some(records[3].hash.clone()));
        assert_eq!(log.head("c"), None);
        let heads = verify(&path, &key(1).verifying_key()).expect("intact").heads;
        assert_eq!((heads.get("a"), heads.get("b"), heads.len()), (Some(&records[4].hash), Some(&records[3].hash), 2));
    }

    #[test]
    fn an_edited_field_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let mut l = lines(&path);
        l[2] = l[2].replace("\"vector_len\":10", "\"vector_len\":11");
        write_lines(&path, &l);
        assert_eq!(first_bad(&path, &key(1)), (3, Fault::Hash));
        assert!(AuditLog::open(&path, key(1)).is_err(), "the worker refuses a broken log");
    }

    #[test]
    fn a_deleted_middle_record_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let mut l = lines(&path);
        l.remove(2);
        write_lines(&path, &l);
        assert_eq!(first_bad(&path, &key(1)), (3, Fault::Seq { expected: 3, found: 4 }));
    }

    #[test]
    fn swapped_records_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let mut l = lines(&path);
        l.swap(1, 3);
        write_lines(&path, &l);
        assert_eq!(first_bad(&path, &key(1)), (2, Fault::Seq { expected: 2, found: 4 }));
    }

    #[test]
    fn a_renumbered_insertion_is_detected_by_the_chain() {
        // Insert a copy of record 2 as record 3 with its seq fixed up: prev no longer chains.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let mut l = lines(&path);
        let forged = l[1].replace("\"seq\":2", "\"seq\":3");
        l.insert(2, forged);
        write_lines(&path, &l);
        assert_eq!(first_bad(&path, &key(1)), (3, Fault::Prev));
    }

    #[test]
    fn a_torn_last_line_is_detected_and_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, &text[..text.len() - 20]).expect("truncate");
        assert_eq!(first_bad(&path, &key(1)), (5, Fault::Torn));
        let log = AuditLog::open(&path, key(1)).expect("open cuts the torn line");
        assert_eq!(log.append(entry("a", 3, Sent::MaskedInput)).expect("append").seq, 5);
        assert_eq!(verify(&path, &key(1).verifying_key()).expect("intact again").records, 5);
    }

    #[test]
    fn a_record_signed_by_another_key_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = five(dir.path());
        // A second writer with another key continues the chain correctly; only the signature
        // tells its record apart.
        AuditLog::open(&path, key(2)).expect("open").append(entry("a", 4, Sent::MaskedInput)).expect("append");
        assert_eq!(first_bad(&path, &key(1)), (6, Fault::Signature));
        assert_eq!(first_bad(&path, &key(2)), (1, Fault::Signature));
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let log = std::sync::Arc::new(AuditLog::open(&path, key(1)).expect("open"));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        log.append(entry(&format!("job{t}"), round, Sent::EncryptedShares)).expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(verify(&path, &key(1).verifying_key()).expect("intact").records, 40);
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":2,"y":3}],"c":"x"}}"#).expect("json");
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,{"y":3,"z":2}]},"b":1}"#);
    }
}
