//! Submission: a job file, its schema and (for custom models) its module and parameters are
//! validated, and the job's size admitted ([`super::admission`]), before anything is stored;
//! then the job is stored and started.
//!
//! Every submission is hashed (job file, schema, model files, catalogue): an identical earlier
//! job is named in the reply as a hint, and a repeated idempotency key returns the earlier job
//! instead of storing a new one.

use std::sync::Arc;

use confide_core::job::JobSpec;
use confide_core::model::ModelSpec;
use confide_datasets::DatasetSchema;

use confide_core::spend::Plan;

use super::admission::{JobSize, SizeError};
use crate::Shared;
use crate::store::{Inserted, JobRecord, NewJob, StoreError};

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The job file is invalid.
    #[error(transparent)]
    Job(#[from] confide_core::job::JobError),
    /// The schema text is invalid.
    #[error("dataset schema: {0}")]
    Schema(String),
    /// The schema names another dataset than the job.
    #[error("the job trains on dataset `{job}` but the schema describes `{schema}`")]
    DatasetMismatch {
        /// Dataset in the job file.
        job: String,
        /// Dataset in the schema.
        schema: String,
    },
    /// The custom model's files are unusable, or files came with a built-in model.
    #[error("{0}")]
    Model(String),
    /// The job's model family and the schema's kind disagree (recommendation models need a
    /// ratings schema, tabular models a schema with a target).
    #[error("model `{model}` cannot train on dataset `{dataset}`: {reason}")]
    ModelDatasetMismatch {
        /// Model family.
        model: String,
        /// Dataset name.
        dataset: String,
        /// Why.
        reason: &'static str,
    },
    /// The item catalogue is missing, invalid, or sent with a tabular job.
    #[error("item catalogue: {0}")]
    Catalogue(String),
    /// The job's differential privacy cannot be planned: a numeric column without a declared
    /// range, or a target ε no noise multiplier reaches.
    #[error("job file: field `{field}`: {reason}")]
    Privacy {
        /// Dotted path of the field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The job is larger than this coordinator admits.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// The idempotency key is malformed.
    #[error("idempotency key: {0}")]
    BadKey(&'static str),
    /// The idempotency key was used for a different submission.
    #[error("idempotency key `{key}` was already used at {submitted_at} for a different job ({job_id}); use a new key for a changed job file")]
    KeyReused {
        /// The key.
        key: String,
        /// The job stored under it.
        job_id: String,
        /// When that job was submitted.
        submitted_at: String,
    },
    /// The state could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The files a job's model comes with (a TorchScript module and its initial parameters).
#[derive(Debug, Default, Clone, Copy)]
pub struct ModelFiles<'a> {
    /// The scripted module (`torch.jit.save` output).
    pub module: &'a [u8],
    /// Initial parameters (safetensors).
    pub parameters: &'a [u8],
}

/// An earlier job with the same submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// Its id.
    pub job_id: String,
    /// RFC 3339 time it was submitted.
    pub submitted_at: String,
}

impl From<&JobRecord> for Earlier {
    fn from(job: &JobRecord) -> Self {
        Self { job_id: job.id.clone(), submitted_at: job.created_at.clone() }
    }
}

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job was stored and started; `identical` names the latest earlier job with the
    /// same submission, if any.
    New {
        /// The new job's id.
        job_id: String,
        /// An identical earlier job.
        identical: Option<Earlier>,
        /// A differentially private job's plan (σ resolved and stored with the job).
        privacy: Option<Plan>,
    },
    /// The idempotency key had already submitted this job: nothing new was stored.
    Replayed(Earlier),
}

