//! The training contribution vector, written down once as a type: what a worker encodes after
//! local training and what the coordinator decodes from the secure sum.
//!
//! Layout: `[n·(w_local − w_global)…, n, n·loss]` — the weighted update over the model's
//! federated layout, then the weight `n` (training examples, or ratings for recommenders) and
//! the weighted mean loss. Summed over institutions it gives Σ n·Δ, Σ n and Σ n·loss, from which
//! the server optimizer takes the weighted mean update. (The evaluation vectors have their own
//! codecs in [`crate::metrics`]; the statistics vector is `confide_datasets::stats_len` long.)

/// One institution's training contribution (or the federation's, once summed).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainContribution {
    /// Σ n·(w_local − w_global), one value per model parameter.
    pub weighted_update: Vec<f64>,
    /// Σ n: training examples behind the update.
    pub weight: f64,
    /// Σ n·loss: the weighted training loss.
    pub weighted_loss: f64,
}

/// Values after the weighted update: the weight and the weighted loss.
pub const TRAIN_EXTRAS: usize = 2;

impl TrainContribution {
    /// Length of the flat vector for a model of `params` parameters.
    pub fn vector_len(params: usize) -> usize {
        params + TRAIN_EXTRAS
    }

    /// The contribution of a bank that trained `global` into `local` on `samples` examples with
    /// mean loss `mean_loss`; an error when any value is not finite (which the worker refuses to send).
    pub fn from_training(local: &[f32], global: &[f32], samples: usize, mean_loss: f64) -> Result<Self, NotFinite> {
        let n = samples as f64;
        let weighted_update: Vec<f64> = local.iter().zip(global).map(|(w, g)| n * (f64::from(*w) - f64::from(*g))).collect();
        let c = Self { weighted_update, weight: n, weighted_loss: n * mean_loss };
        match c.to_vec().iter().position(|x| !x.is_finite()) {
            Some(index) => Err(NotFinite { index }),
            None => Ok(c),
        }
    }

    /// The flat vector.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(Self::vector_len(self.weighted_update.len()));
        v.extend_from_slice(&self.weighted_update);
        v.push(self.weight);
        v.push(self.weighted_loss);
        v
    }

    /// Reads a (summed) flat vector of a model with `params` parameters; None when the length
    /// is wrong.
    pub fn from_slice(v: &[f64], params: usize) -> Option<Self> {
        if v.len() != Self::vector_len(params) {
            return None;
        }
        let (update, extras) = v.split_at(params);
        Some(Self { weighted_update: update.to_vec(), weight: extras[0], weighted_loss: extras[1] })
    }

    /// Σ n·loss / Σ n.
    pub fn mean_loss(&self) -> f64 {
        self.weighted_loss / self.weight
    }
}

/// A contribution value is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("update element {index} is not finite")]
pub struct NotFinite {
    /// Index in the flat vector.
    pub index: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(update in proptest::collection::vec(-1e6f64..1e6, 0..50), w in 0.0f64..1e9, l in 0.0f64..1e9) {
            let c = TrainContribution { weighted_update: update.clone(), weight: w, weighted_loss: l };
            let v = c.to_vec();
            prop_assert_eq!(v.len(), TrainContribution::vector_len(update.len()));
            prop_assert_eq!(TrainContribution::from_slice(&v, update.len()), Some(c));
            prop_assert!(TrainContribution::from_slice(&v, update.len() + 1).is_none());
        }
    }

    #[test]
    fn training_weights_the_difference_and_refuses_non_finite_values() {
        let c = TrainContribution::from_training(&[1.5, 2.0], &[1.0, 3.0], 4, 0.25).expect("finite");
        assert_eq!(c.to_vec(), vec![2.0, -4.0, 4.0, 1.0]);
        assert_eq!(c.mean_loss(), 0.25);
        assert_eq!(TrainContribution::from_training(&[f32::NAN], &[0.0], 4, 0.1), Err(NotFinite { index: 0 }));
    }
}
