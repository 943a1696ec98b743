//! The differential-privacy accountant: Rényi DP (RDP) of the Poisson-subsampled Gaussian
//! mechanism (Mironov, Talwar & Zhang, "Rényi Differential Privacy of the Sampled Gaussian
//! Mechanism", 2019), composition over steps and rounds, and conversion to (ε, δ) with the
//! improved bound of Balle et al. 2020 (Prop. 12) / Asoodeh et al. 2021.
//!
//! Pure arithmetic, shared by everyone who must agree on a privacy spend without trusting each
//! other's numbers: the bank computes its own spend from a job's public parameters, the
//! coordinator plans the noise, the CLI prints both. The orders are those of Google's
//! `dp-accounting` (its `DEFAULT_RDP_ORDERS`), and `core/tests/privacy_reference.rs` checks the
//! results against that library's values over a grid of parameters.

/// RDP orders α at which every guarantee is tracked: 1.1 to 10.9 by 0.1, 11 to 63, and
/// 128, 256, 512, 1024 (the same as `dp-accounting`'s defaults).
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Why privacy parameters were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// The sampling rate is not in [0, 1].
    #[error("sampling rate must be in [0, 1], got {0}")]
    SamplingRate(f64),
    /// The noise multiplier is negative or not finite.
    #[error("noise multiplier must be a finite number ≥ 0, got {0}")]
    NoiseMultiplier(f64),
    /// δ is not in (0, 1).
    #[error("delta must be in (0, 1), got {0}")]
    Delta(f64),
    /// ε is not positive and finite.
    #[error("epsilon must be a finite number > 0, got {0}")]
    Epsilon(f64),
    /// No noise multiplier up to the search's limit reaches the target.
    #[error("no noise multiplier up to {max_sigma} reaches epsilon {epsilon} at delta {delta} in {steps} steps at sampling rate {q}")]
    Unreachable {
        /// Target ε.
        epsilon: f64,
        /// δ.
        delta: f64,
        /// Steps planned.
        steps: u64,
        /// Sampling rate.
        q: f64,
        /// The largest noise multiplier tried.
        max_sigma: f64,
    },
}

/// One application of a mechanism whose privacy the accountant composes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mechanism {
    /// The Gaussian mechanism on a Poisson-subsampled batch: each record is in the batch with
    /// probability `sampling_rate`; noise of standard deviation `noise_multiplier` × the
    /// clipping norm is added to the sum.
    SubsampledGaussian {
        /// Poisson sampling probability q.
        sampling_rate: f64,
        /// σ / C.
        noise_multiplier: f64,
    },
    /// A mechanism satisfying ρ-zero-concentrated DP (RDP α·ρ at every order), e.g. the
    /// distributed discrete Gaussian's bound.
    Zcdp {
        /// ρ.
        rho: f64,
    },
}

impl Mechanism {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        match *self {
            Mechanism::SubsampledGaussian { sampling_rate, noise_multiplier } => {
                if !(0.0..=1.0).contains(&sampling_rate) {
                    return Err(PrivacyError::SamplingRate(sampling_rate));
                }
                if !noise_multiplier.is_finite() || noise_multiplier < 0.0 {
                    return Err(PrivacyError::NoiseMultiplier(noise_multiplier));
                }
                Ok(())
            }
            Mechanism::Zcdp { rho } if !rho.is_finite() || rho < 0.0 => Err(PrivacyError::NoiseMultiplier(rho)),
            Mechanism::Zcdp { .. } => Ok(()),
        }
    }

    /// The mechanism's RDP at order `alpha` (> 1); may be infinite.
    pub fn rdp(&self, alpha: f64) -> f64 {
        match *self {
            Mechanism::SubsampledGaussian { sampling_rate: q, noise_multiplier: sigma } => {
                if q == 0.0 {
                    0.0
                } else if alpha.is_infinite() || sigma == 0.0 {
                    f64::INFINITY
                } else if q == 1.0 {
                    alpha / (2.0 * sigma * sigma)
                } else {
                    log_a(q, sigma, alpha) / (alpha - 1.0)
                }
            }
            Mechanism::Zcdp { rho } => alpha * rho,
        }
    }
}

/// Accumulated RDP at each order: composition is addition. Serialises as its orders and
/// values, so a ledger can persist it and compose more later.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for Accountant {
    fn default() -> Self {
        Self::new(default_orders())
    }
}

