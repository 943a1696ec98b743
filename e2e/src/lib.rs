//! A test harness that runs a real federation: `confide-coordinator`, `confide-worker` and
//! `confide` processes talking gRPC on 127.0.0.1, each with its own files in a temporary
//! directory. Processes are killed (SIGKILL) when the harness is dropped.
//!
//! The binaries are taken from the same target directory as the test executable; build them
//! first with `cargo build --workspace --bins` (the project's test script does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/datasets` beside the repository.
pub fn shared_datasets() -> PathBuf {
    repo_root().join("../shared/datasets")
}

/// The Telco churn CSV and the repository's schema for it.
pub fn telco() -> (PathBuf, PathBuf) {
    (
        shared_datasets().join("telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"),
        repo_root().join("datasets/schemas/telco_churn.toml"),
    )
}

/// Path of a workspace binary next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests", path.display());
    path
}

/// Users 1..=`max_user` of MovieLens (the file is sorted by user), written as a CSV slice.
pub fn movielens_slice(out: &Path, max_user: u32) -> PathBuf {
    let text = std::fs::read_to_string(shared_datasets().join("movielens_latest_small/ratings.csv")).expect("ratings.csv");
    let mut lines = text.lines();
    let mut slice = format!("{}\n", lines.next().expect("header"));
    for line in lines {
        let user: u32 = line.split(',').next().and_then(|u| u.parse().ok()).expect("user id");
        if user <= max_user {
            slice.push_str(line);
            slice.push('\n');
        }
    }
    let path = out.join("ratings_slice.csv");
    std::fs::write(&path, slice).expect("slice");
    path
}

/// Splits the Telco data into `n` IID institutions under `out` (bank1..bankN, train/test).
pub fn partition_telco(out: &Path, n: usize, seed: u64) -> PathBuf {
    let (csv, schema_path) = telco();
    let cfg = confide_datasets::partition::PartitionConfig {
        institutions: Some(n),
        seed,
        ..Default::default()
    };
    partition_dataset(&csv, &schema_path, out, &cfg)
}

/// Splits `csv` (following the schema at `schema_path`) into institutions under `out`
/// (one folder each with train.csv/test.csv) and returns `out`.
pub fn partition_dataset(
    csv: &Path,
    schema_path: &Path,
    out: &Path,
    cfg: &confide_datasets::partition::PartitionConfig,
) -> PathBuf {
    let schema = confide_datasets::DatasetSchema::from_file(schema_path).expect("schema");
    confide_datasets::partition::partition_csv(csv, &schema, out, cfg, true).expect("partition");
    out.to_path_buf()
}

/// A running local federation.
pub struct Cluster {
    /// Scratch directory holding every process's files.
    pub dir: tempfile::TempDir,
    coordinator: Option<Child>,
    /// The coordinator's address (`127.0.0.1:port`), stable across restarts.
    pub addr: String,
    workers: BTreeMap<String, Child>,
    /// Plaintext development mode (`--insecure-dev`) instead of mutual TLS.
    insecure: bool,
    /// Certificate fingerprints the coordinator refuses (applied at its next start).
    pub revoked: Vec<String>,
    /// Extra top-level lines of the coordinator's configuration, e.g. `revocation_file = ...`
    /// (applied at its next start).
    pub coordinator_toml: String,
    /// Where the coordinator serves Prometheus metrics.
    pub metrics_addr: String,
    /// Workers written from now on turn the ledger's count protection off
    /// (`[policy] protect_counts = false`): for tests about dropout handling, where a changing
    /// set of contributors is the point (the protection itself has its own tests).
    pub tolerate_dropouts: bool,
    /// Extra `[policy]` lines for every worker written from now on.
    pub worker_policy: String,
}

impl Cluster {
    /// Starts a coordinator with mutual TLS on a free port; the federation's PKI (CA,
    /// coordinator and admin certificates) is made with `confide certs`.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a plaintext `--insecure-dev` coordinator (for tests that inspect the bytes on the
    /// wire, which TLS would hide).
    pub fn start_insecure() -> Self {
        Self::start_with(true)
    }

