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
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Data,
        FailureKind::Policy,
        FailureKind::Training,
        FailureKind::Protocol,
        FailureKind::Internal,
        FailureKind::OutOfRange,
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
        }
    }

    /// True when the same task to the same bank would fail the same way again (its data, its
    /// policy, a value of its outside the task's range): the coordinator does not retry such a
    /// bank with the same input.
    pub fn is_deterministic(self) -> bool {
        matches!(self, FailureKind::Data | FailureKind::Policy | FailureKind::OutOfRange)
    }

    /// The participant status a failure of this kind gives: a policy failure is a refusal.
    pub fn status(self) -> ParticipantStatus {
        match self {
            FailureKind::Policy => ParticipantStatus::Refused,
            _ => ParticipantStatus::Failed,
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
        assert!(FailureKind::Data.is_deterministic() && FailureKind::Policy.is_deterministic());
        assert!(!FailureKind::Training.is_deterministic() && !FailureKind::Internal.is_deterministic());
    }
}
