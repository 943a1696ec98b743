//! Membership-inference audit (issue 13, item 7): how much a federated MLP trained long enough to
//! overfit reveals about whether a row was in a bank's training split, without DP and with
//! record-level DP-SGD at ε = 8, 4, 1 — next to the bound that (ε, δ)-DP puts on any attack.
//!
//! Setup: the UCI Taiwan rows are split IID into `GROUPS` × 3 banks of ~400 rows, half of each
//! bank held out. Each group of 3 banks runs the whole job (DP statistics, then federated
//! training; see [`confide_benches::dp`]) with its own seed. Every group is in turn the target:
//! members are its banks' training rows, non-members their held-out rows (same distribution,
//! balanced), and the other groups' models are reference models that never saw either — the
//! offline setting of LiRA. Scores are pooled over all targets.
//!
//! Attacks: (a) loss threshold (Yeom et al. 2018): score = −loss of the target model;
//! (b) calibrated offline LiRA (Carlini et al. 2022): φ = logit of the probability of the true
//! label; score = (φ_target − μ_ref(x))/σ_ref with μ_ref(x) the reference models' mean on that row
//! and σ_ref either fixed (pooled over rows) or the row's own (floored at a tenth of the pooled). Bound: an (ε, δ)-DP mechanism allows at most
//! TPR ≤ min(e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR)) at every FPR (Kairouz et al. 2015); its
//! integral is the largest attack AUC (ε is the job's whole training-split ε, statistics included).
//!
//! Writes `benches/results/mia_audit.{csv,md}` and two ROC PNGs (log10 axes).
//!
//! `cargo run --release -p confide-benches --bin mia_audit [OUT_DIR]` — about 2 minutes on two
//! shared cores (100 federated trainings).

use std::time::Instant;

use confide_benches::comparison::{self, CompareError, Institution, Prep, mean_sd, open_institutions, rank_auc as auc};
use confide_benches::dp::{self, Mode, Privacy};
use confide_core::job::JobSpec;
use confide_core::model::ModelParams;
use confide_datasets::DatasetSchema;
use confide_datasets::partition::{PartitionConfig, Scheme, partition_csv};
use confide_report::{Series, Table, line_chart_png};
use confide_worker::ml::{self, Device};
use confide_worker::tasks::Split;

/// Groups of 3 banks: one target model and `GROUPS − 1` references per target.
const GROUPS: usize = 25;
const BANKS_PER_GROUP: usize = 3;
const MODEL: &str = "kind = \"mlp\"\nhidden = [32, 16]";
/// Long enough to overfit 600 rows: 40 rounds × 5 local epochs.
const TRAINING: &str = "rounds = 40\nlocal_epochs = 5\nbatch_size = 64\nlearning_rate = 0.1\noptimizer = \"momentum\"";
const CLIP: f64 = 1.0;
const EPSILONS: [Option<f64>; 4] = [None, Some(8.0), Some(4.0), Some(1.0)];
/// FPRs the table reports TPR at.
const LOW_FPR: [f64; 2] = [0.01, 0.001];

/// One group's trained model.
struct Group {
    job: JobSpec,
    prep: Prep,
    params: ModelParams,
}

/// Per row of a target group: label of membership and true class.
struct Target {
    member: bool,
    /// φ and loss under the target model.
    phi: f64,
    loss: f64,
    /// φ under each reference model.
    refs: Vec<f64>,
}

/// φ = log(p_y / (1 − p_y)) (the logit of the true label's probability) and the log loss
/// ln(1 + e^−φ), from the model's logit `z` for label `y` — logits, not probabilities, so that
/// an overfitted model's near-zero losses stay distinct rather than tie at float precision.
fn phi_and_loss(z: f32, y: f32) -> (f64, f64) {
    let phi = if y > 0.5 { f64::from(z) } else { -f64::from(z) };
    let loss = if phi > 0.0 { (-phi).exp().ln_1p() } else { -phi + phi.exp().ln_1p() };
    (phi, loss)
}

