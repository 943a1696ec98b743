//! The local computation behind a trait: what a bank computes from its own data for a task's
//! [`ComputeRequest`], run blocking (off the async threads) by the session driver.
//!
//! [`TorchCompute`] is the real bank: libtorch training and evaluation and the dataset
//! statistics of [`crate::tasks`], with each dataset's splits loaded once and encoded splits
//! cached by the preprocessing's id. The benchmarks' simulated institutions are another
//! implementation (`confide_benches::sim`).

use std::collections::HashMap;
use std::sync::Arc;

use confide_proto::v1 as pb;
use tch::Device;

use crate::config::{DatasetConfig, DeviceChoice};
use crate::failure::Failure;
use crate::task::{ComputeRequest, DatasetRef, ModelRef, Prep, TaskKind};
use crate::tasks::{self, LocalDataset, ModelInput, UserStateStore};

/// A bank's local computation.
pub trait Compute: Send + Sync + 'static {
    /// The datasets offered, by name and schema fingerprint (sent at registration and checked
    /// by the task machine).
    fn offers(&self) -> Vec<DatasetRef>;

    /// The hardware announced at registration (None: not announced).
    fn capabilities(&self) -> Option<pb::Capabilities> {
        None
    }

    /// Computes the task's vector. Blocking: may train for minutes.
    /// Computes the task's vector. Blocking: may train for minutes.
    fn compute(&self, request: ComputeRequest) -> Result<Vec<f64>, Failure>;
}

/// The libtorch computation on the bank's configured datasets.
#[derive(Debug)]
pub struct TorchCompute {
    /// The offered datasets by name, splits loaded on first use.
    datasets: HashMap<String, Arc<LocalDataset>>,
    /// Where models run.
    device: Device,
    /// Recommendation jobs' user sides (never leave the bank).
    user_state: UserStateStore,
}

/// The libtorch computation could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// A dataset's schema could not be loaded.
    #[error("dataset `{name}`: {failure}")]
    Dataset {
        /// Dataset name.
        name: String,
        /// Why.
        failure: Failure,
    },
    /// CUDA was required but is not available.
    #[error("compute.device = \"cuda\" but libtorch sees no CUDA device")]
    NoCuda,
}

impl TorchCompute {
    /// Loads the datasets' schemas (data files are read on first use), sets libtorch's CPU
    /// threads and picks the device.
    pub fn new(
        datasets: &[DatasetConfig],
        device: DeviceChoice,
        threads: Option<usize>,
        user_state: UserStateStore,
    ) -> Result<Self, ComputeError> {
        let mut loaded = HashMap::new();
        for d in datasets {
            let ds = LocalDataset::open(d.clone()).map_err(|failure| ComputeError::Dataset { name: d.name.clone(), failure })?;
            loaded.insert(d.name.clone(), Arc::new(ds));
        }
        if let Some(t) = threads {
            crate::ml::set_cpu_threads(t);
        }
        let device = match device {
            DeviceChoice::Auto => crate::ml::default_device(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            DeviceChoice::Cuda => return Err(ComputeError::NoCuda),
        };
        Ok(Self { datasets: loaded, device, user_state })
    }

    /// The device models run on.
    pub fn device(&self) -> Device {
        self.device
    }

    fn dataset(&self, name: &str) -> Result<&LocalDataset, Failure> {
        self.datasets.get(name).map(Arc::as_ref).ok_or_else(|| Failure::internal(format!("dataset `{name}` is not loaded")))
    }
}

impl Compute for TorchCompute {
    fn offers(&self) -> Vec<DatasetRef> {
        let mut offers: Vec<DatasetRef> = self
            .datasets
            .values()
            .map(|d| DatasetRef { name: d.config.name.clone(), schema_fingerprint: d.fingerprint.clone() })
            .collect();
        offers.sort_by(|a, b| a.name.cmp(&b.name));
        offers
    }

    fn capabilities(&self) -> Option<pb::Capabilities> {
        Some(pb::Capabilities {
            cuda: matches!(self.device, Device::Cuda(_)),
            cuda_devices: tch::Cuda::device_count().max(0) as u32,
            worker_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn compute(&self, request: ComputeRequest) -> Result<Vec<f64>, Failure> {
        match &request.kind {
            TaskKind::Stats { dataset } => self.dataset(&dataset.name)?.stats(),
            TaskKind::Train { dataset, model, prep, local } => {
                let input = model_input(&request, model, prep)?;
                tasks::train_contribution(self.dataset(&dataset.name)?, &input, local, &self.user_state, self.device)
            }
            TaskKind::Evaluate { dataset, model, prep, buckets } => {
                let input = model_input(&request, model, prep)?;
                tasks::eval_contribution(self.dataset(&dataset.name)?, &input, *buckets, &self.user_state, self.device)
            }
        }
    }
}

/// The model of a training or evaluation request, as the libtorch code reads it.
fn model_input<'a>(request: &'a ComputeRequest, model: &'a ModelRef, prep: &'a Prep) -> Result<ModelInput<'a>, Failure> {
    Ok(ModelInput {
        spec: &model.spec,
        checkpoint: request.checkpoint.as_deref().ok_or_else(|| Failure::internal("the checkpoint was not fetched"))?,
        module: request.module.as_deref().map(Vec::as_slice),
        prep: &prep.preprocessing,
        prep_key: &prep.id,
        job_id: &request.job_id,
        round: request.round,
    })
}
