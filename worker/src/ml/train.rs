//! One federated round of local training: start from the global model, run `epochs` passes of
//! mini-batch gradient descent on this institution's encoded rows, and return the new parameters
//! with the sample count and loss.
//!
//! The whole dataset is copied to the device once; each epoch draws a seeded permutation and
//! batches are gathered with `index_select`, so the hot loop is libtorch kernels only. The loss is
//! binary cross-entropy on logits (optionally with a positive-class weight) plus, for FedProx, the
//! proximal term μ/2·‖w − w_global‖². Training is deterministic given the seed and device.

use confide_core::job::{LocalOptimizer, LocalTraining};
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Encoded;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

use super::model::{Classifier, Net};
use super::{MlError, check_data};

/// The local optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent, with optional momentum (0 = plain SGD).
    Sgd {
        /// Momentum coefficient in `[0, 1)`.
        #[serde(default)]
        momentum: f64,
    },
    /// Adam with libtorch's default betas; its moments start from zero every round.
    Adam,
}

/// Settings of one round of local training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the local training rows (≥ 1).
    pub epochs: usize,
    /// Mini-batch size (≥ 1; the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Learning rate (> 0).
    pub learning_rate: f64,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// FedProx μ (≥ 0); 0 is plain FedAvg local training.
    pub prox_mu: f64,
    /// Weight of positive examples in the loss (> 0), for class imbalance; `None` = 1.
    pub pos_weight: Option<f64>,
    /// Seed for the batch order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 64,
            learning_rate: 0.01,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            prox_mu: 0.0,
            pos_weight: None,
            seed: 0,
        }
    }
}

impl From<&LocalTraining> for TrainConfig {
    fn from(t: &LocalTraining) -> Self {
        Self {
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            optimizer: match t.optimizer {
                LocalOptimizer::Sgd => Optimizer::Sgd { momentum: 0.0 },
                LocalOptimizer::Momentum => Optimizer::Sgd { momentum: 0.9 },
                LocalOptimizer::Adam => Optimizer::Adam,
            },
            prox_mu: t.prox_mu,
            pos_weight: t.pos_weight,
            seed: t.seed,
        }
    }
}

impl TrainConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |m: String| Err(MlError::InvalidConfig(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning_rate {} must be a positive number", self.learning_rate));
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return bad(format!("prox_mu {} must be a non-negative number", self.prox_mu));
        }
        if let Some(w) = self.pos_weight
            && !(w.is_finite() && w > 0.0)
        {
            return bad(format!("pos_weight {w} must be a positive number"));
        }
        if let Optimizer::Sgd { momentum } = self.optimizer
            && !(0.0..1.0).contains(&momentum)
        {
            return bad(format!("momentum {momentum} must be in [0, 1)"));
        }
        Ok(())
    }
}

/// The result of a round of local training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The locally trained parameters (same layout as the global model).
    pub params: ModelParams,
    /// Number of training rows (the aggregation weight).
    pub samples: usize,
    /// Mean binary cross-entropy per row over the last epoch (without the proximal term).
    pub mean_loss: f64,
    /// Mean binary cross-entropy per row of each epoch.
    pub epoch_losses: Vec<f64>,
}

/// Checks rows, shapes and values of the training data.
pub(crate) fn check_training_data(data: &Encoded) -> Result<(), MlError> {
    check_data(&data.features, Some(&data.labels), data.rows, data.dim)?;
    if data.rows == 0 {
        return Err(MlError::NoData);
    }
    if let Some(i) = data.features.iter().position(|v| !v.is_finite()) {
        return Err(MlError::Data(format!(
            "feature {} of row {} is not finite",
            i % data.dim,
            i / data.dim
        )));
    }
    if let Some(r) = data.labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(MlError::Data(format!(
            "label of row {r} is {}, expected 0 or 1",
            data.labels[r]
        )));
    }
    Ok(())
}

/// Trains the built-in `spec` from `global` on `data` for one round; see the module
/// documentation.
pub fn train_local(
    spec: &ModelSpec,
    global: &ModelParams,
    data: &Encoded,
    cfg: &TrainConfig,
    device: Device,
) -> Result<TrainOutcome, MlError> {
    cfg.validate()?;
    check_training_data(data)?;
    let mut net = Net::new(spec, global, data.dim, device)?;
    train_checked(&mut net, data, cfg, device)
}

/// Trains any [`Classifier`] (built in or scripted), starting from the parameters loaded in it,
/// on `data` for one round.
pub fn train_model(
    model: &mut dyn Classifier,
    data: &Encoded,
    cfg: &TrainConfig,
    device: Device,
) -> Result<TrainOutcome, MlError> {
    cfg.validate()?;
    check_training_data(data)?;
    train_checked(model, data, cfg, device)
}

