//! Confide's per-institution worker daemon. It dials out to the coordinator (banks accept no
//! inbound connections), trains on local data with libtorch, and sends only contributions that
//! are summed across institutions — never a customer row.
//!
//! - [`config`]: the bank's configuration file (datasets, policy, compute).
//! - [`daemon`]: connection, registration, the task stream and reconnection with backoff.
//! - [`policy`]: the bank's own rules (models, rounds per job, jobs per day).
//! - [`tasks`]: what each task computes from local data.
//! - [`transport`]: chunked model download and contribution upload.
//! - [`secure`]: the worker's side of secure aggregation.
//! - [`identity`]: the institution's long-term Ed25519 key.
//! - [`fault`]: crash drills for rehearsing dropouts.
//! - [`ml`]: model construction, local training (FedAvg/FedProx), prediction and additive
//!   evaluation statistics.

pub mod config;
pub mod daemon;
pub mod fault;
pub mod identity;
pub mod ml;
pub mod policy;
pub mod secure;
pub mod tasks;
pub mod transport;
