//! The automatic export of a completed job: every available format, `preprocessing.json` and
//! the model card are written to `<data_dir>/jobs/<job id>/export/` (see `confide-export`).
//!
//! An export failure is logged and recorded as the job's export error (shown by `job get`);
//! it never fails the job, whose model stays available through `FetchModel`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use confide_export::{AuditHead, JobExport, JobInfo, Participant, RoundReport};

use crate::Shared;
use crate::store::now_rfc3339;

/// Where a job's automatic export goes.
pub fn export_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("jobs").join(job_id).join("export")
}

/// Exports a job that has just completed and records the outcome; never fails. Runs off the
/// async threads (it reads checkpoints and writes files).
pub async fn export_completed(shared: &Arc<Shared>, job_id: &str, stop_reason: Option<String>) {
    let worker = Arc::clone(shared);
    let id = job_id.to_string();
    let recorded = tokio::task::spawn_blocking(move || {
        let outcome = export_now(&worker, &id, stop_reason);
        match &outcome {
            Ok(dir) => {
                tracing::info!(job = %id, dir = %dir.display(), "model exported");
                worker.store.set_export(&id, Some(&dir.display().to_string()), None)
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "automatic model export failed (the job still completed)");
                worker.store.set_export(&id, None, Some(e))
            }
        }
    })
    .await;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(job = %job_id, error = %e, "could not record the export outcome"),
        Err(e) => tracing::error!(job = %job_id, error = %e, "export task panicked"),
    }
}

fn export_now(shared: &Shared, job_id: &str, stop_reason: Option<String>) -> Result<PathBuf, String> {
    let store = &shared.store;
    let job = store.job(job_id).map_err(|e| e.to_string())?.ok_or("job vanished from the database")?;
    let stored_rounds = store.rounds(job_id).map_err(|e| e.to_string())?;
    // The job's final model: the best round's when early stopping restores it.
    let spec = serde_json::from_str(&job.spec_json).ok();
    let (model_round, model_hash) = crate::jobs::views::final_model(&job, spec.as_ref(), &stored_rounds, true).ok_or("the job has no model")?;
    let model = store.checkpoints().get(&model_hash).map_err(|e| e.to_string())?;
    let rounds = stored_rounds
        .into_iter()
        .map(|r| RoundReport {
            round: r.round,
            participants: r
                .participants
                .into_iter()
                .map(|p| Participant { institution: p.worker_id, status: p.status })
                .collect(),
            metrics: r.metrics,
            duration_secs: r.duration_secs,
            completed_at: r.completed_at,
        })
        .collect();
    let info = JobInfo {
        id: job.id.clone(),
        name: job.name.clone(),
        status: "completed".into(),
        created_at: job.created_at.clone(),
        updated_at: now_rfc3339(),
        stop_reason: stop_reason.or(job.stop_reason.clone()),
        model_hash,
        model_round: Some(model_round),
        audit_heads: store
            .audit_heads(job_id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|h| AuditHead { institution: h.worker_id, round: h.round, head: h.head, dp_epsilon: (h.dp_spent_epsilon > 0.0).then_some(h.dp_spent_epsilon) })
            .collect(),
    };
    let export = JobExport::from_stored(
        info,
        &job.spec_json,
        &job.schema_toml,
        job.preprocessing_json.as_deref(),
        Some(&model),
        rounds,
    )
    .map_err(|e| e.to_string())?;
    let dir = export_dir(&shared.config.data_dir, job_id);
    let formats = export.available_formats().map_err(|e| e.to_string())?;
    confide_export::export_job(&export, &dir, &formats).map_err(|e| e.to_string())?;
    Ok(dir)
}
