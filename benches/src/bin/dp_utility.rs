//! DP utility (issue 13, item 7): federated test AUC on the pooled test split against the
//! privacy target ε ∈ {0.5, 1, 2, 4, 8, ∞} on UCI Taiwan credit default (5 banks, IID) and
//! Telco churn (3 banks, IID), δ = 1/(total training rows), record level (the worker's DP-SGD at
//! every bank) and institution level (each bank's whole update clipped, distributed discrete
//! Gaussian noise on the sum), MLP[32,16] and logistic regression. σ is solved by core's planner
//! (`spend::resolve`) for the job's rounds at the smallest bank, statistics included; ∞ is the
//! same federation and hyper-parameters without DP (exact statistics, no clipping, no noise).
//! See [`confide_benches::dp`] for how each bank applies the DP terms.
//!
//! Hyper-parameters (the same for every ε and mode, tuned once on Taiwan at ε = 4 and ∞; see
//! [`Hyper`]) can be overridden with `CONFIDE_DP_ROUNDS`, `_BATCH`, `_LR`, `_RECORD_CLIP`,
//! `_INSTITUTION_CLIP`; `CONFIDE_DP_DATASET=Taiwan` runs one dataset.
//!
//! Writes `benches/results/dp_utility.{csv,md}` and one PNG per dataset × model (AUC vs ε, one
//! line per mode, the non-DP model as a reference line).
//!
//! `cargo run --release -p confide-benches --bin dp_utility [OUT_DIR]` — about 1 minute on two
//! shared cores for 3 seeds (`CONFIDE_COMPARE_SEEDS=1` for one seed).

use std::collections::BTreeMap;
use std::time::Instant;

use confide_benches::comparison::{self, CompareError, mean_sd, open_institutions};
use confide_benches::dp::{self, Mode, Privacy};
use confide_datasets::DatasetSchema;
use confide_datasets::partition::{PartitionConfig, Scheme, partition_csv};
use confide_report::{Series, Table, line_chart_png};
use confide_worker::ml::MlError;

/// Finite targets; ∞ is the non-DP run.
const EPSILONS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];
/// Training settings, the same for every ε and mode; defaults below, each overridable for
/// tuning by `CONFIDE_DP_<NAME>` (e.g. `CONFIDE_DP_ROUNDS=20`).
#[derive(Debug, Clone, Copy)]
struct Hyper {
    /// Rounds of one local epoch each.
    rounds: u64,
    /// Expected batch (DP-SGD: Poisson rate batch/rows).
    batch: usize,
    learning_rate: f64,
    /// Record level: per-row gradient bound.
    record_clip: f64,
    /// Institution level: per-bank update bound.
    institution_clip: f64,
}

impl Hyper {
    fn from_env() -> Result<Self, Box<dyn std::error::Error>> {
        fn get<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn std::error::Error>> {
            match std::env::var(format!("CONFIDE_DP_{name}")) {
                Ok(v) => v.parse().map_err(|_| format!("CONFIDE_DP_{name}={v:?} is not a number").into()),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            rounds: get("ROUNDS", 20)?,
            batch: get("BATCH", 256)?,
            learning_rate: get("LR", 0.1)?,
            record_clip: get("RECORD_CLIP", 3.0)?,
            institution_clip: get("INSTITUTION_CLIP", 0.5)?,
        })
    }

    fn training_toml(&self) -> String {
        format!(
            "rounds = {}\nlocal_epochs = 1\nbatch_size = {}\nlearning_rate = {}\noptimizer = \"momentum\"",
            self.rounds, self.batch, self.learning_rate
        )
    }
}

/// Target: record level at ε = 4 within this AUC of the non-DP federated model.
const TARGET_GAP: f64 = 0.02;

struct Dataset {
    name: &'static str,
    csv: &'static str,
    schema: &'static str,
    banks: usize,
}

const DATASETS: [Dataset; 2] = [
    Dataset { name: "UCI Taiwan credit", csv: "uci_credit_card_default/UCI_Credit_Card.csv", schema: "uci_credit_card_default.toml", banks: 5 },
    Dataset { name: "Telco churn", csv: "telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv", schema: "telco_churn.toml", banks: 3 },
];

const MODELS: [(&str, &str); 2] = [("MLP[32,16]", "kind = \"mlp\"\nhidden = [32, 16]"), ("LR", "kind = \"logistic_regression\"")];

/// One federated training run.
struct Run {
    dataset: &'static str,
    model: &'static str,
    mode: Mode,
    /// None: ∞ (non-DP).
    epsilon: Option<f64>,
    seed: u64,
    sigma: Option<f64>,
    planned_epsilon: Option<f64>,
    /// None: training diverged (a non-finite local loss).
    auc: Option<f64>,
    seconds: f64,
}

