//! Rounds: the pure pieces (one aggregation [`phase`], [`schedule`] decisions, the
//! [`secure`] adapter over the secure-aggregation state machine) and the tokio [`runner`] that
//! drives a job through them.

pub mod phase;
pub mod runner;
pub mod schedule;
pub mod secure;
