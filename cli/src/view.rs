//! How jobs look to a person: tables, summaries, JSON, and the live progress of `watch`.

use std::fmt::Write;

use confide_proto::v1::{self as pb, job_event::Kind};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::out::outln;

/// The metrics shown per round, in this order, when present (classifiers, then recommenders).
const SHOWN: [&str; 9] = ["auc", "ks", "log_loss", "accuracy", "rmse", "mae", "train_loss", "contributors", "users_evaluated"];

fn metrics_line(m: &std::collections::HashMap<String, f64>) -> String {
    let mut ranking: Vec<(&String, &f64)> = m.iter().filter(|(k, _)| k.starts_with("hr@") || k.starts_with("ndcg@")).collect();
    ranking.sort_by(|a, b| a.0.cmp(b.0));
    SHOWN
        .iter()
        .filter_map(|k| m.get(*k).map(|v| format!("{k}={v:.4}")))
        .chain(ranking.into_iter().map(|(k, v)| format!("{k}={v:.4}")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The headline federated metric of a job: test AUC for classifiers, test RMSE for
/// recommenders (from the latest round that has it).
fn headline(j: &pb::Job) -> Option<(&'static str, f64)> {
    ["auc", "rmse", "ndcg@10"]
        .into_iter()
        .find_map(|name| j.rounds.iter().rev().find_map(|r| r.metrics.get(name)).map(|v| (name, *v)))
}

/// One line per job.
pub fn job_table(jobs: &[pb::Job]) -> String {
    let mut out = format!("{:<36}  {:<24} {:<10} {:>9}  {}\n", "ID", "NAME", "STATUS", "ROUNDS", "TEST METRIC");
    for j in jobs {
        let auc = headline(j).map_or("-".into(), |(name, v)| format!("{name} {v:.4}"));
        let _ = writeln!(
            out,
            "{:<36}  {:<24} {:<10} {:>4}/{:<4}  {auc}",
            j.id,
            j.name,
            j.status,
            j.rounds_completed,
            j.rounds_total
        );
    }
    out
}

/// A human summary of one job.
pub fn job_text(j: &pb::Job) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job      {} ({})", j.id, j.name);
    let _ = writeln!(out, "status   {}", j.status);
    let _ = writeln!(out, "rounds   {}/{}", j.rounds_completed, j.rounds_total);
    if !j.activity.is_empty() {
        let _ = writeln!(out, "activity {}", activity_line(&j.activity, &j.activity_reason));
    }
    if !j.error.is_empty() {
        let _ = writeln!(out, "error    {}", j.error);
    }
    if !j.stop_reason.is_empty() {
        let _ = writeln!(out, "stopped  {}", j.stop_reason);
    }
    if !j.model_hash.is_empty() {
        let _ = writeln!(out, "model    {} (round {})", j.model_hash, j.model_round);
    }
    if let Ok(spec) = serde_json::from_str::<confide_core::job::JobSpec>(&j.spec_json) {
        // A custom model's module hash is what banks pin in `allowed_torchscript_sha256`.
        if let confide_core::model::ModelSpec::TorchScript(ts) = &spec.model {
            let _ = writeln!(out, "module   torchscript {}", ts.module_sha256.as_deref().unwrap_or("unresolved"));
        }
        if let Some(plan) = confide_core::spend::DpJob::of(&spec).and_then(|dp| confide_core::spend::plan_for(&dp).ok()) {
            let _ = writeln!(out, "privacy  {plan}");
        }
    }
    if !j.export_dir.is_empty() {
        let _ = writeln!(out, "export   {} (on the coordinator)", j.export_dir);
    }
    if !j.export_error.is_empty() {
        let _ = writeln!(out, "export   FAILED: {}", j.export_error);
    }
    for r in &j.rounds {
        let _ = writeln!(out, "  round {:>3}  {:>6.1}s  {}", r.round, r.duration_secs, metrics_line(&r.metrics));
        for p in r.participants.iter().filter(|p| !p.contributed() || !p.reason.is_empty()) {
            let _ = writeln!(out, "             {} {}: {}", p.worker_id, p.status_name(), p.reason);
        }
    }
    out
}

fn round_json(r: &pb::RoundSummary) -> Value {
    let metrics: serde_json::Map<String, Value> = r.metrics.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({
        "round": r.round,
        "status": r.status,
        "duration_secs": r.duration_secs,
        "completed_at": r.completed_at,
        "model_hash": r.model_hash,
        "metrics": metrics,
        "participants": r.participants.iter().map(|p| json!({"worker_id": p.worker_id, "status": p.status_name(), "reason": p.reason})).collect::<Vec<_>>(),
    })
}

/// The job as JSON, for scripts.
pub fn job_json(j: &pb::Job) -> Value {
    let spec: Value = serde_json::from_str(&j.spec_json).unwrap_or(Value::Null);
    json!({
        "id": j.id,
        "name": j.name,
        "status": j.status,
        "error": if j.error.is_empty() { Value::Null } else { json!(j.error) },
        "stop_reason": if j.stop_reason.is_empty() { Value::Null } else { json!(j.stop_reason) },
        "export_dir": if j.export_dir.is_empty() { Value::Null } else { json!(j.export_dir) },
        "export_error": if j.export_error.is_empty() { Value::Null } else { json!(j.export_error) },
        "rounds_completed": j.rounds_completed,
        "rounds_total": j.rounds_total,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "model_hash": j.model_hash,
        "model_round": j.model_round,
        "activity": if j.activity.is_empty() { Value::Null } else { json!(j.activity) },
        "activity_reason": if j.activity_reason.is_empty() { Value::Null } else { json!(j.activity_reason) },
        "spec": spec,
        "rounds": j.rounds.iter().map(round_json).collect::<Vec<_>>(),
    })
}

/// A job's activity for people: the waiting and stalled reasons say what they are
/// (`waiting for participants: …`, `stalled: no space left on device`); training is named.
fn activity_line(activity: &str, reason: &str) -> String {
    match activity {
        "training" if !reason.is_empty() => format!("training: {reason}"),
        _ if reason.is_empty() => activity.to_string(),
        _ => reason.to_string(),
    }
}

/// Prints a line above the bar, or plainly when the bar is hidden (output is not a terminal).
fn say(bar: &ProgressBar, line: String) -> std::io::Result<()> {
    if bar.is_hidden() {
        outln!("{line}")
    } else {
        bar.println(line);
        Ok(())
    }
}

/// Follows a job: a progress bar over rounds, a line per completed round. Returns the exit code
/// (0 completed, 1 failed or cancelled).
pub async fn watch(mut stream: tonic::Streaming<pb::JobEvent>) -> anyhow::Result<u8> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} round {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    while let Some(ev) = stream.message().await? {
        match ev.kind {
            Some(Kind::RoundStarted(s)) => {
                bar.set_length(s.rounds_total);
                bar.set_message(format!("round {} training on {}", ev.round, s.participants.join(", ")));
            }
            Some(Kind::RoundCompleted(r)) => {
                bar.set_position(r.round);
                say(&bar, format!("round {:>3}  {:>6.1}s  {}", r.round, r.duration_secs, metrics_line(&r.metrics)))?;
                for p in r.participants.iter().filter(|p| !p.contributed() || !p.reason.is_empty()) {
                    say(&bar, format!("           {} {}: {}", p.worker_id, p.status_name(), p.reason))?;
                }
                bar.set_message(String::new());
            }
            Some(Kind::RoundFailed(f)) => say(&bar, format!("round {:>3}  attempt failed: {}", ev.round, f.reason))?,
            Some(Kind::ParticipantFailed(p)) => say(&bar, format!("           {} {}: {}", p.worker_id, p.status_name(), p.reason))?,
            // Sent once per change, so each line is news.
            Some(Kind::ActivityChanged(a)) => say(&bar, activity_line(&a.activity, &a.reason))?,
            Some(Kind::JobFinished(job)) => {
                bar.set_length(job.rounds_total);
                bar.set_position(job.rounds_completed);
                bar.finish_and_clear();
                let headline = headline(&job);
                outln!(
                    "job {} {} after {} rounds{}{}{}",
                    job.id,
                    job.status,
                    job.rounds_completed,
                    headline.map_or(String::new(), |(name, v)| format!("; final federated test {} {v:.4}", name.to_uppercase())),
                    if job.error.is_empty() { String::new() } else { format!("; error: {}", job.error) },
                    if job.stop_reason.is_empty() { String::new() } else { format!("; {}", job.stop_reason) },
                )?;
                return Ok(if job.status == "completed" { 0 } else { 1 });
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    anyhow::bail!("the coordinator closed the stream before the job ended")
}
