//! Centralised vs federated vs local-only training on a public dataset, with the same model and
//! training budget, evaluated on the same pooled test set: the comparison banks ask for first.
//!
//! Everything runs in one process, but through the worker's and coordinator's real code: the
//! dataset is split into institution folders by [`partition_csv`]; each institution is a
//! [`LocalDataset`] and contributes exactly what a worker sends ([`train_contribution`] and
//! [`eval_contribution`], the worker's task functions); contributions are summed (the value
//! secure aggregation yields, up to its fixed-point rounding); the next global model comes from
//! core's [`ServerOptimizer`]; the job is a [`JobSpec`] parsed from TOML, so seeds and per-round
//! local settings are the coordinator's. Metrics are the exact histogram metrics of
//! [`EvalContribution`] over the union of all institutions' test splits.
//!
//! Budget: `R` rounds of one local epoch federated ⇔ `R` epochs centrally on the union of the
//! institutions' training rows ⇔ `R` epochs by each institution alone on its own rows (the
//! optimizer state restarts each epoch/round in all three).

use std::path::{Path, PathBuf};
use std::time::Instant;

use confide_core::job::JobSpec;
use confide_core::metrics::EvalContribution;
use confide_core::model::{ModelParams, ModelSpec};
use confide_core::strategy::ServerOptimizer;
use confide_datasets::partition::{PartitionConfig, PartitionSummary, partition_csv};
use confide_datasets::{DatasetSchema, Encoded, Preprocessing};
use confide_report::{Series, Table, line_chart_png};
use confide_worker::config::DatasetConfig;
use confide_worker::ml::{self, Device};
use confide_worker::failure::Failure;
use confide_worker::tasks::{LocalDataset, ModelInput, Split, UserStateStore, eval_contribution, train_contribution};

