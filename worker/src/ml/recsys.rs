//! Recommendation models with libtorch: biased matrix factorisation and the two-tower model,
//! trained from the federation's shared item side plus this institution's own user side.
//!
//! What travels and what stays:
//! - the *shared* parameters (item embeddings, item biases, the global bias, tower layers) come
//!   in with the global model and leave only as the weighted update of the training vector;
//! - the *local* parameters (user embeddings and user biases, [`UserParams`]) are created here,
//!   deterministically per user on first sight, trained every round, kept in the worker's state
//!   directory, and are never part of any vector this module returns.
//!
//! Training is one round of mini-batch descent on squared error (explicit ratings) or on binary
//! cross-entropy with sampled unrated items as negatives (implicit feedback), with an L2 penalty
//! on the rows each batch touches, so items a bank never sees get no update from it. Evaluation
//! returns the additive [`RecommendationEval`] sums: rating error over every held-out rating, and
//! the rank of every relevant held-out item among sampled items its user has not rated.

use std::collections::{HashMap, HashSet};

use confide_core::job::{Feedback, LocalTraining};
use confide_core::metrics::RecommendationEval;
use confide_core::model::{ModelParams, ModelSpec, ParamLayout, rec_names};
use confide_datasets::{Catalogue, DataError, Ratings, RecommendationPrep, RecommendationSpec};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

use super::model::{load_params_into, params_from};
use super::train::{Optimizer, TrainConfig};
use super::MlError;

/// One institution's user side: user ids and their embeddings and biases.
#[derive(Debug, Clone, PartialEq)]
pub struct UserParams {
    /// Embedding width.
    pub dim: usize,
    /// User ids, in row order.
    pub ids: Vec<String>,
    /// Row-major `[users, dim]` embeddings.
    pub embedding: Vec<f32>,
    /// One bias per user.
    pub bias: Vec<f32>,
    index: HashMap<String, usize>,
}

/// Metadata key holding the user ids (JSON array) in a saved user-state file.
const USER_IDS_KEY: &str = "confide.user_ids";

impl UserParams {
    /// No users yet.
    pub fn new(dim: usize) -> Self {
        Self { dim, ids: Vec::new(), embedding: Vec::new(), bias: Vec::new(), index: HashMap::new() }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True without users.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The row of each id, adding unseen users with embeddings drawn deterministically from
    /// `(seed, user id)` (uniform, standard deviation [`confide_core::model::EMBEDDING_INIT_STD`])
    /// and a zero bias: the same user starts the same way on every run.
    pub fn rows_for(&mut self, ids: &[String], seed: u64) -> Vec<i64> {
        ids.iter()
            .map(|id| {
                if let Some(&r) = self.index.get(id) {
                    return r as i64;
                }
                let digest = confide_core::sha256_hex(format!("{seed}\u{0}{id}").as_bytes());
                let user_seed = u64::from_str_radix(&digest[..16], 16).unwrap_or(seed);
                let mut rng = ChaCha8Rng::seed_from_u64(user_seed);
                let bound = confide_core::model::EMBEDDING_INIT_STD * 3f64.sqrt();
                self.embedding.extend((0..self.dim).map(|_| rng.random_range(-bound..bound) as f32));
                self.bias.push(0.0);
                let r = self.ids.len();
                self.ids.push(id.clone());
                self.index.insert(id.clone(), r);
                r as i64
            })
            .collect()
    }

    /// The row of a known user.
    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    fn layout(&self, spec: &ModelSpec) -> Result<ParamLayout, MlError> {
        spec.local_user_layout(self.len()).ok_or_else(|| MlError::InvalidConfig(format!("{} has no user side", spec.label())))
    }

    fn to_params(&self, spec: &ModelSpec) -> Result<ModelParams, MlError> {
        let mut values = self.embedding.clone();
        values.extend_from_slice(&self.bias);
        Ok(ModelParams::new(self.layout(spec)?, values)?)
    }

    fn set_from(&mut self, params: &ModelParams) -> Result<(), MlError> {
        let missing = |n: &str| MlError::MissingVariable(n.to_string());
        self.embedding = params.tensor(rec_names::USER_EMBEDDING).ok_or_else(|| missing(rec_names::USER_EMBEDDING))?.to_vec();
        self.bias = params.tensor(rec_names::USER_BIAS).ok_or_else(|| missing(rec_names::USER_BIAS))?.to_vec();
        Ok(())
    }

    /// Serialises to a safetensors file (user ids in its metadata), for the worker's state dir.
    pub fn to_safetensors(&self, spec: &ModelSpec) -> Result<Vec<u8>, MlError> {
        let ids = serde_json::to_string(&self.ids).map_err(|e| MlError::Data(e.to_string()))?;
        Ok(self.to_params(spec)?.to_safetensors(Some(HashMap::from([(USER_IDS_KEY.to_string(), ids)]))))
    }

    /// Reads a file written by [`Self::to_safetensors`] for the same model.
    pub fn from_safetensors(bytes: &[u8], spec: &ModelSpec) -> Result<Self, MlError> {
        let dim = spec.embedding_dim().ok_or_else(|| MlError::InvalidConfig(format!("{} has no user side", spec.label())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| MlError::Model(confide_core::model::ModelError::Format(e.to_string())))?;
        let ids: Vec<String> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(USER_IDS_KEY))
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| MlError::Data("user state file has no readable user ids".into()))?;
        let mut users = Self::new(dim);
        let layout = users.layout_for(spec, ids.len())?;
        let params = ModelParams::from_safetensors(bytes, &layout)?;
        users.index = ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        if users.index.len() != ids.len() {
            return Err(MlError::Data("user state file lists a user twice".into()));
        }
        users.ids = ids;
        users.set_from(&params)?;
        Ok(users)
    }