impl Submitted {
    /// The id of the job the submission stands for.
    pub fn job_id(&self) -> &str {
        match self {
            Submitted::New { job_id, .. } => job_id,
            Submitted::Replayed(earlier) => &earlier.job_id,
        }
    }
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;

/// SHA-256 (hex) identifying a submission: of the hashes of its parts, in order, so that no
/// part's bytes can run into the next.
fn submission_hash(spec_toml: &str, schema_toml: &str, files: ModelFiles<'_>, catalogue: &[String]) -> String {
    let mut parts = [spec_toml.as_bytes(), schema_toml.as_bytes(), files.module, files.parameters]
        .into_iter()
        .map(confide_core::sha256_hex)
        .collect::<Vec<_>>();
    parts.push(confide_core::sha256_hex(serde_json::to_string(catalogue).unwrap_or_default().as_bytes()));
    confide_core::sha256_hex(parts.join("\n").as_bytes())
}

/// The earlier job an idempotency key stands for, or why the key cannot be used.
fn replay(existing: &JobRecord, key: &str, hash: &str) -> Result<Submitted, SubmitError> {
    if existing.submission_sha256.as_deref() == Some(hash) {
        Ok(Submitted::Replayed(existing.into()))
    } else {
        Err(SubmitError::KeyReused { key: key.to_string(), job_id: existing.id.clone(), submitted_at: existing.created_at.clone() })
    }
}

/// Validates, admits and stores a job (with its item catalogue, for recommendation models),
/// then starts it.
///
/// A `torchscript` model's module and initial parameters are validated and stored
/// content-addressed; the stored spec names them by hash and records their layout. With an
/// `idempotency_key` already stored for the same submission nothing is stored and the earlier
/// job is returned; the same key with another submission is refused.
pub fn submit(
    shared: &Arc<Shared>,
    spec_toml: &str,
    schema_toml: &str,
    files: ModelFiles<'_>,
    catalogue: Vec<String>,
    idempotency_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let hash = submission_hash(spec_toml, schema_toml, files, &catalogue);
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(SubmitError::BadKey("must be 1 to 200 bytes without control characters"));
        }
        if let Some(existing) = shared.store.job_by_idempotency_key(key)? {
            return replay(&existing, key, &hash);
        }
    }
    let mut spec = JobSpec::from_toml(spec_toml)?;
    let schema = DatasetSchema::parse(schema_toml, "submitted schema").map_err(|e| SubmitError::Schema(e.to_string()))?;
    if schema.name != spec.dataset {
        return Err(SubmitError::DatasetMismatch { job: spec.dataset.clone(), schema: schema.name.clone() });
    }
    match &mut spec.model {
        ModelSpec::TorchScript(ts) => {
            let params = ts.resolve(files.module, files.parameters).map_err(|e| SubmitError::Model(e.to_string()))?;
            if let Some(dim) = ts.input_dim
                && dim != schema.input_dim()
            {
                return Err(SubmitError::Model(format!(
                    "torchscript model: the module was built for {dim} inputs, the schema encodes {} (`confide schema width` prints it)",
                    schema.input_dim()
                )));
            }
            let checkpoints = shared.store.checkpoints();
            checkpoints.put(files.module)?;
            ts.parameters_sha256 = Some(checkpoints.put(&params.to_safetensors(None))?);
        }
        _ if !files.module.is_empty() || !files.parameters.is_empty() => {
            return Err(SubmitError::Model(format!(
                "model files were sent with a `{}` model; only `kind = \"torchscript\"` takes a module and parameters",
                spec.model.kind_name()
            )));
        }
        _ => {}
    }
    let mismatch = |reason| SubmitError::ModelDatasetMismatch { model: spec.model.kind_name().into(), dataset: schema.name.clone(), reason };
    // Tabular models see the schema's encoded width, recommendation models the catalogue's items.
    let mut input_dim = schema.input_dim();
    let catalogue_json = match (spec.model.is_recommendation(), schema.recommendation.is_some()) {
        (true, true) => {
            let catalogue = confide_datasets::Catalogue::new(catalogue).map_err(|e| SubmitError::Catalogue(e.to_string()))?;
            input_dim = catalogue.ids().len();
            Some(serde_json::to_string(catalogue.ids()).map_err(|e| SubmitError::Catalogue(e.to_string()))?)
        }
        (true, false) => return Err(mismatch("recommendation models need a ratings schema (`[recommendation]`)")),
        (false, true) => return Err(mismatch("a ratings schema needs a recommendation model (matrix_factorization, two_tower)")),
        (false, false) if !catalogue.is_empty() => {
            return Err(SubmitError::Catalogue("only recommendation jobs take an item catalogue".into()));
        }
        (false, false) => None,
    };
    if let Some(g) = spec.model.gbdt() {
        check_trees(g, &schema, shared.config.max_contribution_bytes)?;
    }
    let privacy = plan_privacy(&mut spec, &schema)?;
    let size = JobSize::of(&spec, input_dim);
    size.check(&spec, &shared.config)?;
    // Institution-level noise must fit the ring for every bank that could take part: the
    // connected ones now, or the job's minimum.
    let parameters = usize::try_from(size.parameters).unwrap_or(usize::MAX);
    crate::round::secure::check_institution_ring(&spec, parameters, shared.hub.connected().len())
        .map_err(|reason| SubmitError::Privacy { field: "secure_aggregation.modulus_bits", reason })?;
    let id = uuid::Uuid::new_v4().to_string();
    let spec_json = serde_json::to_string(&spec).map_err(|e| SubmitError::Schema(e.to_string()))?;
    let identical = shared.store.latest_job_by_submission(&hash)?.as_ref().map(Earlier::from);
    let new = NewJob {
        id: &id,
        name: &spec.name,
        spec_json: &spec_json,
        schema_toml,
        catalogue_json: catalogue_json.as_deref(),
        submission_sha256: Some(&hash),
        idempotency_key,
    };
    // A concurrent submission with the same key may have been stored since the check above.
    if let Inserted::ExistingKey(existing) = shared.store.insert_new_job(&new)? {
        return replay(&existing, idempotency_key.unwrap_or_default(), &hash);
    }
    if spec.insecure_plain_aggregation {
        tracing::warn!(job = %id, "job uses INSECURE plain aggregation: the coordinator sees every institution's update (debugging only)");
    }
    super::start(shared, &id);
    Ok(Submitted::New { job_id: id, identical, privacy })
}

