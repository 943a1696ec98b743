//! What a bank computes for a gradient-boosted tree job (`kind = "gbdt"`), from its own rows:
//!
//! - statistics: the preprocessing statistics followed by the fine histograms of every numeric
//!   column over its declared range (federated binning, [`confide_gbdt::features`]);
//! - a tree level: the gradient, hessian and row-count histograms of its training rows for the
//!   growing tree's open nodes ([`confide_gbdt::LocalBooster::level_histograms`]);
//! - evaluation: the score histograms of the ensemble on its test split, like any classifier.
//!
//! Differential privacy (record level, `[privacy] mode = "record"`): each bank adds Gaussian
//! noise to its own vectors before they leave, so each is private on its own whatever the
//! other banks do (the noise seeds are the bank's secret `noise_seed` of each request):
//!
//! - statistics: the preprocessing statistics clipped into the declared ranges and the fine
//!   histograms, noised together at the job's `statistics_noise_multiplier` ([`dp_binning_stats`]);
//!   one row adds 1 to at most one fine bin per numeric column, on top of what it adds to the
//!   statistics;
//! - a tree level: `N(0, σ²Δ²)` on every entry ([`add_level_noise`]), Δ the level vector's L2
//!   sensitivity to one row ([`level_sensitivity`]): a row sits in one node and, per sampled
//!   feature, in one slot, to which it adds (g, h, 1), |g| ≤ max(1, pos_weight) and
//!   h ≤ max(1, pos_weight)/4 (|p − y| ≤ 1, p(1 − p) ≤ 1/4), each plus 2⁻¹⁶ (more than
//!   rounding onto the gradients' grid adds). Δ = √(F·(g_max² + h_max² + 1)) for F sampled features: one Gaussian mechanism,
//!   ρ = 1/(2σ²) per level, which the bank's budget charges at admission ([`confide_core::spend`]);
//! - evaluation: as for any classifier, with probabilities floored for the log loss.
//!
//! The exact-grid gradients (below) make no difference once noise is added; the coordinator's
//! split search treats the noisy sums as post-processing ([`confide_gbdt::GrowingTree::apply_level`]).
//!
//! A job's booster (binned training rows and the margins of the committed trees) is built at
//! its first tree level and kept, so a level costs one pass over the rows; the margins catch up
//! by the trees added since (they are recomputed when the ensemble is not a continuation). Its
//! row-sample seed is drawn from the OS when the booster is built and never leaves the bank.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use confide_core::metrics::EvalContribution;
use confide_core::record_noise;
use confide_core::spend::DpJob;
use confide_datasets::{DatasetSchema, RawTable};
use confide_gbdt::{GbdtModel, GrowingTree, LocalBooster};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

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
/// federated binning; for a DP job (its terms and the request's bank-secret noise seed) noised as
/// [`dp_binning_stats`] says.
pub fn binning_stats(table: &RawTable, schema: &DatasetSchema, dp: Option<(&DpJob, u64)>) -> Result<Vec<f64>, Failure> {
    if let Some((dp, noise_seed)) = dp {
        return dp_binning_stats(table, schema, dp, noise_seed);
    }
    let mut v = confide_datasets::local_stats(table, schema);
    // A schema without ranges names only its own column (public), never a value.
    let fine = confide_gbdt::features::local_fine_histograms(table, schema).map_err(|e| Failure::policy(e.to_string()))?;
    v.extend(fine);
    Ok(v)
}

/// [`binning_stats`] of a DP job: the statistics clipped into the declared ranges and the fine
/// histograms, with the Gaussian noise of the job's statistics noise multiplier from the
/// bank-secret `noise_seed` (see the module docs).
pub fn dp_binning_stats(table: &RawTable, schema: &DatasetSchema, dp: &DpJob, noise_seed: u64) -> Result<Vec<f64>, Failure> {
    // A schema without ranges names only its own column (public), never a value.
    let mut sensitivity = confide_datasets::stats_sensitivity(schema).map_err(|e| Failure::policy(e.to_string()))?;
    let mut v = confide_datasets::clipped_local_stats(table, schema).map_err(|e| Failure::policy(e.to_string()))?;
    // Values outside a column's range count in its end bins, so each row adds at most 1 to one
    // fine bin per numeric column.
    let fine = confide_gbdt::features::local_fine_histograms(table, schema).map_err(|e| Failure::policy(e.to_string()))?;
    sensitivity.per_slot.extend(std::iter::repeat_n(1.0, fine.len()));
    sensitivity.slots_per_row += confide_gbdt::features::numeric_columns(schema).count();
    v.extend(fine);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(noise_seed);
    record_noise::add_gaussian(&mut v, &sensitivity, dp.privacy.statistics_noise_multiplier, &mut rng);
    Ok(v)
}

