//! Tree quality (issue 14, item 5): federated histogram GBDT against centralised XGBoost
//! (`tree_method = "hist"`, the same hyper-parameters) on the same pooled test set, and against
//! XGBoost trained by each bank alone (local-only, averaged over banks), on UCI Taiwan credit
//! default, the bank's Churn_Modelling and Telco churn; IID and non-IID splits (Dirichlet label
//! skew; by country for Churn_Modelling, the one dataset with a natural column to split on).
//!
//! Convention of the other comparisons (`comparison.rs`): the dataset is partitioned into banks
//! with `confide_datasets::partition`, each bank holds out 20 % of its rows (stratified) and the
//! pooled test set is the union of those test splits, so every setting of a partition is scored
//! on the same rows; the centralised models learn from the union of the training splits.
//!
//! Federated is computed in process through `confide-gbdt` exactly as a `gbdt` job computes it
//! (see `confide_benches::gbdt`): the same sums secure aggregation yields, up to its 1/65536
//! fixed-point resolution. It runs twice: with `min_leaf_rows = 1`, which is the setting with
//! XGBoost's hyper-parameters (XGBoost has no floor on rows per leaf), and with the job default
//! `min_leaf_rows = 50`, the privacy floor a bank would run with. A third XGBoost model, trained
//! centrally on the federation's bins (each cell replaced by its histogram slot), separates the
//! effect of the federated cut points from that of the training algorithm.
//!
//! Hyper-parameters are the job defaults (max_depth 6, λ 1, γ 0, min_child_weight 1, max_bin 256,
//! no row or column subsampling) with η = 0.3 (`CONFIDE_GBDT_ETA` overrides it) and 100 trees;
//! `--quick` runs one seed, 10 trees and one split per dataset (Taiwan IID, Churn_Modelling by
//! Geography, Telco Dirichlet), for a CI smoke run.
//!
//! Writes `gbdt_quality.{csv,md}` and one PNG per dataset × split (AUC after each tree) into the
//! output folder (default `benches/results`).
//!
//! `cargo run --release -p confide-benches --bin gbdt_quality -- [OUT_DIR] [--quick]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use confide_benches::comparison::{self, CompareError, file_part, mean_sd};
use confide_benches::gbdt::{self, TreeHyper, XgbFit};
use confide_datasets::DatasetSchema;
use confide_datasets::partition::{PartitionConfig, Scheme, partition_csv};
use confide_report::{Series, Table, line_chart_png};

/// Target: federated (`min_leaf_rows = 1`) within this AUC of centralised XGBoost.
const TARGET_GAP: f64 = 0.003;
/// The job default shrinkage the comparison uses; `CONFIDE_GBDT_ETA` overrides it.
const ETA: f64 = 0.3;

struct Split {
    label: &'static str,
    banks: Option<usize>,
    scheme: Scheme,
    /// Non-IID: federated must beat the local-only average.
    non_iid: bool,
}

struct Study {
    dataset: &'static str,
    csv: PathBuf,
    schema: PathBuf,
    min_rows: usize,
    splits: Vec<Split>,
    /// The one split `--quick` runs (IID, Dirichlet and by-column each once over the datasets).
    quick: usize,
}

