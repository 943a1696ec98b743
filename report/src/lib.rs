//! Report building blocks shared by the CLI (`confide job report`) and the benchmark binaries:
//! line charts written as PNG files and result tables rendered as markdown, CSV or aligned text.
//!
//! Free of libtorch and of system libraries: charts are drawn by plotters' bitmap backend and
//! their text with DejaVu Sans embedded from the `dejavu` crate, so a chart renders the same on a
//! bare CI machine as on a developer's laptop.

mod chart;
mod table;

pub use chart::{CHART_HEIGHT, CHART_WIDTH, Series, line_chart_png};
pub use table::Table;

use std::path::PathBuf;

/// Why a chart or table could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// No series has a single point, so there is nothing to scale the axes to.
    #[error("chart {title:?} has no points to draw")]
    NoPoints { title: String },
    /// A coordinate is NaN or infinite; plotting it would silently distort the axes.
    #[error("series {series:?} point {index} is not finite: ({x}, {y})")]
    NonFinitePoint {
        series: String,
        index: usize,
        x: f64,
        y: f64,
    },
    /// A row does not have one cell per header.
    #[error("table row {row} has {found} cells but the table has {expected} columns")]
    RaggedRow {
        row: usize,
        expected: usize,
        found: usize,
    },
    /// The embedded font could not be parsed (a broken build, never user input).
    #[error("the embedded chart font could not be loaded")]
    Font,
    /// plotters failed while drawing or encoding the image.
    #[error("drawing chart {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
