//! An input file held in memory as typed cells, for partitions that change format (CSV to
//! Parquet, Parquet to CSV or Parquet).
//!
//! Numeric feature columns become numbers (missing markers and NaN become null, anything else
//! that is not a finite number is an error naming file, line or row, and column); every other
//! column becomes text, with blank cells null. Parquet input is read with the `parquet` crate's
//! record API, so any column type (dates, decimals, ...) becomes its text form.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::error::{DataError, Location};
use crate::output::{OutCell, OutColumn, OutKind, RowWriter};
use crate::partition::Scheme;
use crate::schema::{ColumnType, DatasetSchema};
use crate::table::{
    DataFormat, cell, csv_reader, label_of, map_header, match_columns, number_as_level,
};

/// One held cell.
#[derive(Debug, Clone, PartialEq)]
enum GridCell {
    Null,
    Number(f64),
    Text(String),
}

impl GridCell {
    fn text(&self) -> Option<String> {
        match self {
            GridCell::Null => None,
            GridCell::Number(x) => Some(number_as_level(*x)),
            GridCell::Text(t) => Some(t.clone()),
        }
    }
}

/// A whole input file: columns, rows of cells, and where each row came from.
pub(super) struct Grid {
    columns: Vec<OutColumn>,
    rows: Vec<Vec<GridCell>>,
    at: Vec<Location>,
}

/// Numeric feature columns are numbers; everything else (ids, categories, the target) is text.
fn out_kind(name: &str, schema: &DatasetSchema) -> OutKind {
    match schema.column(name) {
        Some(c) if c.kind == ColumnType::Numeric => OutKind::Number,
        _ => OutKind::Text,
    }
}

/// A text cell of a column of `kind`: numbers are parsed (NaN and missing markers are null).
fn cell_of_text(
    text: &str,
    kind: OutKind,
    schema: &DatasetSchema,
    column: &str,
    at: impl Fn() -> Location,
) -> Result<GridCell, DataError> {
    if text.trim().is_empty() {
        return Ok(GridCell::Null);
    }
    if kind == OutKind::Text {
        return Ok(GridCell::Text(text.to_string()));
    }
    if schema.is_missing(text) {
        return Ok(GridCell::Null);
    }
    let value = text.trim();
    let x: f64 = value.parse().map_err(|_| DataError::NotNumeric {
        at: at(),
        column: column.into(),
        value: value.into(),
    })?;
    number_cell(x, kind, column, at)
}

fn number_cell(
    x: f64,
    kind: OutKind,
    column: &str,
    at: impl Fn() -> Location,
) -> Result<GridCell, DataError> {
    if x.is_nan() {
        return Ok(GridCell::Null);
    }
    if !x.is_finite() {
        return Err(DataError::NotFinite { at: at(), column: column.into(), value: x.to_string() });
    }
    Ok(match kind {
        OutKind::Number => GridCell::Number(x),
        OutKind::Text => GridCell::Text(number_as_level(x)),
    })
}

