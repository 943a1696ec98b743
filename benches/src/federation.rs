//! A real federation of processes for end-to-end benches: a `confide-coordinator` and one
//! `confide-worker` per bank on 127.0.0.1 with mutual TLS (the federation's PKI made here with
//! `confide-tls`), jobs submitted with the `confide` CLI, exactly as a data-science team runs
//! them (the load bench connects in-process simulated banks to the same coordinator instead). The binaries are the ones beside the bench executable (build them in the same profile:
//! `cargo build --release -p confide-coordinator -p confide-worker -p confide-cli`).
//! Processes are killed when the federation is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confide_proto::v1::{self as pb, admin_client::AdminClient};
use confide_tls::{Role, TlsFiles};

/// What can go wrong starting or driving the federation.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] confide_tls::TlsError),
    #[error("gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Failed(String),
}

/// A running coordinator and its workers.
pub struct ProcessFederation {
    /// Every process's files (PKI, configurations, data directories, logs).
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    url: String,
    coordinator: Child,
    workers: Vec<Child>,
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, FederationError> {
    let file = std::fs::File::create(log)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| FederationError::Failed(format!("{program}: {e} (build it in the bench's profile first)")))
}

impl ProcessFederation {
    /// Makes the PKI and starts the coordinator with mutual TLS on a free port.
    pub fn start() -> Result<Self, FederationError> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().ok_or_else(|| FederationError::Failed("no target directory".into()))?.to_path_buf();
        let dir = tempfile::tempdir()?;
        let pki = dir.path().join("pki");
        confide_tls::init_ca(&pki, 1)?;
        confide_tls::issue(&pki, Role::Coordinator, "coordinator", &["127.0.0.1".into()], 1, &pki)?;
        confide_tls::issue(&pki, Role::Admin, "bench", &[], 1, &pki)?;
        let c = tls_files(&pki, "coordinator");
        let config = dir.path().join("coordinator.toml");
        std::fs::write(&config, format!("[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n", c.ca, c.cert, c.key))?;
        let addr_file = dir.path().join("coordinator.addr");
        let coordinator = spawn_logged(
            Command::new(bin.join("confide-coordinator"))
                .arg("--config")
                .arg(&config)
                .args(["--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path().join("coordinator"))
                .arg("--addr-file")
                .arg(&addr_file)
                .env("RUST_LOG", "warn"),
            &dir.path().join("coordinator.log"),
        )?;
        let mut federation = Self { dir, bin, url: String::new(), coordinator, workers: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        federation.url = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break format!("https://{}", a.trim());
            }
            if Instant::now() > deadline || federation.coordinator.try_wait()?.is_some() {
                return Err(FederationError::Failed(format!("the coordinator did not start:\n{}", federation.log("coordinator"))));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(federation)
    }

    /// The federation's PKI folder (CA and every issued certificate).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The coordinator's process id (e.g. to read its peak memory).
    pub fn coordinator_pid(&self) -> u32 {
        self.coordinator.id()
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A process's log (`coordinator` or a bank id).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts bank `id`'s worker offering dataset `name` (schema file `schema`) from
    /// `train`/`test`, with its own institution certificate, `threads` compute threads and
    /// extra configuration `extra_toml` (e.g. a `[policy]` table).
    #[allow(clippy::too_many_arguments)]
    pub fn add_worker(&mut self, id: &str, name: &str, schema: &Path, train: &Path, test: &Path, threads: usize, extra_toml: &str) -> Result<(), FederationError> {
        let pki = self.pki();
        confide_tls::issue(&pki, Role::Institution, id, &[], 1, &pki)?;
        let t = tls_files(&pki, id);
        let config = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "coordinator = \"{}\"\ninstitution_id = \"{id}\"\ndata_dir = {:?}\n\n{extra_toml}\n\n[compute]\ndevice = \"cpu\"\nthreads = {threads}\n\n\
                 [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[[datasets]]\nname = \"{name}\"\nschema = {:?}\ntrain = {:?}\ntest = {:?}\n",
                self.url,
                self.dir.path().join(id),
                t.ca,
                t.cert,
                t.key,
                schema,
                train,
                test
            ),
        )?;
        let child = spawn_logged(
            Command::new(self.bin.join("confide-worker")).arg("--config").arg(&config).env("RUST_LOG", "warn"),
            &self.dir.path().join(format!("{id}.log")),
        )?;
        self.workers.push(child);
        Ok(())
    }

    /// The admin's TLS files.
    pub fn admin(&self) -> TlsFiles {
        tls_files(&self.pki(), "bench")
    }

    async fn client(&self) -> Result<AdminClient<tonic::transport::Channel>, FederationError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| FederationError::Failed(e.to_string()))?
            .tls_config(confide_tls::client_config(&self.admin(), "127.0.0.1")?)?;
        Ok(AdminClient::new(endpoint.connect().await?))
    }

    /// Waits until `n` workers are connected.
    pub async fn wait_workers(&self, n: usize, timeout: Duration) -> Result<(), FederationError> {
        let mut admin = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let workers = admin.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            let connected = workers.iter().filter(|w| w.connected).count();
            if connected >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(FederationError::Failed(format!("only {connected} of {n} workers connected")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits `job_file` with `confide job submit` (as the admin) and returns the job id.
    pub fn submit(&self, job_file: &Path) -> Result<String, FederationError> {
        let admin = self.admin();
        let out = Command::new(self.bin.join("confide"))
            .args(["job", "submit"])
            .arg(job_file)
            .env("CONFIDE_COORDINATOR", &self.url)
            .env("CONFIDE_CA", &admin.ca)
            .env("CONFIDE_CERT", &admin.cert)
            .env("CONFIDE_KEY", &admin.key)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| FederationError::Failed(format!("confide: {e}")))?;
        if !out.status.success() {
            return Err(FederationError::Failed(format!("confide job submit: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string())
    }

    /// Polls the job every `every` until it ends; returns it.
    pub async fn wait_finished(&self, job_id: &str, every: Duration) -> Result<pb::Job, FederationError> {
        let mut admin = self.client().await?;
        loop {
            let job = admin.get_job(pb::GetJobRequest { job_id: job_id.to_string() }).await?.into_inner();
            if matches!(job.status.as_str(), "completed" | "failed" | "cancelled") {
                return Ok(job);
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn tls_files(pki: &Path, name: &str) -> TlsFiles {
    TlsFiles { ca: pki.join("ca.pem"), cert: pki.join(format!("{name}.pem")), key: pki.join(format!("{name}.key")) }
}

impl Drop for ProcessFederation {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(std::iter::once(&mut self.coordinator)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
