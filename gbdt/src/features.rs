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

use std::collections::HashMap;

use confide_datasets::schema::{ColumnSpec, ColumnType};
use confide_datasets::{ColumnData, DatasetSchema, RawTable};
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
    FINE_BINS * numeric_columns(schema).count()
}

/// The feature columns read as raw numbers, in schema order: every feature column that is not
/// categorical (as `confide_datasets::stats` treats them).
pub fn numeric_columns(schema: &DatasetSchema) -> impl Iterator<Item = &ColumnSpec> {
    schema.feature_columns().filter(|c| !matches!(c.kind, ColumnType::Categorical))
}

/// The categorical feature columns, in schema order.
fn categorical_columns(schema: &DatasetSchema) -> impl Iterator<Item = &ColumnSpec> {
    schema.feature_columns().filter(|c| matches!(c.kind, ColumnType::Categorical))
}

/// A numeric column's fine-bin grid: the declared range split into [`FINE_BINS`] equal widths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineGrid {
    /// Lower end of the declared range.
    pub low: f64,
    /// Width of one fine bin.
    pub width: f64,
}

impl FineGrid {
    /// The grid of a column; fails when it has no (valid) declared range.
    pub fn of(col: &ColumnSpec) -> Result<Self, GbdtError> {
        match col.range {
            // A validated schema guarantees finite low < high; a hand-built one may not.
            Some([low, high]) if low.is_finite() && high.is_finite() && low < high => {
                Ok(Self { low, width: (high - low) / FINE_BINS as f64 })
            }
            _ => Err(GbdtError::Unranged(col.name.clone())),
        }
    }

    /// The fine bin of a value; values outside the range fall in the end bins.
    pub fn bin(&self, x: f64) -> usize {
        let b = ((x - self.low) / self.width).floor();
        // `as` saturates (negative → 0), so only the upper end needs clamping.
        (b.max(0.0) as usize).min(FINE_BINS - 1)
    }

    /// The lower edge of fine bin `b` (the upper edge of bin `b − 1`).
    pub fn edge(&self, b: usize) -> f64 {
        self.low + b as f64 * self.width
    }
}

/// This bank's fine histograms of its training rows (numeric columns in schema order, each
/// [`FINE_BINS`] counts over the declared range; missing cells are not counted). Fails on a
/// numeric column without a declared range.
pub fn local_fine_histograms(table: &RawTable, schema: &DatasetSchema) -> Result<Vec<f64>, GbdtError> {
    let by_name = columns_by_name(table);
    let mut out = Vec::with_capacity(fine_histogram_len(schema));
    for col in numeric_columns(schema) {
        let grid = FineGrid::of(col)?;
        let values = numeric_data(&by_name, &col.name)?;
        let mut counts = vec![0.0f64; FINE_BINS];
        for x in values.iter().flatten() {
            counts[grid.bin(*x)] += 1.0;
        }
        out.extend(counts);
    }
    Ok(out)
}

fn columns_by_name(table: &RawTable) -> HashMap<&str, &ColumnData> {
    table.columns.iter().map(|c| (c.name.as_str(), &c.data)).collect()
}

fn numeric_data<'t>(by_name: &HashMap<&str, &'t ColumnData>, name: &str) -> Result<&'t [Option<f64>], GbdtError> {
    match by_name.get(name) {
        Some(ColumnData::Numeric(v)) => Ok(v),
        Some(ColumnData::Categorical(_)) => Err(GbdtError::Data(format!("column `{name}` holds categories, the features expect numbers"))),
        None => Err(GbdtError::Data(format!("the table has no column `{name}`"))),
    }
}

fn categorical_data<'t>(by_name: &HashMap<&str, &'t ColumnData>, name: &str) -> Result<&'t [Option<u32>], GbdtError> {
    match by_name.get(name) {
        Some(ColumnData::Categorical(v)) => Ok(v),
        Some(ColumnData::Numeric(_)) => Err(GbdtError::Data(format!("column `{name}` holds numbers, the features expect categories"))),
        None => Err(GbdtError::Data(format!("the table has no column `{name}`"))),
    }
}

