//! Worker configuration, written by the bank's operators: where the coordinator is, who this
//! institution is, which local datasets it offers and under what policy.
//!
//! Relative paths are resolved against the configuration file's directory, so a bank can keep
//! its config next to its data.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One worker daemon's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Coordinator URL, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// This institution's id (1–128 characters of `[A-Za-z0-9._-]`).
    pub institution_id: String,
    /// Directory for the identity key, the model cache and the audit log (`audit.log`: a
    /// signed, hash-chained record of every upload, read with `confide-worker audit show|verify`).
    pub data_dir: PathBuf,
    /// Local datasets this worker may train on. Each is loaded and checked against its schema
    /// at start and whenever one of its files changes; only the valid ones are offered (see
    /// [`crate::catalog`]), and none valid of those configured stops the worker (exit 2).
    #[serde(default)]
    pub datasets: Vec<DatasetConfig>,
    /// What this bank allows.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Compute settings.
    #[serde(default)]
    pub compute: ComputeConfig,
    /// Differential privacy this bank demands of institution-level DP jobs.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// Who this bank accepts as the federation's members (pinned list, revocation file).
    #[serde(default)]
    pub federation: FederationConfig,
    /// Mutual TLS: the federation CA, this institution's certificate and key (whose Ed25519 key
    /// also signs its secure-aggregation advertisements). Required unless `--insecure-dev`.
    #[serde(default)]
    pub tls: Option<confide_tls::TlsFiles>,
    /// Plaintext, unauthenticated development mode (`--insecure-dev`; never read from the file).
    #[serde(skip)]
    pub insecure_dev: bool,
}

/// A local dataset: a schema and its train/test files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Name jobs refer to.
    pub name: String,
    /// Schema file (TOML).
    pub schema: PathBuf,
    /// Training split (CSV, or Parquet when it ends in `.parquet`/`.pq`).
    pub train: PathBuf,
    /// Held-out split (CSV or Parquet) for federated evaluation.
    pub test: PathBuf,
    /// The record-level ε this bank lets all jobs together spend on this dataset, at `delta`
    /// (see [`crate::budget`]); None = no limit (spends are still accounted and shown).
    #[serde(default)]
    pub epsilon_budget: Option<f64>,
    /// The δ the budget is stated at, in (0, 1): jobs of a larger δ are refused, and so are
    /// jobs whose δ is not below 1/(training rows). Default 1e-5 ([`DEFAULT_DELTA`]).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Refuse every job that is not differentially private on this dataset (`dp_required`).
    #[serde(default)]
    pub require_dp: bool,
}

/// The δ a dataset's budget is stated at unless configured: the customary 10⁻⁵, below
/// 1/rows for any dataset of fewer than 100 000 rows (a larger bank should set a smaller one).
pub const DEFAULT_DELTA: f64 = 1e-5;

fn default_delta() -> f64 {
    DEFAULT_DELTA
}

impl DatasetConfig {
    /// A dataset of these files with no privacy budget, the default δ and DP not required.
    pub fn files(name: impl Into<String>, schema: PathBuf, train: PathBuf, test: PathBuf) -> Self {
        Self { name: name.into(), schema, train, test, epsilon_budget: None, delta: DEFAULT_DELTA, require_dp: false }
    }
}