    fn layout_for(&self, spec: &ModelSpec, users: usize) -> Result<ParamLayout, MlError> {
        spec.local_user_layout(users).ok_or_else(|| MlError::InvalidConfig(format!("{} has no user side", spec.label())))
    }
}

/// Ratings indexed for training: user rows (in a [`UserParams`]) and catalogue rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecData {
    /// User row of each rating.
    pub user: Vec<i64>,
    /// Catalogue row of each rating.
    pub item: Vec<i64>,
    /// Rating values.
    pub rating: Vec<f32>,
}

impl RecData {
    /// Indexes `ratings` against the catalogue (unknown items are an error naming file and line)
    /// and the user side (new users are added, see [`UserParams::rows_for`]).
    pub fn index(
        ratings: &Ratings,
        catalogue: &Catalogue,
        spec: &RecommendationSpec,
        users: &mut UserParams,
        seed: u64,
    ) -> Result<Self, DataError> {
        let items = ratings.item_rows(catalogue, spec)?;
        let rows = users.rows_for(&ratings.user_ids, seed);
        Ok(Self {
            user: ratings.user.iter().map(|&u| rows[u as usize]).collect(),
            item: items.into_iter().map(i64::from).collect(),
            rating: ratings.rating.clone(),
        })
    }

    /// Number of ratings.
    pub fn len(&self) -> usize {
        self.rating.len()
    }

    /// True without ratings.
    pub fn is_empty(&self) -> bool {
        self.rating.is_empty()
    }
}

/// Settings of one round of local recommendation training.
#[derive(Debug, Clone, PartialEq)]
pub struct RecTrainConfig {
    /// Epochs, batch size, learning rate, optimizer, FedProx μ and seed.
    pub base: TrainConfig,
    /// L2 penalty on the embeddings and biases each batch touches.
    pub l2: f64,
    /// Explicit ratings or implicit feedback.
    pub feedback: Feedback,
    /// Sampled negatives per positive (implicit feedback).
    pub negatives: usize,
}

impl From<&LocalTraining> for RecTrainConfig {
    fn from(t: &LocalTraining) -> Self {
        Self { base: TrainConfig::from(t), l2: t.l2, feedback: t.feedback, negatives: t.negatives }
    }
}

/// The result of a round of local recommendation training.
#[derive(Debug, Clone, PartialEq)]
pub struct RecTrainOutcome {
    /// The locally trained shared parameters (same layout as the global model).
    pub shared: ModelParams,
    /// Ratings trained on (the aggregation weight).
    pub samples: usize,
    /// Mean loss per example over the last epoch (without the L2 and proximal terms).
    pub mean_loss: f64,
}

/// The libtorch model: shared variables in one store, the user side in another.
struct RecNet {
    shared: VarStore,
    local: VarStore,
    item_embedding: Tensor,
    item_bias: Tensor,
    global_bias: Tensor,
    user_embedding: Tensor,
    user_bias: Tensor,
    user_tower: Vec<nn::Linear>,
    item_tower: Vec<nn::Linear>,
}

fn dim_i64(n: usize) -> Result<i64, MlError> {
    i64::try_from(n).map_err(|_| MlError::Data(format!("dimension {n} is too large")))
}

