//! Growing one tree level by level from summed histograms: the coordinator's side.
//!
//! [`GrowingTree`] is the state between levels: the nodes decided so far and the open
//! frontier. It travels to the banks with each level's task (JSON), so a bank routes its rows
//! to the frontier exactly as the coordinator decided, and its histogram vector has the length
//! [`GrowingTree::vector_len`] says. [`GrowingTree::apply_level`] takes the level's summed
//! histograms and, for every open node, either splits it (best gain over sampled features,
//! thresholds and both default directions, both children meeting `min_child_weight` and
//! `min_leaf_rows`, gain above γ) or makes it a leaf with value `−η·G/(H+λ)`. Children at
//! `max_depth` become leaves at once from the split's left and right sums.

use serde::{Deserialize, Serialize};

use confide_core::model::GbdtSpec;

use crate::{FeatureSet, GbdtError, HistLayout, Node, Tree};

/// The hyper-parameters split finding uses.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowParams {
    /// Shrinkage η (the job's learning rate).
    pub eta: f64,
    /// L2 penalty λ.
    pub lambda: f64,
    /// Minimum loss reduction γ.
    pub gamma: f64,
    /// Minimum Σ hessian per child.
    pub min_child_weight: f64,
    /// Minimum rows per child, summed over banks.
    pub min_leaf_rows: u64,
    /// Deepest split level.
    pub max_depth: u32,
}

impl GrowParams {
    /// From a job's tree spec and learning rate.
    pub fn new(spec: &GbdtSpec, eta: f64) -> Self {
        Self {
            eta,
            lambda: spec.lambda,
            gamma: spec.gamma,
            min_child_weight: spec.min_child_weight,
            min_leaf_rows: spec.min_leaf_rows,
            max_depth: spec.max_depth,
        }
    }
}

/// A node while its tree grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrowNode {
    /// Decided.
    Done(Node),
    /// On the frontier, waiting for its level's histograms.
    Open,
}

/// One tree between levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowingTree {
    /// The tree's index in the ensemble (0-based): seeds its row and column samples.
    pub index: u64,
    /// Feature indices this tree may split on (ascending; the column sample).
    pub features: Vec<usize>,
    /// Nodes so far (0 = root).
    pub nodes: Vec<GrowNode>,
    /// Open node indices, in the order their histograms appear in a level's vector.
    pub frontier: Vec<u32>,
    /// Depth of the frontier's nodes.
    pub depth: u32,
}

impl GrowingTree {
    /// A tree with an open root.
    pub fn new(index: u64, features: Vec<usize>) -> Self {
        Self { index, features, nodes: vec![GrowNode::Open], frontier: vec![0], depth: 0 }
    }

    /// True when no node is open (the tree is complete).
    pub fn is_done(&self) -> bool {
        self.frontier.is_empty()
    }

    /// The histogram layout of one frontier node.
    pub fn layout(&self, set: &FeatureSet) -> HistLayout {
        HistLayout::new(set, &self.features)
    }

    /// Length of the current level's histogram vector.
    pub fn vector_len(&self, set: &FeatureSet) -> usize {
        self.layout(set).vector_len(self.frontier.len())
    }

    /// The frontier position a row (its slots, one per feature of the set) reaches, or None when
    /// it ends in a decided leaf.
    pub fn route(&self, row_slots: &[u16]) -> Option<u32> {
        let _ = row_slots;
        unimplemented!("gbdt helper")
    }

    /// Decides every frontier node from the level's summed histograms (see the module docs).
    /// At the root, fails with [`GbdtError::LeafFloor`] when the federation has fewer rows than
    /// `min_leaf_rows`.
    pub fn apply_level(&mut self, summed: &[f64], set: &FeatureSet, params: &GrowParams) -> Result<(), GbdtError> {
        let _ = (summed, set, params);
        unimplemented!("gbdt helper")
    }

    /// The finished tree (None while nodes are open).
    pub fn finish(&self) -> Option<Tree> {
        unimplemented!("gbdt helper")
    }
}

/// The features tree `index` may split on: `max(1, round(rate · n))` of `0..n`, drawn from the
/// job's seed and the tree index (every party computes the same sample), ascending.
pub fn column_sample(seed: u64, index: u64, n: usize, rate: f64) -> Vec<usize> {
    let _ = (seed, index, n, rate);
    unimplemented!("gbdt helper")
}
