//! The job specification: what a data-science team asks the federation to train.
//!
//! A job file is TOML. Parsing rejects unknown fields and wrong types with the offending key
//! and position; [`JobSpec::validate`] then checks ranges and combinations, naming the field.
//! The validated spec is stored as JSON by the coordinator and never re-interpreted from text.

use serde::{Deserialize, Serialize};

use crate::model::ModelSpec;

/// A training job, as written in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Human label, shown in listings.
    pub name: String,
    /// Name of the dataset workers must offer (e.g. `telco_churn`).
    pub dataset: String,
    /// Path of the dataset schema file, relative to the job file (read by the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Recommendation jobs: path of the shared item catalogue (a CSV file whose header has the
    /// schema's item column), relative to the job file. The CLI reads the item ids from it and
    /// submits them with the job, so every institution indexes items identically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<String>,
    /// Seed for initialisation, participant selection and local shuffling.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Model family and shape.
    pub model: ModelSpec,
    /// Local training and round budget.
    pub training: TrainingSpec,
    /// Server-side aggregation strategy.
    #[serde(default)]
    pub strategy: StrategySpec,
    /// Which workers take part in a round, and when a round gives up on them.
    #[serde(default)]
    pub selection: SelectionSpec,
    /// Federated evaluation on each institution's test split.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// Stop before the round budget when the evaluation metric stops improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// How contributions are summed. Secure aggregation is the default; plain sums are for
    /// debugging only and print a warning on the coordinator and every worker.
    #[serde(default)]
    pub insecure_plain_aggregation: bool,
    /// Secure-aggregation parameters.
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
    /// Differential privacy (absent: none). Banks compute their own spend from these public
    /// parameters and refuse what their budget cannot pay (see [`crate::spend`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacySpec>,
}

/// What differential privacy protects, and where the noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    /// Record level: every bank trains with DP-SGD (per-row clipping to `clip_norm`, Gaussian
    /// noise per step, Poisson batches at rate `batch_size / rows`), so its update is already
    /// private before it leaves. Logistic regression and MLPs.
    Record,
    /// Institution level: every bank clips its whole update to `clip_norm` and adds its share of
    /// distributed discrete Gaussian noise in the secure-aggregation ring, so the unmasked sum
    /// hides any one bank's update. Every tabular family, custom TorchScript modules included.
    Institution,
}

impl PrivacyMode {
    /// `record` or `institution`.
    pub fn name(self) -> &'static str {
        match self {
            PrivacyMode::Record => "record",
            PrivacyMode::Institution => "institution",
        }
    }
}

/// The `[privacy]` section: differential privacy of the job's training, statistics and
/// evaluations. Either `target_epsilon` (the coordinator solves for the noise multiplier over
/// the planned rounds, and stores it) or `noise_multiplier` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    /// Record-level DP-SGD or institution-level distributed noise.
    pub mode: PrivacyMode,
    /// The ε the whole job should spend at most (record level: at a bank of `planned_rows`
    /// training rows; institution level: for one institution's participation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// σ: noise standard deviation over `clip_norm` (solved from `target_epsilon` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// δ of the (ε, δ) guarantee; must be below 1/rows of every bank.
    #[serde(default = "defaults::delta")]
    pub delta: f64,
    /// C: per-row gradient L2 bound (record) or per-bank update L2 bound (institution).
    #[serde(default = "defaults::one")]
    pub clip_norm: f64,
    /// Record level: training rows of the smallest bank the plan is made for (a smaller bank
    /// spends more, which its own budget decides). Required with `target_epsilon` in record mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_rows: Option<u64>,
    /// Institution level: participants of a round whose noise may be missing from the sum
    /// (dropped out, or colluding with the coordinator); each bank adds noise for
    /// `participants − dropout_allowance` noise shares. Banks refuse less than their own floor.
    #[serde(default = "defaults::dropout_allowance")]
    pub dropout_allowance: u32,
    /// σ of the Gaussian noise on the preprocessing statistics (in units of one row's effect).
    #[serde(default = "defaults::statistics_noise")]
    pub statistics_noise_multiplier: f64,
    /// σ of the Gaussian noise on every evaluation vector (in units of one test row's effect).
    #[serde(default = "defaults::evaluation_noise")]
    pub evaluation_noise_multiplier: f64,
}

impl PrivacySpec {
    /// The resolved noise multiplier (set by the coordinator at submit when `target_epsilon` was given).
    pub fn sigma(&self) -> f64 {
        self.noise_multiplier.unwrap_or(f64::NAN)
    }
}

/// Local training hyper-parameters and the round budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Number of federated rounds.
    pub rounds: u64,
    /// Passes over the local training split per round.
    #[serde(default = "defaults::local_epochs")]
    pub local_epochs: usize,
    /// Mini-batch size.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Local optimizer's learning rate.
    pub learning_rate: f64,
    /// Local optimizer.
    #[serde(default)]
    pub optimizer: LocalOptimizer,
    /// Weight of positive examples in the loss (class-imbalance handling); 1 = unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_weight: Option<f64>,
    /// L2 penalty on the embeddings and biases touched by each mini-batch (recommendation models).
    #[serde(default)]
    pub l2: f64,
    /// Recommendation models: learn from explicit ratings (squared error) or from implicit
    /// feedback (every rating is a positive, `negatives` unrated items per positive are sampled
    /// as negatives, binary cross-entropy).
    #[serde(default)]
    pub feedback: Feedback,
    /// Sampled negatives per positive with implicit feedback.
    #[serde(default = "defaults::negatives")]
    pub negatives: usize,
}

