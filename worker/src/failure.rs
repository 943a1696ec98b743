//! Why a task could not be done: the worker's one error type. Every part of the worker (the
//! task machine, the local computation, the bank's policy, transfers) reports a [`Failure`],
//! whose [`FailureKind`] travels to the coordinator as the protobuf enum and decides whether the
//! job's owner sees the bank as `failed` or `refused`.

pub use confide_core::outcome::FailureKind;
use confide_proto::v1 as pb;

/// Why a task could not be done; reported to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {reason}")]
pub struct Failure {
    /// What kind of fault (data, policy, training, protocol, internal).
    pub kind: FailureKind,
    /// Human-readable reason (names files and lines of the bank's own data, never the other
    /// side's data).
    pub reason: String,
    /// The reason says nothing of the bank's data — its own rules checked against the job
    /// (`policy.max_rounds_per_job = 2`, a model kind it does not allow) or a fixed text
    /// ("all training labels are one class") — so it is reported even when the bank shares no
    /// error details.
    pub shareable: bool,
}

impl Failure {
    /// A failure of kind `kind`.
    pub fn new(kind: FailureKind, reason: impl std::fmt::Display) -> Self {
        Self { kind, reason: reason.to_string(), shareable: false }
    }

    /// The same failure, its reason marked as safe to report (see [`Self::shareable`]).
    pub fn shareable(self) -> Self {
        Self { shareable: true, ..self }
    }

    /// A malformed task or protocol message, or a protocol that ended early.
    pub fn protocol(reason: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Protocol, reason)
    }

    /// The bank's own rules refuse the task.
    pub fn policy(reason: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Policy, reason)
    }

    /// The bank's data cannot be read or does not fit.
    pub fn data(reason: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Data, reason)
    }

    /// Local training or evaluation failed.
    pub fn training(reason: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Training, reason)
    }

    /// The dataset `name` is configured but not offered now, for `problem`: the kind of problem
    /// only (the file, line and column are in the bank's own log), so shareable.
    pub fn dataset_unavailable(name: &str, problem: confide_core::outcome::DatasetProblem) -> Self {
        Self::new(FailureKind::DatasetUnavailable, format!("dataset `{name}` is unavailable at this bank ({})", problem.describe()))
            .shareable()
    }

    /// Anything else inside the worker (its disk, a panic, overload).
    pub fn internal(reason: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Internal, reason)
    }

    /// The failure with its full reason (for banks that share error details, and tests).
    pub fn to_wire(&self) -> pb::TaskFailure {
        pb::TaskFailure::new(self.kind, self.reason.clone())
    }

    /// The report the coordinator gets: the kind and `reference` only, unless the bank shares
    /// error details or the reason is [`Self::shareable`]. A reason names files, lines, values,
    /// counts or item ids of the bank's data, which stay in the bank's own log (under the same
    /// reference).
    pub fn to_report(&self, reference: &str, share_details: bool) -> pb::TaskFailure {
        let reason = if share_details || self.shareable { self.reason.clone() } else { String::new() };
        pb::TaskFailure { reference: reference.to_string(), ..pb::TaskFailure::new(self.kind, reason) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shareable_reasons_are_reported_without_shared_details() {
        let data = Failure::data("train.csv:12: column `tenure`: not a number: 'x'");
        assert_eq!(data.to_report("ref", false).reason, "", "the bank's data stays in its log");
        assert_eq!(data.to_report("ref", true).reason, data.reason);
        let rule = Failure::policy("the job has 3 rounds (policy.max_rounds_per_job = 2)").shareable();
        let report = rule.to_report("ref", false);
        assert_eq!((report.reason.as_str(), report.reference.as_str()), (rule.reason.as_str(), "ref"));
        assert_eq!(report.typed_kind(), Some(FailureKind::Policy));
    }
}
