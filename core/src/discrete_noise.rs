//! Institution-level distributed DP under secure aggregation: the distributed discrete Gaussian
//! of Kairouz, Liu & Steinke (ICML 2021, "KLS21"). Pure: no I/O, the randomness is passed in.
//!
//! Each bank clips its update Δ to L2 norm C, divides by the grid γ (a power of two, so the
//! division is exact), rounds every coordinate to a neighbouring integer at random (unbiased),
//! retrying until the rounded vector's norm is within Δ₂ ([`rounded_norm_bound`]: conditional
//! rounding), and adds an independent discrete Gaussian N_Z(0, s) to every coordinate, in
//! integer units of γ. The masked sum the coordinator unmasks carries the noise of every bank
//! in it; the privacy bound counts only `k = n − dropout_allowance` of them ([`NoisePlan`]),
//! since up to `dropout_allowance` banks may drop out or collude (and subtract their own noise).
//!
//! ## The bound ([`NoisePlan::for_grid`])
//! KLS21 Theorem 1: the sum of k independent N_Z(0, s)^d noise vectors added to inputs whose
//! change has L2 norm at most Δ₂ is ½ε²-zCDP with
//! ε = min{ √(Δ₂²/(k·s) + 2τd), Δ₂/√(k·s) + τ√d },  τ = 10·Σ_{j=1}^{k−1} exp(−2π²·s·j/(j+1)).
//! The job's noise multiplier σ promises ρ = 1/(2σ²) per round at institution level (one
//! bank's whole update of norm ≤ C added or removed, [`crate::spend`]); each bank picks the
//! smallest integer variance s with ½ε² ≤ ρ, which inflates the noise over the continuous
//! σ²C²/(kγ²) for the rounding (Δ₂ > C/γ) and the discreteness (τ). A record changes a bank's
//! update by at most 2C (both in the ball), so record-level ρ is at most 4× (Δ₂ → 2Δ₂).
//!
//! ## The ring ([`NoisePlan::check_ring`])
//! N_Z(0, s) is s-sub-Gaussian (Canonne, Kamath & Steinke 2020, "CKS20", Cor. 9):
//! P(|Z| ≥ T) ≤ 2·exp(−T²/(2s)). With T = √(2s·ln(2·d·n·2^40)), the probability that any of
//! the d noise coordinates of any of the n banks exceeds T is below 2^-40. A bank's coordinate
//! is then at most B = Δ₂ + T in grid units (every coordinate is bounded by the vector's norm);
//! the encoding's clip covers B, and the session's headroom check (n·⌈clip·scale⌉ < 2^(b−1),
//! `confide_secagg`) makes the sum of n such values unable to wrap. A bank whose noise falls
//! outside B (probability < 2^-40 over all banks) refuses to send rather than clamp it
//! ([`NoiseError::NoiseTail`]), so the encoder never alters the noise; the values it hands on
//! are integers times γ below 2^52, which the fixed-point encoder represents exactly.
//!
//! ## Exactness of the sampler ([`sample_discrete_gaussian`])
//! CKS20 Algorithm 3 (rejection from a discrete Laplace, their Algorithm 2), with the variance
//! an integer s (the per-bank variance is rounded up to one anyway). Every Bernoulli(exp(−x))
//! has a rational x (U/t, 1, or (|Y|·t − s)²/(2s·t²)) and is computed with CKS20 Algorithm 1
//! in exact integer arithmetic (u128, the last one with a floor estimated in f64 and corrected
//! exactly), from uniform integers drawn by rejection. So the output is exactly N_Z(0, s) given
//! a uniform generator, with two cut-offs: a candidate whose acceptance probability is below
//! exp(−10^12) is rejected outright, and a discrete-Laplace draw that overflows i64 is redrawn;
//! both events have probability far below 2^-1000. No floating-point exp is evaluated.

use rand::RngCore;

