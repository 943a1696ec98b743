//! The fixture the export test files build jobs with: a completed two-round job record around
//! a schema, its preprocessing and a checkpoint, parsed as the coordinator's stored texts are.

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Preprocessing;
use confide_export::{AuditHead, JobExport, JobInfo, RoundReport};

/// The completed job `job-1` named `name` over `dataset`, trained for `rounds`.
#[allow(dead_code)] // each test file uses the half it needs
pub fn completed_job(
    name: &str,
    dataset: &str,
    spec: &ModelSpec,
    schema_toml: &str,
    prep: &Preprocessing,
    params: &ModelParams,
    rounds: Vec<RoundReport>,
) -> JobExport {
    completed_job_from_checkpoint(name, dataset, spec, schema_toml, prep, &params.to_safetensors(None), rounds)
        .expect("inputs fit together")
}

/// The same job around raw checkpoint bytes (a tree ensemble's JSON, or a corrupt file), as
/// [`JobExport::from_stored`] reads them.
#[allow(dead_code)] // each test file uses the half it needs
pub fn completed_job_from_checkpoint(
    name: &str,
    dataset: &str,
    spec: &ModelSpec,
    schema_toml: &str,
    prep: &Preprocessing,
    checkpoint: &[u8],
    rounds: Vec<RoundReport>,
) -> Result<JobExport, confide_export::ExportError> {
    let spec_json = format!(
        r#"{{"name":"{name}","dataset":"{dataset}","model":{},"training":{{"rounds":2,"learning_rate":0.1}}}}"#,
        serde_json::to_string(spec).expect("spec")
    );
    let spec: confide_core::job::JobSpec = serde_json::from_str(&spec_json).expect("job spec");
    let info = JobInfo {
        id: "job-1".into(),
        name: name.into(),
        status: "completed".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:01:00Z".into(),
        stop_reason: None,
        model_hash: "0".repeat(64),
        model_round: None,
        audit_heads: vec![
            AuditHead { institution: "bank1".into(), round: 2, head: "a1".repeat(32), dp_epsilon: None },
            AuditHead { institution: "bank2".into(), round: 2, head: "b2".repeat(32), dp_epsilon: None },
        ],
    };
    JobExport::from_stored(
        info,
        &serde_json::to_string(&spec).expect("json"),
        schema_toml,
        Some(&serde_json::to_string(prep).expect("prep json")),
        Some(checkpoint),
        rounds,
    )
}
