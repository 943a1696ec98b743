//! What a worker computes for each task, from its local data: the vector it contributes.
//!
//! - statistics: additive preprocessing sums of the training split;
//! - training: `[n·(w_local − w_global)…, n, n·loss]` after local epochs from the global model;
//! - evaluation: score histograms and metric sums of the global model on the test split.
//!
//! Recommendation models contribute the same training shape over their *shared* layout only
//! (`[n·Δ item side…, n, n·loss]`, n = ratings); the user side lives in [`UserStateStore`] and is
//! read and written here, never returned. Their evaluation vector is a
//! [`confide_core::metrics::RecommendationEval`].
//!
//! Rows are loaded here and never leave this module: only these vectors do. Failures carry a
//! kind and a reason (a data error names file, line and column) that the coordinator records.
//!
//! ## Differentially private jobs
//! When a task's job is DP ([`DpJob`]), every vector that leaves is private on its own:
//! - statistics: values clipped into the schema's declared ranges, then Gaussian noise per
//!   [`confide_datasets::stats_sensitivity`] at the job's `statistics_noise_multiplier`;
//! - training: `[Δ…, 1, 0]` — the *unweighted* update (a row count is itself a statistic of the
//!   data), weight 1 and no loss. Record mode trains with DP-SGD ([`ml::dp_sgd`]: per-row
//!   clipping to C, noise σ·C per step, Poisson batches at q = batch_size/rows); institution mode
//!   trains normally and the task machine clips the whole Δ to C and adds the distributed
//!   discrete noise before masking;
//! - evaluation: the score histograms and sums with log losses clamped at
//!   [`confide_core::record_noise::DP_EVAL_MIN_PROBABILITY`], plus Gaussian noise at the job's
//!   `evaluation_noise_multiplier`.
//!
//! The noise seeds are bank secrets (drawn by the task machine), so the coordinator cannot
//! subtract the noise. What each task costs is [`confide_core::spend`]'s arithmetic, charged by
//! the bank's budget ledger before the task runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use confide_core::contribution::TrainContribution;
use confide_core::job::{LocalTraining, PrivacyMode};
use confide_core::record_noise;
use confide_core::spend::{self, DpJob};
use rand::SeedableRng;
use confide_core::model::{ModelParams, ModelSpec};
use confide_core::outcome::DatasetProblem;
use confide_datasets::{Catalogue, DataError, DatasetSchema, Encoded, Preprocessing, Ratings, RawTable, SchemaError};
use tch::Device;

use crate::config::DatasetConfig;
use crate::failure::Failure;
use crate::ml;

/// A dataset this worker offers, with its schema loaded and its splits loaded on first use.
#[derive(Debug)]
pub struct LocalDataset {
    /// Configuration.
    pub config: DatasetConfig,
    /// Parsed schema.
    pub schema: DatasetSchema,
    /// Schema fingerprint sent at registration.
    pub fingerprint: String,
    tables: Mutex<HashMap<&'static str, Arc<RawTable>>>,
    encoded: Mutex<HashMap<(&'static str, String), Arc<Encoded>>>,
    ratings: Mutex<HashMap<&'static str, Arc<Ratings>>>,
    /// Tree jobs' boosters (see [`crate::trees`]).
    pub boosters: crate::trees::Boosters,
}

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training rows.
    Train,
    /// Held-out rows.
    Test,
}

impl Split {
    fn key(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Why a dataset cannot be offered: the kind of problem (all the coordinator learns) and the
/// full detail naming file, line and column (for the bank's operator only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The kind of problem.
    pub problem: DatasetProblem,
    /// What is wrong, where.
    pub detail: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What checking a usable dataset found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Every training label is the same class (binary targets only).
    pub one_class: bool,
}

fn data_problem(e: &DataError) -> DatasetProblem {
    match e {
        DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => DatasetProblem::Missing,
        DataError::NoHeader { .. } => DatasetProblem::Empty,
        DataError::Schema(_) => DatasetProblem::Schema,
        _ => DatasetProblem::Corrupt,
    }
}

impl LocalDataset {
    /// Loads the schema (data files are read on first use, or by [`Self::check`]).
    pub fn open(config: DatasetConfig) -> Result<Self, Failure> {
        Self::open_schema(config).map_err(|u| Failure::data(u.detail))
    }

    /// Loads the schema and then both splits ([`Self::check`]): a dataset the bank can offer.
    pub fn load(config: DatasetConfig) -> Result<(Self, Checked), Unusable> {
        let data = Self::open_schema(config)?;
        let checked = data.check()?;
        Ok((data, checked))
    }

