//! Wire ↔ domain conversion of participant statuses and failure kinds, used by every side
//! (coordinator, worker, CLI), so an unknown or unset value is handled in one place.

use confide_core::outcome::{DatasetProblem, FailureKind, ParticipantStatus};

use crate::v1 as pb;

impl From<ParticipantStatus> for pb::ParticipantStatus {
    fn from(s: ParticipantStatus) -> Self {
        match s {
            ParticipantStatus::Pending => pb::ParticipantStatus::Pending,
            ParticipantStatus::Contributed => pb::ParticipantStatus::Contributed,
            ParticipantStatus::Failed => pb::ParticipantStatus::Failed,
            ParticipantStatus::Dropped => pb::ParticipantStatus::Dropped,
            ParticipantStatus::Refused => pb::ParticipantStatus::Refused,
        }
    }
}

/// The domain status of a wire value; None for an unset or unknown one.
pub fn participant_status(wire: i32) -> Option<ParticipantStatus> {
    match pb::ParticipantStatus::try_from(wire).ok()? {
        pb::ParticipantStatus::Unspecified => None,
        pb::ParticipantStatus::Pending => Some(ParticipantStatus::Pending),
        pb::ParticipantStatus::Contributed => Some(ParticipantStatus::Contributed),
        pb::ParticipantStatus::Failed => Some(ParticipantStatus::Failed),
        pb::ParticipantStatus::Dropped => Some(ParticipantStatus::Dropped),
        pb::ParticipantStatus::Refused => Some(ParticipantStatus::Refused),
    }
}

impl pb::ParticipantOutcome {
    /// The typed status; None for an unset or unknown value (a newer coordinator's).
    pub fn typed_status(&self) -> Option<ParticipantStatus> {
        participant_status(self.status)
    }

    /// The status's name for people and JSON (`unknown` for an unset or unknown value).
    pub fn status_name(&self) -> &'static str {
        self.typed_status().map_or("unknown", ParticipantStatus::as_str)
    }

    /// True when this participant's contribution is in the round's sum.
    pub fn contributed(&self) -> bool {
        self.typed_status() == Some(ParticipantStatus::Contributed)
    }
}

impl From<FailureKind> for pb::FailureKind {
    fn from(k: FailureKind) -> Self {
        match k {
            FailureKind::Data => pb::FailureKind::Data,
            FailureKind::Policy => pb::FailureKind::Policy,
            FailureKind::Training => pb::FailureKind::Training,
            FailureKind::Protocol => pb::FailureKind::Protocol,
            FailureKind::Internal => pb::FailureKind::Internal,
            FailureKind::OutOfRange => pb::FailureKind::OutOfRange,
            FailureKind::DatasetUnavailable => pb::FailureKind::DatasetUnavailable,
            FailureKind::OneClassLabels => pb::FailureKind::OneClassLabels,
            FailureKind::BudgetExhausted => pb::FailureKind::BudgetExhausted,
            FailureKind::DpRequired => pb::FailureKind::DpRequired,
        }
    }
}

impl pb::TaskFailure {
    /// A failure report of `kind` with `reason`.
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self { kind: pb::FailureKind::from(kind).into(), reason: reason.into(), reference: String::new() }
    }

    /// The typed kind; None for an unset or unknown value (the receiver decides what that means).
    pub fn typed_kind(&self) -> Option<FailureKind> {
        match pb::FailureKind::try_from(self.kind).ok()? {
            pb::FailureKind::Unspecified => None,
            pb::FailureKind::Data => Some(FailureKind::Data),
            pb::FailureKind::Policy => Some(FailureKind::Policy),
            pb::FailureKind::Training => Some(FailureKind::Training),
            pb::FailureKind::Protocol => Some(FailureKind::Protocol),
            pb::FailureKind::Internal => Some(FailureKind::Internal),
            pb::FailureKind::OutOfRange => Some(FailureKind::OutOfRange),
            pb::FailureKind::DatasetUnavailable => Some(FailureKind::DatasetUnavailable),
            pb::FailureKind::OneClassLabels => Some(FailureKind::OneClassLabels),
            pb::FailureKind::BudgetExhausted => Some(FailureKind::BudgetExhausted),
            pb::FailureKind::DpRequired => Some(FailureKind::DpRequired),
        }
    }
}

impl From<DatasetProblem> for pb::DatasetProblem {
    fn from(p: DatasetProblem) -> Self {
        match p {
            DatasetProblem::Missing => pb::DatasetProblem::Missing,
            DatasetProblem::Empty => pb::DatasetProblem::Empty,
            DatasetProblem::Corrupt => pb::DatasetProblem::Corrupt,
            DatasetProblem::Schema => pb::DatasetProblem::Schema,
        }
    }
}

impl pb::UnavailableDataset {
    /// An unavailable dataset `name` with `problem`.
    pub fn new(name: impl Into<String>, problem: DatasetProblem) -> Self {
        Self { name: name.into(), problem: pb::DatasetProblem::from(problem).into() }
    }

    /// The typed problem; None for an unset or unknown value (a newer worker's).
    pub fn typed_problem(&self) -> Option<DatasetProblem> {
        match pb::DatasetProblem::try_from(self.problem).ok()? {
            pb::DatasetProblem::Unspecified => None,
            pb::DatasetProblem::Missing => Some(DatasetProblem::Missing),
            pb::DatasetProblem::Empty => Some(DatasetProblem::Empty),
            pb::DatasetProblem::Corrupt => Some(DatasetProblem::Corrupt),
            pb::DatasetProblem::Schema => Some(DatasetProblem::Schema),
        }
    }

    /// `name: unavailable (corrupt file)`, as `confide workers` shows it.
    pub fn display(&self) -> String {
        match self.typed_problem() {
            Some(p) => format!("{}: unavailable ({})", self.name, p.describe()),
            None => format!("{}: unavailable", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_value_round_trips_and_unset_is_none() {
        for s in ParticipantStatus::ALL {
            let o = pb::ParticipantOutcome { status: pb::ParticipantStatus::from(s).into(), ..Default::default() };
            assert_eq!(o.typed_status(), Some(s));
        }
        assert_eq!(pb::ParticipantOutcome::default().typed_status(), None);
        assert_eq!(pb::ParticipantOutcome { status: 99, ..Default::default() }.status_name(), "unknown");
        for k in FailureKind::ALL {
            assert_eq!(pb::TaskFailure::new(k, "r").typed_kind(), Some(k));
        }
        assert_eq!(pb::TaskFailure::default().typed_kind(), None);
        for p in DatasetProblem::ALL {
            assert_eq!(pb::UnavailableDataset::new("d", p).typed_problem(), Some(p));
        }
        assert_eq!(pb::UnavailableDataset::new("telco_churn", DatasetProblem::Corrupt).display(), "telco_churn: unavailable (corrupt file)");
        assert_eq!(pb::UnavailableDataset { name: "x".into(), problem: 99 }.display(), "x: unavailable");
    }
}
