//! Confide's dataset layer, free of libtorch so the coordinator and CLI can use it.
//!
//! - [`schema`]: the agreed description of a tabular dataset (TOML), its fingerprint, and the
//!   names of the encoded features.
//! - [`table`]: strict CSV loading against a schema into a [`RawTable`].
//! - [`stats`]: additive per-institution statistics, the federation-wide [`Preprocessing`]
//!   derived from their sum, and encoding into model inputs.
//! - [`ratings`]: the shared item catalogue and ratings files for recommendation models.
//! - [`partition`]: splitting one CSV file into per-institution train/test folders.
//!
//! Schemas for the shared public datasets live in `datasets/schemas/`.

pub mod error;
pub mod partition;
pub mod ratings;
pub mod schema;
pub mod stats;
pub mod table;

pub use error::DataError;
pub use ratings::{Catalogue, CatalogueError, Ratings, load_ratings, ratings_stats};
pub use schema::{
    ColumnSpec, ColumnType, DatasetSchema, MissingPolicy, RecommendationSpec, SchemaError, TargetSpec,
};
pub use stats::{
    ColumnTransform, Encoded, Preprocessing, RecommendationPrep, StatsError, local_stats, stats_len,
    stats_names,
};
pub use table::{ColumnData, RawColumn, RawTable, load_csv, load_csv_from_reader};