    fn open_schema(config: DatasetConfig) -> Result<Self, Unusable> {
        let schema = DatasetSchema::from_file(&config.schema).map_err(|e| {
            let problem = match &e {
                SchemaError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => DatasetProblem::Missing,
                _ => DatasetProblem::Schema,
            };
            Unusable { problem, detail: e.to_string() }
        })?;
        if schema.name != config.name {
            return Err(Unusable {
                problem: DatasetProblem::Schema,
                detail: format!("{}: schema describes dataset `{}`, config names it `{}`", config.schema.display(), schema.name, config.name),
            });
        }
        let fingerprint = schema.fingerprint();
        Ok(Self {
            config,
            schema,
            fingerprint,
            tables: Mutex::default(),
            encoded: Mutex::default(),
            ratings: Mutex::default(),
            boosters: Default::default(),
        })
    }

    fn path(&self, split: Split) -> &Path {
        match split {
            Split::Train => &self.config.train,
            Split::Test => &self.config.test,
        }
    }

    /// Reads both splits against the schema, keeping them for the tasks to come: a missing,
    /// empty or corrupt file makes the dataset unusable (the detail names file, line and
    /// column). Also says whether the training labels are all one class.
    pub fn check(&self) -> Result<Checked, Unusable> {
        let unusable = |e: DataError| Unusable { problem: data_problem(&e), detail: e.to_string() };
        let empty = |path: &Path, what: &str| Unusable { problem: DatasetProblem::Empty, detail: format!("{}: {what}", path.display()) };
        let mut one_class = false;
        for split in [Split::Train, Split::Test] {
            let path = self.path(split);
            if self.schema.recommendation.is_some() {
                let ratings = confide_datasets::load_ratings(path, &self.schema).map_err(unusable)?;
                if ratings.is_empty() {
                    return Err(empty(path, "no ratings"));
                }
                lock(&self.ratings).insert(split.key(), Arc::new(ratings));
            } else {
                let table = confide_datasets::load_table(path, &self.schema).map_err(unusable)?;
                if table.rows == 0 {
                    return Err(empty(path, "no usable rows"));
                }
                if split == Split::Train && self.schema.target.is_some() {
                    let positives = table.positives();
                    one_class = positives == 0 || positives == table.rows;
                }
                lock(&self.tables).insert(split.key(), Arc::new(table));
            }
        }
        Ok(Checked { one_class })
    }

    /// The raw rows of a split (loaded once; a bad file is re-read on the next task, so a
    /// fixed file is picked up without restarting).
    pub fn table(&self, split: Split) -> Result<Arc<RawTable>, Failure> {
        if let Some(t) = lock(&self.tables).get(split.key()) {
            return Ok(t.clone());
        }
        let table = Arc::new(confide_datasets::load_table(self.path(split), &self.schema).map_err(Failure::data)?);
        if table.rows == 0 {
            return Err(Failure::data(format!("{}: no usable rows", self.path(split).display())));
        }
        lock(&self.tables).insert(split.key(), table.clone());
        Ok(table)
    }

    /// A split encoded with the federation's preprocessing (cached per preprocessing).
    pub fn encoded(&self, split: Split, prep: &Preprocessing, prep_key: &str) -> Result<Arc<Encoded>, Failure> {
        let key = (split.key(), prep_key.to_string());
        if let Some(e) = lock(&self.encoded).get(&key) {
            return Ok(e.clone());
        }
        let table = self.table(split)?;
        let enc = Arc::new(prep.encode(&table).map_err(Failure::data)?);
        lock(&self.encoded).insert(key, enc.clone());
        Ok(enc)
    }

    /// The ratings of a split of a recommendation dataset (loaded once, like [`Self::table`]).
    pub fn ratings(&self, split: Split) -> Result<Arc<Ratings>, Failure> {
        if let Some(r) = lock(&self.ratings).get(split.key()) {
            return Ok(r.clone());
        }
        let ratings = Arc::new(confide_datasets::load_ratings(self.path(split), &self.schema).map_err(Failure::data)?);
        if ratings.is_empty() {
            return Err(Failure::data(format!("{}: no ratings", self.path(split).display())));
        }
        lock(&self.ratings).insert(split.key(), ratings.clone());
        Ok(ratings)
    }

    /// The additive statistics of the training split.
    pub fn stats(&self) -> Result<Vec<f64>, Failure> {
        if self.schema.recommendation.is_some() {
            let ratings = self.ratings(Split::Train)?;
            return Ok(confide_datasets::ratings_stats(&ratings));
        }
        let table = self.table(Split::Train)?;
        Ok(confide_datasets::local_stats(&table, &self.schema))
    }

