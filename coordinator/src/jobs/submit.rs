//! Submission: a job file, its schema and (for custom models) its module and parameters are
//! validated before anything is stored, then the job is stored and started.

use std::sync::Arc;

use confide_core::job::JobSpec;
use confide_core::model::ModelSpec;
use confide_datasets::DatasetSchema;

use crate::Shared;
use crate::store::StoreError;

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

/// Validates and stores a job (with its item catalogue, for recommendation models), then
/// starts it. Returns the job id.
///
/// A `torchscript` model's module and initial parameters are validated and stored
/// content-addressed; the stored spec names them by hash and records their layout.
pub fn submit(
    shared: &Arc<Shared>,
    spec_toml: &str,
    schema_toml: &str,
    files: ModelFiles<'_>,
    catalogue: Vec<String>,
) -> Result<String, SubmitError> {
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
    let catalogue_json = match (spec.model.is_recommendation(), schema.recommendation.is_some()) {
        (true, true) => {
            let catalogue = confide_datasets::Catalogue::new(catalogue).map_err(|e| SubmitError::Catalogue(e.to_string()))?;
            Some(serde_json::to_string(catalogue.ids()).map_err(|e| SubmitError::Catalogue(e.to_string()))?)
        }
        (true, false) => return Err(mismatch("recommendation models need a ratings schema (`[recommendation]`)")),
        (false, true) => return Err(mismatch("a ratings schema needs a recommendation model (matrix_factorization, two_tower)")),
        (false, false) if !catalogue.is_empty() => {
            return Err(SubmitError::Catalogue("only recommendation jobs take an item catalogue".into()));
        }
        (false, false) => None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let spec_json = serde_json::to_string(&spec).map_err(|e| SubmitError::Schema(e.to_string()))?;
    shared.store.insert_job_with_catalogue(&id, &spec.name, &spec_json, schema_toml, catalogue_json.as_deref())?;
    if spec.insecure_plain_aggregation {
        tracing::warn!(job = %id, "job uses INSECURE plain aggregation: the coordinator sees every institution's update (debugging only)");
    }
    super::start(shared, &id);
    Ok(id)
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
        let id = submit(&shared, &job(TORCHSCRIPT), &schema, files, Vec::new()).expect("accepted");
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
        let refuse = |model: &str, files: ModelFiles<'_>| submit(&shared, &job(model), &schema, files, Vec::new()).expect_err("refused").to_string();

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
}
