//! What a worker computes for each task, from its local data: the vector it contributes.
//!
//! - statistics: additive preprocessing sums of the training split;
//! - training: `[n·(w_local − w_global)…, n, n·loss]` after local epochs from the global model;
//! - evaluation: score histograms and metric sums of the global model on the test split.
//!
//! Rows are loaded here and never leave this module: only these vectors do. Failures carry a
//! kind and a reason (a data error names file, line and column) that the coordinator records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use confide_core::job::LocalTraining;
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Encoded, Preprocessing, RawTable};
use tch::Device;

use crate::config::DatasetConfig;
use crate::ml;

/// Why a task could not be done; reported to the coordinator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {reason}")]
pub struct Failure {
    /// `data`, `training`, `protocol`, `policy` or `internal`.
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

impl Failure {
    /// A failure of kind `kind`.
    pub fn new(kind: &'static str, reason: impl std::fmt::Display) -> Self {
        Self { kind, reason: reason.to_string() }
    }
}

/// A dataset this worker offers, with its schema loaded and its splits loaded on first use.
#[derive(Debug)]
pub struct LocalDataset {
    /// Configuration.
    pub config: DatasetConfig,
    /// Parsed schema.
    pub schema: DatasetSchema,
    /// Schema fingerprint sent at registration.
    pub fingerprint: String,
    tables: Mutex<HashMap<&'static str, Arc<RawTable>>>,
    encoded: Mutex<HashMap<(&'static str, String), Arc<Encoded>>>,
}

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training rows.
    Train,
    /// Held-out rows.
    Test,
}

impl Split {
    fn key(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl LocalDataset {
    /// Loads the schema (data files are read on first use).
    pub fn open(config: DatasetConfig) -> Result<Self, Failure> {
        let schema = DatasetSchema::from_file(&config.schema).map_err(|e| Failure::new("data", e))?;
        if schema.name != config.name {
            return Err(Failure::new(
                "data",
                format!("{}: schema describes dataset `{}`, config names it `{}`", config.schema.display(), schema.name, config.name),
            ));
        }
        let fingerprint = schema.fingerprint();
        Ok(Self { config, schema, fingerprint, tables: Mutex::default(), encoded: Mutex::default() })
    }

    fn path(&self, split: Split) -> &Path {
        match split {
            Split::Train => &self.config.train,
            Split::Test => &self.config.test,
        }
    }

    /// The raw rows of a split (loaded once; a bad file is re-read on the next task, so a
    /// fixed file is picked up without restarting).
    pub fn table(&self, split: Split) -> Result<Arc<RawTable>, Failure> {
        if let Some(t) = lock(&self.tables).get(split.key()) {
            return Ok(t.clone());
        }
        let table = Arc::new(confide_datasets::load_table(self.path(split), &self.schema).map_err(|e| Failure::new("data", e))?);
        if table.rows == 0 {
            return Err(Failure::new("data", format!("{}: no usable rows", self.path(split).display())));
        }
        lock(&self.tables).insert(split.key(), table.clone());
        Ok(table)
    }

    /// A split encoded with the federation's preprocessing (cached per preprocessing).
    pub fn encoded(&self, split: Split, prep: &Preprocessing, prep_key: &str) -> Result<Arc<Encoded>, Failure> {
        let key = (split.key(), prep_key.to_string());
        if let Some(e) = lock(&self.encoded).get(&key) {
            return Ok(e.clone());
        }
        let table = self.table(split)?;
        let enc = Arc::new(prep.encode(&table).map_err(|e| Failure::new("data", e))?);
        lock(&self.encoded).insert(key, enc.clone());
        Ok(enc)
    }

    /// The additive statistics of the training split.
    pub fn stats(&self) -> Result<Vec<f64>, Failure> {
        let table = self.table(Split::Train)?;
        Ok(confide_datasets::local_stats(&table, &self.schema))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A model as shipped in a task, parsed against the job's preprocessing.
pub struct ModelInput<'a> {
    /// Model family.
    pub spec: &'a ModelSpec,
    /// Checkpoint bytes (safetensors).
    pub checkpoint: &'a [u8],
    /// The scripted module of a `torchscript` model (verified against its hash), else None.
    pub module: Option<&'a [u8]>,
    /// Federation preprocessing.
    pub prep: &'a Preprocessing,
    /// Cache key of the preprocessing (its JSON text).
    pub prep_key: &'a str,
}

impl ModelInput<'_> {
    fn params(&self) -> Result<ModelParams, Failure> {
        let layout = self.spec.layout(self.prep.input_dim());
        ModelParams::from_safetensors(self.checkpoint, &layout).map_err(|e| Failure::new("protocol", format!("global model: {e}")))
    }

    /// The model with `params` loaded, for rows of width `input_dim`.
    fn build(&self, params: &ModelParams, input_dim: usize, device: Device) -> Result<Box<dyn ml::Classifier>, Failure> {
        ml::build_model(self.spec, self.module, params, input_dim, device).map_err(|e| Failure::new("training", e))
    }
}

/// Trains locally and returns `[n·Δ…, n, n·loss]`.
pub fn train_contribution(
    data: &LocalDataset,
    model: &ModelInput<'_>,
    local: &LocalTraining,
    device: Device,
) -> Result<Vec<f64>, Failure> {
    let global = model.params()?;
    let enc = data.encoded(Split::Train, model.prep, model.prep_key)?;
    let cfg = ml::TrainConfig::from(local);
    let mut net = model.build(&global, enc.dim, device)?;
    let out = ml::train_model(net.as_mut(), &enc, &cfg, device).map_err(|e| Failure::new("training", e))?;
    let n = out.samples as f64;
    let mut v: Vec<f64> =
        out.params.values.iter().zip(&global.values).map(|(w, g)| n * (f64::from(*w) - f64::from(*g))).collect();
    v.push(n);
    v.push(n * out.mean_loss);
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Failure::new("training", format!("update element {i} is not finite")));
    }
    Ok(v)
}

/// Evaluates the model on the test split and returns its evaluation contribution vector.
pub fn eval_contribution(data: &LocalDataset, model: &ModelInput<'_>, buckets: usize, device: Device) -> Result<Vec<f64>, Failure> {
    let params = model.params()?;
    let enc = data.encoded(Split::Test, model.prep, model.prep_key)?;
    let mut net = model.build(&params, enc.dim, device)?;
    let c = ml::evaluate_with(net.as_mut(), &enc, buckets, device).map_err(|e| Failure::new("training", e))?;
    Ok(c.to_vec())
}