/// Logits of `model` on `tables` (raw rows, encoded with the model's own preprocessing), with
/// membership and label per row.
fn predict(model: &Group, tables: &[(bool, std::sync::Arc<confide_datasets::RawTable>)]) -> Result<Vec<(bool, f32, f32)>, CompareError> {
    let mut out = Vec::new();
    for (member, table) in tables {
        let enc = model.prep.prep.encode(table)?;
        let net = ml::Net::new(&model.job.model, &model.params, enc.dim, Device::Cpu)?;
        let x = tch::Tensor::f_from_slice(&enc.features).and_then(|t| t.f_reshape([enc.rows as i64, enc.dim as i64])).map_err(ml::MlError::from)?;
        let logits = Vec::<f32>::try_from(&ml::Classifier::logits(&net, &x)?).map_err(ml::MlError::from)?;
        out.extend(logits.into_iter().zip(&enc.labels).map(|(z, &y)| (*member, z, y)));
    }
    Ok(out)
}

/// A group's training (member) and held-out (non-member) rows, bank by bank.
fn target_rows(banks: &[Institution]) -> Result<Vec<(bool, std::sync::Arc<confide_datasets::RawTable>)>, CompareError> {
    let mut rows = Vec::new();
    for bank in banks {
        rows.push((true, bank.data.table(Split::Train)?));
        rows.push((false, bank.data.table(Split::Test)?));
    }
    Ok(rows)
}

/// (FPR, TPR) at every threshold, from the strictest.
fn roc(scores: &[(f64, bool)]) -> Vec<(f64, f64)> {
    let mut s: Vec<(f64, bool)> = scores.to_vec();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = s.iter().filter(|x| x.1).count().max(1) as f64;
    let negatives = (s.len() as f64 - positives).max(1.0);
    let (mut tp, mut fp, mut points, mut i) = (0.0, 0.0, vec![(0.0, 0.0)], 0);
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            if s[j].1 { tp += 1.0 } else { fp += 1.0 }
            j += 1;
        }
        points.push((fp / negatives, tp / positives));
        i = j;
    }
    points
}

/// The best TPR at FPR ≤ `fpr`.
fn tpr_at(curve: &[(f64, f64)], fpr: f64) -> f64 {
    curve.iter().filter(|p| p.0 <= fpr + 1e-12).map(|p| p.1).fold(0.0, f64::max)
}

/// The largest TPR any attack has at `fpr` against an (ε, δ)-DP mechanism.
fn tpr_bound(eps: f64, delta: f64, fpr: f64) -> f64 {
    (eps.exp() * fpr + delta).min(1.0 - (-eps).exp() * (1.0 - delta - fpr)).clamp(0.0, 1.0)
}

/// ∫ of [`tpr_bound`] over FPR ∈ [0, 1] (midpoint rule).
fn auc_bound(eps: f64, delta: f64) -> f64 {
    let n = 100_000;
    (0..n).map(|i| tpr_bound(eps, delta, (i as f64 + 0.5) / n as f64)).sum::<f64>() / n as f64
}

/// The log10 ROC for a chart: the best TPR at 60 log-spaced FPRs from 1/negatives to 1.
fn log_curve(curve: &[(f64, f64)], negatives: usize) -> Vec<(f64, f64)> {
    let lo = -(negatives.max(2) as f64).log10();
    (0..=60)
        .map(|i| lo * (1.0 - i as f64 / 60.0))
        .filter_map(|x| {
            let t = tpr_at(curve, 10f64.powf(x));
            (t > 0.0).then(|| (x, t.log10()))
        })
        .collect()
}

/// One setting's results.
struct Audit {
    label: String,
    planned_epsilon: Option<f64>,
    sigma: Option<f64>,
    test_auc: (f64, f64),
    member_loss: f64,
    nonmember_loss: f64,
    loss_scores: Vec<(f64, bool)>,
    lira_scores: Vec<(f64, bool)>,
    lira_own_scores: Vec<(f64, bool)>,
    seconds: f64,
}

