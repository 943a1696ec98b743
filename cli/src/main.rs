//! `confide`: the data-science team's command line. Submits job files, lists, watches and
//! cancels jobs, and pulls trained models — all through the coordinator's Admin service.
//!
//! Exit codes: 0 success; 1 the job failed or was cancelled (`watch`); 2 bad input (job file,
//! arguments); 3 the coordinator could not be reached or refused the request.

mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use confide_core::job::JobSpec;
use confide_proto::v1::{self as pb, admin_client::AdminClient};
use tonic::transport::Channel;

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
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the federation CA (`ca.pem`, `ca.key`) in a directory.
    Init {
        /// Directory for the CA (keep `ca.key` offline).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
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
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
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
    /// Submit a job file; prints the new job's id.
    Submit {
        /// Job file (TOML).
        file: PathBuf,
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
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download a job's latest global model (safetensors).
    Pull {
        /// Job id.
        id: String,
        /// Output file (default: <job id>.safetensors).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("confide: {error:#}");
            ExitCode::from(code)
        }
    }
}

async fn connect(cli: &Cli) -> Result<AdminClient<Channel>, Failure> {
    let url = &cli.coordinator;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| bad_input(anyhow!("--coordinator {url:?}: {e}")))?;
    match (&cli.ca, &cli.cert, &cli.key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = confide_tls::TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            let host = endpoint.uri().host().unwrap_or_default().to_string();
            let tls = confide_tls::client_config(&files, &host).map_err(|e| bad_input(e.into()))?;
            endpoint = endpoint.tls_config(tls).map_err(|e| bad_input(e.into()))?;
        }
        (None, None, None) if url.starts_with("http://") => {}
        (None, None, None) => {
            return Err(bad_input(anyhow!(
                "{url} needs an admin certificate: give --ca, --cert and --key (or CONFIDE_CA, CONFIDE_CERT, CONFIDE_KEY)"
            )));
        }
        _ => return Err(bad_input(anyhow!("--ca, --cert and --key go together"))),
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(16 << 20))
}

fn status_error(s: tonic::Status) -> Failure {
    let code = if s.code() == tonic::Code::InvalidArgument { 2 } else { 3 };
    Failure { code, error: anyhow!("{}", s.message()) }
}

/// A job file with what it names: the schema text and, for recommendation jobs, the item ids of
/// the catalogue file.
#[derive(Debug, Default)]
struct JobFiles {
    spec_toml: String,
    schema_toml: String,
    catalogue_items: Vec<String>,
}

/// Reads a job file, the schema it names and (recommendation jobs) the item catalogue it names,
/// both relative to the job file, validating locally first so mistakes are reported with the
/// file's name before anything is sent.
fn read_job(path: &Path) -> Result<JobFiles, Failure> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())).map_err(bad_input)?;
    let spec = JobSpec::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    let schema_rel = spec
        .schema
        .as_deref()
        .ok_or_else(|| bad_input(anyhow!("{}: field `schema`: the path of the dataset schema file is required", path.display())))?;
    let schema_path = path.parent().unwrap_or(Path::new(".")).join(schema_rel);
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
    Ok(JobFiles { spec_toml: text, schema_toml: schema, catalogue_items })
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Certs(CertsCommand::Init { dir, days }) => {
            confide_tls::init_ca(dir, *days)?;
            println!("{}", dir.join("ca.pem").display());
            return Ok(0);
        }
        Command::Certs(CertsCommand::Issue { ca_dir, role, name, san, days, out }) => {
            let role = confide_tls::Role::parse(role)
                .ok_or_else(|| bad_input(anyhow!("--role must be coordinator, institution or admin, got {role:?}")))?;
            let fingerprint = confide_tls::issue(ca_dir, role, name, san, *days, out).map_err(|e| bad_input(e.into()))?;
            println!("{fingerprint}");
            return Ok(0);
        }
        Command::Certs(CertsCommand::Fingerprint { cert }) => {
            println!("{}", confide_tls::fingerprint_of(cert).map_err(|e| bad_input(e.into()))?);
            return Ok(0);
        }
        _ => {}
    }
    // A job file is checked before anything is sent, so its mistakes are reported even offline.
    let job_file = match &cli.command {
        Command::Job(JobCommand::Submit { file }) => Some(read_job(file)?),
        _ => None,
    };
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::Job(JobCommand::Submit { .. }) => {
            let JobFiles { spec_toml, schema_toml, catalogue_items } = job_file.unwrap_or_default();
            let reply =
                client.submit_job(pb::SubmitJobRequest { spec_toml, schema_toml, catalogue_items }).await.map_err(status_error)?;
            println!("{}", reply.into_inner().job_id);
        }
        Command::Job(JobCommand::List) => {
            let jobs = client.list_jobs(pb::ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
            print!("{}", view::job_table(&jobs));
        }
        Command::Job(JobCommand::Get { id, json }) => {
            let job = client.get_job(pb::GetJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&view::job_json(&job))?);
            } else {
                print!("{}", view::job_text(&job));
            }
        }
        Command::Job(JobCommand::Watch { id }) => {
            let stream = client.watch_job(pb::WatchJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            return view::watch(stream).await.map_err(Failure::from);
        }
        Command::Job(JobCommand::Cancel { id }) => {
            let job = client.cancel_job(pb::CancelJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            println!("{} {}", job.id, job.status);
        }
        Command::Model(ModelCommand::Pull { id, output }) => {
            let mut stream =
                client.fetch_model(pb::FetchModelRequest { job_id: id.clone() }).await.map_err(status_error)?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                if chunk.offset != bytes.len() as u64 {
                    return Err(anyhow!("model stream out of order at offset {}", chunk.offset).into());
                }
                bytes.extend_from_slice(&chunk.data);
            }
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{id}.safetensors")));
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("{} ({} bytes, sha256 {})", path.display(), bytes.len(), confide_core::sha256_hex(&bytes));
        }
        Command::Certs(_) => {}
        Command::Workers => {
            let workers = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_error)?.into_inner().workers;
            for w in workers {
                let datasets: Vec<&str> = w.datasets.iter().map(|d| d.name.as_str()).collect();
                println!(
                    "{:<20} {:<13} last seen {}  datasets: {}",
                    w.worker_id,
                    if w.connected { "connected" } else { "disconnected" },
                    w.last_seen,
                    datasets.join(", ")
                );
            }
        }
    }
    Ok(0)
}