impl RecNet {
    fn new(spec: &ModelSpec, global: &ModelParams, users: &UserParams, device: Device) -> Result<Self, MlError> {
        let dim = spec.embedding_dim().ok_or_else(|| MlError::InvalidConfig(format!("{} is not a recommendation model", spec.label())))?;
        if users.dim != dim {
            return Err(MlError::InvalidConfig(format!("user embeddings are {} wide, the model needs {dim}", users.dim)));
        }
        let items = global.tensor(rec_names::ITEM_BIAS).map(<[f32]>::len).unwrap_or_default();
        let layout = spec.layout(items);
        if global.layout != layout {
            return Err(MlError::LayoutMismatch { model: spec.label(), input_dim: items, detail: "not the model's item-side layout".into() });
        }
        super::ensure_cpu_threads();
        let mut shared = VarStore::new(device);
        let root = shared.root();
        let (n, d) = (dim_i64(items)?, dim_i64(dim)?);
        let item_embedding = root.f_zeros(rec_names::ITEM_EMBEDDING, &[n, d])?;
        let item_bias = root.f_zeros(rec_names::ITEM_BIAS, &[n])?;
        let global_bias = root.f_zeros(rec_names::GLOBAL_BIAS, &[1])?;
        let tower = |prefix: &str| -> Result<Vec<nn::Linear>, MlError> {
            let mut fan_in = d;
            let mut layers = Vec::new();
            for (i, &out) in spec.hidden().iter().enumerate() {
                let out = dim_i64(out)?;
                layers.push(nn::linear(&root / prefix / format!("fc{i}"), fan_in, out, Default::default()));
                fan_in = out;
            }
            Ok(layers)
        };
        let user_tower = tower(rec_names::USER_TOWER)?;
        let item_tower = tower(rec_names::ITEM_TOWER)?;
        load_params_into(&mut shared, global)?;
        let mut local = VarStore::new(device);
        let lroot = local.root();
        let u = dim_i64(users.len())?;
        let user_embedding = lroot.f_zeros(rec_names::USER_EMBEDDING, &[u, d])?;
        let user_bias = lroot.f_zeros(rec_names::USER_BIAS, &[u])?;
        load_params_into(&mut local, &users.to_params(spec)?)?;
        Ok(Self { shared, local, item_embedding, item_bias, global_bias, user_embedding, user_bias, user_tower, item_tower })
    }

    fn tower(layers: &[nn::Linear], x: &Tensor) -> Tensor {
        let last = layers.len().saturating_sub(1);
        let mut h = x.shallow_clone();
        for (i, layer) in layers.iter().enumerate() {
            h = layer.forward(&h);
            if i < last {
                h = h.relu();
            }
        }
        h
    }

    /// Scores and the touched rows' squared norms (for the L2 penalty).
    fn forward(&self, u: &Tensor, i: &Tensor) -> Result<(Tensor, Tensor), MlError> {
        let ue = self.user_embedding.f_index_select(0, u)?;
        let ie = self.item_embedding.f_index_select(0, i)?;
        let bu = self.user_bias.f_index_select(0, u)?;
        let bi = self.item_bias.f_index_select(0, i)?;
        let interaction = if self.user_tower.is_empty() {
            (&ue * &ie).f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?
        } else {
            (Self::tower(&self.user_tower, &ue) * Self::tower(&self.item_tower, &ie)).f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?
        };
        let score = interaction + &bu + &bi + &self.global_bias;
        let norms = ue.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?
            + ie.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?
            + bu.f_square()?
            + bi.f_square()?;
        Ok((score, norms))
    }
}

fn optimizer(vs: &VarStore, cfg: &TrainConfig) -> Result<nn::Optimizer, MlError> {
    Ok(match cfg.optimizer {
        Optimizer::Sgd { momentum } => nn::Sgd { momentum, ..Default::default() }.build(vs, cfg.learning_rate)?,
        Optimizer::Adam => nn::Adam::default().build(vs, cfg.learning_rate)?,
    })
}

/// Items each user (by row) has rated in `data`.
fn rated_sets(data: &[&RecData], users: usize) -> Vec<HashSet<i64>> {
    let mut sets = vec![HashSet::new(); users];
    for d in data {
        for (&u, &i) in d.user.iter().zip(&d.item) {
            if let Some(s) = sets.get_mut(u as usize) {
                s.insert(i);
            }
        }
    }
    sets
}

/// Up to `n` distinct items in `0..items` outside `rated`, drawn with `rng`.
fn sample_unrated(rng: &mut ChaCha8Rng, items: i64, rated: &HashSet<i64>, n: usize) -> Vec<i64> {
    let available = (items as usize).saturating_sub(rated.len());
    if available <= n {
        return (0..items).filter(|i| !rated.contains(i)).collect();
    }
    let mut chosen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let i = rng.random_range(0..items);
        if !rated.contains(&i) && chosen.insert(i) {
            out.push(i);
        }
    }
    out
}

