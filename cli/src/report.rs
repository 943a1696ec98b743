//! `confide job report`: a job's summary as markdown (`report.md`) and its federated metrics
//! per round as a line chart (`metrics.png`), built from what `GetJob` returns.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use confide_core::job::JobSpec;
use confide_core::metrics::higher_is_better;
use confide_proto::v1 as pb;
use confide_report::{Series, Table, line_chart_png};

/// File name of the markdown summary.
pub const MARKDOWN: &str = "report.md";
/// File name of the per-round table as CSV (for spreadsheets and notebooks).
pub const CSV: &str = "rounds.csv";
/// File name of the metrics chart.
pub const CHART: &str = "metrics.png";

/// Metrics drawn in the chart, with their legend labels, when the job reported them. They share
/// one axis: ranking metrics and losses of a binary classifier all live near [0, 1].
const CHARTED: [(&str, &str); 5] =
    [("auc", "AUC"), ("ks", "KS"), ("log_loss", "log loss"), ("brier", "Brier score"), ("train_loss", "train loss")];

/// Metrics listed first in tables, in this order; any other metric follows alphabetically.
const PREFERRED: [&str; 11] = [
    "auc", "ks", "gini", "log_loss", "brier", "accuracy", "precision", "recall", "train_loss", "positive_rate", "examples",
];

/// What `write` produced.
#[derive(Debug)]
pub struct ReportFiles {
    /// `report.md`.
    pub markdown: PathBuf,
    /// `rounds.csv`: the rounds table of the markdown.
    pub csv: PathBuf,
    /// `metrics.png`, absent when no round reported a charted metric.
    pub chart: Option<PathBuf>,
}

/// Writes `report.md` and `metrics.png` for `job` into `dir` (created if needed).
pub fn write(job: &pb::Job, dir: &Path) -> anyhow::Result<ReportFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let series = chart_series(job);
    let chart = if series.iter().any(|s| !s.points.is_empty()) {
        let path = dir.join(CHART);
        let title = format!("{}: federated metrics per round", job.name);
        line_chart_png(&path, &title, "round", "value", &series).with_context(|| format!("drawing {}", path.display()))?;
        Some(path)
    } else {
        None
    };
    let markdown = dir.join(MARKDOWN);
    let text = markdown_report(job, chart.is_some())?;
    std::fs::write(&markdown, text).with_context(|| format!("writing {}", markdown.display()))?;
    let csv = dir.join(CSV);
    // Full precision for notebooks and spreadsheets.
    rounds_table(job, &metric_names(job), |v| v.to_string())?.write_csv(&csv)?;
    Ok(ReportFiles { markdown, csv, chart })
}

/// One series per charted metric that at least one round reported.
fn chart_series(job: &pb::Job) -> Vec<Series> {
    CHARTED
        .iter()
        .filter_map(|(key, label)| {
            let points: Vec<(f64, f64)> = completed(job)
                .filter_map(|r| r.metrics.get(*key).filter(|v| v.is_finite()).map(|v| (r.round as f64, *v)))
                .collect();
            (!points.is_empty()).then(|| Series::new(*label, points))
        })
        .collect()
}

fn completed(job: &pb::Job) -> impl DoubleEndedIterator<Item = &pb::RoundSummary> {
    job.rounds.iter().filter(|r| r.status == "completed")
}

/// Every metric name any round reported, preferred ones first.
fn metric_names(job: &pb::Job) -> Vec<String> {
    let mut names: Vec<String> = PREFERRED
        .iter()
        .filter(|k| job.rounds.iter().any(|r| r.metrics.contains_key(**k)))
        .map(|k| k.to_string())
        .collect();
    let mut others: Vec<&String> = job
        .rounds
        .iter()
        .flat_map(|r| r.metrics.keys())
        .filter(|k| !PREFERRED.contains(&k.as_str()) && k.as_str() != "contributors")
        .collect();
    others.sort();
    others.dedup();
    names.extend(others.into_iter().cloned());
    names
}

/// A metric value as every table of the report writes it.
pub fn format_metric(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{value:.0}") } else { format!("{value:.4}") }
}

fn seconds(total: f64) -> String {
    match total {
        t if t >= 120.0 => format!("{:.1} min", t / 60.0),
        t if t >= 10.0 => format!("{t:.1} s"),
        t => format!("{t:.2} s"),
    }
}

