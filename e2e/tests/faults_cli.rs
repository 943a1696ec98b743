//! The CLI as a user meets it when things go wrong: exit codes follow the README for every
//! command (0 success, 1 the watched job failed or was cancelled, 2 bad input, 3 the coordinator
//! could not be reached or refused), a reader that closes the pipe early (`| head`) ends the
//! command quietly with exit 0, and errors never repeat megabytes of input.

use std::process::{Command, Stdio};
use std::time::Duration;

use confide_e2e::{Cluster, binary, telco, telco_job};

/// Runs `confide` against the cluster and returns (exit code, stderr).
fn run(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let out = cluster.confide(args);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn exit_codes_follow_the_readme_for_every_command() {
    let cluster = Cluster::start();
    let dir = cluster.dir.path();
    let (_, schema) = telco();
    let job_file = dir.join("job.toml");
    std::fs::write(&job_file, telco_job("exit-codes", "kind = \"logistic_regression\"", 2, "")).expect("job file");
    let job_path = job_file.to_str().expect("utf-8");

    // 2: bad input, before anything is sent.
    let missing_schema = dir.join("missing_schema.toml");
    std::fs::write(&missing_schema, telco_job("x", "kind = \"logistic_regression\"", 2, "").replace(&schema.display().to_string(), "/no/such/schema.toml"))
        .expect("job file");
    let schema_arg = schema.to_str().expect("utf-8");
    let out_dir = dir.join("out");
    let out_arg = out_dir.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["job", "submit", "/no/such/job.toml"], 2, "/no/such/job.toml"),
        (vec!["job", "submit", missing_schema.to_str().expect("utf-8")], 2, "/no/such/schema.toml"),
        (vec!["--coordinator", "notaurl", "job", "list"], 2, "not a coordinator URL"),
        (vec!["--coordinator", "ftp://127.0.0.1:7070", "job", "list"], 2, "not a coordinator URL"),
        (vec!["schema", "width", "/no/such/schema.toml"], 2, "/no/such/schema.toml"),
        (vec!["schema", "width", schema_arg], 0, ""),
        (vec!["privacy", "epsilon", "--sampling-rate", "2", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], 2, "sampling rate must be in [0, 1]"),
        (vec!["privacy", "epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1", "--steps", "10", "--delta", "0"], 2, "delta must be in (0, 1)"),
        // 2: the request names something that does not exist.
        (vec!["job", "get", "no-such-job"], 2, "no job `no-such-job`"),
        (vec!["job", "watch", "no-such-job"], 2, "no job `no-such-job`"),
        (vec!["job", "cancel", "no-such-job"], 2, "no-such-job"),
        (vec!["job", "report", "no-such-job", "-o", out_arg], 2, "no job `no-such-job`"),
        (vec!["model", "pull", "no-such-job", "-o", out_arg], 2, "no-such-job"),
        (vec!["model", "export", "no-such-job", "-o", out_arg], 2, "no job `no-such-job`"),
        // 3: the coordinator cannot be reached.
        (vec!["--coordinator", "https://127.0.0.1:1", "job", "list"], 3, "cannot reach the coordinator"),
        (vec!["job", "list"], 0, ""),
        (vec!["workers"], 0, ""),
    ];
    for (args, code, message) in &cases {
        let (got, err) = run(&cluster, args);
        assert_eq!(got, Some(*code), "confide {args:?} must exit {code}: {err}");
        assert!(err.contains(message), "confide {args:?} must say {message:?}: {err}");
        assert!(!err.contains("panicked"), "confide {args:?} panicked: {err}");
    }

    // A job nobody can run yet: it exists, has no model, and watching it once cancelled exits 1.
    let out = cluster.confide(&["job", "submit", job_path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(run(&cluster, &["job", "get", &id]).0, Some(0));
    let (code, err) = run(&cluster, &["model", "pull", &id, "-o", dir.join("m.safetensors").to_str().expect("utf-8")]);
    assert_eq!(code, Some(2), "a job without a model is bad input: {err}");
    let (code, err) = run(&cluster, &["model", "export", &id, "-o", out_arg]);
    assert_eq!(code, Some(2), "a job without a model is bad input: {err}");
    assert!(err.contains("has no model yet"), "{err}");
    assert_eq!(run(&cluster, &["job", "cancel", &id]).0, Some(0));
    let (code, err) = run(&cluster, &["job", "watch", &id]);
    assert_eq!(code, Some(1), "watching a cancelled job exits 1: {err}");
}

/// Starts `confide ARGS` with its standard output already closed by the reader, as
/// `confide ... | head -0` does, and returns (exit code, stderr).
fn run_into_closed_pipe(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary("confide"));
    cmd.args(args).env("CONFIDE_COORDINATOR", cluster.url()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (ca, cert, key) = cluster.tls_files("tester");
    cmd.env("CONFIDE_CA", ca).env("CONFIDE_CERT", cert).env("CONFIDE_KEY", key);
    let mut child = cmd.spawn().expect("spawn confide");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_command_quietly() {
    let (cluster, _) = Cluster::telco_federation(3, 21);
    cluster.wait_workers(3, Duration::from_secs(60));
    let id = cluster.submit(&telco_job("pipe", "kind = \"logistic_regression\"", 2, ""));
    let job = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(job["status"], "completed", "{job:#}\n{}", cluster.logs());
    let (_, schema) = telco();
    for args in [
        vec!["job", "watch", id.as_str()],
        vec!["job", "get", id.as_str()],
        vec!["job", "get", id.as_str(), "--json"],
        vec!["job", "list"],
        vec!["workers"],
        vec!["schema", "width", schema.to_str().expect("utf-8"), "--features"],
    ] {
        let (code, err) = run_into_closed_pipe(&cluster, &args);
        assert_eq!(code, Some(0), "confide {args:?} into a closed pipe must exit 0: {err}");
        assert!(err.is_empty(), "confide {args:?} into a closed pipe must say nothing: {err}");
    }
    // The bank's audit log, read into a closed pipe, likewise.
    let config = cluster.dir.path().join("bank1.toml");
    for args in [vec!["audit", "show", "--config"], vec!["audit", "show", "--json", "--config"], vec!["audit", "verify", "--config"]] {
        let mut child = Command::new(binary("confide-worker"))
            .args(&args)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn confide-worker");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "confide-worker {args:?} into a closed pipe must exit 0: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The same watch into an open pipe still exits 0 and shows every round.
    let out = cluster.confide(&["job", "watch", &id]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("round   2") && text.contains("completed after 2 rounds"), "{text}");
}

#[test]
fn errors_quote_at_most_a_few_hundred_bytes_of_input() {
    let cluster = Cluster::start();
    // A job file with a megabyte-long value: the parser's error names line and column and
    // quotes a capped excerpt, not the whole line.
    let job = telco_job("big", "kind = \"logistic_regression\"", 2, "").replace("rounds = 2", &format!("rounds = \"{}\"", "x".repeat(1 << 20)));
    let path = cluster.dir.path().join("big.toml");
    std::fs::write(&path, job).expect("job file");
    let (code, err) = run(&cluster, &["job", "submit", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(2), "{}", &err[..err.len().min(2000)]);
    assert!(err.len() < 4096, "the error is {} bytes long", err.len());
    assert!(err.contains("big.toml") && err.contains("line ") && err.contains("more bytes"), "{err}");
    // A long coordinator URL (an argument can be at most 128 KiB) is quoted capped too.
    let url = format!("notaurl{}", "y".repeat(100_000));
    let (code, err) = run(&cluster, &["--coordinator", &url, "job", "list"]);
    assert_eq!(code, Some(2));
    assert!(err.len() < 4096 && err.contains("more bytes"), "the error is {} bytes long", err.len());
}

#[test]
fn a_worker_exits_2_for_what_its_configuration_gets_wrong() {
    let cluster = Cluster::start();
    let partition = confide_e2e::partition_telco(&cluster.dir.path().join("partition"), 1, 3);
    let (_, schema) = telco();
    let bank = partition.join("bank1");
    let config = cluster.write_worker_config("bank1", &[("telco_churn", &schema, &bank.join("train.csv"), &bank.join("test.csv"))], "");
    let text = std::fs::read_to_string(&config).expect("config");
    let run_with = |toml: &str| {
        let path = cluster.dir.path().join("variant.toml");
        std::fs::write(&path, toml).expect("variant");
        let out = Command::new(binary("confide-worker")).arg("--config").arg(&path).stdin(Stdio::null()).output().expect("run worker");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // libtorch on this machine sees no CUDA device (the suite runs on CPUs).
    let (code, err) = run_with(&text.replace("device = \"cpu\"", "device = \"cuda\""));
    assert_eq!(code, Some(2), "a device the machine lacks is bad input: {err}");
    assert!(err.contains("compute.device = \"cuda\""), "{err}");
    let missing_schema = text.replace(&schema.display().to_string(), "/no/such/schema.toml");
    let (code, err) = run_with(&missing_schema);
    assert_eq!(code, Some(2), "a missing schema file is bad input: {err}");
    assert!(err.contains("/no/such/schema.toml"), "{err}");
    let (code, err) = run_with(&text.replace("threads = 1", "threds = 1"));
    assert_eq!(code, Some(2), "a misspelt key is bad input: {err}");
    assert!(err.contains("threds"), "{err}");
    let out = Command::new(binary("confide-worker")).args(["--config", "/no/such/bank.toml"]).output().expect("run worker");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_data_file_with_a_megabyte_header_line_is_reported_in_a_few_hundred_bytes() {
    let cluster = Cluster::start();
    let partition = confide_e2e::partition_telco(&cluster.dir.path().join("partition"), 1, 5);
    let (_, schema) = telco();
    let bank = partition.join("bank1");
    // The header grows by one undeclared column whose name is a megabyte long.
    let train = bank.join("train.csv");
    let text = std::fs::read_to_string(&train).expect("train.csv");
    let (header, rows) = text.split_once('\n').expect("header line");
    let long = "z".repeat(1 << 20);
    let widened: String = rows.lines().map(|l| format!("{l},0\n")).collect();
    std::fs::write(&train, format!("{header},{long}\n{widened}")).expect("write");
    let config = cluster.write_worker_config("bank1", &[("telco_churn", &schema, &train, &bank.join("test.csv"))], "");
    let out = Command::new(binary("confide-worker")).arg("--config").arg(&config).stdin(Stdio::null()).output().expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "no usable dataset: {}", &err[..err.len().min(2000)]);
    assert!(err.contains("is not in the schema") && err.contains("more bytes"), "{}", &err[..err.len().min(2000)]);
    assert!(err.len() < 8192, "the worker's error is {} bytes long", err.len());
}