/// The bank's own rules, enforced by the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Fewest institutions a round may have for this worker to send anything (≥ 3).
    #[serde(default = "default_min_participants")]
    pub min_participants: u32,
    /// Model kinds this bank lets its data train (`logistic_regression`, `mlp`,
    /// `matrix_factorization`, `two_tower`, `torchscript`); empty = every built-in kind. Custom
    /// `torchscript` models run code written outside the bank, so they are refused unless
    /// listed here explicitly.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// SHA-256 hashes of the TorchScript modules this bank accepts (as printed by
    /// `make_model.py` and shown in the job's spec); empty = any module, once `torchscript` is
    /// allowed.
    #[serde(default)]
    pub allowed_torchscript_sha256: Vec<String>,
    /// Training rounds this bank contributes to any one job (0 = no limit). A job of more rounds
    /// is refused at its first task, not when it reaches the limit.
    #[serde(default)]
    pub max_rounds_per_job: u64,
    /// Distinct jobs this bank takes part in per rolling 24 hours (0 = no limit).
    #[serde(default)]
    pub max_jobs_per_day: u32,
    /// Send vectors in the clear when a job asks for plain aggregation (debugging federations
    /// on synthetic data only). Off by default: a task's `insecure_plain` flag alone never makes
    /// this bank send an unmasked vector; `--insecure-dev` turns it on too.
    #[serde(default)]
    pub allow_plain_aggregation: bool,
    /// Send failure details (file, line, column, values, counts, item ids) to the coordinator.
    /// Off by default: the coordinator gets the failure's kind and a reference, and the details
    /// stay in this worker's log under that reference. For development federations.
    #[serde(default)]
    pub share_error_details: bool,
    /// Refuse to let a sum be revealed when, with the sums this bank's counts (training rows,
    /// test rows, positives) were already in, its set of institutions would let one bank's count
    /// be solved for — e.g. the same four banks, then three of them. On by default; the price is
    /// that a round whose contributors changed after the first sum fails rather than completing
    /// without the missing bank (see `SECURITY.md`). Identical vectors are never put into sums
    /// over two different sets, whatever this says.
    #[serde(default = "yes")]
    pub protect_counts: bool,
    /// Smallest secure-aggregation threshold this bank accepts, as a fraction of each secret's
    /// share holders (n, or k + 1 under a SecAgg+ graph). The worker always demands at least
    /// ⌊2h/3⌋ + 1 (so a colluding minority cannot reconstruct both masks of a victim from a
    /// split view); this may only raise it: in `[2/3, 1]`.
    #[serde(default = "default_min_threshold_fraction")]
    pub min_threshold_fraction: f64,
    /// Most score buckets an evaluation may ask for (each bucket is a histogram count of the
    /// bank's test set the coordinator learns in aggregate); in `2..=1000000`.
    #[serde(default = "default_max_score_buckets")]
    pub max_score_buckets: u32,
    /// Largest fixed-point range of a training update (the job's `update_clip` × the
    /// federation's rows) this bank encodes: it bounds what one masked update can carry.
    #[serde(default = "default_max_update_clip")]
    pub max_update_clip: f64,
    /// Smallest fixed-point range this bank accepts for statistics and evaluation, whose values
    /// are refused (not clipped) when out of range: a high floor keeps the coordinator from
    /// binary-searching the bank's sums through refusals.
    #[serde(default = "default_min_exact_clip")]
    pub min_exact_clip: f64,
    /// Evaluation tasks this bank runs per (job, round), counted durably (at least 1). The
    /// default 2 allows one retry of a round whose evaluation already ran (a coordinator crash
    /// between evaluation and commit) and no more.
    #[serde(default = "default_max_evaluations_per_round")]
    pub max_evaluations_per_round: u32,
}

fn yes() -> bool {
    true
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min_participants: default_min_participants(),
            allowed_models: Vec::new(),
            allowed_torchscript_sha256: Vec::new(),
            max_rounds_per_job: 0,
            max_jobs_per_day: 0,
            allow_plain_aggregation: false,
            share_error_details: false,
            protect_counts: true,
            min_threshold_fraction: default_min_threshold_fraction(),
            max_score_buckets: default_max_score_buckets(),
            max_update_clip: default_max_update_clip(),
            min_exact_clip: default_min_exact_clip(),
            max_evaluations_per_round: default_max_evaluations_per_round(),
        }
    }
}

impl PolicyConfig {
    /// The bounds the task machine checks on what the coordinator chooses (with the default
    /// `[privacy]` floors; [`WorkerConfig::floors`] has the configured ones).
    pub fn floors(&self) -> crate::task::Floors {
        crate::task::Floors {
            min_threshold_fraction: self.min_threshold_fraction,
            max_score_buckets: self.max_score_buckets as usize,
            max_update_clip: self.max_update_clip,
            min_exact_clip: self.min_exact_clip,
            min_dropout_allowance: PrivacyConfig::default().min_dropout_allowance,
        }
    }
}

/// The `[privacy]` section: what this bank demands of institution-level DP jobs, whose noise is
/// shared among the banks of a round (see `SECURITY.md`, "Distributed noise").
///
/// ```toml
/// [privacy]
/// # Banks of a round whose noise the job may count as missing (dropped out, or colluding with
/// # the coordinator): a job assuming fewer is refused. Each bank's noise share is scaled for
/// # n − dropout_allowance shares, so the sum stays private with that many missing.
/// min_dropout_allowance = 1
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Smallest `privacy.dropout_allowance` an institution-level DP job may assume (default 1:
    /// one bank may collude with the coordinator and subtract its own noise).
    #[serde(default = "default_min_dropout_allowance")]
    pub min_dropout_allowance: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig { min_dropout_allowance: default_min_dropout_allowance() }
    }
}