fn markdown_report(job: &pb::Job, with_chart: bool) -> anyhow::Result<String> {
    let spec: Option<JobSpec> = serde_json::from_str(&job.spec_json).ok();
    let mut out = String::new();
    writeln!(out, "# Job report: {}\n", job.name)?;
    let mut summary = Table::new(["job", job.name.as_str()]);
    let durations: Vec<f64> = job.rounds.iter().map(|r| r.duration_secs).collect();
    let total: f64 = durations.iter().sum();
    let mut facts = vec![
        ("job id", job.id.clone()),
        ("status", job.status.clone()),
        ("rounds", format!("{} of {} completed", job.rounds_completed, job.rounds_total)),
    ];
    if let Some(spec) = &spec {
        facts.push(("dataset", spec.dataset.clone()));
        facts.push(("model", spec.model.label()));
        let strategy = serde_json::to_value(&spec.strategy).ok().and_then(|v| v["kind"].as_str().map(String::from));
        facts.push(("strategy", strategy.unwrap_or_default()));
        facts.push(("aggregation", if spec.insecure_plain_aggregation { "plain sums (insecure)".into() } else { "secure aggregation".into() }));
    }
    facts.push(("stop reason", stop_reason(job)));
    if !job.error.is_empty() {
        facts.push(("error", job.error.clone()));
    }
    facts.push(("created", job.created_at.clone()));
    facts.push(("last update", job.updated_at.clone()));
    if !durations.is_empty() {
        let max = durations.iter().copied().fold(0.0, f64::max);
        facts.push(("round time", format!("{} in total, {} mean, {} longest", seconds(total), seconds(total / durations.len() as f64), seconds(max))));
    }
    if !job.model_hash.is_empty() {
        facts.push(("model sha256", job.model_hash.clone()));
    }
    if !job.export_dir.is_empty() {
        facts.push(("export", format!("{} (on the coordinator)", job.export_dir)));
    }
    if !job.export_error.is_empty() {
        facts.push(("export", format!("failed: {}", job.export_error)));
    }
    for (k, v) in facts {
        summary.push_row([k.to_string(), v])?;
    }
    writeln!(out, "{}", summary.to_markdown())?;

    let names = metric_names(job);
    let last_evaluated = completed(job).rev().find(|r| names.iter().any(|n| r.metrics.contains_key(n)));
    if let Some(last) = last_evaluated {
        writeln!(out, "## Final and best metrics\n")?;
        writeln!(out, "Final: round {}. Best: the best value of any round, and the round that reached it.\n", last.round)?;
        let mut table = Table::new(["metric", "final", "best", "best round"]);
        for name in &names {
            let Some(final_value) = last.metrics.get(name) else { continue };
            let best = improves_upwards(name).and_then(|higher| best_round(job, name, higher));
            let (best_value, best_round) = best.map_or(("".into(), "".into()), |(v, r)| (format_metric(v), r.to_string()));
            table.push_row([name.clone(), format_metric(*final_value), best_value, best_round])?;
        }
        writeln!(out, "{}", table.to_markdown())?;
    }
    if with_chart {
        writeln!(out, "![Federated metrics per round]({CHART})\n")?;
    }

    writeln!(out, "## Rounds\n")?;
    writeln!(out, "{}", rounds_table(job, &names, format_metric)?.to_markdown())?;

    writeln!(out, "## Participants per round\n")?;
    let mut participants = Table::new(["round", "contributed", "did not contribute"]);
    for r in &job.rounds {
        let ids = |pred: &dyn Fn(&pb::ParticipantOutcome) -> bool| {
            r.participants.iter().filter(|p| pred(p)).map(describe_participant).collect::<Vec<_>>().join(", ")
        };
        participants.push_row([r.round.to_string(), ids(&|p| p.contributed()), ids(&|p| !p.contributed())])?;
    }
    writeln!(out, "{}", participants.to_markdown())?;
    Ok(out)
}

/// One row per round: status, duration, participants who contributed, and every metric written
/// by `value`.
fn rounds_table(job: &pb::Job, names: &[String], value: fn(f64) -> String) -> anyhow::Result<Table> {
    let mut headers = vec!["round".to_string(), "status".into(), "duration (s)".into(), "participants".into()];
    headers.extend(names.iter().cloned());
    let mut rounds = Table::new(headers);
    for r in &job.rounds {
        let contributed = r.participants.iter().filter(|p| p.contributed()).count();
        let mut row = vec![
            r.round.to_string(),
            r.status.clone(),
            format!("{:.2}", r.duration_secs),
            format!("{contributed}/{}", r.participants.len()),
        ];
        row.extend(names.iter().map(|n| r.metrics.get(n).map_or(String::new(), |v| value(*v))));
        rounds.push_row(row)?;
    }
    Ok(rounds)
}

fn describe_participant(p: &pb::ParticipantOutcome) -> String {
    match (p.contributed(), p.reason.is_empty()) {
        (true, _) => p.worker_id.clone(),
        (_, true) => format!("{} ({})", p.worker_id, p.status_name()),
        (_, false) => format!("{} ({}: {})", p.worker_id, p.status_name(), p.reason),
    }
}

