//! Loading an institution's data file (CSV or Parquet) against a [`DatasetSchema`] into a
//! [`RawTable`].
//!
//! The loaders are strict: the file must hold exactly the schema's columns (plus the target;
//! `ignored` columns may be absent), every numeric cell must be a finite number, every
//! categorical cell must be one of the agreed levels, and every target cell must be present.
//! Missing feature cells follow the column's policy: `fail` stops with the line (CSV) or row
//! (Parquet) number, `drop` removes the row here, `impute` keeps it as `None` for
//! [`crate::stats::Preprocessing`] to fill. Identifier, timestamp and ignored columns are never
//! decoded, so they never leave this module.
//!
//! Both formats feed the same [`TableBuilder`], so a cell means the same whichever file it came
//! from; [`crate::parquet`] holds the Parquet side and [`crate::load::load_table`] picks a loader
//! by extension.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use csv::ByteRecord;

use crate::error::{DataError, Location};
use crate::schema::{ColumnSpec, ColumnType, DatasetSchema, MissingPolicy, TargetSpec};

/// Values of one feature column, one entry per kept row; `None` is a missing cell to impute.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// A numeric column.
    Numeric(Vec<Option<f64>>),
    /// A categorical column, as indices into the schema's `levels`.
    Categorical(Vec<Option<u32>>),
}

impl ColumnData {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            ColumnData::Numeric(v) => v.len(),
            ColumnData::Categorical(v) => v.len(),
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One feature column of a loaded table.
#[derive(Debug, Clone, PartialEq)]
pub struct RawColumn {
    /// Column name (as in the schema).
    pub name: String,
    /// Values.
    pub data: ColumnData,
}

/// A validated data file: feature columns in schema order, labels, and what was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTable {
    /// Where the rows came from (for messages).
    pub source: String,
    /// Fingerprint of the schema the file was loaded with.
    pub schema_fingerprint: String,
    /// Number of kept rows.
    pub rows: usize,
    /// Feature columns, in [`DatasetSchema::feature_columns`] order.
    pub columns: Vec<RawColumn>,
    /// 1.0 for the positive class, 0.0 otherwise; one per kept row.
    pub labels: Vec<f32>,
    /// Rows removed by the `drop` policy.
    pub dropped_rows: usize,
}

impl RawTable {
    /// Number of positive labels.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&y| y > 0.5).count()
    }
}

/// The formats a data file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// Apache Parquet (flat columns).
    Parquet,
}

impl DataFormat {
    /// The format a path's extension names: `.parquet`/`.pq` is Parquet, anything else CSV.
    pub fn of_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet" | "pq") => DataFormat::Parquet,
            _ => DataFormat::Csv,
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            DataFormat::Csv => "csv",
            DataFormat::Parquet => "parquet",
        }
    }
}

/// The binary target of a tabular schema; a ratings schema used for a tabular file is refused.
pub(crate) fn binary_target<'s>(schema: &'s DatasetSchema, path: &str) -> Result<&'s TargetSpec, DataError> {
    schema.target.as_ref().ok_or_else(|| not_tabular(schema, path))
}

fn not_tabular(schema: &DatasetSchema, path: &str) -> DataError {
    DataError::WrongKind {
        path: path.into(),
        message: format!("schema `{}` describes ratings, not a tabular dataset with a target", schema.name),
    }
}

/// Checks a file's column names against the schema: every column must be declared, every
/// declared non-ignored column and the target must be present, and no name may repeat. Returns
/// the file's index of every name. `at` is the header line or Parquet schema.
pub(crate) fn match_columns<'n>(
    names: impl IntoIterator<Item = &'n str>,
    schema: &DatasetSchema,
    at: &Location,
) -> Result<HashMap<String, usize>, DataError> {
    let target = &binary_target(schema, at.path())?.column;
    let mut by_name = HashMap::new();
    for (i, name) in names.into_iter().enumerate() {
        if by_name.insert(name.to_string(), i).is_some() {
            return Err(DataError::DuplicateColumn { at: at.clone(), column: name.into() });
        }
        if name != target && schema.column(name).is_none() {
            return Err(DataError::UnknownColumn { at: at.clone(), column: name.into() });
        }
    }
    let required = schema.columns.iter().filter(|c| c.kind != ColumnType::Ignored);
    for column in required.map(|c| c.name.as_str()).chain([target.as_str()]) {
        if !by_name.contains_key(column) {
            return Err(DataError::MissingColumn { at: at.clone(), column: column.into() });
        }
    }
    Ok(by_name)
}