impl Grid {
    /// Reads CSV bytes, checking the header against the schema.
    pub(super) fn from_csv(
        bytes: &[u8],
        origin: &str,
        schema: &DatasetSchema,
    ) -> Result<Self, DataError> {
        let mut rdr = csv_reader(bytes);
        let header = rdr.byte_headers().map_err(|e| DataError::csv(origin, &e))?.clone();
        let map = map_header(origin, &header, schema)?;
        let mut names = vec![String::new(); map.by_name.len()];
        for (name, &i) in &map.by_name {
            names[i] = name.clone();
        }
        let columns: Vec<OutColumn> =
            names.into_iter().map(|n| OutColumn { kind: out_kind(&n, schema), name: n }).collect();
        let (mut rows, mut at) = (Vec::new(), Vec::new());
        let mut record = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(origin, &e))? {
            let line = record.position().map_or(0, csv::Position::line);
            let here = || Location::line(origin, line);
            let row = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let text = cell(&record, i, origin, line, &c.name)?;
                    cell_of_text(text, c.kind, schema, &c.name, here)
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(row);
            at.push(here());
        }
        Ok(Self { columns, rows, at })
    }

    /// Reads a Parquet file, checking its columns against the schema.
    pub(super) fn from_parquet(
        path: &Path,
        origin: &str,
        schema: &DatasetSchema,
    ) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| DataError::parquet(origin, &e))?;
        let root = reader.metadata().file_metadata().schema_descr().root_schema().clone();
        let names: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
        match_columns(
            names.iter().copied(),
            schema,
            &Location::ParquetSchema { path: origin.to_string() },
        )?;
        let columns: Vec<OutColumn> =
            names.iter().map(|&n| OutColumn::new(n, out_kind(n, schema))).collect();
        let (mut rows, mut at) = (Vec::new(), Vec::new());
        let iter = reader.get_row_iter(None).map_err(|e| DataError::parquet(origin, &e))?;
        for (i, row) in iter.enumerate() {
            let row = row.map_err(|e| DataError::parquet(origin, &e))?;
            let here = || Location::row(origin, i as u64 + 1);
            let cells = row
                .get_column_iter()
                .zip(&columns)
                .map(|((_, field), c)| field_cell(field, c.kind, schema, &c.name, here))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(cells);
            at.push(here());
        }
        Ok(Self { columns, rows, at })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Every row's label, and for [`Scheme::ByColumn`] every row's key.
    pub(super) fn labels_and_keys(
        &self,
        schema: &DatasetSchema,
        scheme: &Scheme,
    ) -> Result<(Vec<f32>, Option<Vec<String>>), DataError> {
        let target = schema.target.as_ref().and_then(|t| self.index(&t.column)).unwrap_or_default();
        let labels = self
            .rows
            .iter()
            .zip(&self.at)
            .map(|(row, at)| label_of(row[target].text().as_deref(), schema, || at.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let Scheme::ByColumn { column } = scheme else { return Ok((labels, None)) };
        let origin = self.at.first().map_or("", Location::path);
        let key = self.index(column).ok_or_else(|| DataError::MissingColumn {
            at: Location::line(origin, 1),
            column: column.clone(),
        })?;
        let keys = self
            .rows
            .iter()
            .zip(&self.at)
            .map(|(row, at)| match row[key].text() {
                Some(text) if !schema.is_missing(&text) => Ok(text.trim().to_string()),
                _ => Err(DataError::MissingValue { at: at.clone(), column: column.clone() }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((labels, Some(keys)))
    }

    /// Writes the given rows (in order) to `path`.
    pub(super) fn write(
        &self,
        path: &Path,
        format: DataFormat,
        rows: &[usize],
        overwrite: bool,
    ) -> Result<(), DataError> {
        let mut writer = RowWriter::create(path, format, self.columns.clone(), overwrite)?;
        let mut cells = Vec::with_capacity(self.columns.len());
        for &r in rows {
            cells.clear();
            cells.extend(self.rows[r].iter().map(|c| match c {
                GridCell::Null => OutCell::Null,
                GridCell::Number(x) => OutCell::Number(*x),
                GridCell::Text(t) => OutCell::Text(t),
            }));
            writer.write_row(&cells)?;
        }
        writer.finish()?;
        Ok(())
    }
}

/// A Parquet record field as a cell of a column of `kind`.
fn field_cell(
    field: &Field,
    kind: OutKind,
    schema: &DatasetSchema,
    column: &str,
    at: impl Fn() -> Location,
) -> Result<GridCell, DataError> {
    let number = |x: f64| number_cell(x, kind, column, &at);
    // Integers keep every digit as text (long identifiers do not fit an f64).
    let integer = |x: i128| match kind {
        OutKind::Number => Ok(GridCell::Number(x as f64)),
        OutKind::Text => Ok(GridCell::Text(x.to_string())),
    };
    match field {
        Field::Null => Ok(GridCell::Null),
        Field::Str(s) => cell_of_text(s, kind, schema, column, &at),
        Field::Bool(b) => match kind {
            OutKind::Number => Ok(GridCell::Number(f64::from(u8::from(*b)))),
            OutKind::Text => Ok(GridCell::Text(b.to_string())),
        },
        Field::Byte(x) => integer(i128::from(*x)),
        Field::Short(x) => integer(i128::from(*x)),
        Field::Int(x) => integer(i128::from(*x)),
        Field::Long(x) => integer(i128::from(*x)),
        Field::UByte(x) => integer(i128::from(*x)),
        Field::UShort(x) => integer(i128::from(*x)),
        Field::UInt(x) => integer(i128::from(*x)),
        Field::ULong(x) => integer(i128::from(*x)),
        Field::Float(x) => number(f64::from(*x)),
        Field::Double(x) => number(*x),
        // Decimals, half floats, dates, times, bytes and nested values: their text form.
        other => cell_of_text(&other.to_string(), kind, schema, column, &at),
    }
}
