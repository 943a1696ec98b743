//! Dataset schemas: the agreed description of a tabular dataset that every institution's CSV file
//! must follow.
//!
//! A schema is a TOML file (see `datasets/schemas/`) naming every column with its type. Federated
//! one-hot encoding needs a vocabulary every institution agrees on before any data is read, so
//! categorical columns list their levels explicitly. The schema also names the binary target and
//! how missing cells are handled. Its [`DatasetSchema::fingerprint`] lets the coordinator check
//! that all workers run the same schema.
//!
//! ```toml
//! name = "telco_churn"
//! missing = "fail"                 # default policy: impute | drop | fail
//! na_values = ["NA", "N/A", "null"] # extra missing markers; blank cells are always missing
//!
//! [target]
//! column = "Churn"
//! positive = "Yes"
//! negative = "No"                  # optional: when set, any other value is an error
//!
//! [[columns]]
//! name = "customerID"
//! type = "id"
//!
//! [[columns]]
//! name = "TotalCharges"
//! type = "numeric"
//! missing = "impute"               # per-column override
//!
//! [[columns]]
//! name = "Contract"
//! type = "categorical"
//! levels = ["Month-to-month", "One year", "Two year"]
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Version tag mixed into the fingerprint; bump it when the encoding of a schema changes meaning.
const FINGERPRINT_DOMAIN: &str = "confide-dataset-schema-v1";

/// Errors reading or validating a schema. Messages name the offending field or column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The schema file could not be read.
    #[error("cannot read schema {path}: {source}")]
    Io {
        /// Schema file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown, missing or mistyped fields.
    #[error("invalid schema {path}: {message}")]
    Toml {
        /// Schema file (or `<string>`).
        path: String,
        /// The parser's message, which names the field and its position.
        message: String,
    },
    /// The TOML parsed but describes an unusable schema.
    #[error("invalid schema {path}: {message}")]
    Invalid {
        /// Schema file (or `<string>`).
        path: String,
        /// What is wrong, naming the field or column.
        message: String,
    },
}

/// How missing cells in a feature column are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Keep the row: numeric cells take the federated mean, categorical cells the federated mode.
    Impute,
    /// Drop the whole row at load time.
    Drop,
    /// Refuse the file, naming the line and column (the default: nothing is guessed silently).
    #[default]
    Fail,
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// A real-valued feature, standardised with the federated mean and standard deviation.
    Numeric,
    /// A feature with a fixed vocabulary (`levels`), one-hot encoded.
    Categorical,
    /// An identifier: never read, never a feature.
    Id,
    /// A date or time: never read, never a feature.
    Timestamp,
    /// Any other column to skip. Unlike the other types, it may be absent from a CSV file.
    Ignored,
}

/// One column of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Header name in the CSV file (exact match).
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// The agreed vocabulary of a categorical column, in one-hot order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<String>>,
    /// Missing-cell policy overriding the schema default (feature columns only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<MissingPolicy>,
    /// A numeric column's declared range `[low, high]`: differentially private statistics clip
    /// each value into it at the bank, which bounds one row's effect on the sums. A DP job on a
    /// schema whose numeric feature lacks one is refused, naming the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
}

impl ColumnSpec {
    /// True for columns that become model inputs (numeric and categorical).
    pub fn is_feature(&self) -> bool {
        matches!(self.kind, ColumnType::Numeric | ColumnType::Categorical)
    }

    /// Levels of a categorical column (empty for other types).
    pub fn level_names(&self) -> &[String] {
        self.levels.as_deref().unwrap_or(&[])
    }

    /// Number of encoded inputs this column contributes (0 for non-features).
    pub fn encoded_width(&self) -> usize {
        match self.kind {
            ColumnType::Numeric => 1,
            ColumnType::Categorical => self.level_names().len(),
            ColumnType::Id | ColumnType::Timestamp | ColumnType::Ignored => 0,
        }
    }
}

/// The binary target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Header name of the target column (not listed under `[[columns]]`).
    pub column: String,
    /// The cell value meaning "positive" (label 1), compared after trimming whitespace.
    pub positive: String,
    /// The cell value meaning "negative". When set, any value other than `positive` and
    /// `negative` is an error; when absent, every other non-missing value is negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative: Option<String>,
}

impl TargetSpec {
    /// The label of a (trimmed, non-missing) target cell, or `None` when it is neither the
    /// positive nor the declared negative value.
    pub fn label_of(&self, value: &str) -> Option<f32> {
        if value == self.positive {
            Some(1.0)
        } else {
            match &self.negative {
                Some(neg) if value != neg => None,
                _ => Some(0.0),
            }
        }
    }
}

fn default_na_values() -> Vec<String> {
    ["NA", "N/A", "null"].iter().map(|s| s.to_string()).collect()
}