    fn start_with(insecure: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // A free port for the metrics endpoint (the gRPC port is chosen by the coordinator).
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .expect("free port");
        let mut c = Self {
            dir,
            coordinator: None,
            addr: "127.0.0.1:0".into(),
            workers: BTreeMap::new(),
            insecure,
            revoked: Vec::new(),
            coordinator_toml: String::new(),
            metrics_addr,
            tolerate_dropouts: false,
            worker_policy: String::new(),
        };
        if !insecure {
            let pki = c.pki();
            c.certs(&["init", "--dir", &pki]);
            c.issue("coordinator", "coordinator", &["--san", "127.0.0.1", "--san", "localhost"]);
            c.issue("admin", "tester", &[]);
        }
        c.start_coordinator();
        c
    }

    /// The PKI directory (CA and every issued certificate).
    pub fn pki(&self) -> String {
        self.dir.path().join("pki").display().to_string()
    }

    fn certs(&self, args: &[&str]) -> String {
        let out = Command::new(binary("confide")).arg("certs").args(args).output().expect("run confide certs");
        assert!(out.status.success(), "confide certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Issues a certificate (`role`, `name`) in the PKI directory; returns its fingerprint.
    pub fn issue(&self, role: &str, name: &str, extra: &[&str]) -> String {
        let pki = self.pki();
        let mut args = vec!["issue", "--ca-dir", &pki, "--role", role, "--name", name, "--out", &pki];
        args.extend_from_slice(extra);
        self.certs(&args)
    }

    /// (ca, cert, key) paths of a holder's TLS files.
    pub fn tls_files(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let pki = self.dir.path().join("pki");
        (pki.join("ca.pem"), pki.join(format!("{name}.pem")), pki.join(format!("{name}.key")))
    }

    /// A coordinator and `banks` Telco workers (`bank1`..), each on its own IID partition.
    /// Returns the cluster and the partition directory.
    pub fn telco_federation(banks: usize, seed: u64) -> (Self, PathBuf) {
        Self::telco_federation_with(banks, seed, false)
    }

    /// [`Self::telco_federation`] whose workers tolerate changing contributor sets (see
    /// [`Self::tolerate_dropouts`]) when `tolerate_dropouts`.
    pub fn telco_federation_with(banks: usize, seed: u64, tolerate_dropouts: bool) -> (Self, PathBuf) {
        Self::telco_federation_policy(banks, seed, tolerate_dropouts, "")
    }

    /// [`Self::telco_federation_with`], every worker with `policy` lines added to `[policy]`.
    pub fn telco_federation_policy(banks: usize, seed: u64, tolerate_dropouts: bool, policy: &str) -> (Self, PathBuf) {
        let mut cluster = Self::start();
        cluster.tolerate_dropouts = tolerate_dropouts;
        cluster.worker_policy = policy.to_string();
        let partition = partition_telco(&cluster.dir.path().join("partition"), banks, seed);
        for i in 1..=banks {
            cluster.add_telco_worker(&format!("bank{i}"), &partition);
        }
        (cluster, partition)
    }

    /// The data directory a worker's configuration names (`<cluster dir>/<id>`).
    pub fn worker_data_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.insecure { "http" } else { "https" }, self.addr)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("{name}.log"))).expect("log file")
    }

    /// The accumulated log of a process (`coordinator`, or a worker id).
    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// (Re)starts the coordinator on the same address and data directory.
    pub fn start_coordinator(&mut self) {
        let addr_file = self.dir.path().join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let config = self.dir.path().join("coordinator.toml");
        let mut toml = format!("revoked = {:?}\n{}\n", self.revoked, self.coordinator_toml);
        if !self.insecure {
            let (ca, cert, key) = self.tls_files("coordinator");
            toml.push_str(&format!("[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n", ca, cert, key));
        }
        std::fs::write(&config, toml).expect("coordinator config");
        let mut cmd = Command::new(binary("confide-coordinator"));
        if self.insecure {
            cmd.arg("--insecure-dev");
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .args(["--listen", &self.addr, "--metrics-listen", &self.metrics_addr, "--data-dir"])
            .arg(self.dir.path().join("coordinator"))
            .arg("--addr-file")
            .arg(&addr_file)
            .env("RUST_LOG", "info")
            .stdout(self.log("coordinator"))
            .stderr(self.log("coordinator"))
            .spawn()
            .expect("spawn coordinator");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                self.addr = a.trim().to_string();
                return;
            }
            assert!(Instant::now() < deadline, "coordinator did not start:\n{}", self.read_log("coordinator"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a worker for institution `id` offering the Telco data in `partition/id`.
    pub fn add_telco_worker(&mut self, id: &str, partition: &Path) {
        self.add_telco_worker_with_env(id, partition, &[]);
    }

    /// Like [`Self::add_telco_worker`], with extra environment variables (e.g. a crash drill).
    pub fn add_telco_worker_with_env(&mut self, id: &str, partition: &Path, env: &[(&str, &str)]) {
        self.add_telco_worker_with_config(id, partition, "", env);
    }

    /// Like [`Self::add_telco_worker`], with extra configuration (e.g. a `[policy]` table) and
    /// environment variables.
    pub fn add_telco_worker_with_config(&mut self, id: &str, partition: &Path, extra_toml: &str, env: &[(&str, &str)]) {
        let (_, schema) = telco();
        let bank = partition.join(id);
        let config =
            self.write_worker_config(id, &[("telco_churn", &schema, &bank.join("train.csv"), &bank.join("test.csv"))], extra_toml);
        self.spawn_worker_with_env(id, &config, env);
    }

    /// Starts a worker for institution `id` offering dataset `name` (schema at `schema`) from the
    /// folder `partition/<folder>` written by [`partition_dataset`].
    pub fn add_dataset_worker(&mut self, id: &str, name: &str, schema: &Path, folder: &Path) {
        let config = self.write_worker_config(id, &[(name, schema, &folder.join("train.csv"), &folder.join("test.csv"))], "");
        self.spawn_worker(id, &config);
    }

    /// Users 1..=`max_user` of MovieLens partitioned by user across bank1..bank3 under `out`
    /// (`confide-partition --scheme users`), one worker per bank allowing both recommendation
    /// families. Returns the schema path and the partition folder.
    pub fn movielens_federation(&mut self, out: &Path, max_user: u32, seed: u64) -> (PathBuf, PathBuf) {
        let schema = repo_root().join("datasets/schemas/movielens_latest_small.toml");
        let slice = movielens_slice(out, max_user);
        let partition = out.join("partition");
        let seed = seed.to_string();
        let result = Command::new(binary("confide-partition"))
            .args(["--schema", schema.to_str().expect("utf-8"), "--input", slice.to_str().expect("utf-8")])
            .args(["--out", partition.to_str().expect("utf-8"), "--institutions", "3", "--scheme", "users", "--seed", &seed])
            .output()
            .expect("confide-partition runs");
        assert!(result.status.success(), "partition: {}", String::from_utf8_lossy(&result.stderr));
        for bank in ["bank1", "bank2", "bank3"] {
            let b = partition.join(bank);
            let config = self.write_worker_config(
                bank,
                &[("movielens_latest_small", &schema, &b.join("train.csv"), &b.join("test.csv"))],
                "[policy]\nallowed_models = [\"matrix_factorization\", \"two_tower\"]\n",
            );
            self.spawn_worker(bank, &config);
        }
        (schema, partition)
    }

    /// Writes a worker configuration file (issuing the institution's certificate) and returns
    /// its path.
    pub fn write_worker_config(&self, id: &str, datasets: &[(&str, &Path, &Path, &Path)], extra_toml: &str) -> PathBuf {
        let mut lines = self.worker_policy.clone();
        if self.tolerate_dropouts {
            lines.push_str("protect_counts = false\n");
        }
        let extra_toml = match (lines.is_empty(), extra_toml.contains("[policy]")) {
            (true, _) => extra_toml.to_string(),
            (false, true) => extra_toml.replacen("[policy]\n", &format!("[policy]\n{lines}"), 1),
            (false, false) => format!("{extra_toml}\n[policy]\n{lines}"),
        };
        let mut toml = format!(
            "coordinator = \"{}\"\ninstitution_id = \"{id}\"\ndata_dir = \"{}\"\n{extra_toml}\n[compute]\ndevice = \"cpu\"\nthreads = 1\n",
            self.url(),
            self.dir.path().join(id).display()
        );
        if !self.insecure {
            if !self.tls_files(id).1.exists() {
                self.issue("institution", id, &[]);
            }
            let (ca, cert, key) = self.tls_files(id);
            toml.push_str(&format!("\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n", ca, cert, key));
        }
        for (name, schema, train, test) in datasets {
            toml.push_str(&format!(
                "\n[[datasets]]\nname = \"{name}\"\nschema = \"{}\"\ntrain = \"{}\"\ntest = \"{}\"\n",
                schema.display(),
                train.display(),
                test.display()
            ));
        }
        let path = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, toml).expect("worker config");
        path
    }

    /// Starts (or restarts) a worker from its configuration file.
    pub fn spawn_worker(&mut self, id: &str, config: &Path) {
        self.spawn_worker_with_env(id, config, &[]);
    }

    /// Starts a worker with extra environment variables.
    pub fn spawn_worker_with_env(&mut self, id: &str, config: &Path, env: &[(&str, &str)]) {
        let mut cmd = Command::new(binary("confide-worker"));
        if self.insecure {
            cmd.arg("--insecure-dev");
        }
        let child = cmd
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(self.log(id))
            .stderr(self.log(id))
            .spawn()
            .expect("spawn worker");
        self.workers.insert(id.to_string(), child);
    }

    /// SIGKILLs a worker.
    pub fn kill_worker(&mut self, id: &str) {
        if let Some(mut c) = self.workers.remove(id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the `confide` CLI against this coordinator, as the admin `tester`.
    pub fn confide(&self, args: &[&str]) -> Output {
        self.confide_as("tester", args)
    }

    /// Runs the `confide` CLI with `name`'s certificate.
    pub fn confide_as(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("confide"));
        cmd.args(args).env("CONFIDE_COORDINATOR", self.url()).stdin(Stdio::null());
        if !self.insecure {
            let (ca, cert, key) = self.tls_files(name);
            cmd.env("CONFIDE_CA", ca).env("CONFIDE_CERT", cert).env("CONFIDE_KEY", key);
        }
        cmd.output().expect("run confide")
    }

    /// A gRPC channel to the coordinator presenting `name`'s certificate (plaintext when insecure).
    pub async fn channel_as(&self, name: &str) -> tonic::transport::Channel {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.url()).expect("url");
        if !self.insecure {
            let (ca, cert, key) = self.tls_files(name);
            let files = confide_tls::TlsFiles { ca, cert, key };
            endpoint = endpoint.tls_config(confide_tls::client_config(&files, "127.0.0.1").expect("tls")).expect("tls config");
        }
        endpoint.connect().await.expect("connect")
    }

    /// Writes a job file (its `schema` pointing at the Telco schema) and submits it; returns the id.
    pub fn submit(&self, job_toml: &str) -> String {
        let path = self.dir.path().join(format!("job-{}.toml", std::process::id() ^ rand_suffix()));
        std::fs::write(&path, job_toml).expect("job file");
        self.submit_file(&path)
    }

    /// Submits a job file as it is (relative paths in it resolve against its folder) and
    /// returns the job id.
    pub fn submit_file(&self, path: &Path) -> String {
        let out = self.confide(&["job", "submit", path.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "submit failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `n` workers are connected (`confide workers`).
    pub fn wait_workers(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.confide(&["workers"]);
            let connected = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" connected ")).count();
            if connected >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {connected} of {n} workers connected\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The coordinator's Prometheus metrics (`GET /metrics`).
    pub fn scrape_metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics_addr).expect("metrics endpoint");
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// `confide job get ID --json`.
    pub fn job(&self, id: &str) -> Value {
        let out = self.confide(&["job", "get", id, "--json"]);
        assert!(out.status.success(), "job get failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("job JSON")
    }

    /// Polls until `pred(job)` holds, failing with the logs after `timeout`.
    pub fn wait_for(&self, id: &str, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.confide(&["job", "get", id, "--json"]);
            if out.status.success() {
                let job: Value = serde_json::from_slice(&out.stdout).expect("job JSON");
                if pred(&job) {
                    return job;
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting for {what}; job: {job:#}\n{}", self.logs());
                }
            } else if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the job reaches a final status and returns it.
    pub fn wait_finished(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, "the job to finish", |j| {
            matches!(j["status"].as_str(), Some("completed" | "failed" | "cancelled"))
        })
    }

    /// All process logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- coordinator ---\n{}", tail(&self.read_log("coordinator")));
        for id in self.workers.keys() {
            s.push_str(&format!("--- {id} ---\n{}", tail(&self.read_log(id))));
        }
        s
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n") + "\n"
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed) << 16
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<String> = self.workers.keys().cloned().collect();
        for id in ids {
            self.kill_worker(&id);
        }
        self.kill_coordinator();
    }
}

/// Scripts the example custom model (`examples/custom_model/make_model.py`, run with the
/// project's venv python) into `out` as `model.pt` and `init.safetensors` for `input_dim`
/// inputs, with extra script arguments; returns the module's SHA-256.
pub fn script_custom_model(out: &Path, input_dim: usize, extra: &[&str]) -> String {
    let run = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("examples/custom_model/make_model.py"))
        .args(["--input-dim", &input_dim.to_string(), "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("the project's venv python runs");
    assert!(run.status.success(), "make_model.py: {}", String::from_utf8_lossy(&run.stderr));
    let hash = confide_core::sha256_hex(&std::fs::read(out.join("model.pt")).expect("model.pt"));
    assert!(String::from_utf8_lossy(&run.stdout).contains(&hash), "make_model.py prints the module's hash");
    hash
}

/// A Telco churn job file with the given extra lines appended to the `[training]` table header
/// section; `schema` points at the repository's schema by absolute path.
pub fn telco_job(name: &str, model: &str, rounds: u64, extra: &str) -> String {
    let (_, schema) = telco();
    format!(
        "name = \"{name}\"\ndataset = \"telco_churn\"\nschema = \"{}\"\nseed = 7\n{extra}\n[model]\n{model}\n\n[training]\nrounds = {rounds}\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.05\noptimizer = \"momentum\"\n",
        schema.display()
    )
}

/// A TLS server on 127.0.0.1 presenting `cert`/`key` and requiring a client certificate
/// signed by `trusted_ca`, that completes handshakes and then says nothing: it stands in for a
/// coordinator with a certificate the real one refuses to start with (expired, from another
/// CA, in another role) or one that trusts another CA. Runs until the test process exits;
/// returns its address.
pub fn tls_stand_in(trusted_ca: &Path, cert: &Path, key: &Path) -> String {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |p: &Path| CertificateDer::pem_file_iter(p).expect("pem").collect::<Result<Vec<_>, _>>().expect("certs");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(trusted_ca) {
        roots.add(c).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert), PrivateKeyDer::from_pem_file(key).expect("key"))
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        // Hold the connection a moment (the client reads our silence), then close.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    }
                });
            }
        });
    });
    addr
}
