//! Shared pieces of the differential-privacy benches (`dp_utility`, `mia_audit`): a federation of
//! worker datasets trained in one process with a job's DP terms applied the way a bank applies
//! them, and the job's privacy parameters solved by core's own planner.
//!
//! - Jobs are real [`JobSpec`]s with a `[privacy]` section; σ comes from
//!   [`confide_core::spend::resolve`] (statistics, every DP-SGD step or round, all in the spend).
//! - Preprocessing under DP: every bank clips its statistics into the schema's declared ranges
//!   ([`clipped_local_stats`]) and adds its own Gaussian noise per [`StatsSensitivity`] (a bank
//!   does not count on the others' noise); the coordinator's step is
//!   [`Preprocessing::from_noisy_aggregate`] on the sum.
//! - Record level: each bank runs the worker's DP-SGD ([`train_local_dp`], Poisson rate
//!   `batch_size / rows` of that bank) and contributes its unweighted update with weight 1.
//! - Institution level: each bank trains without DP, clips its whole update Δ to C, rounds it
//!   randomly onto the grid γ = C/2¹⁶ and adds its share of discrete Gaussian noise, variance
//!   (σC/γ)²/(K − dropout_allowance), in the 2³² ring of secure aggregation; the coordinator
//!   centre-lifts the ring sum and scales it back. The sampler is Canonne, Kamath & Steinke's
//!   (2020) rejection from a discrete Laplace, in floating point — a bench stand-in for the
//!   banks' own noise module; quantisation error (≤ γ per coordinate) is negligible beside the noise.
//!
//! The server step is core's [`ServerOptimizer`] on the sum with total weight K, as for any
//! DP training sum (`[Δ…, 1, 0]` per bank).

use std::sync::Arc;

use confide_core::job::JobSpec;
use confide_core::model::ModelParams;
use confide_core::spend::{self, Plan};
use confide_core::strategy::ServerOptimizer;
use confide_datasets::{DatasetSchema, Encoded, Preprocessing, StatsSensitivity, clipped_local_stats};
use confide_worker::ml::dp_sgd::{DpSgd, train_local_dp};
use confide_worker::ml::{self, Device, TrainConfig};
use confide_worker::tasks::Split;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Geometric, StandardNormal};

use crate::comparison::{CompareError, Institution, Prep, Scores, add_into, pooled_eval};

/// How the banks protect their training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No DP: plain local training, exact statistics.
    Off,
    /// Record-level DP-SGD at every bank.
    Record,
    /// Institution-level clipping and distributed discrete Gaussian noise.
    Institution,
}

impl Mode {
    /// `non-DP`, `record level`, `institution level`.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Off => "non-DP",
            Mode::Record => "record level",
            Mode::Institution => "institution level",
        }
    }

    fn toml_name(self) -> Option<&'static str> {
        match self {
            Mode::Off => None,
            Mode::Record => Some("record"),
            Mode::Institution => Some("institution"),
        }
    }
}

/// The statistics noise multiplier of a job targeting `epsilon`: the job default (4) where it
/// leaves room for training, scaled up below ε = 4 — at δ ≈ 1e-5 the default statistics alone
/// spend ε ≈ 1.1, so targets of 0.5 and 1 would be unreachable with it.
pub fn statistics_noise_for(epsilon: f64) -> f64 {
    4.0 * (4.0 / epsilon).max(1.0)
}

/// What a DP job needs besides its model and training tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Privacy {
    pub mode: Mode,
    /// Target ε (ignored for [`Mode::Off`]).
    pub epsilon: f64,
    pub delta: f64,
    /// C: per-row gradient bound (record) or per-bank update bound (institution).
    pub clip_norm: f64,
    /// Record level: the smallest bank's training rows.
    pub planned_rows: u64,
    /// Banks in the federation (institution level: `selection.min_workers`).
    pub banks: usize,
}

/// The job of `model_toml` / `training_toml` on `dataset` with seed `seed` and, unless the mode
/// is [`Mode::Off`], a `[privacy]` section whose σ is solved by core's planner; with its plan.
pub fn job(
    dataset: &str,
    seed: u64,
    model_toml: &str,
    training_toml: &str,
    privacy: &Privacy,
) -> Result<(JobSpec, Option<Plan>), CompareError> {
    let mut text = format!("name = \"dp-bench\"\ndataset = \"{dataset}\"\nseed = {seed}\n[model]\n{model_toml}\n[training]\n{training_toml}\n");
    let Some(mode) = privacy.mode.toml_name() else {
        return Ok((JobSpec::from_toml(&text)?, None));
    };
    let rounds = JobSpec::from_toml(&text)?.training.rounds;
    text.push_str(&format!(
        "[selection]\nmin_workers = {}\n[evaluation]\nevery = {rounds}\n[privacy]\nmode = \"{mode}\"\ntarget_epsilon = {}\ndelta = {:e}\nclip_norm = {}\nplanned_rows = {}\nstatistics_noise_multiplier = {}\n",
        privacy.banks,
        privacy.epsilon,
        privacy.delta,
        privacy.clip_norm,
        privacy.planned_rows,
        statistics_noise_for(privacy.epsilon),
    ));
    let mut spec = JobSpec::from_toml(&text)?;
    let plan = spend::resolve(&mut spec)?;
    Ok((spec, Some(plan)))
}