/// A validated dataset schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSchema {
    /// Dataset name (e.g. `telco_churn`).
    pub name: String,
    /// Default missing-cell policy for feature columns.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// Cell values, compared after trimming, that mean "missing" in addition to blank cells.
    /// Values that parse to NaN or infinity are never missing markers: they are errors.
    #[serde(default = "default_na_values")]
    pub na_values: Vec<String>,
    /// The binary target (tabular datasets; absent for recommendation datasets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSpec>,
    /// Every column of the CSV file except the target, in any order; feature order follows it.
    /// Recommendation datasets list only extra columns to skip (`type = "ignored"`).
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    /// Recommendation datasets: which columns hold the user, item, rating and timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<RecommendationSpec>,
}

/// The columns of a ratings file (`user,item,rating[,timestamp]`), for recommendation models.
///
/// ```toml
/// name = "movielens_latest_small"
/// [recommendation]
/// user = "userId"
/// item = "movieId"
/// rating = "rating"
/// timestamp = "timestamp"   # optional
/// min_rating = 0.5
/// max_rating = 5.0
/// relevant_from = 4.0       # held-out ratings ≥ this are ranked for HR@k / NDCG@k
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendationSpec {
    /// User id column (an institution's own customer ids; never leave it).
    pub user: String,
    /// Item id column (ids of the shared catalogue).
    pub item: String,
    /// Rating column (a number in `[min_rating, max_rating]`).
    pub rating: String,
    /// Optional timestamp column (integer seconds), used by the partition tool's
    /// latest-ratings hold-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Smallest valid rating.
    pub min_rating: f64,
    /// Largest valid rating.
    pub max_rating: f64,
    /// Held-out ratings at or above this value are relevant items for ranking metrics.
    pub relevant_from: f64,
}

impl RecommendationSpec {
    /// The named columns, in `user, item, rating[, timestamp]` order.
    pub fn column_names(&self) -> Vec<&str> {
        let mut v = vec![self.user.as_str(), self.item.as_str(), self.rating.as_str()];
        v.extend(self.timestamp.as_deref());
        v
    }
}

