//! Admission by size: a job's model parameter count, server-optimizer state, per-round vector
//! and the coordinator memory they take are computed at submission (and again when a stored
//! job is resumed) and refused above the limits of the coordinator's configuration, so one job
//! file cannot take the coordinator down by running it out of memory.
//!
//! The memory estimate counts what the coordinator holds for one job while a round runs, in
//! bytes, for `P` parameters and a round vector of `V = P + 2` values:
//! - the global model as `f32` values and as the checkpoint file workers download: `8·P`;
//! - the server optimizer's state (FedAdam/FedYogi keep two moment vectors), likewise: `8·k·P`;
//! - the aggregation: the 64-bit accumulator and the decoded sum: `16·V`;
//! - the contributions being received, each buffered whole, at least `min_workers` of them
//!   at once: `min_workers · contribution bytes`.

use confide_core::contribution::TrainContribution;
use confide_core::job::JobSpec;
use confide_core::model::ParamLayout;
use confide_core::strategy::ServerOptimizer;

use crate::config::CoordinatorConfig;
use crate::store::{JobRecord, Store};

/// The sizes of a job, as admission counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSize {
    /// Parameters of the federated model.
    pub parameters: u64,
    /// Vectors of `parameters` values the server optimizer keeps.
    pub optimizer_vectors: u64,
    /// Values in each round's training vector (parameters plus weight and loss).
    pub vector_len: u64,
    /// Bytes of one bank's serialised training contribution.
    pub contribution_bytes: u64,
    /// Estimated coordinator memory for the job (see the module docs).
    pub memory_bytes: u64,
}

/// Why a job is too large for this coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// More parameters than `max_model_parameters`.
    #[error(
        "the model `{model}` has {parameters} parameters, above this coordinator's limit of {limit} \
         (`max_model_parameters` in the coordinator's configuration); choose a smaller model"
    )]
    Parameters {
        /// The model's label.
        model: String,
        /// Its parameter count.
        parameters: u64,
        /// The limit.
        limit: u64,
    },
    /// More estimated memory than `max_job_memory_bytes`.
    #[error(
        "the job needs about {} of coordinator memory ({parameters} parameters, {optimizer_vectors} server-optimizer \
         vector(s), contributions of {} each), above this coordinator's limit of {} (`max_job_memory_bytes` in the \
         coordinator's configuration); choose a smaller model or a non-adaptive strategy",
        human_bytes(*memory_bytes), human_bytes(*contribution_bytes), human_bytes(*limit)
    )]
    Memory {
        /// The estimate.
        memory_bytes: u64,
        /// Parameter count.
        parameters: u64,
        /// Optimizer vectors.
        optimizer_vectors: u64,
        /// One contribution's bytes.
        contribution_bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A bank's contribution would be larger than the coordinator accepts.
    #[error(
        "each bank's contribution would be {} ({vector_len} values), above this coordinator's limit of {} \
         (`max_contribution_bytes` in the coordinator's configuration); choose a smaller model",
        human_bytes(*contribution_bytes), human_bytes(*limit)
    )]
    Contribution {
        /// One contribution's bytes.
        contribution_bytes: u64,
        /// Values per contribution.
        vector_len: u64,
        /// The limit.
        limit: u64,
    },
    /// The round vector is longer than secure aggregation supports.
    #[error("the round vector has {vector_len} values, above secure aggregation's limit of {limit}; choose a smaller model")]
    VectorLen {
        /// Values per round vector.
        vector_len: u64,
        /// The protocol's limit.
        limit: u64,
    },
}

/// Bytes for a person: `512 B`, `3.2 MiB`, `5.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parameters of a layout, saturating (a layout's shapes come from a job file).
fn parameter_count(layout: &ParamLayout) -> u64 {
    layout.tensors.iter().map(|t| t.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))).fold(0u64, u64::saturating_add)
}

