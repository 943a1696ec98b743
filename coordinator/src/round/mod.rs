//! Rounds. The pure core: [`machine`] (a job's whole life as a state machine), [`phase`] (one
//! aggregation), [`secure`] (the adapter over the secure-aggregation server), [`schedule`]
//! (who takes part, when to stop early), [`activity`] (what a running job is doing, and why it
//! waits) and [`errors`]. The tokio [`runner`] drives a
//! [`machine::JobMachine`] and owns the clock, the channels and the store calls.

pub mod activity;
pub mod errors;
pub mod machine;
pub mod phase;
pub mod runner;
pub mod schedule;
pub mod secure;