fn default_min_dropout_allowance() -> u32 {
    1
}

fn default_min_participants() -> u32 {
    3
}

fn default_min_threshold_fraction() -> f64 {
    2.0 / 3.0
}

fn default_max_score_buckets() -> u32 {
    10_000
}

/// Accepts the default `update_clip` (10) up to 10^8 rows across the federation.
fn default_max_update_clip() -> f64 {
    1e9
}

/// Below the coordinator's exact ranges for up to `MAX_PARTICIPANTS` banks (about 7·10^9).
fn default_min_exact_clip() -> f64 {
    1e9
}

fn default_max_evaluations_per_round() -> u32 {
    2
}

/// Who this bank accepts as peers in a secure-aggregation round (see [`crate::membership`]).
/// Both settings need `[tls]`: they name certificates.
///
/// ```toml
/// [federation]
/// # One certificate fingerprint per line (`confide certs fingerprint bank3.pem`), `#` comments.
/// # Re-read whenever it changes: revoking needs no restart. A missing file refuses every round.
/// revocation_file = "revoked.txt"
///
/// # With a list, a round naming any other institution, or a listed one with another
/// # certificate, is refused before anything leaves the bank. Without one, any institution
/// # the federation CA signed for counts. This bank itself need not be listed.
/// [[federation.members]]
/// institution = "bank2"
/// fingerprint = "3f1c…"  # 64 hexadecimal digits
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The federation's members, pinned by certificate; empty = any CA-signed institution.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Revocation file: one SHA-256 certificate fingerprint per line, `#` comments; re-read
    /// when it changes. None = no revocation check on peers.
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
}

/// One pinned member of the federation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The institution id its certificate names.
    pub institution: String,
    /// SHA-256 of its certificate (DER), as `confide certs fingerprint` and
    /// `confide certs issue` print it.
    pub fingerprint: String,
}

/// Where and how to compute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    /// `auto` (CUDA when available), `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// libtorch CPU threads (default 1: the tabular models are small).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Tasks this worker runs at once (default 8, at least 1). A task arriving while this many
    /// are in progress is answered at once with an `internal` failure ("worker busy"), so the
    /// coordinator sees it instead of waiting on a queue.
    #[serde(default = "default_max_concurrent_tasks")]
    pub max_concurrent_tasks: usize,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self { device: DeviceChoice::default(), threads: None, max_concurrent_tasks: default_max_concurrent_tasks() }
    }
}

fn default_max_concurrent_tasks() -> usize {
    8
}

/// Device selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// The first CUDA GPU (fails when there is none).
    Cuda,
}

pub use confide_core::config_file::ConfigError;

impl WorkerConfig {
    /// The bounds the task machine checks on what the coordinator chooses: `[policy]`'s and
    /// `[privacy]`'s.
    pub fn floors(&self) -> crate::task::Floors {
        crate::task::Floors { min_dropout_allowance: self.privacy.min_dropout_allowance, ..self.policy.floors() }
    }