/// The federation's preprocessing: exact summed statistics without DP, else each bank's clipped
/// statistics plus its own Gaussian noise of multiplier `job`'s `statistics_noise_multiplier`.
pub fn preprocessing(schema: &DatasetSchema, banks: &[Institution], job: &JobSpec) -> Result<Prep, CompareError> {
    let mut sum = Vec::new();
    let Some(privacy) = &job.privacy else {
        for bank in banks {
            add_into(&mut sum, &bank.data.stats()?);
        }
        return Prep::from_stats(schema, &sum);
    };
    let sensitivity = StatsSensitivity::of(schema)?;
    let spread = privacy.statistics_noise_multiplier * (sensitivity.slots_per_row as f64).sqrt();
    for (k, bank) in banks.iter().enumerate() {
        let mut rng = ChaCha20Rng::seed_from_u64(job.seed ^ 0x5747_4154_u64 ^ (k as u64).wrapping_mul(0x9E37_79B9));
        let mut stats = clipped_local_stats(bank.data.table(Split::Train)?.as_ref(), schema)?;
        for (v, m) in stats.iter_mut().zip(&sensitivity.per_slot) {
            *v += rng.sample::<f64, _>(StandardNormal) * spread * m;
        }
        add_into(&mut sum, &stats);
    }
    Prep::keyed(Preprocessing::from_noisy_aggregate(schema, &sum)?)
}

/// Fixed-point grid of the institution-level noise, in units of C.
const GRID_BITS: i32 = 16;

/// Trains `job` federated over `banks` (training splits encoded with `prep`) in `mode`; returns
/// the final global model.
pub fn train(job: &JobSpec, prep: &Prep, banks: &[Institution], mode: Mode) -> Result<ModelParams, CompareError> {
    let train: Vec<Arc<Encoded>> =
        banks.iter().map(|b| b.data.encoded(Split::Train, &prep.prep, &prep.key)).collect::<Result<_, _>>()?;
    train_encoded(job, prep.prep.input_dim(), &train, mode)
}

/// [`train`] on already encoded training splits of width `dim`.
pub fn train_encoded(job: &JobSpec, dim: usize, train: &[Arc<Encoded>], mode: Mode) -> Result<ModelParams, CompareError> {
    let spec = &job.model;
    let layout = spec.layout(dim);
    let mut global = ModelParams::init(layout.clone(), job.seed);
    let mut server = ServerOptimizer::new(job.strategy.clone(), layout.len());
    let privacy = match (mode, &job.privacy) {
        (Mode::Off, _) => None,
        (_, Some(p)) => Some(p),
        (_, None) => return Err(CompareError::Invalid(format!("{} training needs a [privacy] section", mode.label()))),
    };
    for round in 1..=job.training.rounds {
        let mut sum = vec![0.0; layout.len()];
        let mut ring = vec![0u32; layout.len()];
        for (k, data) in train.iter().enumerate() {
            let local = job.local_training(round, k as u64);
            let cfg = TrainConfig::from(&local);
            let trained = match (mode, privacy) {
                (Mode::Record, Some(p)) => {
                    let dp = DpSgd {
                        clip_norm: p.clip_norm,
                        noise_multiplier: p.sigma(),
                        sampling_rate: spend::sampling_rate(job.training.batch_size, data.rows as u64),
                    };
                    train_local_dp(spec, &global, data, &cfg, &dp, Device::Cpu)?
                }
                _ => ml::train_local(spec, &global, data, &cfg, Device::Cpu)?,
            };
            let delta: Vec<f64> = trained.params.values.iter().zip(&global.values).map(|(l, g)| f64::from(l - g)).collect();
            match (mode, privacy) {
                (Mode::Institution, Some(p)) => {
                    let counted = train.len().saturating_sub(p.dropout_allowance as usize).max(1);
                    let mut rng = ChaCha20Rng::seed_from_u64(local.seed ^ 0x4e4f_4953_45);
                    noisy_share(&delta, p.clip_norm, p.sigma() / (counted as f64).sqrt(), &mut ring, &mut rng)?;
                }
                _ => add_into(&mut sum, &delta),
            }
        }
        if mode == Mode::Institution {
            let gamma = privacy.map_or(1.0, |p| p.clip_norm) * 2f64.powi(-GRID_BITS);
            // Centre-lift the ring sum: values above 2³¹ are negative.
            sum = ring.iter().map(|&v| f64::from(v as i32) * gamma).collect();
        }
        server.step(&mut global, &sum, train.len() as f64)?;
    }
    Ok(global)
}

