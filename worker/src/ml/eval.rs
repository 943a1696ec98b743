//! Prediction and additive evaluation statistics.
//!
//! A worker never sends scores. It sends a score histogram (positives per bucket, then negatives
//! per bucket) and a few sums, which the coordinator adds across institutions to compute exact
//! AUC, KS, log loss and so on over the union of test sets. The layouts are those of
//! [`confide_core::metrics::EvalContribution`], which this module fills.

use confide_core::metrics::{EVAL_SUMS, EvalContribution};
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Encoded;
use tch::{Device, Kind, Tensor};

use super::model::{Classifier, Net};
use super::{MlError, check_data};

/// Rows scored per forward pass, bounding device memory.
const PREDICT_CHUNK: usize = 65_536;

/// Probabilities of the positive class for `rows × dim` row-major `features`.
pub fn predict(
    spec: &ModelSpec,
    params: &ModelParams,
    features: &[f32],
    rows: usize,
    dim: usize,
    device: Device,
) -> Result<Vec<f32>, MlError> {
    check_data(features, None, rows, dim)?;
    let mut net = Net::new(spec, params, dim, device)?;
    predict_with(&mut net, features, rows, dim, device)
}

/// [`predict`] with any [`Classifier`] (built in or scripted), in evaluation mode.
pub fn predict_with(
    net: &mut dyn Classifier,
    features: &[f32],
    rows: usize,
    dim: usize,
    device: Device,
) -> Result<Vec<f32>, MlError> {
    check_data(features, None, rows, dim)?;
    net.set_training(false)?;
    let width = i64::try_from(dim).map_err(|_| MlError::Data("too many columns".into()))?;
    let mut probs = Vec::with_capacity(rows);
    for chunk in features.chunks(PREDICT_CHUNK * dim.max(1)).filter(|c| !c.is_empty()) {
        let p = tch::no_grad(|| -> Result<Tensor, MlError> {
            let x = Tensor::f_from_slice(chunk)?.f_reshape([-1, width])?.f_to_device(device)?;
            Ok(net.logits(&x)?.f_sigmoid()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)
        })?;
        probs.extend(Vec::<f32>::try_from(&p)?);
    }
    if let Some(row) = probs.iter().position(|p| !p.is_finite()) {
        return Err(MlError::NonFinitePrediction { row });
    }
    Ok(probs)
}

/// Score histogram of length `2 × buckets`: positives per bucket, then negatives per bucket, with
/// bucket `min(floor(p × buckets), buckets − 1)`.
pub fn score_histogram(probs: &[f32], labels: &[f32], buckets: usize) -> Vec<f64> {
    let c = EvalContribution::from_predictions(probs, labels, buckets);
    let mut v = c.pos_hist;
    v.extend(c.neg_hist);
    v
}

/// Additive evaluation sums (threshold 0.5 for the confusion counts).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EvalSums {
    /// Examples.
    pub n: f64,
    /// Positive examples.
    pub positives: f64,
    /// Σ binary cross-entropy (probabilities clamped to [1e-7, 1 − 1e-7]).
    pub log_loss_sum: f64,
    /// Σ (p − y)².
    pub brier_sum: f64,
    /// Correct predictions at 0.5.
    pub correct_at_0_5: f64,
    /// True positives.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// False negatives.
    pub fn_: f64,
}

impl EvalSums {
    /// Length of [`EvalSums::to_vec`].
    pub const LEN: usize = EVAL_SUMS;

    /// The additive vector `[n, positives, log_loss_sum, brier_sum, correct_at_0_5, tp, fp, fn]`
    /// (the tail of an [`EvalContribution`] vector).
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.n,
            self.positives,
            self.log_loss_sum,
            self.brier_sum,
            self.correct_at_0_5,
            self.tp,
            self.fp,
            self.fn_,
        ]
    }

    /// Reads a vector in [`EvalSums::to_vec`] layout.
    pub fn from_slice(v: &[f64]) -> Option<Self> {
        let &[n, positives, log_loss_sum, brier_sum, correct_at_0_5, tp, fp, fn_] = v else {
            return None;
        };
        Some(Self { n, positives, log_loss_sum, brier_sum, correct_at_0_5, tp, fp, fn_ })
    }
}

