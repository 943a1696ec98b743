//! What can go wrong in a round: a rejected contribution ([`PhaseError`], told to its sender;
//! the phase goes on) and a job that cannot go on ([`JobError`], recorded as the job's error).
//!
//! Store faults are not job errors until they prove permanent: the job machine pauses on a
//! transient one (a full disk, an I/O error) and retries the same write after a backoff, so the
//! job survives; only a permanent fault (corruption) ends it.

use crate::store::StoreError;

/// Why a contribution was rejected. The worker is told; the phase is unaffected.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PhaseError {
    /// The sender was not selected for this phase.
    #[error("worker `{0}` is not a participant of this phase")]
    NotParticipant(String),
    /// The sender already contributed or was already dropped.
    #[error("worker `{0}` already finished this phase")]
    AlreadyFinished(String),
    /// The vector has the wrong length.
    #[error("contribution has {found} values, the phase needs {expected}")]
    Length {
        /// Values received.
        found: usize,
        /// Values expected.
        expected: usize,
    },
    /// A value is NaN or infinite.
    #[error("contribution value {index} is not finite")]
    NotFinite {
        /// Index of the value.
        index: usize,
    },
    /// A plain vector arrived in a secure phase, or the reverse.
    #[error("contribution uses {found} aggregation, this phase uses {expected}")]
    WrongMode {
        /// What arrived.
        found: &'static str,
        /// What the phase runs.
        expected: &'static str,
    },
    /// The phase is over.
    #[error("the phase is already over")]
    Over,
    /// The secure-aggregation state machine refused the message.
    #[error("secure aggregation: {0}")]
    SecAgg(String),
}

/// Why a job ended in failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The preprocessing statistics phase failed on every attempt.
    #[error("preprocessing statistics failed {attempts} times; last: {last}")]
    StatisticsFailed {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// A training round failed on every attempt.
    #[error("round {round} failed {attempts} times; last: {last}")]
    RoundFailed {
        /// The round.
        round: u64,
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// Not enough eligible workers connected within the job's waiting limit.
    #[error("round {round}: only {eligible} eligible workers (offering `{dataset}` with this schema) after {waited_secs} s, {needed} needed")]
    NotEnoughWorkers {
        /// The round waited for (0 = statistics).
        round: u64,
        /// Eligible workers connected.
        eligible: usize,
        /// Workers needed.
        needed: usize,
        /// The job's dataset.
        dataset: String,
        /// Seconds waited.
        waited_secs: u64,
    },
    /// The federation's summed statistics do not give a usable preprocessing.
    #[error("federated statistics: {0}")]
    Statistics(#[from] confide_datasets::StatsError),
    /// The initial model could not be built (a custom module's parameters, say).
    #[error("initial model: {0}")]
    Model(String),
    /// What the store holds for this job cannot be read back.
    #[error("stored job state: {0}")]
    StoredState(String),
    /// The store failed permanently.
    #[error(transparent)]
    Store(#[from] StoreError),
}