/// One bank's institution-level share: Δ clipped to L2 norm `clip`, randomly rounded onto the grid
/// γ = clip/2¹⁶, plus discrete Gaussian noise of standard deviation `share_sigma`·clip (in grid
/// units), added into the 2³² ring `ring`.
fn noisy_share(delta: &[f64], clip: f64, share_sigma: f64, ring: &mut [u32], rng: &mut ChaCha20Rng) -> Result<(), CompareError> {
    let norm = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
    let scale = if norm > clip { clip / norm } else { 1.0 };
    let grid = 2f64.powi(GRID_BITS) / clip;
    let sampler = DiscreteGaussian::new(share_sigma * clip * grid)?;
    for (slot, d) in ring.iter_mut().zip(delta) {
        let x = d * scale * grid;
        let down = x.floor();
        let q = if rng.random::<f64>() < x - down { down + 1.0 } else { down } as i64;
        let v = q + sampler.sample(rng);
        // Two's complement: adding an i64 mod 2³² is adding its low 32 bits.
        *slot = slot.wrapping_add(v as u32);
    }
    Ok(())
}

/// The discrete Gaussian on ℤ (Canonne, Kamath & Steinke 2020, Algorithm 3): a discrete Laplace
/// proposal of scale t = ⌊σ⌋ + 1, accepted with probability exp(−(|y| − σ²/t)²/(2σ²)).
struct DiscreteGaussian {
    sigma: f64,
    t: f64,
    geometric: Geometric,
}

impl DiscreteGaussian {
    fn new(sigma: f64) -> Result<Self, CompareError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(CompareError::Invalid(format!("discrete Gaussian σ = {sigma}")));
        }
        let t = sigma.floor() + 1.0;
        let geometric = Geometric::new(1.0 - (-1.0 / t).exp()).map_err(|e| CompareError::Invalid(format!("discrete Laplace: {e}")))?;
        Ok(Self { sigma, t, geometric })
    }

    fn sample(&self, rng: &mut ChaCha20Rng) -> i64 {
        loop {
            // The difference of two geometric counts is a discrete Laplace of scale t.
            let y = self.geometric.sample(rng) as i64 - self.geometric.sample(rng) as i64;
            let c = y.unsigned_abs() as f64 - self.sigma * self.sigma / self.t;
            if rng.random::<f64>() < (-c * c / (2.0 * self.sigma * self.sigma)).exp() {
                return y;
            }
        }
    }
}

/// The pooled-test metrics of `params`.
pub fn pooled_scores(job: &JobSpec, params: &ModelParams, prep: &Prep, banks: &[Institution]) -> Result<Scores, CompareError> {
    Scores::of(&pooled_eval(&job.model, params, prep, banks)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_gaussian_has_the_requested_spread_and_no_bias() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for sigma in [0.7, 3.0, 250.0] {
            let g = DiscreteGaussian::new(sigma).expect("sampler");
            let n = 40_000;
            let draws: Vec<f64> = (0..n).map(|_| g.sample(&mut rng) as f64).collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!(mean.abs() < 4.0 * sigma / (n as f64).sqrt(), "σ {sigma}: mean {mean}");
            // A discrete Gaussian of parameter σ ≥ 0.7 has a standard deviation within 1 % of σ.
            assert!((sd / sigma - 1.0).abs() < 0.03, "σ {sigma}: sd {sd}");
        }
    }

    #[test]
    fn a_share_without_noise_is_the_clipped_update_on_the_grid_even_when_negative() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let delta = [3.0, -4.0]; // norm 5, clipped to 1: (0.6, -0.8)
        let mut ring = vec![0u32; 2];
        // σ so small the discrete Gaussian is 0 with overwhelming probability.
        noisy_share(&delta, 1.0, 1e-9, &mut ring, &mut rng).expect("share");
        noisy_share(&delta, 1.0, 1e-9, &mut ring, &mut rng).expect("share");
        let back: Vec<f64> = ring.iter().map(|&v| f64::from(v as i32) * 2f64.powi(-GRID_BITS)).collect();
        assert!((back[0] - 1.2).abs() < 1e-4 && (back[1] + 1.6).abs() < 1e-4, "{back:?}");
    }
}
