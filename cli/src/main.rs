//! `confide`: the data-science team's command line. Submits job files, lists, watches,
//! reports on and cancels jobs, pulls and exports trained models — all through the coordinator's Admin service.
//!
//! Exit codes: 0 success; 1 the job failed or was cancelled (`watch`); 2 bad input (job file,
//! arguments); 3 the coordinator could not be reached or refused the request.

mod out;
mod report;
mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use confide_core::job::JobSpec;
use confide_core::model::ModelSpec;
use confide_proto::v1::{self as pb, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::out::{out, outln};

/// Confide: federated learning across institutions, without moving customer data.
#[derive(Debug, Parser)]
#[command(name = "confide", version)]
struct Cli {
    /// Coordinator URL (https:// with the admin certificate below; http:// only against an
    /// --insecure-dev coordinator).
    #[arg(long, global = true, env = "CONFIDE_COORDINATOR", default_value = "https://127.0.0.1:7070")]
    coordinator: String,
    /// Federation CA certificate (PEM).
    #[arg(long, global = true, env = "CONFIDE_CA")]
    ca: Option<PathBuf>,
    /// Your admin certificate (PEM), issued by `confide certs issue --role admin`.
    #[arg(long, global = true, env = "CONFIDE_CERT")]
    cert: Option<PathBuf>,
    /// Your admin certificate's key (PEM).
    #[arg(long, global = true, env = "CONFIDE_KEY")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Training jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Trained models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Registered workers (institutions).
    Workers,
    /// The federation's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Dataset schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Differential privacy: the accountant's arithmetic, offline.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// ε of DP-SGD (Poisson-subsampled Gaussian, Rényi DP accountant with dp-accounting's
    /// orders); the last line is the number alone, to check against another accountant.
    Epsilon {
        /// Probability that a record is in a step's batch.
        #[arg(long)]
        sampling_rate: f64,
        /// Noise standard deviation over the clipping norm (σ/C).
        #[arg(long)]
        noise_multiplier: f64,
        /// Number of noisy steps composed.
        #[arg(long)]
        steps: u64,
        /// Target δ.
        #[arg(long)]
        delta: f64,
    },
    /// A DP job's plan before anything is sent: σ (solved from the job's target ε as the
    /// coordinator will), then the cumulative ε after each round at a bank of `--rows` training
    /// rows — the same arithmetic each bank's budget ledger charges.
    Plan {
        /// The job file (TOML) with a `[privacy]` section.
        file: PathBuf,
        /// The bank's training rows.
        #[arg(long)]
        rows: u64,
        /// The bank's test rows (evaluations spend on those); default a quarter of `--rows`.
        #[arg(long)]
        test_rows: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Print the width of the encoded feature vector a model reads (one input per numeric
    /// column, one per categorical level): the input width of a custom TorchScript model.
    Width {
        /// Dataset schema (TOML).
        file: PathBuf,
        /// Also print each input's name, in order.
        #[arg(long)]
        features: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the federation CA (`ca.pem`, `ca.key`) in a directory.
    Init {
        /// Directory for the CA (keep `ca.key` offline).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days (at least 1).
        #[arg(long, default_value_t = 3650, allow_negative_numbers = true)]
        days: i64,
    },
    /// Issue a certificate signed by the CA; prints its SHA-256 fingerprint (for revocation).
    Issue {
        /// Directory holding `ca.pem` and `ca.key`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// `coordinator`, `institution` (a bank's worker) or `admin` (the data-science team).
        #[arg(long)]
        role: String,
        /// The holder's name: the institution id, the admin's name, or `coordinator`.
        #[arg(long)]
        name: String,
        /// Extra host names or IP addresses the holder serves on (coordinators), repeatable.
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days (at least 1).
        #[arg(long, default_value_t = 365, allow_negative_numbers = true)]
        days: i64,
        /// Tests only: the validity starts this many days ago (negative: in the future), to
        /// make expired and not-yet-valid certificates.
        #[arg(long, hide = true, allow_negative_numbers = true)]
        backdate_days: Option<i64>,
        /// Output directory for `<name>.pem` and `<name>.key`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a certificate's SHA-256 fingerprint (for the coordinator's `revoked` list).
    Fingerprint {
        /// Certificate (PEM).
        cert: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job file; prints the new job's id (and a note when an identical job was
    /// submitted before).
    Submit {
        /// Job file (TOML).
        file: PathBuf,
        /// Submit at most once under this key: a repeat with the same key and job file prints
        /// the earlier job's id and submits nothing (a different job file with it is refused).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// List jobs.
    List,
    /// Show a job.
    Get {
        /// Job id.
        id: String,
        /// Print the job as JSON (status, rounds, per-round metrics).
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's rounds live until it ends.
    Watch {
        /// Job id.
        id: String,
    },
    /// Write a job's report: `report.md` (status, rounds, participants, final and best metrics,
    /// durations, stop reason), `rounds.csv` and `metrics.png` (federated metrics per round).
    Report {
        /// Job id.
        id: String,
        /// Output directory (default: report-<job id>).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download a job's latest global model (safetensors; a tree model's ensemble as JSON).
    Pull {
        /// Job id.
        id: String,
        /// Output file (default: <job id>.safetensors, or <job id>.json for a tree model).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Export a job's model for serving, with its model card: ONNX (raw columns in, the
    /// federated preprocessing in-graph), safetensors (+ preprocessing.json), TorchScript;
    /// tree models as ONNX and XGBoost JSON.
    Export {
        /// Job id.
        id: String,
        /// Format to write.
        #[arg(long, value_enum, default_value_t = ExportFormat::All)]
        format: ExportFormat,
        /// Output directory (created if needed; files of the same name are replaced).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// model.onnx
    Onnx,
    /// model.safetensors
    Safetensors,
    /// model.pt
    Torchscript,
    /// model.json in XGBoost's JSON model format (tree models)
    Xgboost,
    /// Every format this build writes for the model's family (recommendation: no TorchScript;
    /// trees: ONNX and XGBoost JSON).
    All,
}

impl ExportFormat {
    fn formats(self) -> Vec<confide_export::Format> {
        use confide_export::Format;
        match self {
            ExportFormat::Onnx => vec![Format::Onnx],
            ExportFormat::Safetensors => vec![Format::Safetensors],
            ExportFormat::Torchscript => vec![Format::TorchScript],
            ExportFormat::Xgboost => vec![Format::XgboostJson],
            ExportFormat::All => Format::AVAILABLE.to_vec(),
        }
    }
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: 3, error: e.into() }
    }
}

fn bad_input(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

/// A certificate valid for less than a day would be expired (or nearly) when written.
fn check_days(days: i64) -> Result<(), Failure> {
    if days < 1 {
        return Err(bad_input(anyhow!("--days must be at least 1, got {days}")));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli.coordinator.clone();
    let connector = tls_files(&cli).and_then(|f| confide_tls::coordinator_endpoint(&f, &url).ok()).map(|(_, c)| c);
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        // The reader of our output went away (`| head`): nothing is wrong, end quietly.
        Err(Failure { error, .. }) if out::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            // A call that died at the transport may have been the server refusing our
            // certificate (TLS 1.3 says so only after the handshake): ask once more.
            let fault = match (error.downcast_ref::<Unreached>(), &connector) {
                (Some(_), Some(c)) => c.diagnose("client").await,
                _ => None,
            };
            let Failure { code, error } = fault.map_or(Failure { code, error }, |f| refused(&url, f));
            eprintln!("confide: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// A call failed at the transport, not with the coordinator's answer.
#[derive(Debug)]
struct Unreached(String);

impl std::fmt::Display for Unreached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreached {}

/// The admin's TLS files, when all three are given.
fn tls_files(cli: &Cli) -> Option<confide_tls::TlsFiles> {
    match (&cli.ca, &cli.cert, &cli.key) {
        (Some(ca), Some(cert), Some(key)) => Some(confide_tls::TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }),
        _ => None,
    }
}

async fn connect(cli: &Cli) -> Result<AdminClient<Channel>, Failure> {
    let url = &cli.coordinator;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| bad_input(anyhow!("--coordinator {:?}: {e}", confide_core::text::cap_quote(url))))?;
    let uri = endpoint.uri();
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(bad_input(anyhow!(
            "--coordinator {:?}: not a coordinator URL; expected https://HOST:PORT (http:// only for an --insecure-dev coordinator)",
            confide_core::text::cap_quote(url)
        )));
    }
    let mut connector = None;
    match (&cli.ca, &cli.cert, &cli.key) {
        (Some(_), Some(_), Some(_)) => {
            let files = tls_files(cli).ok_or_else(|| bad_input(anyhow!("--ca, --cert and --key go together")))?;
            // Checked here, so an expired or wrong certificate is named instead of failing as a
            // `transport error` in the handshake.
            confide_tls::check::check_identity(&files, confide_tls::check::Holder::Cli, None).map_err(|e| bad_input(e.into()))?;
            // Like a worker, the CLI talks only to a server holding the coordinator role.
            connector = Some(confide_tls::coordinator_endpoint(&files, url).map_err(|e| bad_input(e.into()))?);
        }
        (None, None, None) if url.starts_with("http://") => {
            // Plaintext against a TLS server fails only at the first call, as an HTTP/2 frame
            // error: ask the server what it speaks first.
            if let Some(authority) = confide_tls::fault::authority(url)
                && confide_tls::fault::probe(&authority).await == Some(confide_tls::fault::Speaks::Tls)
            {
                return Err(refused(url, confide_tls::fault::ConnectFault::ServerSpeaksTls { client: "client" }));
            }
        }
        (None, None, None) => {
            return Err(bad_input(anyhow!(
                "{url} needs an admin certificate: give --ca, --cert and --key (or CONFIDE_CA, CONFIDE_CERT, CONFIDE_KEY)"
            )));
        }
        _ => return Err(bad_input(anyhow!("--ca, --cert and --key go together"))),
    }
    let timeout = std::time::Duration::from_secs(5);
    let connected = match &connector {
        Some((endpoint, connector)) => endpoint.clone().connect_timeout(timeout).connect_with_connector(connector.clone()).await,
        None => endpoint.connect_timeout(timeout).connect().await,
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(e) => match confide_tls::fault::diagnose(&e, url, connector.as_ref().map(|(_, c)| c), "client").await {
            Some(fault) => return Err(refused(url, fault)),
            None => return Err(anyhow::Error::new(e).context(format!("cannot reach the coordinator at {url}")).into()),
        },
    };
    Ok(AdminClient::new(channel).max_decoding_message_size(16 << 20))
}

/// The coordinator cannot be used as configured (exit 3), saying why.
fn refused(url: &str, fault: confide_tls::fault::ConnectFault) -> Failure {
    Failure { code: 3, error: anyhow!("cannot use the coordinator at {url}: {fault}") }
}

/// A refusal from the coordinator, with its exit code: what the request named is wrong
/// (bad job file, unknown job id, a job without a model yet) is bad input (2); anything else
/// is the coordinator refusing or failing (3).
fn status_error(s: tonic::Status) -> Failure {
    // With TLS 1.3 the server's refusal of our certificate arrives with the first call.
    if let Some(fault) = confide_tls::fault::classify(&s, "client") {
        return Failure { code: 3, error: anyhow!("the coordinator refused the connection: {fault}") };
    }
    if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) {
        return Failure { code: 3, error: anyhow::Error::new(Unreached(s.message().to_string())) };
    }
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => 2,
        _ => 3,
    };
    Failure { code, error: anyhow!("{}", s.message()) }
}

/// Downloads a job's latest global model (safetensors bytes).
async fn fetch_model(client: &mut AdminClient<Channel>, id: &str) -> Result<Vec<u8>, Failure> {
    let mut stream = client.fetch_model(pb::FetchModelRequest { job_id: id.to_string() }).await.map_err(status_error)?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if chunk.offset != bytes.len() as u64 {
            return Err(anyhow!("model stream out of order at offset {}", chunk.offset).into());
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

/// What an export needs, from the coordinator's view of a job and its model.
fn job_export(job: &pb::Job, model: &[u8]) -> Result<confide_export::JobExport, confide_export::ExportError> {
    let info = confide_export::JobInfo {
        id: job.id.clone(),
        name: job.name.clone(),
        status: job.status.clone(),
        created_at: job.created_at.clone(),
        updated_at: job.updated_at.clone(),
        stop_reason: Some(job.stop_reason.clone()).filter(|s| !s.is_empty()),
        model_hash: job.model_hash.clone(),
        model_round: (!job.model_hash.is_empty()).then_some(job.model_round),
        audit_heads: job
            .audit_heads
            .iter()
            .map(|h| confide_export::AuditHead {
                institution: h.worker_id.clone(),
                round: h.round,
                head: h.head.clone(),
                dp_epsilon: (h.dp_spent_epsilon > 0.0).then_some(h.dp_spent_epsilon),
            })
            .collect(),
    };
    let rounds = job
        .rounds
        .iter()
        .filter(|r| r.status == "completed")
        .map(|r| confide_export::RoundReport {
            round: r.round,
            participants: r
                .participants
                .iter()
                // A status this CLI does not know (a newer coordinator's) is left off the card.
                .filter_map(|p| Some(confide_export::Participant { institution: p.worker_id.clone(), status: p.typed_status()? }))
                .collect(),
            metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            duration_secs: r.duration_secs,
            completed_at: r.completed_at.clone(),
        })
        .collect();
    confide_export::JobExport::from_stored(info, &job.spec_json, &job.schema_toml, Some(job.preprocessing_json.as_str()), Some(model), rounds)
}

/// Reads a job file, the schema it names and, for a `torchscript` model, its module and initial
/// parameters, or for a recommendation model the item ids of its catalogue file (all relative
/// to the job file), validating the job locally first so mistakes are
/// reported with the file's name before anything is sent.
/// `confide privacy plan`: the job's plan and the per-round table at a bank of `rows` rows.
fn privacy_plan(path: &Path, rows: u64, test_rows: u64) -> Result<(), Failure> {
    use confide_core::spend::{self, BankRows, DpJob};
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())).map_err(bad_input)?;
    let mut spec = JobSpec::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    if spec.privacy.is_none() {
        return Err(bad_input(anyhow!("{}: the job has no `[privacy]` section: it is not differentially private", path.display())));
    }
    if rows == 0 {
        return Err(bad_input(anyhow!("--rows must be at least 1")));
    }
    let plan = spend::resolve(&mut spec).map_err(|e| bad_input(anyhow!("{}: field `privacy.target_epsilon`: {e}", path.display())))?;
    let dp = DpJob::of(&spec).ok_or_else(|| bad_input(anyhow!("{}: no `[privacy]` section", path.display())))?;
    let table = spend::per_round(&dp, BankRows { train: rows, test: test_rows }).map_err(|e| bad_input(anyhow!("{e}")))?;
    outln!("job `{}`: {plan}", spec.name)?;
    if plan.delta >= 1.0 / rows as f64 {
        outln!("warning: δ = {} is not below 1/rows = {:.3e}: a bank of {rows} rows refuses this job", plan.delta, 1.0 / rows as f64)?;
    }
    if let Some(levels) = dp.tree_levels {
        outln!(
            "at a bank of {rows} training and {test_rows} test rows: each round grows one tree of up to {levels} levels, each level one \
             Gaussian mechanism (noise σ·Δ on every histogram entry; no subsampling amplification counted)"
        )?;
    } else if dp.privacy.mode == confide_core::job::PrivacyMode::Record {
        let q = spend::sampling_rate(dp.batch_size, rows);
        outln!(
            "at a bank of {rows} training and {test_rows} test rows: sampling rate q = {q:.5}, {} noisy steps per round",
            spend::dp_sgd_steps(q, dp.local_epochs)
        )?;
    } else {
        outln!("at a bank of {rows} training and {test_rows} test rows (record level: a row moves the bank's clipped update by at most 2C)")?;
    }
    outln!("{:>6}  {:>14}  {:>12}  {:>12}", "round", "ε train split", "ε test split", "ε dataset")?;
    for r in &table {
        outln!("{:>6}  {:>14.4}  {:>12.4}  {:>12.4}", r.round, r.train_epsilon, r.test_epsilon, r.train_epsilon.max(r.test_epsilon))?;
    }
    Ok(())
}

fn read_job(path: &Path) -> Result<pb::SubmitJobRequest, Failure> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())).map_err(bad_input)?;
    let spec = JobSpec::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let schema_rel = spec
        .schema
        .as_deref()
        .ok_or_else(|| bad_input(anyhow!("{}: field `schema`: the path of the dataset schema file is required", path.display())))?;
    let schema_path = dir.join(schema_rel);
    let schema = std::fs::read_to_string(&schema_path)
        .with_context(|| format!("{}: field `schema`: reading {}", path.display(), schema_path.display()))
        .map_err(bad_input)?;
    let mut catalogue_items = Vec::new();
    if let Some(rel) = spec.catalogue.as_deref() {
        let parsed = confide_datasets::DatasetSchema::parse(&schema, &schema_path.display().to_string())
            .map_err(|e| bad_input(anyhow!("{}: field `schema`: {e}", path.display())))?;
        let rec = parsed.recommendation.as_ref().ok_or_else(|| {
            bad_input(anyhow!("{}: field `catalogue`: the schema {} has no `[recommendation]` section", path.display(), schema_path.display()))
        })?;
        let catalogue_path = path.parent().unwrap_or(Path::new(".")).join(rel);
        let catalogue = confide_datasets::Catalogue::from_csv(&catalogue_path, &rec.item)
            .map_err(|e| bad_input(anyhow!("{}: field `catalogue`: {e}", path.display())))?;
        catalogue_items = catalogue.ids().to_vec();
    }
    let (model_module, model_parameters) = match &spec.model {
        ModelSpec::TorchScript(ts) => {
            let read = |field: &str, rel: &str| {
                let file = dir.join(rel);
                std::fs::read(&file)
                    .with_context(|| format!("{}: field `model.{field}`: reading {}", path.display(), file.display()))
                    .map_err(bad_input)
            };
            (read("module", &ts.module)?, read("parameters", &ts.parameters)?)
        }
        _ => (Vec::new(), Vec::new()),
    };
    Ok(pb::SubmitJobRequest { spec_toml: text, schema_toml: schema, model_module, model_parameters, catalogue_items, idempotency_key: String::new() })
}

/// `confide schema width`: the encoded input width, optionally with each input's name.
fn schema_width(file: &Path, features: bool) -> Result<(), Failure> {
    let schema = confide_datasets::DatasetSchema::from_file(file).map_err(|e| bad_input(e.into()))?;
    outln!("{}", schema.input_dim())?;
    if features {
        for (i, name) in schema.feature_names().iter().enumerate() {
            outln!("{i:>5}  {name}")?;
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Certs(CertsCommand::Init { dir, days }) => {
            check_days(*days)?;
            confide_tls::init_ca(dir, *days).map_err(|e| bad_input(e.into()))?;
            outln!("{}", dir.join("ca.pem").display())?;
            return Ok(0);
        }
        Command::Certs(CertsCommand::Issue { ca_dir, role, name, san, days, backdate_days, out }) => {
            let role = confide_tls::Role::parse(role)
                .ok_or_else(|| bad_input(anyhow!("--role must be coordinator, institution or admin, got {role:?}")))?;
            check_days(*days)?;
            let fingerprint = match backdate_days {
                None => confide_tls::issue(ca_dir, role, name, san, *days, out),
                Some(back) => {
                    let from = time::OffsetDateTime::now_utc() - time::Duration::days(*back);
                    confide_tls::issue_from(ca_dir, role, name, san, from, from + time::Duration::days(*days), out)
                }
            }
            .map_err(|e| bad_input(e.into()))?;
            outln!("{fingerprint}")?;
            return Ok(0);
        }
        Command::Certs(CertsCommand::Fingerprint { cert }) => {
            outln!("{}", confide_tls::fingerprint_of(cert).map_err(|e| bad_input(e.into()))?)?;
            return Ok(0);
        }
        Command::Schema(SchemaCommand::Width { file, features }) => {
            schema_width(file, *features)?;
            return Ok(0);
        }
        Command::Privacy(PrivacyCommand::Epsilon { sampling_rate, noise_multiplier, steps, delta }) => {
            let mut accountant = confide_core::privacy::Accountant::default();
            let mechanism = confide_core::privacy::Mechanism::SubsampledGaussian { sampling_rate: *sampling_rate, noise_multiplier: *noise_multiplier };
            accountant.compose(mechanism, *steps).map_err(|e| bad_input(e.into()))?;
            let (epsilon, order) = accountant.epsilon(*delta).map_err(|e| bad_input(e.into()))?;
            outln!("RDP accountant: q={sampling_rate} sigma={noise_multiplier} steps={steps} delta={delta}; optimal order {order}")?;
            outln!("{epsilon}")?;
            return Ok(0);
        }
        Command::Privacy(PrivacyCommand::Plan { file, rows, test_rows }) => {
            privacy_plan(file, *rows, test_rows.unwrap_or(*rows / 4).max(1))?;
            return Ok(0);
        }
        _ => {}
    }
    // A job file is checked before anything is sent, so its mistakes are reported even offline.
    let job_file = match &cli.command {
        Command::Job(JobCommand::Submit { file, idempotency_key }) => {
            Some(pb::SubmitJobRequest { idempotency_key: idempotency_key.clone().unwrap_or_default(), ..read_job(file)? })
        }
        _ => None,
    };
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::Job(JobCommand::Submit { .. }) => {
            let request = job_file.unwrap_or_default();
            let reply = client.submit_job(request).await.map_err(status_error)?.into_inner();
            // Notes go to stderr, so scripts reading the id from stdout are unaffected.
            if reply.replayed {
                eprintln!(
                    "note: this job was already submitted with this idempotency key at {} as {}; nothing new was submitted",
                    reply.identical_submitted_at, reply.job_id
                );
            } else if !reply.identical_job_id.is_empty() {
                eprintln!("note: an identical job was submitted at {} as {}", reply.identical_submitted_at, reply.identical_job_id);
            }
            if let Some(plan) = &reply.privacy {
                eprintln!("differential privacy: {}", plan.summary);
            }
            outln!("{}", reply.job_id)?;
        }
        Command::Job(JobCommand::List) => {
            let jobs = client.list_jobs(pb::ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
            out!("{}", view::job_table(&jobs))?;
        }
        Command::Job(JobCommand::Get { id, json }) => {
            let job = client.get_job(pb::GetJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            if json {
                outln!("{}", serde_json::to_string_pretty(&view::job_json(&job))?)?;
            } else {
                out!("{}", view::job_text(&job))?;
            }
        }
        Command::Job(JobCommand::Report { id, output }) => {
            let job = client.get_job(pb::GetJobRequest { job_id: id.clone() }).await.map_err(status_error)?.into_inner();
            let dir = output.unwrap_or_else(|| PathBuf::from(format!("report-{id}")));
            let files = report::write(&job, &dir)?;
            outln!("{}", files.markdown.display())?;
            outln!("{}", files.csv.display())?;
            if let Some(chart) = files.chart {
                outln!("{}", chart.display())?;
            }
        }
        Command::Job(JobCommand::Watch { id }) => {
            let stream = client.watch_job(pb::WatchJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            return view::watch(stream).await.map_err(Failure::from);
        }
        Command::Job(JobCommand::Cancel { id }) => {
            let job = client.cancel_job(pb::CancelJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            outln!("{} {}", job.id, job.status)?;
        }
        Command::Model(ModelCommand::Export { id, format, output }) => {
            let job = client.get_job(pb::GetJobRequest { job_id: id.clone() }).await.map_err(status_error)?.into_inner();
            if job.model_hash.is_empty() {
                return Err(bad_input(anyhow!("job {id} ({}) has no model yet", job.status)));
            }
            let bytes = fetch_model(&mut client, &id).await?;
            if confide_core::sha256_hex(&bytes) != job.model_hash {
                return Err(anyhow!("the downloaded model does not match the job's model hash {}", job.model_hash).into());
            }
            let export = job_export(&job, &bytes).map_err(|e| bad_input(e.into()))?;
            // `all` means every format this model's family is written in.
            let formats = match format {
                ExportFormat::All => export.available_formats().map_err(|e| bad_input(e.into()))?,
                one => one.formats(),
            };
            let manifest = confide_export::export_job(&export, &output, &formats).map_err(|e| match e {
                confide_export::ExportError::Io { .. } => Failure::from(anyhow::Error::from(e)),
                other => bad_input(other.into()),
            })?;
            for f in &manifest.files {
                outln!("{}  {}", f.sha256, output.join(&f.name).display())?;
            }
            for card in &manifest.card_files {
                outln!("{:<64}  {}", "(model card)", card.display())?;
            }
        }
        Command::Model(ModelCommand::Pull { id, output }) => {
            let bytes = fetch_model(&mut client, &id).await?;
            // A tree model's checkpoint is the ensemble as JSON (confide-gbdt), not safetensors.
            let extension = if bytes.first() == Some(&b'{') && confide_core::model::ModelParams::read_safetensors_any(&bytes).is_err() { "json" } else { "safetensors" };
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{id}.{extension}")));
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            outln!("{} ({} bytes, sha256 {})", path.display(), bytes.len(), confide_core::sha256_hex(&bytes))?;
        }
        Command::Certs(_) | Command::Schema(_) | Command::Privacy(_) => {}
        Command::Workers => {
            let workers = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_error)?.into_inner().workers;
            for w in workers {
                // Name and schema fingerprint (12 hex digits tell schemas apart), so a job
                // waiting for participants can be matched against what each bank offers.
                let mut datasets: Vec<String> = w
                    .datasets
                    .iter()
                    .map(|d| format!("{} (schema {})", d.name, d.schema_fingerprint.get(..12).unwrap_or(&d.schema_fingerprint)))
                    .collect();
                datasets.extend(w.unavailable_datasets.iter().map(pb::UnavailableDataset::display));
                outln!(
                    "{:<20} {:<13} last seen {}  datasets: {}",
                    w.worker_id,
                    if w.connected { "connected" } else { "disconnected" },
                    w.last_seen,
                    datasets.join(", ")
                )?;
            }
        }
    }
    Ok(0)
}