/// What a recommendation model learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// Regression on the rating values.
    #[default]
    Explicit,
    /// Interaction or not, with negative sampling.
    Implicit,
}

/// The optimizer a worker uses for its local epochs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalOptimizer {
    /// Plain SGD.
    #[default]
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    /// Adam (moments reset each round).
    Adam,
}

/// Server-side strategy: how the averaged update becomes the next global model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategySpec {
    /// Sample-weighted average of updates (McMahan et al. 2017).
    #[serde(rename = "fedavg")]
    FedAvg {
        /// Server learning rate applied to the averaged update (1 = plain FedAvg).
        #[serde(default = "defaults::one")]
        server_learning_rate: f64,
    },
    /// FedAvg with a proximal term μ/2·‖w − w_global‖² in each worker's local loss (Li et al. 2020).
    #[serde(rename = "fedprox")]
    FedProx {
        /// Proximal weight μ, passed to workers.
        mu: f64,
        /// Server learning rate.
        #[serde(default = "defaults::one")]
        server_learning_rate: f64,
    },
    /// Adam on the server over the averaged update (Reddi et al. 2021).
    #[serde(rename = "fedadam")]
    FedAdam(AdaptiveSpec),
    /// Yogi on the server over the averaged update (Reddi et al. 2021).
    #[serde(rename = "fedyogi")]
    FedYogi(AdaptiveSpec),
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec::FedAvg { server_learning_rate: 1.0 }
    }
}

impl StrategySpec {
    /// The FedProx μ workers must apply (0 for every other strategy).
    pub fn prox_mu(&self) -> f64 {
        match self {
            StrategySpec::FedProx { mu, .. } => *mu,
            _ => 0.0,
        }
    }
}

/// Hyper-parameters of the adaptive server optimizers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSpec {
    /// Server learning rate η.
    #[serde(default = "defaults::adaptive_lr")]
    pub server_learning_rate: f64,
    /// First-moment decay β₁.
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    /// Second-moment decay β₂.
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Adaptivity τ (denominator offset).
    #[serde(default = "defaults::tau")]
    pub tau: f64,
}

/// Participant selection and round deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// Eligible connected workers needed before a round starts; also the fewest contributions
    /// a round accepts. Never below 3 with secure aggregation (an institution must not be
    /// singled out); a bank's worker may demand more.
    #[serde(default = "defaults::min_workers")]
    pub min_workers: usize,
    /// Fraction of eligible workers selected each round (at least `min_workers` are taken).
    #[serde(default = "defaults::one")]
    pub fraction: f64,
    /// Seconds a round waits for contributions before treating the missing ones as failed.
    #[serde(default = "defaults::round_deadline_secs")]
    pub round_deadline_secs: u64,
    /// Start deadline: seconds from the job's start (or its resumption) within which its first
    /// phase must start, else it fails with the reason it waited (0 = no deadline; absent = the
    /// coordinator's `job_defaults.start_deadline_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_deadline_secs: Option<u64>,
    /// Idle timeout: seconds a started job waits for enough eligible workers before a round (or
    /// a retry) can start, else it fails with the reason it waited (0 = forever; absent = the
    /// coordinator's `job_defaults.idle_timeout_secs`). `wait_for_workers_secs` is its old name.
    #[serde(default, alias = "wait_for_workers_secs", skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Failed attempts of one round before the job fails.
    #[serde(default = "defaults::max_round_attempts")]
    pub max_round_attempts: u32,
}

impl Default for SelectionSpec {
    fn default() -> Self {
        Self {
            min_workers: defaults::min_workers(),
            fraction: 1.0,
            round_deadline_secs: defaults::round_deadline_secs(),
            start_deadline_secs: None,
            idle_timeout_secs: None,
            max_round_attempts: defaults::max_round_attempts(),
        }
    }
}

/// Federated evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Evaluate every this many rounds (the last round is always evaluated).
    #[serde(default = "defaults::eval_every")]
    pub every: u64,
    /// Score buckets of the summed histograms AUC and KS are computed from.
    #[serde(default = "defaults::score_buckets")]
    pub score_buckets: u32,
    /// Recommendation: sampled unrated items each relevant held-out item is ranked against.
    #[serde(default = "defaults::ranking_negatives")]
    pub ranking_negatives: usize,
    /// Recommendation: cut-off of HR@k and NDCG@k.
    #[serde(default = "defaults::top_k")]
    pub top_k: usize,
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        Self {
            every: 1,
            score_buckets: defaults::score_buckets(),
            ranking_negatives: defaults::ranking_negatives(),
            top_k: defaults::top_k(),
        }
    }
}

