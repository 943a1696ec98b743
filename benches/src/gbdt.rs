//! What the tree benches (`gbdt_quality`, `gbdt_speed`) share: a `gbdt` job's hyper-parameters
//! as the job file states them and as XGBoost names them, the federation's computation over
//! in-process banks, the per-tree AUC curve of an ensemble, and the XGBoost reference run
//! through `benches/python/gbdt_xgboost.py`.
//!
//! The in-process federation is exactly what a `gbdt` job computes, through `confide-gbdt`'s
//! own functions: every bank's fine histograms are summed into the feature space
//! ([`FeatureSet::from_fine_histograms`]), and [`train::train_in_process`] grows the trees from
//! the banks' level histograms summed in memory. Secure aggregation yields the same sums up to
//! its fixed-point resolution (1/65536 per value), which is far below any split's gain margin.

use std::path::{Path, PathBuf};
use std::process::Command;

use confide_core::job::JobSpec;
use confide_core::model::GbdtSpec;
use confide_datasets::{DatasetSchema, RawTable, load_table};
use confide_gbdt::features::local_fine_histograms;
use confide_gbdt::{FeatureSet, GbdtModel, GrowParams, LocalBooster, train};
use ndarray::{Array2, ArrayView2, Axis, concatenate};

use crate::comparison::{CompareError, rank_auc, repo_root};

/// The hyper-parameters of a `gbdt` job, read from its validated [`JobSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct TreeHyper {
    /// Trees (the job's rounds).
    pub trees: u64,
    /// Shrinkage η (the job's learning rate).
    pub eta: f64,
    /// XGBoost's `scale_pos_weight` (the job's `pos_weight`, 1 when unset).
    pub pos_weight: f64,
    /// The job's seed (column samples).
    pub seed: u64,
    /// The tree spec.
    pub spec: GbdtSpec,
}

/// A `gbdt` job file: `top` lines before the tables, `[model]` with `model_lines` (every
/// hyper-parameter not named there keeps the job default), `[training]` with the trees and η,
/// then `tables` (e.g. `[selection]`).
pub fn job_toml(dataset: &str, seed: u64, trees: u64, eta: f64, model_lines: &str, top: &str, tables: &str) -> String {
    format!(
        "name = \"gbdt-bench\"\ndataset = \"{dataset}\"\nseed = {seed}\n{top}\n[model]\nkind = \"gbdt\"\n{model_lines}\n\
         [training]\nrounds = {trees}\nlearning_rate = {eta}\n{tables}\n"
    )
}

impl TreeHyper {
    /// The hyper-parameters of a validated job (fails for a job that is not `gbdt`).
    pub fn of(job: &JobSpec) -> Result<Self, CompareError> {
        let spec = job.model.gbdt().ok_or_else(|| CompareError::Invalid(format!("job model {} is not gbdt", job.model.label())))?;
        Ok(Self {
            trees: job.training.rounds,
            eta: job.training.learning_rate,
            pos_weight: job.training.pos_weight.unwrap_or(1.0),
            seed: job.seed,
            spec: spec.clone(),
        })
    }

    /// Parses and validates a job file ([`job_toml`]) and takes its hyper-parameters.
    pub fn from_toml(toml: &str) -> Result<Self, CompareError> {
        Self::of(&JobSpec::from_toml(toml)?)
    }

    /// The split-finding parameters the coordinator uses.
    pub fn grow(&self) -> GrowParams {
        GrowParams::new(&self.spec, self.eta)
    }

