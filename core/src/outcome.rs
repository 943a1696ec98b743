//! How a participant fared in a phase, and why a task failed: the typed vocabulary the
//! coordinator's round, its store, the wire, the CLI, the report and the model card share.
//!
//! Both travel as protobuf enums and are stored as their lower-case names
//! ([`ParticipantStatus::as_str`], [`FailureKind::as_str`]); reading back an unknown name is an
//! error, never a silent default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How one selected worker fared in one round (or phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantStatus {
    /// Task sent, nothing received yet (only while a phase runs).
    Pending,
    /// Its contribution is in the sum.
    Contributed,
    /// It reported that it could not do the task (data, training, protocol or internal error).
    Failed,
    /// It went silent, disconnected or missed the deadline.
    Dropped,
    /// Its bank's policy refused the task.
    Refused,
}

impl ParticipantStatus {
    /// Every status, in declaration order.
    pub const ALL: [ParticipantStatus; 5] = [
        ParticipantStatus::Pending,
        ParticipantStatus::Contributed,
        ParticipantStatus::Failed,
        ParticipantStatus::Dropped,
        ParticipantStatus::Refused,
    ];

    /// The lower-case name used in the database, JSON views and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantStatus::Pending => "pending",
            ParticipantStatus::Contributed => "contributed",
            ParticipantStatus::Failed => "failed",
            ParticipantStatus::Dropped => "dropped",
            ParticipantStatus::Refused => "refused",
        }
    }

    /// True when the participant's contribution is in the sum.
    pub fn contributed(self) -> bool {
        self == ParticipantStatus::Contributed
    }
}

/// Why a task failed, as the worker classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The bank's data could not be read or does not fit the job's schema.
    Data,
    /// The bank's policy refused the task.
    Policy,
    /// Local training or evaluation failed.
    Training,
    /// The task or a protocol message was malformed, or the protocol ended early.
    Protocol,
    /// Anything else inside the worker (its disk, a panic).
    Internal,
    /// A value of the bank's lies outside the range the task allows (the bank does not say
    /// which, or by how much).
    OutOfRange,
    /// The task names a dataset the bank configured but does not offer now: its files are
    /// missing, empty or corrupt (the bank's operator sees which file, line and column; the
    /// coordinator only that it is unavailable).
    DatasetUnavailable,
    /// The bank's training labels are all one class, so its local training would teach the
    /// model nothing but that class (the bank says no more: not which class, nor how many).
    OneClassLabels,
    /// The task would take the bank's privacy budget for its dataset past `epsilon_budget` (the
    /// remaining budget is in the bank's own log; the coordinator learns only this kind).
    BudgetExhausted,
    /// The bank requires differential privacy on the dataset (`require_dp`) and the job is not DP.
    DpRequired,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Data,
        FailureKind::Policy,
        FailureKind::Training,
        FailureKind::Protocol,
        FailureKind::Internal,
        FailureKind::OutOfRange,
        FailureKind::DatasetUnavailable,
        FailureKind::OneClassLabels,
        FailureKind::BudgetExhausted,
        FailureKind::DpRequired,
    ];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Data => "data",
            FailureKind::Policy => "policy",
            FailureKind::Training => "training",
            FailureKind::Protocol => "protocol",
            FailureKind::Internal => "internal",
            FailureKind::OutOfRange => "out_of_range",
            FailureKind::DatasetUnavailable => "dataset_unavailable",
            FailureKind::OneClassLabels => "one_class_labels",
            FailureKind::BudgetExhausted => "budget_exhausted",
            FailureKind::DpRequired => "dp_required",
        }
    }

    /// How the job's owner reads the kind when the bank shares no details: `data error`,
    /// `policy refusal`, ...
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::Data => "data error",
            FailureKind::Policy => "policy refusal",
            FailureKind::Training => "training error",
            FailureKind::Protocol => "protocol error",
            FailureKind::Internal => "internal error",
            FailureKind::OutOfRange => "value out of range",
            FailureKind::DatasetUnavailable => "dataset unavailable",
            FailureKind::OneClassLabels => "all training labels are one class",
            FailureKind::BudgetExhausted => "privacy budget exhausted",
            FailureKind::DpRequired => "differential privacy required",
        }
    }

    /// The participant status a failure of this kind gives: a policy failure, an unavailable
    /// dataset, one-class labels, an exhausted privacy budget and a required DP are the bank's
    /// refusals; the rest are failures.
    pub fn status(self) -> ParticipantStatus {
        match self {
            FailureKind::Policy
            | FailureKind::DatasetUnavailable
            | FailureKind::OneClassLabels
            | FailureKind::BudgetExhausted
            | FailureKind::DpRequired => ParticipantStatus::Refused,
            _ => ParticipantStatus::Failed,
        }
    }

    /// True when the same task sent to the same bank again would fail the same way, so the
    /// coordinator does not retry it: the bank's data (`data`, `dataset_unavailable`,
    /// `one_class_labels`) and rules (`policy`) change only when its operator acts, and a value
    /// outside the task's range (`out_of_range`) stays outside it for the same task; a spent
    /// privacy budget (`budget_exhausted`) is never refunded and `require_dp` (`dp_required`)
    /// does not change with a retry. Training,
    /// protocol and internal failures may pass on a retry (a numerical accident, a dropped
    /// connection, a busy or restarted worker).
    pub fn is_deterministic(self) -> bool {
        match self {
            FailureKind::Data
            | FailureKind::Policy
            | FailureKind::DatasetUnavailable
            | FailureKind::OneClassLabels
            | FailureKind::OutOfRange
            | FailureKind::BudgetExhausted
            | FailureKind::DpRequired => true,
            FailureKind::Training | FailureKind::Protocol | FailureKind::Internal => false,
        }
    }
}

