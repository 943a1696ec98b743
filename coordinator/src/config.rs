//! Coordinator configuration: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings of one coordinator process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address to listen on for workers and the CLI.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory holding the state database and checkpoints.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest contribution (serialised) a worker may submit, in bytes.
    #[serde(default = "default_max_contribution_bytes")]
    pub max_contribution_bytes: u64,
    /// Largest single gRPC message accepted, in bytes (chunks are 1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest model a job may train, in parameters; larger jobs are refused at submission.
    /// The default, 100 million (400 MB of `f32` values), is far above what the built-in
    /// tabular and recommendation families need and keeps one job's model, optimizer state and
    /// aggregation within a few GB; `max_job_memory_bytes` bounds the total as well.
    #[serde(default = "default_max_model_parameters")]
    pub max_model_parameters: u64,
    /// Largest estimated coordinator memory one job may need (model, server-optimizer state,
    /// aggregation and contributions in flight; see `jobs::admission`), in bytes; larger jobs
    /// are refused at submission and not resumed. The default is a quarter of this machine's
    /// physical memory (4 GiB where it cannot be read): a coordinator runs several jobs at once
    /// and also needs memory for connections and the database, so one job may not take more.
    #[serde(default = "default_max_job_memory_bytes")]
    pub max_job_memory_bytes: u64,
    /// Concurrent streams allowed per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Mutual TLS: the federation CA, this coordinator's certificate and key. Required unless
    /// started with `--insecure-dev`.
    #[serde(default)]
    pub tls: Option<confide_tls::TlsFiles>,
    /// Address for the Prometheus metrics endpoint (`GET /metrics`), off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// SHA-256 fingerprints of revoked certificates (as printed by `confide certs issue`),
    /// read at start. For revocations without a restart use `revocation_file`.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// A revocation file: one SHA-256 certificate fingerprint per line, `#` comments
    /// (`confide certs fingerprint CERT.pem`). Re-read whenever it changes: new connections and
    /// RPCs from a listed certificate are refused, and a connected worker holding one has its
    /// task stream closed within about a second. Adds to `revoked`. A missing file stops the
    /// coordinator at start; one that vanishes or breaks while it runs refuses every caller
    /// until fixed (fail closed).
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
    /// Limits a job file may override (`[selection]`): how long a job waits for participants.
    #[serde(default)]
    pub job_defaults: JobDefaults,
    /// Plaintext without client authentication, for development only (`--insecure-dev`; never
    /// read from the file).
    #[serde(skip)]
    pub insecure_dev: bool,
    /// Start even when the database does not match its manifest (`--accept-state-loss`; never
    /// read from the file): the manifest is rewritten to match the database as it is.
    #[serde(skip)]
    pub accept_state_loss: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".data/coordinator")
}
fn default_max_contribution_bytes() -> u64 {
    1 << 30
}
fn default_max_message_bytes() -> usize {
    4 << 20
}
fn default_max_concurrent_streams() -> u32 {
    64
}
fn default_max_model_parameters() -> u64 {
    100_000_000
}
fn default_max_job_memory_bytes() -> u64 {
    physical_memory_bytes().map_or(4 << 30, |total| total / 4)
}

/// This machine's physical memory (Linux `/proc/meminfo`), if it can be read.
fn physical_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            data_dir: default_data_dir(),
            max_contribution_bytes: default_max_contribution_bytes(),
            max_message_bytes: default_max_message_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_model_parameters: default_max_model_parameters(),
            max_job_memory_bytes: default_max_job_memory_bytes(),
            tls: None,
            metrics_listen: None,
            revoked: Vec::new(),
            revocation_file: None,
            job_defaults: JobDefaults::default(),
            insecure_dev: false,
            accept_state_loss: false,
        }
    }
}

/// The coordinator's defaults for a job's waiting limits (`[job_defaults]`), used when the job
/// file leaves them out. 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDefaults {
    /// Seconds within which a job's first phase must start (`selection.start_deadline_secs`).
    #[serde(default = "default_wait_secs")]
    pub start_deadline_secs: u64,
    /// Seconds a started job may wait for participants before a round or retry can start
    /// (`selection.idle_timeout_secs`).
    #[serde(default = "default_wait_secs")]
    pub idle_timeout_secs: u64,
}

fn default_wait_secs() -> u64 {
    30 * 60
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self { start_deadline_secs: default_wait_secs(), idle_timeout_secs: default_wait_secs() }
    }
}

pub use confide_core::config_file::ConfigError;

impl CoordinatorConfig {
    /// Reads a TOML configuration file; relative paths are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = confide_core::config_file::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if let Some(tls) = &mut cfg.tls {
            tls.resolve(base);
        }
        if let Some(f) = cfg.revocation_file.as_mut().filter(|f| f.is_relative()) {
            *f = base.join(&*f);
        }
        Ok(cfg)
    }
}