fn studies() -> Vec<Study> {
    let data = comparison::shared_datasets();
    let schemas = comparison::repo_root().join("datasets/schemas");
    let iid = || Split { label: "IID", banks: Some(5), scheme: Scheme::Iid, non_iid: false };
    let dirichlet = |alpha: f64, label: &'static str| Split { label, banks: Some(5), scheme: Scheme::Dirichlet { alpha }, non_iid: true };
    vec![
        Study {
            dataset: "UCI Taiwan credit default",
            csv: data.join("uci_credit_card_default/UCI_Credit_Card.csv"),
            schema: schemas.join("uci_credit_card_default.toml"),
            min_rows: 500,
            splits: vec![iid(), dirichlet(0.3, "Dirichlet α=0.3")],
            quick: 0,
        },
        Study {
            dataset: "Bank Churn_Modelling",
            csv: data.join("bank_churn_modelling/Churn_Modelling.csv"),
            schema: schemas.join("bank_churn_modelling.toml"),
            min_rows: 200,
            splits: vec![
                iid(),
                dirichlet(0.3, "Dirichlet α=0.3"),
                Split { label: "by Geography", banks: None, scheme: Scheme::ByColumn { column: "Geography".into() }, non_iid: true },
            ],
            quick: 2,
        },
        Study {
            dataset: "Telco churn",
            csv: data.join("telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"),
            schema: schemas.join("telco_churn.toml"),
            min_rows: 200,
            splits: vec![iid(), dirichlet(0.5, "Dirichlet α=0.5")],
            quick: 1,
        },
    ]
}

/// One dataset × split × seed.
struct Run {
    dataset: String,
    split: String,
    non_iid: bool,
    seed: u64,
    banks: usize,
    train_rows: usize,
    test_rows: usize,
    /// AUC after each tree.
    xgb_central: Vec<f64>,
    xgb_on_fed_bins: Vec<f64>,
    fed_floor1: Vec<f64>,
    fed_default: Vec<f64>,
    /// Per bank: (name, training rows, AUC curve on the pooled test set).
    local: Vec<(String, usize, Vec<f64>)>,
    /// Seconds of training: federated with each floor, XGBoost central.
    fed1_seconds: f64,
    fed50_seconds: f64,
    xgb_seconds: f64,
    xgb_version: String,
}

fn last(curve: &[f64]) -> f64 {
    curve.last().copied().unwrap_or(f64::NAN)
}