/// A tree model's federated binning needs a declared range on every numeric column, and its
/// deepest level's histograms (64-bit ring elements under secure aggregation) must fit the
/// coordinator's contribution limit.
fn check_trees(g: &confide_core::model::GbdtSpec, schema: &DatasetSchema, max_contribution_bytes: u64) -> Result<(), SubmitError> {
    if let Some(column) = confide_datasets::first_unranged_column(schema) {
        return Err(SubmitError::Model(format!(
            "schema `{}`: numeric column `{column}` has no `range = [low, high]`; gradient-boosted trees bin every numeric column \
             from fine histograms over its declared range",
            schema.name
        )));
    }
    let slots: u64 = schema
        .feature_columns()
        .map(|c| if c.kind == confide_datasets::ColumnType::Categorical { 3 * c.level_names().len() as u64 } else { u64::from(g.max_bin) + 1 })
        .sum();
    let bytes = (confide_gbdt::hist::STATS as u64 * slots * 8).saturating_mul(1 << (g.max_depth - 1));
    if bytes > max_contribution_bytes {
        return Err(SubmitError::Model(format!(
            "job file: field `model.max_depth`: the deepest level's histograms would be {bytes} bytes per bank, above this \
             coordinator's max_contribution_bytes = {max_contribution_bytes}; lower max_depth or max_bin"
        )));
    }
    Ok(())
}

/// A DP job's plan: the schema must declare a range for every numeric feature (DP statistics
/// clip into it), and the noise multiplier is solved from the target ε when not given, then
/// stored with the job, so every bank reads the same σ.
fn plan_privacy(spec: &mut JobSpec, schema: &DatasetSchema) -> Result<Option<Plan>, SubmitError> {
    if spec.privacy.is_none() {
        return Ok(None);
    }
    if let Some(column) = confide_datasets::first_unranged_column(schema) {
        return Err(SubmitError::Privacy {
            field: "privacy",
            reason: format!(
                "schema `{}`: numeric column `{column}` has no `range = [low, high]`; differentially private statistics clip values into a declared range",
                schema.name
            ),
        });
    }
    let plan = confide_core::spend::resolve(spec).map_err(|e| SubmitError::Privacy { field: "privacy.target_epsilon", reason: e.to_string() })?;
    Ok(Some(plan))
}