/// Early stopping on a federated metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    /// Metric to watch (higher is better for `auc`, `ks`, `accuracy`, `hr@10`, `ndcg@10`; lower for
    /// `log_loss`, `brier`, `rmse`, `mae`). It must be one the model family reports.
    #[serde(default = "defaults::early_metric")]
    pub metric: String,
    /// Evaluations without improvement before stopping.
    pub patience: u64,
    /// Smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// Make the best round's model (by `metric`) the job's final and exported model, rather
    /// than the last round's.
    #[serde(default = "defaults::yes")]
    pub restore_best: bool,
}

/// Smallest SecAgg+ degree a job may ask for: `Graph::recommended_degree(64)` of
/// `confide-secagg`, the degree banks demand at the smallest size they accept a sparse graph
/// for (the coordinator's tests check the two agree).
pub const MIN_SPARSE_NEIGHBOURS: u32 = 18;

/// Secure-aggregation parameters (Bonawitz et al. 2017; SecAgg+ graph from Bell et al. 2020).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationSpec {
    /// Bits of the ring Z_{2^b} masked values live in.
    #[serde(default = "defaults::modulus_bits")]
    pub modulus_bits: u32,
    /// Shares needed to reconstruct a secret, as a fraction of its `h` share holders (n, or
    /// k + 1 under a SecAgg+ graph): `t = max(⌈fraction·h⌉, ⌊2h/3⌋ + 1)`, in `[2/3, 1]`. Banks
    /// refuse anything below `⌊2h/3⌋ + 1`: with a bare majority a coordinator colluding with one
    /// bank can reconstruct both masks of a victim from a split view; `h − t` may drop out.
    #[serde(default = "defaults::threshold_fraction")]
    pub threshold_fraction: f64,
    /// Largest |w_local − w_global| per parameter a training contribution encodes; larger
    /// differences are clipped (the fixed-point range is this times the federation's row count).
    #[serde(default = "defaults::update_clip")]
    pub update_clip: f64,
    /// Seconds each protocol stage waits before treating silent participants as dropped. The
    /// stage in which workers train must cover their local training time.
    #[serde(default = "defaults::stage_timeout_secs")]
    pub stage_timeout_secs: u64,
    /// SecAgg+ neighbours per participant; 0 = complete graph up to 64 participants, then the
    /// recommended degree. Otherwise even and at least [`MIN_SPARSE_NEIGHBOURS`]: a lower bound
    /// the coordinator raises to the recommended degree for the round's size (banks refuse
    /// less), and below 64 participants the complete graph is used whatever it says.
    #[serde(default)]
    pub sparse_neighbours: u32,
}

impl Default for SecureAggregationSpec {
    fn default() -> Self {
        Self {
            modulus_bits: defaults::modulus_bits(),
            threshold_fraction: defaults::threshold_fraction(),
            update_clip: defaults::update_clip(),
            stage_timeout_secs: defaults::stage_timeout_secs(),
            sparse_neighbours: 0,
        }
    }
}