impl DatasetSchema {
    /// Reads and validates a schema file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SchemaError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SchemaError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates schema TOML; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let schema: DatasetSchema = toml::from_str(text).map_err(|e| SchemaError::Toml {
            path: origin.to_string(),
            message: confide_core::config_file::toml_message(&e),
        })?;
        schema
            .validate()
            .map_err(|message| SchemaError::Invalid { path: origin.to_string(), message })?;
        Ok(schema)
    }

    /// Checks the invariants the loader and encoder rely on; returns a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        let target = match (&self.target, &self.recommendation) {
            (Some(t), None) => t,
            (None, Some(rec)) => return self.validate_recommendation(rec),
            (Some(_), Some(_)) => {
                return Err("a schema has either `[target]` (tabular) or `[recommendation]` (ratings), not both".into());
            }
            (None, None) => return Err("missing `[target]` (tabular data) or `[recommendation]` (ratings)".into()),
        };
        self.validate_tabular(target)
    }

    fn validate_recommendation(&self, rec: &RecommendationSpec) -> Result<(), String> {
        let names = rec.column_names();
        for (field, name) in ["user", "item", "rating", "timestamp"].iter().zip(&names) {
            if name.trim().is_empty() {
                return Err(format!("`recommendation.{field}` must not be empty"));
            }
        }
        if names.iter().collect::<HashSet<_>>().len() != names.len() {
            return Err("`[recommendation]` names the same column twice".into());
        }
        if !(rec.min_rating.is_finite() && rec.max_rating.is_finite() && rec.min_rating < rec.max_rating) {
            return Err("`recommendation.min_rating` must be below `recommendation.max_rating`".into());
        }
        if !rec.relevant_from.is_finite() {
            return Err("`recommendation.relevant_from` must be a number".into());
        }
        for (i, col) in self.columns.iter().enumerate() {
            if col.kind != ColumnType::Ignored || names.contains(&col.name.as_str()) {
                return Err(format!(
                    "columns[{i}] (`{}`): a ratings schema lists only extra columns to skip, with type = \"ignored\"",
                    col.name
                ));
            }
        }
        Ok(())
    }

    fn validate_tabular(&self, target: &TargetSpec) -> Result<(), String> {
        if target.column.is_empty() {
            return Err("`target.column` must not be empty".into());
        }
        if target.positive.trim().is_empty() {
            return Err("`target.positive` must not be blank".into());
        }
        if target.positive.trim() != target.positive {
            return Err("`target.positive` must not have leading or trailing whitespace".into());
        }
        if let Some(neg) = &target.negative {
            if neg.trim().is_empty() || neg.trim() != neg {
                return Err(
                    "`target.negative` must be non-blank, without surrounding whitespace".into()
                );
            }
            if *neg == target.positive {
                return Err("`target.negative` equals `target.positive`".into());
            }
        }
        if self.na_values.contains(&target.positive) {
            return Err(format!(
                "`target.positive` ({:?}) is also listed in `na_values`",
                target.positive
            ));
        }
        let mut seen = HashSet::new();
        for (i, col) in self.columns.iter().enumerate() {
            let at = format!("columns[{i}] (`{}`)", col.name);
            if col.name.is_empty() {
                return Err(format!("columns[{i}]: `name` must not be empty"));
            }
            if !seen.insert(col.name.as_str()) {
                return Err(format!("{at}: column is listed twice"));
            }
            if col.name == target.column {
                return Err(format!(
                    "{at}: the target column is declared in `[target]` and must not be listed under `[[columns]]`"
                ));
            }
            if col.missing.is_some() && !col.is_feature() {
                return Err(format!(
                    "{at}: `missing` applies only to numeric and categorical columns"
                ));
            }
            if let Some([low, high]) = col.range {
                if col.kind != ColumnType::Numeric {
                    return Err(format!("{at}: `range` is only allowed on numeric columns"));
                }
                if !(low.is_finite() && high.is_finite() && low < high) {
                    return Err(format!("{at}: `range` must be [low, high] with finite low < high"));
                }
            }
            match (col.kind, &col.levels) {
                (ColumnType::Categorical, None) => {
                    return Err(format!("{at}: categorical columns need `levels = [...]`"));
                }
                (ColumnType::Categorical, Some(levels)) => {
                    validate_levels(levels, &self.na_values).map_err(|m| format!("{at}: {m}"))?
                }
                (_, Some(_)) => {
                    return Err(format!("{at}: `levels` is only allowed on categorical columns"));
                }
                (_, None) => {}
            }
        }
        if !self.columns.iter().any(ColumnSpec::is_feature) {
            return Err("the schema has no numeric or categorical column to learn from".into());
        }
        Ok(())
    }

    /// Feature columns (numeric and categorical) in schema order.
    pub fn feature_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| c.is_feature())
    }

    /// Looks up a column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The missing-cell policy in force for `col`.
    pub fn policy_for(&self, col: &ColumnSpec) -> MissingPolicy {
        col.missing.unwrap_or(self.missing)
    }

    /// True when a (raw) cell counts as missing: blank, whitespace-only, or an `na_values` marker.
    pub fn is_missing(&self, cell: &str) -> bool {
        let t = cell.trim();
        t.is_empty() || self.na_values.iter().any(|na| na == t)
    }

    /// Width of the encoded feature vector: one per numeric column plus one per categorical level.
    pub fn input_dim(&self) -> usize {
        self.columns.iter().map(ColumnSpec::encoded_width).sum()
    }

    /// Name of each encoded input, in order: `tenure`, `Contract=Month-to-month`, ...
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.input_dim());
        for col in self.feature_columns() {
            match col.kind {
                ColumnType::Categorical => {
                    names.extend(col.level_names().iter().map(|l| format!("{}={l}", col.name)));
                }
                _ => names.push(col.name.clone()),
            }
        }
        names
    }

    /// SHA-256 (hex) of a canonical serialisation of everything that affects loading and encoding.
    /// Comments, key order and formatting of the TOML file do not change it.
    pub fn fingerprint(&self) -> String {
        // serde_json writes struct fields in declaration order, so this is canonical.
        let json = serde_json::to_string(self).unwrap_or_default();
        confide_core::sha256_hex(format!("{FINGERPRINT_DOMAIN}\n{json}").as_bytes())
    }
}