/// Why a bank does not offer a dataset it configured: what the coordinator learns of it (the
/// kind of problem, never the file's name, lines, values or counts, which stay in the bank's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetProblem {
    /// A data or schema file does not exist.
    Missing,
    /// A data file holds no rows.
    Empty,
    /// A data file cannot be read against the schema (a bad cell, a missing column, bad syntax).
    Corrupt,
    /// The schema file cannot be read or describes another dataset.
    Schema,
}

impl DatasetProblem {
    /// Every problem, in declaration order.
    pub const ALL: [DatasetProblem; 4] =
        [DatasetProblem::Missing, DatasetProblem::Empty, DatasetProblem::Corrupt, DatasetProblem::Schema];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetProblem::Missing => "missing",
            DatasetProblem::Empty => "empty",
            DatasetProblem::Corrupt => "corrupt",
            DatasetProblem::Schema => "schema",
        }
    }

    /// How people read it: `missing file`, `no rows`, ...
    pub fn describe(self) -> &'static str {
        match self {
            DatasetProblem::Missing => "missing file",
            DatasetProblem::Empty => "no rows",
            DatasetProblem::Corrupt => "corrupt file",
            DatasetProblem::Schema => "unusable schema",
        }
    }
}

/// A name that is not one of the enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`")]
pub struct UnknownName {
    /// Which enum.
    pub what: &'static str,
    /// The name read.
    pub name: String,
}

macro_rules! named {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName { what: $what, name: s.into() })
            }
        }
    };
}

named!(ParticipantStatus, "participant status");
named!(FailureKind, "failure kind");
named!(DatasetProblem, "dataset problem");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for s in ParticipantStatus::ALL {
            assert_eq!(s.as_str().parse::<ParticipantStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{s}\""));
        }
        for k in FailureKind::ALL {
            assert_eq!(k.as_str().parse::<FailureKind>(), Ok(k));
        }
        assert!("contibuted".parse::<ParticipantStatus>().is_err(), "a typo is an error, not a status");
        assert_eq!(FailureKind::Policy.status(), ParticipantStatus::Refused);
        assert_eq!(FailureKind::Data.status(), ParticipantStatus::Failed);
        assert_eq!(FailureKind::OneClassLabels.status(), ParticipantStatus::Refused);
        assert_eq!(FailureKind::DatasetUnavailable.status(), ParticipantStatus::Refused);
    }

    #[test]
    fn the_banks_data_and_rules_are_deterministic_transient_faults_are_not() {
        let deterministic: Vec<FailureKind> = FailureKind::ALL.into_iter().filter(|k| k.is_deterministic()).collect();
        assert_eq!(
            deterministic,
            [
                FailureKind::Data,
                FailureKind::Policy,
                FailureKind::OutOfRange,
                FailureKind::DatasetUnavailable,
                FailureKind::OneClassLabels,
                FailureKind::BudgetExhausted,
                FailureKind::DpRequired
            ]
        );
    }
}
