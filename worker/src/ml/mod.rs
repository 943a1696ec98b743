//! Local machine learning with libtorch: building a model from a [`ModelSpec`], moving parameters
//! between [`ModelParams`] and libtorch by tensor name, training one federated round locally
//! (FedAvg or FedProx), and producing predictions and additive evaluation statistics.
//!
//! Nothing here sends data anywhere: the outputs are parameters, sample counts, losses and
//! aggregate sums, which are all the worker ever shares.
//!
//! - [`model`]: the [`Classifier`] interface, the built-in network and name-by-name parameter
//!   transfer.
//! - [`scripted`]: custom models, TorchScript modules scripted by the job's owner.
//! - [`train`]: [`TrainConfig`] and [`train_local`].
//! - [`dp_sgd`]: record-level DP-SGD for the built-in networks ([`dp_sgd::train_local_dp`]).
//! - [`eval`]: [`predict`], [`score_histogram`], [`eval_sums`] and [`evaluate`].
//! - [`recsys`]: matrix factorisation and two-tower training and evaluation, with the user
//!   side kept local ([`recsys::UserParams`]).

pub mod dp_sgd;
pub mod eval;
pub mod model;
pub mod scripted;
pub mod recsys;
pub mod train;

pub use confide_core::metrics::EvalContribution;
pub use confide_core::model::{ModelParams, ModelSpec, ParamLayout};
pub use confide_datasets::Encoded;
pub use eval::{EvalSums, eval_sums, evaluate, evaluate_with, predict, predict_with, score_histogram};
pub use model::{Classifier, Net, build_model, load_params_into, params_from};
pub use scripted::ScriptedNet;
pub use tch::Device;
pub use train::{Optimizer, TrainConfig, TrainOutcome, train_local, train_model};

/// Errors from local training and evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlError {
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Parameters are malformed (wrong length, non-finite values).
    #[error(transparent)]
    Model(#[from] confide_core::model::ModelError),
    /// The parameters' layout is not the one the model family needs for this input width.
    #[error("parameters do not fit {model} with {input_dim} inputs: {detail}")]
    LayoutMismatch {
        /// Model label.
        model: String,
        /// Input width of the data.
        input_dim: usize,
        /// What differs.
        detail: String,
    },
    /// A variable's shape differs from the layout's.
    #[error("tensor `{name}` has shape {found:?} in the model, the parameters say {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape in the parameters.
        expected: Vec<usize>,
        /// Shape of the model variable.
        found: Vec<i64>,
    },
    /// The parameters name a tensor the model does not have.
    #[error("the model has no tensor `{0}`")]
    MissingVariable(String),
    /// The model has a tensor the parameters do not provide.
    #[error("the parameters lack the model's tensor `{0}`")]
    UnexpectedVariable(String),
    /// A custom model's TorchScript module cannot be used (unloadable, parameters that do not
    /// match the job's layout, or a forward pass that does not give one logit per row).
    #[error("torchscript module: {0}")]
    ScriptedModule(String),
    /// Features, labels, rows and width disagree.
    #[error("malformed data: {0}")]
    Data(String),
    /// There are no rows to train on.
    #[error("no training rows")]
    NoData,
    /// A training setting is out of range.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// Training diverged; nothing is returned so nothing is sent.
    #[error("training loss is not finite in epoch {epoch} ({value}); lower the learning rate")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// The loss.
        value: f64,
    },
    /// The model produced a NaN or infinite score.
    #[error("prediction for row {row} is not finite")]
    NonFinitePrediction {
        /// Row index.
        row: usize,
    },
}

/// The default device: the first CUDA GPU when libtorch sees one, else the CPU.
pub fn default_device() -> Device {
    Device::cuda_if_available()
}

/// Environment variable overriding the number of libtorch CPU threads (default 1).
pub const THREADS_ENV: &str = "CONFIDE_TORCH_THREADS";

static CPU_THREADS: std::sync::Once = std::sync::Once::new();

/// Sets libtorch's intra-op CPU thread count for the whole process (it is global libtorch state).
///
/// The tabular models here have at most a few thousand parameters and train in batches of tens of
/// rows, so each kernel is microseconds long and splitting it over threads costs more in
/// synchronisation than it saves; on a busy 2-core host, 2 threads trained 10–50× slower than 1.
/// Unless this is called first, the first model built sets the count from
/// [`THREADS_ENV`] or to 1.
pub fn set_cpu_threads(threads: usize) {
    CPU_THREADS.call_once(|| {});
    tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
}

/// Applies the default thread count once per process, unless [`set_cpu_threads`] ran before.
pub(crate) fn ensure_cpu_threads() {
    CPU_THREADS.call_once(|| {
        let threads =
            std::env::var(THREADS_ENV).ok().and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(1);
        tch::set_num_threads(threads.max(1));
    });
}

/// Checks that `features` holds `rows × dim` values and `labels` (when given) `rows`.
pub(crate) fn check_data(
    features: &[f32],
    labels: Option<&[f32]>,
    rows: usize,
    dim: usize,
) -> Result<(), MlError> {
    if dim == 0 {
        return Err(MlError::Data("rows have no features".into()));
    }
    if Some(features.len()) != rows.checked_mul(dim) {
        return Err(MlError::Data(format!(
            "{} feature values for {rows} rows × {dim} columns",
            features.len()
        )));
    }
    if let Some(labels) = labels
        && labels.len() != rows
    {
        return Err(MlError::Data(format!("{} labels for {rows} rows", labels.len())));
    }
    Ok(())
}