impl Accountant {
    /// An accountant with nothing spent, tracking `orders` (each > 1).
    pub fn new(orders: Vec<f64>) -> Self {
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// Adds `count` applications of `mechanism`.
    pub fn compose(&mut self, mechanism: Mechanism, count: u64) -> Result<(), PrivacyError> {
        mechanism.validate()?;
        if count == 0 {
            return Ok(());
        }
        for (order, total) in self.orders.iter().zip(self.rdp.iter_mut()) {
            *total += count as f64 * mechanism.rdp(*order);
        }
        Ok(())
    }

    /// Adds everything another accountant (over the same orders) has spent.
    pub fn absorb(&mut self, other: &Accountant) {
        debug_assert_eq!(self.orders, other.orders);
        for (total, more) in self.rdp.iter_mut().zip(&other.rdp) {
            *total += more;
        }
    }

    /// The smallest ε (with the order that gives it) such that everything composed so far is
    /// (ε, δ)-DP.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(PrivacyError::Delta(delta));
        }
        let mut best = (f64::INFINITY, 0.0);
        for (&alpha, &r) in self.orders.iter().zip(&self.rdp) {
            let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
                // Numerical noise, or small enough that δ ≥ sqrt(1 − exp(−KL)) already holds.
                0.0
            } else if alpha > 1.01 {
                r + (-1.0 / alpha).ln_1p() - (delta * alpha).ln() / (alpha - 1.0)
            } else {
                f64::INFINITY
            };
            if eps < best.0 {
                best = (eps, alpha);
            }
        }
        Ok((best.0.max(0.0), best.1))
    }
}

/// ε after `steps` steps of DP-SGD (Poisson sampling at rate `q`, noise multiplier `sigma`).
pub fn dp_sgd_epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    let mut acc = Accountant::default();
    acc.compose(Mechanism::SubsampledGaussian { sampling_rate: q, noise_multiplier: sigma }, steps)?;
    Ok(acc.epsilon(delta)?.0)
}

/// Largest noise multiplier a search tries.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e4;

/// The smallest noise multiplier σ in [1e-3, [`MAX_NOISE_MULTIPLIER`]] (to a relative precision
/// of 1e-4) with `eps_at(σ) ≤ target`, for an ε that falls as σ grows (a bisection on log σ);
/// None when even the largest misses the target.
pub fn smallest_sigma<E>(target: f64, eps_at: impl Fn(f64) -> Result<f64, E>) -> Result<Option<f64>, E> {
    if eps_at(MAX_NOISE_MULTIPLIER)? > target {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1e-3_f64, MAX_NOISE_MULTIPLIER);
    if eps_at(lo)? <= target {
        return Ok(Some(lo));
    }
    while hi / lo > 1.0 + 1e-4 {
        let mid = (lo * hi).sqrt();
        if eps_at(mid)? <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// The smallest noise multiplier (to a relative precision of 1e-4) for which `steps` steps at
/// sampling rate `q` stay within (`epsilon`, `delta`): what a job plans before it runs.
pub fn noise_for_epsilon(epsilon: f64, delta: f64, q: f64, steps: u64) -> Result<f64, PrivacyError> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(PrivacyError::Epsilon(epsilon));
    }
    smallest_sigma(epsilon, |sigma| dp_sgd_epsilon(q, sigma, steps, delta))?
        .ok_or(PrivacyError::Unreachable { epsilon, delta, steps, q, max_sigma: MAX_NOISE_MULTIPLIER })
}

/// log(a + b) from log a and log b.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY { b } else { (a - b).exp().ln_1p() + b }
}

/// log C(n, k) for real n, k.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// log erfc(x), accurate in the far tail where erfc underflows.
fn log_erfc(x: f64) -> f64 {
    let r = libm::erfc(x);
    if r > 1e-300 {
        return r.ln();
    }
    // Laurent series at infinity: erfc(x) ~ exp(-x² - 0.5/x² + 0.625/x⁴ …) / (x √π).
    -std::f64::consts::PI.ln() / 2.0 - x.ln() - x * x - 0.5 * x.powi(-2) + 0.625 * x.powi(-4) - 37.0 / 24.0 * x.powi(-6)
        + 353.0 / 64.0 * x.powi(-8)
}

