//! Federated preprocessing: additive per-institution statistics, the [`Preprocessing`] derived
//! from their sum, and the encoding of a [`RawTable`] into model inputs.
//!
//! Each institution computes [`local_stats`], a fixed-length vector of counts and sums. Vectors
//! from different institutions are combined by element-wise addition only (which is what secure
//! aggregation provides), so the coordinator learns federation-wide totals and never a single
//! institution's figures or rows. [`Preprocessing::from_aggregate`] turns the total into means,
//! standard deviations and modes; every worker then encodes its rows identically with
//! [`Preprocessing::encode`].
//!
//! # Layout of the statistics vector
//!
//! ```text
//! [0]                      rows
//! per feature column, in schema order:
//!   numeric     (3 slots)  non-missing count, sum, sum of squares
//!   categorical (L+1)      count of level 0, ..., count of level L-1, missing count
//! ```
//!
//! [`stats_names`] gives a label for every slot. The total decoded from fixed point may carry
//! small rounding errors, so counts are rounded to integers and tiny negative variances clamped.
//! Magnitudes: a sum of squares grows with rows × value²; secure aggregation's fixed-point range
//! must cover it (for example 30,000 rows of values near 10⁶ give about 3·10¹⁶).

use confide_core::record_noise::Sensitivity;
use serde::{Deserialize, Serialize};

use crate::schema::{ColumnType, DatasetSchema};
use crate::table::{ColumnData, RawTable};

/// Errors deriving or applying preprocessing.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum StatsError {
    /// The aggregate vector's length does not match the schema.
    #[error("statistics vector has {found} values, schema `{schema}` needs {expected}")]
    Length {
        /// Schema name.
        schema: String,
        /// Values given.
        found: usize,
        /// Values needed.
        expected: usize,
    },
    /// An aggregate value is NaN or infinite.
    #[error("statistic {index} ({name}) is not finite: {value}")]
    NotFinite {
        /// Slot.
        index: usize,
        /// Slot label.
        name: String,
        /// Value.
        value: f64,
    },
    /// A count is clearly negative, so the aggregate is corrupt.
    #[error("statistic {index} ({name}) is a negative count: {value}")]
    NegativeCount {
        /// Slot.
        index: usize,
        /// Slot label.
        name: String,
        /// Value.
        value: f64,
    },
    /// The federation holds no rows at all.
    #[error("the aggregated statistics cover no rows")]
    NoRows,
    /// A feature column has no non-missing value anywhere in the federation.
    #[error("column `{column}` has no non-missing value across the federation")]
    NoValues {
        /// Column.
        column: String,
    },
    /// A table was loaded with another schema than the preprocessing was built for.
    #[error(
        "table {source_name} was loaded with schema {found}, but the preprocessing is for schema {expected}"
    )]
    SchemaMismatch {
        /// Table origin.
        source_name: String,
        /// Fingerprint of the table's schema.
        found: String,
        /// Fingerprint the preprocessing expects.
        expected: String,
    },
    /// A table's columns do not match the preprocessing (same fingerprint but altered table).
    #[error("table {source_name}: column {index} does not match the preprocessing ({detail})")]
    ColumnMismatch {
        /// Table origin.
        source_name: String,
        /// Feature column index.
        index: usize,
        /// What differs.
        detail: String,
    },
    /// Differentially private statistics need a declared range for every numeric feature.
    #[error("column `{column}` has no `range = [low, high]` in schema `{schema}`: differentially private statistics clip numeric values into a declared range")]
    NoRange {
        /// Schema name.
        schema: String,
        /// The numeric feature column without a range.
        column: String,
    },
}

/// Length of the statistics vector for `schema`.
pub fn stats_len(schema: &DatasetSchema) -> usize {
    if schema.recommendation.is_some() {
        return crate::ratings::RATINGS_STATS_LEN;
    }
    1 + schema
        .feature_columns()
        .map(|c| match c.kind {
            ColumnType::Categorical => c.level_names().len() + 1,
            _ => 3,
        })
        .sum::<usize>()
}

