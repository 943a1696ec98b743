//! The local computation behind a trait: what a bank computes from its own data for a task's
//! [`ComputeRequest`], run blocking (off the async threads) by the session driver.
//!
//! [`TorchCompute`] is the real bank: libtorch training and evaluation and the dataset
//! statistics of [`crate::tasks`] on the datasets its [`Catalog`] checked and offers, with each
//! dataset's splits loaded once and encoded splits cached by the preprocessing's id. The benchmarks' simulated institutions are another
//! implementation (`confide_benches::sim`).

use confide_proto::v1 as pb;
use tch::Device;

use crate::catalog::Catalog;
use crate::config::{DatasetConfig, DeviceChoice};
use crate::failure::Failure;
use crate::task::{ComputeRequest, DatasetRef, ModelRef, Prep, TaskKind, UnavailableDataset};
use crate::tasks::{self, ModelInput, UserStateStore};
use confide_core::spend::BankRows;

/// A bank's local computation.
pub trait Compute: Send + Sync + 'static {
    /// The datasets offered, by name and schema fingerprint (sent at registration and checked
    /// by the task machine).
    fn offers(&self) -> Vec<DatasetRef>;

    /// The datasets configured but not offered now, sent at registration (see
    /// [`crate::catalog`]); none by default.
    fn unavailable(&self) -> Vec<UnavailableDataset> {
        Vec::new()
    }

    /// The offered datasets whose training labels are all one class; none by default.
    fn one_class(&self) -> Vec<String> {
        Vec::new()
    }

    /// Re-checks the datasets whose files changed (blocking); true when the offers or the
    /// unavailable datasets changed, so the bank registers again. Never, by default.
    fn refresh(&self) -> bool {
        false
    }

    /// The hardware announced at registration (None: not announced).
    fn capabilities(&self) -> Option<pb::Capabilities> {
        None
    }

    /// The bank's own row counts of an offered dataset (what its privacy-budget ledger charges
    /// DP tasks by; never a number from the coordinator). None: unknown, and DP tasks on it are
    /// refused.
    fn rows(&self, dataset: &str) -> Option<BankRows> {
        let _ = dataset;
        None
    }

    /// Computes the task's vector. Blocking: may train for minutes.
    fn compute(&self, request: ComputeRequest) -> Result<Vec<f64>, Failure>;
}

/// The libtorch computation on the bank's configured datasets.
#[derive(Debug)]
pub struct TorchCompute {
    /// The configured datasets, checked; only the valid ones are offered.
    catalog: Catalog,
    /// Where models run.
    device: Device,
    /// Recommendation jobs' user sides (never leave the bank).
    user_state: UserStateStore,
}

/// The libtorch computation could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// Datasets are configured, and none of them is usable: the bank has nothing to offer.
    #[error("no configured dataset is usable: {}", .0.join("; "))]
    NoUsableDataset(Vec<String>),
    /// CUDA was required but is not available.
    #[error("compute.device = \"cuda\" but libtorch sees no CUDA device")]
    NoCuda,
}

impl TorchCompute {
    /// Checks every dataset (schema and both splits, see [`Catalog::open`]), sets libtorch's
    /// CPU threads and picks the device. Configured datasets of which none is usable are an
    /// error naming each one's problem; otherwise the bad ones are left out of the offers.
    pub fn new(
        datasets: &[DatasetConfig],
        device: DeviceChoice,
        threads: Option<usize>,
        user_state: UserStateStore,
    ) -> Result<Self, ComputeError> {
        let catalog = Catalog::open(datasets);
        if !datasets.is_empty() && catalog.offers().is_empty() {
            let problems = catalog.problems().into_iter().map(|(name, u)| format!("dataset `{name}`: {}", u.detail)).collect();
            return Err(ComputeError::NoUsableDataset(problems));
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
        Ok(Self { catalog, device, user_state })
    }

    /// The checked datasets.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The device models run on.
    pub fn device(&self) -> Device {
        self.device
    }

}

impl Compute for TorchCompute {
    fn offers(&self) -> Vec<DatasetRef> {
        self.catalog.offers()
    }

    fn unavailable(&self) -> Vec<UnavailableDataset> {
        self.catalog.unavailable()
    }

    fn one_class(&self) -> Vec<String> {
        self.catalog.one_class()
    }

    fn refresh(&self) -> bool {
        self.catalog.refresh()
    }

    fn capabilities(&self) -> Option<pb::Capabilities> {
        Some(pb::Capabilities {
            cuda: matches!(self.device, Device::Cuda(_)),
            cuda_devices: tch::Cuda::device_count().max(0) as u32,
            worker_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    fn rows(&self, dataset: &str) -> Option<BankRows> {
        self.catalog.get(dataset).ok()?.rows().ok()
    }

    fn compute(&self, request: ComputeRequest) -> Result<Vec<f64>, Failure> {
        match &request.kind {
            TaskKind::Stats { dataset, fine_histograms } => match (&request.dp, fine_histograms) {
                (dp, true) => {
                    let data = self.catalog.get(&dataset.name)?;
                    let dp = dp.as_ref().map(|dp| (dp, request.noise_seed));
                    crate::trees::binning_stats(&*data.table(tasks::Split::Train)?, &data.schema, dp)
                }
                (Some(dp), false) => self.catalog.get(&dataset.name)?.dp_stats(dp, request.noise_seed),
                (None, false) => self.catalog.get(&dataset.name)?.stats(),
            },
            TaskKind::Grow { dataset, model, tree, pos_weight } => {
                let checkpoint = request.checkpoint.as_deref().ok_or_else(|| Failure::internal("the checkpoint was not fetched"))?;
                let subsample = model.spec.gbdt().map_or(1.0, |g| g.subsample);
                let data = self.catalog.get(&dataset.name)?;
                let table = data.table(tasks::Split::Train)?;
                let dp = request.dp.as_ref().map(|dp| (dp, request.noise_seed));
                crate::trees::level_contribution(&data.boosters, &table, &data.schema, &request.job_id, checkpoint, tree, *pos_weight, subsample, dp)
            }
            TaskKind::Evaluate { dataset, model, buckets, .. } if model.spec.gbdt().is_some() => {
                let checkpoint = request.checkpoint.as_deref().ok_or_else(|| Failure::internal("the checkpoint was not fetched"))?;
                let data = self.catalog.get(&dataset.name)?;
                let table = data.table(tasks::Split::Test)?;
                let dp = request.dp.as_ref().map(|dp| (dp, request.noise_seed));
                crate::trees::eval_contribution(&table, &data.schema, checkpoint, *buckets, dp)
            }
            TaskKind::Train { dataset, model, prep, local } => {
                if request.dp.as_ref().is_some_and(|dp| dp.tree_levels.is_some()) {
                    // The budget charged it as one tree level, less than a DP-SGD round spends.
                    return Err(Failure::policy("a training round under a tree job's differential privacy terms"));
                }
                let input = model_input(&request, model, prep)?;
                let data = self.catalog.get(&dataset.name)?;
                tasks::train_contribution(&data, &input, local, request.dp.as_ref(), &self.user_state, self.device)
            }
            TaskKind::Evaluate { dataset, model, prep, buckets } => {
                let input = model_input(&request, model, prep)?;
                let dp = request.dp.as_ref().map(|dp| (dp, request.noise_seed));
                tasks::eval_contribution(&*self.catalog.get(&dataset.name)?, &input, *buckets, dp, &self.user_state, self.device)
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
