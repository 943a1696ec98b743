//! Confide's per-institution worker daemon. It dials out to the coordinator (banks accept no
//! inbound connections), trains on local data with libtorch, and sends only contributions that
//! are summed across institutions — never a customer row.
//!
//! - [`task`]: one task's whole logic as a sans-IO state machine (decoding, admission, the
//!   secure-aggregation client, what is reported), driven by effects.
//! - [`session`]: the tokio driver of those machines — connection, registration, the task
//!   stream, effects and reconnection with backoff — generic over [`compute::Compute`].
//! - [`compute`]: the blocking local computation behind a trait; [`compute::TorchCompute`]
//!   is libtorch's.
//! - [`audit`]: the bank's signed, hash-chained log of everything that left it
//!   (`data_dir/audit.log`); each upload is recorded before it is sent.
//! - [`catalog`]: the bank's datasets, checked at start and whenever a file changes; only the
//!   valid ones are offered, the others reported as unavailable.
//! - [`daemon`]: the real worker assembled from its configuration.
//! - [`config`]: the bank's configuration file (datasets, policy, compute).
//! - [`policy`]: the bank's own rules (models, rounds per job, jobs per day).
//! - [`budget`]: the privacy-budget ledger per dataset: each DP task's spend, charged durably
//!   at admission, refused past `epsilon_budget`; `require_dp`.
//! - [`ledger`]: what the bank put into which sums, so no two sums difference to one bank's input.
//! - [`state_file`]: the small durable JSON files (usage counters, ledger), written atomically.
//! - [`failure`]: the worker's one error type, [`failure::Failure`].
//! - [`tasks`]: what each task computes from local data with libtorch.
//! - [`trees`]: what a gradient-boosted tree job's tasks compute (binning, level histograms).
//! - [`transport`]: chunked model download and contribution upload.
//! - [`secure`]: the federation-CA check on a round's peers.
//! - [`membership`]: who may be a peer — pinned members, revoked certificates, no one twice.
//! - [`identity`]: the institution's long-term Ed25519 key.
//! - [`fault`]: crash drills for rehearsing dropouts.
//! - [`ml`]: model construction, local training (FedAvg/FedProx), prediction and additive
//!   evaluation statistics.

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod compute;
pub mod config;
pub mod daemon;
pub mod failure;
pub mod fault;
pub mod identity;
pub mod ledger;
pub mod membership;
pub mod ml;
pub mod policy;
pub mod secure;
pub mod session;
pub mod state_file;
pub mod task;
pub mod tasks;
pub mod trees;
pub mod transport;