/// The L2 sensitivity of a level histogram vector to one row, for a tree sampling `features`
/// features with positive rows weighted `pos_weight` ([`confide_core::spend::tree_level_sensitivity`]).
pub fn level_sensitivity(features: usize, pos_weight: f64) -> f64 {
    confide_core::spend::tree_level_sensitivity(features, pos_weight)
}

/// Adds the Gaussian mechanism's noise for a tree level at the job's noise multiplier to this
/// bank's level vector `values` of tree `tree`: `N(0, (σΔ)²)` on every entry, from the bank-secret
/// `noise_seed`. Refuses terms that are not a record-level tree job's (what the bank's budget
/// charged this task as).
pub fn add_level_noise(values: &mut [f64], tree: &GrowingTree, pos_weight: f64, dp: &DpJob, noise_seed: u64) -> Result<(), Failure> {
    if dp.tree_levels.is_none() || dp.privacy.mode != confide_core::job::PrivacyMode::Record {
        return Err(Failure::policy("a tree level under differential privacy terms that are not a record-level tree job's"));
    }
    let sigma = dp.sigma().map_err(|e| Failure::policy(e.to_string()))?;
    let scale = sigma * level_sensitivity(tree.features.len(), pos_weight);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(noise_seed);
    for v in values.iter_mut() {
        let z: f64 = StandardNormal.sample(&mut rng);
        *v += z * scale;
    }
    Ok(())
}

