//! What a bank computes for a gradient-boosted tree job (`kind = "gbdt"`), from its own rows:
//!
//! - statistics: the preprocessing statistics followed by the fine histograms of every numeric
//!   column over its declared range (federated binning, [`confide_gbdt::features`]);
//! - a tree level: the gradient, hessian and row-count histograms of its training rows for the
//!   growing tree's open nodes ([`confide_gbdt::LocalBooster::level_histograms`]);
//! - evaluation: the score histograms of the ensemble on its test split, like any classifier.
//!
//! A job's booster (binned training rows and the margins of the committed trees) is built at
//! its first tree level and kept, so a level costs one pass over the rows; the margins catch up
//! by the trees added since (they are recomputed when the ensemble is not a continuation). Its
//! row-sample seed is drawn from the OS when the booster is built and never leaves the bank.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use confide_core::metrics::EvalContribution;
use confide_datasets::{DatasetSchema, RawTable};
use confide_gbdt::{GbdtModel, GrowingTree, LocalBooster};

use crate::failure::Failure;

/// Jobs whose boosters a dataset keeps (the oldest is dropped beyond this).
const KEPT_JOBS: usize = 4;

/// One job's booster.
#[derive(Debug)]
struct JobBooster {
    job_id: String,
    /// The feature space it was binned with (a new one rebuilds it).
    features: confide_gbdt::FeatureSet,
    booster: LocalBooster,
    sample_seed: u64,
}

/// A dataset's boosters, by job (what [`level_contribution`] keeps between levels).
#[derive(Debug, Default)]
pub struct Boosters {
    jobs: Mutex<VecDeque<Arc<Mutex<JobBooster>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn model_of(checkpoint: &[u8]) -> Result<GbdtModel, Failure> {
    // The coordinator's checkpoint, verified against its hash: a bad one is a protocol fault.
    GbdtModel::from_bytes(checkpoint).map_err(|e| Failure::protocol(e.to_string()))
}

/// The preprocessing statistics of the training rows `table` followed by the fine histograms of
/// federated binning.
pub fn binning_stats(table: &RawTable, schema: &DatasetSchema) -> Result<Vec<f64>, Failure> {
    let mut v = confide_datasets::local_stats(table, schema);
    // A schema without ranges names only its own column (public), never a value.
    let fine = confide_gbdt::features::local_fine_histograms(table, schema).map_err(|e| Failure::policy(e.to_string()))?;
    v.extend(fine);
    Ok(v)
}

/// This bank's histograms of its training rows `table` for a tree level of job `job_id`.
#[allow(clippy::too_many_arguments)]
pub fn level_contribution(
    boosters: &Boosters,
    table: &RawTable,
    schema: &DatasetSchema,
    job_id: &str,
    checkpoint: &[u8],
    tree: &GrowingTree,
    pos_weight: f64,
    subsample: f64,
) -> Result<Vec<f64>, Failure> {
    let model = model_of(checkpoint)?;
    if tree.features.iter().any(|&f| f >= model.features.len()) {
        return Err(Failure::protocol("the growing tree names a feature the model does not have"));
    }
    let entry = booster(boosters, table, schema, job_id, &model, pos_weight)?;
    let mut entry = lock(&entry);
    entry.booster.sync(&model);
    let JobBooster { booster, sample_seed, .. } = &*entry;
    Ok(booster.level_histograms(&model.features, tree, subsample, *sample_seed))
}

/// The job's booster, built on first use (or when the feature space changed).
fn booster(
    boosters: &Boosters,
    table: &RawTable,
    schema: &DatasetSchema,
    job_id: &str,
    model: &GbdtModel,
    pos_weight: f64,
) -> Result<Arc<Mutex<JobBooster>>, Failure> {
    let mut jobs = lock(&boosters.jobs);
    if let Some(found) = jobs.iter().find(|j| {
        let j = lock(j);
        j.job_id == job_id && j.features == model.features && j.booster.pos_weight == pos_weight
    }) {
        return Ok(found.clone());
    }
    let raw = model.features.raw_matrix(table, schema).map_err(|e| Failure::data(e.to_string()))?;
    let booster = LocalBooster::new(&model.features, raw, table.labels.clone(), model.base_margin, pos_weight);
    let entry = Arc::new(Mutex::new(JobBooster {
        job_id: job_id.to_string(),
        features: model.features.clone(),
        booster,
        sample_seed: rand::random(),
    }));
    jobs.retain(|j| lock(j).job_id != job_id);
    jobs.push_back(entry.clone());
    while jobs.len() > KEPT_JOBS {
        jobs.pop_front();
    }
    Ok(entry)
}

/// The ensemble's evaluation vector on the test rows `table`.
pub fn eval_contribution(table: &RawTable, schema: &DatasetSchema, checkpoint: &[u8], buckets: usize) -> Result<Vec<f64>, Failure> {
    let model = model_of(checkpoint)?;
    let raw = model.features.raw_matrix(table, schema).map_err(|e| Failure::data(e.to_string()))?;
    let probs: Vec<f32> = model.predict_proba(raw.view()).into_iter().map(|p| p as f32).collect();
    Ok(EvalContribution::from_predictions(&probs, &table.labels, buckets).to_vec())
}