fn run_setting(
    schema: &DatasetSchema,
    groups: &[Vec<Institution>],
    epsilon: Option<f64>,
    delta: f64,
    planned_rows: u64,
) -> Result<Audit, CompareError> {
    let started = Instant::now();
    let mode = if epsilon.is_some() { Mode::Record } else { Mode::Off };
    let privacy = Privacy { mode, epsilon: epsilon.unwrap_or(f64::INFINITY), delta, clip_norm: CLIP, planned_rows, banks: BANKS_PER_GROUP };
    let mut trained = Vec::with_capacity(groups.len());
    let mut plan = None;
    let mut test_aucs = Vec::new();
    for (g, banks) in groups.iter().enumerate() {
        let (job, p) = dp::job(&schema.name, 1000 + g as u64, MODEL, TRAINING, &privacy)?;
        plan = p;
        let prep = dp::preprocessing(schema, banks, &job)?;
        let params = dp::train(&job, &prep, banks, mode)?;
        test_aucs.push(dp::pooled_scores(&job, &params, &prep, banks)?.auc);
        trained.push(Group { job, prep, params });
    }
    let mut targets: Vec<Target> = Vec::new();
    for (t, banks) in groups.iter().enumerate() {
        let rows = target_rows(banks)?;
        let own = predict(&trained[t], &rows)?;
        let mut refs: Vec<Vec<(bool, f32, f32)>> = Vec::new();
        for (j, model) in trained.iter().enumerate() {
            if j != t {
                refs.push(predict(model, &rows)?);
            }
        }
        // Balance: as many non-members as members in this group.
        let members = own.iter().filter(|r| r.0).count();
        let mut nonmembers = 0;
        for (i, &(member, p, y)) in own.iter().enumerate() {
            if !member {
                if nonmembers == members {
                    continue;
                }
                nonmembers += 1;
            }
            let (phi, loss) = phi_and_loss(p, y);
            targets.push(Target { member, phi, loss, refs: refs.iter().map(|r| phi_and_loss(r[i].1, r[i].2).0).collect() });
        }
    }
    let means: Vec<f64> = targets.iter().map(|t| t.refs.iter().sum::<f64>() / t.refs.len().max(1) as f64).collect();
    let residuals: Vec<f64> = targets.iter().zip(&means).flat_map(|(t, m)| t.refs.iter().map(move |r| r - m)).collect();
    let spread = mean_sd(&residuals).1.max(1e-6);
    let loss_of = |member: bool| {
        let l: Vec<f64> = targets.iter().filter(|t| t.member == member).map(|t| t.loss).collect();
        l.iter().sum::<f64>() / l.len().max(1) as f64
    };
    Ok(Audit {
        label: epsilon.map_or_else(|| "non-DP".to_string(), |e| format!("record-level DP, ε = {e}")),
        planned_epsilon: plan.as_ref().map(|p| p.epsilon),
        sigma: plan.as_ref().map(|p| p.noise_multiplier),
        test_auc: mean_sd(&test_aucs),
        member_loss: loss_of(true),
        nonmember_loss: loss_of(false),
        // −loss = −ln(1 + e^−φ) orders rows exactly as φ does, and φ does not underflow: a model
        // with logits in the hundreds (ε = 1 here) would tie thousands of rows at loss 0.
        loss_scores: targets.iter().map(|t| (t.phi, t.member)).collect(),
        lira_scores: targets.iter().zip(&means).map(|(t, m)| ((t.phi - m) / spread, t.member)).collect(),
        lira_own_scores: targets
            .iter()
            .zip(&means)
            .map(|(t, m)| {
                let sd = (t.refs.iter().map(|r| (r - m).powi(2)).sum::<f64>() / t.refs.len().saturating_sub(1).max(1) as f64).sqrt();
                ((t.phi - m) / sd.max(0.1 * spread), t.member)
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = comparison::out_dir_from_args();
    let started = Instant::now();
    let schema_path = comparison::repo_root().join("datasets/schemas/uci_credit_card_default.toml");
    let schema = DatasetSchema::from_file(&schema_path)?;
    let scratch = tempfile::tempdir()?;
    let config = PartitionConfig {
        institutions: Some(GROUPS * BANKS_PER_GROUP),
        scheme: Scheme::Iid,
        test_fraction: 0.5,
        seed: 7,
        min_rows: 10,
        holdout: Default::default(),
    };
    let summary = partition_csv(&comparison::shared_datasets().join("uci_credit_card_default/UCI_Credit_Card.csv"), &schema, scratch.path(), &config, false)?;
    let mut banks = open_institutions(&schema, &schema_path, &summary, scratch.path())?.into_iter();
    let groups: Vec<Vec<Institution>> = (0..GROUPS).map(|_| banks.by_ref().take(BANKS_PER_GROUP).collect()).collect();
    let group_rows: Vec<usize> = summary.institutions.chunks(BANKS_PER_GROUP).map(|c| c.iter().map(|i| i.train_rows).sum()).collect();
    let smallest = summary.institutions.iter().map(|i| i.train_rows).min().unwrap_or(0);
    let federation_rows = group_rows.iter().copied().min().unwrap_or(0);
    // δ = 1/(training rows of the smallest federation).
    let delta = 1.0 / federation_rows.max(1) as f64;
    eprintln!("{GROUPS} federations of {BANKS_PER_GROUP} banks, {federation_rows}+ training rows each (smallest bank {smallest}), δ = {delta:.2e}");
    let mut audits = Vec::new();
    for eps in EPSILONS {
        let a = run_setting(&schema, &groups, eps, delta, smallest as u64)?;
        eprintln!(
            "  {:<28} σ {:>7}  test AUC {:.4}  loss member {:.3} / non-member {:.3}  attack AUC: loss {:.4}, LiRA {:.4} / {:.4}  [{:.0}s]",
            a.label,
            a.sigma.map_or("—".into(), |s| format!("{s:.3}")),
            a.test_auc.0,
            a.member_loss,
            a.nonmember_loss,
            auc(&a.loss_scores),
            auc(&a.lira_scores),
            auc(&a.lira_own_scores),
            a.seconds
        );
        audits.push(a);
    }
    let mut table = Table::new([
        "model",
        "ε (planned)",
        "σ",
        "test AUC",
        "mean loss members / non-members",
        "attack",
        "attack AUC",
        "AUC bound",
        "TPR @ FPR 1%",
        "bound @ 1%",
        "TPR @ FPR 0.1%",
        "bound @ 0.1%",
    ]);
    let negatives = audits.first().map_or(0, |a| a.loss_scores.iter().filter(|s| !s.1).count());
    let mut charts: Vec<(String, Vec<Series>)> = vec![
        ("loss threshold (Yeom et al.)".into(), Vec::new()),
        ("offline LiRA, fixed variance (Carlini et al.)".into(), Vec::new()),
        ("offline LiRA, per-example variance".into(), Vec::new()),
    ];
    for a in &audits {
        let eps = a.planned_epsilon;
        for (k, (attack, scores)) in [("loss threshold", &a.loss_scores), ("offline LiRA, fixed variance", &a.lira_scores), ("offline LiRA, per-example variance", &a.lira_own_scores)].into_iter().enumerate() {
            let curve = roc(scores);
            let bound = |f: f64| eps.map_or("1".into(), |e| format!("{:.4}", tpr_bound(e, delta, f)));
            table.push_row([
                a.label.clone(),
                eps.map_or("∞".into(), |e| format!("{e:.3}")),
                a.sigma.map_or("—".into(), |s| format!("{s:.3}")),
                format!("{:.4} ± {:.4}", a.test_auc.0, a.test_auc.1),
                format!("{:.3} / {:.3}", a.member_loss, a.nonmember_loss),
                attack.to_string(),
                format!("{:.4}", auc(scores)),
                eps.map_or("1".into(), |e| format!("{:.4}", auc_bound(e, delta))),
                format!("{:.4}", tpr_at(&curve, LOW_FPR[0])),
                bound(LOW_FPR[0]),
                format!("{:.4}", tpr_at(&curve, LOW_FPR[1])),
                bound(LOW_FPR[1]),
            ])?;
            charts[k].1.push(Series::new(a.label.clone(), log_curve(&curve, negatives)));
        }
    }
    let lo = -(negatives.max(2) as f64).log10();
    let grid: Vec<f64> = (0..=60).map(|i| lo * (1.0 - f64::from(i) / 60.0)).collect();
    for (_, series) in &mut charts {
        for a in audits.iter().filter(|a| a.planned_epsilon.is_some()) {
            let e = a.planned_epsilon.unwrap_or(f64::INFINITY);
            series.push(Series::new(format!("bound for ε = {e:.1}"), grid.iter().map(|&x| (x, tpr_bound(e, delta, 10f64.powf(x)).log10())).collect()));
        }
        series.push(Series::new("chance (TPR = FPR)", vec![(lo, lo), (0.0, 0.0)]));
    }
    println!("\nMembership-inference audit, {} members and {negatives} non-members over {GROUPS} target federations\n\n{table}", audits.first().map_or(0, |a| a.loss_scores.len() - negatives));
    std::fs::create_dir_all(&out)?;
    table.write_csv(&out.join("mia_audit.csv"))?;
    let mut pngs = Vec::new();
    for (i, (title, series)) in charts.iter().enumerate() {
        let name = format!("mia_audit_roc_{}.png", ["loss", "lira_fixed", "lira_per_example"][i]);
        line_chart_png(&out.join(&name), &format!("Membership inference, {title}: ROC (log10 axes) vs the (ε, δ) bound"), "log10 FPR", "log10 TPR", series)?;
        pngs.push(name);
    }
    let md = format!(
        "# Membership-inference audit\n\nGenerated by `cargo run --release -p confide-benches --bin mia_audit` ({:.0} s on two shared cores). \
         UCI Taiwan credit, IID into {GROUPS} federations × {BANKS_PER_GROUP} banks (~{smallest} training and as many held-out rows per bank); \
         MLP[32,16], {}, FedAvg over unweighted updates; record-level DP-SGD with C = {CLIP}, σ from `spend::resolve` for the job's rounds \
         at the smallest bank ({smallest} rows), δ = {delta:.2e}, statistics noise as in `dp_utility`. Each federation is the target once (members: its \
         training rows; non-members: its held-out rows, as many), the other {} are the reference models of offline LiRA. {} members and {negatives} \
         non-members pooled. Bound: TPR ≤ min(e^ε·FPR + δ, 1 − e^−ε(1 − δ − FPR)); AUC bound = its integral; ε is the whole job's training-split ε.\n\n{}\n{}\n",
        started.elapsed().as_secs_f64(),
        TRAINING.replace('\n', ", ").replace('"', ""),
        GROUPS - 1,
        audits.first().map_or(0, |a| a.loss_scores.len() - negatives),
        table.to_markdown(),
        pngs.iter().map(|p| format!("![{p}]({p})")).collect::<Vec<_>>().join("\n")
    );
    std::fs::write(out.join("mia_audit.md"), md)?;
    eprintln!("wrote {} ({:.0} s)", out.join("mia_audit.{csv,md}").display(), started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dp_bound_is_chance_at_zero_epsilon_and_grows_with_it() {
        assert!((auc_bound(1e-9, 0.0) - 0.5).abs() < 1e-3);
        assert!(auc_bound(1.0, 1e-3) < auc_bound(4.0, 1e-3));
        assert!((tpr_bound(1.0, 0.0, 0.01) - 0.01 * 1f64.exp()).abs() < 1e-12);
        let curve = roc(&[(3.0, true), (2.0, false), (1.0, true)]);
        assert_eq!(tpr_at(&curve, 0.0), 0.5);
        assert_eq!(tpr_at(&curve, 1.0), 1.0);
    }
}
