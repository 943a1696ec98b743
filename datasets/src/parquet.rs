//! Loading an institution's Parquet file against a [`DatasetSchema`], with the same rules as CSV.
//!
//! Columns are matched by top-level name exactly as a CSV header is (every column declared,
//! every non-ignored column and the target present, no repeats), and only the feature and
//! target columns are decoded: identifier, timestamp and ignored columns are never read.
//!
//! Types are checked against the schema before any row is read:
//! - `numeric` takes integer, floating-point, decimal and boolean (0/1) columns; a string,
//!   date, time or timestamp column is refused.
//! - `categorical` and the target take string, integer, boolean (`"true"`/`"false"`), decimal
//!   and floating-point columns; numbers are matched by their text (`1.0` as `"1"`, the way
//!   pandas stores an integer column that has nulls).
//!
//! Missing cells are Parquet nulls, floating-point NaN (how pandas and polars write a missing
//! float), and string cells that are blank or an `na_values` marker; they follow the column's
//! missing-value policy exactly as blank CSV cells do. Infinities are refused. Errors name the
//! file, the 1-based data row and the column.

use std::path::Path;

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;

use crate::error::{DataError, Location};
use crate::schema::{ColumnSpec, ColumnType, DatasetSchema};
use crate::table::{RawTable, TableBuilder, Value, label_of, match_columns, number_as_level};

/// Rows decoded per column per step: large enough to amortise decoder calls, small enough to
/// stay in cache.
const BATCH_ROWS: usize = 8192;

/// Loads and validates a Parquet file.
///
/// A file corrupted in a way the `parquet` decoder does not anticipate can make it panic; that
/// panic is caught here and reported as [`DataError::Parquet`], so a bad file never takes the
/// worker down.
pub fn load_parquet(path: impl AsRef<Path>, schema: &DatasetSchema) -> Result<RawTable, DataError> {
    let path = path.as_ref();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(path, schema))).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the decoder failed");
            Err(DataError::Parquet {
                path: path.display().to_string(),
                message: format!("corrupt file: {message}"),
            })
        },
    )
}

fn load(path: &Path, schema: &DatasetSchema) -> Result<RawTable, DataError> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(DataError::Parquet { path: origin, message: "the file is empty".into() });
    }
    let reader = SerializedFileReader::new(file).map_err(|e| DataError::parquet(&origin, &e))?;
    let layout = ParquetLayout::map(&reader, schema, &origin)?;
    let mut builder = TableBuilder::new(schema);
    let mut row = 0u64;
    let mut text = String::new();
    for group_index in 0..reader.num_row_groups() {
        let group =
            reader.get_row_group(group_index).map_err(|e| DataError::parquet(&origin, &e))?;
        let open = |leaf: &Leaf| -> Result<Cursor, DataError> {
            let reader =
                group.get_column_reader(leaf.index).map_err(|e| DataError::parquet(&origin, &e))?;
            Ok(Cursor::new(reader, leaf))
        };
        let mut features = layout.features.iter().map(open).collect::<Result<Vec<_>, _>>()?;
        let mut target = open(&layout.target)?;
        loop {
            let rows = target.read_batch(&origin)?;
            for (cursor, leaf) in features.iter_mut().zip(&layout.features) {
                let n = cursor.read_batch(&origin)?;
                if n != rows {
                    return Err(DataError::Parquet {
                        path: origin.clone(),
                        message: format!(
                            "column `{}` has {n} rows where the target has {rows} (row group {group_index})",
                            leaf.name
                        ),
                    });
                }
            }
            if rows == 0 {
                break;
            }
            for _ in 0..rows {
                row += 1;
                let at = || Location::row(&origin, row);
                for (cursor, leaf) in features.iter_mut().zip(&layout.features) {
                    let value = match cursor.next() {
                        None => Value::Missing,
                        Some(raw) => raw.feature_value(leaf, schema, at)?,
                    };
                    builder.cell(value, at)?;
                }
                let label = match target.next() {
                    None => label_of(None, schema, at)?,
                    Some(raw) => {
                        let text = raw.label_text(&layout.target, &mut text, at)?;
                        label_of(text, schema, at)?
                    }
                };
                builder.end_row(label);
            }
        }
    }
    Ok(builder.finish(&origin))
}

/// How a leaf column's stored values are read.
#[derive(Debug, Clone)]
struct Leaf {
    name: String,
    /// The schema's type for it; `None` for the target.
    kind: Option<ColumnType>,
    index: usize,
    max_def: i16,
    /// `Some(scale)` for decimal columns: stored integers are value × 10^scale.
    decimal_scale: Option<i32>,
}

/// The leaf columns a load decodes: features in schema order, then the target.
struct ParquetLayout {
    features: Vec<Leaf>,
    target: Leaf,
}