/// Where the schema's columns sit in a CSV header.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMap {
    /// CSV index of the target column.
    pub target: usize,
    /// CSV index of each feature column, in schema feature order.
    pub features: Vec<usize>,
    /// CSV index of every header name.
    pub by_name: HashMap<String, usize>,
}

/// Matches a CSV header against the schema (see [`match_columns`]).
pub(crate) fn map_header(
    path: &str,
    header: &ByteRecord,
    schema: &DatasetSchema,
) -> Result<HeaderMap, DataError> {
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(DataError::NoHeader { path: path.to_string() });
    }
    let at = Location::line(path, 1);
    let names = header
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let name = std::str::from_utf8(raw).map_err(|_| DataError::InvalidUtf8 {
                at: at.clone(),
                column: format!("#{}", i + 1),
            })?;
            Ok(if i == 0 { name.trim_start_matches('\u{feff}') } else { name })
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let by_name = match_columns(names, schema, &at)?;
    let index = |name: &str| by_name.get(name).copied().unwrap_or_default();
    Ok(HeaderMap {
        target: index(&binary_target(schema, path)?.column),
        features: schema.feature_columns().map(|c| index(&c.name)).collect(),
        by_name,
    })
}

/// Decodes a CSV cell as UTF-8, naming the line and column on failure.
pub(crate) fn cell<'r>(
    record: &'r ByteRecord,
    index: usize,
    path: &str,
    line: u64,
    column: &str,
) -> Result<&'r str, DataError> {
    let bytes = record.get(index).unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| DataError::InvalidUtf8 {
        at: Location::line(path, line),
        column: column.into(),
    })
}

/// Turns a target cell (`None` when null) into a label (1.0 positive). Missing markers and
/// values other than the schema's positive and declared negative are errors.
pub(crate) fn label_of(
    raw: Option<&str>,
    schema: &DatasetSchema,
    at: impl FnOnce() -> Location,
) -> Result<f32, DataError> {
    let Some(spec) = schema.target.as_ref() else {
        return Err(not_tabular(schema, at().path()));
    };
    let column = &spec.column;
    let raw = match raw {
        Some(raw) if !schema.is_missing(raw) => raw,
        _ => {
            return Err(DataError::MissingTarget { at: at(), column: column.clone() });
        }
    };
    let value = raw.trim();
    spec.label_of(value).ok_or_else(|| DataError::BadTarget {
        at: at(),
        column: column.clone(),
        value: value.into(),
        expected: std::iter::once(&spec.positive)
            .chain(&spec.negative)
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Parses a CSV row's target cell into a label (1.0 positive).
pub(crate) fn parse_label(
    record: &ByteRecord,
    target: usize,
    schema: &DatasetSchema,
    path: &str,
    line: u64,
) -> Result<f32, DataError> {
    let raw = cell(record, target, path, line, &binary_target(schema, path)?.column)?;
    label_of(Some(raw), schema, || Location::line(path, line))
}

/// Opens a CSV reader with the settings every Confide tool uses.
pub(crate) fn csv_reader<R: Read>(reader: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader)
}

/// Loads and validates a CSV file.
pub fn load_csv(path: impl AsRef<Path>, schema: &DatasetSchema) -> Result<RawTable, DataError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    load_csv_from_reader(std::io::BufReader::new(file), &path.display().to_string(), schema)
}

/// One feature cell as a loader sees it, before the schema's rules are applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    /// Null, blank, an `na_values` marker, or (Parquet) a floating-point NaN.
    Missing,
    /// A typed number (Parquet); checked for finiteness, refused for categorical columns only
    /// if its text form is not a level.
    Number(f64),
    /// Text: parsed as a number for numeric columns, looked up in the levels for categorical
    /// ones. Already trimmed and known not to be a missing marker.
    Text(&'a str),
}

/// A parsed feature cell, before the row is known to be kept.
enum Cell {
    Num(Option<f64>),
    Cat(Option<u32>),
}

/// Accumulates rows into a [`RawTable`], applying the schema's cell rules and missing-value
/// policies identically for every file format.
pub(crate) struct TableBuilder<'s> {
    schema: &'s DatasetSchema,
    features: Vec<&'s ColumnSpec>,
    levels: Vec<HashMap<&'s str, u32>>,
    policies: Vec<MissingPolicy>,
    columns: Vec<RawColumn>,
    labels: Vec<f32>,
    dropped_rows: usize,
    row: Vec<Cell>,
    drop_row: bool,
}