    /// The same hyper-parameters as XGBoost's training parameters (`objective` and
    /// `tree_method = "hist"` are added by the script). `min_leaf_rows` has no XGBoost
    /// counterpart and is not passed; `base_score = 0.5` is the federation's zero base margin.
    pub fn xgboost_params(&self, nthread: Option<usize>) -> serde_json::Value {
        let s = &self.spec;
        let mut params = serde_json::json!({
            "max_depth": s.max_depth,
            "eta": self.eta,
            "lambda": s.lambda,
            "gamma": s.gamma,
            "min_child_weight": s.min_child_weight,
            "max_bin": s.max_bin,
            "subsample": s.subsample,
            "colsample_bytree": s.colsample_bytree,
            "scale_pos_weight": self.pos_weight,
            "base_score": 0.5,
            "seed": self.seed,
        });
        if let (Some(n), Some(map)) = (nthread, params.as_object_mut()) {
            map.insert("nthread".into(), n.into());
        }
        params
    }
}

/// One bank's split of a partition, loaded as its worker loads it.
#[derive(Debug, Clone)]
pub struct BankRows {
    /// Folder name (`bank1`, `France`, ...).
    pub name: String,
    /// Its `train.csv`.
    pub train: RawTable,
    /// Its `test.csv`.
    pub test: RawTable,
}

/// Loads every `<folder>/<bank>/{train,test}.csv` of a partition.
pub fn load_banks(schema: &DatasetSchema, folder: &Path, names: &[String]) -> Result<Vec<BankRows>, CompareError> {
    names
        .iter()
        .map(|name| {
            Ok(BankRows {
                name: name.clone(),
                train: load_table(folder.join(name).join("train.csv"), schema)?,
                test: load_table(folder.join(name).join("test.csv"), schema)?,
            })
        })
        .collect()
}

/// The federation's feature space: cuts from the banks' summed fine histograms.
pub fn federated_features(schema: &DatasetSchema, train: &[&RawTable], max_bin: u32) -> Result<FeatureSet, CompareError> {
    let mut summed: Vec<f64> = Vec::new();
    for table in train {
        crate::comparison::add_into(&mut summed, &local_fine_histograms(table, schema)?);
    }
    Ok(FeatureSet::from_fine_histograms(schema, &summed, max_bin as usize)?)
}

/// Trains the ensemble a `gbdt` job trains on these banks' training rows (see the module docs).
pub fn train_federated(schema: &DatasetSchema, train: &[&RawTable], hyper: &TreeHyper) -> Result<GbdtModel, CompareError> {
    let set = federated_features(schema, train, hyper.spec.max_bin)?;
    let mut boosters = train
        .iter()
        .map(|t| Ok(LocalBooster::new(&set, set.raw_matrix(t, schema)?, t.labels.clone(), 0.0, hyper.pos_weight)))
        .collect::<Result<Vec<_>, CompareError>>()?;
    let s = &hyper.spec;
    Ok(train::train_in_process(&set, &mut boosters, &hyper.grow(), hyper.trees, s.subsample, s.colsample_bytree, hyper.seed)?)
}

/// Rows of several tables as one raw matrix (the trees' features) and their labels.
pub fn pooled_raw(set: &FeatureSet, schema: &DatasetSchema, tables: &[&RawTable]) -> Result<(Array2<f32>, Vec<f32>), CompareError> {
    let parts = tables.iter().map(|t| set.raw_matrix(t, schema)).collect::<Result<Vec<_>, _>>()?;
    let views: Vec<ArrayView2<'_, f32>> = parts.iter().map(Array2::view).collect();
    let raw = if views.is_empty() { Array2::zeros((0, set.len())) } else { concatenate(Axis(0), &views).map_err(|e| CompareError::Invalid(e.to_string()))? };
    Ok((raw, tables.iter().flat_map(|t| t.labels.iter().copied()).collect()))
}

/// A raw matrix in the federation's bins: each cell becomes its histogram slot (NaN for a
/// missing value), so XGBoost fed this matrix splits on exactly the federation's candidate cuts.
pub fn slot_matrix(set: &FeatureSet, raw: ArrayView2<'_, f32>) -> Array2<f32> {
    set.bin_matrix(raw).mapv(|s| if s == confide_gbdt::features::MISSING_SLOT { f32::NAN } else { f32::from(s) })
}

