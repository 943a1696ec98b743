//! Record-level DP-SGD for the built-in networks (logistic regression and MLPs): every step
//! draws a Poisson batch (each row with probability q), clips each row's gradient to L2 norm C,
//! sums, adds Gaussian noise of standard deviation σ·C and divides by the expected batch size
//! q·N — the mechanism [`confide_core::privacy`] accounts for.
//!
//! Per-example gradients are never materialised. For a linear layer with input `a_i` and
//! back-propagated output gradient `g_i`, row i's weight gradient is `g_i a_iᵀ`, whose squared
//! norm is `‖g_i‖²·‖a_i‖²` (plus `‖g_i‖²` for the bias). One backward pass to the layers'
//! outputs gives every `g_i`; the norms, the clip factors `c_i = min(1, C/‖∇_i‖)` and the
//! clipped sums `Σ c_i g_i a_iᵀ` are then a few batched products — the cost of about two
//! ordinary steps, not one pass per row. The noisy gradient reaches libtorch's optimizer through
//! a surrogate loss `Σ ⟨W, G⟩` whose gradient is exactly `G`, so SGD, momentum and Adam work
//! unchanged, and so does FedProx's proximal term (data-independent, so it costs no privacy).

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Encoded;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Geometric, StandardNormal};
use tch::{Device, Kind, Reduction, Tensor};

use super::model::{Classifier, Net};
use super::train::{Setup, TrainConfig, TrainOutcome, check_training_data, setup};
use super::MlError;

/// The privacy settings of DP-SGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    /// Per-example gradient L2 bound C (> 0).
    pub clip_norm: f64,
    /// Noise standard deviation over C (σ ≥ 0).
    pub noise_multiplier: f64,
    /// Poisson sampling probability q of a row per step, in (0, 1].
    pub sampling_rate: f64,
}

impl DpSgd {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |m: String| Err(MlError::InvalidConfig(m));
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad(format!("clip_norm {} must be a positive number", self.clip_norm));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return bad(format!("noise_multiplier {} must be a non-negative number", self.noise_multiplier));
        }
        if !(self.sampling_rate > 0.0 && self.sampling_rate <= 1.0) {
            return bad(format!("sampling_rate {} must be in (0, 1]", self.sampling_rate));
        }
        Ok(())
    }

    /// Noisy steps per epoch: 1/q, rounded (at least one).
    pub fn steps_per_epoch(&self) -> u64 {
        (1.0 / self.sampling_rate).round().max(1.0) as u64
    }
}

/// One round of DP-SGD local training of the built-in `spec` from `global`; the batch size of
/// `cfg` is replaced by Poisson sampling at `dp.sampling_rate`. The returned losses are the
/// rows' mean loss per epoch, which are not private: a DP job must not report them unnoised.
pub fn train_local_dp(
    spec: &ModelSpec,
    global: &ModelParams,
    data: &Encoded,
    cfg: &TrainConfig,
    dp: &DpSgd,
    device: Device,
) -> Result<TrainOutcome, MlError> {
    cfg.validate()?;
    dp.validate()?;
    check_training_data(data)?;
    let net = Net::new(spec, global, data.dim, device)?;
    // Batches and noise come from this task's own generator (seeded by the bank's secret-salted
    // training seed), never from libtorch's process-wide one that concurrent tasks share.
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let Setup { rows, x, y, pos_weight, anchors, mut opt } = setup(net.var_store(), data, cfg, device)?;
    let expected_batch = dp.sampling_rate * data.rows as f64;
    let sampler = Geometric::new(dp.sampling_rate).map_err(|e| MlError::InvalidConfig(format!("sampling_rate: {e}")))?;
    let mut epoch_losses = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let mut total = Tensor::f_zeros([], (Kind::Float, device))?;
        for _ in 0..dp.steps_per_epoch() {
            let chosen = poisson_batch(rows, &sampler, &mut rng);
            let chosen = Tensor::f_from_slice(&chosen)?.f_to_device(device)?;
            let (xb, yb) = (x.f_index_select(0, &chosen)?, y.f_index_select(0, &chosen)?);
            let (grads, losses) = clipped_sums(&net, &xb, &yb, pos_weight.as_ref(), dp.clip_norm)?;
            total += losses.f_sum(Kind::Float)?;
            let mut surrogate = Tensor::f_zeros([], (Kind::Float, device))?;
            for (var, sum) in grads {
                let noise = gaussian_like(&sum, dp.noise_multiplier * dp.clip_norm, &mut rng)?;
                let noisy = (sum + noise) / expected_batch;
                surrogate = surrogate + (&var * noisy).f_sum(Kind::Float)?;
            }
            for (w, g) in &anchors {
                surrogate = surrogate + (w - g).f_square()?.f_sum(Kind::Float)? * (cfg.prox_mu / 2.0);
            }
            opt.zero_grad();
            surrogate.f_backward()?;
            opt.step();
        }
        // Each epoch's steps see q·N·(1/q) ≈ N rows in expectation: report the mean per row seen.
        let seen = (expected_batch * dp.steps_per_epoch() as f64).max(1.0);
        let mean = f64::try_from(&total)? / seen;
        if !mean.is_finite() {
            return Err(MlError::NonFiniteLoss { epoch, value: mean });
        }
        epoch_losses.push(mean);
    }
    Ok(TrainOutcome {
        params: net.params()?,
        samples: data.rows,
        mean_loss: epoch_losses.last().copied().unwrap_or(f64::NAN),
        epoch_losses,
    })
}

