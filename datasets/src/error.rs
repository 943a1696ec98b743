//! Errors reading, validating, partitioning and writing data files.
//!
//! Every variant about file content names where it is: a [`Location`] is a CSV file and 1-based
//! line (line 1 is the header), a Parquet file and 1-based data row, or a Parquet file's schema;
//! and, where it applies, the column and the offending value, so a data team can fix the file
//! without a debugger.

use std::fmt;

use confide_core::text::cap_quote;

use crate::schema::SchemaError;

/// Where in a data file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A CSV line, 1-based (line 1 is the header; 0 when unknown). Shown as `file:line`.
    Line {
        /// File.
        path: String,
        /// Line.
        line: u64,
    },
    /// A Parquet data row, 1-based across all row groups. Shown as `file: row N`.
    Row {
        /// File.
        path: String,
        /// Row.
        row: u64,
    },
    /// The schema (column list and types) stored in a Parquet file's footer.
    ParquetSchema {
        /// File.
        path: String,
    },
}

impl Location {
    /// The file this location is in.
    pub fn path(&self) -> &str {
        match self {
            Location::Line { path, .. }
            | Location::Row { path, .. }
            | Location::ParquetSchema { path } => path,
        }
    }

    /// A CSV line.
    pub fn line(path: &str, line: u64) -> Self {
        Location::Line { path: path.to_string(), line }
    }

    /// A Parquet data row.
    pub fn row(path: &str, row: u64) -> Self {
        Location::Row { path: path.to_string(), row }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line { path, line } => write!(f, "{path}:{line}"),
            Location::Row { path, row } => write!(f, "{path}: row {row}"),
            Location::ParquetSchema { path } => write!(f, "{path}: Parquet schema"),
        }
    }
}