/// Trains the shared side from `global` and the user side in place for one round on `train`.
/// `users` is updated only when training succeeds.
pub fn train_recommender(
    spec: &ModelSpec,
    global: &ModelParams,
    users: &mut UserParams,
    train: &RecData,
    cfg: &RecTrainConfig,
    device: Device,
) -> Result<RecTrainOutcome, MlError> {
    cfg.base.validate()?;
    if train.is_empty() {
        return Err(MlError::NoData);
    }
    if !(cfg.l2.is_finite() && cfg.l2 >= 0.0) {
        return Err(MlError::InvalidConfig(format!("l2 {} must be ≥ 0", cfg.l2)));
    }
    if cfg.feedback == Feedback::Implicit && cfg.negatives == 0 {
        return Err(MlError::InvalidConfig("implicit feedback needs at least one negative per positive".into()));
    }
    if train.user.iter().any(|&u| u < 0 || u as usize >= users.len()) {
        return Err(MlError::Data("a rating's user is not in the user side".into()));
    }
    tch::manual_seed(i64::from_le_bytes(cfg.base.seed.to_le_bytes()));
    let net = RecNet::new(spec, global, users, device)?;
    let items = net.item_bias.size()[0];
    if train.item.iter().any(|&i| i < 0 || i >= items) {
        return Err(MlError::Data("a rating's item is outside the catalogue".into()));
    }
    let anchors: Vec<(Tensor, Tensor)> = if cfg.base.prox_mu > 0.0 {
        net.shared.trainable_variables().into_iter().map(|v| {
            let g = tch::no_grad(|| v.detach().copy());
            (v, g)
        }).collect()
    } else {
        Vec::new()
    };
    let mut opt_shared = optimizer(&net.shared, &cfg.base)?;
    let mut opt_local = optimizer(&net.local, &cfg.base)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.base.seed);
    let rated = if cfg.feedback == Feedback::Implicit { rated_sets(&[train], users.len()) } else { Vec::new() };
    let mut last_loss = f64::NAN;
    for epoch in 1..=cfg.base.epochs {
        // The epoch's examples: every rating (explicit), or every rating as a positive plus
        // freshly sampled unrated items as negatives (implicit).
        let (mut u, mut i, mut y) = (train.user.clone(), train.item.clone(), Vec::with_capacity(train.len()));
        match cfg.feedback {
            Feedback::Explicit => y.extend_from_slice(&train.rating),
            Feedback::Implicit => {
                y.resize(train.len(), 1.0);
                for (&uu, _) in train.user.iter().zip(&train.item) {
                    for neg in sample_unrated(&mut rng, items, &rated[uu as usize], cfg.negatives) {
                        u.push(uu);
                        i.push(neg);
                        y.push(0.0);
                    }
                }
            }
        }
        let mut order: Vec<i64> = (0..y.len() as i64).collect();
        order.shuffle(&mut rng);
        let ut = Tensor::f_from_slice(&u)?.f_to_device(device)?;
        let it = Tensor::f_from_slice(&i)?.f_to_device(device)?;
        let yt = Tensor::f_from_slice(&y)?.f_to_device(device)?;
        let perm = Tensor::f_from_slice(&order)?.f_to_device(device)?;
        let rows = y.len() as i64;
        let batch = i64::try_from(cfg.base.batch_size).unwrap_or(i64::MAX).min(rows);
        let mut total = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut start = 0;
        while start < rows {
            let len = batch.min(rows - start);
            let idx = perm.f_narrow(0, start, len)?;
            let (ub, ib, yb) = (ut.f_index_select(0, &idx)?, it.f_index_select(0, &idx)?, yt.f_index_select(0, &idx)?);
            let (score, norms) = net.forward(&ub, &ib)?;
            let data_loss = match cfg.feedback {
                Feedback::Explicit => (&score - &yb).f_square()?.f_mean(Kind::Float)?,
                Feedback::Implicit => score.f_binary_cross_entropy_with_logits(&yb, None::<&Tensor>, None::<&Tensor>, Reduction::Mean)?,
            };
            let mut loss = &data_loss + norms.f_mean(Kind::Float)? * cfg.l2;
            if !anchors.is_empty() {
                let terms = anchors.iter().map(|(w, g)| (w - g).f_square()?.f_sum(Kind::Float)).collect::<Result<Vec<_>, _>>()?;
                loss += Tensor::f_stack(&terms, 0)?.f_sum(Kind::Float)? * (cfg.base.prox_mu / 2.0);
            }
            opt_shared.zero_grad();
            opt_local.zero_grad();
            loss.f_backward()?;
            opt_shared.step();
            opt_local.step();
            total += data_loss.detach() * (len as f64);
            start += len;
        }
        let mean = f64::try_from(&total)? / rows as f64;
        if !mean.is_finite() {
            return Err(MlError::NonFiniteLoss { epoch, value: mean });
        }
        last_loss = mean;
    }
    let shared = params_from(&net.shared, &global.layout)?;
    let local = params_from(&net.local, &users.layout(spec)?)?;
    users.set_from(&local)?;
    Ok(RecTrainOutcome { shared, samples: train.len(), mean_loss: last_loss })
}