/// A Poisson batch: each of `rows` rows independently with probability q. The gaps between
/// chosen rows are geometric, so a step costs q·N draws, not N.
fn poisson_batch(rows: i64, gaps: &Geometric, rng: &mut ChaCha20Rng) -> Vec<i64> {
    let mut chosen = Vec::new();
    let mut next = i64::try_from(gaps.sample(rng)).unwrap_or(i64::MAX);
    while next < rows {
        chosen.push(next);
        next = next.saturating_add(1).saturating_add(i64::try_from(gaps.sample(rng)).unwrap_or(i64::MAX));
    }
    chosen
}

/// Gaussian noise of standard deviation `std`, shaped like `t`, on its device.
fn gaussian_like(t: &Tensor, std: f64, rng: &mut ChaCha20Rng) -> Result<Tensor, MlError> {
    let values: Vec<f32> = (0..t.numel()).map(|_| (rng.sample::<f64, _>(StandardNormal) * std) as f32).collect();
    Ok(Tensor::f_from_slice(&values)?.f_reshape(t.size())?.f_to_device(t.device())?)
}

/// For one batch: each trainable tensor with the sum over rows of its clipped per-row
/// gradients (`Σ c_i ∇_i`), and the rows' losses (detached).
fn clipped_sums(
    net: &Net,
    xb: &Tensor,
    yb: &Tensor,
    pos_weight: Option<&Tensor>,
    clip_norm: f64,
) -> Result<(Vec<(Tensor, Tensor)>, Tensor), MlError> {
    let layers = net.layers();
    let last = layers.len().saturating_sub(1);
    let mut inputs = Vec::with_capacity(layers.len());
    let mut outputs = Vec::with_capacity(layers.len());
    let mut h = xb.shallow_clone();
    for (i, layer) in layers.iter().enumerate() {
        let z = h.f_matmul(&layer.ws.f_tr()?)?;
        let z = match &layer.bs {
            Some(b) => z + b,
            None => z,
        };
        inputs.push(h.detach());
        h = if i < last { z.f_relu()? } else { z.shallow_clone() };
        outputs.push(z);
    }
    let logits = h.f_squeeze_dim(-1)?;
    let losses = logits.f_binary_cross_entropy_with_logits(yb, None::<&Tensor>, pos_weight, Reduction::None)?;
    if losses.size()[0] == 0 {
        // An empty Poisson batch: zero sums, and the noise alone is released.
        let zeros = net.var_store().trainable_variables().into_iter().map(|v| {
            let z = v.zeros_like();
            (v, z)
        });
        return Ok((zeros.collect(), losses.detach()));
    }
    // Rows are independent, so the gradient of the summed loss at a layer's output is each row's own.
    let out_grads = Tensor::f_run_backward(&[losses.f_sum(Kind::Float)?], &outputs, false, false)?;
    let mut norm_sq = Tensor::f_zeros([xb.size()[0]], (Kind::Float, xb.device()))?;
    for (a, g) in inputs.iter().zip(&out_grads) {
        let g_sq = g.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?;
        let a_sq = a.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)? + 1.0;
        norm_sq = norm_sq + g_sq * a_sq;
    }
    let scale = (norm_sq.f_sqrt()? + 1e-12).f_reciprocal()?.f_mul_scalar(clip_norm)?.f_clamp_max(1.0)?.f_unsqueeze(1)?;
    let mut sums = Vec::with_capacity(2 * layers.len());
    for ((layer, a), g) in layers.iter().zip(&inputs).zip(&out_grads) {
        let scaled = g * &scale;
        sums.push((layer.ws.shallow_clone(), scaled.f_tr()?.f_matmul(a)?));
        if let Some(b) = &layer.bs {
            sums.push((b.shallow_clone(), scaled.f_sum_dim_intlist(0, false, Kind::Float)?));
        }
    }
    Ok((sums, losses.detach()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::train_local;
    use confide_core::model::ModelSpec;

    /// A small MLP, its initial parameters, and rows with a learnable signal.
    fn fixture(rows: usize, dim: usize) -> (ModelSpec, ModelParams, Encoded) {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({"kind": "mlp", "hidden": [6, 3]})).expect("spec");
        let params = ModelParams::init(spec.layout(dim), 3);
        let mut features = Vec::with_capacity(rows * dim);
        let mut labels = Vec::with_capacity(rows);
        for r in 0..rows {
            for c in 0..dim {
                features.push((((r * 31 + c * 17) % 23) as f32 / 11.0) - 1.0);
            }
            labels.push(if features[r * dim] + features[r * dim + 1] > 0.0 { 1.0 } else { 0.0 });
        }
        (spec, params, Encoded { rows, dim, features, labels })
    }

    fn flat(p: &ModelParams) -> Vec<f32> {
        p.values.clone()
    }

    #[test]
    fn per_example_norms_match_one_backward_pass_per_row() {
        let (spec, params, data) = fixture(12, 5);
        let net = Net::new(&spec, &params, data.dim, Device::Cpu).expect("net");
        let x = Tensor::from_slice(&data.features).reshape([12, 5]);
        let y = Tensor::from_slice(&data.labels);
        // A clip bound far above every norm leaves the sums unclipped; a tiny one scales each
        // row to exactly C, so Σ‖clipped row‖ is 12·C — compare both against per-row passes.
        let (unclipped, _) = clipped_sums(&net, &x, &y, None, 1e9).expect("sums");
        let vars = net.var_store().trainable_variables();
        let mut brute_sum: Vec<Tensor> = vars.iter().map(Tensor::zeros_like).collect();
        let mut brute_norms = Vec::new();
        for r in 0..12 {
            let loss = net.logits(&x.narrow(0, r, 1)).expect("logits").binary_cross_entropy_with_logits::<Tensor>(
                &y.narrow(0, r, 1),
                None,
                None,
                Reduction::Sum,
            );
            let grads = Tensor::run_backward(&[loss], &vars, false, false);
            brute_norms.push(grads.iter().map(|g| g.square().sum(Kind::Float).double_value(&[])).sum::<f64>().sqrt());
            for (s, g) in brute_sum.iter_mut().zip(&grads) {
                *s += g;
            }
        }
        for (var, sum) in &unclipped {
            let i = vars.iter().position(|v| v.data_ptr() == var.data_ptr()).expect("a trainable tensor");
            let diff = (sum - &brute_sum[i]).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "tensor {i}: unclipped sum differs by {diff}");
        }
        let c = brute_norms.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
        let (clipped, _) = clipped_sums(&net, &x, &y, None, c).expect("sums");
        let total_sq: f64 = clipped.iter().map(|(_, s)| s.square().sum(Kind::Float).double_value(&[])).sum();
        // Every row is clipped to norm c, so the sum has norm ≤ 12·c, and > 0 here.
        assert!(total_sq.sqrt() <= 12.0 * c * (1.0 + 1e-5) && total_sq > 0.0, "{} vs {}", total_sq.sqrt(), 12.0 * c);
    }

    #[test]
    fn without_noise_or_clipping_a_full_batch_step_is_plain_gradient_descent() {
        let (spec, params, data) = fixture(40, 5);
        let cfg = TrainConfig { epochs: 3, batch_size: 40, learning_rate: 0.1, ..Default::default() };
        let dp = DpSgd { clip_norm: 1e9, noise_multiplier: 0.0, sampling_rate: 1.0 };
        let private = train_local_dp(&spec, &params, &data, &cfg, &dp, Device::Cpu).expect("dp-sgd");
        let plain = train_local(&spec, &params, &data, &cfg, Device::Cpu).expect("sgd");
        let gap = flat(&private.params).iter().zip(flat(&plain.params)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-5, "DP-SGD with σ = 0 and no clipping differs from full-batch SGD by {gap}");
        assert!((private.mean_loss - plain.mean_loss).abs() < 1e-5);
    }

    #[test]
    fn noise_has_standard_deviation_sigma_c_over_the_expected_batch() {
        let (spec, params, data) = fixture(50, 5);
        let cfg = TrainConfig { epochs: 1, learning_rate: 0.1, ..Default::default() };
        let dp = DpSgd { clip_norm: 1.0, noise_multiplier: 2.0, sampling_rate: 1.0 };
        let run = |seed| train_local_dp(&spec, &params, &data, &TrainConfig { seed, ..cfg.clone() }, &dp, Device::Cpu).expect("dp-sgd");
        let (a, b) = (flat(&run(1).params), flat(&run(2).params));
        // q = 1: the same rows and clipping both times, so the difference is the noise of two
        // draws: per coordinate lr·σ·C/N·√2.
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(x - y)).collect();
        let std = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        let expected = 0.1 * 2.0 * 1.0 / 50.0 * 2f64.sqrt();
        assert!((std / expected - 1.0).abs() < 0.35, "noise std {std}, expected {expected} over {} coordinates", diffs.len());
        let same = flat(&run(1).params);
        assert_eq!(a, same, "the same seed gives the same noise");
    }

    #[test]
    fn poisson_batches_still_learn_and_empty_batches_release_noise_only() {
        let (spec, params, data) = fixture(400, 5);
        let cfg = TrainConfig { epochs: 4, learning_rate: 0.5, ..Default::default() };
        let dp = DpSgd { clip_norm: 1.0, noise_multiplier: 0.5, sampling_rate: 0.1 };
        let first = train_local_dp(&spec, &params, &data, &TrainConfig { epochs: 1, learning_rate: 1e-9, ..cfg.clone() }, &dp, Device::Cpu)
            .expect("dp-sgd")
            .mean_loss;
        let trained = train_local_dp(&spec, &params, &data, &cfg, &dp, Device::Cpu).expect("dp-sgd");
        assert!(trained.mean_loss < first * 0.9, "loss {first} -> {}", trained.mean_loss);
        // 10 rows at q = 0.01: most of the 100 steps draw no row at all.
        let (spec, params, data) = fixture(10, 5);
        let tiny = DpSgd { clip_norm: 1.0, noise_multiplier: 1.0, sampling_rate: 0.01 };
        let out = train_local_dp(&spec, &params, &data, &TrainConfig::default(), &tiny, Device::Cpu).expect("dp-sgd");
        assert_ne!(out.params.values, params.values, "noise moved the model even without rows");
    }

    #[test]
    fn poisson_batches_include_each_row_with_probability_q() {
        let gaps = Geometric::new(0.05).expect("rate");
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut hits = vec![0u32; 200];
        let draws = 4000;
        for _ in 0..draws {
            let batch = poisson_batch(200, &gaps, &mut rng);
            assert!(batch.windows(2).all(|w| w[0] < w[1]), "rows in order, none twice");
            for r in batch {
                hits[r as usize] += 1;
            }
        }
        // Each row: Binomial(4000, 0.05), mean 200, sd ≈ 13.8; the first and last rows too.
        for (row, &h) in hits.iter().enumerate() {
            assert!((140..=260).contains(&h), "row {row} chosen {h} times");
        }
        let mean = f64::from(hits.iter().sum::<u32>()) / 200.0;
        assert!((mean - 200.0).abs() < 5.0, "mean {mean}");
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let (spec, params, data) = fixture(10, 5);
        for dp in [
            DpSgd { clip_norm: 0.0, noise_multiplier: 1.0, sampling_rate: 0.1 },
            DpSgd { clip_norm: 1.0, noise_multiplier: f64::NAN, sampling_rate: 0.1 },
            DpSgd { clip_norm: 1.0, noise_multiplier: 1.0, sampling_rate: 0.0 },
        ] {
            assert!(matches!(
                train_local_dp(&spec, &params, &data, &TrainConfig::default(), &dp, Device::Cpu),
                Err(MlError::InvalidConfig(_))
            ));
        }
    }
}