/// An error from loading or partitioning a CSV file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The schema itself is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The CSV syntax is broken (for example a row with the wrong number of fields).
    #[error("{path}:{line}: malformed CSV: {}", cap_quote(.message))]
    Csv {
        /// File.
        path: String,
        /// Line where the problem was detected (0 when unknown).
        line: u64,
        /// The parser's message.
        message: String,
    },
    /// The file has no header line.
    #[error("{path}: the file is empty (no header line)")]
    NoHeader {
        /// File.
        path: String,
    },
    /// A schema column (or the target) is absent from the header (CSV) or file schema (Parquet).
    #[error("{at}: column `{column}` required by the schema is missing")]
    MissingColumn {
        /// The header line or Parquet schema.
        at: Location,
        /// The missing column.
        column: String,
    },
    /// The file has a column the schema does not describe.
    #[error(
        "{at}: column `{}` is not in the schema (declare it with type = \"ignored\" to skip it)", cap_quote(.column)
    )]
    UnknownColumn {
        /// The header line or Parquet schema.
        at: Location,
        /// The undeclared column.
        column: String,
    },
    /// The file names a column twice.
    #[error("{at}: column `{}` appears more than once", cap_quote(.column))]
    DuplicateColumn {
        /// The header line or Parquet schema.
        at: Location,
        /// The repeated column.
        column: String,
    },
    /// A cell is not valid UTF-8.
    #[error("{at}: column `{column}`: cell is not valid UTF-8")]
    InvalidUtf8 {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Column.
        column: String,
    },
    /// A numeric cell does not parse as a number.
    #[error("{at}: column `{column}`: {:?} is not a number", cap_quote(.value))]
    NotNumeric {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Column.
        column: String,
        /// The cell.
        value: String,
    },
    /// A numeric cell parses to NaN or infinity (never accepted, whatever the missing policy).
    #[error("{at}: column `{column}`: {:?} is not a finite number", cap_quote(.value))]
    NotFinite {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Column.
        column: String,
        /// The cell.
        value: String,
    },
    /// A categorical cell is not one of the schema's levels.
    #[error("{at}: column `{column}`: unknown level {:?} (allowed: {})", cap_quote(.value), quoted(.allowed))]
    UnknownLevel {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Column.
        column: String,
        /// The cell.
        value: String,
        /// The schema's levels.
        allowed: Vec<String>,
    },
    /// A feature cell is missing and the column's policy is `fail`.
    #[error(
        "{at}: column `{column}`: missing value (policy `fail`; use `impute` or `drop` to accept it)"
    )]
    MissingValue {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Column.
        column: String,
    },
    /// The target cell is missing (always an error).
    #[error("{at}: target column `{column}` is missing")]
    MissingTarget {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Target column.
        column: String,
    },
    /// The target cell is neither the positive nor the declared negative value.
    #[error("{at}: target column `{column}`: {:?} is not one of {expected}", cap_quote(.value))]
    BadTarget {
        /// File and line (CSV) or row (Parquet).
        at: Location,
        /// Target column.
        column: String,
        /// The cell.
        value: String,
        /// The accepted values, quoted (`"Yes", "No"`).
        expected: String,
    },
    /// A Parquet column has a physical or logical type the schema's column type cannot take.
    #[error(
        "{path}: Parquet schema: column `{column}` is stored as {found}, but the schema declares it {expected}"
    )]
    WrongType {
        /// File.
        path: String,
        /// Column.
        column: String,
        /// The file's type for it (e.g. `BYTE_ARRAY (String)`).
        found: String,
        /// What the schema accepts (e.g. `numeric: an integer, float, decimal or boolean column`).
        expected: String,
    },
    /// The Parquet file cannot be decoded (not Parquet, truncated, unsupported encoding...).
    #[error("{path}: invalid Parquet file: {}", cap_quote(.message))]
    Parquet {
        /// File.
        path: String,
        /// The decoder's message.
        message: String,
    },
    /// A row cannot be written to an output file.
    #[error("{path}: cannot write: {message}")]
    Write {
        /// Output file.
        path: String,
        /// Why.
        message: String,
    },
    /// A synthetic-data request is invalid.
    #[error("cannot generate synthetic data: {0}")]
    Synth(String),
    /// The file is used with a schema of the other kind (tabular vs ratings).
    #[error("{path}: {message}")]
    WrongKind {
        /// File.
        path: String,
        /// What was expected.
        message: String,
    },
    /// A rating names an item that is not in the shared catalogue.
    #[error("{at}: column `{column}`: item {:?} is not in the shared item catalogue", cap_quote(.item))]
    UnknownItem {
        /// Where.
        at: Location,
        /// Item column.
        column: String,
        /// The item id.
        item: String,
    },
    /// A rating is outside the schema's range.
    #[error("{at}: column `{column}`: rating {value} is outside [{min}, {max}]")]
    RatingOutOfRange {
        /// Where.
        at: Location,
        /// Rating column.
        column: String,
        /// The rating.
        value: f64,
        /// Smallest valid rating.
        min: f64,
        /// Largest valid rating.
        max: f64,
    },
    /// A required cell (user, item or rating) is blank.
    #[error("{at}: column `{column}`: missing value (user, item and rating are required)")]
    MissingCell {
        /// Where.
        at: Location,
        /// Column.
        column: String,
    },
    /// A partitioning request cannot be satisfied.
    #[error("cannot partition {path}: {message}")]
    Partition {
        /// Input file.
        path: String,
        /// Why.
        message: String,
    },
}

fn quoted(levels: &[String]) -> String {
    cap_quote(&levels.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", "))
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }

    /// Wraps a `parquet` crate error while reading `path`.
    pub(crate) fn parquet(path: &str, err: &parquet::errors::ParquetError) -> Self {
        DataError::Parquet { path: path.to_string(), message: err.to_string() }
    }

    /// Wraps a `csv` crate error, keeping its line number.
    pub(crate) fn csv(path: &str, err: &csv::Error) -> Self {
        let line = err.position().map_or(0, csv::Position::line);
        match err.kind() {
            csv::ErrorKind::Io(e) => DataError::Io {
                path: path.to_string(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            },
            _ => DataError::Csv { path: path.to_string(), line, message: err.to_string() },
        }
    }
}
