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
        let mut at = 0usize;
        // A checked tree's children come after their parent, so this ends within `nodes.len()` steps.
        for _ in 0..self.nodes.len() {
            match self.nodes.get(at) {
                Some(Node::Leaf { value, .. }) => return *value,
                Some(Node::Split { feature, threshold, default_left, left, right, .. }) => {
                    let x = row.get(*feature as usize).copied().unwrap_or(f32::NAN);
                    let go_left = if x.is_nan() { *default_left } else { x < *threshold };
                    at = if go_left { *left } else { *right } as usize;
                }
                None => return 0.0,
            }
        }
        0.0
    }

    /// Depth (a lone leaf has depth 0).
    pub fn depth(&self) -> u32 {
        fn below(nodes: &[Node], at: usize, budget: usize) -> u32 {
            match nodes.get(at) {
                Some(Node::Split { left, right, .. }) if budget > 0 => {
                    1 + below(nodes, *left as usize, budget - 1).max(below(nodes, *right as usize, budget - 1))
                }
                _ => 0,
            }
        }
        below(&self.nodes, 0, self.nodes.len())
    }

    /// Checks that every split names an existing feature and children that come after it.
    fn check(&self, features: usize) -> Result<(), GbdtError> {
        if self.nodes.is_empty() {
            return Err(GbdtError::Model("a tree has no nodes".into()));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Node::Split { feature, threshold, left, right, .. } = node {
                let child_ok = |c: u32| (c as usize) > i && (c as usize) < self.nodes.len();
                if *feature as usize >= features || !threshold.is_finite() || !child_ok(*left) || !child_ok(*right) || left == right {
                    return Err(GbdtError::Model(format!("node {i} is not a valid split")));
                }
            }
        }
        Ok(())
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
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a checkpoint, checking every node refers to an existing feature and child.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GbdtError> {
        let model: Self = serde_json::from_slice(bytes).map_err(|e| GbdtError::Model(e.to_string()))?;
        if !model.base_margin.is_finite() {
            return Err(GbdtError::Model("base margin is not finite".into()));
        }
        for (t, tree) in model.trees.iter().enumerate() {
            tree.check(model.features.len()).map_err(|e| GbdtError::Model(format!("tree {t}: {e}")))?;
        }
        Ok(model)
    }

    /// Margins of rows (rows × features, NaN missing), accumulated in f64.
    pub fn predict_margins(&self, raw: ArrayView2<'_, f32>) -> Vec<f64> {
        raw.outer_iter()
            .map(|row| {
                let row: Vec<f32> = row.iter().copied().collect();
                f64::from(self.base_margin) + self.trees.iter().map(|t| f64::from(t.predict(&row))).sum::<f64>()
            })
            .collect()
    }

    /// Probabilities of rows (sigmoid of the margins).
    pub fn predict_proba(&self, raw: ArrayView2<'_, f32>) -> Vec<f64> {
        self.predict_margins(raw).into_iter().map(|m| 1.0 / (1.0 + (-m).exp())).collect()
    }

    /// Importance by gain and cover per feature that has splits, most gain first.
    pub fn importance(&self) -> Vec<FeatureImportance> {
        let mut by_feature: Vec<FeatureImportance> = self
            .features
            .features
            .iter()
            .map(|f| FeatureImportance { feature: f.name.clone(), total_gain: 0.0, total_cover: 0.0, splits: 0 })
            .collect();
        for node in self.trees.iter().flat_map(|t| &t.nodes) {
            if let Node::Split { feature, gain, cover, .. } = node
                && let Some(f) = by_feature.get_mut(*feature as usize)
            {
                f.total_gain += gain;
                f.total_cover += cover;
                f.splits += 1;
            }
        }
        by_feature.retain(|f| f.splits > 0);
        by_feature.sort_by(|a, b| b.total_gain.total_cmp(&a.total_gain));
        by_feature
    }
}
