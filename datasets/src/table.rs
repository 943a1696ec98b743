//! Loading an institution's CSV file against a [`DatasetSchema`] into a [`RawTable`].
//!
//! The loader is strict: the header must hold exactly the schema's columns (plus the target;
//! `ignored` columns may be absent), every numeric cell must parse to a finite number, every
//! categorical cell must be one of the agreed levels, and every target cell must be present.
//! Missing feature cells follow the column's policy: `fail` stops with the line number, `drop`
//! removes the row here, `impute` keeps it as `None` for [`crate::stats::Preprocessing`] to fill.
//! Identifier, timestamp and ignored columns are never decoded, so they never leave this module.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use csv::ByteRecord;

use crate::error::DataError;
use crate::schema::{ColumnSpec, ColumnType, DatasetSchema, MissingPolicy};

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

/// A validated CSV file: feature columns in schema order, labels, and what was dropped.
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

/// Where the schema's columns sit in a CSV header.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMap {
    /// CSV index of the target column.
    pub target: usize,
    /// `(csv index, schema column)` of each feature column, in schema feature order.
    pub features: Vec<(usize, ColumnSpec)>,
    /// CSV index of every header name.
    pub by_name: HashMap<String, usize>,
}

/// Matches a header against the schema: every CSV column must be declared, every declared
/// non-ignored column and the target must be present, and no name may repeat.
pub(crate) fn map_header(
    path: &str,
    header: &ByteRecord,
    schema: &DatasetSchema,
) -> Result<HeaderMap, DataError> {
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(DataError::NoHeader { path: path.to_string() });
    }
    let target_spec = schema.target.as_ref().ok_or_else(|| DataError::WrongKind {
        path: path.into(),
        message: format!("schema `{}` describes ratings, not a tabular dataset with a target", schema.name),
    })?;
    let mut by_name = HashMap::new();
    for (i, raw) in header.iter().enumerate() {
        let name = std::str::from_utf8(raw).map_err(|_| DataError::InvalidUtf8 {
            path: path.into(),
            line: 1,
            column: format!("#{}", i + 1),
        })?;
        let name = if i == 0 { name.trim_start_matches('\u{feff}') } else { name };
        if by_name.insert(name.to_string(), i).is_some() {
            return Err(DataError::DuplicateColumn { path: path.into(), column: name.into() });
        }
        if name != target_spec.column && schema.column(name).is_none() {
            return Err(DataError::UnknownColumn { path: path.into(), column: name.into() });
        }
    }
    let require = |column: &str| {
        by_name
            .get(column)
            .copied()
            .ok_or_else(|| DataError::MissingColumn { path: path.into(), column: column.into() })
    };
    for col in schema.columns.iter().filter(|c| c.kind != ColumnType::Ignored) {
        require(&col.name)?;
    }
    let target = require(&target_spec.column)?;
    let features = schema
        .feature_columns()
        .map(|c| Ok((require(&c.name)?, c.clone())))
        .collect::<Result<_, DataError>>()?;
    Ok(HeaderMap { target, features, by_name })
}

/// Decodes a cell as UTF-8, naming the line and column on failure.
pub(crate) fn cell<'r>(
    record: &'r ByteRecord,
    index: usize,
    path: &str,
    line: u64,
    column: &str,
) -> Result<&'r str, DataError> {
    let bytes = record.get(index).unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| DataError::InvalidUtf8 {
        path: path.into(),
        line,
        column: column.into(),
    })
}

