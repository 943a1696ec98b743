//! Streaming rows to a CSV or Parquet file, for the partition tool and the synthetic generator.
//!
//! A [`RowWriter`] takes rows one at a time and never holds more than one Parquet row group
//! ([`ROW_GROUP_ROWS`] rows) in memory. Columns are numbers (Parquet `DOUBLE`) or text (Parquet
//! `BYTE_ARRAY` UTF-8), both nullable; a null is an empty CSV cell. The file is written under a
//! temporary name and renamed into place by [`RowWriter::finish`], so a reader never sees half a
//! file and an interrupted run leaves no file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use crate::error::DataError;
use crate::table::DataFormat;

/// Rows per Parquet row group (and the most rows a writer buffers).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// What an output column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    /// Numbers (`DOUBLE` in Parquet).
    Number,
    /// Text (UTF-8 `BYTE_ARRAY` in Parquet).
    Text,
}

/// An output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutColumn {
    /// Header name.
    pub name: String,
    /// Kind.
    pub kind: OutKind,
}

impl OutColumn {
    /// A column.
    pub fn new(name: impl Into<String>, kind: OutKind) -> Self {
        Self { name: name.into(), kind }
    }
}

/// One output cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutCell<'a> {
    /// Missing (empty CSV cell, Parquet null).
    Null,
    /// A number; only for [`OutKind::Number`] columns.
    Number(f64),
    /// Text; only for [`OutKind::Text`] columns.
    Text(&'a str),
}

/// Buffered columns of the current Parquet row group.
enum Buffered {
    Number { values: Vec<f64>, defs: Vec<i16> },
    Text { values: Vec<ByteArray>, defs: Vec<i16> },
}

enum Sink {
    Csv(csv::Writer<BufWriter<File>>),
    Parquet { writer: SerializedFileWriter<File>, columns: Vec<Buffered>, rows: usize },
}

/// Writes rows of fixed columns to a CSV or Parquet file.
pub struct RowWriter {
    path: PathBuf,
    partial: PathBuf,
    columns: Vec<OutColumn>,
    sink: Sink,
    rows: u64,
    number_text: String,
}

impl std::fmt::Debug for RowWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowWriter").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

/// Refuses to replace an existing output file unless `overwrite`.
pub(crate) fn refuse_existing(path: &Path, overwrite: bool) -> Result<(), DataError> {
    if !overwrite && path.exists() {
        return Err(DataError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists (pass --force to replace)",
            ),
        ));
    }
    Ok(())
}

fn write_error(path: &Path, message: impl ToString) -> DataError {
    DataError::Write { path: path.display().to_string(), message: message.to_string() }
}