/// Why the job stopped, in words, for every final status.
fn stop_reason(job: &pb::Job) -> String {
    if !job.stop_reason.is_empty() {
        return job.stop_reason.clone();
    }
    match job.status.as_str() {
        "completed" => format!("round budget reached ({} rounds)", job.rounds_total),
        "failed" => "failed (see error)".into(),
        "cancelled" => "cancelled by an operator".into(),
        other => format!("not stopped ({other})"),
    }
}

/// Whether larger values of `metric` are better: the evaluation metrics' own direction, and lower
/// for the training loss. None for counts and rates that have no "better".
fn improves_upwards(metric: &str) -> Option<bool> {
    higher_is_better(metric).or((metric == "train_loss").then_some(false))
}

/// The best value of `metric` over completed rounds and the first round that reached it.
fn best_round(job: &pb::Job, metric: &str, higher: bool) -> Option<(f64, u64)> {
    let values: BTreeMap<u64, f64> =
        completed(job).filter_map(|r| r.metrics.get(metric).filter(|v| v.is_finite()).map(|v| (r.round, *v))).collect();
    values.into_iter().fold(None, |best, (round, v)| match best {
        Some((b, _)) if (higher && v <= b) || (!higher && v >= b) => best,
        _ => Some((v, round)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(n: u64, auc: f64, log_loss: f64, dropped: Option<&str>) -> pb::RoundSummary {
        let mut participants = vec![pb::ParticipantOutcome { worker_id: "bank1".into(), status: pb::ParticipantStatus::Contributed.into(), reason: String::new() }];
        if let Some(reason) = dropped {
            participants.push(pb::ParticipantOutcome { worker_id: "bank2".into(), status: pb::ParticipantStatus::Dropped.into(), reason: reason.into() });
        }
        pb::RoundSummary {
            round: n,
            status: "completed".into(),
            participants,
            metrics: [("auc".to_string(), auc), ("log_loss".to_string(), log_loss), ("examples".to_string(), 1409.0)].into(),
            duration_secs: 0.5,
            model_hash: String::new(),
            completed_at: String::new(),
        }
    }

    fn job() -> pb::Job {
        pb::Job {
            id: "j1".into(),
            name: "churn".into(),
            status: "completed".into(),
            rounds_completed: 3,
            rounds_total: 3,
            rounds: vec![round(1, 0.70, 0.60, None), round(2, 0.82, 0.45, Some("deadline")), round(3, 0.81, 0.44, None)],
            ..Default::default()
        }
    }

    #[test]
    fn best_respects_each_metrics_direction() {
        let j = job();
        assert_eq!(best_round(&j, "auc", true), Some((0.82, 2)));
        assert_eq!(best_round(&j, "log_loss", false), Some((0.44, 3)));
    }

    #[test]
    fn markdown_lists_every_round_final_best_and_dropouts() {
        let text = markdown_report(&job(), true).expect("renders");
        assert!(text.contains("| 2 | completed | 0.50 | 1/2 | 0.8200 | 0.4500 | 1409 |"), "{text}");
        assert!(text.contains("| auc | 0.8100 | 0.8200 | 2 |"), "{text}");
        assert!(text.contains("| log_loss | 0.4400 | 0.4400 | 3 |"), "{text}");
        assert!(text.contains("| examples | 1409 |  |  |"), "counts have no best: {text}");
        assert!(text.contains("bank2 (dropped: deadline)"), "{text}");
        assert!(text.contains("round budget reached (3 rounds)"), "{text}");
        assert!(text.contains("![Federated metrics per round](metrics.png)"), "{text}");
    }

    #[test]
    fn csv_keeps_full_precision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = job();
        j.rounds[0].metrics.insert("auc".into(), 0.123456789);
        let files = write(&j, dir.path()).expect("writes");
        let csv = std::fs::read_to_string(files.csv).expect("csv");
        assert!(csv.starts_with("round,status,duration (s),participants,auc,log_loss,examples\n"), "{csv}");
        assert!(csv.contains("1,completed,0.50,1/1,0.123456789,0.6,1409\n"), "{csv}");
        assert!(files.chart.is_some_and(|c| c.exists()));
    }

    #[test]
    fn a_job_without_rounds_gets_a_summary_and_no_chart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = job();
        j.rounds.clear();
        j.status = "failed".into();
        j.error = "bank1: data error".into();
        let files = write(&j, dir.path()).expect("writes");
        assert!(files.chart.is_none());
        let csv = std::fs::read_to_string(files.csv).expect("csv");
        assert_eq!(csv.lines().count(), 1, "a header and no rounds: {csv}");
        let text = std::fs::read_to_string(files.markdown).expect("markdown");
        assert!(text.contains("bank1: data error") && !text.contains("metrics.png"), "{text}");
    }
}