impl JobSize {
    /// The sizes of `spec` for `input_dim` (encoded features of a tabular model, catalogue
    /// items of a recommendation model; unused by a TorchScript model, whose layout is resolved).
    pub fn of(spec: &JobSpec, input_dim: usize) -> Self {
        let parameters = parameter_count(&spec.model.layout(input_dim));
        let optimizer_vectors = if ServerOptimizer::is_adaptive(&spec.strategy) { 2 } else { 0 };
        let vector_len = parameters.saturating_add(TrainContribution::vector_len(0) as u64);
        // Secure aggregation sends ring elements of ⌈modulus_bits/8⌉ bytes; plain sends f64.
        let width = if spec.insecure_plain_aggregation { 8 } else { u64::from(spec.secure_aggregation.modulus_bits.div_ceil(8)) };
        let contribution_bytes = vector_len.saturating_mul(width);
        let memory_bytes = [
            parameters.saturating_mul(8),
            parameters.saturating_mul(8).saturating_mul(optimizer_vectors),
            vector_len.saturating_mul(16),
            contribution_bytes.saturating_mul(spec.selection.min_workers.max(1) as u64),
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add);
        Self { parameters, optimizer_vectors, vector_len, contribution_bytes, memory_bytes }
    }

    /// Refuses a job above `config`'s limits (or secure aggregation's vector limit).
    pub fn check(&self, spec: &JobSpec, config: &CoordinatorConfig) -> Result<(), SizeError> {
        if self.parameters > config.max_model_parameters {
            return Err(SizeError::Parameters { model: spec.model.label(), parameters: self.parameters, limit: config.max_model_parameters });
        }
        let max_vector = confide_secagg::MAX_VECTOR_LEN as u64;
        if !spec.insecure_plain_aggregation && self.vector_len > max_vector {
            return Err(SizeError::VectorLen { vector_len: self.vector_len, limit: max_vector });
        }
        if self.contribution_bytes > config.max_contribution_bytes {
            return Err(SizeError::Contribution {
                contribution_bytes: self.contribution_bytes,
                vector_len: self.vector_len,
                limit: config.max_contribution_bytes,
            });
        }
        if self.memory_bytes > config.max_job_memory_bytes {
            return Err(SizeError::Memory {
                memory_bytes: self.memory_bytes,
                parameters: self.parameters,
                optimizer_vectors: self.optimizer_vectors,
                contribution_bytes: self.contribution_bytes,
                limit: config.max_job_memory_bytes,
            });
        }
        Ok(())
    }
}

/// The spec and sizes of a stored job; `None` when its spec, schema or catalogue no longer
/// parses (its runner reports that).
pub fn stored_size(store: &Store, job: &JobRecord) -> Option<(JobSpec, JobSize)> {
    let spec = serde_json::from_str::<JobSpec>(&job.spec_json).ok()?;
    let input_dim = if spec.model.is_recommendation() {
        let json = store.job_catalogue(&job.id).ok().flatten()?;
        serde_json::from_str::<Vec<serde_json::Value>>(&json).ok()?.len()
    } else {
        confide_datasets::DatasetSchema::parse(&job.schema_toml, "stored schema").ok()?.input_dim()
    };
    let size = JobSize::of(&spec, input_dim);
    Some((spec, size))
}