/// log A_α of the sampled Gaussian mechanism (0 < q < 1), whose RDP at order α is
/// log A_α / (α − 1).
fn log_a(q: f64, sigma: f64, alpha: f64) -> f64 {
    if alpha.fract() == 0.0 { log_a_int(q, sigma, alpha as u64) } else { log_a_frac(q, sigma, alpha) }
}

/// Integer α: a finite binomial sum.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let log1mq = (-q).ln_1p();
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let i_f = i as f64;
        let log_coef = log_comb(alpha as f64, i_f) + i_f * q.ln() + (alpha - i) as f64 * log1mq;
        log_a = log_add(log_a, log_coef + (i_f * i_f - i_f) / (2.0 * sigma * sigma));
    }
    log_a
}

/// Fractional α: the two-sided series of Mironov et al. (Sec. 3.3), summed until both halves
/// decrease and are negligible; a series that has not converged after 1000 terms makes the
/// order unusable (infinite), as in `dp-accounting`.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    const MAX_TERMS: u32 = 1000;
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let sqrt2 = std::f64::consts::SQRT_2;
    for i in 0..MAX_TERMS {
        let i = f64::from(i);
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * log1mq;
        let log_t1 = log_coef + j * q.ln() + i * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (sqrt2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (sqrt2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batch_gaussian_has_the_closed_form() {
        // q = 1: RDP α/(2σ²) at every order.
        let m = Mechanism::SubsampledGaussian { sampling_rate: 1.0, noise_multiplier: 2.0 };
        assert!((m.rdp(3.0) - 3.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn subsampling_amplifies_privacy() {
        let full = dp_sgd_epsilon(1.0, 1.0, 10, 1e-5).expect("valid");
        let sampled = dp_sgd_epsilon(0.01, 1.0, 10, 1e-5).expect("valid");
        assert!(sampled < full / 10.0, "{sampled} vs {full}");
    }

    #[test]
    fn integer_and_fractional_series_agree_near_an_integer_order() {
        let (q, sigma) = (0.05, 1.3);
        let at_int = log_a_int(q, sigma, 4) / 3.0;
        let near = log_a_frac(q, sigma, 4.0 + 1e-9) / (3.0 + 1e-9);
        assert!((at_int - near).abs() < 1e-6 * at_int.abs().max(1.0), "{at_int} vs {near}");
    }

    #[test]
    fn the_planned_noise_reaches_the_target_and_no_less_does() {
        let (eps, delta, q, steps) = (2.0, 1e-5, 0.01, 2000);
        let sigma = noise_for_epsilon(eps, delta, q, steps).expect("reachable");
        assert!(dp_sgd_epsilon(q, sigma, steps, delta).expect("valid") <= eps);
        assert!(dp_sgd_epsilon(q, sigma * 0.99, steps, delta).expect("valid") > eps);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// More noise never costs more privacy; more steps or a larger sampling rate never
        /// cost less.
        #[test]
        fn epsilon_is_monotone(q in 0.001f64..0.5, sigma in 0.5f64..8.0, steps in 1u64..5000) {
            let delta = 1e-5;
            let eps = dp_sgd_epsilon(q, sigma, steps, delta).expect("valid");
            proptest::prop_assert!(dp_sgd_epsilon(q, sigma * 1.1, steps, delta).expect("valid") <= eps + 1e-12);
            proptest::prop_assert!(dp_sgd_epsilon(q, sigma, steps * 2, delta).expect("valid") >= eps - 1e-12);
            proptest::prop_assert!(dp_sgd_epsilon((q * 1.5).min(1.0), sigma, steps, delta).expect("valid") >= eps - 1e-12);
        }
    }

    #[test]
    fn invalid_parameters_are_refused_by_name() {
        assert_eq!(dp_sgd_epsilon(1.5, 1.0, 1, 1e-5), Err(PrivacyError::SamplingRate(1.5)));
        assert_eq!(dp_sgd_epsilon(0.1, -1.0, 1, 1e-5), Err(PrivacyError::NoiseMultiplier(-1.0)));
        assert_eq!(dp_sgd_epsilon(0.1, 1.0, 1, 1.0), Err(PrivacyError::Delta(1.0)));
        assert_eq!(noise_for_epsilon(0.0, 1e-5, 0.1, 1), Err(PrivacyError::Epsilon(0.0)));
    }
}