fn run_dataset(d: &Dataset, h: &Hyper, seed: u64, runs: &mut Vec<Run>) -> Result<(), CompareError> {
    let schema_path = comparison::repo_root().join("datasets/schemas").join(d.schema);
    let schema = DatasetSchema::from_file(&schema_path)?;
    let scratch = tempfile::tempdir()?;
    let config = PartitionConfig { institutions: Some(d.banks), scheme: Scheme::Iid, test_fraction: 0.2, seed, min_rows: 100, holdout: Default::default() };
    let summary = partition_csv(&comparison::shared_datasets().join(d.csv), &schema, scratch.path(), &config, false)?;
    let banks = open_institutions(&schema, &schema_path, &summary, scratch.path())?;
    let total: usize = summary.institutions.iter().map(|i| i.train_rows).sum();
    let smallest = summary.institutions.iter().map(|i| i.train_rows).min().unwrap_or(0);
    let delta = 1.0 / total as f64;
    eprintln!("{} / seed {seed}: {} banks, {total} training rows (smallest {smallest}), δ = {delta:.2e}", d.name, banks.len());
    for (model, model_toml) in MODELS {
        let mut settings = vec![(Mode::Off, None)];
        for mode in [Mode::Record, Mode::Institution] {
            settings.extend(EPSILONS.iter().map(|&e| (mode, Some(e))));
        }
        for (mode, epsilon) in settings {
            let clip = if mode == Mode::Institution { h.institution_clip } else { h.record_clip };
            let privacy = Privacy { mode, epsilon: epsilon.unwrap_or(f64::INFINITY), delta, clip_norm: clip, planned_rows: smallest as u64, banks: banks.len() };
            let started = Instant::now();
            let (job, plan) = dp::job(&schema.name, seed, model_toml, &h.training_toml(), &privacy)?;
            let prep = dp::preprocessing(&schema, &banks, &job)?;
            // Noise this large can drive the model where a bank's local loss overflows: the worker
            // would fail that task the same way; the run is recorded as diverged.
            let auc = match dp::train(&job, &prep, &banks, mode) {
                Ok(params) => Some(dp::pooled_scores(&job, &params, &prep, &banks)?.auc),
                Err(CompareError::Ml(MlError::NonFiniteLoss { .. })) => None,
                Err(e) => return Err(e),
            };
            let run = Run {
                dataset: d.name,
                model,
                mode,
                epsilon,
                seed,
                sigma: plan.as_ref().map(|p| p.noise_multiplier),
                planned_epsilon: plan.as_ref().map(|p| p.epsilon),
                auc,
                seconds: started.elapsed().as_secs_f64(),
            };
            eprintln!(
                "  {model:<10} {:<17} ε {:>4}  σ {:>7}  AUC {}  [{:.1}s]",
                mode.label(),
                epsilon.map_or("∞".into(), |e| e.to_string()),
                run.sigma.map_or("—".into(), |s| format!("{s:.3}")),
                run.auc.map_or("diverged".into(), |a| format!("{a:.4}")),
                run.seconds
            );
            runs.push(run);
        }
    }
    Ok(())
}

fn eps_label(e: Option<f64>) -> String {
    e.map_or_else(|| "∞".into(), |e| e.to_string())
}