/// A label for each slot of the statistics vector (`rows`, `tenure.count`, `tenure.sum`,
/// `tenure.sum_sq`, `Contract=One year.count`, `Contract.missing`, ...).
pub fn stats_names(schema: &DatasetSchema) -> Vec<String> {
    if schema.recommendation.is_some() {
        return ["ratings", "rating.sum", "rating.sum_sq", "users"].map(String::from).to_vec();
    }
    let mut names = vec!["rows".to_string()];
    for c in schema.feature_columns() {
        match c.kind {
            ColumnType::Categorical => {
                names.extend(c.level_names().iter().map(|l| format!("{}={l}.count", c.name)));
                names.push(format!("{}.missing", c.name));
            }
            _ => {
                for suffix in ["count", "sum", "sum_sq"] {
                    names.push(format!("{}.{suffix}", c.name));
                }
            }
        }
    }
    names
}

/// This institution's additive statistics (see the module documentation for the layout).
///
/// The table must have been loaded with `schema`; a table from another schema yields a vector
/// whose [`Preprocessing::from_aggregate`] fails or, when lengths happen to agree, is caught by
/// [`Preprocessing::encode`]'s fingerprint check.
pub fn local_stats(table: &RawTable, schema: &DatasetSchema) -> Vec<f64> {
    let mut out = Vec::with_capacity(stats_len(schema));
    out.push(table.rows as f64);
    for (col, spec) in table.columns.iter().zip(schema.feature_columns()) {
        match &col.data {
            ColumnData::Numeric(values) => {
                let (mut n, mut sum, mut sq) = (0.0f64, 0.0f64, 0.0f64);
                for x in values.iter().flatten() {
                    n += 1.0;
                    sum += x;
                    sq += x * x;
                }
                out.extend([n, sum, sq]);
            }
            ColumnData::Categorical(values) => {
                let levels = spec.level_names().len();
                let mut counts = vec![0.0f64; levels + 1];
                for v in values {
                    let slot = v.map_or(levels, |i| (i as usize).min(levels));
                    counts[slot] += 1.0;
                }
                out.extend(counts);
            }
        }
    }
    out
}

/// The first numeric feature of `schema` without a declared `range` (a DP job is refused on it).
pub fn first_unranged_column(schema: &DatasetSchema) -> Option<&str> {
    if schema.recommendation.is_some() {
        return None;
    }
    schema.feature_columns().find(|c| c.kind == ColumnType::Numeric && c.range.is_none()).map(|c| c.name.as_str())
}

/// How far one row can move each slot of `schema`'s statistics vector, for differential
/// privacy: 1 for counts, max(|low|, |high|) for a numeric sum, its square for a sum of squares;
/// a row touches the row count, three slots per numeric feature and one per categorical. Values
/// are clipped into the declared ranges first ([`clipped_local_stats`]); an error names the
/// first numeric feature without one. See [`confide_core::record_noise`] for the noise.
pub fn stats_sensitivity(schema: &DatasetSchema) -> Result<Sensitivity, StatsError> {
    if let Some(column) = first_unranged_column(schema) {
        return Err(StatsError::NoRange { schema: schema.name.clone(), column: column.to_string() });
    }
    let mut per_slot = vec![1.0];
    let mut slots_per_row = 1;
    for c in schema.feature_columns() {
        match c.kind {
            ColumnType::Categorical => {
                per_slot.extend(std::iter::repeat_n(1.0, c.level_names().len() + 1));
                slots_per_row += 1;
            }
            _ => {
                let [low, high] = c.range.unwrap_or([0.0, 0.0]);
                let m = low.abs().max(high.abs()).max(f64::MIN_POSITIVE);
                per_slot.extend([1.0, m, m * m]);
                slots_per_row += 3;
            }
        }
    }
    Ok(Sensitivity { per_slot, slots_per_row })
}

/// [`local_stats`] with every numeric value clipped into its column's declared range, so one
/// row's effect is bounded by [`stats_sensitivity`]; an error naming a numeric feature without one.
pub fn clipped_local_stats(table: &RawTable, schema: &DatasetSchema) -> Result<Vec<f64>, StatsError> {
    stats_sensitivity(schema)?;
    let mut clipped = table.clone();
    for (col, spec) in clipped.columns.iter_mut().zip(schema.feature_columns()) {
        if let (ColumnData::Numeric(values), Some([low, high])) = (&mut col.data, spec.range) {
            for x in values.iter_mut().flatten() {
                *x = x.clamp(low, high);
            }
        }
    }
    Ok(local_stats(&clipped, schema))
}