/// Why a job file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The text is not valid TOML, or a field is unknown, missing or of the wrong type.
    #[error("job file: {0}")]
    Parse(String),
    /// A field has a value outside its allowed range.
    #[error("job file: field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl JobSpec {
    /// Parses and validates a job file's text.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| JobError::Parse(crate::config_file::toml_message(&e)))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks ranges and combinations, naming the first offending field.
    pub fn validate(&self) -> Result<(), JobError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), JobError> {
            Err(JobError::Invalid { field, reason: reason.into() })
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty");
        }
        if self.dataset.trim().is_empty() {
            return bad("dataset", "must not be empty");
        }
        if let ModelSpec::Mlp { hidden } | ModelSpec::TwoTower { hidden, .. } = &self.model
            && (hidden.is_empty() || hidden.iter().any(|&h| h == 0 || h > 65_536)) {
                return bad("model.hidden", "needs at least one layer, each 1..=65536 wide");
            }
        if let ModelSpec::TorchScript(ts) = &self.model {
            if ts.module.trim().is_empty() {
                return bad("model.module", "the path of the scripted module (torch.jit.save output) is required");
            }
            if ts.parameters.trim().is_empty() {
                return bad("model.parameters", "the path of the initial parameters (safetensors) is required");
            }
            if let Some(pin) = &ts.module_sha256
                && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return bad("model.module_sha256", "must be 64 hexadecimal digits");
            }
        }
        if let ModelSpec::Gbdt(g) = &self.model {
            Self::validate_gbdt(g)?;
            if !(self.training.learning_rate.is_finite() && self.training.learning_rate > 0.0 && self.training.learning_rate <= 1.0) {
                return bad("training.learning_rate", format!("is a tree model's shrinkage (eta): must be in (0, 1], got {}", self.training.learning_rate));
            }
            if self.training.rounds > 10_000 {
                return bad("training.rounds", format!("is a tree model's number of trees: must be in 1..=10000, got {}", self.training.rounds));
            }
            if self.strategy != StrategySpec::default() {
                return bad("strategy", "a tree model has no server optimizer: each round's tree is chosen from the summed histograms");
            }
        }
        if let Some(dim) = self.model.embedding_dim() {
            if !(1..=4096).contains(&dim) {
                return bad("model.dim", "must be in 1..=4096");
            }
            if self.catalogue.as_deref().is_none_or(|c| c.trim().is_empty()) {
                return bad("catalogue", "recommendation models need the item catalogue file (`catalogue = \"items.csv\"`)");
            }
        } else if self.catalogue.is_some() {
            return bad("catalogue", format!("only recommendation models use an item catalogue, not `{}`", self.model.kind_name()));
        }
        let t = &self.training;
        if !(t.l2.is_finite() && t.l2 >= 0.0) {
            return bad("training.l2", format!("must be ≥ 0, got {}", t.l2));
        }
        if t.feedback == Feedback::Implicit && !(1..=1000).contains(&t.negatives) {
            return bad("training.negatives", "must be in 1..=1000 with implicit feedback");
        }
        if t.rounds == 0 || t.rounds > 100_000 {
            return bad("training.rounds", "must be in 1..=100000");
        }
        if t.local_epochs == 0 || t.local_epochs > 1000 {
            return bad("training.local_epochs", "must be in 1..=1000");
        }
        if t.batch_size == 0 || t.batch_size > 1 << 20 {
            return bad("training.batch_size", "must be in 1..=1048576");
        }
        if !positive(t.learning_rate) {
            return bad("training.learning_rate", format!("must be a positive number, got {}", t.learning_rate));
        }
        if let Some(w) = t.pos_weight
            && !positive(w) {
                return bad("training.pos_weight", format!("must be a positive number, got {w}"));
            }
        match &self.strategy {
            StrategySpec::FedAvg { server_learning_rate } if !positive(*server_learning_rate) => {
                return bad("strategy.server_learning_rate", "must be a positive number");
            }
            StrategySpec::FedProx { mu, server_learning_rate } => {
                if !(mu.is_finite() && *mu >= 0.0) {
                    return bad("strategy.mu", format!("must be ≥ 0, got {mu}"));
                }
                if !positive(*server_learning_rate) {
                    return bad("strategy.server_learning_rate", "must be a positive number");
                }
            }
            StrategySpec::FedAdam(a) | StrategySpec::FedYogi(a) => {
                if !positive(a.server_learning_rate) {
                    return bad("strategy.server_learning_rate", "must be a positive number");
                }
                if !(0.0..1.0).contains(&a.beta1) {
                    return bad("strategy.beta1", "must be in [0, 1)");
                }
                if !(0.0..1.0).contains(&a.beta2) {
                    return bad("strategy.beta2", "must be in [0, 1)");
                }
                if !positive(a.tau) {
                    return bad("strategy.tau", "must be a positive number");
                }
            }
            _ => {}
        }
        let s = &self.selection;
        let floor = if self.insecure_plain_aggregation { 1 } else { 3 };
        if s.min_workers < floor {
            return bad(
                "selection.min_workers",
                format!("must be at least {floor} (secure aggregation needs three institutions so none can be singled out)"),
            );
        }
        if !(s.fraction > 0.0 && s.fraction <= 1.0) {
            return bad("selection.fraction", format!("must be in (0, 1], got {}", s.fraction));
        }
        if s.round_deadline_secs == 0 {
            return bad("selection.round_deadline_secs", "must be at least 1");
        }
        if s.max_round_attempts == 0 {
            return bad("selection.max_round_attempts", "must be at least 1");
        }
        if self.evaluation.every == 0 {
            return bad("evaluation.every", "must be at least 1");
        }
        if !(2..=1_000_000).contains(&self.evaluation.score_buckets) {
            return bad("evaluation.score_buckets", "must be in 2..=1000000");
        }
        if !(1..=100_000).contains(&self.evaluation.ranking_negatives) {
            return bad("evaluation.ranking_negatives", "must be in 1..=100000");
        }
        if !(1..=1000).contains(&self.evaluation.top_k) {
            return bad("evaluation.top_k", "must be in 1..=1000");
        }
        if let Some(es) = &self.early_stopping {
            if crate::metrics::higher_is_better(&es.metric).is_none() {
                return bad("early_stopping.metric", format!("unknown metric `{}`", es.metric));
            }
            let ranking = es.metric.contains('@');
            let rec_metric = ranking || es.metric == "rmse" || es.metric == "mae";
            if rec_metric != self.model.is_recommendation() {
                let family = if self.model.is_recommendation() { "recommendation models report rmse, mae, hr@k, ndcg@k" } else { "classifiers report auc, ks, gini, log_loss, brier, accuracy, precision, recall" };
                return bad("early_stopping.metric", format!("`{}` is not reported by `{}` ({family})", es.metric, self.model.kind_name()));
            }
            if ranking && es.metric.split_once('@').and_then(|(_, k)| k.parse::<usize>().ok()) != Some(self.evaluation.top_k) {
                return bad("early_stopping.metric", format!("`{}` does not match evaluation.top_k = {}", es.metric, self.evaluation.top_k));
            }
            if es.patience == 0 {
                return bad("early_stopping.patience", "must be at least 1");
            }
        }
        let sa = &self.secure_aggregation;
        if !(16..=64).contains(&sa.modulus_bits) {
            return bad("secure_aggregation.modulus_bits", "must be in 16..=64");
        }
        if !(2.0 / 3.0..=1.0).contains(&sa.threshold_fraction) {
            return bad("secure_aggregation.threshold_fraction", "must be in [2/3, 1] (banks refuse a smaller threshold)");
        }
        if sa.sparse_neighbours != 0 && (sa.sparse_neighbours < MIN_SPARSE_NEIGHBOURS || sa.sparse_neighbours % 2 != 0) {
            return bad(
                "secure_aggregation.sparse_neighbours",
                format!("must be 0 (automatic) or an even number of at least {MIN_SPARSE_NEIGHBOURS} (banks refuse smaller neighbourhoods)"),
            );
        }
        if !(sa.update_clip.is_finite() && sa.update_clip > 0.0) {
            return bad("secure_aggregation.update_clip", "must be a positive number");
        }
        if sa.stage_timeout_secs == 0 {
            return bad("secure_aggregation.stage_timeout_secs", "must be at least 1");
        }
        if let Some(p) = &self.privacy {
            self.validate_privacy(p)?;
        }
        Ok(())
    }

    /// A tree model's hyper-parameters, each against its documented range.
    fn validate_gbdt(g: &crate::model::GbdtSpec) -> Result<(), JobError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), JobError> {
            Err(JobError::Invalid { field, reason: reason.into() })
        }
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let fraction = |x: f64| x.is_finite() && x > 0.0 && x <= 1.0;
        if !(1..=12).contains(&g.max_depth) {
            return bad("model.max_depth", format!("must be in 1..=12, got {}", g.max_depth));
        }
        if !non_negative(g.lambda) {
            return bad("model.lambda", format!("must be ≥ 0, got {}", g.lambda));
        }
        if !non_negative(g.gamma) {
            return bad("model.gamma", format!("must be ≥ 0, got {}", g.gamma));
        }
        if !non_negative(g.min_child_weight) {
            return bad("model.min_child_weight", format!("must be ≥ 0, got {}", g.min_child_weight));
        }
        if !fraction(g.subsample) {
            return bad("model.subsample", format!("must be in (0, 1], got {}", g.subsample));
        }
        if !fraction(g.colsample_bytree) {
            return bad("model.colsample_bytree", format!("must be in (0, 1], got {}", g.colsample_bytree));
        }
        if !(2..=1024).contains(&g.max_bin) {
            return bad("model.max_bin", format!("must be in 2..=1024, got {}", g.max_bin));
        }
        if g.min_leaf_rows == 0 || g.min_leaf_rows > 1_000_000 {
            return bad("model.min_leaf_rows", format!("must be in 1..=1000000, got {}", g.min_leaf_rows));
        }
        Ok(())
    }

    fn validate_privacy(&self, p: &PrivacySpec) -> Result<(), JobError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), JobError> {
            Err(JobError::Invalid { field, reason: reason.into() })
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.model.is_recommendation() {
            return bad(
                "privacy",
                format!(
                    "`{}` cannot be trained with differential privacy here: a user's ratings move both the item \
                     embeddings and that user's private embedding, and per-user clipping of the item side is not implemented, \
                     so no bound could be stated",
                    self.model.kind_name()
                ),
            );
        }
        if let ModelSpec::Gbdt(_) = self.model
            && p.mode == PrivacyMode::Institution
        {
            // Record mode adds the noise per bank to each level's histograms (see `spend`); an
            // institution-level bound would need a bank's whole histogram clipped, which trees
            // do not do.
            return bad(
                "privacy.mode",
                "gradient-boosted trees support record-level DP only (`mode = \"record\"`): a bank's level histograms \
                 grow with its rows and are not clipped, so no institution-level bound could be stated",
            );
        }
        if p.mode == PrivacyMode::Record && matches!(self.model, ModelSpec::TorchScript(_)) {
            return bad(
                "privacy.mode",
                "custom TorchScript modules support institution-level DP only (`mode = \"institution\"`): per-row gradients \
                 are computed for the built-in linear layers",
            );
        }
        if self.insecure_plain_aggregation {
            return bad("privacy", "differential privacy needs secure aggregation (the noise is added under the masks)");
        }
        match (p.target_epsilon, p.noise_multiplier) {
            (None, None) => return bad("privacy.target_epsilon", "give `target_epsilon` or `noise_multiplier`"),
            (Some(e), _) if !positive(e) => return bad("privacy.target_epsilon", format!("must be a positive number, got {e}")),
            (_, Some(s)) if !positive(s) => return bad("privacy.noise_multiplier", format!("must be a positive number, got {s}")),
            _ => {}
        }
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return bad("privacy.delta", format!("must be in (0, 1), got {}", p.delta));
        }
        if !positive(p.clip_norm) {
            return bad("privacy.clip_norm", format!("must be a positive number, got {}", p.clip_norm));
        }
        if p.mode == PrivacyMode::Record {
            match p.planned_rows {
                None if p.target_epsilon.is_some() => {
                    return bad("privacy.planned_rows", "record-level plans need the training rows of the smallest bank planned for")
                }
                Some(0) => return bad("privacy.planned_rows", "must be at least 1"),
                Some(rows) if p.delta >= 1.0 / rows as f64 => {
                    return bad("privacy.delta", format!("must be below 1/planned_rows = {:.3e}, got {}", 1.0 / rows as f64, p.delta))
                }
                _ => {}
            }
        }
        if p.mode == PrivacyMode::Institution && self.selection.min_workers <= p.dropout_allowance as usize {
            return bad(
                "privacy.dropout_allowance",
                format!("must be below selection.min_workers = {} (some bank's noise must count)", self.selection.min_workers),
            );
        }
        if !positive(p.statistics_noise_multiplier) {
            return bad("privacy.statistics_noise_multiplier", "must be a positive number");
        }
        if !positive(p.evaluation_noise_multiplier) {
            return bad("privacy.evaluation_noise_multiplier", "must be a positive number");
        }
        Ok(())
    }

    /// Whether round `round` (1-based) is evaluated.
    pub fn evaluates(&self, round: u64) -> bool {
        round.is_multiple_of(self.evaluation.every) || round == self.training.rounds
    }
}

