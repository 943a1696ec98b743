//! Picks a table loader by file extension: CSV ([`crate::table`]) or Parquet ([`crate::parquet`]),
//! which both fill the same [`RawTable`] under the same rules.

use std::path::Path;

use crate::error::DataError;
use crate::schema::DatasetSchema;
use crate::table::{DataFormat, RawTable, load_csv};

/// Loads a CSV or Parquet file, chosen by extension (see [`DataFormat::of_path`]).
pub fn load_table(path: impl AsRef<Path>, schema: &DatasetSchema) -> Result<RawTable, DataError> {
    let path = path.as_ref();
    match DataFormat::of_path(path) {
        DataFormat::Csv => load_csv(path, schema),
        DataFormat::Parquet => crate::parquet::load_parquet(path, schema),
    }
}