fn validate_levels(levels: &[String], na_values: &[String]) -> Result<(), String> {
    if levels.is_empty() {
        return Err("`levels` must not be empty".into());
    }
    let mut seen = HashSet::new();
    for level in levels {
        if level.trim().is_empty() || level.trim() != level {
            return Err(format!(
                "level {level:?} must be non-blank, without leading or trailing whitespace"
            ));
        }
        if na_values.contains(level) {
            return Err(format!("level {level:?} is also listed in `na_values`"));
        }
        if !seen.insert(level.as_str()) {
            return Err(format!("level {level:?} is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
name = "mini"
[target]
column = "y"
positive = "yes"
negative = "no"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "x"
type = "numeric"
missing = "impute"
[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b", "c"]
"#;

    fn err_of(text: &str) -> String {
        DatasetSchema::parse(text, "s.toml").expect_err("schema must be refused").to_string()
    }

    #[test]
    fn parses_and_derives_features() {
        let s = DatasetSchema::parse(MINI, "mini.toml").expect("valid");
        assert_eq!(s.input_dim(), 4);
        assert_eq!(s.feature_names(), ["x", "c=a", "c=b", "c=c"]);
        assert_eq!(s.missing, MissingPolicy::Fail);
        assert_eq!(s.policy_for(&s.columns[1]), MissingPolicy::Impute);
        assert_eq!(s.na_values, ["NA", "N/A", "null"]);
        assert!(s.is_missing("  ") && s.is_missing("NA") && !s.is_missing("NaN"));
    }

    #[test]
    fn fingerprint_ignores_formatting_but_not_content() {
        let a = DatasetSchema::parse(MINI, "a").expect("valid");
        let reformatted =
            format!("# a comment\n{}", MINI.replace("name = \"mini\"", "name=\"mini\"  "));
        let b = DatasetSchema::parse(&reformatted, "b").expect("valid");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let c = DatasetSchema::parse(&MINI.replace("\"c\"]", "\"d\"]"), "c").expect("valid");
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err_of(&MINI.replace("type = \"id\"", "type = \"id\"\nlevel = 3"));
        assert!(e.contains("unknown field `level`"), "{e}");
        assert!(e.contains("s.toml"), "{e}");
        let e = err_of(&MINI.replace("type = \"id\"", "type = \"identifier\""));
        assert!(e.contains("identifier"), "{e}");
        let e = err_of(&MINI.replace("positive = \"yes\"\n", ""));
        assert!(e.contains("positive"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_column() {
        let e = err_of(&MINI.replace("levels = [\"a\", \"b\", \"c\"]", ""));
        assert!(e.contains("`c`") && e.contains("levels"), "{e}");
        let e = err_of(&MINI.replace("levels = [\"a\", \"b\", \"c\"]", "levels = [\"a\", \"a\"]"));
        assert!(e.contains("listed twice"), "{e}");
        let e = err_of(&MINI.replace("name = \"id\"", "name = \"x\""));
        assert!(e.contains("`x`") && e.contains("twice"), "{e}");
        let e = err_of(&MINI.replace("name = \"id\"", "name = \"y\""));
        assert!(e.contains("target"), "{e}");
        let e = err_of(&MINI.replace("type = \"id\"", "type = \"id\"\nmissing = \"drop\""));
        assert!(e.contains("`id`") && e.contains("missing"), "{e}");
        let e = err_of(&MINI.replace("type = \"numeric\"", "type = \"numeric\"\nlevels = [\"a\"]"));
        assert!(e.contains("`x`") && e.contains("only allowed on categorical"), "{e}");
        let e = err_of(&MINI.replace("negative = \"no\"", "negative = \"yes\""));
        assert!(e.contains("negative"), "{e}");
    }

    const RATINGS: &str = r#"
name = "ratings"
[recommendation]
user = "u"
item = "i"
rating = "r"
timestamp = "t"
min_rating = 0.5
max_rating = 5.0
relevant_from = 4.0
[[columns]]
name = "note"
type = "ignored"
"#;

    #[test]
    fn ratings_schemas_name_their_columns_and_refuse_features() {
        let s = DatasetSchema::parse(RATINGS, "r.toml").expect("valid");
        let rec = s.recommendation.as_ref().expect("ratings");
        assert_eq!(rec.column_names(), ["u", "i", "r", "t"]);
        assert!(s.target.is_none());
        let e = err_of(&RATINGS.replace("type = \"ignored\"", "type = \"numeric\""));
        assert!(e.contains("`note`") && e.contains("ignored"), "{e}");
        let e = err_of(&RATINGS.replace("item = \"i\"", "item = \"u\""));
        assert!(e.contains("twice"), "{e}");
        let e = err_of(&RATINGS.replace("max_rating = 5.0", "max_rating = 0.1"));
        assert!(e.contains("min_rating"), "{e}");
        let e = err_of(&format!("{MINI}\n[recommendation]\nuser=\"a\"\nitem=\"b\"\nrating=\"c\"\nmin_rating=1.0\nmax_rating=2.0\nrelevant_from=1.0\n"));
        assert!(e.contains("not both"), "{e}");
        let e = err_of("name = \"x\"\n");
        assert!(e.contains("[recommendation]"), "{e}");
    }

    #[test]
    fn target_labels() {
        let s = DatasetSchema::parse(MINI, "m").expect("valid");
        let t = s.target.as_ref().expect("tabular");
        assert_eq!(t.label_of("yes"), Some(1.0));
        assert_eq!(t.label_of("no"), Some(0.0));
        assert_eq!(t.label_of("maybe"), None);
        let open = TargetSpec { column: "y".into(), positive: "1".into(), negative: None };
        assert_eq!(open.label_of("0"), Some(0.0));
    }
}