/// How one feature column is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnTransform {
    /// `(x - mean) / std`; a missing cell becomes 0 (the mean).
    Numeric {
        /// Column name.
        name: String,
        /// Federated mean.
        mean: f64,
        /// Federated population standard deviation (1 when the column is constant).
        std: f64,
    },
    /// One-hot over `levels`; a missing cell takes the `mode` level.
    Categorical {
        /// Column name.
        name: String,
        /// Vocabulary, in one-hot order.
        levels: Vec<String>,
        /// Index of the most frequent level across the federation (lowest index on ties).
        mode: u32,
    },
}

impl ColumnTransform {
    /// Column name.
    pub fn name(&self) -> &str {
        match self {
            ColumnTransform::Numeric { name, .. } | ColumnTransform::Categorical { name, .. } => {
                name
            }
        }
    }

    /// Number of encoded inputs.
    pub fn width(&self) -> usize {
        match self {
            ColumnTransform::Numeric { .. } => 1,
            ColumnTransform::Categorical { levels, .. } => levels.len(),
        }
    }
}

/// Federation-wide preprocessing, derived from aggregated statistics; stored by the coordinator
/// (as JSON) and shipped to every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Fingerprint of the schema the statistics were computed with.
    pub schema_fingerprint: String,
    /// Total rows across the federation.
    pub rows: u64,
    /// One transform per feature column, in schema order.
    pub columns: Vec<ColumnTransform>,
    /// Recommendation datasets: the federation's rating statistics, the shared catalogue and
    /// the evaluation protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<RecommendationPrep>,
}

/// What every institution needs to train and evaluate a recommendation model identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendationPrep {
    /// Mean rating across the federation (the global bias starts here).
    pub mean_rating: f64,
    /// Standard deviation of ratings across the federation.
    pub rating_std: f64,
    /// Users across the federation (each counted at the one institution holding them).
    pub users: u64,
    /// Catalogue item ids, in model row order.
    pub items: Vec<String>,
    /// Held-out ratings at or above this are ranked for HR@k / NDCG@k.
    pub relevant_from: f64,
    /// Sampled unrated items each relevant held-out item is ranked against.
    pub ranking_negatives: usize,
    /// Cut-off k of HR@k and NDCG@k.
    pub top_k: usize,
    /// Seed of the ranking negatives (with the user id: the same per user on every run).
    pub eval_seed: u64,
    /// What the model learns from; rating error is only reported for explicit ratings.
    #[serde(default)]
    pub feedback: confide_core::job::Feedback,
}

/// Encoded model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Row-major `rows × dim` features.
    pub features: Vec<f32>,
    /// One label per row (1.0 positive).
    pub labels: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Features per row.
    pub dim: usize,
}

/// A count slot: rounded to the nearest integer; clearly negative values are corrupt.
fn count_at(summed: &[f64], index: usize, names: &[String]) -> Result<f64, StatsError> {
    let value = summed[index];
    if value < -0.5 {
        return Err(StatsError::NegativeCount { index, name: names[index].clone(), value });
    }
    Ok(value.round().max(0.0))
}

/// A noisy numeric std is at least (high − low)/this, so an encoded in-range value stays within
/// ±this of 0 whatever the noise did to the variance.
pub const NOISY_STD_FLOOR_DIVISOR: f64 = 16.0;