impl Run {
    fn central(&self) -> f64 {
        last(&self.xgb_central)
    }
    fn fed1(&self) -> f64 {
        last(&self.fed_floor1)
    }
    fn fed50(&self) -> f64 {
        last(&self.fed_default)
    }
    fn local_mean(&self) -> f64 {
        self.local.iter().map(|l| last(&l.2)).sum::<f64>() / self.local.len().max(1) as f64
    }
    fn local_mean_curve(&self) -> Vec<f64> {
        let len = self.local.iter().map(|l| l.2.len()).min().unwrap_or(0);
        (0..len).map(|k| self.local.iter().map(|l| l.2[k]).sum::<f64>() / self.local.len() as f64).collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(schema: &DatasetSchema, folder: &Path, names: &[String], study: &Study, split: &Split, seed: u64, trees: u64, eta: f64) -> Result<Run, CompareError> {
    let banks = gbdt::load_banks(schema, folder, names)?;
    let train: Vec<_> = banks.iter().map(|b| &b.train).collect();
    let test: Vec<_> = banks.iter().map(|b| &b.test).collect();
    let hyper = |floor: &str| TreeHyper::from_toml(&gbdt::job_toml(&schema.name, seed, trees, eta, floor, "", ""));
    let (floor1, default) = (hyper("min_leaf_rows = 1")?, hyper("")?);

    let set = gbdt::federated_features(schema, &train, default.spec.max_bin)?;
    let (test_raw, test_labels) = gbdt::pooled_raw(&set, schema, &test)?;
    let started = Instant::now();
    let fed1 = gbdt::train_federated(schema, &train, &floor1)?;
    let fed1_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let fed50 = gbdt::train_federated(schema, &train, &default)?;
    let fed50_seconds = started.elapsed().as_secs_f64();

    // XGBoost: centrally on the pooled training rows (raw values, its own quantile sketch), centrally on the
    // federation's bins, and each bank alone; every model scored on the pooled test rows.
    let (train_raw, train_labels) = gbdt::pooled_raw(&set, schema, &train)?;
    let train_slots = gbdt::slot_matrix(&set, train_raw.view());
    let test_slots = gbdt::slot_matrix(&set, test_raw.view());
    let own: Vec<_> = banks.iter().map(|b| gbdt::pooled_raw(&set, schema, &[&b.train])).collect::<Result<_, _>>()?;
    let mut fits = vec![
        XgbFit { name: "central".into(), train: train_raw.view(), labels: &train_labels, test: Some(test_raw.view()) },
        XgbFit { name: "central, federated bins".into(), train: train_slots.view(), labels: &train_labels, test: Some(test_slots.view()) },
    ];
    for (bank, (raw, labels)) in banks.iter().zip(&own) {
        fits.push(XgbFit { name: bank.name.clone(), train: raw.view(), labels, test: Some(test_raw.view()) });
    }
    let xgb = gbdt::run_xgboost(&floor1.xgboost_params(None), trees, 1, &fits)?;
    let curve = |i: usize| -> Vec<f64> {
        xgb.fits[i].test_curve.iter().map(|p| gbdt::auc_of(p.iter().map(|&x| f64::from(x)), &test_labels)).collect()
    };
    Ok(Run {
        dataset: study.dataset.into(),
        split: split.label.into(),
        non_iid: split.non_iid,
        seed,
        banks: banks.len(),
        train_rows: train_labels.len(),
        test_rows: test_labels.len(),
        xgb_central: curve(0),
        xgb_on_fed_bins: curve(1),
        fed_floor1: gbdt::auc_curve(&fed1, test_raw.view(), &test_labels),
        fed_default: gbdt::auc_curve(&fed50, test_raw.view(), &test_labels),
        local: banks.iter().enumerate().map(|(k, b)| (b.name.clone(), b.train.rows, curve(k + 2))).collect(),
        fed1_seconds,
        fed50_seconds,
        xgb_seconds: xgb.fits[0].seconds.first().copied().unwrap_or(f64::NAN),
        xgb_version: xgb.version.clone(),
    })
}

fn f4(x: f64) -> String {
    format!("{x:.4}")
}

fn pm(values: &[f64]) -> String {
    let (m, sd) = mean_sd(values);
    format!("{m:+.4} ± {sd:.4}")
}

/// Runs of one dataset × split, in first-seen order.
fn groups(runs: &[Run]) -> Vec<Vec<&Run>> {
    let mut out: Vec<Vec<&Run>> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|g| g[0].dataset == r.dataset && g[0].split == r.split) {
            Some(g) => g.push(r),
            None => out.push(vec![r]),
        }
    }
    out
}

fn summary(runs: &[Run]) -> Result<Table, CompareError> {
    let mut table = Table::new([
        "dataset",
        "split",
        "banks",
        "seeds",
        "XGBoost central AUC",
        "federated AUC (min_leaf_rows 1)",
        "fed(1) − XGBoost (mean ± sd)",
        "|gap| ≤ 0.003",
        "federated AUC (min_leaf_rows 50)",
        "fed(50) − XGBoost",
        "XGBoost on federated bins",
        "local-only XGBoost mean",
        "fed(1) − local-only",
        "fed(50) − local-only",
        "fed > local-only",
    ]);
    for g in groups(runs) {
        let col = |f: &dyn Fn(&Run) -> f64| g.iter().map(|r| f(r)).collect::<Vec<f64>>();
        let mean = |f: &dyn Fn(&Run) -> f64| mean_sd(&col(f)).0;
        let gap = mean(&|r| r.fed1() - r.central());
        let beats = if g[0].non_iid {
            let worst = col(&|r| (r.fed1() - r.local_mean()).min(r.fed50() - r.local_mean())).into_iter().fold(f64::INFINITY, f64::min);
            if worst > 0.0 { "yes (every seed)".to_string() } else { format!("no (worst seed {worst:+.4})") }
        } else {
            "(IID)".to_string()
        };
        let banks: std::collections::BTreeSet<usize> = g.iter().map(|r| r.banks).collect();
        table.push_row([
            g[0].dataset.clone(),
            g[0].split.clone(),
            banks.iter().map(ToString::to_string).collect::<Vec<_>>().join("/"),
            g.len().to_string(),
            f4(mean(&Run::central)),
            f4(mean(&Run::fed1)),
            pm(&col(&|r| r.fed1() - r.central())),
            if gap.abs() <= TARGET_GAP { "yes".into() } else { format!("no ({gap:+.4})") },
            f4(mean(&Run::fed50)),
            pm(&col(&|r| r.fed50() - r.central())),
            f4(mean(&|r| last(&r.xgb_on_fed_bins))),
            f4(mean(&Run::local_mean)),
            pm(&col(&|r| r.fed1() - r.local_mean())),
            pm(&col(&|r| r.fed50() - r.local_mean())),
            beats,
        ])?;
    }
    Ok(table)
}