    /// The statistics of a DP job: clipped into the declared ranges, with Gaussian noise from
    /// the bank-secret `noise_seed` (see the module docs).
    pub fn dp_stats(&self, dp: &DpJob, noise_seed: u64) -> Result<Vec<f64>, Failure> {
        if self.schema.recommendation.is_some() {
            return Err(Failure::policy("differential privacy is not available for ratings datasets"));
        }
        let table = self.table(Split::Train)?;
        // A schema without ranges names only its own column (public), never a value.
        let sensitivity = confide_datasets::stats_sensitivity(&self.schema).map_err(|e| Failure::policy(e.to_string()))?;
        let mut v = confide_datasets::clipped_local_stats(&table, &self.schema).map_err(|e| Failure::policy(e.to_string()))?;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(noise_seed);
        record_noise::add_gaussian(&mut v, &sensitivity, dp.privacy.statistics_noise_multiplier, &mut rng);
        Ok(v)
    }

    /// The bank's training and test rows (what its own DP accounting reads; a recommendation
    /// dataset's records are its ratings).
    pub fn rows(&self) -> Result<spend::BankRows, Failure> {
        if self.schema.recommendation.is_some() {
            let (train, test) = (self.ratings(Split::Train)?, self.ratings(Split::Test)?);
            return Ok(spend::BankRows { train: train.len() as u64, test: test.len() as u64 });
        }
        Ok(spend::BankRows { train: self.table(Split::Train)?.rows as u64, test: self.table(Split::Test)?.rows as u64 })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A model as shipped in a task, parsed against the job's preprocessing.
pub struct ModelInput<'a> {
    /// Model family.
    pub spec: &'a ModelSpec,
    /// Checkpoint bytes (safetensors).
    pub checkpoint: &'a [u8],
    /// The scripted module of a `torchscript` model (verified against its hash), else None.
    pub module: Option<&'a [u8]>,
    /// Federation preprocessing.
    pub prep: &'a Preprocessing,
    /// Cache key of the preprocessing: its stable id (the SHA-256 of its JSON, see
    /// [`crate::task::Prep`]).
    pub prep_key: &'a str,
    /// The job the task belongs to (recommendation models keep their user side per job).
    pub job_id: &'a str,
    /// The task's round (recommendation models keep their user side per round, so a retried
    /// round starts again from the previous round's users).
    pub round: u64,
}

impl ModelInput<'_> {
    fn params(&self) -> Result<ModelParams, Failure> {
        let layout = self.spec.layout(self.prep.input_dim());
        ModelParams::from_safetensors(self.checkpoint, &layout).map_err(|e| Failure::protocol(format!("global model: {e}")))
    }