    /// Reads and validates a configuration file, resolving relative paths against its directory.
    /// Validation (see [`Self::validate`]) is left to the caller, after command-line overrides.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: WorkerConfig = confide_core::config_file::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        if let Some(tls) = &mut self.tls {
            tls.resolve(base);
        }
        if let Some(f) = &mut self.federation.revocation_file {
            abs(f);
        }
        for d in &mut self.datasets {
            abs(&mut d.schema);
            abs(&mut d.train);
            abs(&mut d.test);
        }
    }

    /// Checks values: id charset, URL scheme, unique dataset names, policy floor.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.institution_id;
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("field `institution_id`: must be 1-128 characters of [A-Za-z0-9._-], got {id:?}"));
        }
        match (&self.tls, self.insecure_dev) {
            (Some(_), _) if !self.coordinator.starts_with("https://") => {
                return Err(format!("field `coordinator`: with [tls] the URL must be https://, got {:?}", self.coordinator));
            }
            (None, false) => {
                return Err("field `tls`: mutual TLS is required (ca, cert, key); --insecure-dev allows plaintext for development".into());
            }
            (None, true) if !self.coordinator.starts_with("http://") => {
                return Err(format!("field `coordinator`: without TLS the URL must be http://, got {:?}", self.coordinator));
            }
            _ => {}
        }
        let mut names: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("field `datasets`: dataset `{}` is listed twice", w[0]));
        }
        const MODELS: &[&str] = confide_core::model::MODEL_KINDS;
        if let Some(m) = self.policy.allowed_models.iter().find(|m| !MODELS.contains(&m.as_str())) {
            return Err(format!("field `policy.allowed_models`: unknown model kind `{m}` (known: {})", MODELS.join(", ")));
        }
        if let Some(h) = self.policy.allowed_torchscript_sha256.iter().find(|h| !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))) {
            return Err(format!("field `policy.allowed_torchscript_sha256`: {h:?} is not a SHA-256 (64 hexadecimal digits)"));
        }
        self.validate_federation()?;
        if self.compute.max_concurrent_tasks == 0 {
            return Err("field `compute.max_concurrent_tasks`: must be at least 1".into());
        }
        let p = &self.policy;
        if !(default_min_threshold_fraction()..=1.0).contains(&p.min_threshold_fraction) {
            return Err("field `policy.min_threshold_fraction`: must be in [2/3, 1] (the worker never accepts less than 2/3)".into());
        }
        if !(2..=1_000_000).contains(&p.max_score_buckets) {
            return Err("field `policy.max_score_buckets`: must be in 2..=1000000".into());
        }
        if !(p.max_update_clip.is_finite() && p.max_update_clip > 0.0) {
            return Err("field `policy.max_update_clip`: must be a positive number".into());
        }
        if !(p.min_exact_clip.is_finite() && p.min_exact_clip > 0.0) {
            return Err("field `policy.min_exact_clip`: must be a positive number".into());
        }
        if p.max_evaluations_per_round == 0 {
            return Err("field `policy.max_evaluations_per_round`: must be at least 1".into());
        }
        for d in &self.datasets {
            if let Some(b) = d.epsilon_budget
                && !(b.is_finite() && b > 0.0)
            {
                return Err(format!("field `datasets.epsilon_budget` of dataset `{}`: must be a positive number, got {b}", d.name));
            }
            if !(d.delta > 0.0 && d.delta < 1.0) {
                return Err(format!("field `datasets.delta` of dataset `{}`: must be in (0, 1), got {}", d.name, d.delta));
            }
        }
        if self.policy.min_participants < 3 {
            return Err("field `policy.min_participants`: must be at least 3 (a bank never joins a round where it could be singled out)".into());
        }
        Ok(())
    }

    /// The pinned members: certificates (so TLS), fingerprints, each institution once.
    fn validate_federation(&self) -> Result<(), String> {
        let f = &self.federation;
        if self.tls.is_none() && (!f.members.is_empty() || f.revocation_file.is_some()) {
            return Err("field `federation`: pinned members and revocation files name certificates, so they need [tls]".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &f.members {
            if !confide_tls::revocation::is_fingerprint(&m.fingerprint) {
                return Err(format!(
                    "field `federation.members`: the fingerprint of `{}` must be a SHA-256 (64 hexadecimal digits, as `confide certs fingerprint` prints it), got {:?}",
                    m.institution, m.fingerprint
                ));
            }
            if !seen.insert(m.institution.as_str()) {
                return Err(format!("field `federation.members`: institution `{}` is listed twice", m.institution));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> WorkerConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.toml");
        let text = format!("coordinator = \"http://127.0.0.1:1\"\ninstitution_id = \"bank1\"\ndata_dir = \"data\"\n{extra}");
        std::fs::write(&path, text).expect("write");
        WorkerConfig::from_file(&path).expect("config")
    }

    #[test]
    fn the_privacy_sections_dropout_floor_reaches_the_task_machine_and_defaults_to_one() {
        assert_eq!(config("").floors().min_dropout_allowance, 1);
        assert_eq!(config("[privacy]\nmin_dropout_allowance = 2\n").floors().min_dropout_allowance, 2);
        assert_eq!(config("[privacy]\nmin_dropout_allowance = 2\n").floors().max_update_clip, PolicyConfig::default().max_update_clip);
    }
}