fn detail(runs: &[Run]) -> Result<Table, CompareError> {
    let mut table = Table::new(["dataset", "split", "seed", "setting", "train rows", "test rows", "AUC (pooled test)", "− XGBoost central", "seconds"]);
    for r in runs {
        let mut rows = vec![
            ("XGBoost central".to_string(), r.train_rows, r.central(), r.xgb_seconds),
            ("XGBoost central, federated bins".to_string(), r.train_rows, last(&r.xgb_on_fed_bins), f64::NAN),
            ("federated, min_leaf_rows 1".to_string(), r.train_rows, r.fed1(), r.fed1_seconds),
            ("federated, min_leaf_rows 50".to_string(), r.train_rows, r.fed50(), r.fed50_seconds),
            ("local-only XGBoost mean".to_string(), r.train_rows / r.banks.max(1), r.local_mean(), f64::NAN),
        ];
        rows.extend(r.local.iter().map(|(name, n, c)| (format!("local-only XGBoost {name}"), *n, last(c), f64::NAN)));
        for (setting, n, auc, secs) in rows {
            table.push_row([
                r.dataset.clone(),
                r.split.clone(),
                r.seed.to_string(),
                setting,
                n.to_string(),
                r.test_rows.to_string(),
                f4(auc),
                format!("{:+.4}", auc - r.central()),
                if secs.is_nan() { String::new() } else { format!("{secs:.1}") },
            ])?;
        }
    }
    Ok(table)
}

