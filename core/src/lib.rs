//! Confide's shared vocabulary, free of libtorch so that the coordinator and CLI build in seconds.
//!
//! - [`model`]: model families, their parameter layouts, flat parameter vectors and the
//!   safetensors checkpoint format every component exchanges.
//! - [`config_file`]: reading TOML configuration files with errors naming file and field.
//! - [`job`]: the job specification a data-science team submits (TOML), validated field by field.
//! - [`strategy`]: server-side optimizers (FedAvg, FedProx, FedAdam, FedYogi) applied to aggregated updates.
//! - [`metrics`]: exact binary-classification metrics from summed score histograms.
//! - [`contribution`]: the training contribution vector's layout, as a codec both sides use.
//! - [`outcome`]: participant statuses and failure kinds, typed.
//! - [`text`]: capping untrusted input quoted in error messages.
//! - [`privacy`]: the differential-privacy accountant (RDP of the subsampled Gaussian, (ε, δ)).
//! - [`spend`]: what a DP job costs a bank, from its public parameters (plans, per-task spends).
//! - [`discrete_noise`]: institution-level distributed discrete Gaussian noise (sampler, clipping and
//!   rounding to the grid, each bank's noise scale, the ring's wrap-around check).

pub mod config_file;
pub mod contribution;
pub mod discrete_noise;
pub mod job;
pub mod metrics;
pub mod model;
pub mod outcome;
pub mod privacy;
pub mod spend;
pub mod strategy;
pub mod text;

/// Hex-encoded SHA-256 of `bytes`: the content address of checkpoints and the schema fingerprint.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
