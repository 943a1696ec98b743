//! The API views of stored jobs and rounds (what `GetJob`, `ListJobs` and the watch stream
//! show). The view functions are pure; [`load_job`] and [`load_jobs`] gather what they need
//! from the store in a fixed number of queries (not one per job).

use std::collections::HashMap;

use confide_core::job::JobSpec;
use confide_proto::v1 as pb;

use crate::Shared;
use crate::round::activity::Activity;
use crate::round::schedule;
use crate::store::{AuditHeadRecord, JobRecord, JobStatus, ParticipantRecord, RoundRecord, StoreError};

/// The API view of a participant's outcome.
pub fn participant_proto(p: &ParticipantRecord) -> pb::ParticipantOutcome {
    pb::ParticipantOutcome {
        worker_id: p.worker_id.clone(),
        status: pb::ParticipantStatus::from(p.status).into(),
        reason: p.reason.clone(),
    }
}

/// The API view of a round.
pub fn round_proto(r: &RoundRecord) -> pb::RoundSummary {
    pb::RoundSummary {
        round: r.round,
        status: "completed".into(),
        participants: r.participants.iter().map(participant_proto).collect(),
        metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        duration_secs: r.duration_secs,
        model_hash: r.model_hash.clone(),
        completed_at: r.completed_at.clone(),
    }
}

/// The model a job ends with (or has now): (round, checkpoint hash). A `completed` job whose
/// early stopping restores the best round ends with that round's model; otherwise it is the
/// latest committed one. What `FetchModel`, `job get` and the automatic export (which runs
/// just before the job is marked completed) use.
pub fn final_model(job: &JobRecord, spec: Option<&JobSpec>, rounds: &[RoundRecord], completed: bool) -> Option<(u64, String)> {
    let head = job.model_hash.clone()?;
    if completed
        && let Some(spec) = spec
        && let Some(best) = schedule::final_round(spec, rounds.iter().map(|r| (r.round, &r.metrics)))
        && let Some(r) = rounds.iter().find(|r| r.round == best)
    {
        return Some((r.round, r.model_hash.clone()));
    }
    Some((job.rounds_completed, head))
}

/// The API view of a job, from its record, its committed rounds, the outcomes of its failed
/// attempts (round, attempt, outcome) and what it is doing now (when it runs here).
pub fn job_proto(job: &JobRecord, rounds: &[RoundRecord], failed: &[(u64, u32, ParticipantRecord)], activity: Option<Activity>) -> pb::Job {
    let spec = serde_json::from_str::<JobSpec>(&job.spec_json).ok();
    let rounds_total = spec.as_ref().map_or(0, |s| s.training.rounds);
    let (model_round, model_hash) = final_model(job, spec.as_ref(), rounds, job.status == JobStatus::Completed).unwrap_or_default();
    let activity = activity.filter(|_| !job.status.is_final());
    let mut error = job.error.clone().unwrap_or_default();
    if error.is_empty() && !job.status.is_final() {
        // Surface why the current round keeps failing (e.g. a worker's data error).
        if let Some((round, attempt, p)) = failed.iter().rev().find(|(r, _, p)| *r > job.rounds_completed && !p.status.contributed()) {
            error = format!("round {round} attempt {attempt}: {} {}: {}", p.worker_id, p.status, p.reason);
        }
    }
    pb::Job {
        id: job.id.clone(),
        name: job.name.clone(),
        status: job.status.as_str().into(),
        spec_json: job.spec_json.clone(),
        rounds_completed: job.rounds_completed,
        rounds_total,
        created_at: job.created_at.clone(),
        updated_at: job.updated_at.clone(),
        error,
        rounds: rounds.iter().map(round_proto).collect(),
        model_hash,
        model_round,
        stop_reason: job.stop_reason.clone().unwrap_or_default(),
        schema_toml: job.schema_toml.clone(),
        preprocessing_json: job.preprocessing_json.clone().unwrap_or_default(),
        export_dir: job.export_dir.clone().unwrap_or_default(),
        export_error: job.export_error.clone().unwrap_or_default(),
        audit_heads: Vec::new(),
        activity: activity.as_ref().map(|a| a.kind.as_str().to_string()).unwrap_or_default(),
        activity_reason: activity.map(|a| a.reason).unwrap_or_default(),
    }
}

/// The API view of the banks' audit heads for a job.
pub fn audit_heads_proto(heads: &[AuditHeadRecord]) -> Vec<pb::AuditHead> {
    heads.iter().map(|h| pb::AuditHead {
            worker_id: h.worker_id.clone(),
            round: h.round,
            head: h.head.clone(),
            dp_spent_epsilon: h.dp_spent_epsilon,
        }).collect()
}

/// One job's view with its banks' audit heads (four queries), None when there is no such job.
pub fn load_job(shared: &Shared, id: &str) -> Result<Option<pb::Job>, StoreError> {
    let Some(job) = shared.store.job(id)? else { return Ok(None) };
    let mut view = job_view(shared, &job)?;
    view.audit_heads = audit_heads_proto(&shared.store.audit_heads(id)?);
    Ok(Some(view))
}

/// The view of a job record already read (two queries).
pub fn job_view(shared: &Shared, job: &JobRecord) -> Result<pb::Job, StoreError> {
    Ok(job_proto(job, &shared.store.rounds(&job.id)?, &shared.store.failed_attempts(&job.id)?, shared.jobs.activity(&job.id)))
}

/// Every job's view, oldest first, in three queries whatever the number of jobs.
pub fn load_jobs(shared: &Shared) -> Result<Vec<pb::Job>, StoreError> {
    let jobs = shared.store.jobs()?;
    let mut rounds = group(shared.store.all_rounds()?);
    let mut failed = group(shared.store.all_failed_attempts()?);
    Ok(jobs
        .iter()
        .map(|j| job_proto(j, &rounds.remove(&j.id).unwrap_or_default(), &failed.remove(&j.id).unwrap_or_default(), shared.jobs.activity(&j.id)))
        .collect())
}

fn group<T>(rows: Vec<(String, T)>) -> HashMap<String, Vec<T>> {
    let mut by_job: HashMap<String, Vec<T>> = HashMap::new();
    for (job, row) in rows {
        by_job.entry(job).or_default().push(row);
    }
    by_job
}
