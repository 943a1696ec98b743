//! A bank's side of boosting, and the in-process reference.
//!
//! [`LocalBooster`] holds one bank's binned training rows and labels, the margins of the
//! committed trees, and computes a level's histograms for a [`GrowingTree`] (gradients of the
//! logistic loss `g = w·(p − y)`, `h = w·p(1 − p)`, `w` the positive-class weight on positives;
//! rows outside the tree's row sample contribute nothing). [`train_in_process`] grows an ensemble
//! from several boosters whose histograms are summed in memory: what the federation computes,
//! without the network.

use ndarray::Array2;

use crate::{FeatureSet, GbdtError, GbdtModel, GrowParams, GrowingTree};

/// One bank's rows for boosting.
#[derive(Debug, Clone)]
pub struct LocalBooster {
    /// Raw feature matrix (rows × features, NaN missing).
    pub raw: Array2<f32>,
    /// Histogram slots of `raw`.
    pub slots: Array2<u16>,
    /// Labels, 1.0 positive.
    pub labels: Vec<f32>,
    /// Margins of the committed trees (base margin included).
    pub margins: Vec<f64>,
    /// Trees the margins include.
    pub trees_applied: usize,
    /// Weight of positive rows in the loss (XGBoost's `scale_pos_weight`; 1 = none).
    pub pos_weight: f64,
}

impl LocalBooster {
    /// A booster over `raw` rows with `labels`.
    pub fn new(set: &FeatureSet, raw: Array2<f32>, labels: Vec<f32>, base_margin: f32, pos_weight: f64) -> Self {
        let _ = (set, raw, labels, base_margin, pos_weight);
        unimplemented!("gbdt helper")
    }

    /// Brings the margins up to date with `model`'s trees (adds the ones not applied yet; a
    /// model with fewer trees than applied recomputes from scratch).
    pub fn sync(&mut self, model: &GbdtModel) {
        let _ = model;
        unimplemented!("gbdt helper")
    }

    /// This bank's histograms for the growing tree's current level. `sample_seed` seeds the
    /// bank's row sample (with `subsample` < 1), a secret of the bank.
    pub fn level_histograms(&self, set: &FeatureSet, tree: &GrowingTree, subsample: f64, sample_seed: u64) -> Vec<f64> {
        let _ = (set, tree, subsample, sample_seed);
        unimplemented!("gbdt helper")
    }
}

/// Grows `trees` trees over in-process banks whose level histograms are summed in memory.
pub fn train_in_process(
    set: &FeatureSet,
    banks: &mut [LocalBooster],
    params: &GrowParams,
    trees: u64,
    subsample: f64,
    colsample_bytree: f64,
    seed: u64,
) -> Result<GbdtModel, GbdtError> {
    let _ = (set, banks, params, trees, subsample, colsample_bytree, seed);
    unimplemented!("gbdt helper")
}
