//! The coordinator's store, in memory: it applies the machine's [`Persist`] writes the way
//! `confide_coordinator::store` does (checkpoints by hash, a round's record and the job's new
//! head together) and gives back a [`JobSnapshot`] to resume from. Faults can be injected:
//! the next N writes fail with "no space left on device" (transient), or every write fails
//! as corruption (permanent).

use std::collections::HashMap;
use std::sync::Arc;

use confide_coordinator::round::machine::{Head, JobSnapshot, Persist};
use confide_coordinator::store::{ParticipantRecord, RoundRecord, StoreError};

/// What the store does with the next writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// Writes succeed.
    None,
    /// The next `n` writes fail as a full disk would.
    DiskFull(usize),
    /// Every write fails as a corrupted database would.
    Corrupt,
}

/// The committed state of one job.
#[derive(Debug)]
pub struct MemoryStore {
    base: JobSnapshot,
    /// Checkpoints by hash.
    pub blobs: HashMap<String, Arc<Vec<u8>>>,
    /// Preprocessing JSON, once the statistics committed.
    pub prep_json: Option<String>,
    /// The head model's hash.
    pub model_hash: Option<String>,
    /// The head optimizer state's hash.
    pub state_hash: Option<String>,
    /// Committed rounds, in order.
    pub rounds: Vec<RoundRecord>,
    /// Outcomes of failed attempts: (round, attempt, outcome).
    pub failed: Vec<(u64, u32, ParticipantRecord)>,
    /// Every write that succeeded, in order.
    pub writes: Vec<Persist>,
    /// Writes refused by an injected fault.
    pub refused_writes: usize,
    /// The fault to inject.
    pub fault: StoreFault,
}

impl MemoryStore {
    /// The store of a job whose committed state is `snapshot` (head checkpoints included).
    pub fn from_snapshot(snapshot: &JobSnapshot) -> Self {
        let mut s = Self {
            base: snapshot.clone(),
            blobs: HashMap::new(),
            prep_json: None,
            model_hash: None,
            state_hash: None,
            rounds: Vec::new(),
            failed: Vec::new(),
            writes: Vec::new(),
            refused_writes: 0,
            fault: StoreFault::None,
        };
        if let Some(head) = &snapshot.head {
            s.prep_json = serde_json::to_string(&head.prep).ok();
            s.model_hash = Some(s.put(&head.model));
            s.state_hash = head.optimizer_state.as_ref().map(|b| s.put(b));
        }
        s
    }

    fn put(&mut self, bytes: &[u8]) -> String {
        let hash = confide_core::sha256_hex(bytes);
        self.blobs.entry(hash.clone()).or_insert_with(|| Arc::new(bytes.to_vec()));
        hash
    }

    fn check_fault(&mut self) -> Result<(), StoreError> {
        match self.fault {
            StoreFault::None => Ok(()),
            StoreFault::DiskFull(n) => {
                self.fault = if n <= 1 { StoreFault::None } else { StoreFault::DiskFull(n - 1) };
                self.refused_writes += 1;
                Err(StoreError::Io {
                    path: "checkpoints/new.tmp".into(),
                    source: std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (os error 28)"),
                })
            }
            StoreFault::Corrupt => {
                self.refused_writes += 1;
                Err(StoreError::Corrupted { hash: "0".repeat(64), actual: "1".repeat(64) })
            }
        }
    }

    /// Applies one write (all of it, or nothing when a fault is injected).
    pub fn apply(&mut self, write: &Persist) -> Result<(), StoreError> {
        self.check_fault()?;
        match write {
            Persist::Start { prep_json, model, optimizer_state } => {
                self.prep_json = Some(prep_json.clone());
                self.model_hash = Some(self.put(&model.bytes));
                self.state_hash = Some(self.put(&optimizer_state.bytes));
            }
            Persist::Checkpoint(blob) => {
                self.put(&blob.bytes);
            }
            Persist::FailedAttempt { round, attempt, participants } => {
                self.failed.extend(participants.iter().map(|p| (*round, *attempt, p.clone())));
            }
            Persist::Round { record, model, optimizer_state, .. } => {
                self.model_hash = Some(self.put(&model.bytes));
                self.state_hash = Some(self.put(&optimizer_state.bytes));
                self.rounds.retain(|r| r.round != record.round);
                let mut record = record.clone();
                record.completed_at = "virtual".into();
                self.rounds.push(record);
            }
        }
        self.writes.push(write.clone());
        Ok(())
    }

    /// The head model's bytes.
    pub fn head_model(&self) -> Option<&[u8]> {
        self.model_hash.as_ref().and_then(|h| self.blobs.get(h)).map(|b| b.as_slice())
    }

    /// What a restarted coordinator reads back.
    pub fn snapshot(&self) -> JobSnapshot {
        let head = match (&self.prep_json, self.head_model()) {
            (Some(p), Some(model)) => Some(Head {
                prep: serde_json::from_str(p).unwrap_or_else(|e| panic!("stored preprocessing: {e}")),
                model: model.to_vec(),
                optimizer_state: self.state_hash.as_ref().and_then(|h| self.blobs.get(h)).map(|b| b.to_vec()),
            }),
            _ => None,
        };
        JobSnapshot {
            head,
            rounds_completed: self.rounds.iter().map(|r| r.round).max().unwrap_or(0),
            past_metrics: self.rounds.iter().map(|r| r.metrics.clone()).collect(),
            ..self.base.clone()
        }
    }
}