/// This bank's histograms of its training rows `table` for a tree level of job `job_id`; for a
/// DP job (its terms and the request's bank-secret noise seed) with the level's Gaussian noise
/// ([`add_level_noise`]).
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
    dp: Option<(&DpJob, u64)>,
) -> Result<Vec<f64>, Failure> {
    let model = model_of(checkpoint)?;
    // The coordinator's tree must fit the model: features, splits, children and the nodes it
    // asks histograms for (a malformed one is a protocol fault, not a crash or a wrong sum).
    tree.check(&model.features).map_err(|e| Failure::protocol(e.to_string()))?;
    let entry = booster(boosters, table, schema, job_id, &model, pos_weight)?;
    let mut v = {
        let mut entry = lock(&entry);
        entry.booster.sync(&model);
        let JobBooster { booster, sample_seed, .. } = &*entry;
        booster.level_histograms(&model.features, tree, subsample, *sample_seed)
    };
    if let Some((dp, noise_seed)) = dp {
        add_level_noise(&mut v, tree, pos_weight, dp, noise_seed)?;
    }
    Ok(v)
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

/// The ensemble's evaluation vector on the test rows `table`; for a DP job (its terms and the
/// request's bank-secret noise seed) as [`dp_eval_contribution`] says.
pub fn eval_contribution(
    table: &RawTable,
    schema: &DatasetSchema,
    checkpoint: &[u8],
    buckets: usize,
    dp: Option<(&DpJob, u64)>,
) -> Result<Vec<f64>, Failure> {
    if let Some((dp, noise_seed)) = dp {
        return dp_eval_contribution(table, schema, checkpoint, buckets, dp, noise_seed);
    }
    let probs = eval_probabilities(table, schema, checkpoint)?;
    Ok(EvalContribution::from_predictions(&probs, &table.labels, buckets).to_vec())
}

/// [`eval_contribution`] of a DP job: probabilities floored for the log loss and the evaluation
/// vector's Gaussian noise from the bank-secret `noise_seed`, as for any classifier.
pub fn dp_eval_contribution(
    table: &RawTable,
    schema: &DatasetSchema,
    checkpoint: &[u8],
    buckets: usize,
    dp: &DpJob,
    noise_seed: u64,
) -> Result<Vec<f64>, Failure> {
    let probs = eval_probabilities(table, schema, checkpoint)?;
    let floor = record_noise::DP_EVAL_MIN_PROBABILITY;
    let mut v = EvalContribution::from_predictions_with_floor(&probs, &table.labels, buckets, floor).to_vec();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(noise_seed);
    record_noise::add_gaussian(&mut v, &record_noise::eval_sensitivity(buckets), dp.privacy.evaluation_noise_multiplier, &mut rng);
    Ok(v)
}

fn eval_probabilities(table: &RawTable, schema: &DatasetSchema, checkpoint: &[u8]) -> Result<Vec<f32>, Failure> {
    let model = model_of(checkpoint)?;
    let raw = model.features.raw_matrix(table, schema).map_err(|e| Failure::data(e.to_string()))?;
    Ok(model.predict_proba(raw.view()).into_iter().map(|p| p as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_datasets::{ColumnData, RawColumn};

    const SCHEMA: &str = r#"
name = "toy"
missing = "fail"
[target]
column = "y"
positive = "1"
negative = "0"
[[columns]]
name = "x1"
type = "numeric"
range = [0, 100]
[[columns]]
name = "x2"
type = "numeric"
range = [0, 17]
[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b"]
"#;

    fn schema() -> DatasetSchema {
        DatasetSchema::parse(SCHEMA, "test").expect("schema")
    }

    /// `rows` rows of a deterministic pattern, with a missing value now and then.
    fn table(schema: &DatasetSchema, rows: usize) -> RawTable {
        let x1 = (0..rows).map(|i| (i % 7 != 3).then_some(((i * 37) % 101) as f64)).collect();
        let x2 = (0..rows).map(|i| Some(((i * 13) % 18) as f64)).collect();
        let c = (0..rows).map(|i| (i % 5 != 0).then_some((i % 2) as u32)).collect();
        RawTable {
            source: "test".into(),
            schema_fingerprint: schema.fingerprint(),
            rows,
            columns: vec![
                RawColumn { name: "x1".into(), data: ColumnData::Numeric(x1) },
                RawColumn { name: "x2".into(), data: ColumnData::Numeric(x2) },
                RawColumn { name: "c".into(), data: ColumnData::Categorical(c) },
            ],
            labels: (0..rows).map(|i| if (i * 7) % 3 == 0 { 1.0 } else { 0.0 }).collect(),
            dropped_rows: 0,
        }
    }

    /// Row `r` left out of `t`.
    fn without(t: &RawTable, r: usize) -> RawTable {
        let mut out = t.clone();
        out.rows -= 1;
        out.labels.remove(r);
        for col in &mut out.columns {
            match &mut col.data {
                ColumnData::Numeric(v) => {
                    v.remove(r);
                }
                ColumnData::Categorical(v) => {
                    v.remove(r);
                }
            }
        }
        out
    }

    fn dp_job(sigma: f64) -> DpJob {
        let text = format!(
            "name = \"trees\"\ndataset = \"toy\"\n[model]\nkind = \"gbdt\"\nmax_depth = 3\n[training]\nrounds = 5\nlearning_rate = 0.3\n\
             [privacy]\nmode = \"record\"\nnoise_multiplier = {sigma}\nplanned_rows = 1000\n"
        );
        DpJob::of(&confide_core::job::JobSpec::from_toml(&text).expect("job")).expect("dp")
    }

    /// A model over `table`'s own fine histograms and a two-level tree whose root split on x1.
    fn model_and_tree(schema: &DatasetSchema, table: &RawTable) -> (GbdtModel, GrowingTree) {
        let fine = confide_gbdt::features::local_fine_histograms(table, schema).expect("fine");
        let features = confide_gbdt::FeatureSet::from_fine_histograms(schema, &fine, 16).expect("features");
        let model = GbdtModel { base_margin: 0.3, features, trees: Vec::new() };
        let mut tree = GrowingTree::new(0, (0..model.features.len()).collect());
        let params = confide_gbdt::GrowParams { eta: 0.3, lambda: 1.0, gamma: 0.0, min_child_weight: 0.0, min_leaf_rows: 1, max_depth: 3 };
        let boosters = Boosters::default();
        let root = level_contribution(&boosters, table, schema, "j", &model.to_bytes(), &tree, 2.5, 1.0, None).expect("root");
        tree.apply_level(&root, &model.features, &params).expect("split");
        tree.send_all();
        (model, tree)
    }

    #[test]
    fn one_row_moves_a_level_vector_by_at_most_the_stated_sensitivity() {
        let schema = schema();
        let t = table(&schema, 300);
        let (model, tree) = model_and_tree(&schema, &t);
        assert!(tree.depth == 1 && tree.frontier.len() == 2, "{tree:?}");
        let checkpoint = model.to_bytes();
        let full = level_contribution(&Boosters::default(), &t, &schema, "j", &checkpoint, &tree, 2.5, 1.0, None).expect("full");
        let bound = level_sensitivity(tree.features.len(), 2.5);
        let mut largest = 0.0f64;
        for r in [0, 1, 3, 10, 77, 299] {
            let less = level_contribution(&Boosters::default(), &without(&t, r), &schema, "j", &checkpoint, &tree, 2.5, 1.0, None).expect("less");
            let l2 = full.iter().zip(&less).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            assert!(l2 <= bound, "row {r}: {l2} > {bound}");
            largest = largest.max(l2);
        }
        // The bound is not loose by orders of magnitude: a row moves the vector by more than a
        // third of it (its count alone moves √F).
        assert!(largest > bound / 3.0, "{largest} vs {bound}");
        assert!((level_sensitivity(4, 0.5) - (4.0 * (1.0f64 + 1.0 / 16.0 + 1.0)).sqrt()).abs() < 1e-3);
    }

    #[test]
    fn a_dp_level_vector_is_the_exact_one_plus_noise_of_the_stated_scale() {
        let schema = schema();
        let t = table(&schema, 300);
        let (model, tree) = model_and_tree(&schema, &t);
        let exact = level_contribution(&Boosters::default(), &t, &schema, "j", &model.to_bytes(), &tree, 2.5, 1.0, None).expect("exact");
        let dp = dp_job(1.7);
        let expected = 1.7 * level_sensitivity(tree.features.len(), 2.5);
        let mut diffs = Vec::new();
        for seed in 0..40u64 {
            let mut noisy = exact.clone();
            add_level_noise(&mut noisy, &tree, 2.5, &dp, seed).expect("noise");
            diffs.extend(noisy.iter().zip(&exact).map(|(n, e)| n - e));
        }
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let sd = (diffs.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!(diffs.len() > 5_000, "{}", diffs.len());
        assert!((sd / expected - 1.0).abs() < 0.1, "noise sd {sd}, stated {expected}");
        assert!(mean.abs() < 0.1 * expected, "{mean}");
        // The bank's seed decides the noise: the same seed the same vector, another seed another.
        let (mut a, mut b, mut c) = (exact.clone(), exact.clone(), exact.clone());
        for (v, seed) in [(&mut a, 5), (&mut b, 5), (&mut c, 6)] {
            add_level_noise(v, &tree, 2.5, &dp, seed).expect("noise");
        }
        assert!(a == b && a != c);
        // Terms that are not a record-level tree job's are refused.
        let mut not_trees = dp.clone();
        not_trees.tree_levels = None;
        assert!(add_level_noise(&mut a, &tree, 2.5, &not_trees, 1).is_err());
    }

    #[test]
    fn dp_binning_statistics_cover_the_fine_histograms_with_the_statistics_noise() {
        let schema = schema();
        let t = table(&schema, 300);
        let exact = binning_stats(&t, &schema, None).expect("exact");
        let dp = dp_job(1.0);
        let noisy = binning_stats(&t, &schema, Some((&dp, 9))).expect("noisy");
        assert_eq!(noisy.len(), exact.len());
        // The fine histograms are the tail: every bin noised, with unit per-slot sensitivity and
        // √(statistics slots + one per numeric column) slots per row.
        let fine = confide_gbdt::features::fine_histogram_len(&schema);
        let stats = confide_datasets::stats_sensitivity(&schema).expect("sensitivity");
        let expected = dp.privacy.statistics_noise_multiplier * ((stats.slots_per_row + 2) as f64).sqrt();
        let tail: Vec<f64> = noisy[noisy.len() - fine..].iter().zip(&exact[exact.len() - fine..]).map(|(n, e)| n - e).collect();
        let sd = (tail.iter().map(|d| d * d).sum::<f64>() / tail.len() as f64).sqrt();
        assert!((sd / expected - 1.0).abs() < 0.1, "fine histogram noise sd {sd}, stated {expected}");
        assert!(tail.iter().all(|d| *d != 0.0));
    }
}
