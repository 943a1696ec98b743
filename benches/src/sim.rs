//! Lightweight simulated institutions for round and load benchmarks: real gRPC clients run by
//! the worker's own session driver and task machines (so cancellation, the bank's policy and
//! secure aggregation behave exactly as in a real worker) — but computing synthetic updates
//! instead of libtorch training ([`SimCompute`]), so hundreds fit in one process.

use std::sync::Arc;

use confide_core::metrics::EvalContribution;
use confide_proto::v1::{self as pb, admin_client::AdminClient};
use confide_worker::compute::Compute;
use confide_worker::config::PolicyConfig;
use confide_worker::failure::Failure;
use confide_worker::policy::Policy;
use confide_worker::session::{Bank, BlobCache};
use confide_worker::task::{BankProfile, ComputeRequest, DatasetRef, TaskKind};
use rand::{Rng, SeedableRng};

/// A simulated institution's computation: the real statistics of its rows, synthetic training
/// updates and evaluation sums of random scores.
#[derive(Debug)]
pub struct SimCompute {
    /// Additive statistics of its (real) training rows, contributed in the statistics phase.
    stats: Arc<Vec<f64>>,
    /// The dataset it offers.
    offer: DatasetRef,
}

impl Compute for SimCompute {
    fn offers(&self) -> Vec<DatasetRef> {
        vec![self.offer.clone()]
    }

    fn rows(&self, _dataset: &str) -> Option<confide_core::spend::BankRows> {
        // The statistics start with the training rows; evaluations score 200 synthetic rows.
        Some(confide_core::spend::BankRows { train: *self.stats.first()? as u64, test: 200 })
    }

    fn compute(&self, request: ComputeRequest) -> Result<Vec<f64>, Failure> {
        match request.kind {
            TaskKind::Stats { .. } => Ok(self.stats.as_ref().clone()),
            TaskKind::Train { .. } => Ok(synthetic_update(request.vector_len, request.round)),
            TaskKind::Grow { .. } => Err(Failure::policy("the simulated institutions train parameter-vector models only")),
            TaskKind::Evaluate { buckets, .. } => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(request.round);
                let probs: Vec<f32> = (0..200).map(|_| rng.random::<f32>()).collect();
                let labels: Vec<f32> = probs.iter().map(|p| if rng.random::<f32>() < *p { 1.0 } else { 0.0 }).collect();
                Ok(EvalContribution::from_predictions(&probs, &labels, buckets).to_vec())
            }
        }
    }
}

/// A simulated institution `id` against the coordinator at `url`, offering `dataset` with
/// `fingerprint` and contributing `stats` in the statistics phase, under the default bank
/// policy kept in memory. With `tls` it connects with that certificate, whose key is its
/// signing key; without, it uses a key derived from `seed` (plaintext coordinators only).
pub fn sim_bank(
    id: &str,
    seed: u64,
    url: &str,
    offer: DatasetRef,
    stats: Arc<Vec<f64>>,
    tls: Option<confide_tls::TlsFiles>,
) -> Result<Bank<SimCompute>, confide_tls::TlsError> {
    let identity = match &tls {
        Some(files) => files.signing_key()?,
        None => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut secret = [0u8; 32];
            rng.fill(&mut secret);
            ed25519_dalek::SigningKey::from_bytes(&secret)
        }
    };
    let policy = PolicyConfig::default();
    let profile = BankProfile {
        institution_id: id.into(),
        identity,
        datasets: vec![offer.clone()],
        unavailable: Vec::new(),
        one_class: Vec::new(),
        min_participants: policy.min_participants,
        federation_ca: tls.as_ref().map(|t| t.ca.clone()),
        // The round benchmark compares plain and secure rounds on synthetic updates.
        allow_plain_aggregation: true,
        share_error_details: true,
        floors: policy.floors(),
    };
    Ok(Bank {
        profile,
        compute: SimCompute { stats, offer },
        ledger: confide_worker::ledger::Ledger::in_memory(policy.protect_counts),
        budget: confide_worker::budget::Budget::in_memory(id, Default::default()),
        policy: Policy::in_memory(policy),
        coordinator: url.into(),
        tls,
        fault: None,
        max_concurrent_tasks: 8,
        blobs: BlobCache::default(),
        // Simulated banks keep no audit log: a benchmark measures the protocol, not fsyncs.
        audit: None,
    })
}