    /// The model with `params` loaded, for rows of width `input_dim`.
    fn build(&self, params: &ModelParams, input_dim: usize, device: Device) -> Result<Box<dyn ml::Classifier>, Failure> {
        ml::build_model(self.spec, self.module, params, input_dim, device).map_err(Failure::training)
    }
}

/// The training contribution vector ([`TrainContribution`]), refusing non-finite values.
fn weighted_update(local: &ModelParams, global: &ModelParams, samples: usize, mean_loss: f64) -> Result<Vec<f64>, Failure> {
    TrainContribution::from_training(&local.values, &global.values, samples, mean_loss)
        .map(|c| c.to_vec())
        .map_err(Failure::training)
}

/// Trains locally and returns `[n·Δ…, n, n·loss]` over the model's federated layout, or for a
/// DP job `[Δ…, 1, 0]` (see the module docs).
pub fn train_contribution(
    data: &LocalDataset,
    model: &ModelInput<'_>,
    local: &LocalTraining,
    dp: Option<&DpJob>,
    users: &UserStateStore,
    device: Device,
) -> Result<Vec<f64>, Failure> {
    let global = model.params()?;
    if let Some(dp) = dp {
        return dp_train_contribution(data, model, &global, local, dp, device);
    }
    if model.spec.is_recommendation() {
        let (mut user_side, train, _) = rec_data(data, model, users, false)?;
        let cfg = ml::recsys::RecTrainConfig::from(local);
        let out = ml::recsys::train_recommender(model.spec, &global, &mut user_side, &train, &cfg, device)
            .map_err(Failure::training)?;
        let v = weighted_update(&out.shared, &global, out.samples, out.mean_loss)?;
        users.save(model.job_id, model.round, model.spec, &user_side)?;
        return Ok(v);
    }
    let enc = data.encoded(Split::Train, model.prep, model.prep_key)?;
    let cfg = ml::TrainConfig::from(local);
    let mut net = model.build(&global, enc.dim, device)?;
    let out = ml::train_model(net.as_mut(), &enc, &cfg, device).map_err(Failure::training)?;
    weighted_update(&out.params, &global, out.samples, out.mean_loss)
}

/// One DP training round: DP-SGD (record mode) or plain local training (institution mode),
/// contributing the unweighted update with weight 1 and no loss.
fn dp_train_contribution(
    data: &LocalDataset,
    model: &ModelInput<'_>,
    global: &ModelParams,
    local: &LocalTraining,
    dp: &DpJob,
    device: Device,
) -> Result<Vec<f64>, Failure> {
    if model.spec.is_recommendation() {
        return Err(Failure::policy(format!("differential privacy is not available for `{}` models", model.spec.kind_name())));
    }
    let enc = data.encoded(Split::Train, model.prep, model.prep_key)?;
    let cfg = ml::TrainConfig::from(local);
    let out = match dp.privacy.mode {
        PrivacyMode::Record => {
            if matches!(model.spec, ModelSpec::TorchScript(_)) {
                return Err(Failure::policy("record-level DP-SGD is not available for custom TorchScript modules"));
            }
            let settings = ml::dp_sgd::DpSgd {
                clip_norm: dp.privacy.clip_norm,
                noise_multiplier: dp.sigma().map_err(|e| Failure::protocol(format!("job terms: {e}")))?,
                sampling_rate: spend::sampling_rate(dp.batch_size, enc.rows as u64),
            };
            ml::dp_sgd::train_local_dp(model.spec, global, &enc, &cfg, &settings, device).map_err(Failure::training)?
        }
        PrivacyMode::Institution => {
            let mut net = model.build(global, enc.dim, device)?;
            ml::train_model(net.as_mut(), &enc, &cfg, device).map_err(Failure::training)?
        }
    };
    TrainContribution::from_training(&out.params.values, &global.values, 1, 0.0).map(|c| c.to_vec()).map_err(Failure::training)
}

/// Evaluates the model on the test split and returns its evaluation contribution vector
/// (score histograms and sums, or recommendation sums); for a DP job with Gaussian noise from
/// the bank-secret `noise_seed` (see the module docs).
pub fn eval_contribution(
    data: &LocalDataset,
    model: &ModelInput<'_>,
    buckets: usize,
    dp: Option<(&DpJob, u64)>,
    users: &UserStateStore,
    device: Device,
) -> Result<Vec<f64>, Failure> {
    let params = model.params()?;
    if model.spec.is_recommendation() {
        if dp.is_some() {
            return Err(Failure::policy(format!("differential privacy is not available for `{}` models", model.spec.kind_name())));
        }
        let (user_side, train, test) = rec_data(data, model, users, true)?;
        let rec = recommendation_prep(model.prep)?;
        let range = data.schema.recommendation.as_ref().map_or((f64::MIN, f64::MAX), |r| (r.min_rating, r.max_rating));
        let test = test.unwrap_or_default();
        let mut e = ml::recsys::evaluate_recommender(model.spec, &params, &user_side, &train, &test, rec, range, device)
            .map_err(Failure::training)?;
        if test.is_empty() {
            e.users = 0.0;
        }
        return Ok(e.to_vec());
    }
    let enc = data.encoded(Split::Test, model.prep, model.prep_key)?;
    let mut net = model.build(&params, enc.dim, device)?;
    let Some((dp, noise_seed)) = dp else {
        return Ok(ml::evaluate_with(net.as_mut(), &enc, buckets, device).map_err(Failure::training)?.to_vec());
    };
    let probs = ml::predict_with(net.as_mut(), &enc.features, enc.rows, enc.dim, device).map_err(Failure::training)?;
    let floor = record_noise::DP_EVAL_MIN_PROBABILITY;
    let mut v = ml::EvalContribution::from_predictions_with_floor(&probs, &enc.labels, buckets, floor).to_vec();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(noise_seed);
    record_noise::add_gaussian(&mut v, &record_noise::eval_sensitivity(buckets), dp.privacy.evaluation_noise_multiplier, &mut rng);
    Ok(v)
}

fn recommendation_prep(prep: &Preprocessing) -> Result<&confide_datasets::RecommendationPrep, Failure> {
    prep.recommendation
        .as_ref()
        .ok_or_else(|| Failure::protocol("a recommendation model was sent without the recommendation preprocessing"))
}

/// The job's user side (loaded from the state store), the indexed training ratings and, when
/// asked, the indexed test ratings.
fn rec_data(
    data: &LocalDataset,
    model: &ModelInput<'_>,
    users: &UserStateStore,
    with_test: bool,
) -> Result<(ml::recsys::UserParams, ml::recsys::RecData, Option<ml::recsys::RecData>), Failure> {
    let rec = recommendation_prep(model.prep)?;
    let spec = confide_datasets::ratings::recommendation_spec(&data.schema, &data.config.schema.display().to_string())
        .map_err(Failure::data)?;
    let catalogue = Catalogue::new(rec.items.clone()).map_err(|e| Failure::protocol(format!("item catalogue: {e}")))?;
    // Training round R starts from the users of the latest round before R (a retried round does
    // not train them twice); evaluating round R uses the users round R's training produced.
    let before = if with_test { model.round.saturating_add(1) } else { model.round };
    let mut user_side = users.load_before(model.job_id, before, model.spec)?;
    let seed = user_seed(model.job_id);
    let index = |split, user_side: &mut ml::recsys::UserParams| -> Result<ml::recsys::RecData, Failure> {
        let ratings = data.ratings(split)?;
        ml::recsys::RecData::index(&ratings, &catalogue, spec, user_side, seed).map_err(Failure::data)
    };
    let train = index(Split::Train, &mut user_side)?;
    let test = if with_test { Some(index(Split::Test, &mut user_side)?) } else { None };
    Ok((user_side, train, test))
}

/// The seed new users' embeddings are drawn from: fixed per job.
fn user_seed(job_id: &str) -> u64 {
    let digest = confide_core::sha256_hex(format!("confide-user-init\u{0}{job_id}").as_bytes());
    u64::from_str_radix(&digest[..16], 16).unwrap_or_default()
}

/// Where a worker keeps each recommendation job's user side:
/// `<data_dir>/user_state/<job>/round-<R>.safetensors`, the users after training round R (the
/// latest two rounds are kept). These files never leave the institution.
#[derive(Debug, Clone)]
pub struct UserStateStore {
    dir: PathBuf,
}

impl UserStateStore {
    /// A store under the worker's data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("user_state") }
    }