/// Quantile cuts of one column from its summed fine counts (see [`FeatureSet::from_fine_histograms`]).
fn quantile_cuts(grid: &FineGrid, summed: &[f64], max_bin: usize) -> Vec<f32> {
    // Noise added to the sums (a DP job) can make counts negative; a negative count is no row.
    let counts: Vec<f64> = summed.iter().map(|&c| c.max(0.0)).collect();
    let populated: Vec<usize> = (0..counts.len()).filter(|&b| counts[b] > 0.0).collect();
    let (Some(&first), Some(&last)) = (populated.first(), populated.last()) else { return Vec::new() };
    let edges: Vec<usize> = if populated.len() <= max_bin {
        // Few distinct fine bins: every populated fine bin is its own bin.
        populated[1..].to_vec()
    } else {
        let total: f64 = counts.iter().sum();
        let mut edges = Vec::with_capacity(max_bin);
        let (mut below, mut b) = (0.0f64, first);
        for k in 1..max_bin {
            let rank = k as f64 * total / max_bin as f64;
            // The first edge with at least `rank` rows below it.
            while b <= last && below < rank {
                below += counts[b];
                b += 1;
            }
            // Edges at or before the first populated bin, or past the last one's lower edge,
            // would leave a side empty.
            if b > first && b <= last && edges.last() != Some(&b) {
                edges.push(b);
            }
        }
        edges
    };
    let mut cuts: Vec<f32> = Vec::with_capacity(edges.len());
    for e in edges {
        let c = grid.edge(e) as f32;
        // Neighbouring edges can round to one f32; a cut must be strictly above the previous.
        if cuts.last().is_none_or(|&p| c > p) {
            cuts.push(c);
        }
    }
    cuts
}

impl FeatureSet {
    /// The feature space from the federation's summed fine histograms: quantile cuts per
    /// numeric column (at most `max_bin − 1` cuts, fewer where the column has fewer distinct
    /// fine bins), indicators per categorical level. Negative (noised) counts count as 0. A
    /// column with at most `max_bin` populated fine bins gets a cut at the lower edge of every
    /// populated fine bin but the first; otherwise cut `k` is the first fine-bin edge with at
    /// least `k·N/max_bin` of the column's `N` rows below it (k = 1..max_bin−1, deduplicated,
    /// strictly inside the populated range).
    pub fn from_fine_histograms(schema: &DatasetSchema, summed: &[f64], max_bin: usize) -> Result<Self, GbdtError> {
        let expected = fine_histogram_len(schema);
        if summed.len() != expected {
            return Err(GbdtError::Length { what: "summed fine histograms", found: summed.len(), expected });
        }
        if summed.iter().any(|v| !v.is_finite()) {
            return Err(GbdtError::NotFinite);
        }
        let mut features = Vec::new();
        for (col, counts) in numeric_columns(schema).zip(summed.chunks_exact(FINE_BINS)) {
            let grid = FineGrid::of(col)?;
            let cuts = quantile_cuts(&grid, counts, max_bin);
            features.push(TreeFeature { name: col.name.clone(), column: col.name.clone(), kind: FeatureKind::Numeric { cuts } });
        }
        for col in categorical_columns(schema) {
            for (level, name) in col.level_names().iter().enumerate() {
                features.push(TreeFeature {
                    name: format!("{}={name}", col.name),
                    column: col.name.clone(),
                    kind: FeatureKind::Indicator { level: level as u32 },
                });
            }
        }
        Ok(Self { features })
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
        if table.schema_fingerprint != schema.fingerprint() {
            return Err(GbdtError::Data(format!("{} was loaded with another schema than `{}`", table.source, schema.name)));
        }
        let by_name = columns_by_name(table);
        let mut raw = Array2::from_elem((table.rows, self.len()), f32::NAN);
        for (j, feature) in self.features.iter().enumerate() {
            let mut out = raw.column_mut(j);
            match feature.kind {
                FeatureKind::Numeric { .. } => {
                    let values = numeric_data(&by_name, &feature.column)?;
                    check_rows(values.len(), table, &feature.column)?;
                    for (o, v) in out.iter_mut().zip(values) {
                        *o = v.map_or(f32::NAN, |x| x as f32);
                    }
                }
                FeatureKind::Indicator { level } => {
                    let values = categorical_data(&by_name, &feature.column)?;
                    check_rows(values.len(), table, &feature.column)?;
                    for (o, v) in out.iter_mut().zip(values) {
                        *o = v.map_or(f32::NAN, |l| if l == level { 1.0 } else { 0.0 });
                    }
                }
            }
        }
        Ok(raw)
    }