/// Mean AUC over seeds per (dataset, model, mode, ε), in first-seen order.
type Key = (&'static str, &'static str, &'static str, String);

fn group(runs: &[Run]) -> (Vec<Key>, BTreeMap<Key, Vec<&Run>>) {
    let mut order = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let key = (r.dataset, r.model, r.mode.label(), eps_label(r.epsilon));
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    (order, groups)
}

/// The AUCs of the runs that did not diverge.
fn aucs(g: &[&Run]) -> Vec<f64> {
    g.iter().filter_map(|r| r.auc).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = comparison::out_dir_from_args();
    let seeds = comparison::seeds_from_env(&[1, 2, 3])?;
    let h = Hyper::from_env()?;
    let only = std::env::var("CONFIDE_DP_DATASET").ok();
    let started = Instant::now();
    let mut runs = Vec::new();
    for d in DATASETS.iter().filter(|d| only.as_deref().is_none_or(|o| d.name.contains(o))) {
        for &seed in &seeds {
            run_dataset(d, &h, seed, &mut runs)?;
        }
    }
    let (order, groups) = group(&runs);
    let baseline = |dataset: &str, model: &str| {
        groups.get(&(dataset, model, Mode::Off.label(), "∞".to_string())).map(|g| mean_sd(&aucs(g)).0)
    };
    let mut summary = Table::new(["dataset", "model", "mode", "target ε", "σ", "planned ε", "AUC (mean ± sd)", "AUC − non-DP", "seeds", "diverged"]);
    let mut verdicts = Vec::new();
    for key in &order {
        let g = &groups[key];
        let converged = aucs(g);
        let (auc, sd) = mean_sd(&converged);
        let base = baseline(key.0, key.1).unwrap_or(f64::NAN);
        let sigma = mean_sd(&g.iter().filter_map(|r| r.sigma).collect::<Vec<_>>()).0;
        let planned = mean_sd(&g.iter().filter_map(|r| r.planned_epsilon).collect::<Vec<_>>()).0;
        let dp = g[0].sigma.is_some();
        summary.push_row([
            key.0.to_string(),
            key.1.to_string(),
            key.2.to_string(),
            key.3.clone(),
            if dp { format!("{sigma:.3}") } else { "—".into() },
            if dp { format!("{planned:.3}") } else { "—".into() },
            if converged.is_empty() { "—".into() } else { format!("{auc:.4} ± {sd:.4}") },
            if converged.is_empty() { "—".into() } else { format!("{:+.4}", auc - base) },
            g.len().to_string(),
            (g.len() - converged.len()).to_string(),
        ])?;
        if key.2 == Mode::Record.label() && key.3 == "4" {
            let met = if base - auc <= TARGET_GAP { "met" } else { "not met" };
            verdicts.push(format!("{} {}: record level at ε = 4 AUC {auc:.4} vs non-DP {base:.4} ({:+.4}): target ({TARGET_GAP}) {met}", key.0, key.1, auc - base));
        }
    }
    let mut detail = Table::new(["dataset", "model", "mode", "target ε", "seed", "σ", "planned ε", "AUC", "seconds"]);
    for r in &runs {
        detail.push_row([
            r.dataset.to_string(),
            r.model.to_string(),
            r.mode.label().to_string(),
            eps_label(r.epsilon),
            r.seed.to_string(),
            r.sigma.map_or(String::new(), |s| format!("{s:.4}")),
            r.planned_epsilon.map_or(String::new(), |e| format!("{e:.4}")),
            r.auc.map_or("diverged".into(), |a| format!("{a:.4}")),
            format!("{:.1}", r.seconds),
        ])?;
    }
    println!("\nDP utility (pooled test AUC, mean over {} seeds)\n\n{summary}\n{}", seeds.len(), verdicts.join("\n"));
    std::fs::create_dir_all(&out)?;
    detail.write_csv(&out.join("dp_utility.csv"))?;
    let mut pngs = Vec::new();
    for d in &DATASETS {
        for (model, _) in MODELS {
            let line = |mode: Mode| {
                let points = EPSILONS
                    .iter()
                    .filter_map(|&e| groups.get(&(d.name, model, mode.label(), eps_label(Some(e)))).map(|g| aucs(g)).filter(|a| !a.is_empty()).map(|a| (e.log2(), mean_sd(&a).0)))
                    .collect();
                Series::new(format!("{} DP", mode.label()), points)
            };
            let mut series = vec![line(Mode::Record), line(Mode::Institution)];
            if let Some(base) = baseline(d.name, model) {
                series.push(Series::new("non-DP federated (ε = ∞)", vec![(EPSILONS[0].log2(), base), (EPSILONS[EPSILONS.len() - 1].log2(), base)]));
            }
            let name = format!("dp_utility_{}_{}.png", comparison::file_part(d.name), comparison::file_part(model));
            line_chart_png(
                &out.join(&name),
                &format!("{}, {model}, {} banks IID: pooled test AUC vs ε (mean of {} seeds)", d.name, d.banks, seeds.len()),
                "log2 ε  (−1 = 0.5, 0 = 1, 1 = 2, 2 = 4, 3 = 8)",
                "AUC",
                &series,
            )?;
            pngs.push(name);
        }
    }
    let md = format!(
        "# DP utility: pooled test AUC against ε\n\nGenerated by `cargo run --release -p confide-benches --bin dp_utility` ({:.0} s on two shared cores). \
         IID banks (Taiwan 5, Telco 3; 20 % of each bank's rows held out), δ = 1/(total training rows), σ solved by `confide_core::spend::resolve` for \
         {} rounds at the smallest bank (record level: the training split's ε with the statistics included; institution level: the \
         institution-level ε of the training rounds). Every setting: {} rounds × 1 local epoch, expected batch {} (DP-SGD: Poisson rate \
         batch/rows), SGD with momentum 0.9, learning rate {}, FedAvg (server learning rate 1) over unweighted updates (weight 1 per \
         bank), no class weighting. Record level C = {} per row; institution level C = {} per bank update, core's distributed \
         discrete Gaussian (`discrete_noise::NoisePlan::choose`: noise shares counted for K − 1 banks, dropout_allowance 1; the finest grid the 32-bit \
         ring allows; conditional rounding). Statistics noise multiplier 4 (the job default) for ε ≥ 4, 4·4/ε below \
         (the default alone would spend ε ≈ 1.1); each bank noises its own clipped statistics. ∞ = the same without DP (exact statistics, no clipping, \
         no noise). Mean and sample sd over seeds {:?} (partition and model seeds) of the runs that did not diverge (`diverged`: a bank's local loss overflowed, as the worker would fail that task); every run is in `dp_utility.csv`.\n\n{}\n{}\n\n{}\n",
        started.elapsed().as_secs_f64(),
        h.rounds,
        h.rounds,
        h.batch,
        h.learning_rate,
        h.record_clip,
        h.institution_clip,
        seeds,
        summary.to_markdown(),
        verdicts.iter().map(|v| format!("- {v}")).collect::<Vec<_>>().join("\n"),
        pngs.iter().map(|p| format!("![{p}]({p})")).collect::<Vec<_>>().join("\n")
    );
    std::fs::write(out.join("dp_utility.md"), md)?;
    eprintln!("wrote {} ({:.0} s)", out.join("dp_utility.{csv,md}").display(), started.elapsed().as_secs_f64());
    Ok(())
}