    /// The state directory of a job (job ids are checked to be plain names).
    pub fn job_dir(&self, job_id: &str) -> Result<PathBuf, Failure> {
        let plain = !job_id.is_empty() && job_id.len() <= 128 && job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(Failure::protocol(format!("job id {job_id:?} cannot name a state directory")));
        }
        Ok(self.dir.join(job_id))
    }

    /// Rounds with a saved user side, ascending.
    pub fn rounds(&self, job_id: &str) -> Result<Vec<u64>, Failure> {
        let dir = self.job_dir(job_id)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Failure::internal(format!("{}: {e}", dir.display()))),
        };
        let mut rounds: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("round-")?.strip_suffix(".safetensors")?.parse().ok())
            .collect();
        rounds.sort_unstable();
        Ok(rounds)
    }

    /// The user side after the latest round before `round`; empty when there is none.
    pub fn load_before(&self, job_id: &str, round: u64, spec: &ModelSpec) -> Result<ml::recsys::UserParams, Failure> {
        let dim = spec.embedding_dim().ok_or_else(|| Failure::protocol("not a recommendation model"))?;
        let Some(latest) = self.rounds(job_id)?.into_iter().rfind(|&r| r < round) else {
            return Ok(ml::recsys::UserParams::new(dim));
        };
        let path = self.job_dir(job_id)?.join(format!("round-{latest}.safetensors"));
        let bytes = std::fs::read(&path).map_err(|e| Failure::internal(format!("{}: {e}", path.display())))?;
        ml::recsys::UserParams::from_safetensors(&bytes, spec).map_err(|e| Failure::internal(format!("{}: {e}", path.display())))
    }

    /// Saves the user side after training `round` atomically (write, sync, rename) and removes
    /// rounds older than the one before it.
    pub fn save(&self, job_id: &str, round: u64, spec: &ModelSpec, users: &ml::recsys::UserParams) -> Result<(), Failure> {
        let dir = self.job_dir(job_id)?;
        let path = dir.join(format!("round-{round}.safetensors"));
        let io = |e: std::io::Error| Failure::internal(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let bytes = users.to_safetensors(spec).map_err(Failure::internal)?;
        let tmp = path.with_extension("safetensors.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        for old in self.rounds(job_id)?.into_iter().filter(|&r| r + 1 < round) {
            let _ = std::fs::remove_file(dir.join(format!("round-{old}.safetensors")));
        }
        Ok(())
    }
}