/// AUC of `scores` against `labels` (1.0 positive).
pub fn auc_of(scores: impl IntoIterator<Item = f64>, labels: &[f32]) -> f64 {
    let pairs: Vec<(f64, bool)> = scores.into_iter().zip(labels).map(|(s, &y)| (s, y > 0.5)).collect();
    rank_auc(&pairs)
}

/// The AUC on `raw` rows after each tree of `model` (entry k: the first k + 1 trees).
pub fn auc_curve(model: &GbdtModel, raw: ArrayView2<'_, f32>, labels: &[f32]) -> Vec<f64> {
    let rows: Vec<Vec<f32>> = raw.outer_iter().map(|r| r.to_vec()).collect();
    let mut margins = vec![f64::from(model.base_margin); rows.len()];
    model
        .trees
        .iter()
        .map(|tree| {
            for (m, row) in margins.iter_mut().zip(&rows) {
                *m += f64::from(tree.predict(row));
            }
            // AUC depends on the ranking only, and the sigmoid keeps it.
            auc_of(margins.iter().copied(), labels)
        })
        .collect()
}

/// One XGBoost model to train: its training rows and, optionally, test rows to score.
pub struct XgbFit<'a> {
    /// Name in the results.
    pub name: String,
    /// Training rows (the trees' raw features, NaN missing).
    pub train: ArrayView2<'a, f32>,
    /// Training labels.
    pub labels: &'a [f32],
    /// Rows to score after every tree.
    pub test: Option<ArrayView2<'a, f32>>,
}

/// What one fit gave.
#[derive(Debug, Clone)]
pub struct XgbResult {
    /// The fit's name.
    pub name: String,
    /// Seconds of each run: DMatrix construction (XGBoost's binning) and training.
    pub seconds: Vec<f64>,
    /// Seconds of each run's training alone.
    pub train_seconds: Vec<f64>,
    /// Probabilities of the test rows after each tree (`trees` rows of `test_rows`).
    pub test_curve: Vec<Vec<f32>>,
}

/// The XGBoost run as a whole.
#[derive(Debug, Clone)]
pub struct XgbRun {
    /// `xgboost.__version__`.
    pub version: String,
    /// CPUs Python saw.
    pub cpus: u64,
    /// One per fit, in order.
    pub fits: Vec<XgbResult>,
}

/// The interpreter: `$PYTHON`, else the repository's `.venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("PYTHON").map_or_else(|| repo_root().join(".venv/bin/python"), PathBuf::from)
}

fn write_f32(path: &Path, values: impl Iterator<Item = f32>) -> Result<(), CompareError> {
    let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
    Ok(std::fs::write(path, bytes)?)
}