impl Preprocessing {
    /// Derives means, standard deviations and modes from the federation-wide sum of
    /// [`local_stats`] vectors.
    pub fn from_aggregate(schema: &DatasetSchema, summed: &[f64]) -> Result<Self, StatsError> {
        let expected = stats_len(schema);
        if let Some(rec) = &schema.recommendation {
            if summed.len() != expected {
                return Err(StatsError::Length { schema: schema.name.clone(), found: summed.len(), expected });
            }
            let names = stats_names(schema);
            if let Some((index, &value)) = summed.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(StatsError::NotFinite { index, name: names[index].clone(), value });
            }
            let ratings = count_at(summed, 0, &names)?;
            let users = count_at(summed, 3, &names)?;
            if ratings < 1.0 {
                return Err(StatsError::NoRows);
            }
            let mean = summed[1] / ratings;
            let std = (summed[2] / ratings - mean * mean).max(0.0).sqrt();
            return Ok(Preprocessing {
                schema_fingerprint: schema.fingerprint(),
                rows: ratings as u64,
                columns: Vec::new(),
                recommendation: Some(RecommendationPrep {
                    mean_rating: mean.clamp(rec.min_rating, rec.max_rating),
                    rating_std: std,
                    users: users as u64,
                    items: Vec::new(),
                    relevant_from: rec.relevant_from,
                    ranking_negatives: 99,
                    top_k: 10,
                    eval_seed: 0,
                    feedback: confide_core::job::Feedback::Explicit,
                }),
            });
        }
        if summed.len() != expected {
            return Err(StatsError::Length {
                schema: schema.name.clone(),
                found: summed.len(),
                expected,
            });
        }
        let names = stats_names(schema);
        if let Some((index, &value)) = summed.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StatsError::NotFinite { index, name: names[index].clone(), value });
        }
        let rows = count_at(summed, 0, &names)?;
        if rows < 1.0 {
            return Err(StatsError::NoRows);
        }
        let mut columns = Vec::new();
        let mut at = 1usize;
        for col in schema.feature_columns() {
            let no_values = || StatsError::NoValues { column: col.name.clone() };
            match col.kind {
                ColumnType::Categorical => {
                    let levels = col.level_names().to_vec();
                    let mut best: Option<(u32, f64)> = None;
                    for (i, idx) in (at..at + levels.len()).enumerate() {
                        let n = count_at(summed, idx, &names)?;
                        if n > 0.0 && best.is_none_or(|(_, m)| n > m) {
                            best = Some((i as u32, n));
                        }
                    }
                    count_at(summed, at + levels.len(), &names)?;
                    at += levels.len() + 1;
                    let (mode, _) = best.ok_or_else(no_values)?;
                    columns.push(ColumnTransform::Categorical {
                        name: col.name.clone(),
                        levels,
                        mode,
                    });
                }
                _ => {
                    let n = count_at(summed, at, &names)?;
                    let (sum, sum_sq) = (summed[at + 1], summed[at + 2]);
                    at += 3;
                    if n < 1.0 {
                        return Err(no_values());
                    }
                    let mean = sum / n;
                    let var = (sum_sq / n - mean * mean).max(0.0);
                    let std = var.sqrt();
                    // A constant column (up to fixed-point noise) is centred but not scaled.
                    let std = if std > 1e-8 * mean.abs().max(1.0) { std } else { 1.0 };
                    columns.push(ColumnTransform::Numeric { name: col.name.clone(), mean, std });
                }
            }
        }
        Ok(Preprocessing { schema_fingerprint: schema.fingerprint(), rows: rows as u64, columns, recommendation: None })
    }

    /// [`Self::from_aggregate`] for a sum that carries differential-privacy noise: counts are
    /// clamped at zero rather than refused, and a numeric column's mean is clamped into its
    /// declared range (noise can push a small column's mean outside it). Its std is kept within
    /// [(high − low)/[`NOISY_STD_FLOOR_DIVISOR`], high − low]: the sum of squares carries noise
    /// scaled by max(|low|, |high|)², which for a wide declared range can swamp the true value and
    /// leave a variance near or below zero; unfloored, encoded values would then be raw units
    /// (a std of 1) and training diverges.
    pub fn from_noisy_aggregate(schema: &DatasetSchema, summed: &[f64]) -> Result<Self, StatsError> {
        let sensitivity = stats_sensitivity(schema)?;
        if summed.len() != sensitivity.per_slot.len() {
            return Err(StatsError::Length { schema: schema.name.clone(), found: summed.len(), expected: sensitivity.per_slot.len() });
        }
        let mut clamped = summed.to_vec();
        // The least each slot may be after noise: counts 0; a numeric column's value count 1, so a
        // small bank's noise cannot leave a column "without values" (its mean is then clamped
        // into the range below).
        let mut floor = vec![Some(0.0)];
        for c in schema.feature_columns() {
            match c.kind {
                ColumnType::Categorical => floor.extend(std::iter::repeat_n(Some(0.0), c.level_names().len() + 1)),
                _ => floor.extend([Some(1.0), None, None]),
            }
        }
        for (v, floor) in clamped.iter_mut().zip(&floor) {
            if let (Some(f), true) = (floor, v.is_finite()) {
                *v = v.max(*f);
            }
        }
        let mut prep = Self::from_aggregate(schema, &clamped)?;
        for (transform, spec) in prep.columns.iter_mut().zip(schema.feature_columns()) {
            if let (ColumnTransform::Numeric { mean, std, .. }, Some([low, high])) = (transform, spec.range) {
                *mean = mean.clamp(low, high);
                *std = std.min(high - low).max((high - low) / NOISY_STD_FLOOR_DIVISOR);
            }
        }
        Ok(prep)
    }

    /// Width of each encoded row; for recommendation datasets, the number of catalogue items
    /// (what the model's item side is sized by).
    pub fn input_dim(&self) -> usize {
        match &self.recommendation {
            Some(rec) => rec.items.len(),
            None => self.columns.iter().map(ColumnTransform::width).sum(),
        }
    }

    /// Name of each encoded input (`tenure`, `Contract=Month-to-month`, ...), as
    /// [`DatasetSchema::feature_names`] gives for the schema these statistics came from.
    pub fn feature_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .flat_map(|c| match c {
                ColumnTransform::Numeric { name, .. } => vec![name.clone()],
                ColumnTransform::Categorical { name, levels, .. } => {
                    levels.iter().map(|l| format!("{name}={l}")).collect()
                }
            })
            .collect()
    }

    /// Encodes a table: standardised numerics (missing → 0) and one-hot categoricals
    /// (missing → mode), in schema order.
    pub fn encode(&self, table: &RawTable) -> Result<Encoded, StatsError> {
        if table.schema_fingerprint != self.schema_fingerprint {
            return Err(StatsError::SchemaMismatch {
                source_name: table.source.clone(),
                found: table.schema_fingerprint.clone(),
                expected: self.schema_fingerprint.clone(),
            });
        }
        let mismatch = |index: usize, detail: String| StatsError::ColumnMismatch {
            source_name: table.source.clone(),
            index,
            detail,
        };
        if table.columns.len() != self.columns.len() {
            return Err(mismatch(
                self.columns.len().min(table.columns.len()),
                format!(
                    "table has {} feature columns, expected {}",
                    table.columns.len(),
                    self.columns.len()
                ),
            ));
        }
        let (rows, dim) = (table.rows, self.input_dim());
        let mut features = vec![0.0f32; rows * dim];
        let mut offset = 0usize;
        for (index, (transform, column)) in self.columns.iter().zip(&table.columns).enumerate() {
            if transform.name() != column.name || column.data.len() != rows {
                return Err(mismatch(
                    index,
                    format!("column `{}` with {} rows", column.name, column.data.len()),
                ));
            }
            match (transform, &column.data) {
                (ColumnTransform::Numeric { mean, std, .. }, ColumnData::Numeric(values)) => {
                    for (r, x) in values.iter().enumerate() {
                        features[r * dim + offset] = x.map_or(0.0, |x| ((x - mean) / std) as f32);
                    }
                }
                (
                    ColumnTransform::Categorical { levels, mode, .. },
                    ColumnData::Categorical(values),
                ) => {
                    let width = levels.len();
                    for (r, v) in values.iter().enumerate() {
                        let level = v.unwrap_or(*mode) as usize;
                        if level >= width {
                            return Err(mismatch(index, format!("level index {level} ≥ {width}")));
                        }
                        features[r * dim + offset + level] = 1.0;
                    }
                }
                _ => {
                    return Err(mismatch(
                        index,
                        format!("column `{}` has another type", column.name),
                    ));
                }
            }
            offset += transform.width();
        }
        Ok(Encoded { features, labels: table.labels.clone(), rows, dim })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::load_csv_from_reader;

    const SCHEMA: &str = r#"
name = "s"
missing = "impute"
[target]
column = "y"
positive = "1"
[[columns]]
name = "x"
type = "numeric"
[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b", "c"]
[[columns]]
name = "k"
type = "numeric"
"#;

    fn schema() -> DatasetSchema {
        DatasetSchema::parse(SCHEMA, "s.toml").expect("valid")
    }

    fn table(body: &str) -> RawTable {
        load_csv_from_reader(format!("x,c,k,y\n{body}").as_bytes(), "t.csv", &schema())
            .expect("loads")
    }

    const A: &str = "1,a,5,1\n2,b,5,0\n,c,5,0\n";
    const B: &str = "4,b,5,1\n5,,5,0\n";

    #[test]
    fn layout_and_names_agree() {
        let s = schema();
        assert_eq!(stats_len(&s), 1 + 3 + 4 + 3);
        assert_eq!(stats_names(&s).len(), stats_len(&s));
        assert_eq!(stats_names(&s)[4], "c=a.count");
        let v = local_stats(&table(A), &s);
        assert_eq!(v, [3.0, 2.0, 3.0, 5.0, 1.0, 1.0, 1.0, 0.0, 3.0, 15.0, 75.0]);
    }

    #[test]
    fn dp_statistics_clip_into_declared_ranges_and_bound_one_rows_effect() {
        // Without ranges, DP statistics are refused naming the first numeric column.
        assert_eq!(first_unranged_column(&schema()), Some("x"));
        assert!(matches!(stats_sensitivity(&schema()), Err(StatsError::NoRange { column, .. }) if column == "x"));
        let ranged = SCHEMA.replacen("name = \"x\"\ntype = \"numeric\"", "name = \"x\"\ntype = \"numeric\"\nrange = [0, 3]", 1)
            .replacen("name = \"k\"\ntype = \"numeric\"", "name = \"k\"\ntype = \"numeric\"\nrange = [-1, 2]", 1);
        let s = DatasetSchema::parse(&ranged, "s.toml").expect("ranged schema");
        let sens = stats_sensitivity(&s).expect("ranges declared");
        assert_eq!(sens.per_slot, [1.0, 1.0, 3.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0]);
        assert_eq!(sens.slots_per_row, 1 + 3 + 1 + 3);
        let load = |body: &str| load_csv_from_reader(format!("x,c,k,y\n{body}").as_bytes(), "t.csv", &s).expect("loads");
        // x = 5 is clipped to 3 and k = 5 to 2.
        let v = clipped_local_stats(&load(A), &s).expect("clipped");
        assert_eq!(v, [3.0, 2.0, 3.0, 5.0, 1.0, 1.0, 1.0, 0.0, 3.0, 6.0, 12.0]);
        // Adding any one row moves every slot by at most its bound.
        for row in ["3,a,2,1\n", ",,,0\n", "100,c,-100,1\n"] {
            let more = clipped_local_stats(&load(&format!("{A}{row}")), &s).expect("clipped");
            let moved: Vec<f64> = more.iter().zip(&v).map(|(a, b)| (a - b).abs()).collect();
            assert!(moved.iter().zip(&sens.per_slot).all(|(m, b)| m <= b), "{row}: {moved:?}");
            assert!(moved.iter().filter(|m| **m > 0.0).count() <= sens.slots_per_row);
        }
        // A noisy sum with negative counts still gives a preprocessing, means within the ranges.
        let mut noisy = v.clone();
        noisy[7] = -2.0;
        noisy[2] = 50.0;
        let prep = Preprocessing::from_noisy_aggregate(&s, &noisy).expect("noisy sum");
        assert!(matches!(prep.columns[0], ColumnTransform::Numeric { mean, .. } if mean == 3.0));
        assert!(Preprocessing::from_aggregate(&s, &noisy).is_err(), "the exact path refuses a negative count");
    }

    #[test]
    fn stats_add_across_institutions() {
        let s = schema();
        let (a, b) = (local_stats(&table(A), &s), local_stats(&table(B), &s));
        let union = local_stats(&table(&format!("{A}{B}")), &s);
        let summed: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(summed, union);
    }

    #[test]
    fn preprocessing_from_aggregate_and_encode() {
        let s = schema();
        let t = table(&format!("{A}{B}"));
        let p = Preprocessing::from_aggregate(&s, &local_stats(&t, &s)).expect("derives");
        // x: values 1,2,4,5 → mean 3, population var (4+1+1+4)/4 = 2.5.
        let ColumnTransform::Numeric { mean, std, .. } = &p.columns[0] else { panic!("numeric") };
        assert!((mean - 3.0).abs() < 1e-12 && (std - 2.5f64.sqrt()).abs() < 1e-12);
        // c: b twice → mode 1; k is constant → std guarded to 1.
        assert!(matches!(p.columns[1], ColumnTransform::Categorical { mode: 1, .. }));
        assert!(matches!(p.columns[2], ColumnTransform::Numeric { std, .. } if std == 1.0));
        let e = p.encode(&t).expect("encodes");
        assert_eq!((e.rows, e.dim), (5, 5));
        let row = |r: usize| &e.features[r * 5..(r + 1) * 5];
        assert!((row(0)[0] + 2.0 / 2.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(&row(0)[1..], [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(row(2), [0.0, 0.0, 0.0, 1.0, 0.0]); // missing x → 0
        assert_eq!(&row(4)[1..4], [0.0, 1.0, 0.0]); // missing c → mode b
        let json = serde_json::to_string(&p).expect("serialises");
        assert_eq!(serde_json::from_str::<Preprocessing>(&json).expect("parses"), p);
    }

    #[test]
    fn tolerates_fixed_point_noise() {
        let s = schema();
        let t = table(&format!("{A}{B}"));
        let exact = local_stats(&t, &s);
        let noisy: Vec<f64> = exact
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 3e-6 } else { -3e-6 })
            .collect();
        let (p, q) = (
            Preprocessing::from_aggregate(&s, &exact).expect("exact"),
            Preprocessing::from_aggregate(&s, &noisy).expect("noisy"),
        );
        assert_eq!(p.rows, q.rows);
        assert_eq!(p.columns[1], q.columns[1]);
        // The constant column's noisy std is tiny but so is its centred value: it stays near 0.
        let e = q.encode(&t).expect("encodes");
        assert!((0..e.rows).all(|r| e.features[r * e.dim + 4].abs() < 1e-2));
    }

    #[test]
    fn rejects_bad_aggregates_and_foreign_tables() {
        let s = schema();
        let v = local_stats(&table(A), &s);
        assert!(matches!(
            Preprocessing::from_aggregate(&s, &v[1..]),
            Err(StatsError::Length { .. })
        ));
        let mut bad = v.clone();
        bad[2] = f64::NAN;
        assert!(matches!(
            Preprocessing::from_aggregate(&s, &bad),
            Err(StatsError::NotFinite { index: 2, .. })
        ));
        let mut bad = v.clone();
        bad[4] = -3.0;
        assert!(matches!(
            Preprocessing::from_aggregate(&s, &bad),
            Err(StatsError::NegativeCount { .. })
        ));
        assert_eq!(Preprocessing::from_aggregate(&s, &vec![0.0; v.len()]), Err(StatsError::NoRows));
        let mut none = v.clone();
        none[1] = 0.0;
        assert_eq!(
            Preprocessing::from_aggregate(&s, &none),
            Err(StatsError::NoValues { column: "x".into() })
        );

        let p = Preprocessing::from_aggregate(&s, &v).expect("derives");
        let mut other = table(A);
        other.schema_fingerprint = "0".repeat(64);
        assert!(matches!(p.encode(&other), Err(StatsError::SchemaMismatch { .. })));
    }

    #[test]
    fn a_noisy_variance_below_zero_gives_a_floored_std_not_raw_units() {
        let ranged = SCHEMA.replacen("name = \"x\"\ntype = \"numeric\"", "name = \"x\"\ntype = \"numeric\"\nrange = [0, 1000]", 1)
            .replacen("name = \"k\"\ntype = \"numeric\"", "name = \"k\"\ntype = \"numeric\"\nrange = [0, 10]", 1);
        let s = DatasetSchema::parse(&ranged, "s.toml").expect("valid");
        let t = load_csv_from_reader(format!("x,c,k,y\n{A}{B}").as_bytes(), "t.csv", &s).expect("loads");
        let mut noisy = clipped_local_stats(&t, &s).expect("ranged");
        // Noise drove x's sum of squares (slot 3) far below sum²/n.
        noisy[3] = -1e6;
        let prep = Preprocessing::from_noisy_aggregate(&s, &noisy).expect("noisy prep");
        match &prep.columns[0] {
            ColumnTransform::Numeric { std, .. } => assert_eq!(*std, 1000.0 / NOISY_STD_FLOOR_DIVISOR),
            other => panic!("{other:?}"),
        }
        // Noise drove k's value count (slot 8) below zero: a mean inside the range, not an error.
        noisy[8] = -3.0;
        let prep = Preprocessing::from_noisy_aggregate(&s, &noisy).expect("noisy prep");
        match &prep.columns[2] {
            ColumnTransform::Numeric { mean, .. } => assert!((0.0..=10.0).contains(mean), "{mean}"),
            other => panic!("{other:?}"),
        }
    }
}