/// Scores `(user row, item row)` pairs with the shared side and the user side.
pub fn score_pairs(
    spec: &ModelSpec,
    global: &ModelParams,
    users: &UserParams,
    user: &[i64],
    item: &[i64],
    device: Device,
) -> Result<Vec<f32>, MlError> {
    let net = RecNet::new(spec, global, users, device)?;
    let mut out = Vec::with_capacity(user.len());
    for (uc, ic) in user.chunks(65_536).zip(item.chunks(65_536)) {
        let s = tch::no_grad(|| -> Result<Tensor, MlError> {
            let u = Tensor::f_from_slice(uc)?.f_to_device(device)?;
            let i = Tensor::f_from_slice(ic)?.f_to_device(device)?;
            Ok(net.forward(&u, &i)?.0.f_to_device(Device::Cpu)?)
        })?;
        out.extend(Vec::<f32>::try_from(&s)?);
    }
    if let Some(row) = out.iter().position(|p| !p.is_finite()) {
        return Err(MlError::NonFinitePrediction { row });
    }
    Ok(out)
}

/// The evaluation sums of the model on `test`: rating error (predictions clamped to the
/// schema's range; explicit feedback only) over every held-out rating, and the rank of every
/// held-out rating ≥ `relevant_from` among `ranking_negatives` items its user has rated neither
/// in `train` nor in `test`, drawn from `(eval_seed, user id)` so every run and every model is
/// ranked against the same items.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_recommender(
    spec: &ModelSpec,
    global: &ModelParams,
    users: &UserParams,
    train: &RecData,
    test: &RecData,
    prep: &RecommendationPrep,
    rating_range: (f64, f64),
    device: Device,
) -> Result<RecommendationEval, MlError> {
    let mut eval = RecommendationEval::default();
    if test.is_empty() {
        return Ok(eval);
    }
    let items = prep.items.len() as i64;
    let explicit = prep.feedback == Feedback::Explicit;
    let scores = score_pairs(spec, global, users, &test.user, &test.item, device)?;
    let test_users: HashSet<i64> = test.user.iter().copied().collect();
    eval.users = test_users.len() as f64;
    if explicit {
        for (&p, &r) in scores.iter().zip(&test.rating) {
            eval.add_rating(f64::from(p).clamp(rating_range.0, rating_range.1), f64::from(r));
        }
    }
    // Ranking: one negative set per user, shared by all of that user's relevant items.
    let rated = rated_sets(&[train, test], users.len());
    let mut relevant: HashMap<i64, Vec<f64>> = HashMap::new();
    for ((&u, &r), &s) in test.user.iter().zip(&test.rating).zip(&scores) {
        if f64::from(r) >= prep.relevant_from {
            relevant.entry(u).or_default().push(f64::from(s));
        }
    }
    let mut ranked_users: Vec<i64> = relevant.keys().copied().collect();
    ranked_users.sort_unstable();
    let (mut nu, mut ni, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    for &u in &ranked_users {
        let id = users.ids.get(u as usize).ok_or_else(|| MlError::Data("a test user is not in the user side".into()))?;
        let digest = confide_core::sha256_hex(format!("{}\u{0}{id}", prep.eval_seed).as_bytes());
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from_str_radix(&digest[..16], 16).unwrap_or(prep.eval_seed));
        let negs = sample_unrated(&mut rng, items, &rated[u as usize], prep.ranking_negatives);
        spans.push((u, nu.len(), negs.len()));
        nu.extend(std::iter::repeat_n(u, negs.len()));
        ni.extend(negs);
    }
    let neg_scores = score_pairs(spec, global, users, &nu, &ni, device)?;
    for (u, start, len) in spans {
        let negs: Vec<f64> = neg_scores[start..start + len].iter().map(|&s| f64::from(s)).collect();
        for &p in relevant.get(&u).map(Vec::as_slice).unwrap_or_default() {
            eval.add_ranking(p, &negs, prep.top_k);
        }
    }
    Ok(eval)
}
