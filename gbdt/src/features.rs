//! The trees' feature space and federated binning.
//!
//! Features, in order: every numeric feature column (raw value; missing = NaN), then, for every
//! categorical feature column, one indicator per schema level (1.0 when the row has that level,
//! 0.0 when it has another, NaN when the cell is missing). Trees compare raw `f32` values with
//! XGBoost's rule: `x < threshold` goes left, NaN takes the node's default direction, so the
//! exported models score exactly like the banks do.
//!
//! Binning: a numeric feature's `cuts` are ascending `f32` thresholds; its bin of `x` is the
//! number of cuts `c ≤ x` (0..=cuts.len()), and bin index 0 of a histogram is kept for missing
//! values, so a feature has `cuts.len() + 2` histogram slots. An indicator has the single cut
//! 0.5. Numeric cuts are quantiles of the federation's summed fine histograms: each bank counts
//! its values in [`FINE_BINS`] equal-width bins over the column's declared `range` (values
//! outside it fall in the end bins), and [`FeatureSet::from_fine_histograms`] picks up to
//! `max_bin − 1` cuts at fine-bin edges, so no cut is one bank's value.

use confide_datasets::{DatasetSchema, RawTable};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::GbdtError;

/// Fine bins per numeric column in the binning statistics.
pub const FINE_BINS: usize = 8192;

/// Histogram slot of missing values (slot `b + 1` holds bin `b`).
pub const MISSING_SLOT: u16 = 0;

/// What a feature is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureKind {
    /// A numeric column's raw value.
    Numeric {
        /// Ascending thresholds (bin of `x` = number of cuts ≤ `x`).
        cuts: Vec<f32>,
    },
    /// 1.0 when a categorical column has level `level` (index into the schema's levels), 0.0
    /// for another level, NaN when missing. One cut: 0.5.
    Indicator {
        /// Level index.
        level: u32,
    },
}

/// One feature trees split on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeFeature {
    /// Display name: the column's name (numeric) or `column=level` (indicator).
    pub name: String,
    /// The schema feature column it reads.
    pub column: String,
    /// Numeric or indicator.
    pub kind: FeatureKind,
}

impl TreeFeature {
    /// The feature's thresholds (an indicator's is `[0.5]`).
    pub fn cuts(&self) -> &[f32] {
        match &self.kind {
            FeatureKind::Numeric { cuts } => cuts,
            FeatureKind::Indicator { .. } => &[0.5],
        }
    }

    /// Histogram slots: missing, then one per bin (`cuts().len() + 2`).
    pub fn slots(&self) -> usize {
        self.cuts().len() + 2
    }

    /// The histogram slot of a value (NaN → [`MISSING_SLOT`]).
    pub fn slot_of(&self, x: f32) -> u16 {
        if x.is_nan() {
            return MISSING_SLOT;
        }
        (self.cuts().partition_point(|&c| c <= x) + 1) as u16
    }
}

/// The federation's feature space: agreed once per job, stored in the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSet {
    /// Features in order (see the module docs).
    pub features: Vec<TreeFeature>,
}

/// Length of a bank's binning statistics: [`FINE_BINS`] per numeric feature column.
pub fn fine_histogram_len(schema: &DatasetSchema) -> usize {
    let _ = schema;
    unimplemented!("gbdt helper")
}

/// This bank's fine histograms of its training rows (numeric columns in schema order, each
/// [`FINE_BINS`] counts over the declared range; missing cells are not counted). Fails on a
/// numeric column without a declared range.
pub fn local_fine_histograms(table: &RawTable, schema: &DatasetSchema) -> Result<Vec<f64>, GbdtError> {
    let _ = (table, schema);
    unimplemented!("gbdt helper")
}

impl FeatureSet {
    /// The feature space from the federation's summed fine histograms: quantile cuts per
    /// numeric column (at most `max_bin − 1` cuts, fewer where the column has fewer distinct
    /// fine bins), indicators per categorical level.
    pub fn from_fine_histograms(schema: &DatasetSchema, summed: &[f64], max_bin: usize) -> Result<Self, GbdtError> {
        let _ = (schema, summed, max_bin);
        unimplemented!("gbdt helper")
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// True when there are no features.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The rows of `table` (loaded with `schema`) as the trees see them: rows × features,
    /// NaN where missing.
    pub fn raw_matrix(&self, table: &RawTable, schema: &DatasetSchema) -> Result<Array2<f32>, GbdtError> {
        let _ = (table, schema);
        unimplemented!("gbdt helper")
    }

    /// Histogram slots of every cell of a raw matrix ([`TreeFeature::slot_of`]).
    pub fn bin_matrix(&self, raw: ArrayView2<'_, f32>) -> Array2<u16> {
        let _ = raw;
        unimplemented!("gbdt helper")
    }
}