fn mean_curve(g: &[&Run], f: impl Fn(&Run) -> Vec<f64>) -> Vec<(f64, f64)> {
    let curves: Vec<Vec<f64>> = g.iter().map(|r| f(r)).collect();
    let len = curves.iter().map(Vec::len).min().unwrap_or(0);
    (0..len).map(|k| ((k + 1) as f64, curves.iter().map(|c| c[k]).sum::<f64>() / curves.len() as f64)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (out, quick) = gbdt::bench_args();
    let (seeds, trees): (Vec<u64>, u64) = if quick { (vec![1], 10) } else { (comparison::seeds_from_env(&[1, 2, 3])?, 100) };
    let eta = match std::env::var("CONFIDE_GBDT_ETA") {
        Ok(v) => v.parse::<f64>().map_err(|e| format!("CONFIDE_GBDT_ETA={v:?}: {e}"))?,
        Err(_) => ETA,
    };
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for study in studies() {
        let schema = DatasetSchema::from_file(&study.schema)?;
        for (index, split) in study.splits.iter().enumerate() {
            if quick && index != study.quick {
                continue;
            }
            for &seed in &seeds {
                let folder = scratch.path().join(format!("{}-{}-{seed}", file_part(study.dataset), file_part(split.label)));
                let config = PartitionConfig {
                    institutions: split.banks,
                    scheme: split.scheme.clone(),
                    test_fraction: 0.2,
                    seed,
                    min_rows: study.min_rows,
                    holdout: Default::default(),
                };
                let partition = partition_csv(&study.csv, &schema, &folder, &config, false)?;
                let names: Vec<String> = partition.institutions.iter().map(|i| i.name.clone()).collect();
                let r = run_one(&schema, &folder, &names, &study, split, seed, trees, eta)?;
                eprintln!(
                    "{} / {} / seed {seed}: XGBoost {:.4}  fed(1) {:.4} ({:+.4})  fed(50) {:.4}  local-only mean {:.4}  [fed {:.1}s + {:.1}s, xgb {:.1}s]",
                    r.dataset,
                    r.split,
                    r.central(),
                    r.fed1(),
                    r.fed1() - r.central(),
                    r.fed50(),
                    r.local_mean(),
                    r.fed1_seconds,
                    r.fed50_seconds,
                    r.xgb_seconds
                );
                runs.push(r);
            }
        }
    }
    let xgb_version = runs.first().map_or("?", |r| r.xgb_version.as_str());

    std::fs::create_dir_all(&out)?;
    let summary = summary(&runs)?;
    let detail = detail(&runs)?;
    println!("\nTrees: federated vs XGBoost ({trees} trees, η = {eta}, seeds {seeds:?})\n\n{summary}");
    detail.write_csv(&out.join("gbdt_quality.csv"))?;
    let mut pngs = Vec::new();
    for g in groups(&runs) {
        let png = format!("gbdt_quality_{}_{}.png", file_part(&g[0].dataset), file_part(&g[0].split));
        line_chart_png(
            &out.join(&png),
            &format!("{}, {}: pooled test AUC after each tree (mean of {} seeds)", g[0].dataset, g[0].split, g.len()),
            "trees",
            "AUC",
            &[
                Series::new("XGBoost hist, centralised", mean_curve(&g, |r| r.xgb_central.clone())),
                Series::new(format!("federated, {} banks, min_leaf_rows 1", g[0].banks), mean_curve(&g, |r| r.fed_floor1.clone())),
                Series::new(format!("federated, {} banks, min_leaf_rows 50", g[0].banks), mean_curve(&g, |r| r.fed_default.clone())),
                Series::new("XGBoost hist, local-only (mean of banks)", mean_curve(&g, Run::local_mean_curve)),
            ],
        )?;
        pngs.push(png);
    }
    let md = format!(
        "# Trees: federated histogram GBDT vs XGBoost\n\nGenerated by `{}cargo run --release -p confide-benches --bin gbdt_quality{}` \
         in {:.0} s (xgboost {xgb_version}). {trees} trees, η = {eta}, every other hyper-parameter the job default (max_depth 6, \
         λ 1, γ 0, min_child_weight 1, max_bin 256, subsample 1, colsample_bytree 1), XGBoost with the same values, \
         `tree_method = \"hist\"`, `base_score = 0.5`. AUC is exact (midranks) on the pooled test set (the union of the banks' \
         20 % test splits); means over seeds {seeds:?}. `fed(1)` = federated with `min_leaf_rows = 1` (the setting with XGBoost's \
         hyper-parameters, compared to XGBoost); `fed(50)` = the job default floor of 50 rows per leaf, which XGBoost has no \
         counterpart for. `XGBoost on federated bins` trains XGBoost centrally on the federation's histogram slots instead of the \
         raw values. Local-only: XGBoost trained by each bank on its own training split, scored on the pooled test set, averaged \
         over banks. Every seed's settings are in `gbdt_quality.csv`.\n\n## Summary\n\n{}\n{}\n",
        if eta == ETA { String::new() } else { format!("CONFIDE_GBDT_ETA={eta} ") },
        if quick { " -- --quick" } else { "" },
        started.elapsed().as_secs_f64(),
        summary.to_markdown(),
        pngs.iter().map(|p| format!("![{p}]({p})")).collect::<Vec<_>>().join("\n")
    );
    std::fs::write(out.join("gbdt_quality.md"), md)?;
    eprintln!("wrote {} ({:.0} s)", out.join("gbdt_quality.{csv,md}").display(), started.elapsed().as_secs_f64());
    Ok(())
}