/// `[n·Δ…, n, n·loss]` with small random Δ, n = 100.
fn synthetic_update(len: usize, round: u64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round);
    let n = 100.0;
    let mut v: Vec<f64> = (0..len.saturating_sub(2))
        .map(|_| n * (rng.random::<f64>() - 0.5) * 1e-3)
        .collect();
    v.push(n);
    v.push(n * 0.5);
    v
}

/// The Telco schema text and its rows' statistics, for simulated institutions.
pub struct TelcoFixture {
    /// Schema TOML.
    pub schema_toml: String,
    /// Parsed schema.
    pub schema: confide_datasets::DatasetSchema,
    /// Additive statistics of the whole file.
    pub stats: Arc<Vec<f64>>,
}

impl TelcoFixture {
    /// Loads `../shared/datasets/telco_churn` and the repository's schema.
    pub fn load() -> Result<Self, Box<dyn std::error::Error>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let csv = root.join("../shared/datasets/telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv");
        let schema_toml = std::fs::read_to_string(root.join("datasets/schemas/telco_churn.toml"))?;
        let schema = confide_datasets::DatasetSchema::parse(&schema_toml, "telco schema")?;
        let table = confide_datasets::load_csv(&csv, &schema)?;
        let stats = Arc::new(confide_datasets::local_stats(&table, &schema));
        Ok(Self { schema_toml, schema, stats })
    }

    /// Starts `n` simulated institutions against the coordinator at `url`; with `pki` (a CA
    /// directory) each gets its own institution certificate issued there.
    pub fn spawn_sims(&self, url: &str, n: usize, pki: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
        for i in 0..n {
            let id = format!("sim{i:04}");
            let tls = match pki {
                Some(dir) => {
                    confide_tls::issue(dir, confide_tls::Role::Institution, &id, &[], 1, dir)?;
                    Some(confide_tls::TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{id}.pem")), key: dir.join(format!("{id}.key")) })
                }
                None => None,
            };
            let offer = DatasetRef { name: self.schema.name.clone(), schema_fingerprint: self.schema.fingerprint() };
            let bank = Arc::new(sim_bank(&id, i as u64 + 1, url, offer, self.stats.clone(), tls)?);
            tokio::spawn(confide_worker::session::run(bank, std::future::pending::<()>()));
        }
        Ok(())
    }

    /// A job file training an MLP of ≈ `d` parameters on this schema for `rounds` rounds among
    /// `n` institutions, evaluating only the last round.
    pub fn job_toml(&self, n: usize, d: usize, rounds: u64, plain: bool) -> String {
        let hidden = (d.saturating_sub(1) / (self.schema.input_dim() + 2)).max(1);
        format!(
            "name = \"bench\"\ndataset = \"{}\"\ninsecure_plain_aggregation = {plain}\n[model]\nkind = \"mlp\"\nhidden = [{hidden}]\n\
             [training]\nrounds = {rounds}\nlearning_rate = 0.01\n[selection]\nmin_workers = {n}\nround_deadline_secs = 1200\n\
             [evaluation]\nevery = 1000000\n[secure_aggregation]\nstage_timeout_secs = 600\n",
            self.schema.name
        )
    }
}

/// Submits a job and polls until it ends, printing progress to stderr. `admin` is the admin's
/// TLS files (None against a plaintext coordinator).
pub async fn submit_and_wait(
    url: &str,
    admin: Option<&confide_tls::TlsFiles>,
    spec_toml: String,
    schema_toml: String,
) -> Result<pb::Job, Box<dyn std::error::Error>> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?;
    if let Some(files) = admin {
        endpoint = endpoint.tls_config(confide_tls::client_config(files, "127.0.0.1")?)?;
    }
    let mut admin = AdminClient::new(endpoint.connect().await?);
    let job_id = admin.submit_job(pb::SubmitJobRequest { spec_toml, schema_toml, ..Default::default() }).await?.into_inner().job_id;
    loop {
        let job = admin.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await?.into_inner();
        if matches!(job.status.as_str(), "completed" | "failed" | "cancelled") {
            eprintln!();
            return Ok(job);
        }
        eprint!("\rjob {}: round {}/{} {}", job.status, job.rounds_completed, job.rounds_total, job.error);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Median of a non-empty list (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