impl<'s> TableBuilder<'s> {
    pub(crate) fn new(schema: &'s DatasetSchema) -> Self {
        let features: Vec<&ColumnSpec> = schema.feature_columns().collect();
        Self {
            schema,
            levels: features
                .iter()
                .map(|c| c.level_names().iter().zip(0u32..).map(|(l, i)| (l.as_str(), i)).collect())
                .collect(),
            policies: features.iter().map(|c| schema.policy_for(c)).collect(),
            columns: features
                .iter()
                .map(|c| RawColumn {
                    name: c.name.clone(),
                    data: match c.kind {
                        ColumnType::Categorical => ColumnData::Categorical(Vec::new()),
                        _ => ColumnData::Numeric(Vec::new()),
                    },
                })
                .collect(),
            row: Vec::with_capacity(features.len()),
            features,
            labels: Vec::new(),
            dropped_rows: 0,
            drop_row: false,
        }
    }

    /// Adds the current row's next feature cell (cells come in schema feature order).
    pub(crate) fn cell(
        &mut self,
        value: Value<'_>,
        at: impl Fn() -> Location,
    ) -> Result<(), DataError> {
        let i = self.row.len();
        let (Some(col), Some(levels)) = (self.features.get(i), self.levels.get(i)) else {
            return Ok(());
        };
        let missing = matches!(value, Value::Missing);
        if missing {
            match self.policies[i] {
                MissingPolicy::Fail => {
                    return Err(DataError::MissingValue { at: at(), column: col.name.clone() });
                }
                MissingPolicy::Drop => self.drop_row = true,
                MissingPolicy::Impute => {}
            }
        }
        let parsed = match (col.kind, value) {
            (ColumnType::Categorical, Value::Missing) => Cell::Cat(None),
            (ColumnType::Categorical, Value::Text(text)) => {
                Cell::Cat(Some(level(levels, text, col, &at)?))
            }
            (ColumnType::Categorical, Value::Number(x)) => {
                Cell::Cat(Some(level(levels, &number_as_level(x), col, &at)?))
            }
            (_, Value::Missing) => Cell::Num(None),
            (_, Value::Text(text)) => Cell::Num(Some(parse_number(text, col, &at)?)),
            (_, Value::Number(x)) => {
                if !x.is_finite() {
                    return Err(DataError::NotFinite {
                        at: at(),
                        column: col.name.clone(),
                        value: x.to_string(),
                    });
                }
                Cell::Num(Some(x))
            }
        };
        self.row.push(parsed);
        Ok(())
    }

    /// Ends the current row with its label: kept, or counted as dropped by the `drop` policy.
    pub(crate) fn end_row(&mut self, label: f32) {
        if std::mem::take(&mut self.drop_row) {
            self.dropped_rows += 1;
            self.row.clear();
            return;
        }
        self.labels.push(label);
        for (column, parsed) in self.columns.iter_mut().zip(self.row.drain(..)) {
            match (&mut column.data, parsed) {
                (ColumnData::Numeric(v), Cell::Num(x)) => v.push(x),
                (ColumnData::Categorical(v), Cell::Cat(x)) => v.push(x),
                // Cells are built from the same column list, so the kinds always agree.
                _ => {}
            }
        }
    }

