//! The layout of one level's histogram vector and building it from a bank's rows.
//!
//! A level's vector is, for every open node of the tree (frontier order), for every sampled
//! feature (ascending feature index), for every slot of that feature (missing first, then the
//! bins), the triple `[Σ gradient, Σ hessian, rows]`. Everything in it is a sum over rows, so
//! the banks' vectors add up to the federation's.

use ndarray::ArrayView2;

use crate::FeatureSet;

/// Values per histogram slot: Σ gradient, Σ hessian, rows.
pub const STATS: usize = 3;

/// Where each sampled feature's slots sit in one node's block.
#[derive(Debug, Clone, PartialEq)]
pub struct HistLayout {
    /// Sampled feature indices, ascending.
    pub features: Vec<usize>,
    /// Offset of each sampled feature's first slot (in slots) within a node's block.
    pub offsets: Vec<usize>,
    /// Slots per sampled feature.
    pub slots: Vec<usize>,
    /// Values per node (`STATS ×` total slots).
    pub node_len: usize,
}

impl HistLayout {
    /// The layout for `features` (ascending indices into `set`).
    pub fn new(set: &FeatureSet, features: &[usize]) -> Self {
        let _ = (set, features);
        unimplemented!("gbdt helper")
    }

    /// Length of a level's vector with `nodes` open nodes.
    pub fn vector_len(&self, nodes: usize) -> usize {
        self.node_len * nodes
    }
}

/// One bank's histograms for a level: `slots` is the bank's binned matrix
/// ([`FeatureSet::bin_matrix`]), `node_of_row[r]` the frontier position of row `r` (None when the
/// row is not in the tree's sample or sits in a closed node), `grad`/`hess` per row.
pub fn build(layout: &HistLayout, slots: ArrayView2<'_, u16>, grad: &[f64], hess: &[f64], node_of_row: &[Option<u32>], nodes: usize) -> Vec<f64> {
    let _ = (layout, slots, grad, hess, node_of_row, nodes);
    unimplemented!("gbdt helper")
}