/// Checks a stored job against the current limits before it is resumed (it may have been
/// stored by a coordinator with other limits, or before there were any).
pub fn check_stored(store: &Store, config: &CoordinatorConfig, job: &JobRecord) -> Result<(), SizeError> {
    match stored_size(store, job) {
        Some((spec, size)) => size.check(&spec, config),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use confide_core::model::ModelSpec;

    use super::*;

    fn spec(model: &str, extra: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "name = \"j\"\ndataset = \"d\"\n{extra}\n[model]\n{model}\n[training]\nrounds = 1\nlearning_rate = 0.1\n"
        ))
        .expect("valid job")
    }

    #[test]
    fn every_family_is_counted() {
        let lr = JobSize::of(&spec("kind = \"logistic_regression\"", ""), 10);
        assert_eq!((lr.parameters, lr.vector_len, lr.optimizer_vectors), (11, 13, 0));
        let mlp = JobSize::of(&spec("kind = \"mlp\"\nhidden = [4, 2]", ""), 10);
        assert_eq!(mlp.parameters, (10 * 4 + 4) + (4 * 2 + 2) + (2 + 1));
        let mf = JobSize::of(&spec("kind = \"matrix_factorization\"\ndim = 8", "catalogue = \"items.csv\""), 100);
        assert_eq!(mf.parameters, 100 * 8 + 100 + 1);
        let tt = JobSize::of(&spec("kind = \"two_tower\"\ndim = 8\nhidden = [4]", "catalogue = \"items.csv\""), 100);
        assert_eq!(tt.parameters, 100 * 8 + 100 + 1 + 2 * (8 * 4 + 4));
        let mut custom = spec("kind = \"mlp\"\nhidden = [4]", "");
        custom.model = ModelSpec::TorchScript(confide_core::model::TorchScriptSpec {
            module: "m.pt".into(),
            parameters: "p.safetensors".into(),
            module_sha256: None,
            parameters_sha256: None,
            input_dim: None,
            layout: ModelSpec::Mlp { hidden: vec![3] }.layout(5),
        });
        assert_eq!(JobSize::of(&custom, 999).parameters, 5 * 3 + 3 + 3 + 1);
    }

    #[test]
    fn adaptive_strategies_count_their_moments() {
        let adam = JobSize::of(&spec("kind = \"mlp\"\nhidden = [4]", "[strategy]\nkind = \"fedadam\""), 10);
        let avg = JobSize::of(&spec("kind = \"mlp\"\nhidden = [4]", ""), 10);
        assert_eq!((adam.optimizer_vectors, avg.optimizer_vectors), (2, 0));
        assert_eq!(adam.memory_bytes - avg.memory_bytes, 16 * adam.parameters);
    }

    #[test]
    fn the_issue_model_is_refused_by_its_size_not_per_layer() {
        let spec = spec("kind = \"mlp\"\nhidden = [65536, 65536]", "");
        let size = JobSize::of(&spec, 46);
        let err = size.check(&spec, &CoordinatorConfig::default()).expect_err("4.3 billion parameters");
        let msg = err.to_string();
        assert!(msg.contains(&format!("has {} parameters", size.parameters)), "{msg}");
        assert!(msg.contains("limit of 100000000") && msg.contains("`max_model_parameters`"), "{msg}");
        let small = JobSize::of(&spec_small(), 46);
        small.check(&spec_small(), &CoordinatorConfig::default()).expect("a small model fits");
    }

    fn spec_small() -> JobSpec {
        spec("kind = \"mlp\"\nhidden = [64, 32]", "")
    }

    #[test]
    fn memory_and_contribution_limits_name_their_keys() {
        let spec = spec("kind = \"mlp\"\nhidden = [1024]", "[strategy]\nkind = \"fedyogi\"");
        let size = JobSize::of(&spec, 46);
        let tight = CoordinatorConfig { max_job_memory_bytes: size.memory_bytes - 1, ..CoordinatorConfig::default() };
        let msg = size.check(&spec, &tight).expect_err("memory").to_string();
        assert!(msg.contains("`max_job_memory_bytes`") && msg.contains("2 server-optimizer vector(s)"), "{msg}");
        let tight = CoordinatorConfig { max_contribution_bytes: 1000, ..CoordinatorConfig::default() };
        let msg = size.check(&spec, &tight).expect_err("contribution").to_string();
        assert!(msg.contains("`max_contribution_bytes`") && msg.contains(&format!("({} values)", size.vector_len)), "{msg}");
    }

    #[test]
    fn bytes_read_as_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
