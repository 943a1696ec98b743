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
    /// No phase could start before the job's start deadline.
    #[error("no round could start within {}: {reason}", human_secs(*limit_secs))]
    NotStarted {
        /// The start deadline, in seconds.
        limit_secs: u64,
        /// Why it waited (see [`super::activity::waiting_reason`]).
        reason: String,
    },
    /// A started job could not start its next round (or retry) within its idle timeout.
    #[error("idle for {} with no round progress (round {round} could not start): {reason}", human_secs(*limit_secs))]
    Idle {
        /// The round it waited to start (0 = statistics).
        round: u64,
        /// The idle timeout, in seconds.
        limit_secs: u64,
        /// Why it waited.
        reason: String,
    },
    /// Training diverged: a loss is not finite, or far above the first round's.
    #[error("diverged at round {round}: {detail}; lower the learning rate")]
    Diverged {
        /// The round whose metrics showed it.
        round: u64,
        /// Which loss, its value and the reference, e.g. `train loss 30.12 (round 1: 0.6931)`.
        detail: String,
    },
    /// Banks failed deterministically (their data, their policy) and too few others remain
    /// to retry without them: a retry would fail the same way.
    #[error("{} not retried: {failures}; a retry would fail the same way, and without them {} left, {needed} needed", phase_name(*round), banks_left(*remaining))]
    NotRetried {
        /// The round (0 = statistics).
        round: u64,
        /// `bank2 failed: data error (bank2's log, ref …)`, per bank, `; `-separated.
        failures: String,
        /// Eligible banks connected besides them.
        remaining: usize,
        /// Banks needed.
        needed: usize,
    },
    /// The federation's summed statistics do not give a usable preprocessing.
    #[error("federated statistics: {0}")]
    Statistics(#[from] confide_datasets::StatsError),
    /// A tree model cannot go on (its leaf floor cannot be met on the federation's rows, say).
    #[error("gradient-boosted trees: {0}")]
    Trees(#[from] confide_gbdt::GbdtError),
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

fn phase_name(round: u64) -> String {
    if round == 0 { "preprocessing statistics".into() } else { format!("round {round}") }
}

fn banks_left(n: usize) -> String {
    if n == 1 { "1 eligible bank is".into() } else { format!("{n} eligible banks are") }
}

/// Seconds as people read them: `45s`, `30m`, `1h30m`.
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(super::human_secs(3), "3s");
        assert_eq!(super::human_secs(1800), "30m");
        assert_eq!(super::human_secs(90), "1m30s");
        assert_eq!(super::human_secs(5400), "1h30m");
    }
}
