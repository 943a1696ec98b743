//! Errors reading, validating and partitioning data files.
//!
//! Every variant about file content names the file and the 1-based line (line 1 is the header),
//! and, where it applies, the column and the offending value, so a data team can fix the file
//! without a debugger.

use crate::schema::SchemaError;

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
    #[error("{path}:{line}: malformed CSV: {message}")]
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
    /// A schema column (or the target) is absent from the header.
    #[error("{path}:1: column `{column}` required by the schema is missing from the header")]
    MissingColumn {
        /// File.
        path: String,
        /// The missing column.
        column: String,
    },
    /// The header has a column the schema does not describe.
    #[error(
        "{path}:1: column `{column}` is not in the schema (declare it with type = \"ignored\" to skip it)"
    )]
    UnknownColumn {
        /// File.
        path: String,
        /// The undeclared column.
        column: String,
    },
    /// The header names a column twice.
    #[error("{path}:1: column `{column}` appears more than once in the header")]
    DuplicateColumn {
        /// File.
        path: String,
        /// The repeated column.
        column: String,
    },
    /// A cell is not valid UTF-8.
    #[error("{path}:{line}: column `{column}`: cell is not valid UTF-8")]
    InvalidUtf8 {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column.
        column: String,
    },
    /// A numeric cell does not parse as a number.
    #[error("{path}:{line}: column `{column}`: {value:?} is not a number")]
    NotNumeric {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column.
        column: String,
        /// The cell.
        value: String,
    },
    /// A numeric cell parses to NaN or infinity (never accepted, whatever the missing policy).
    #[error("{path}:{line}: column `{column}`: {value:?} is not a finite number")]
    NotFinite {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column.
        column: String,
        /// The cell.
        value: String,
    },
    /// A categorical cell is not one of the schema's levels.
    #[error("{path}:{line}: column `{column}`: unknown level {value:?} (allowed: {})", quoted(.allowed))]
    UnknownLevel {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column.
        column: String,
        /// The cell.
        value: String,
        /// The schema's levels.
        allowed: Vec<String>,
    },
    /// A feature cell is missing and the column's policy is `fail`.
    #[error(
        "{path}:{line}: column `{column}`: missing value (policy `fail`; use `impute` or `drop` to accept it)"
    )]
    MissingValue {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column.
        column: String,
    },
    /// The target cell is missing (always an error).
    #[error("{path}:{line}: target column `{column}` is missing")]
    MissingTarget {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Target column.
        column: String,
    },
    /// The target cell is neither the positive nor the declared negative value.
    #[error("{path}:{line}: target column `{column}`: {value:?} is not one of {expected}")]
    BadTarget {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Target column.
        column: String,
        /// The cell.
        value: String,
        /// The accepted values, quoted (`"Yes", "No"`).
        expected: String,
    },
    /// The file is used with a schema of the other kind (tabular vs ratings).
    #[error("{path}: {message}")]
    WrongKind {
        /// File.
        path: String,
        /// What was expected.
        message: String,
    },
    /// A rating names an item that is not in the shared catalogue.
    #[error("{path}:{line}: column `{column}`: item {item:?} is not in the shared item catalogue")]
    UnknownItem {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
        /// Item column.
        column: String,
        /// The item id.
        item: String,
    },
    /// A rating is outside the schema's range.
    #[error("{path}:{line}: column `{column}`: rating {value} is outside [{min}, {max}]")]
    RatingOutOfRange {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
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
    #[error("{path}:{line}: column `{column}`: missing value (user, item and rating are required)")]
    MissingCell {
        /// File.
        path: String,
        /// 1-based line.
        line: u64,
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
    levels.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
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
