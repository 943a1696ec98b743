//! Storage faults, provoked as they happen to an operator: the state database emptied (a bad
//! restore), its write-ahead log deleted after a crash (committed transactions rolled back),
//! and the data directory's disk filling up during a job. The coordinator refuses lost state
//! at start with what it found and how to recover (exit 2), overwriting nothing; a full disk
//! stalls the job with a visible reason until space returns, and no committed round is lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use confide_e2e::{Cluster, binary, partition_telco, telco_job};

/// A plaintext coordinator this test starts and stops itself (a clean stop, SIGINT, lets SQLite
/// fold its write-ahead log into the database, which the WAL test needs).
struct Coordinator {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Coordinator {
    /// Starts a coordinator on `dir/data`, logging to `dir/coordinator.log`.
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// [`Self::start`] with extra flags.
    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let addr_file = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = || std::fs::OpenOptions::new().create(true).append(true).open(dir.join("coordinator.log")).expect("log");
        let child = Command::new(binary("confide-coordinator"))
            .args(["--insecure-dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("spawn coordinator");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                return Self { child, url: format!("http://{}", addr.trim()), dir: dir.to_path_buf() };
            }
            assert!(Instant::now() < deadline, "coordinator did not start:\n{}", read(&dir.join("coordinator.log")));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn confide(&self, args: &[&str]) -> Output {
        Command::new(binary("confide")).args(args).env("CONFIDE_COORDINATOR", &self.url).stdin(Stdio::null()).output().expect("confide")
    }

    /// Submits a Telco job (no bank is connected: it waits) and returns its id.
    fn submit(&self, name: &str) -> String {
        let file = self.dir.join(format!("{name}.toml"));
        std::fs::write(&file, telco_job(name, "kind = \"logistic_regression\"", 3, "")).expect("job file");
        let out = self.confide(&["job", "submit", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn job_list(&self) -> String {
        let out = self.confide(&["job", "list"]);
        assert!(out.status.success(), "job list: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops with SIGINT (a clean shutdown) and waits.
    fn stop(mut self) {
        let sent = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill -INT");
        assert!(sent.success());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "clean shutdown: {status}\n{}", read(&self.dir.join("coordinator.log")));
    }

    /// SIGKILLs the coordinator: SQLite's write-ahead log stays as it was.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs the coordinator on `data_dir` expecting it to refuse to start; returns its exit code
/// and stderr.
fn refused_start(data_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary("confide-coordinator"))
        .args(["--insecure-dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the coordinator started on lost state instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_emptied_state_database_is_refused_with_how_to_recover_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let coordinator = Coordinator::start(dir.path());
    let jobs = [coordinator.submit("churn-a"), coordinator.submit("churn-b")];
    coordinator.stop();
    let db = data.join("state.sqlite3");
    let backup = dir.path().join("backup.sqlite3");
    std::fs::copy(&db, &backup).expect("the operator's backup");
    let manifest = std::fs::read(data.join("manifest.json")).expect("the store keeps a manifest");

    // A restore gone wrong: the database is there, but empty.
    std::fs::File::create(&db).expect("truncate to 0 bytes");
    let (code, stderr) = refused_start(&data, &[]);
    assert_eq!(code, Some(2), "lost state is bad input the operator must fix: {stderr}");
    assert!(stderr.contains(&format!("refusing to start on the state in {}", data.display())), "{stderr}");
    assert!(stderr.contains("state.sqlite3 is empty (0 bytes) but this data directory holds manifest.json (store "), "{stderr}");
    assert!(
        stderr.contains("restore state.sqlite3 (with its -wal file) from a backup")
            && stderr.contains("move the data directory aside")
            && stderr.contains("--accept-state-loss"),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&db).expect("db").len(), 0, "the empty database was not initialised");
    assert_eq!(std::fs::read(data.join("manifest.json")).expect("manifest"), manifest, "the manifest was not overwritten");

    // The advice works: with the backup restored every job is back.
    std::fs::copy(&backup, &db).expect("restore");
    let coordinator = Coordinator::start(dir.path());
    let list = coordinator.job_list();
    for id in &jobs {
        assert!(list.contains(id.as_str()), "job {id} is back:\n{list}");
    }
}

#[test]
fn a_deleted_write_ahead_log_is_refused_naming_the_missing_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let coordinator = Coordinator::start(dir.path());
    let first = coordinator.submit("before-checkpoint");
    // A clean stop folds the log into the database file.
    coordinator.stop();
    let wal = data.join("state.sqlite3-wal");
    assert!(std::fs::metadata(&wal).map_or(true, |m| m.len() == 0), "a clean stop checkpoints the WAL");

    let coordinator = Coordinator::start(dir.path());
    let later = [coordinator.submit("in-the-wal-1"), coordinator.submit("in-the-wal-2")];
    coordinator.kill();
    assert!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0, "the killed coordinator's commits are in the WAL");
    let manifest = std::fs::read(data.join("manifest.json")).expect("manifest");
    std::fs::remove_file(&wal).expect("the WAL is lost");
    let _ = std::fs::remove_file(data.join("state.sqlite3-shm"));

    let (code, stderr) = refused_start(&data, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let missing = stderr
        .split(" committed transaction(s) are missing")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("names how many commits are missing: {stderr}"));
    assert!(missing >= 2, "at least the two submissions: {stderr}");
    assert!(stderr.contains("but manifest.json recorded commit") && stderr.contains("was the state.sqlite3-wal file deleted"), "{stderr}");
    assert_eq!(std::fs::read(data.join("manifest.json")).expect("manifest"), manifest, "the manifest was not overwritten");
    let (code, stderr) = refused_start(&data, &[]);
    assert_eq!(code, Some(2), "refused again, not adopted on a second try: {stderr}");

    // Accepting the loss on purpose starts from the database as it is, which becomes the new
    // baseline: the next plain start is not refused.
    let coordinator = Coordinator::start_with(dir.path(), &["--accept-state-loss"]);
    let list = coordinator.job_list();
    assert!(list.contains(first.as_str()), "{list}");
    assert!(later.iter().all(|id| !list.contains(id.as_str())), "the lost submissions stay lost: {list}");
    coordinator.stop();
    let coordinator = Coordinator::start(dir.path());
    assert!(coordinator.job_list().contains(first.as_str()));
}

/// A tmpfs mounted over a directory for the test's lifetime (lazily unmounted on drop, so a
/// process still using it does not keep it mounted).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output().expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill the coordinator's disk and needs root (or CAP_SYS_ADMIN): mount said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path`'s folder with `path` until no space is left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5a_u8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filled up: {e}");
                break;
            }
        }
    }
    let _ = file.sync_all();
}

/// `confide job get ID` as text.
fn job_text(cluster: &Cluster, id: &str) -> String {
    let out = cluster.confide(&["job", "get", id]);
    assert!(out.status.success(), "job get: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_disk_stalls_the_job_with_the_reason_and_it_resumes_when_space_returns() {
    let mut cluster = Cluster::start();
    cluster.kill_coordinator();
    let data = cluster.dir.path().join("coordinator");
    let _disk = Tmpfs::mount(&data, "16m");
    cluster.start_coordinator();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 11);
    for i in 1..=3 {
        cluster.add_telco_worker(&format!("bank{i}"), &partition);
    }
    cluster.wait_workers(3, Duration::from_secs(60));
    let rounds = 30;
    let job = cluster.submit(&telco_job("full-disk", "kind = \"logistic_regression\"", rounds, ""));
    cluster.wait_for(&job, Duration::from_secs(120), "two rounds", |j| j["rounds_completed"].as_u64().unwrap_or(0) >= 2);

    let filler = data.join("filler");
    fill(&filler);
    // The contract with the job views: a stalled job says why (`job get` and `job watch`).
    let deadline = Instant::now() + Duration::from_secs(90);
    let stalled = loop {
        let text = job_text(&cluster, &job);
        if text.contains("stalled: no space left on device") {
            break text;
        }
        assert!(Instant::now() < deadline, "no stalled reason shown:\n{text}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let held = cluster.job(&job);
    let committed: Vec<(u64, String)> = held["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| (r["round"].as_u64().unwrap_or(0), r["model_hash"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(committed.len() < rounds as usize, "stalled before the end: {stalled}");

    std::fs::remove_file(&filler).expect("free the space");
    let done = cluster.wait_finished(&job, Duration::from_secs(300));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let after = done["rounds"].as_array().expect("rounds");
    assert_eq!(after.len(), rounds as usize, "every round, once: {done:#}");
    for (round, hash) in &committed {
        assert_eq!(after[(*round - 1) as usize]["model_hash"].as_str(), Some(hash.as_str()), "round {round} is unchanged");
    }
    assert!(!job_text(&cluster, &job).contains("stalled"), "the stalled reason is gone");
    // No checkpoint was left truncated by the full disk: each is whole and matches its hash.
    for r in after {
        let hash = r["model_hash"].as_str().expect("hash");
        let bytes = std::fs::read(data.join("checkpoints").join(format!("{hash}.safetensors"))).expect("checkpoint");
        assert_eq!(confide_core::sha256_hex(&bytes), hash);
    }
    let leftovers: Vec<_> = std::fs::read_dir(data.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
}