/// What a round of local training sets up before its first step (plain and DP-SGD alike).
pub(crate) struct Setup {
    /// Rows.
    pub rows: i64,
    /// The features on the device, `rows × dim`.
    pub x: Tensor,
    /// The labels on the device.
    pub y: Tensor,
    /// The positive-class weight on the device, if any.
    pub pos_weight: Option<Tensor>,
    /// FedProx anchors: (variable, detached copy of its global value); empty without FedProx.
    pub anchors: Vec<(Tensor, Tensor)>,
    /// The local optimizer over the trainable variables.
    pub opt: nn::Optimizer,
}

/// Copies the rows to the device and builds the anchors and the optimizer for `vs`.
pub(crate) fn setup(vs: &nn::VarStore, data: &Encoded, cfg: &TrainConfig, device: Device) -> Result<Setup, MlError> {
    let rows = i64::try_from(data.rows).map_err(|_| MlError::Data("too many rows".into()))?;
    let dim = i64::try_from(data.dim).map_err(|_| MlError::Data("too many columns".into()))?;
    let x = Tensor::f_from_slice(&data.features)?.f_reshape([rows, dim])?.f_to_device(device)?;
    let y = Tensor::f_from_slice(&data.labels)?.f_to_device(device)?;
    let pos_weight = match cfg.pos_weight {
        Some(w) => Some(Tensor::f_from_slice(&[w as f32])?.f_to_device(device)?),
        None => None,
    };
    let anchors: Vec<(Tensor, Tensor)> = if cfg.prox_mu > 0.0 {
        vs.trainable_variables()
            .into_iter()
            .map(|v| {
                let g = tch::no_grad(|| v.detach().copy());
                (v, g)
            })
            .collect()
    } else {
        Vec::new()
    };
    let opt = match cfg.optimizer {
        Optimizer::Sgd { momentum } => nn::Sgd { momentum, ..Default::default() }.build(vs, cfg.learning_rate)?,
        Optimizer::Adam => nn::Adam::default().build(vs, cfg.learning_rate)?,
    };
    Ok(Setup { rows, x, y, pos_weight, anchors, opt })
}

/// The training loop, on a configuration and data already checked.
fn train_checked(
    net: &mut dyn Classifier,
    data: &Encoded,
    cfg: &TrainConfig,
    device: Device,
) -> Result<TrainOutcome, MlError> {
    // Seeds libtorch's generator, which a scripted module's dropout draws from.
    tch::manual_seed(i64::from_le_bytes(cfg.seed.to_le_bytes()));
    net.set_training(true)?;
    let Setup { rows, x, y, pos_weight, anchors, mut opt } = setup(net.var_store(), data, cfg, device)?;

    let batch = i64::try_from(cfg.batch_size).unwrap_or(i64::MAX).min(rows);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<i64> = (0..rows).collect();
    let mut epoch_losses = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let perm = Tensor::f_from_slice(&order)?.f_to_device(device)?;
        let mut total = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut start = 0i64;
        while start < rows {
            let len = batch.min(rows - start);
            let idx = perm.f_narrow(0, start, len)?;
            let (xb, yb) = (x.f_index_select(0, &idx)?, y.f_index_select(0, &idx)?);
            let data_loss = net.logits(&xb)?.f_binary_cross_entropy_with_logits(
                &yb,
                None::<&Tensor>,
                pos_weight.as_ref(),
                Reduction::Mean,
            )?;
            let loss = if anchors.is_empty() {
                data_loss.shallow_clone()
            } else {
                let terms = anchors
                    .iter()
                    .map(|(w, g)| (w - g).f_square()?.f_sum(Kind::Float))
                    .collect::<Result<Vec<_>, _>>()?;
                &data_loss + Tensor::f_stack(&terms, 0)?.f_sum(Kind::Float)? * (cfg.prox_mu / 2.0)
            };
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
            total += data_loss.detach() * (len as f64);
            start += len;
        }
        // One device synchronisation per epoch.
        let mean = f64::try_from(&total)? / data.rows as f64;
        if !mean.is_finite() {
            return Err(MlError::NonFiniteLoss { epoch, value: mean });
        }
        epoch_losses.push(mean);
    }
    net.set_training(false)?;
    Ok(TrainOutcome {
        params: net.params()?,
        samples: data.rows,
        mean_loss: epoch_losses.last().copied().unwrap_or(f64::NAN),
        epoch_losses,
    })
}