/// Parses a row's target cell into a label (1.0 positive).
pub(crate) fn parse_label(
    record: &ByteRecord,
    target: usize,
    schema: &DatasetSchema,
    path: &str,
    line: u64,
) -> Result<f32, DataError> {
    let spec = schema.target.as_ref().ok_or_else(|| DataError::WrongKind {
        path: path.into(),
        message: format!("schema `{}` has no binary target", schema.name),
    })?;
    let column = &spec.column;
    let raw = cell(record, target, path, line, column)?;
    if schema.is_missing(raw) {
        return Err(DataError::MissingTarget { path: path.into(), line, column: column.clone() });
    }
    let value = raw.trim();
    spec.label_of(value).ok_or_else(|| DataError::BadTarget {
        path: path.into(),
        line,
        column: column.clone(),
        value: value.into(),
        expected: std::iter::once(&spec.positive)
            .chain(&spec.negative)
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
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

/// A parsed feature cell, before the row is known to be kept.
enum Cell {
    Num(Option<f64>),
    Cat(Option<u32>),
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
    let level_index: Vec<HashMap<&str, u32>> = map
        .features
        .iter()
        .map(|(_, c)| c.level_names().iter().zip(0u32..).map(|(l, i)| (l.as_str(), i)).collect())
        .collect();
    let policies: Vec<MissingPolicy> =
        map.features.iter().map(|(_, c)| schema.policy_for(c)).collect();

    let mut columns: Vec<RawColumn> = map
        .features
        .iter()
        .map(|(_, c)| RawColumn {
            name: c.name.clone(),
            data: match c.kind {
                ColumnType::Categorical => ColumnData::Categorical(Vec::new()),
                _ => ColumnData::Numeric(Vec::new()),
            },
        })
        .collect();
    let mut labels = Vec::new();
    let mut dropped_rows = 0usize;
    let mut row: Vec<Cell> = Vec::with_capacity(columns.len());
    let mut record = ByteRecord::new();

    while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(origin, &e))? {
        let line = record.position().map_or(0, csv::Position::line);
        row.clear();
        let mut drop_row = false;
        for (((csv_idx, col), levels), policy) in
            map.features.iter().zip(&level_index).zip(&policies)
        {
            let raw = cell(&record, *csv_idx, origin, line, &col.name)?;
            let missing = schema.is_missing(raw);
            if missing {
                match policy {
                    MissingPolicy::Fail => {
                        return Err(DataError::MissingValue {
                            path: origin.into(),
                            line,
                            column: col.name.clone(),
                        });
                    }
                    MissingPolicy::Drop => drop_row = true,
                    MissingPolicy::Impute => {}
                }
            }
            let value = raw.trim();
            row.push(match col.kind {
                ColumnType::Categorical if missing => Cell::Cat(None),
                ColumnType::Categorical => {
                    Cell::Cat(Some(*levels.get(value).ok_or_else(|| DataError::UnknownLevel {
                        path: origin.into(),
                        line,
                        column: col.name.clone(),
                        value: value.into(),
                        allowed: col.level_names().to_vec(),
                    })?))
                }
                _ if missing => Cell::Num(None),
                _ => Cell::Num(Some(parse_number(value, origin, line, &col.name)?)),
            });
        }
        let label = parse_label(&record, map.target, schema, origin, line)?;
        if drop_row {
            dropped_rows += 1;
            continue;
        }
        labels.push(label);
        for (column, parsed) in columns.iter_mut().zip(row.drain(..)) {
            match (&mut column.data, parsed) {
                (ColumnData::Numeric(v), Cell::Num(x)) => v.push(x),
                (ColumnData::Categorical(v), Cell::Cat(x)) => v.push(x),
                // Cells are built from the same column list, so the kinds always agree.
                _ => {}
            }
        }
    }
    Ok(RawTable {
        source: origin.to_string(),
        schema_fingerprint: schema.fingerprint(),
        rows: labels.len(),
        columns,
        labels,
        dropped_rows,
    })
}

/// Parses a trimmed, non-missing numeric cell; NaN and infinities are refused.
fn parse_number(value: &str, path: &str, line: u64, column: &str) -> Result<f64, DataError> {
    let x: f64 = value.parse().map_err(|_| DataError::NotNumeric {
        path: path.into(),
        line,
        column: column.into(),
        value: value.into(),
    })?;
    if !x.is_finite() {
        return Err(DataError::NotFinite {
            path: path.into(),
            line,
            column: column.into(),
            value: value.into(),
        });
    }
    Ok(x)
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