impl ParquetLayout {
    fn map(
        reader: &SerializedFileReader<std::fs::File>,
        schema: &DatasetSchema,
        origin: &str,
    ) -> Result<Self, DataError> {
        let descr = reader.metadata().file_metadata().schema_descr();
        let at = Location::ParquetSchema { path: origin.to_string() };
        let top: Vec<&str> = descr.root_schema().get_fields().iter().map(|f| f.name()).collect();
        match_columns(top.iter().copied(), schema, &at)?;
        let leaf = |spec_name: &str, kind: Option<ColumnType>| -> Result<Leaf, DataError> {
            let wrong = |found: String| DataError::WrongType {
                path: origin.to_string(),
                column: spec_name.to_string(),
                found,
                expected: expected_types(kind).to_string(),
            };
            let (index, column) = descr
                .columns()
                .iter()
                .enumerate()
                .find(|(_, c)| c.path().parts().first().map(String::as_str) == Some(spec_name))
                .ok_or_else(|| wrong("an empty group".into()))?;
            if column.path().parts().len() != 1 || column.max_rep_level() > 0 {
                return Err(wrong("a nested or repeated field".into()));
            }
            check_type(column, kind).map_err(wrong)?;
            Ok(Leaf {
                name: spec_name.to_string(),
                kind,
                index,
                max_def: column.max_def_level(),
                decimal_scale: is_decimal(column).then(|| column.type_scale()),
            })
        };
        Ok(Self {
            features: schema
                .feature_columns()
                .map(|c: &ColumnSpec| leaf(&c.name, Some(c.kind)))
                .collect::<Result<_, _>>()?,
            target: leaf(&schema.target.column, None)?,
        })
    }
}

fn is_decimal(column: &ColumnDescriptor) -> bool {
    matches!(column.logical_type_ref(), Some(LogicalType::Decimal { .. }))
        || column.converted_type() == ConvertedType::DECIMAL
}

/// What a column kind accepts (`None` is the target), for error messages.
fn expected_types(kind: Option<ColumnType>) -> &'static str {
    match kind {
        Some(ColumnType::Numeric) => {
            "numeric (an integer, floating-point, decimal or boolean column)"
        }
        Some(ColumnType::Categorical) => {
            "categorical (a string, integer, boolean, decimal or floating-point column)"
        }
        _ => "the target (a string, integer, boolean, decimal or floating-point column)",
    }
}

/// Refuses a stored type the column kind cannot take; the error text names the stored type.
fn check_type(column: &ColumnDescriptor, kind: Option<ColumnType>) -> Result<(), String> {
    let physical = column.physical_type();
    let logical = column.logical_type_ref();
    let described = || match logical {
        Some(l) => format!("{physical} ({l:?})"),
        None => physical.to_string(),
    };
    let temporal = matches!(
        logical,
        Some(LogicalType::Date | LogicalType::Time { .. } | LogicalType::Timestamp { .. })
    ) || matches!(
        column.converted_type(),
        ConvertedType::DATE
            | ConvertedType::TIME_MILLIS
            | ConvertedType::TIME_MICROS
            | ConvertedType::TIMESTAMP_MILLIS
            | ConvertedType::TIMESTAMP_MICROS
            | ConvertedType::INTERVAL
    );
    let decimal = is_decimal(column);
    let ok = !temporal
        && match physical {
            PhysicalType::BOOLEAN
            | PhysicalType::INT32
            | PhysicalType::INT64
            | PhysicalType::FLOAT
            | PhysicalType::DOUBLE => true,
            PhysicalType::INT96 => false,
            PhysicalType::FIXED_LEN_BYTE_ARRAY => decimal && column.type_length() <= 16,
            PhysicalType::BYTE_ARRAY => decimal || kind != Some(ColumnType::Numeric),
        };
    if ok { Ok(()) } else { Err(described()) }
}

/// A decoded batch of one column's non-null values.
enum Values {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
    /// INT96 is refused by [`check_type`] before any reader is opened.
    Unsupported,
}

/// One stored (non-null) cell.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(&'a [u8]),
}

/// Reads one column chunk batch by batch and hands out one cell per row, `None` for nulls.
struct Cursor {
    reader: ColumnReader,
    max_def: i16,
    def: Vec<i16>,
    values: Values,
    level: usize,
    value: usize,
}

impl Cursor {
    fn new(reader: ColumnReader, leaf: &Leaf) -> Self {
        let values = match &reader {
            ColumnReader::BoolColumnReader(_) => Values::Bool(Vec::new()),
            ColumnReader::Int32ColumnReader(_) => Values::I32(Vec::new()),
            ColumnReader::Int64ColumnReader(_) => Values::I64(Vec::new()),
            ColumnReader::FloatColumnReader(_) => Values::F32(Vec::new()),
            ColumnReader::DoubleColumnReader(_) => Values::F64(Vec::new()),
            ColumnReader::ByteArrayColumnReader(_) => Values::Bytes(Vec::new()),
            ColumnReader::FixedLenByteArrayColumnReader(_) => Values::Fixed(Vec::new()),
            ColumnReader::Int96ColumnReader(_) => Values::Unsupported,
        };
        Self { reader, max_def: leaf.max_def, def: Vec::new(), values, level: 0, value: 0 }
    }