impl RowWriter {
    /// Creates `path` (refused when it exists, unless `overwrite`) with a header of `columns`.
    pub fn create(
        path: &Path,
        format: DataFormat,
        columns: Vec<OutColumn>,
        overwrite: bool,
    ) -> Result<Self, DataError> {
        refuse_existing(path, overwrite)?;
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| DataError::io(&partial, e))?;
        let sink = match format {
            DataFormat::Csv => {
                let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
                w.write_record(columns.iter().map(|c| c.name.as_str()))
                    .map_err(|e| write_error(path, e))?;
                Sink::Csv(w)
            }
            DataFormat::Parquet => {
                let fields = columns
                    .iter()
                    .map(|c| {
                        let (physical, logical) = match c.kind {
                            OutKind::Number => (PhysicalType::DOUBLE, None),
                            OutKind::Text => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
                        };
                        Type::primitive_type_builder(&c.name, physical)
                            .with_repetition(Repetition::OPTIONAL)
                            .with_logical_type(logical)
                            .build()
                            .map(Arc::new)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| write_error(path, e))?;
                let schema = Type::group_type_builder("schema")
                    .with_fields(fields)
                    .build()
                    .map_err(|e| write_error(path, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .set_created_by(format!("confide-datasets {}", env!("CARGO_PKG_VERSION")))
                    .build();
                let writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))
                    .map_err(|e| write_error(path, e))?;
                let buffers = columns
                    .iter()
                    .map(|c| match c.kind {
                        OutKind::Number => {
                            Buffered::Number { values: Vec::new(), defs: Vec::new() }
                        }
                        OutKind::Text => Buffered::Text { values: Vec::new(), defs: Vec::new() },
                    })
                    .collect();
                Sink::Parquet { writer, columns: buffers, rows: 0 }
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            columns,
            sink,
            rows: 0,
            number_text: String::new(),
        })
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[OutColumn] {
        &self.columns
    }

    /// Appends one row; it must have one cell per column, of the column's kind (or null).
    pub fn write_row(&mut self, cells: &[OutCell<'_>]) -> Result<(), DataError> {
        if cells.len() != self.columns.len() {
            return Err(write_error(
                &self.path,
                format!(
                    "row {} has {} cells for {} columns",
                    self.rows + 1,
                    cells.len(),
                    self.columns.len()
                ),
            ));
        }
        for (cell, column) in cells.iter().zip(&self.columns) {
            let fits = matches!(
                (cell, column.kind),
                (OutCell::Null, _)
                    | (OutCell::Number(_), OutKind::Number)
                    | (OutCell::Text(_), OutKind::Text)
            );
            if !fits {
                return Err(write_error(
                    &self.path,
                    format!("row {}: column `{}` cannot hold {cell:?}", self.rows + 1, column.name),
                ));
            }
        }
        match &mut self.sink {
            Sink::Csv(w) => {
                for cell in cells {
                    let text = &mut self.number_text;
                    text.clear();
                    let field: &str = match cell {
                        OutCell::Null => "",
                        OutCell::Text(t) => t,
                        OutCell::Number(x) => {
                            use std::fmt::Write as _;
                            let _ = write!(text, "{x}");
                            text
                        }
                    };
                    w.write_field(field).map_err(|e| write_error(&self.path, e))?;
                }
                w.write_record(None::<&[u8]>).map_err(|e| write_error(&self.path, e))?;
            }
            Sink::Parquet { writer, columns, rows } => {
                for (cell, buffer) in cells.iter().zip(columns.iter_mut()) {
                    match (buffer, cell) {
                        (Buffered::Number { values, defs }, OutCell::Number(x)) => {
                            values.push(*x);
                            defs.push(1);
                        }
                        (Buffered::Text { values, defs }, OutCell::Text(t)) => {
                            values.push(ByteArray::from(t.as_bytes().to_vec()));
                            defs.push(1);
                        }
                        (Buffered::Number { defs, .. } | Buffered::Text { defs, .. }, _) => {
                            defs.push(0)
                        }
                    }
                }
                *rows += 1;
                if *rows >= ROW_GROUP_ROWS {
                    flush_row_group(writer, columns, &self.path)?;
                    *rows = 0;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Flushes, closes and renames the file into place; returns the number of rows written.
    pub fn finish(self) -> Result<u64, DataError> {
        let path = self.path;
        match self.sink {
            Sink::Csv(w) => {
                let mut inner = w.into_inner().map_err(|e| write_error(&path, e.error()))?;
                inner.flush().map_err(|e| DataError::io(&path, e))?;
                inner.get_ref().sync_all().map_err(|e| DataError::io(&path, e))?;
            }
            Sink::Parquet { mut writer, mut columns, rows } => {
                if rows > 0 || self.rows == 0 {
                    flush_row_group(&mut writer, &mut columns, &path)?;
                }
                let file = writer.into_inner().map_err(|e| write_error(&path, e))?;
                file.sync_all().map_err(|e| DataError::io(&path, e))?;
            }
        }
        std::fs::rename(&self.partial, &path).map_err(|e| DataError::io(&path, e))?;
        Ok(self.rows)
    }
}

fn flush_row_group(
    writer: &mut SerializedFileWriter<File>,
    columns: &mut [Buffered],
    path: &Path,
) -> Result<(), DataError> {
    let err = |e: parquet::errors::ParquetError| write_error(path, e);
    let mut group = writer.next_row_group().map_err(err)?;
    for buffer in columns.iter_mut() {
        let mut column = group
            .next_column()
            .map_err(err)?
            .ok_or_else(|| write_error(path, "Parquet writer has fewer columns than the header"))?;
        match buffer {
            Buffered::Number { values, defs } => {
                column.typed::<DoubleType>().write_batch(values, Some(defs), None).map_err(err)?;
                values.clear();
                defs.clear();
            }
            Buffered::Text { values, defs } => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(values, Some(defs), None)
                    .map_err(err)?;
                values.clear();
                defs.clear();
            }
        }
        column.close().map_err(err)?;
    }
    group.close().map_err(err)?;
    Ok(())
}
