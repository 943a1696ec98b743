//! Lightweight simulated institutions for round and load benchmarks: real gRPC clients that
//! register, take tasks from their stream, download the global model and contribute through
//! the worker's real secure-aggregation driver — but with synthetic updates instead of
//! libtorch training, so hundreds fit in one process.

use std::sync::Arc;

use confide_core::metrics::EvalContribution;
use confide_proto::v1::{
    self as pb, Contribution, admin_client::AdminClient, DatasetOffer, RegisterRequest, SubscribeRequest, contribution::Body,
    federation_client::FederationClient, task::Kind,
};
use confide_worker::secure::{Contributor, OutOfRange};
use confide_worker::tasks::Failure;
use confide_worker::transport::{self, TaskAddress};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// One simulated institution.
pub struct SimWorker {
    /// Institution id.
    pub id: String,
    key: ed25519_dalek::SigningKey,
    /// Additive statistics of its (real) training rows, contributed in the statistics phase.
    stats: Arc<Vec<f64>>,
    offer: DatasetOffer,
    tls: Option<confide_tls::TlsFiles>,
}

impl SimWorker {
    /// A simulated institution offering `dataset` with `fingerprint`, whose statistics phase
    /// contributes `stats`. With `tls` it connects with that certificate, whose key is its
    /// signing key; without, it uses a key derived from `seed` (plaintext coordinators only).
    pub fn new(
        id: &str,
        seed: u64,
        dataset: &str,
        fingerprint: &str,
        stats: Arc<Vec<f64>>,
        tls: Option<confide_tls::TlsFiles>,
    ) -> Result<Self, confide_tls::TlsError> {
        let key = match &tls {
            Some(files) => files.signing_key()?,
            None => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let mut secret = [0u8; 32];
                rng.fill(&mut secret);
                ed25519_dalek::SigningKey::from_bytes(&secret)
            }
        };
        let offer = DatasetOffer { name: dataset.into(), schema_fingerprint: fingerprint.into() };
        Ok(Self { id: id.into(), key, stats, offer, tls })
    }

    /// Registers, subscribes and serves tasks until the stream ends.
    pub async fn run(self: Arc<Self>, url: String) -> Result<(), tonic::Status> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if let Some(files) = &self.tls {
            let tls = confide_tls::client_config(files, "127.0.0.1").map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            endpoint = endpoint.tls_config(tls).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = FederationClient::new(channel).max_decoding_message_size(8 << 20);
        client
            .register(RegisterRequest {
                institution_id: self.id.clone(),
                datasets: vec![self.offer.clone()],
                capabilities: None,
                signing_public_key: self.key.verifying_key().to_bytes().to_vec(),
                min_participants: 3,
            })
            .await?;
        let mut tasks = client
            .subscribe(SubscribeRequest {
                worker_id: self.id.clone(),
            })
            .await?
            .into_inner();
        let mut relays: std::collections::HashMap<String, mpsc::Sender<Vec<u8>>> =
            Default::default();
        while let Some(task) = tasks.message().await? {
            relays.retain(|_, tx| !tx.is_closed());
            match task.kind {
                Some(Kind::Secagg(r)) => {
                    if let Some(tx) = relays.get(&task.task_id) {
                        let _ = tx.send(r.message).await;
                    }
                }
                Some(Kind::Cancel(_)) | None => {}
                Some(kind) => {
                    let (tx, rx) = mpsc::channel(64);
                    relays.insert(task.task_id.clone(), tx);
                    let addr = TaskAddress {
                        worker_id: self.id.clone(),
                        task_id: task.task_id,
                        job_id: task.job_id,
                        round: task.round,
                    };
                    let me = self.clone();
                    let client = client.clone();
                    tokio::spawn(async move { me.handle(client, addr, kind, rx).await });
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        mut client: FederationClient<Channel>,
        addr: TaskAddress,
        kind: Kind,
        relays: mpsc::Receiver<Vec<u8>>,
    ) {
        let (setup, task) = match &kind {
            Kind::Stats(t) => (t.aggregation.clone(), "stats"),
            Kind::Train(t) => (t.aggregation.clone(), "train"),
            Kind::Evaluate(t) => (t.aggregation.clone(), "evaluate"),
            _ => (None, ""),
        };
        let Some(setup) = setup else { return };
        let len = setup.vector_len as usize;
        let mut download = client.clone();
        let compute = async {
            match &kind {
                Kind::Stats(_) => Ok(self.stats.as_ref().clone()),
                Kind::Train(t) => {
                    let model = t
                        .model
                        .as_ref()
                        .ok_or_else(|| Failure::new("protocol", "no model"))?;
                    transport::download_model(
                        &mut download,
                        &addr.worker_id,
                        &model.hash,
                        model.size_bytes,
                    )
                    .await
                    .map_err(|e| Failure::new("protocol", e))?;
                    Ok(synthetic_update(len, addr.round))
                }
                Kind::Evaluate(t) => {
                    let buckets = t.score_buckets as usize;
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(addr.round);
                    let probs: Vec<f32> = (0..200).map(|_| rng.random::<f32>()).collect();
                    let labels: Vec<f32> = probs
                        .iter()
                        .map(|p| if rng.random::<f32>() < *p { 1.0 } else { 0.0 })
                        .collect();
                    Ok(EvalContribution::from_predictions(&probs, &labels, buckets).to_vec())
                }
                _ => Err(Failure::new("protocol", "not a task")),
            }
        };
        let result = if setup.insecure_plain {
            match compute.await {
                Ok(values) => {
                    let c = Contribution {
                        body: Some(Body::Plain(pb::PlainVector { values })),
                    };
                    transport::submit(&mut client, &addr, &c)
                        .await
                        .map_err(|e| Failure::new("protocol", e))
                }
                Err(e) => Err(e),
            }
        } else {
            let me = Contributor {
                identity: &self.key,
                min_participants: 3,
                fault: None,
                federation_ca: self.tls.as_ref().map(|t| t.ca.as_path()),
            };
            let policy = if task == "train" {
                OutOfRange::Clip
            } else {
                OutOfRange::Fail
            };
            confide_worker::secure::contribute(
                me,
                &mut client,
                &addr,
                &setup,
                compute,
                policy,
                task,
                relays,
            )
            .await
        };
        if let Err(e) = result {
            eprintln!("{}: {e}", self.id);
        }
    }
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
            let w = Arc::new(SimWorker::new(&id, i as u64 + 1, &self.schema.name, &self.schema.fingerprint(), self.stats.clone(), tls)?);
            let url = url.to_string();
            tokio::spawn(async move {
                let id = w.id.clone();
                if let Err(e) = w.run(url).await {
                    eprintln!("{id}: {e}");
                }
            });
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
