//! The worker daemon: a bank assembled from its configuration file — identity key, libtorch
//! computation on the configured datasets, durable policy, crash drill — and run by the
//! session driver ([`crate::session`]), which dials out to the coordinator, takes tasks from
//! the stream it opened and reconnects with exponential backoff.

use std::future::Future;
use std::sync::Arc;

use crate::compute::{Compute, ComputeError, TorchCompute};
use crate::config::WorkerConfig;
use crate::failure::Failure;
use crate::session::{Bank, BlobCache};
use crate::task::BankProfile;
use crate::tasks::UserStateStore;

/// The real worker: a bank computing with libtorch.
pub type Worker = Bank<TorchCompute>;

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The datasets or the device are unusable.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The TLS files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] confide_tls::TlsError),
    /// The bank's own certificate, key or CA file is wrong (bad input: exit 2).
    #[error("tls: {0}")]
    Certificate(#[from] confide_tls::check::IdentityError),
    /// The bank's policy state could not be loaded.
    #[error("policy: {0}")]
    Policy(Failure),
    /// The audit log could not be opened, or its chain is broken.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The privacy-budget ledger is unreadable, foreign or inconsistent (never reset).
    #[error("privacy budget: {0}")]
    Budget(#[from] crate::budget::BudgetError),
}

/// Checks the datasets (see [`crate::catalog`]), loads the identity key and the policy state,
/// and picks the device.
pub fn start(config: WorkerConfig) -> Result<Arc<Worker>, StartError> {
    // First, so a wrong certificate is named at start rather than found in every handshake.
    if let Some(tls) = &config.tls {
        confide_tls::check::check_identity(tls, confide_tls::check::Holder::Worker, Some(&config.institution_id))?;
    }
    let user_state = UserStateStore::new(&config.data_dir);
    let compute = TorchCompute::new(&config.datasets, config.compute.device, config.compute.threads, user_state)?;
    // With TLS the certificate's key is the identity (bound by the federation CA); the
    // generated key file is for development without TLS.
    let identity = match &config.tls {
        Some(tls) => tls.signing_key()?,
        None => crate::identity::load_or_create(&config.data_dir)?,
    };
    let audit = crate::audit::AuditLog::open(&audit_path(&config), identity.clone())?;
    let own_fingerprint = config.tls.as_ref().map(|t| confide_tls::fingerprint_of(&t.cert)).transpose()?;
    let membership = crate::membership::Membership::from_config(&config.federation, &config.institution_id, own_fingerprint)
        .map_err(StartError::Policy)?;
    let policy =
        crate::policy::Policy::load(config.policy.clone(), &config.data_dir).map_err(StartError::Policy)?.with_membership(membership);
    let ledger = crate::ledger::Ledger::load(&config.data_dir, config.policy.protect_counts).map_err(StartError::Policy)?;
    let budget = crate::budget::Budget::load(&config.data_dir, &config.institution_id, budget_limits(&config))?;
    let profile = BankProfile {
        institution_id: config.institution_id.clone(),
        identity,
        datasets: compute.offers(),
        unavailable: compute.unavailable(),
        one_class: compute.one_class(),
        min_participants: config.policy.min_participants,
        federation_ca: config.tls.as_ref().map(|t| t.ca.clone()),
        allow_plain_aggregation: config.insecure_dev || config.policy.allow_plain_aggregation,
        share_error_details: config.policy.share_error_details,
        floors: config.floors(),
    };
    Ok(Arc::new(Bank {
        profile,
        compute,
        policy,
        ledger,
        budget,
        coordinator: config.coordinator,
        tls: config.tls,
        fault: crate::fault::Fault::from_env(),
        max_concurrent_tasks: config.compute.max_concurrent_tasks,
        blobs: BlobCache::default(),
        audit: Some(audit),
    }))
}

impl StartError {
    /// True when the configuration's input is at fault — no configured dataset is usable, a
    /// device it names is absent, its certificate files are wrong, its membership list is
    /// inconsistent: exit 2, as a restart alone does not fix it. A broken audit chain or an
    /// unreadable state file is the bank's state, not its input (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StartError::Compute(ComputeError::NoUsableDataset(_) | ComputeError::NoCuda)
                | StartError::Certificate(_)
                | StartError::Tls(_)
        )
    }
}

/// The privacy-budget limits of each configured dataset.
pub fn budget_limits(config: &WorkerConfig) -> std::collections::BTreeMap<String, crate::budget::Limits> {
    config.datasets.iter().map(|d| (d.name.clone(), crate::budget::Limits::of(d))).collect()
}

/// Where the bank's privacy-budget ledger is: `data_dir/privacy_budget.json`.
pub fn budget_path(config: &WorkerConfig) -> std::path::PathBuf {
    config.data_dir.join(crate::budget::FILE_NAME)
}

/// Where the bank's audit log is: `data_dir/audit.log`.
pub fn audit_path(config: &WorkerConfig) -> std::path::PathBuf {
    config.data_dir.join(crate::audit::FILE_NAME)
}

/// The key the audit log's records are signed with — the identity the daemon uses (the TLS
/// certificate's key, else the development key file, which must already exist).
pub fn audit_key(config: &WorkerConfig) -> Result<ed25519_dalek::VerifyingKey, StartError> {
    let identity = match &config.tls {
        Some(tls) => tls.signing_key()?,
        None => crate::identity::load(&config.data_dir)?,
    };
    Ok(identity.verifying_key())
}

/// Runs the worker until `shutdown` completes, or until the coordinator cannot be used for a
/// reason retrying cannot fix (see [`crate::session::run`]).
pub async fn run(worker: Arc<Worker>, shutdown: impl Future<Output = ()>) -> Result<(), crate::session::Refused> {
    crate::session::run(worker, shutdown).await
}