/// Score buckets of the evaluation histograms (AUC and KS exact to 1e-4 in score).
pub const SCORE_BUCKETS: usize = 10_000;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Data(#[from] confide_datasets::DataError),
    #[error(transparent)]
    Schema(#[from] confide_datasets::SchemaError),
    #[error(transparent)]
    Stats(#[from] confide_datasets::StatsError),
    #[error("worker task: {0}")]
    Task(#[from] Failure),
    #[error(transparent)]
    Ml(#[from] ml::MlError),
    #[error(transparent)]
    Job(#[from] confide_core::job::JobError),
    #[error(transparent)]
    Strategy(#[from] confide_core::strategy::StrategyError),
    #[error(transparent)]
    Report(#[from] confide_report::ReportError),
    #[error(transparent)]
    Spend(#[from] confide_core::spend::SpendError),
    #[error(transparent)]
    Privacy(#[from] confide_core::privacy::PrivacyError),
    #[error(transparent)]
    Noise(#[from] confide_core::discrete_noise::NoiseError),
    #[error(transparent)]
    Gbdt(#[from] confide_gbdt::GbdtError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The repository root (this crate lives in `benches/`).
pub fn repo_root() -> PathBuf {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    benches.parent().unwrap_or(benches).to_path_buf()
}

/// `../shared/datasets` beside the repository, or `$CONFIDE_DATASETS` when set.
pub fn shared_datasets() -> PathBuf {
    std::env::var_os("CONFIDE_DATASETS")
        .map_or_else(|| repo_root().join("../shared/datasets"), PathBuf::from)
}

/// One way of splitting the dataset into institutions.
#[derive(Debug, Clone)]
pub struct PartitionPlan {
    /// Short label for tables and file names (`iid`, `dirichlet-0.5`, `by-Geography`).
    pub label: String,
    /// The partitioner's configuration (institutions, scheme, test fraction, seed).
    pub config: PartitionConfig,
}

/// One model and its training settings.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    /// Short label (`LR`, `MLP[32,16]`).
    pub label: String,
    /// The `[model]` table of the job file.
    pub model_toml: String,
    /// The `[training]` table of the job file, without `pos_weight` (see [`Study::balance_classes`]).
    pub training_toml: String,
}

impl ModelPlan {
    /// Logistic regression trained with the `[training]` table `training`.
    pub fn logistic_regression(training: &str) -> Self {
        Self {
            label: "LR".into(),
            model_toml: "kind = \"logistic_regression\"".into(),
            training_toml: training.into(),
        }
    }

    /// An MLP with `hidden` layer widths trained with the `[training]` table `training`.
    pub fn mlp(hidden: &[usize], training: &str) -> Self {
        let widths: Vec<String> = hidden.iter().map(ToString::to_string).collect();
        Self {
            label: format!("MLP[{}]", widths.join(",")),
            model_toml: format!("kind = \"mlp\"\nhidden = [{}]", widths.join(", ")),
            training_toml: training.into(),
        }
    }
}

/// The output folder: the first command-line argument, else `benches/results`.
pub fn out_dir_from_args() -> PathBuf {
    std::env::args()
        .nth(1)
        .map_or_else(|| repo_root().join("benches/results"), PathBuf::from)
}

/// A dataset and everything compared on it.
#[derive(Debug, Clone)]
pub struct Study {
    /// Human name (`Telco churn`).
    pub dataset: String,
    /// File-name stem (`telco_churn`).
    pub slug: String,
    /// The CSV file.
    pub csv: PathBuf,
    /// The schema file.
    pub schema: PathBuf,
    /// Partitions compared.
    pub partitions: Vec<PartitionPlan>,
    /// Models compared.
    pub models: Vec<ModelPlan>,
    /// Seeds: each repeats the whole comparison with this partition seed and job seed (model
    /// initialisation, batch order); tables report the mean and spread over seeds.
    pub seeds: Vec<u64>,
    /// Weight positives by negatives/positives of the union of training rows (class imbalance);
    /// the same weight is used by every setting so that only the data differs.
    pub balance_classes: bool,
}

/// Metrics of one model on one evaluation set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub auc: f64,
    pub ks: f64,
    pub log_loss: f64,
    pub brier: f64,
}

impl Scores {
    /// The metrics of a summed evaluation.
    pub fn of(c: &EvalContribution) -> Result<Self, CompareError> {
        let m = c.metrics();
        let get = |k: &str| {
            m.get(k).copied().ok_or_else(|| {
                CompareError::Invalid(format!("the test set gives no {k} (one class only?)"))
            })
        };
        Ok(Self {
            auc: get("auc")?,
            ks: get("ks")?,
            log_loss: get("log_loss")?,
            brier: get("brier")?,
        })
    }
}

/// How one setting ended, with its metric after every round or epoch.
#[derive(Debug, Clone)]
pub struct SettingResult {
    /// `centralised`, `federated FedAvg`, `local-only mean`, `local-only <institution>`.
    pub setting: String,
    /// Training rows the setting learned from.
    pub train_rows: usize,
    /// Final metrics on the pooled test set.
    pub pooled: Scores,
    /// Final AUC on the institution's own test split (local-only settings).
    pub own_auc: Option<f64>,
    /// Pooled-test AUC after each round/epoch.
    pub auc_curve: Vec<f64>,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
}

/// The three settings on one partition with one model.
#[derive(Debug, Clone)]
pub struct PartitionResult {
    pub seed: u64,
    pub dataset: String,
    pub model: String,
    pub partition: String,
    pub institutions: usize,
    pub rounds: usize,
    pub pos_weight: Option<f64>,
    pub centralised: SettingResult,
    pub federated: SettingResult,
    pub local_mean: SettingResult,
    pub local: Vec<SettingResult>,
}

impl PartitionResult {
    /// Federated minus centralised pooled AUC.
    pub fn gap_to_centralised(&self) -> f64 {
        self.federated.pooled.auc - self.centralised.pooled.auc
    }

    /// Federated minus the mean local-only pooled AUC.
    pub fn gain_over_local(&self) -> f64 {
        self.federated.pooled.auc - self.local_mean.pooled.auc
    }
}

/// Target: federated within this AUC of centralised.
pub const TARGET_GAP: f64 = 0.005;

/// An institution as the simulation sees it: the worker's dataset handle.
pub struct Institution {
    pub name: String,
    pub data: LocalDataset,
}

/// Opens every institution of a partition written to `folder` as the worker would.
pub fn open_institutions(
    schema: &DatasetSchema,
    schema_path: &Path,
    summary: &PartitionSummary,
    folder: &Path,
) -> Result<Vec<Institution>, CompareError> {
    summary
        .institutions
        .iter()
        .map(|i| {
            let config = DatasetConfig::files(
                schema.name.clone(),
                schema_path.to_path_buf(),
                folder.join(&i.name).join("train.csv"),
                folder.join(&i.name).join("test.csv"),
            );
            Ok(Institution {
                name: i.name.clone(),
                data: LocalDataset::open(config)?,
            })
        })
        .collect()
}

/// Preprocessing and its cache key (the JSON text the coordinator ships).
pub struct Prep {
    pub prep: Preprocessing,
    pub key: String,
}

impl Prep {
    /// The coordinator's preprocessing from exact summed statistics.
    pub fn from_stats(schema: &DatasetSchema, stats: &[f64]) -> Result<Self, CompareError> {
        Self::keyed(Preprocessing::from_aggregate(schema, stats)?)
    }

    /// `prep` with its cache key.
    pub fn keyed(prep: Preprocessing) -> Result<Self, CompareError> {
        let key = serde_json::to_string(&prep).map_err(|e| CompareError::Invalid(e.to_string()))?;
        Ok(Self { prep, key })
    }
}

/// Adds `v` into `acc` element-wise (an empty `acc` takes `v`'s length).
pub fn add_into(acc: &mut Vec<f64>, v: &[f64]) {
    if acc.is_empty() {
        acc.resize(v.len(), 0.0);
    }
    for (a, x) in acc.iter_mut().zip(v) {
        *a += x;
    }
}

/// The worker's per-job user-state store, which only recommendation models use; tabular
/// models never read or write it.
pub fn tabular_users() -> UserStateStore {
    UserStateStore::new(&std::env::temp_dir().join("confide-comparison-unused"))
}

/// The summed evaluation of `params` over the test splits of `banks`: what the coordinator
/// reads from the securely aggregated evaluation vectors.
pub fn pooled_eval(
    spec: &ModelSpec,
    params: &ModelParams,
    prep: &Prep,
    banks: &[Institution],
) -> Result<EvalContribution, CompareError> {
    let checkpoint = params.to_safetensors(None);
    let input = ModelInput {
        spec,
        checkpoint: &checkpoint,
        module: None,
        prep: &prep.prep,
        prep_key: &prep.key,
        job_id: "comparison",
        round: 0,
    };
    let mut sum = Vec::new();
    for bank in banks {
        add_into(
            &mut sum,
            &eval_contribution(&bank.data, &input, SCORE_BUCKETS, None, &tabular_users(), Device::Cpu)?,
        );
    }
    EvalContribution::from_slice(&sum, SCORE_BUCKETS)
        .ok_or_else(|| CompareError::Invalid("malformed evaluation sum".into()))
}

/// Concatenates encoded splits (same preprocessing, so same width).
fn concat(parts: &[std::sync::Arc<Encoded>]) -> Encoded {
    Encoded {
        features: parts
            .iter()
            .flat_map(|e| e.features.iter().copied())
            .collect(),
        labels: parts
            .iter()
            .flat_map(|e| e.labels.iter().copied())
            .collect(),
        rows: parts.iter().map(|e| e.rows).sum(),
        dim: parts.first().map_or(0, |e| e.dim),
    }
}

/// Trains `epochs` epochs one at a time (each with the job's settings for that round),
/// recording the pooled-test AUC after each.
#[allow(clippy::too_many_arguments)]
fn train_epochs(
    spec: &ModelSpec,
    job: &JobSpec,
    participant: u64,
    init: &ModelParams,
    train: &Encoded,
    prep: &Prep,
    banks: &[Institution],
) -> Result<(ModelParams, Vec<f64>), CompareError> {
    let mut params = init.clone();
    let mut curve = Vec::new();
    for epoch in 1..=job.training.rounds {
        let cfg = ml::TrainConfig::from(&job.local_training(epoch, participant));
        params = ml::train_local(spec, &params, train, &cfg, Device::Cpu)?.params;
        curve.push(Scores::of(&pooled_eval(spec, &params, prep, banks)?)?.auc);
    }
    Ok((params, curve))
}

/// Runs the three settings for one partition and model.
fn run_one(
    study: &Study,
    schema: &DatasetSchema,
    plan: &PartitionPlan,
    model: &ModelPlan,
    summary: &PartitionSummary,
    folder: &Path,
    seed: u64,
) -> Result<PartitionResult, CompareError> {
    let banks = open_institutions(schema, &study.schema, summary, folder)?;

    let train_rows: usize = summary.institutions.iter().map(|i| i.train_rows).sum();
    let train_positives: usize = summary.institutions.iter().map(|i| i.train_positives).sum();
    let pos_weight = if study.balance_classes {
        if train_positives == 0 {
            return Err(CompareError::Invalid(
                "no positive training rows to balance".into(),
            ));
        }
        Some(
            ((train_rows - train_positives) as f64 / train_positives as f64 * 100.0).round()
                / 100.0,
        )
    } else {
        None
    };
    let pos_line = pos_weight
        .map(|w| format!("pos_weight = {w}\n"))
        .unwrap_or_default();
    let job_toml = format!(
        "name = \"compare\"\ndataset = \"{}\"\nseed = {seed}\n[model]\n{}\n[training]\n{}\n{pos_line}",
        schema.name, model.model_toml, model.training_toml
    );
    let job = JobSpec::from_toml(&job_toml)?;
    if job.training.local_epochs != 1 {
        return Err(CompareError::Invalid(
            "the comparison budget assumes local_epochs = 1".into(),
        ));
    }
    let spec = &job.model;

    // Federation-wide preprocessing from the summed statistics, as the coordinator derives it.
    let mut stats = Vec::new();
    for bank in &banks {
        add_into(&mut stats, &bank.data.stats()?);
    }
    let fed_prep = Prep::from_stats(schema, &stats)?;
    let layout = spec.layout(fed_prep.prep.input_dim());
    let init = ModelParams::init(layout.clone(), job.seed);

    // Centralised: the union of every institution's training rows.
    let started = Instant::now();
    let union = concat(
        &banks
            .iter()
            .map(|b| b.data.encoded(Split::Train, &fed_prep.prep, &fed_prep.key))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let (central_params, central_curve) =
        train_epochs(spec, &job, 0, &init, &union, &fed_prep, &banks)?;
    let centralised = SettingResult {
        setting: "centralised".into(),
        train_rows,
        pooled: Scores::of(&pooled_eval(spec, &central_params, &fed_prep, &banks)?)?,
        own_auc: None,
        auc_curve: central_curve,
        seconds: started.elapsed().as_secs_f64(),
    };

    // Federated FedAvg: every institution trains from the global model; the sum of their
    // contributions goes through the server optimizer.
    let started = Instant::now();
    let mut global = init.clone();
    let mut server = ServerOptimizer::new(job.strategy.clone(), layout.len());
    let mut fed_curve = Vec::new();
    for round in 1..=job.training.rounds {
        let checkpoint = global.to_safetensors(None);
        let input = ModelInput {
            spec,
            checkpoint: &checkpoint,
            module: None,
            prep: &fed_prep.prep,
            prep_key: &fed_prep.key,
            job_id: "comparison",
            round,
        };
        let mut sum = Vec::new();
        for (k, bank) in banks.iter().enumerate() {
            let local = job.local_training(round, k as u64);
            add_into(
                &mut sum,
                &train_contribution(&bank.data, &input, &local, None, &tabular_users(), Device::Cpu)?,
            );
        }
        // Layout of a training contribution: [n·Δ…, n, n·loss].
        let len = layout.len();
        server.step(&mut global, &sum[..len], sum[len])?;
        fed_curve.push(Scores::of(&pooled_eval(spec, &global, &fed_prep, &banks)?)?.auc);
    }
    let federated = SettingResult {
        setting: "federated FedAvg".into(),
        train_rows,
        pooled: Scores::of(&pooled_eval(spec, &global, &fed_prep, &banks)?)?,
        own_auc: None,
        auc_curve: fed_curve,
        seconds: started.elapsed().as_secs_f64(),
    };

    // Local-only: each institution alone, with preprocessing from its own statistics.
    let mut local = Vec::new();
    for (k, bank) in banks.iter().enumerate() {
        let started = Instant::now();
        let own_prep = Prep::from_stats(schema, &bank.data.stats()?)?;
        let own_init = ModelParams::init(spec.layout(own_prep.prep.input_dim()), job.seed);
        let train = bank
            .data
            .encoded(Split::Train, &own_prep.prep, &own_prep.key)?;
        let (params, curve) =
            train_epochs(spec, &job, k as u64, &own_init, &train, &own_prep, &banks)?;
        let own = pooled_eval(spec, &params, &own_prep, std::slice::from_ref(bank))?;
        local.push(SettingResult {
            setting: format!("local-only {}", bank.name),
            train_rows: train.rows,
            pooled: Scores::of(&pooled_eval(spec, &params, &own_prep, &banks)?)?,
            own_auc: Scores::of(&own).ok().map(|s| s.auc),
            auc_curve: curve,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let local_mean = mean_of(&local);
    Ok(PartitionResult {
        seed,
        dataset: study.dataset.clone(),
        model: model.label.clone(),
        partition: plan.label.clone(),
        institutions: banks.len(),
        rounds: usize::try_from(job.training.rounds).unwrap_or(usize::MAX),
        pos_weight,
        centralised,
        federated,
        local_mean,
        local,
    })
}

/// The unweighted mean of the local-only settings (what an average member bank gets alone).
fn mean_of(local: &[SettingResult]) -> SettingResult {
    let n = local.len().max(1) as f64;
    let mean = |f: &dyn Fn(&SettingResult) -> f64| local.iter().map(f).sum::<f64>() / n;
    let epochs = local.iter().map(|l| l.auc_curve.len()).min().unwrap_or(0);
    let own: Vec<f64> = local.iter().filter_map(|l| l.own_auc).collect();
    SettingResult {
        setting: "local-only mean".into(),
        train_rows: (mean(&|l| l.train_rows as f64)).round() as usize,
        pooled: Scores {
            auc: mean(&|l| l.pooled.auc),
            ks: mean(&|l| l.pooled.ks),
            log_loss: mean(&|l| l.pooled.log_loss),
            brier: mean(&|l| l.pooled.brier),
        },
        own_auc: (!own.is_empty()).then(|| own.iter().sum::<f64>() / own.len() as f64),
        auc_curve: (0..epochs)
            .map(|e| local.iter().map(|l| l.auc_curve[e]).sum::<f64>() / n)
            .collect(),
        seconds: local.iter().map(|l| l.seconds).sum(),
    }
}

/// Runs every partition × model of `study`, printing progress to stderr.
pub fn run_study(study: &Study) -> Result<Vec<PartitionResult>, CompareError> {
    let schema = DatasetSchema::from_file(&study.schema)?;
    let scratch = tempfile::tempdir()?;
    let mut results = Vec::new();
    for &seed in &study.seeds {
        for plan in &study.partitions {
            let folder = scratch.path().join(format!("{}-{seed}", plan.label));
            let config = PartitionConfig {
                seed,
                ..plan.config.clone()
            };
            let summary = partition_csv(&study.csv, &schema, &folder, &config, false)?;
            let sizes: Vec<String> = summary
                .institutions
                .iter()
                .map(|i| format!("{}={}", i.name, i.train_rows))
                .collect();
            eprintln!(
                "{} / {} / seed {seed}: {} institutions ({})",
                study.dataset,
                plan.label,
                sizes.len(),
                sizes.join(", ")
            );
            for model in &study.models {
                let r = run_one(study, &schema, plan, model, &summary, &folder, seed)?;
                eprintln!(
                    "  {:<12} centralised {:.4}  federated {:.4} ({:+.4})  local-only mean {:.4}  [{:.0}s]",
                    r.model,
                    r.centralised.pooled.auc,
                    r.federated.pooled.auc,
                    r.gap_to_centralised(),
                    r.local_mean.pooled.auc,
                    r.centralised.seconds + r.federated.seconds + r.local_mean.seconds
                );
                results.push(r);
            }
        }
    }
    Ok(results)
}

/// Exact area under the ROC curve of `scores` (higher = positive), ties counted half: the
/// Mann–Whitney statistic over midranks. NaN when one class is absent.
pub fn rank_auc(scores: &[(f64, bool)]) -> f64 {
    let mut s: Vec<(f64, bool)> = scores.to_vec();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    let positives = s.iter().filter(|x| x.1).count() as f64;
    let negatives = s.len() as f64 - positives;
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += s[i..j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Mean and sample standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The results of one dataset × model × partition over every seed.
#[derive(Debug, Clone)]
pub struct Aggregate<'a> {
    pub runs: Vec<&'a PartitionResult>,
}

impl<'a> Aggregate<'a> {
    /// Groups results by dataset, model and partition, in first-seen order.
    pub fn group(results: &'a [PartitionResult]) -> Vec<Self> {
        let mut groups: Vec<Self> = Vec::new();
        for r in results {
            let same = |g: &Self| {
                g.runs[0].dataset == r.dataset
                    && g.runs[0].model == r.model
                    && g.runs[0].partition == r.partition
            };
            match groups.iter_mut().find(|g| same(g)) {
                Some(g) => g.runs.push(r),
                None => groups.push(Self { runs: vec![r] }),
            }
        }
        groups
    }

    fn first(&self) -> &PartitionResult {
        self.runs[0]
    }

    fn stat(&self, f: impl Fn(&PartitionResult) -> f64) -> (f64, f64) {
        mean_sd(&self.runs.iter().map(|r| f(r)).collect::<Vec<_>>())
    }

    /// Mean pooled-test AUC curve of a setting over seeds.
    fn mean_curve(&self, f: impl Fn(&PartitionResult) -> &SettingResult) -> Vec<(f64, f64)> {
        let len = self
            .runs
            .iter()
            .map(|r| f(r).auc_curve.len())
            .min()
            .unwrap_or(0);
        (0..len)
            .map(|i| {
                (
                    (i + 1) as f64,
                    self.runs.iter().map(|r| f(r).auc_curve[i]).sum::<f64>()
                        / self.runs.len() as f64,
                )
            })
            .collect()
    }
}

fn f4(x: f64) -> String {
    format!("{x:.4}")
}

/// Every setting of every result (every seed), one row each.
pub fn detail_table(results: &[&PartitionResult]) -> Result<Table, CompareError> {
    let mut table = Table::new([
        "dataset",
        "model",
        "partition",
        "seed",
        "setting",
        "institutions",
        "train rows",
        "AUC (pooled test)",
        "AUC - centralised",
        "KS",
        "log loss",
        "Brier",
        "AUC (own test)",
        "seconds",
    ]);
    for r in results {
        let settings = [&r.centralised, &r.federated, &r.local_mean]
            .into_iter()
            .chain(&r.local);
        for s in settings {
            table.push_row([
                r.dataset.clone(),
                r.model.clone(),
                r.partition.clone(),
                r.seed.to_string(),
                s.setting.clone(),
                r.institutions.to_string(),
                s.train_rows.to_string(),
                f4(s.pooled.auc),
                format!("{:+.4}", s.pooled.auc - r.centralised.pooled.auc),
                f4(s.pooled.ks),
                f4(s.pooled.log_loss),
                f4(s.pooled.brier),
                s.own_auc.map(f4).unwrap_or_default(),
                format!("{:.1}", s.seconds),
            ])?;
        }
    }
    Ok(table)
}

/// One row per dataset × model × partition: means over seeds, the spread of the two gaps, and
/// the targets checked on the mean gap.
pub fn summary_table(results: &[PartitionResult]) -> Result<Table, CompareError> {
    let mut table = Table::new([
        "dataset",
        "model",
        "partition",
        "K",
        "rounds",
        "seeds",
        "centralised AUC",
        "federated AUC",
        "fed - central (mean ± sd)",
        "worst |fed - central|",
        "within 0.005",
        "fed - central, best round vs best epoch",
        "local-only mean AUC",
        "fed - local-only mean (mean ± sd)",
        "local-only AUC on own test",
    ]);
    for g in Aggregate::group(results) {
        let r = g.first();
        let (central, _) = g.stat(|r| r.centralised.pooled.auc);
        let (federated, _) = g.stat(|r| r.federated.pooled.auc);
        let (gap, gap_sd) = g.stat(PartitionResult::gap_to_centralised);
        let worst = g
            .runs
            .iter()
            .map(|r| r.gap_to_centralised().abs())
            .fold(0.0, f64::max);
        let best = |curve: &[f64]| curve.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (best_gap, _) =
            g.stat(|r| best(&r.federated.auc_curve) - best(&r.centralised.auc_curve));
        let (local, _) = g.stat(|r| r.local_mean.pooled.auc);
        let (gain, gain_sd) = g.stat(PartitionResult::gain_over_local);
        let own: Vec<f64> = g.runs.iter().filter_map(|r| r.local_mean.own_auc).collect();
        let institutions: std::collections::BTreeSet<usize> =
            g.runs.iter().map(|r| r.institutions).collect();
        table.push_row([
            r.dataset.clone(),
            r.model.clone(),
            r.partition.clone(),
            institutions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            r.rounds.to_string(),
            g.runs.len().to_string(),
            f4(central),
            f4(federated),
            format!("{gap:+.4} ± {gap_sd:.4}"),
            f4(worst),
            within_target(gap).to_string(),
            format!("{best_gap:+.4}"),
            f4(local),
            format!("{gain:+.4} ± {gain_sd:.4}"),
            if own.is_empty() {
                String::new()
            } else {
                f4(mean_sd(&own).0)
            },
        ])?;
    }
    Ok(table)
}

/// Whether a mean federated − centralised gap meets the target, and if not in which direction.
fn within_target(gap: f64) -> &'static str {
    if gap.abs() <= TARGET_GAP {
        "yes"
    } else if gap > 0.0 {
        "no (federated higher)"
    } else {
        "no (federated lower)"
    }
}

/// A string usable in a file name.
pub fn file_part(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Writes `<stem>.csv` (every setting of every seed), `<stem>.md` (summary, and every setting
/// of the first seed) and, per dataset × model × partition, a PNG of the pooled-test AUC per
/// round averaged over seeds into `out`; prints the tables.
pub fn write_outputs(
    results: &[PartitionResult],
    out: &Path,
    stem: &str,
    title: &str,
) -> Result<Vec<PathBuf>, CompareError> {
    std::fs::create_dir_all(out)?;
    let summary = summary_table(results)?;
    let all: Vec<&PartitionResult> = results.iter().collect();
    let first_seed = results.first().map(|r| r.seed);
    let first: Vec<&PartitionResult> = results
        .iter()
        .filter(|r| Some(r.seed) == first_seed)
        .collect();
    let detail_first = detail_table(&first)?;
    println!(
        "\n{title}: summary\n\n{summary}\n{title}: every setting, seed {}\n\n{detail_first}",
        first_seed.unwrap_or_default()
    );
    let mut written = Vec::new();
    let csv = out.join(format!("{stem}.csv"));
    detail_table(&all)?.write_csv(&csv)?;
    written.push(csv);
    // Each partition's union of training rows gives the weight; list each distinct value once.
    let pos: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.pos_weight.map(|w| format!("{w}")))
        .collect();
    let mut text = format!(
        "# {title}\n\nGenerated by `cargo run --release -p confide-benches --bin compare_{stem}` (see `benches/RESULTS.md`). \
         AUC, KS, log loss and Brier score are exact histogram metrics ({SCORE_BUCKETS} buckets) over the pooled test set \
         (the union of every institution's test split); `own test` is a local-only model scored on its own institution's \
         test split. Means over seeds; every seed's rows are in `{stem}.csv`. `within 0.005` judges the mean \
         final-round gap; `best round vs best epoch` compares each curve's best point instead (both picked on the test \
         set, so both optimistic: it shows what early stopping would give each side).\n\n## Summary\n\n{}\n## Every setting, seed {}\n\n{}",
        summary.to_markdown(),
        first_seed.unwrap_or_default(),
        detail_first.to_markdown()
    );
    if !pos.is_empty() {
        let list: Vec<String> = pos.into_iter().collect();
        text.push_str(&format!(
            "\nClass imbalance: `pos_weight` = negatives/positives of the union of training rows, the same for \
             every setting of a partition: {} (every partition and seed).\n",
            list.join(", ")
        ));
    }
    let md = out.join(format!("{stem}.md"));
    std::fs::write(&md, text)?;
    written.push(md);
    for g in Aggregate::group(results) {
        let r = g.first();
        let series = [
            Series::new("centralised (per epoch)", g.mean_curve(|r| &r.centralised)),
            Series::new(
                format!(
                    "federated FedAvg, {} institutions (per round)",
                    r.institutions
                ),
                g.mean_curve(|r| &r.federated),
            ),
            Series::new(
                "local-only, mean of institutions (per epoch)",
                g.mean_curve(|r| &r.local_mean),
            ),
        ];
        let png = out.join(format!(
            "{stem}_{}_{}_{}.png",
            file_part(&r.dataset),
            file_part(&r.model),
            file_part(&r.partition)
        ));
        line_chart_png(
            &png,
            &format!(
                "{}, {}, {}: pooled test AUC (mean of {} seeds)",
                r.dataset,
                r.model,
                r.partition,
                g.runs.len()
            ),
            "round (federated) / epoch (centralised, local-only)",
            "AUC",
            &series,
        )?;
        written.push(png);
    }
    Ok(written)
}

/// The seeds to run: `$CONFIDE_COMPARE_SEEDS` (comma-separated, e.g. `1` for a quick look) or
/// `default`.
pub fn seeds_from_env(default: &[u64]) -> Result<Vec<u64>, CompareError> {
    match std::env::var("CONFIDE_COMPARE_SEEDS") {
        Ok(text) => text
            .split(',')
            .map(|s| {
                s.trim().parse::<u64>().map_err(|e| {
                    CompareError::Invalid(format!("CONFIDE_COMPARE_SEEDS={text:?}: {e}"))
                })
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half_and_orders_positives_first() {
        assert_eq!(rank_auc(&[(2.0, true), (1.0, false)]), 1.0);
        assert_eq!(rank_auc(&[(1.0, true), (2.0, false)]), 0.0);
        assert_eq!(rank_auc(&[(1.0, true), (1.0, false)]), 0.5);
        // One positive above two of three negatives, tied with none: 2/3.
        assert!((rank_auc(&[(0.1, false), (0.5, true), (0.2, false), (0.9, false)]) - 2.0 / 3.0).abs() < 1e-12);
        assert!(rank_auc(&[(0.1, false), (0.2, false)]).is_nan());
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        assert_eq!(mean_sd(&[2.0, 4.0, 6.0]), (4.0, 2.0));
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
    }

    #[test]
    fn the_target_verdict_names_the_direction_of_a_miss() {
        assert_eq!(within_target(0.004), "yes");
        assert_eq!(within_target(-0.005), "yes");
        assert_eq!(within_target(0.009), "no (federated higher)");
        assert_eq!(within_target(-0.02), "no (federated lower)");
    }

    #[test]
    fn labels_become_plain_file_names() {
        assert_eq!(file_part("Dirichlet α=0.3"), "dirichlet-0.3");
        assert_eq!(file_part("MLP[32,16]"), "mlp-32-16");
        assert_eq!(file_part("Bank Churn_Modelling"), "bank-churn-modelling");
    }

    #[test]
    fn model_plans_parse_as_job_models() {
        for plan in [
            ModelPlan::logistic_regression("rounds = 2\nlearning_rate = 0.1"),
            ModelPlan::mlp(&[8, 4], "rounds = 2\nlearning_rate = 0.1"),
        ] {
            let toml = format!(
                "name = \"t\"\ndataset = \"d\"\n[model]\n{}\n[training]\n{}\n",
                plan.model_toml, plan.training_toml
            );
            let job = JobSpec::from_toml(&toml).expect("valid job");
            assert_eq!(job.training.rounds, 2);
        }
        assert_eq!(ModelPlan::mlp(&[32, 16], "").label, "MLP[32,16]");
    }
}