#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use confide_core::model::{INPUT_DIM_KEY, ModelParams, ParamLayout, TensorSpec};

    use super::*;

    const MODULE: &[u8] = b"PK\x03\x04 stands in for a torch.jit.save archive (the coordinator never runs it)";

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        Arc::new(Shared {
            store: crate::store::Store::open(dir).expect("store"),
            hub: crate::hub::Hub::default(),
            jobs: crate::jobs::Jobs::default(),
            config: crate::config::CoordinatorConfig::default(),
            metrics: Arc::new(crate::telemetry::Metrics::default()),
            revocations: Default::default(),
        })
    }

    fn telco_schema() -> (String, usize) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/schemas/telco_churn.toml");
        let text = std::fs::read_to_string(path).expect("schema");
        let width = DatasetSchema::parse(&text, "telco").expect("parses").input_dim();
        (text, width)
    }

    fn job(model: &str) -> String {
        format!("name = \"j\"\ndataset = \"telco_churn\"\n[model]\n{model}\n[training]\nrounds = 1\nlearning_rate = 0.1\n")
    }

    const TORCHSCRIPT: &str = "kind = \"torchscript\"\nmodule = \"model.pt\"\nparameters = \"init.safetensors\"";

    /// Initial parameters of a linear module built for `width` inputs.
    fn parameters(width: usize) -> ModelParams {
        let layout = ParamLayout {
            tensors: vec![
                TensorSpec { name: "fc.weight".into(), shape: vec![1, width] },
                TensorSpec { name: "fc.bias".into(), shape: vec![1] },
            ],
        };
        ModelParams::init(layout, 3)
    }

    #[tokio::test]
    async fn a_torchscript_job_stores_its_module_and_initial_values_by_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, width) = telco_schema();
        let params = parameters(width);
        let bytes = params.to_safetensors(Some(HashMap::from([(INPUT_DIM_KEY.to_string(), width.to_string())])));
        let files = ModelFiles { module: MODULE, parameters: &bytes };
        let id = submit(&shared, &job(TORCHSCRIPT), &schema, files, Vec::new(), None).expect("accepted").job_id().to_string();
        shared.jobs.stop_all();

        let stored = shared.store.job(&id).expect("read").expect("stored");
        let spec: JobSpec = serde_json::from_str(&stored.spec_json).expect("spec");
        let ModelSpec::TorchScript(ts) = spec.model else { panic!("stored as {:?}", spec.model) };
        assert_eq!(ts.module_sha256.as_deref(), Some(confide_core::sha256_hex(MODULE).as_str()));
        assert_eq!((ts.layout, ts.input_dim), (params.layout.clone(), Some(width)));
        let checkpoints = shared.store.checkpoints();
        assert_eq!(checkpoints.get(&confide_core::sha256_hex(MODULE)).expect("module stored"), MODULE);
        let initial = checkpoints.get(ts.parameters_sha256.as_deref().expect("parameters hash")).expect("stored");
        assert_eq!(ModelParams::from_safetensors(&initial, &params.layout).expect("reads"), params);
    }

    #[tokio::test]
    async fn model_files_that_do_not_fit_the_job_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, width) = telco_schema();
        let refuse = |model: &str, files: ModelFiles<'_>| submit(&shared, &job(model), &schema, files, Vec::new(), None).expect_err("refused").to_string();

        let narrow = parameters(width - 1)
            .to_safetensors(Some(HashMap::from([(INPUT_DIM_KEY.to_string(), (width - 1).to_string())])));
        let err = refuse(TORCHSCRIPT, ModelFiles { module: MODULE, parameters: &narrow });
        assert!(err.contains(&format!("built for {} inputs, the schema encodes {width}", width - 1)), "{err}");
        let err = refuse(TORCHSCRIPT, ModelFiles::default());
        assert!(err.contains("empty"), "{err}");
        let good = parameters(width).to_safetensors(None);
        let err = refuse("kind = \"mlp\"\nhidden = [4]", ModelFiles { module: MODULE, parameters: &good });
        assert!(err.contains("only `kind = \"torchscript\"`"), "{err}");
        assert!(shared.store.jobs().expect("jobs").is_empty(), "nothing refused was stored");
    }

    const MLP: &str = "kind = \"mlp\"\nhidden = [4]";

    #[tokio::test]
    async fn an_identical_submission_names_the_earlier_job_and_a_key_makes_it_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, _) = telco_schema();
        let go = |key: Option<&str>, spec: &str| submit(&shared, spec, &schema, ModelFiles::default(), Vec::new(), key);
        let first = go(None, &job(MLP)).expect("first");
        let Submitted::New { job_id: second, identical, .. } = go(None, &job(MLP)).expect("second") else { panic!("no key, new job") };
        let earlier = identical.expect("the first is named");
        assert_eq!(earlier.job_id, first.job_id());
        assert_ne!(second, first.job_id(), "without a key an identical job still runs");
        let Submitted::New { identical: other, .. } = go(None, &job("kind = \"mlp\"\nhidden = [5]")).expect("different") else { panic!() };
        assert!(other.is_none(), "a different job is no duplicate");

        let keyed = go(Some("nightly-2026-12-01"), &job(MLP)).expect("keyed");
        let Submitted::Replayed(again) = go(Some("nightly-2026-12-01"), &job(MLP)).expect("repeat") else { panic!("stored twice") };
        assert_eq!(again.job_id, keyed.job_id());
        let err = go(Some("nightly-2026-12-01"), &job("kind = \"mlp\"\nhidden = [5]")).expect_err("key reused").to_string();
        assert!(err.contains("idempotency key `nightly-2026-12-01` was already used") && err.contains(keyed.job_id()), "{err}");
        assert!(matches!(go(Some("a\nb"), &job(MLP)), Err(SubmitError::BadKey(_))));
        shared.jobs.stop_all();
        assert_eq!(shared.store.jobs().expect("jobs").len(), 4);
    }

    #[tokio::test]
    async fn a_job_above_the_size_limits_is_refused_before_it_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, _) = telco_schema();
        let err = submit(&shared, &job("kind = \"mlp\"\nhidden = [65536, 65536]"), &schema, ModelFiles::default(), Vec::new(), None)
            .expect_err("too large")
            .to_string();
        assert!(err.contains("parameters, above this coordinator's limit of 100000000") && err.contains("`max_model_parameters`"), "{err}");
        assert!(shared.store.jobs().expect("jobs").is_empty());
    }

    #[tokio::test]
    async fn a_dp_job_is_planned_at_submit_and_stored_with_its_solved_noise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, _) = telco_schema();
        let privacy = "\n[privacy]\nmode = \"record\"\ntarget_epsilon = 4.0\nplanned_rows = 1800\n";
        let spec = format!("{}{privacy}", job(MLP));
        let Submitted::New { job_id, privacy: Some(plan), .. } = submit(&shared, &spec, &schema, ModelFiles::default(), Vec::new(), None).expect("planned")
        else {
            panic!("no plan")
        };
        shared.jobs.stop_all();
        assert!(plan.epsilon <= 4.0 && plan.epsilon > 3.99 && plan.noise_multiplier > 0.5, "{plan}");
        let stored: JobSpec = serde_json::from_str(&shared.store.job(&job_id).expect("read").expect("stored").spec_json).expect("spec");
        assert_eq!(stored.privacy.and_then(|p| p.noise_multiplier), Some(plan.noise_multiplier), "banks read the solved σ");

        // A schema whose numeric column declares no range cannot have DP statistics.
        let unranged = schema.replacen("range = [0, 72]\n", "", 1);
        let err = submit(&shared, &spec, &unranged, ModelFiles::default(), Vec::new(), None).expect_err("no range").to_string();
        assert!(err.contains("field `privacy`") && err.contains("numeric column `tenure` has no `range"), "{err}");
        // A target no noise reaches: the statistics alone spend more.
        let tiny = spec.replace("target_epsilon = 4.0", "target_epsilon = 0.01");
        let err = submit(&shared, &tiny, &schema, ModelFiles::default(), Vec::new(), None).expect_err("unreachable").to_string();
        assert!(err.contains("field `privacy.target_epsilon`") && err.contains("no noise multiplier"), "{err}");
        let err = submit(&shared, &spec.replace("target_epsilon = 4.0", "target_epsilon = 4.0\ndelta = 0.001"), &schema, ModelFiles::default(), Vec::new(), None)
            .expect_err("delta above 1/rows")
            .to_string();
        assert!(err.contains("field `privacy.delta`"), "{err}");
        assert_eq!(shared.store.jobs().expect("jobs").len(), 1, "refused jobs are not stored");
    }

    #[tokio::test]
    async fn a_dp_tree_job_is_planned_over_all_its_levels_and_institution_mode_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path());
        let (schema, _) = telco_schema();
        let privacy = "\n[privacy]\nmode = \"record\"\ntarget_epsilon = 4.0\nplanned_rows = 1800\n";
        let spec = format!("{}{privacy}", job("kind = \"gbdt\"\nmax_depth = 3"));
        let Submitted::New { job_id, privacy: Some(plan), .. } = submit(&shared, &spec, &schema, ModelFiles::default(), Vec::new(), None).expect("planned")
        else {
            panic!("no plan")
        };
        shared.jobs.stop_all();
        assert!(plan.epsilon <= 4.0 && plan.epsilon > 3.99, "{plan}");
        let stored: JobSpec = serde_json::from_str(&shared.store.job(&job_id).expect("read").expect("stored").spec_json).expect("spec");
        let dp = confide_core::spend::DpJob::of(&stored).expect("dp");
        assert_eq!(dp.tree_levels, Some(3), "banks are told each tree is 3 levels");
        assert_eq!(dp.privacy.noise_multiplier, Some(plan.noise_multiplier), "banks read the solved σ");
        let err = submit(&shared, &spec.replace("mode = \"record\"", "mode = \"institution\""), &schema, ModelFiles::default(), Vec::new(), None)
            .expect_err("institution")
            .to_string();
        assert!(err.contains("privacy.mode") && err.contains("record-level DP only"), "{err}");
    }
}
