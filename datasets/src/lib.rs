//! Confide's dataset layer, free of libtorch so the coordinator and CLI can use it.
//!
//! - [`schema`]: the agreed description of a tabular dataset (TOML), its fingerprint, and the
//!   names of the encoded features.
//! - [`table`]: strict loading of a CSV or Parquet file against a schema into a [`RawTable`]
//!   ([`load_table`] picks the format by extension); [`parquet`] is the Parquet side.
//! - [`stats`]: additive per-institution statistics, the federation-wide [`Preprocessing`]
//!   derived from their sum, and encoding into model inputs.
//! - [`ratings`]: the shared item catalogue and ratings files for recommendation models.
//! - [`partition`]: splitting one data file into per-institution train/test folders.
//! - [`output`]: streaming rows to CSV or Parquet files.
//! - [`synth`]: synthetic datasets with a known logistic ground truth and drift between
//!   institutions, for scale tests.
//!
//! Schemas for the shared public datasets live in `datasets/schemas/`.

pub mod error;
pub mod load;
pub mod output;
pub mod parquet;
pub mod partition;
pub mod ratings;
pub mod schema;
pub mod stats;
pub mod synth;
pub mod table;

pub use error::{DataError, Location};
pub use load::load_table;
pub use parquet::load_parquet;
pub use ratings::{Catalogue, CatalogueError, Ratings, load_ratings, ratings_stats};
pub use schema::{
    ColumnSpec, ColumnType, DatasetSchema, MissingPolicy, RecommendationSpec, SchemaError, TargetSpec,
};
pub use stats::{
    ColumnTransform, Encoded, Preprocessing, RecommendationPrep, StatsError, clipped_local_stats,
    first_unranged_column, local_stats, stats_len, stats_names, stats_sensitivity,
};
pub use table::{
    ColumnData, DataFormat, RawColumn, RawTable, load_csv, load_csv_from_reader,
};