fn read_f32(path: &Path) -> Result<Vec<f32>, CompareError> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % 4 != 0 {
        return Err(CompareError::Invalid(format!("{}: {} bytes is not whole f32 values", path.display(), bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Trains every fit with XGBoost `hist` (`params` from [`TreeHyper::xgboost_params`]), `runs`
/// times each, in one Python process; data travel as raw f32 files in a temporary folder.
pub fn run_xgboost(params: &serde_json::Value, trees: u64, runs: usize, fits: &[XgbFit<'_>]) -> Result<XgbRun, CompareError> {
    let dir = tempfile::tempdir()?;
    let mut entries = Vec::new();
    for (i, fit) in fits.iter().enumerate() {
        let file = |what: &str| dir.path().join(format!("{i}-{what}.f32"));
        write_f32(&file("x"), fit.train.iter().copied())?;
        write_f32(&file("y"), fit.labels.iter().copied())?;
        let mut entry = serde_json::json!({
            "name": fit.name, "train": file("x"), "labels": file("y"), "rows": fit.train.nrows(), "cols": fit.train.ncols(),
        });
        if let (Some(test), Some(map)) = (fit.test, entry.as_object_mut()) {
            write_f32(&file("t"), test.iter().copied())?;
            map.insert("test".into(), serde_json::json!(file("t")));
            map.insert("test_rows".into(), test.nrows().into());
            map.insert("out".into(), serde_json::json!(file("p")));
        }
        entries.push(entry);
    }
    let manifest = dir.path().join("manifest.json");
    std::fs::write(&manifest, serde_json::to_vec(&serde_json::json!({"params": params, "trees": trees, "runs": runs, "fits": entries}))?)?;
    let script = repo_root().join("benches/python/gbdt_xgboost.py");
    let py = python();
    let output = Command::new(&py)
        .arg(&script)
        .arg(&manifest)
        .output()
        .map_err(|e| CompareError::Invalid(format!("running {}: {e} (PYTHON overrides the interpreter)", py.display())))?;
    if !output.status.success() {
        return Err(CompareError::Invalid(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&output.stderr))));
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let numbers = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect::<Vec<f64>>()).unwrap_or_default();
    let mut results = Vec::new();
    for (i, (fit, got)) in fits.iter().zip(report["fits"].as_array().into_iter().flatten()).enumerate() {
        let test_curve = match fit.test {
            Some(test) if test.nrows() > 0 => {
                let flat = read_f32(&dir.path().join(format!("{i}-p.f32")))?;
                if flat.len() != test.nrows() * trees as usize {
                    return Err(CompareError::Invalid(format!("fit {}: {} scores, expected {} x {}", fit.name, flat.len(), trees, test.nrows())));
                }
                flat.chunks_exact(test.nrows()).map(<[f32]>::to_vec).collect()
            }
            _ => Vec::new(),
        };
        results.push(XgbResult { name: fit.name.clone(), seconds: numbers(&got["seconds"]), train_seconds: numbers(&got["train_seconds"]), test_curve });
    }
    if results.len() != fits.len() {
        return Err(CompareError::Invalid(format!("the XGBoost script reported {} of {} fits", results.len(), fits.len())));
    }
    Ok(XgbRun { version: report["xgboost"].as_str().unwrap_or("?").to_string(), cpus: report["cpus"].as_u64().unwrap_or(0), fits: results })
}

/// The benches' command line: the output folder (first argument that is not a flag, else
/// `benches/results`) and whether `--quick` was given.
pub fn bench_args() -> (PathBuf, bool) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args.iter().find(|a| !a.starts_with("--")).map_or_else(|| repo_root().join("benches/results"), PathBuf::from);
    (out, quick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_defaults_become_xgboost_parameters_of_the_same_value() {
        let hyper = TreeHyper::from_toml(&job_toml("d", 7, 100, 0.3, "", "", "")).expect("valid gbdt job");
        assert_eq!((hyper.trees, hyper.eta, hyper.pos_weight, hyper.seed), (100, 0.3, 1.0, 7));
        let p = hyper.xgboost_params(Some(2));
        assert_eq!(p["max_depth"], 6);
        assert_eq!(p["lambda"], 1.0);
        assert_eq!(p["min_child_weight"], 1.0);
        assert_eq!(p["max_bin"], 256);
        assert_eq!(p["base_score"], 0.5);
        assert_eq!(p["nthread"], 2);
        assert_eq!(hyper.grow().min_leaf_rows, 50);
        let floor = TreeHyper::from_toml(&job_toml("d", 7, 10, 0.3, "min_leaf_rows = 1", "", "")).expect("valid gbdt job");
        assert_eq!(floor.grow().min_leaf_rows, 1);
        assert!(TreeHyper::from_toml("name = \"x\"\ndataset = \"d\"\n[model]\nkind = \"mlp\"\nhidden = [2]\n[training]\nrounds = 1\nlearning_rate = 0.1\n").is_err());
    }

    #[test]
    fn f32_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.f32");
        write_f32(&path, [1.5f32, f32::NAN, -2.0].into_iter()).expect("write");
        let back = read_f32(&path).expect("read");
        assert_eq!(back.len(), 3);
        assert_eq!((back[0], back[2]), (1.5, -2.0));
        assert!(back[1].is_nan());
    }
}