    /// Histogram slots of every cell of a raw matrix ([`TreeFeature::slot_of`]).
    pub fn bin_matrix(&self, raw: ArrayView2<'_, f32>) -> Array2<u16> {
        // A column past the feature set (a malformed matrix) reads as missing.
        Array2::from_shape_fn(raw.dim(), |(r, j)| self.features.get(j).map_or(MISSING_SLOT, |f| f.slot_of(raw[[r, j]])))
    }
}

fn check_rows(found: usize, table: &RawTable, column: &str) -> Result<(), GbdtError> {
    if found == table.rows {
        Ok(())
    } else {
        Err(GbdtError::Data(format!("column `{column}` has {found} values for {} rows", table.rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_datasets::RawColumn;
    use proptest::prelude::*;

    const SCHEMA: &str = r#"
name = "toy"
[target]
column = "y"
positive = "1"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "color"
type = "categorical"
levels = ["red", "green", "blue"]
missing = "impute"
[[columns]]
name = "age"
type = "numeric"
range = [0, 100]
missing = "impute"
[[columns]]
name = "income"
type = "numeric"
range = [-10, 10]
"#;

    fn schema() -> DatasetSchema {
        DatasetSchema::parse(SCHEMA, "toy.toml").expect("schema parses")
    }

    fn table(schema: &DatasetSchema) -> RawTable {
        RawTable {
            source: "toy.csv".into(),
            schema_fingerprint: schema.fingerprint(),
            rows: 4,
            columns: vec![
                RawColumn { name: "color".into(), data: ColumnData::Categorical(vec![Some(0), Some(2), None, Some(1)]) },
                RawColumn { name: "age".into(), data: ColumnData::Numeric(vec![Some(0.0), Some(50.0), None, Some(250.0)]) },
                RawColumn { name: "income".into(), data: ColumnData::Numeric(vec![Some(-10.0), Some(9.999), Some(-30.0), Some(0.0)]) },
            ],
            labels: vec![0.0, 1.0, 0.0, 1.0],
            dropped_rows: 0,
        }
    }

    #[test]
    fn fine_histograms_count_present_values_over_the_declared_range() {
        let s = schema();
        let h = local_fine_histograms(&table(&s), &s).expect("histograms");
        assert_eq!(h.len(), fine_histogram_len(&s));
        assert_eq!(h.len(), 2 * FINE_BINS);
        let (age, income) = h.split_at(FINE_BINS);
        // age: 0 → bin 0, 50 → bin FINE_BINS/2, missing not counted, 250 → last bin.
        assert_eq!(age.iter().sum::<f64>(), 3.0);
        assert_eq!((age[0], age[FINE_BINS / 2], age[FINE_BINS - 1]), (1.0, 1.0, 1.0));
        // income: -10 and -30 in bin 0, 0 in the middle, 9.999 in the last.
        assert_eq!((income[0], income[FINE_BINS / 2], income[FINE_BINS - 1]), (2.0, 1.0, 1.0));
    }

    #[test]
    fn an_unranged_numeric_column_is_named() {
        let mut s = schema();
        s.columns[2].range = None;
        let e = local_fine_histograms(&table(&s), &s).expect_err("unranged");
        assert!(matches!(&e, GbdtError::Unranged(c) if c == "age"), "{e}");
        let e = FeatureSet::from_fine_histograms(&s, &vec![0.0; 2 * FINE_BINS], 16).expect_err("unranged");
        assert!(matches!(&e, GbdtError::Unranged(c) if c == "age"), "{e}");
    }

    #[test]
    fn features_are_numeric_columns_then_one_indicator_per_level() {
        let s = schema();
        let set = FeatureSet::from_fine_histograms(&s, &local_fine_histograms(&table(&s), &s).expect("h"), 256).expect("set");
        let names: Vec<&str> = set.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["age", "income", "color=red", "color=green", "color=blue"]);
        assert_eq!(set.features[3].kind, FeatureKind::Indicator { level: 1 });
        // age has three populated fine bins → two cuts at the lower edges of the upper two.
        assert_eq!(set.features[0].cuts(), &[50.0f32, (100.0 * (FINE_BINS - 1) as f64 / FINE_BINS as f64) as f32]);
        let raw = set.raw_matrix(&table(&s), &s).expect("raw");
        assert_eq!(raw.dim(), (4, 5));
        assert_eq!(raw.row(0).to_vec(), [0.0, -10.0, 1.0, 0.0, 0.0]);
        assert_eq!(raw.row(1).to_vec(), [50.0, 9.999f64 as f32, 0.0, 0.0, 1.0]);
        let r2 = raw.row(2).to_vec();
        assert!(r2[0].is_nan() && r2[2].is_nan() && r2[3].is_nan() && r2[4].is_nan());
        assert_eq!(r2[1], -30.0);
        let slots = set.bin_matrix(raw.view());
        assert_eq!(slots.row(0).to_vec(), [1, 1, 2, 1, 1]);
        assert_eq!(slots.row(2).to_vec(), [MISSING_SLOT, 1, MISSING_SLOT, MISSING_SLOT, MISSING_SLOT]);
        assert_eq!(slots.row(3).to_vec(), [3, 2, 1, 2, 1]);
    }

    #[test]
    fn raw_matrix_refuses_a_table_of_another_schema() {
        let s = schema();
        let set = FeatureSet::from_fine_histograms(&s, &vec![0.0; 2 * FINE_BINS], 16).expect("set");
        let mut t = table(&s);
        t.schema_fingerprint = "other".into();
        assert!(matches!(set.raw_matrix(&t, &s), Err(GbdtError::Data(_))));
    }

    #[test]
    fn summed_histograms_are_checked() {
        let s = schema();
        let e = FeatureSet::from_fine_histograms(&s, &[1.0; 3], 16).expect_err("length");
        assert!(matches!(e, GbdtError::Length { found: 3, expected, .. } if expected == 2 * FINE_BINS));
        let mut h = vec![0.0; 2 * FINE_BINS];
        h[7] = f64::NAN;
        assert!(matches!(FeatureSet::from_fine_histograms(&s, &h, 16), Err(GbdtError::NotFinite)));
        // Negative (noised) counts are no rows: one populated bin, no cut.
        h[7] = -3.0;
        h[100] = 5.0;
        let set = FeatureSet::from_fine_histograms(&s, &h, 16).expect("set");
        assert!(set.features[0].cuts().is_empty());
    }

    #[test]
    fn many_populated_bins_give_quantile_cuts() {
        let s = schema();
        // age uniform over all fine bins: 4 bins → cuts at the quartiles.
        let mut h = vec![1.0; FINE_BINS];
        h.extend(vec![0.0; FINE_BINS]);
        let set = FeatureSet::from_fine_histograms(&s, &h, 4).expect("set");
        assert_eq!(set.features[0].cuts(), &[25.0f32, 50.0, 75.0]);
        assert!(set.features[1].cuts().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// (5) Cuts are strictly increasing, at most max_bin − 1, inside the populated range, and every
        /// value of one populated fine bin lands in one bin.
        #[test]
        fn cuts_are_ordered_and_respect_fine_bins(
            populated in proptest::collection::btree_map(0usize..FINE_BINS, 1u32..50, 0..400),
            noise in proptest::collection::vec((0usize..FINE_BINS, -5.0f64..0.0), 0..20),
            max_bin in 2usize..300,
        ) {
            let s = schema();
            let mut h = vec![0.0; 2 * FINE_BINS];
            for (&b, &c) in &populated {
                h[b] = f64::from(c);
            }
            for &(b, n) in &noise {
                if !populated.contains_key(&b) {
                    h[b] = n;
                }
            }
            let set = FeatureSet::from_fine_histograms(&s, &h, max_bin).expect("set");
            let cuts = set.features[0].cuts();
            prop_assert!(cuts.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(cuts.len() < max_bin);
            let grid = FineGrid::of(&s.columns[2]).expect("grid");
            if populated.len() <= 1 {
                prop_assert!(cuts.is_empty());
            } else {
                prop_assert!(!cuts.is_empty());
                let first = grid.edge(*populated.keys().next().expect("first")) as f32;
                let last = grid.edge(*populated.keys().last().expect("last")) as f32;
                prop_assert!(cuts[0] > first && cuts[cuts.len() - 1] <= last);
            }
            let f = &set.features[0];
            let mut bins = Vec::new();
            for &b in populated.keys() {
                let low = f.slot_of(grid.edge(b) as f32);
                prop_assert_eq!(low, f.slot_of((grid.edge(b) + 0.5 * grid.width) as f32));
                prop_assert_eq!(low, f.slot_of((grid.edge(b) + 0.99 * grid.width) as f32));
                bins.push(low);
            }
            // Few populated fine bins: each is its own bin.
            if populated.len() <= max_bin {
                prop_assert!(bins.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