    pub(crate) fn finish(self, origin: &str) -> RawTable {
        RawTable {
            source: origin.to_string(),
            schema_fingerprint: self.schema.fingerprint(),
            rows: self.labels.len(),
            columns: self.columns,
            labels: self.labels,
            dropped_rows: self.dropped_rows,
        }
    }
}

/// The text a typed number matches against categorical levels: integers without a fraction
/// (`1.0` → `"1"`, as pandas writes integer columns holding nulls), others as Rust prints them.
pub(crate) fn number_as_level(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

fn level(
    levels: &HashMap<&str, u32>,
    value: &str,
    col: &ColumnSpec,
    at: &impl Fn() -> Location,
) -> Result<u32, DataError> {
    levels.get(value).copied().ok_or_else(|| DataError::UnknownLevel {
        at: at(),
        column: col.name.clone(),
        value: value.into(),
        allowed: col.level_names().to_vec(),
    })
}

/// Parses a trimmed, non-missing numeric cell; NaN and infinities are refused.
fn parse_number(
    value: &str,
    col: &ColumnSpec,
    at: &impl Fn() -> Location,
) -> Result<f64, DataError> {
    let x: f64 = value.parse().map_err(|_| DataError::NotNumeric {
        at: at(),
        column: col.name.clone(),
        value: value.into(),
    })?;
    if !x.is_finite() {
        return Err(DataError::NotFinite {
            at: at(),
            column: col.name.clone(),
            value: value.into(),
        });
    }
    Ok(x)
}

/// Loads and validates CSV text from any reader; `origin` names it in error messages.
pub fn load_csv_from_reader<R: Read>(
    reader: R,
    origin: &str,
    schema: &DatasetSchema,
) -> Result<RawTable, DataError> {
    let mut rdr = csv_reader(reader);
    let header = rdr.byte_headers().map_err(|e| DataError::csv(origin, &e))?.clone();
    let map = map_header(origin, &header, schema)?;
    let mut builder = TableBuilder::new(schema);
    let mut record = ByteRecord::new();
    while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(origin, &e))? {
        let line = record.position().map_or(0, csv::Position::line);
        let at = || Location::line(origin, line);
        for (&csv_idx, col) in map.features.iter().zip(schema.feature_columns()) {
            let raw = cell(&record, csv_idx, origin, line, &col.name)?;
            let value =
                if schema.is_missing(raw) { Value::Missing } else { Value::Text(raw.trim()) };
            builder.cell(value, at)?;
        }
        let label = parse_label(&record, map.target, schema, origin, line)?;
        builder.end_row(label);
    }
    Ok(builder.finish(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(missing_x: &str) -> DatasetSchema {
        let text = format!(
            r#"
name = "t"
[target]
column = "y"
positive = "1"
negative = "0"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "x"
type = "numeric"
missing = "{missing_x}"
[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b"]
missing = "impute"
[[columns]]
name = "note"
type = "ignored"
"#
        );
        DatasetSchema::parse(&text, "t.toml").expect("valid schema")
    }

    fn load(text: &str, missing_x: &str) -> Result<RawTable, DataError> {
        load_csv_from_reader(text.as_bytes(), "bank.csv", &schema(missing_x))
    }

    fn err(text: &str, missing_x: &str) -> String {
        load(text, missing_x).expect_err("must fail").to_string()
    }

    #[test]
    fn loads_valid_rows() {
        let t = load("id,x,c,y\n1,1.5,a,1\n2, 2 ,b,0\n3,,,0\n", "impute").expect("loads");
        assert_eq!(t.rows, 3);
        assert_eq!(t.labels, [1.0, 0.0, 0.0]);
        assert_eq!(t.columns[0].data, ColumnData::Numeric(vec![Some(1.5), Some(2.0), None]));
        assert_eq!(t.columns[1].data, ColumnData::Categorical(vec![Some(0), Some(1), None]));
        assert_eq!(t.positives(), 1);
    }

    #[test]
    fn header_must_match_schema() {
        let e = err("id,c,y\n1,a,1\n", "fail");
        assert!(e.contains("bank.csv:1") && e.contains("`x`") && e.contains("missing"), "{e}");
        let e = err("id,x,c,y,extra\n1,1,a,1,z\n", "fail");
        assert!(e.contains("`extra`") && e.contains("not in the schema"), "{e}");
        let e = err("id,x,x,c,y\n", "fail");
        assert!(e.contains("more than once"), "{e}");
        let e = err("id,x,c\n1,1,a\n", "fail");
        assert!(e.contains("`y`"), "{e}");
        let e = err("", "fail");
        assert!(e.contains("empty"), "{e}");
        // Ignored columns may be present or absent; a BOM on the first header is tolerated.
        assert!(load("\u{feff}id,x,c,y,note\n1,1,a,1,hello\n", "fail").is_ok());
    }

    #[test]
    fn bad_cells_name_file_line_column_and_value() {
        let e = err("id,x,c,y\n1,1,a,1\n2,abc,a,0\n", "fail");
        assert!(
            e.starts_with("bank.csv:3: column `x`") && e.contains("\"abc\" is not a number"),
            "{e}"
        );
        for nan in ["NaN", "nan", "inf", "-Infinity"] {
            for policy in ["fail", "impute", "drop"] {
                let e = err(&format!("id,x,c,y\n1,{nan},a,1\n"), policy);
                assert!(
                    e.starts_with("bank.csv:2: column `x`") && e.contains("not a finite"),
                    "{e}"
                );
            }
        }
        let e = err("id,x,c,y\n1,1,a,1\n2,1,a,0\n3,1,z,0\n", "fail");
        assert!(e.starts_with("bank.csv:4: column `c`"), "{e}");
        assert!(e.contains("unknown level \"z\"") && e.contains("\"a\", \"b\""), "{e}");
        let e = err("id,x,c,y\n1,1,a,\n", "fail");
        assert!(e.starts_with("bank.csv:2: target column `y` is missing"), "{e}");
        let e = err("id,x,c,y\n1,1,a,yes\n", "fail");
        assert!(e.starts_with("bank.csv:2: target") && e.contains("\"yes\""), "{e}");
        let e = err("id,x,c,y\n1,1,a,1\n1,1\n", "fail");
        assert!(e.contains("bank.csv:3") && e.contains("malformed"), "{e}");
    }

    #[test]
    fn blank_cells_follow_the_policy() {
        let text = "id,x,c,y\n1,1,a,1\n2, ,b,0\n3,NA,a,1\n4,4,a,0\n";
        let e = err(text, "fail");
        assert!(e.starts_with("bank.csv:3: column `x`: missing value"), "{e}");
        let t = load(text, "impute").expect("impute keeps rows");
        assert_eq!(t.rows, 4);
        assert_eq!(t.columns[0].data, ColumnData::Numeric(vec![Some(1.0), None, None, Some(4.0)]));
        let t = load(text, "drop").expect("drop removes rows");
        assert_eq!((t.rows, t.dropped_rows), (2, 2));
        assert_eq!(t.labels, [1.0, 0.0]);
        assert_eq!(t.columns[1].data, ColumnData::Categorical(vec![Some(0), Some(0)]));
    }

    #[test]
    fn quoted_multiline_cells_keep_true_line_numbers() {
        let e = err("id,x,c,y,note\n1,1,a,1,\"two\nlines\"\n2,bad,a,0,\n", "fail");
        assert!(e.starts_with("bank.csv:4:"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = load_csv("/nonexistent/x.csv", &schema("fail")).expect_err("no file").to_string();
        assert!(e.contains("/nonexistent/x.csv"), "{e}");
    }
}
