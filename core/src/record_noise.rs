//! The Gaussian mechanism a bank applies to the vectors it contributes besides training
//! updates — preprocessing statistics and evaluation histograms — when a job is
//! differentially private, and the per-slot sensitivities of the evaluation vector.
//!
//! A vector whose slot j one row can move by at most `per_slot[j]`, and of which one row
//! touches at most `slots_per_row` slots, has L2 sensitivity √slots_per_row once each slot is
//! divided by its bound. Adding `N(0, σ²·slots_per_row·per_slot[j]²)` to slot j is therefore the
//! Gaussian mechanism with noise multiplier σ on that scaled vector: ρ = 1/(2σ²)-zCDP for adding
//! or removing one row, which is what [`crate::spend`] charges. Each bank adds the whole noise
//! to its own vector, so its guarantee does not depend on any other bank.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// How far one row can move each slot of a vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensitivity {
    /// Per slot, the most one row adds to it.
    pub per_slot: Vec<f64>,
    /// The most slots one row touches.
    pub slots_per_row: usize,
}

/// The smallest probability a DP evaluation scores a row with when summing its log loss, so
/// one row adds at most ln(1000) ≈ 6.9 to the loss sum.
pub const DP_EVAL_MIN_PROBABILITY: f64 = 1e-3;

/// The sensitivities of an evaluation vector ([`crate::metrics::EvalContribution`]) with
/// `buckets` score buckets whose log loss was summed with probabilities clamped at
/// [`DP_EVAL_MIN_PROBABILITY`]: a row lands in one bucket and adds to the examples, log loss,
/// Brier, correct, one of tp/fp/fn, and (if positive) the positives.
pub fn eval_sensitivity(buckets: usize) -> Sensitivity {
    let max_loss = -DP_EVAL_MIN_PROBABILITY.ln();
    let mut per_slot = vec![1.0; 2 * buckets];
    // n, positives, log_loss_sum, brier_sum, correct, tp, fp, fn (the order of `to_vec`).
    per_slot.extend([1.0, 1.0, max_loss, 1.0, 1.0, 1.0, 1.0, 1.0]);
    Sensitivity { per_slot, slots_per_row: 7 }
}

/// Adds the Gaussian mechanism's noise at noise multiplier `sigma` to `values` (see the module
/// docs); `values` and `sensitivity.per_slot` have the same length.
pub fn add_gaussian(values: &mut [f64], sensitivity: &Sensitivity, sigma: f64, rng: &mut impl Rng) {
    let scale = sigma * (sensitivity.slots_per_row as f64).sqrt();
    for (v, s) in values.iter_mut().zip(&sensitivity.per_slot) {
        let z: f64 = StandardNormal.sample(rng);
        *v += z * scale * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{EVAL_SUMS, EvalContribution};
    use rand::SeedableRng;

    #[test]
    fn the_evaluation_sensitivities_bound_one_rows_effect() {
        let buckets = 10;
        let s = eval_sensitivity(buckets);
        assert_eq!(s.per_slot.len(), EvalContribution::vector_len(buckets));
        assert_eq!(EVAL_SUMS, 8);
        // One row's vector, for each kind of row, stays within the bounds in each slot and
        // touches at most `slots_per_row` slots.
        for (p, y) in [(0.0f32, 1.0f32), (1.0, 0.0), (0.7, 1.0), (0.2, 0.0), (0.5, 0.0)] {
            let v = EvalContribution::from_predictions_with_floor(&[p], &[y], buckets, DP_EVAL_MIN_PROBABILITY).to_vec();
            assert!(v.iter().zip(&s.per_slot).all(|(x, b)| x.abs() <= *b + 1e-12), "{p} {y}: {v:?}");
            assert!(v.iter().filter(|x| **x != 0.0).count() <= s.slots_per_row, "{p} {y}: {v:?}");
        }
    }

    #[test]
    fn the_noise_has_the_stated_scale() {
        let s = Sensitivity { per_slot: vec![1.0, 10.0], slots_per_row: 4 };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let mut v = [0.0, 0.0];
            add_gaussian(&mut v, &s, 1.5, &mut rng);
            a.push(v[0]);
            b.push(v[1]);
        }
        let sd = |x: &[f64]| (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        // σ·√K·s = 1.5·2·s; the standard error of a standard deviation over 20,000 draws is 0.5 %.
        assert!((sd(&a) / 3.0 - 1.0).abs() < 0.03, "{}", sd(&a));
        assert!((sd(&b) / 30.0 - 1.0).abs() < 0.03, "{}", sd(&b));
    }
}