mod defaults {
    pub fn seed() -> u64 {
        42
    }
    pub fn local_epochs() -> usize {
        1
    }
    pub fn batch_size() -> usize {
        64
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn adaptive_lr() -> f64 {
        0.01
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.99
    }
    pub fn tau() -> f64 {
        1e-3
    }
    pub fn min_workers() -> usize {
        3
    }
    pub fn round_deadline_secs() -> u64 {
        300
    }
    pub fn max_round_attempts() -> u32 {
        5
    }
    pub fn eval_every() -> u64 {
        1
    }
    pub fn score_buckets() -> u32 {
        10_000
    }
    pub fn ranking_negatives() -> usize {
        99
    }
    pub fn top_k() -> usize {
        10
    }
    pub fn negatives() -> usize {
        4
    }
    pub fn yes() -> bool {
        true
    }
    pub fn early_metric() -> String {
        "auc".into()
    }
    pub fn modulus_bits() -> u32 {
        32
    }
    pub fn threshold_fraction() -> f64 {
        2.0 / 3.0
    }
    pub fn update_clip() -> f64 {
        10.0
    }
    pub fn stage_timeout_secs() -> u64 {
        60
    }
    pub fn delta() -> f64 {
        1e-5
    }
    pub fn dropout_allowance() -> u32 {
        1
    }
    pub fn statistics_noise() -> f64 {
        10.0
    }
    pub fn evaluation_noise() -> f64 {
        5.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "churn"
        dataset = "telco_churn"
        [model]
        kind = "mlp"
        hidden = [16]
        [training]
        rounds = 10
        learning_rate = 0.05
    "#;

    #[test]
    fn minimal_job_gets_secure_fedavg_defaults() {
        let spec = JobSpec::from_toml(MINIMAL).expect("valid");
        assert_eq!(spec.strategy, StrategySpec::FedAvg { server_learning_rate: 1.0 });
        assert_eq!(spec.selection.min_workers, 3);
        assert!(!spec.insecure_plain_aggregation);
        assert_eq!(spec.secure_aggregation.modulus_bits, 32);
        assert!(spec.evaluates(10));
    }

    fn gbdt(model: &str, training: &str) -> Result<JobSpec, JobError> {
        JobSpec::from_toml(&format!(
            "name = \"trees\"\ndataset = \"d\"\n[model]\nkind = \"gbdt\"\n{model}\n[training]\nrounds = 100\nlearning_rate = 0.3\n{training}\n"
        ))
    }

    #[test]
    fn a_tree_model_takes_xgboost_defaults_and_refuses_out_of_range_values_by_name() {
        let spec = gbdt("", "").expect("defaults are valid");
        assert_eq!(spec.model.gbdt(), Some(&crate::model::GbdtSpec::default()));
        assert_eq!(spec.model.gbdt().map(|g| (g.max_depth, g.max_bin, g.min_leaf_rows)), Some((6, 256, 50)));
        for (model, field) in [
            ("max_depth = 0", "model.max_depth"),
            ("max_depth = 13", "model.max_depth"),
            ("lambda = -1.0", "model.lambda"),
            ("gamma = nan", "model.gamma"),
            ("min_child_weight = -0.5", "model.min_child_weight"),
            ("subsample = 0.0", "model.subsample"),
            ("subsample = 1.5", "model.subsample"),
            ("colsample_bytree = 0.0", "model.colsample_bytree"),
            ("max_bin = 1", "model.max_bin"),
            ("max_bin = 5000", "model.max_bin"),
            ("min_leaf_rows = 0", "model.min_leaf_rows"),
        ] {
            let err = gbdt(model, "").expect_err(model);
            assert!(err.to_string().contains(field), "{model}: {err}");
        }
        let err = gbdt("", "").and_then(|_| JobSpec::from_toml(&format!(
            "name = \"t\"\ndataset = \"d\"\n[model]\nkind = \"gbdt\"\n[training]\nrounds = 10\nlearning_rate = 1.5\n"
        ))).expect_err("eta above 1");
        assert!(err.to_string().contains("training.learning_rate"), "{err}");
        let err = gbdt("", "[strategy]\nkind = \"fedadam\"").expect_err("no server optimizer for trees");
        assert!(err.to_string().contains("strategy"), "{err}");
        let err = gbdt("", "[privacy]\nmode = \"institution\"\ntarget_epsilon = 4.0\nclip_norm = 1.0").expect_err("no institution DP for trees");
        assert!(err.to_string().contains("privacy.mode") && err.to_string().contains("trees"), "{err}");
        gbdt("", "[privacy]\nmode = \"record\"\ntarget_epsilon = 4.0\nplanned_rows = 5000").expect("record-level DP for trees");
        let err = gbdt("max_dept = 3", "").expect_err("unknown tree field");
        assert!(err.to_string().contains("max_dept"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = JobSpec::from_toml(&format!("{MINIMAL}\nlearnin_rate = 1")).expect_err("unknown");
        assert!(err.to_string().contains("learnin_rate"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = MINIMAL.replace("rounds = 10", "rounds = \"ten\"");
        let err = JobSpec::from_toml(&text).expect_err("type");
        assert!(err.to_string().contains("rounds"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_the_field() {
        let text = MINIMAL.replace("learning_rate = 0.05", "learning_rate = -1.0");
        let err = JobSpec::from_toml(&text).expect_err("range");
        assert!(err.to_string().contains("training.learning_rate"), "{err}");
    }

    #[test]
    fn thresholds_and_degrees_below_the_banks_floors_are_refused_at_submit() {
        let with = |extra: &str| JobSpec::from_toml(&format!("{MINIMAL}\n[secure_aggregation]\n{extra}\n"));
        assert!((JobSpec::from_toml(MINIMAL).expect("defaults").secure_aggregation.threshold_fraction - 2.0 / 3.0).abs() < 1e-12);
        let err = with("threshold_fraction = 0.5").expect_err("a bare majority");
        assert!(err.to_string().contains("secure_aggregation.threshold_fraction"), "{err}");
        with("threshold_fraction = 0.8").expect("more is fine");
        for k in [2, 16, 19] {
            let err = with(&format!("sparse_neighbours = {k}")).expect_err("below the floor or odd");
            assert!(err.to_string().contains("secure_aggregation.sparse_neighbours"), "k = {k}: {err}");
        }
        with(&format!("sparse_neighbours = {MIN_SPARSE_NEIGHBOURS}")).expect("the floor");
    }

    #[test]
    fn secure_jobs_need_three_institutions() {
        let text = format!("{MINIMAL}\n[selection]\nmin_workers = 2\n");
        let err = JobSpec::from_toml(&text).expect_err("floor");
        assert!(err.to_string().contains("selection.min_workers"), "{err}");
        let text = format!("insecure_plain_aggregation = true\n{MINIMAL}\n[selection]\nmin_workers = 2\n");
        JobSpec::from_toml(&text).expect("plain debugging jobs may use two");
    }

    #[test]
    fn torchscript_models_name_their_files() {
        let text = MINIMAL.replace(
            "kind = \"mlp\"\n        hidden = [16]",
            "kind = \"torchscript\"\n        module = \"model.pt\"\n        parameters = \"init.safetensors\"",
        );
        let spec = JobSpec::from_toml(&text).expect("torchscript job");
        let ModelSpec::TorchScript(ts) = &spec.model else { panic!("parsed as {:?}", spec.model) };
        assert_eq!((ts.module.as_str(), ts.parameters.as_str()), ("model.pt", "init.safetensors"));
        assert!(ts.layout.tensors.is_empty() && ts.module_sha256.is_none(), "resolved by the coordinator");
        let err = JobSpec::from_toml(&text.replace("\"model.pt\"", "\"\"")).expect_err("no module");
        assert!(err.to_string().contains("model.module"), "{err}");
        let err = JobSpec::from_toml(&text.replace("parameters = ", "module_sha256 = \"abc\"\nparameters = ")).expect_err("bad pin");
        assert!(err.to_string().contains("model.module_sha256"), "{err}");
    }

    #[test]
    fn recommendation_jobs_need_a_catalogue_and_metrics_know_their_direction() {
        let mf = MINIMAL.replace("kind = \"mlp\"\n        hidden = [16]", "kind = \"matrix_factorization\"\n        dim = 32");
        let err = JobSpec::from_toml(&mf).expect_err("no catalogue");
        assert!(err.to_string().contains("catalogue"), "{err}");
        let text = format!("catalogue = \"movies.csv\"\n{mf}\n[early_stopping]\nmetric = \"rmse\"\npatience = 2\n");
        let spec = JobSpec::from_toml(&text).expect("valid MF job");
        assert_eq!(spec.model, ModelSpec::MatrixFactorization { dim: 32 });
        assert_eq!((spec.evaluation.ranking_negatives, spec.evaluation.top_k), (99, 10));
        let implicit = text.replace("learning_rate = 0.05", "learning_rate = 0.05\nfeedback = \"implicit\"\nnegatives = 0");
        let err = JobSpec::from_toml(&implicit).expect_err("zero negatives");
        assert!(err.to_string().contains("training.negatives"), "{err}");
        let err = JobSpec::from_toml(&format!("catalogue = \"m.csv\"\n{MINIMAL}")).expect_err("tabular + catalogue");
        assert!(err.to_string().contains("catalogue"), "{err}");
        let err = JobSpec::from_toml(&text.replace("metric = \"rmse\"", "metric = \"auc\"")).expect_err("auc for MF");
        assert!(err.to_string().contains("early_stopping.metric"), "{err}");
        JobSpec::from_toml(&text.replace("metric = \"rmse\"", "metric = \"ndcg@10\"")).expect("ndcg@10 watched");
        let err = JobSpec::from_toml(&text.replace("metric = \"rmse\"", "metric = \"hr@5\"")).expect_err("k mismatch");
        assert!(err.to_string().contains("top_k"), "{err}");
    }

    #[test]
    fn privacy_parameters_out_of_range_are_refused_naming_the_field() {
        let with = |block: &str| JobSpec::from_toml(&format!("{MINIMAL}\n[privacy]\n{block}\n"));
        let ok = "mode = \"record\"\ntarget_epsilon = 4.0\nplanned_rows = 1000";
        with(ok).expect("valid");
        for (block, field) in [
            (ok.replace("4.0", "0.0"), "privacy.target_epsilon"),
            (ok.replace("4.0", "-1.0"), "privacy.target_epsilon"),
            (format!("{ok}\nclip_norm = 0.0"), "privacy.clip_norm"),
            (format!("{ok}\ndelta = 0.001"), "privacy.delta"),
            (format!("{ok}\ndelta = 1.5"), "privacy.delta"),
            ("mode = \"record\"\ntarget_epsilon = 4.0".to_string(), "privacy.planned_rows"),
            ("mode = \"record\"".to_string(), "privacy.target_epsilon"),
            ("mode = \"institution\"\nnoise_multiplier = -2.0".to_string(), "privacy.noise_multiplier"),
            ("mode = \"institution\"\nnoise_multiplier = 2.0\ndropout_allowance = 3".to_string(), "privacy.dropout_allowance"),
        ] {
            let err = with(&block).expect_err(&block);
            assert!(err.to_string().contains(field), "{block}: {err}");
        }
        let mf = format!("catalogue = \"m.csv\"\n{}\n[privacy]\nmode = \"institution\"\nnoise_multiplier = 1.0\n", MINIMAL.replace("kind = \"mlp\"\n        hidden = [16]", "kind = \"matrix_factorization\"\n        dim = 8"));
        let err = JobSpec::from_toml(&mf).expect_err("recommenders refuse DP");
        assert!(err.to_string().contains("`privacy`") && err.to_string().contains("per-user clipping"), "{err}");
        let plain = format!("insecure_plain_aggregation = true\n{MINIMAL}\n[privacy]\n{ok}\n");
        assert!(JobSpec::from_toml(&plain).expect_err("plain").to_string().contains("secure aggregation"));
    }

    #[test]
    fn strategies_parse_by_kind() {
        let text = format!("{MINIMAL}\n[strategy]\nkind = \"fedyogi\"\nserver_learning_rate = 0.02\n");
        let spec = JobSpec::from_toml(&text).expect("yogi");
        assert!(matches!(spec.strategy, StrategySpec::FedYogi(AdaptiveSpec { server_learning_rate, .. }) if server_learning_rate == 0.02));
        let text = format!("{MINIMAL}\n[strategy]\nkind = \"fedprox\"\nmu = 0.1\n");
        assert_eq!(JobSpec::from_toml(&text).expect("prox").strategy.prox_mu(), 0.1);
    }
}

/// What a worker needs to train one round locally; sent as JSON inside each training task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTraining {
    /// Passes over the local training split.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Local learning rate.
    pub learning_rate: f64,
    /// Local optimizer.
    pub optimizer: LocalOptimizer,
    /// FedProx μ (0 = none).
    pub prox_mu: f64,
    /// Positive-class weight in the loss.
    pub pos_weight: Option<f64>,
    /// Seed for shuffling and dropout, distinct per job, round and institution.
    pub seed: u64,
    /// L2 penalty on touched embeddings and biases (recommendation).
    #[serde(default)]
    pub l2: f64,
    /// Explicit ratings or implicit feedback (recommendation).
    #[serde(default)]
    pub feedback: Feedback,
    /// Sampled negatives per positive with implicit feedback.
    #[serde(default = "defaults::negatives")]
    pub negatives: usize,
}

impl JobSpec {
    /// The local-training configuration of `round` for the participant with index `participant`.
    pub fn local_training(&self, round: u64, participant: u64) -> LocalTraining {
        LocalTraining {
            epochs: self.training.local_epochs,
            batch_size: self.training.batch_size,
            learning_rate: self.training.learning_rate,
            optimizer: self.training.optimizer,
            prox_mu: self.strategy.prox_mu(),
            pos_weight: self.training.pos_weight,
            seed: self.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ participant.wrapping_mul(0xBF58_476D_1CE4_E5B9),
            l2: self.training.l2,
            feedback: self.training.feedback,
            negatives: self.training.negatives,
        }
    }
}
