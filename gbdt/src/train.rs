//! A bank's side of boosting, and the in-process reference.
//!
//! [`LocalBooster`] holds one bank's binned training rows and labels, the margins of the
//! committed trees, and computes a level's histograms for a [`GrowingTree`] (gradients of the
//! logistic loss `g = w·(p − y)`, `h = w·p(1 − p)`, `w` the positive-class weight on positives;
//! rows outside the tree's row sample contribute nothing). [`train_in_process`] grows an ensemble
//! from several boosters whose histograms are summed in memory: what the federation computes,
//! without the network.

use std::borrow::Cow;

use confide_datasets::{DatasetSchema, RawTable};
use ndarray::{Array2, ArrayView1};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::grow::{column_sample, stream_seed};
use crate::{FeatureSet, GbdtError, GbdtModel, GrowParams, GrowingTree, hist};

/// XGBoost's floor on the logistic hessian (`kRtEps`-style guard against p(1 − p) = 0).
const MIN_HESS: f64 = 1e-16;

/// Resolution of the gradients and hessians a bank sums: 2⁻¹⁶, secure aggregation's resolution
/// for histograms (`Encoding::Counts` in the coordinator). Histogram sums stay below 2³⁶, so
/// sums of multiples of it are exact in `f64`.
pub const GRID: f64 = 1.0 / 65_536.0;

fn on_grid(x: f64) -> f64 {
    (x / GRID).round() * GRID
}

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
    /// Rows past the shorter of `raw` and `labels` take no part.
    pub fn new(set: &FeatureSet, raw: Array2<f32>, labels: Vec<f32>, base_margin: f32, pos_weight: f64) -> Self {
        let slots = set.bin_matrix(raw.view());
        let margins = vec![f64::from(base_margin); raw.nrows()];
        Self { raw, slots, labels, margins, trees_applied: 0, pos_weight }
    }

    /// A booster over a loaded table's rows and labels ([`FeatureSet::raw_matrix`]), base margin 0.
    pub fn from_table(set: &FeatureSet, table: &RawTable, schema: &DatasetSchema, pos_weight: f64) -> Result<Self, GbdtError> {
        let raw = set.raw_matrix(table, schema)?;
        Ok(Self::new(set, raw, table.labels.clone(), 0.0, pos_weight))
    }

    /// Rows taking part (raw rows with a label).
    pub fn rows(&self) -> usize {
        self.raw.nrows().min(self.labels.len()).min(self.margins.len())
    }

    /// Brings the margins up to date with `model`'s trees (adds the ones not applied yet; a
    /// model with fewer trees than applied recomputes from scratch).
    pub fn sync(&mut self, model: &GbdtModel) {
        if model.trees.len() < self.trees_applied {
            self.margins.iter_mut().for_each(|m| *m = f64::from(model.base_margin));
            self.trees_applied = 0;
        }
        let new = &model.trees[self.trees_applied..];
        if new.is_empty() {
            return;
        }
        for (r, m) in self.margins.iter_mut().enumerate().take(self.raw.nrows()) {
            let row = row_slice(self.raw.row(r));
            // Tree by tree, in order, like `GbdtModel::predict_margins`: the same f64 sums.
            for tree in new {
                *m += f64::from(tree.predict(&row));
            }
        }
        self.trees_applied = model.trees.len();
    }

    /// The logistic loss's gradient and hessian of every row at the current margins.
    ///
    /// Each is rounded to a multiple of [`GRID`]: every sum of them is then exact in `f64`
    /// whatever the order, so the banks' histograms add up to the pooled rows' bit for bit, and
    /// secure aggregation's fixed point (the same resolution) carries them without rounding —
    /// the federation grows exactly the trees the pooled rows give, ties included.
    pub fn gradients(&self) -> (Vec<f64>, Vec<f64>) {
        let rows = self.rows();
        let mut grad = Vec::with_capacity(rows);
        let mut hess = Vec::with_capacity(rows);
        for (&m, &y) in self.margins.iter().zip(&self.labels).take(rows) {
            let p = 1.0 / (1.0 + (-m).exp());
            let (y, w) = if y > 0.5 { (1.0, self.pos_weight) } else { (0.0, 1.0) };
            grad.push(on_grid(w * (p - y)));
            hess.push(on_grid(w * (p * (1.0 - p)).max(MIN_HESS)));
        }
        (grad, hess)
    }

    /// Which rows tree `tree_index` samples: all with `subsample` ≥ 1, otherwise each row with
    /// probability `subsample` from a stream of (`sample_seed`, tree index), so every level of a
    /// tree sees the same rows.
    pub fn row_sample(&self, tree_index: u64, subsample: f64, sample_seed: u64) -> Vec<bool> {
        let rows = self.rows();
        if subsample >= 1.0 {
            return vec![true; rows];
        }
        let mut rng = ChaCha20Rng::from_seed(stream_seed(b"gbdt.rowsample\0\0", sample_seed, tree_index));
        (0..rows).map(|_| rng.random::<f64>() < subsample).collect()
    }

    /// This bank's histograms for the growing tree's current level. `sample_seed` seeds the
    /// bank's row sample (with `subsample` < 1), a secret of the bank.
    pub fn level_histograms(&self, set: &FeatureSet, tree: &GrowingTree, subsample: f64, sample_seed: u64) -> Vec<f64> {
        let (grad, hess) = self.gradients();
        let sampled = self.row_sample(tree.index, subsample, sample_seed);
        let positions = tree.frontier_positions();
        let node_of_row: Vec<Option<u32>> = sampled
            .iter()
            .enumerate()
            .map(|(r, &s)| if s { tree.route_with(&row_slice(self.slots.row(r)), &positions) } else { None })
            .collect();
        hist::build(&tree.layout(set), self.slots.view(), &grad, &hess, &node_of_row, tree.frontier_len())
    }
}

/// A matrix row as a slice (borrowed when the matrix is in standard layout).
fn row_slice<T: Copy>(row: ArrayView1<'_, T>) -> Cow<'_, [T]> {
    match row.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(row.iter().copied().collect()),
    }
}

/// The row-sample seed of in-process bank `bank` (any fixed, distinct choice: the banks' own
/// secrets in a federation).
fn bank_sample_seed(seed: u64, bank: usize) -> u64 {
    splitmix64(seed ^ splitmix64(bank as u64 + 1))
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
    let mut model = GbdtModel { base_margin: 0.0, features: set.clone(), trees: Vec::new() };
    for bank in banks.iter_mut() {
        // Start every bank from the model's base margin, whatever it applied before.
        bank.margins.iter_mut().for_each(|m| *m = f64::from(model.base_margin));
        bank.trees_applied = 0;
    }
    for index in 0..trees {
        let mut tree = GrowingTree::new(index, column_sample(seed, index, set.len(), colsample_bytree));
        while !tree.is_done() {
            let mut summed = vec![0.0f64; tree.vector_len(set)];
            for (b, bank) in banks.iter().enumerate() {
                let h = bank.level_histograms(set, &tree, subsample, bank_sample_seed(seed, b));
                summed.iter_mut().zip(&h).for_each(|(s, v)| *s += v);
            }
            tree.apply_level(&summed, set, params)?;
        }
        let finished = tree.finish().ok_or_else(|| GbdtError::Model(format!("tree {index} ended with open nodes")))?;
        model.trees.push(finished);
        for bank in banks.iter_mut() {
            bank.sync(&model);
        }
    }
    Ok(model)
}