/// The probability bound (as a power of two) that any coordinate of the sum would wrap, or that
/// any bank's noise leaves the range the encoding covers.
pub const WRAP_LOG2: i32 = -40;
/// Largest per-bank variance (grid units²) [`sample_discrete_gaussian`] takes: σ up to 10^9.
pub const MAX_VARIANCE: u64 = 1_000_000_000_000_000_000;
/// β of the conditional rounding: a rounding try is kept with probability at least 1 − β.
pub const ROUNDING_BETA: f64 = 0.606_530_659_712_633_4; // exp(−1/2), as in KLS21's experiments
/// Rounding tries before giving up (each succeeds with probability ≥ 1 − β ≈ 0.39).
pub const MAX_ROUNDING_TRIES: usize = 10_000;
/// Largest grid value (in units of γ) a bank's coordinate may reach: keeps `m·γ` exact in f64.
pub const MAX_UNITS: f64 = 4_503_599_627_370_496.0; // 2^52

/// Why a noise plan or a noisy update could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// A parameter is not a positive finite number (or an impossible count).
    #[error("{field}: {reason}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No bank's noise would count: `participants ≤ dropout_allowance`.
    #[error("{participants} participants with a dropout allowance of {allowance}: no bank's noise would count")]
    NoNoiseShares {
        /// Participants of the round.
        participants: usize,
        /// The job's dropout allowance.
        allowance: u32,
    },
    /// The per-bank variance needed exceeds [`MAX_VARIANCE`].
    #[error("the per-bank noise variance {variance:e} (grid units) exceeds the sampler's 1e18; use a coarser grid")]
    VarianceTooLarge {
        /// The variance needed.
        variance: f64,
    },
    /// The modulus cannot hold the noisy sum without wrapping (or a value would not be exact).
    #[error(
        "the {bits}-bit ring cannot hold the noisy sum of {participants} banks: each bank's coordinate reaches {per_bank:e} grid units \
         (clip {clip_norm} over the grid {gamma:e} plus the noise tail at 2^-40), and {participants}·that must stay below 2^{}; \
         raise secure_aggregation.modulus_bits, or lower the participants or privacy.noise_multiplier",
        .bits - 1
    )]
    RingTooSmall {
        /// Modulus bits.
        bits: u32,
        /// Participants.
        participants: usize,
        /// The per-bank bound at the finest grid tried.
        per_bank: f64,
        /// C.
        clip_norm: f64,
        /// The grid.
        gamma: f64,
    },
    /// The update's length differs from the plan's dimension.
    #[error("the update has {got} values, the plan is for {want}")]
    Dimension {
        /// Values given.
        got: usize,
        /// The plan's dimension.
        want: usize,
    },
    /// A value is NaN or infinite.
    #[error("value {index} of the update is not finite")]
    NonFinite {
        /// Its index.
        index: usize,
    },
    /// Conditional rounding did not succeed in [`MAX_ROUNDING_TRIES`] tries.
    #[error("randomized rounding stayed above the norm bound in {MAX_ROUNDING_TRIES} tries")]
    Rounding,
    /// A noise draw fell outside the range the encoding covers (probability < 2^-40).
    #[error("a noise draw fell outside the encoding's range (probability below 2^-40); nothing was sent")]
    NoiseTail,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NoiseError {
    NoiseError::Invalid { field, reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// Exact sampling (CKS20 Algorithms 1–3)
// ---------------------------------------------------------------------------------------------

/// A uniform integer in `[0, n)` (n > 0), by rejection from the smallest covering power of two.
fn uniform_below(n: u128, rng: &mut (impl RngCore + ?Sized)) -> u128 {
    debug_assert!(n > 0);
    if n <= 1 {
        return 0;
    }
    let bits = 128 - (n - 1).leading_zeros();
    let mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    loop {
        let x = if bits <= 64 {
            u128::from(rng.next_u64())
        } else {
            (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
        };
        let x = x & mask;
        if x < n {
            return x;
        }
    }
}

/// Bernoulli(num/den), exactly (0 ≤ num ≤ den, den > 0).
fn bernoulli(num: u128, den: u128, rng: &mut (impl RngCore + ?Sized)) -> bool {
    uniform_below(den, rng) < num
}

/// Bernoulli(exp(−r/den)) for 0 ≤ r ≤ den (CKS20 Algorithm 1, the γ ∈ [0, 1] case): the K of
/// the first failure of Bernoulli(γ/K) is odd with probability exp(−γ). Bernoulli(γ/K) is drawn
/// as Bernoulli(γ)·Bernoulli(1/K), which avoids the product den·K.
fn bernoulli_exp_fraction(r: u128, den: u128, rng: &mut (impl RngCore + ?Sized)) -> bool {
    let mut k: u128 = 1;
    loop {
        if !(bernoulli(r, den, rng) && bernoulli(1, k, rng)) {
            break;
        }
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−(q + r/den))) (r < den): q independent Bernoulli(exp(−1)) and one for the
/// fractional part must all succeed.
fn bernoulli_exp(q: u128, r: u128, den: u128, rng: &mut (impl RngCore + ?Sized)) -> bool {
    for _ in 0..q {
        if !bernoulli_exp_fraction(1, 1, rng) {
            return false;
        }
    }
    bernoulli_exp_fraction(r, den, rng)
}

/// Discrete Laplace with scale `t` (P(x) ∝ exp(−|x|/t)), CKS20 Algorithm 2 with s = 1.
pub fn sample_discrete_laplace(t: u64, rng: &mut (impl RngCore + ?Sized)) -> i64 {
    let t = t.max(1);
    loop {
        let u = uniform_below(u128::from(t), rng);
        if !bernoulli_exp_fraction(u, u128::from(t), rng) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_fraction(1, 1, rng) {
            v += 1;
        }
        let Some(x) = v.checked_mul(t).and_then(|tv| tv.checked_add(u as u64)).and_then(|x| i64::try_from(x).ok()) else {
            continue; // overflow: probability below exp(−2^63/t)
        };
        let negative = rng.next_u64() & 1 == 1;
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

/// One draw of the discrete Gaussian N_Z(0, variance): P(x) ∝ exp(−x²/(2·variance)) on the
/// integers (CKS20 Algorithm 3; see the module doc on exactness). `variance` in 1..=[`MAX_VARIANCE`]
/// (values outside are clamped into it).
pub fn sample_discrete_gaussian(variance: u64, rng: &mut (impl RngCore + ?Sized)) -> i64 {
    let s = variance.clamp(1, MAX_VARIANCE);
    let t = s.isqrt() + 1; // ⌊σ⌋ + 1
    let (s128, t128) = (u128::from(s), u128::from(t));
    // exp(−(|Y| − s/t)²/(2s)) = exp(−a²/den) with a = | |Y|·t − s |, den = 2·s·t² (< 2^122).
    let den = 2 * s128 * t128 * t128;
    loop {
        let y = sample_discrete_laplace(t, rng);
        let a = (u128::from(y.unsigned_abs()) * t128).abs_diff(s128);
        let estimate = (a as f64) * (a as f64) / den as f64;
        if estimate >= 1e12 {
            continue; // acceptance probability below exp(−10^12)
        }
        // q = ⌊a²/den⌋ and r = a² − q·den exactly, from the f64 estimate: the difference is
        // computed modulo 2^128, which is exact while it stays below 2^127 in magnitude.
        let mut q = estimate.floor() as u128;
        let mut r = a.wrapping_mul(a).wrapping_sub(q.wrapping_mul(den)) as i128;
        let den_i = den as i128;
        while r < 0 {
            q -= 1;
            r += den_i;
        }
        while r >= den_i {
            q += 1;
            r -= den_i;
        }
        if bernoulli_exp(q, r as u128, den, rng) {
            return y;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clipping and conditional randomized rounding (KLS21 §4)
// ---------------------------------------------------------------------------------------------

/// Scales `v` down to L2 norm at most `c` (unchanged when already within).
pub fn clip_l2(v: &mut [f64], c: f64) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > c && norm > 0.0 {
        let f = c / norm;
        v.iter_mut().for_each(|x| *x *= f);
    }
}

/// KLS21's bound on the norm of a randomized rounding of a vector of norm ≤ `c` (grid units) in
/// `d` dimensions, kept with probability at least 1 − β:
/// Δ₂² = min{ c² + d/4 + √(2 ln(1/β))·(c + √d/2), (c + √d)² }.
pub fn rounded_norm_bound(c: f64, d: usize, beta: f64) -> f64 {
    let d = d as f64;
    let a = c * c + d / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (c + d.sqrt() / 2.0);
    let b = (c + d.sqrt()).powi(2);
    a.min(b).sqrt()
}

/// Rounds each coordinate of `x` (grid units) to ⌊x⌋ or ⌊x⌋ + 1 with the probability that makes
/// it unbiased, retrying until the squared norm is at most ⌊bound²⌋ (conditional rounding).
pub fn conditional_round(x: &[f64], bound: f64, rng: &mut (impl RngCore + ?Sized)) -> Result<Vec<i64>, NoiseError> {
    if let Some(index) = x.iter().position(|v| !v.is_finite() || v.abs() >= MAX_UNITS) {
        return Err(NoiseError::NonFinite { index });
    }
    let limit = (bound * bound).floor() as i128;
    let mut out = vec![0i64; x.len()];
    for _ in 0..MAX_ROUNDING_TRIES {
        let mut norm2: i128 = 0;
        for (o, &v) in out.iter_mut().zip(x) {
            let floor = v.floor();
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let m = if u < v - floor { floor + 1.0 } else { floor } as i64;
            *o = m;
            norm2 += i128::from(m) * i128::from(m);
        }
        if norm2 <= limit {
            return Ok(out);
        }
    }
    Err(NoiseError::Rounding)
}

// ---------------------------------------------------------------------------------------------
// The per-bank noise scale and the ring
// ---------------------------------------------------------------------------------------------

/// KLS21's τ for `k` noise shares of variance `s`: 10·Σ_{j=1}^{k−1} exp(−2π²·s·j/(j+1)). The
/// terms decrease in j; past 1000 terms the rest is bounded by the last one each (an upper
/// bound, so the privacy bound stays valid).
pub fn tau(s: f64, k: usize) -> f64 {
    let term = |j: usize| (-2.0 * std::f64::consts::PI.powi(2) * s * j as f64 / (j as f64 + 1.0)).exp();
    let exact = k.saturating_sub(1).min(1000);
    let mut sum: f64 = (1..=exact).map(term).sum();
    if k.saturating_sub(1) > exact {
        sum += (k - 1 - exact) as f64 * term(exact);
    }
    10.0 * sum
}

/// KLS21 Theorem 1's ε (the mechanism is ½ε²-zCDP) for inputs moving by at most `delta2` (grid
/// units), `k` noise shares of variance `s` each, in `d` dimensions.
pub fn kls_epsilon(delta2: f64, s: f64, k: usize, d: usize) -> f64 {
    let t = tau(s, k);
    let d = d as f64;
    let base = delta2 * delta2 / (k as f64 * s);
    (base + 2.0 * t * d).sqrt().min(base.sqrt() + t * d.sqrt())
}

/// How one bank clips, rounds and noises its update for a round, and what the ring must hold.
/// Both sides compute it from public numbers (the job's C, σ and dropout allowance; the
/// session's grid, participants and vector length), so a bank checks the coordinator's encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisePlan {
    /// C: the L2 bound of a bank's update.
    pub clip_norm: f64,
    /// σ: the job's noise multiplier (institution-level ρ = 1/(2σ²) per round).
    pub noise_multiplier: f64,
    /// γ: the grid (a power of two, ≤ 1); the encoding's scale is 1/γ.
    pub gamma: f64,
    /// d: coordinates noised (the update's length, without weight and loss).
    pub dimension: usize,
    /// n: banks in the round (all add noise and all are summed).
    pub participants: usize,
    /// k = n − dropout_allowance: noise shares the bound counts.
    pub noise_shares: usize,
    /// Δ₂ (grid units): the rounded update's norm bound.
    pub rounded_norm: f64,
    /// s: each bank's discrete Gaussian variance (grid units²).
    pub variance: u64,
    /// B (grid units): the most a bank's noisy coordinate reaches (but with probability < 2^-40).
    pub per_bank_bound: f64,
    /// The institution-level zCDP ρ the plan achieves per round (≤ 1/(2σ²)).
    pub rho: f64,
}

impl NoisePlan {
    /// The plan for the grid `gamma` (a power of two ≤ 1): Δ₂ from conditional rounding at
    /// [`ROUNDING_BETA`], then the smallest integer variance s ≥ 1 whose KLS21 bound over
    /// `participants − dropout_allowance` shares is at most ρ = 1/(2σ²).
    pub fn for_grid(
        clip_norm: f64,
        noise_multiplier: f64,
        gamma: f64,
        dimension: usize,
        participants: usize,
        dropout_allowance: u32,
    ) -> Result<NoisePlan, NoiseError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(clip_norm) {
            return Err(invalid("privacy.clip_norm", format!("must be a positive number, got {clip_norm}")));
        }
        if !positive(noise_multiplier) {
            return Err(invalid("privacy.noise_multiplier", format!("must be a positive number, got {noise_multiplier}")));
        }
        if !(positive(gamma) && gamma <= 1.0 && gamma.log2().fract() == 0.0) {
            return Err(invalid("grid", format!("must be a power of two at most 1, got {gamma}")));
        }
        if dimension == 0 {
            return Err(invalid("dimension", "must be at least 1"));
        }
        let k = participants.checked_sub(dropout_allowance as usize).filter(|&k| k >= 1);
        let Some(k) = k else { return Err(NoiseError::NoNoiseShares { participants, allowance: dropout_allowance }) };
        let c = clip_norm / gamma;
        let delta2 = rounded_norm_bound(c, dimension, ROUNDING_BETA);
        // Safety margin for the f64 evaluation of the bound.
        let target = (1.0 / noise_multiplier) * (1.0 - 1e-9);
        let ok = |s: u64| kls_epsilon(delta2, s as f64, k, dimension) <= target;
        // Δ₂²/(k·s) ≤ 1/σ² is necessary in both forms: start the search there.
        let floor = (noise_multiplier * noise_multiplier * delta2 * delta2 / k as f64).ceil().max(1.0);
        if floor > MAX_VARIANCE as f64 {
            return Err(NoiseError::VarianceTooLarge { variance: floor });
        }
        let mut lo = floor as u64;
        let variance = if ok(lo) {
            lo
        } else {
            let mut step = 1u64;
            let mut hi = loop {
                let hi = lo.saturating_add(step).min(MAX_VARIANCE);
                if ok(hi) {
                    break hi;
                }
                if hi == MAX_VARIANCE {
                    return Err(NoiseError::VarianceTooLarge { variance: f64::INFINITY });
                }
                lo = hi;
                step = step.saturating_mul(2);
            };
            // Invariant: !ok(lo), ok(hi).
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if ok(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        };
        let s = variance as f64;
        let tail = (2.0 * s * ((2.0 * dimension as f64 * participants as f64).ln() - f64::from(WRAP_LOG2) * std::f64::consts::LN_2)).sqrt();
        let epsilon = kls_epsilon(delta2, s, k, dimension);
        Ok(NoisePlan {
            clip_norm,
            noise_multiplier,
            gamma,
            dimension,
            participants,
            noise_shares: k,
            rounded_norm: delta2,
            variance,
            per_bank_bound: (delta2 + tail).ceil(),
            rho: epsilon * epsilon / 2.0,
        })
    }

    /// The encoding's scale: 1/γ (a power of two ≥ 1, so weight 1 and the grid values are exact).
    pub fn scale(&self) -> f64 {
        1.0 / self.gamma
    }

    /// The encoding's clip (real units): B·γ, and at least 1 so the weight 1 passes unclipped.
    pub fn encoding_clip(&self) -> f64 {
        (self.per_bank_bound * self.gamma).max(1.0)
    }

    /// The ring check: `n·⌈clip·scale⌉ < 2^(b−1)` (the session's headroom rule, so the sum of n
    /// banks' values within B cannot wrap, and a value outside B has probability < 2^-40 over
    /// all banks and is never sent) and B below 2^52 (exact in f64).
    pub fn check_ring(&self, modulus_bits: u32) -> Result<(), NoiseError> {
        let units = (self.encoding_clip() * self.scale()).ceil();
        let room = if (1..=64).contains(&modulus_bits) { 2f64.powi(modulus_bits as i32 - 1) } else { 0.0 };
        if units >= MAX_UNITS || self.participants as f64 * units >= room {
            return Err(NoiseError::RingTooSmall {
                bits: modulus_bits,
                participants: self.participants,
                per_bank: self.per_bank_bound,
                clip_norm: self.clip_norm,
                gamma: self.gamma,
            });
        }
        Ok(())
    }

    /// The finest grid γ = 2^-j (j = 0..=62) whose plan passes [`Self::check_ring`] for
    /// `modulus_bits`: the least quantisation error the ring allows.
    pub fn choose(
        clip_norm: f64,
        noise_multiplier: f64,
        dimension: usize,
        participants: usize,
        dropout_allowance: u32,
        modulus_bits: u32,
    ) -> Result<NoisePlan, NoiseError> {
        let mut coarsest = None;
        for j in (0..=62).rev() {
            let gamma = 2f64.powi(-j);
            match NoisePlan::for_grid(clip_norm, noise_multiplier, gamma, dimension, participants, dropout_allowance) {
                Ok(plan) => match plan.check_ring(modulus_bits) {
                    Ok(()) => return Ok(plan),
                    Err(e) => coarsest = Some(e),
                },
                Err(NoiseError::VarianceTooLarge { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(coarsest.unwrap_or(NoiseError::VarianceTooLarge { variance: f64::INFINITY }))
    }

    /// One bank's noisy update: `update` clipped to C, rounded to the grid (conditionally), plus
    /// N_Z(0, s) per coordinate, returned in real units as exact multiples of γ within ±B·γ.
    pub fn privatize(&self, update: &[f64], rng: &mut (impl RngCore + ?Sized)) -> Result<Vec<f64>, NoiseError> {
        if update.len() != self.dimension {
            return Err(NoiseError::Dimension { got: update.len(), want: self.dimension });
        }
        if let Some(index) = update.iter().position(|v| !v.is_finite()) {
            return Err(NoiseError::NonFinite { index });
        }
        let mut clipped = update.to_vec();
        clip_l2(&mut clipped, self.clip_norm);
        // γ is a power of two: dividing is exact.
        clipped.iter_mut().for_each(|x| *x /= self.gamma);
        let rounded = conditional_round(&clipped, self.rounded_norm, rng)?;
        let mut out = Vec::with_capacity(rounded.len());
        for m in rounded {
            let noisy = m.checked_add(sample_discrete_gaussian(self.variance, rng)).ok_or(NoiseError::NoiseTail)?;
            if noisy.unsigned_abs() as f64 > self.per_bank_bound {
                return Err(NoiseError::NoiseTail);
            }
            out.push(noisy as f64 * self.gamma);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// Mean and variance of `n` draws, checked against 0 and `variance`: the sample mean's
    /// standard error is σ/√n and the sample variance's σ²·√(2/n) (fourth moment ≈ 3σ⁴), so
    /// the tolerances are 5 standard errors (a false failure has probability ~10^-6).
    fn check_moments(variance: u64, n: usize, seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let xs: Vec<f64> = (0..n).map(|_| sample_discrete_gaussian(variance, &mut rng) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        let s = variance as f64;
        assert!(mean.abs() < 5.0 * (s / n as f64).sqrt(), "variance {variance}: mean {mean}");
        assert!((var - s).abs() < 5.0 * s * (2.0 / n as f64).sqrt(), "variance {variance}: sample variance {var}");
    }

    #[test]
    fn the_sampler_has_mean_zero_and_the_asked_variance_for_small_and_large_sigma() {
        // σ = 1, ~3.2, 100, 31623, 10^9. For σ ≥ 1 the discrete Gaussian's variance is within
        // 10^-7 relative of s (CKS20 Prop. 19), far inside the tolerance.
        for (i, variance) in [1u64, 10, 10_000, 1_000_000_000, MAX_VARIANCE].into_iter().enumerate() {
            check_moments(variance, 40_000, 11 + i as u64);
        }
    }

    #[test]
    fn the_sampler_matches_the_pmf_at_sigma_one() {
        // P(x) = exp(−x²/2)/Z, Z = Σ exp(−k²/2) ≈ 2.50663. 5 standard errors per cell.
        let n = 100_000;
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut counts = std::collections::BTreeMap::<i64, usize>::new();
        for _ in 0..n {
            *counts.entry(sample_discrete_gaussian(1, &mut rng)).or_default() += 1;
        }
        let z: f64 = (-40i64..=40).map(|k| (-(k * k) as f64 / 2.0).exp()).sum();
        for x in -3i64..=3 {
            let p = (-(x * x) as f64 / 2.0).exp() / z;
            let got = *counts.get(&x).unwrap_or(&0) as f64 / n as f64;
            assert!((got - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(), "P({x}) = {got}, expected {p}");
        }
    }

    #[test]
    fn the_sampler_is_symmetric() {
        let n = 60_000;
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let xs: Vec<i64> = (0..n).map(|_| sample_discrete_gaussian(25, &mut rng)).collect();
        let pos = xs.iter().filter(|&&x| x > 0).count() as f64;
        let neg = xs.iter().filter(|&&x| x < 0).count() as f64;
        // Under symmetry pos − neg has standard deviation ≤ √n.
        assert!((pos - neg).abs() < 5.0 * (n as f64).sqrt(), "{pos} positive vs {neg} negative");
        let odd3 = xs.iter().map(|&x| (x as f64).powi(3)).sum::<f64>() / n as f64;
        // E[X³] = 0; its standard error is √(15σ⁶/n).
        assert!(odd3.abs() < 5.0 * (15.0 * 25f64.powi(3) / n as f64).sqrt(), "third moment {odd3}");
    }

    #[test]
    fn the_discrete_laplace_has_its_variance() {
        // Var = 2e^{-1/t}/(1 − e^{-1/t})² for P(x) ∝ exp(−|x|/t).
        let t = 7u64;
        let n = 60_000;
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let xs: Vec<f64> = (0..n).map(|_| sample_discrete_laplace(t, &mut rng) as f64).collect();
        let q = (-1.0 / t as f64).exp();
        let want = 2.0 * q / (1.0 - q).powi(2);
        let var = xs.iter().map(|x| x * x).sum::<f64>() / n as f64;
        // Laplace's fourth moment is 6× the variance²: standard error √(5/n)·Var.
        assert!((var - want).abs() < 5.0 * want * (5.0 / n as f64).sqrt(), "{var} vs {want}");
    }

    #[test]
    fn the_plan_meets_the_rho_of_the_noise_multiplier_and_inflates_over_the_continuous_noise() {
        for (sigma, c, d, n, a) in [(1.0, 1.0, 10, 3, 1), (0.5, 0.1, 100_000, 5, 2), (4.0, 10.0, 1, 2, 0), (1.2, 1.0, 3000, 40, 10)] {
            let plan = NoisePlan::choose(c, sigma, d, n, a, 32).expect("plan");
            assert!(plan.rho <= 1.0 / (2.0 * sigma * sigma), "{plan:?}");
            let continuous = sigma * sigma * (c / plan.gamma).powi(2) / plan.noise_shares as f64;
            assert!(plan.variance as f64 >= continuous, "{plan:?}");
            // The inflation is small once the grid is fine.
            assert!((plan.variance as f64) < 1.01 * continuous + 2.0, "{plan:?} vs {continuous}");
            plan.check_ring(32).expect("ring");
        }
    }

    #[test]
    fn a_coarse_grid_needs_more_noise_than_the_continuous_bound() {
        // At γ = 1 and C = 1 in 100 dimensions the rounded norm is ~5.5 C: the noise grows with it.
        let plan = NoisePlan::for_grid(1.0, 1.0, 1.0, 100, 3, 1).expect("plan");
        assert!(plan.rounded_norm > 5.0, "{plan:?}");
        assert!(plan.variance as f64 >= plan.rounded_norm.powi(2) / 2.0, "{plan:?}");
        assert!(plan.rho <= 0.5);
    }

    #[test]
    fn too_small_a_ring_or_no_counted_noise_is_refused() {
        let err = NoisePlan::choose(1.0, 1000.0, 1_000_000, 100, 1, 16).expect_err("16 bits");
        assert!(matches!(err, NoiseError::RingTooSmall { bits: 16, .. }), "{err}");
        assert!(err.to_string().contains("modulus_bits"), "{err}");
        let err = NoisePlan::choose(1.0, 1.0, 10, 3, 3, 32).expect_err("all noise may be missing");
        assert_eq!(err, NoiseError::NoNoiseShares { participants: 3, allowance: 3 });
    }

    #[test]
    fn clipping_and_rounding_stay_within_the_bound() {
        let plan = NoisePlan::for_grid(1.0, 1.0, 1.0 / 8.0, 50, 3, 1).expect("plan");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let big: Vec<f64> = (0..50).map(|i| (i as f64 - 25.0) * 3.0).collect();
        for _ in 0..200 {
            let mut x = big.clone();
            clip_l2(&mut x, 1.0);
            assert!(x.iter().map(|v| v * v).sum::<f64>().sqrt() <= 1.0 + 1e-12);
            let units: Vec<f64> = x.iter().map(|v| v * 8.0).collect();
            let r = conditional_round(&units, plan.rounded_norm, &mut rng).expect("rounded");
            let norm2: i128 = r.iter().map(|&m| i128::from(m) * i128::from(m)).sum();
            assert!(norm2 as f64 <= plan.rounded_norm.powi(2));
            for (m, u) in r.iter().zip(&units) {
                assert!((*m as f64 - u).abs() < 1.0, "{m} vs {u}");
            }
        }
    }

    #[test]
    fn rounding_is_unbiased() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let x = vec![0.25; 4];
        let n = 20_000;
        let mut sum = 0i64;
        for _ in 0..n {
            sum += conditional_round(&x, 10.0, &mut rng).expect("round")[0];
        }
        let mean = sum as f64 / n as f64;
        assert!((mean - 0.25).abs() < 5.0 * (0.25f64 * 0.75 / n as f64).sqrt(), "{mean}");
    }

    #[test]
    fn the_worst_case_inputs_and_noise_cannot_wrap_the_ring() {
        // Every bank at the bound B in every coordinate, of either sign: the sum stays inside
        // the signed b-bit range.
        for bits in [20u32, 32, 48, 64] {
            for n in [3usize, 10, 200] {
                let Ok(plan) = NoisePlan::choose(1.0, 2.0, 500, n, 1, bits) else { continue };
                let clip_units = (plan.encoding_clip() * plan.scale()).ceil();
                let worst = n as f64 * clip_units;
                assert!(worst < 2f64.powi(bits as i32 - 1), "{bits} bits, {n} banks: {plan:?}");
            }
        }
    }

    #[test]
    fn a_noisy_update_is_exact_on_the_grid_within_the_encoding() {
        let plan = NoisePlan::choose(1.0, 1.0, 200, 4, 1, 32).expect("plan");
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let update: Vec<f64> = (0..200).map(|i| (i as f64).sin()).collect();
        let noisy = plan.privatize(&update, &mut rng).expect("noisy");
        for v in &noisy {
            let units = v * plan.scale();
            assert_eq!(units, units.round(), "{v} is not on the grid");
            assert!(v.abs() <= plan.encoding_clip());
        }
        assert_eq!(plan.privatize(&update[..3], &mut rng), Err(NoiseError::Dimension { got: 3, want: 200 }));
        let mut nan = update.clone();
        nan[7] = f64::NAN;
        assert_eq!(plan.privatize(&nan, &mut rng), Err(NoiseError::NonFinite { index: 7 }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_plan_meets_its_rho_and_its_ring(
            sigma in 0.3f64..20.0,
            c in 0.01f64..100.0,
            d in 1usize..200_000,
            n in 2usize..300,
            allowance in 0u32..3,
            bits in 24u32..=64,
        ) {
            prop_assume!((allowance as usize) < n);
            if let Ok(plan) = NoisePlan::choose(c, sigma, d, n, allowance, bits) {
                prop_assert!(plan.rho <= 1.0 / (2.0 * sigma * sigma));
                prop_assert!(plan.check_ring(bits).is_ok());
                prop_assert!(plan.variance >= 1 && plan.variance <= MAX_VARIANCE);
                prop_assert!(plan.rounded_norm >= c / plan.gamma);
                // Record level (a row moves the bank's update by up to 2Δ₂): at most 4ρ, as
                // `crate::spend` charges.
                let record = kls_epsilon(2.0 * plan.rounded_norm, plan.variance as f64, plan.noise_shares, d);
                prop_assert!(record * record / 2.0 <= 4.0 / (2.0 * sigma * sigma));
                // Its variance is the smallest integer that meets ρ.
                if plan.variance > 1 {
                    let eps = kls_epsilon(plan.rounded_norm, (plan.variance - 1) as f64, plan.noise_shares, d);
                    prop_assert!(eps * eps / 2.0 > 1.0 / (2.0 * sigma * sigma) * (1.0 - 1e-6));
                }
            }
        }

        #[test]
        fn rounding_keeps_the_norm_bound(xs in proptest::collection::vec(-50.0f64..50.0, 1..64), c in 0.5f64..40.0, seed: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut x = xs.clone();
            clip_l2(&mut x, c);
            let bound = rounded_norm_bound(c, x.len(), ROUNDING_BETA);
            let r = conditional_round(&x, bound, &mut rng).expect("round");
            let norm2: i128 = r.iter().map(|&m| i128::from(m) * i128::from(m)).sum();
            prop_assert!(norm2 as f64 <= bound * bound);
        }
    }
}
