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
    /// Coordinator URL.
    #[arg(long, global = true, env = "CONFIDE_COORDINATOR", default_value = "http://127.0.0.1:7070")]
    coordinator: String,
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

async fn connect(url: &str) -> Result<AdminClient<Channel>, Failure> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| bad_input(anyhow!("--coordinator {url:?}: {e}")))?
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

/// Reads a job file and the schema it names (relative to the job file), validating the job
/// locally first so mistakes are reported with the file's name before anything is sent.
fn read_job(path: &Path) -> Result<(String, String), Failure> {
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
    Ok((text, schema))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Job(JobCommand::Submit { file }) => {
            let (spec_toml, schema_toml) = read_job(&file)?;
            let mut client = connect(&cli.coordinator).await?;
            let reply = client.submit_job(pb::SubmitJobRequest { spec_toml, schema_toml }).await.map_err(status_error)?;
            println!("{}", reply.into_inner().job_id);
        }
        Command::Job(JobCommand::List) => {
            let mut client = connect(&cli.coordinator).await?;
            let jobs = client.list_jobs(pb::ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
            print!("{}", view::job_table(&jobs));
        }
        Command::Job(JobCommand::Get { id, json }) => {
            let mut client = connect(&cli.coordinator).await?;
            let job = client.get_job(pb::GetJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&view::job_json(&job))?);
            } else {
                print!("{}", view::job_text(&job));
            }
        }
        Command::Job(JobCommand::Watch { id }) => {
            let mut client = connect(&cli.coordinator).await?;
            let stream = client.watch_job(pb::WatchJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            return view::watch(stream).await.map_err(Failure::from);
        }
        Command::Job(JobCommand::Cancel { id }) => {
            let mut client = connect(&cli.coordinator).await?;
            let job = client.cancel_job(pb::CancelJobRequest { job_id: id }).await.map_err(status_error)?.into_inner();
            println!("{} {}", job.id, job.status);
        }
        Command::Model(ModelCommand::Pull { id, output }) => {
            let mut client = connect(&cli.coordinator).await?;
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
        Command::Workers => {
            let mut client = connect(&cli.coordinator).await?;
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