impl From<&EvalContribution> for EvalSums {
    fn from(c: &EvalContribution) -> Self {
        Self {
            n: c.n,
            positives: c.positives,
            log_loss_sum: c.log_loss_sum,
            brier_sum: c.brier_sum,
            correct_at_0_5: c.correct,
            tp: c.tp,
            fp: c.fp,
            fn_: c.fn_,
        }
    }
}

/// Additive sums of predictions `probs` against 0/1 `labels`.
pub fn eval_sums(probs: &[f32], labels: &[f32]) -> EvalSums {
    EvalSums::from(&EvalContribution::from_predictions(probs, labels, 1))
}

/// Scores `data` and returns this institution's evaluation contribution (histogram with
/// `buckets` buckets and sums); its `to_vec()` is what goes into secure aggregation.
pub fn evaluate(
    spec: &ModelSpec,
    params: &ModelParams,
    data: &Encoded,
    buckets: usize,
    device: Device,
) -> Result<EvalContribution, MlError> {
    check_data(&data.features, Some(&data.labels), data.rows, data.dim)?;
    let mut net = Net::new(spec, params, data.dim, device)?;
    evaluate_with(&mut net, data, buckets, device)
}

/// [`evaluate`] with any [`Classifier`] (built in or scripted).
pub fn evaluate_with(
    net: &mut dyn Classifier,
    data: &Encoded,
    buckets: usize,
    device: Device,
) -> Result<EvalContribution, MlError> {
    check_data(&data.features, Some(&data.labels), data.rows, data.dim)?;
    let probs = predict_with(net, &data.features, data.rows, data.dim, device)?;
    Ok(EvalContribution::from_predictions(&probs, &data.labels, buckets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_layout_and_bucket_edges() {
        let h = score_histogram(&[0.0, 0.49, 0.5, 1.0, 0.99], &[1.0, 0.0, 1.0, 1.0, 0.0], 2);
        assert_eq!(h, [1.0, 2.0, 1.0, 1.0]);
    }

    #[test]
    fn sums_are_additive_and_round_trip() {
        let (p, y) = ([0.9f32, 0.2, 0.6, 0.4], [1.0f32, 0.0, 0.0, 1.0]);
        let all = eval_sums(&p, &y);
        assert_eq!(
            (all.n, all.positives, all.correct_at_0_5, all.tp, all.fp, all.fn_),
            (4.0, 2.0, 2.0, 1.0, 1.0, 1.0)
        );
        let (a, b) = (eval_sums(&p[..2], &y[..2]).to_vec(), eval_sums(&p[2..], &y[2..]).to_vec());
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        for (s, t) in sum.iter().zip(all.to_vec()) {
            assert!((s - t).abs() < 1e-12);
        }
        assert_eq!(EvalSums::from_slice(&all.to_vec()), Some(all));
        assert_eq!(EvalSums::from_slice(&[1.0]), None);
        let expected_brier = 0.01 + 0.04 + 0.36 + 0.36;
        assert!((all.brier_sum - expected_brier).abs() < 1e-6);
    }

    #[test]
    fn predict_checks_shapes_and_matches_a_hand_computed_logit() {
        let spec = ModelSpec::LogisticRegression;
        let params = ModelParams::new(spec.layout(2), vec![1.0, -2.0, 0.5]).expect("params");
        let p =
            predict(&spec, &params, &[1.0, 1.0, 0.0, 0.0], 2, 2, Device::Cpu).expect("predicts");
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        assert!((p[0] - sigmoid(-0.5)).abs() < 1e-6 && (p[1] - sigmoid(0.5)).abs() < 1e-6);
        assert!(matches!(
            predict(&spec, &params, &[1.0; 5], 2, 2, Device::Cpu),
            Err(MlError::Data(_))
        ));
        assert!(matches!(
            predict(&spec, &params, &[1.0; 6], 2, 3, Device::Cpu),
            Err(MlError::LayoutMismatch { .. })
        ));
        assert_eq!(
            predict(&spec, &params, &[], 0, 2, Device::Cpu).expect("empty"),
            Vec::<f32>::new()
        );
    }
}
