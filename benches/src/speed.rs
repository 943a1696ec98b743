//! Shared pieces of the training-speed benches (`train_speed`, `dp_speed`): the UCI Taiwan
//! rows as one institution holding all of them would encode them, raw float32 files for the
//! Python side, medians and run spreads.

use std::path::Path;

use confide_datasets::{DatasetSchema, Encoded, Preprocessing};

use crate::comparison;

/// A bench's error at its binary edge.
pub type BoxError = Box<dyn std::error::Error>;

/// The median (NaN for no values).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `min-max` of runs, rounded.
pub fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

/// The Taiwan credit rows, encoded as one institution holding all of them would encode them.
pub fn taiwan_rows() -> Result<Encoded, BoxError> {
    let schema = DatasetSchema::from_file(comparison::repo_root().join("datasets/schemas/uci_credit_card_default.toml"))?;
    let table = confide_datasets::load_csv(comparison::shared_datasets().join("uci_credit_card_default/UCI_Credit_Card.csv"), &schema)?;
    let prep = Preprocessing::from_aggregate(&schema, &confide_datasets::local_stats(&table, &schema))?;
    Ok(prep.encode(&table)?)
}

/// Writes values as raw little-endian float32 (what the Python scripts read without numpy).
pub fn write_f32(path: &Path, values: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}