    /// Decodes the next batch; returns its number of rows (0 at the end of the chunk).
    fn read_batch(&mut self, origin: &str) -> Result<usize, DataError> {
        self.def.clear();
        (self.level, self.value) = (0, 0);
        let def = (self.max_def > 0).then_some(&mut self.def);
        // Every typed reader has the same call; only the buffer type differs.
        macro_rules! read {
            ($($reader:ident => $values:ident),*) => {
                match (&mut self.reader, &mut self.values) {
                    $((ColumnReader::$reader(r), Values::$values(v)) => {
                        v.clear();
                        r.read_records(BATCH_ROWS, def, None, v)
                    })*
                    _ => {
                        return Err(DataError::Parquet {
                            path: origin.to_string(),
                            message: "unsupported physical type INT96".into(),
                        });
                    }
                }
            };
        }
        let result = read!(
            BoolColumnReader => Bool,
            Int32ColumnReader => I32,
            Int64ColumnReader => I64,
            FloatColumnReader => F32,
            DoubleColumnReader => F64,
            ByteArrayColumnReader => Bytes,
            FixedLenByteArrayColumnReader => Fixed
        );
        let (records, _, _) = result.map_err(|e| DataError::parquet(origin, &e))?;
        Ok(records)
    }

    /// The next row's cell; `None` when it is null.
    fn next(&mut self) -> Option<Raw<'_>> {
        if self.max_def > 0 {
            let defined = self.def.get(self.level).is_some_and(|&d| d == self.max_def);
            self.level += 1;
            if !defined {
                return None;
            }
        }
        let i = self.value;
        self.value += 1;
        match &self.values {
            Values::Bool(v) => v.get(i).map(|&b| Raw::Bool(b)),
            Values::I32(v) => v.get(i).map(|&x| Raw::Int(i64::from(x))),
            Values::I64(v) => v.get(i).map(|&x| Raw::Int(x)),
            Values::F32(v) => v.get(i).map(|&x| Raw::Float(f64::from(x))),
            Values::F64(v) => v.get(i).map(|&x| Raw::Float(x)),
            Values::Bytes(v) => v.get(i).map(|b| Raw::Bytes(b.data())),
            Values::Fixed(v) => v.get(i).map(|b| Raw::Bytes(b.data())),
            Values::Unsupported => None,
        }
    }
}

/// A big-endian two's-complement integer of at most 16 bytes (a stored decimal).
fn be_integer(bytes: &[u8]) -> i128 {
    let negative = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    let n = bytes.len().min(16);
    buf[16 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    i128::from_be_bytes(buf)
}

impl Raw<'_> {
    /// The number a decimal, integer, float or boolean cell holds (`None` for text).
    fn number(self, leaf: &Leaf) -> Option<f64> {
        let scaled = |n: f64| match leaf.decimal_scale {
            Some(scale) if scale != 0 => n / 10f64.powi(scale),
            _ => n,
        };
        match self {
            Raw::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Raw::Int(x) => Some(scaled(x as f64)),
            Raw::Float(x) => Some(x),
            Raw::Bytes(b) if leaf.decimal_scale.is_some() => Some(scaled(be_integer(b) as f64)),
            Raw::Bytes(_) => None,
        }
    }

    /// The cell's text when it is a string (UTF-8 checked); `Ok(None)` for non-text cells.
    fn text<'t>(self, leaf: &Leaf, at: impl Fn() -> Location) -> Result<Option<&'t str>, DataError>
    where
        Self: 't,
    {
        match self {
            Raw::Bytes(b) if leaf.decimal_scale.is_none() => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| DataError::InvalidUtf8 { at: at(), column: leaf.name.clone() }),
            _ => Ok(None),
        }
    }

    /// The loader's view of a feature cell.
    fn feature_value<'t>(
        self,
        leaf: &Leaf,
        schema: &DatasetSchema,
        at: impl Fn() -> Location,
    ) -> Result<Value<'t>, DataError>
    where
        Self: 't,
    {
        if let (Raw::Bool(b), Some(ColumnType::Categorical)) = (self, leaf.kind) {
            return Ok(Value::Text(if b { "true" } else { "false" }));
        }
        if let Some(text) = self.text(leaf, &at)? {
            return Ok(if schema.is_missing(text) {
                Value::Missing
            } else {
                Value::Text(text.trim())
            });
        }
        match self.number(leaf) {
            Some(x) if x.is_nan() => Ok(Value::Missing),
            Some(x) => Ok(Value::Number(x)),
            None => Ok(Value::Missing),
        }
    }

    /// The target cell as text (`None` when it is NaN), written into `scratch` for numbers.
    fn label_text<'t>(
        self,
        leaf: &Leaf,
        scratch: &'t mut String,
        at: impl Fn() -> Location,
    ) -> Result<Option<&'t str>, DataError>
    where
        Self: 't,
    {
        if let Some(text) = self.text(leaf, &at)? {
            return Ok(Some(text));
        }
        scratch.clear();
        match self {
            Raw::Bool(b) => scratch.push_str(if b { "true" } else { "false" }),
            _ => match self.number(leaf) {
                Some(x) if x.is_nan() => return Ok(None),
                Some(x) => scratch.push_str(&number_as_level(x)),
                None => return Ok(None),
            },
        }
        Ok(Some(scratch.as_str()))
    }
}
