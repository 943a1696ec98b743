//! The tree ensemble: the `gbdt` job's checkpoint, what banks score and what is exported.
//!
//! Node 0 is a tree's root. A split sends `x < threshold` left and NaN the default way (XGBoost's
//! rule, on `f32`). Leaf values already include the shrinkage; the margin of a row is
//! `base_margin + Σ trees' leaf values` and its probability `sigmoid(margin)`.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::{FeatureSet, GbdtError};

/// One node of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// An internal node.
    Split {
        /// Feature index into the model's [`FeatureSet`].
        feature: u32,
        /// Rows with `x < threshold` go left; `threshold` is one of the feature's cuts.
        threshold: f32,
        /// The same split in bins: bins `0..bin_split` (histogram slots `1..=bin_split`) go
        /// left, so `threshold = cuts[bin_split − 1]` (1 ≤ `bin_split` ≤ cuts).
        bin_split: u16,
        /// Where missing values go.
        default_left: bool,
        /// Left child's node index.
        left: u32,
        /// Right child's node index.
        right: u32,
        /// Loss reduction of the split (XGBoost's `loss_chg`).
        gain: f64,
        /// Σ hessian of the rows at this node (XGBoost's `cover`).
        cover: f64,
    },
    /// A leaf.
    Leaf {
        /// Contribution to the margin (shrinkage included), an `f32` value.
        value: f32,
        /// Σ hessian of the rows at this leaf.
        cover: f64,
    },
}

/// One tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// Nodes; 0 is the root, children come after their parent.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf value a row (one value per feature, NaN missing) reaches.
    pub fn predict(&self, row: &[f32]) -> f32 {
        let _ = row;
        unimplemented!("gbdt helper")
    }

    /// Depth (a lone leaf has depth 0).
    pub fn depth(&self) -> u32 {
        unimplemented!("gbdt helper")
    }
}

/// Gain and cover summed over a feature's splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureImportance {
    /// Feature name.
    pub feature: String,
    /// Σ gain of its splits.
    pub total_gain: f64,
    /// Σ cover of its splits.
    pub total_cover: f64,
    /// Number of splits on it.
    pub splits: u64,
}

/// A binary-logistic tree ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbdtModel {
    /// Margin before any tree (0 = probability 0.5, XGBoost's `base_score = 0.5`).
    pub base_margin: f32,
    /// The feature space the trees split on.
    pub features: FeatureSet,
    /// Trees, in boosting order.
    pub trees: Vec<Tree>,
}

impl GbdtModel {
    /// The checkpoint bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        unimplemented!("gbdt helper")
    }

    /// Reads a checkpoint, checking every node refers to an existing feature and child.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GbdtError> {
        let _ = bytes;
        unimplemented!("gbdt helper")
    }

    /// Margins of rows (rows × features, NaN missing), accumulated in f64.
    pub fn predict_margins(&self, raw: ArrayView2<'_, f32>) -> Vec<f64> {
        let _ = raw;
        unimplemented!("gbdt helper")
    }

    /// Probabilities of rows (sigmoid of the margins).
    pub fn predict_proba(&self, raw: ArrayView2<'_, f32>) -> Vec<f64> {
        self.predict_margins(raw).into_iter().map(|m| 1.0 / (1.0 + (-m).exp())).collect()
    }

    /// Importance by gain and cover per feature that has splits, most gain first.
    pub fn importance(&self) -> Vec<FeatureImportance> {
        unimplemented!("gbdt helper")
    }
}
