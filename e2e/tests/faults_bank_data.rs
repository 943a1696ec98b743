//! Banks check their data before they offer it, and refuse what cannot work, with real
//! coordinator, worker and CLI processes: a missing, empty or corrupt data file is named (file,
//! line, column) to the bank's operator at start and the dataset is not offered — a bank with
//! nothing usable exits 2, one with something usable runs and the coordinator sees the rest as
//! `unavailable`; a file that goes bad while the worker runs withdraws the offer until it is
//! fixed; training labels of one class are refused with that typed reason; and a policy that
//! cannot serve the whole job refuses it at the first task, naming the policy key.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use confide_e2e::{Cluster, binary, partition_telco, telco, telco_job};

/// Rewrites every data line of a CSV, setting the cell of `column` with `edit(line number, cell)`.
fn edit_column(path: &Path, column: &str, edit: impl Fn(usize, &str) -> String) {
    let text = std::fs::read_to_string(path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let col = lines[0].split(',').position(|h| h == column).expect("column");
    for (i, line) in lines.iter_mut().enumerate().skip(1) {
        let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
        cells[col] = edit(i + 1, &cells[col]);
        *line = cells.join(",");
    }
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

/// Puts `value` into the cell of `column` on (1-based) line `line`.
fn corrupt(path: &Path, line: usize, column: &str, value: &str) {
    edit_column(path, column, |n, cell| if n == line { value.to_string() } else { cell.to_string() });
}

/// Removes `column` from a CSV.
fn drop_column(path: &Path, column: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    let col = text.lines().next().and_then(|h| h.split(',').position(|c| c == column)).expect("column");
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != col).map(|(_, c)| c).collect::<Vec<_>>().join(","))
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

/// Runs a worker from `config` until it exits (failing after a minute): its exit code and stderr.
fn run_to_exit(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(binary("confide-worker"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    (status.code(), stderr)
}

/// `log` without its terminal colours (the workers' log lines are coloured).
fn plain_text(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence `ESC [ … m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `bank`'s line in `confide workers` (empty when it is not listed).
fn workers_line(cluster: &Cluster, bank: &str) -> String {
    let out = cluster.confide(&["workers"]);
    String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with(bank)).unwrap_or_default().to_string()
}

/// Polls `confide workers` until `bank`'s line satisfies `pred`.
fn wait_line(cluster: &Cluster, bank: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = workers_line(cluster, bank);
        if pred(&line) {
            return line;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {line:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_bank_with_no_usable_dataset_exits_2_naming_the_file_line_and_column() {
    let cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 5, 5);
    let (_, schema) = telco();
    let bank = |i: usize| partition.join(format!("bank{i}"));
    std::fs::remove_file(bank(1).join("test.csv")).expect("a missing test split");
    std::fs::write(bank(2).join("train.csv"), "").expect("an empty training file");
    corrupt(&bank(3).join("train.csv"), 12, "tenure", "twelve");
    corrupt(&bank(4).join("test.csv"), 7, "MonthlyCharges", "NaN");
    drop_column(&bank(5).join("train.csv"), "tenure");
    let cases: [(usize, &[&str]); 5] = [
        (1, &["bank1/test.csv", "No such file"]),
        (2, &["bank2/train.csv", "the file is empty"]),
        (3, &["bank3/train.csv:12", "tenure", "twelve"]),
        (4, &["bank4/test.csv:7", "MonthlyCharges"]),
        (5, &["bank5/train.csv", "column `tenure` required by the schema is missing"]),
    ];
    for (i, details) in cases {
        let id = format!("bank{i}");
        let files = ("telco_churn", schema.as_path(), &*bank(i).join("train.csv"), &*bank(i).join("test.csv"));
        let config = cluster.write_worker_config(&id, &[files], "");
        let (code, stderr) = run_to_exit(&config);
        assert_eq!(code, Some(2), "{id}: nothing to offer is a configuration fault: {stderr}");
        assert!(stderr.contains("no configured dataset is usable: dataset `telco_churn`: "), "{id}: {stderr}");
        for detail in details {
            assert!(stderr.contains(detail), "{id}: the operator is told `{detail}`: {stderr}");
        }
    }
    let listed = String::from_utf8_lossy(&cluster.confide(&["workers"]).stdout).to_string();
    assert!(!listed.contains("bank"), "none of them registered: {listed}");
}

#[test]
fn a_bank_runs_with_its_valid_datasets_and_the_coordinator_sees_the_others_unavailable() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 2, 6);
    let (_, schema) = telco();
    // A second dataset: the Telco schema under another name, on the other partition's files.
    let copy_schema = cluster.dir.path().join("telco_copy.toml");
    let text = std::fs::read_to_string(&schema).expect("schema");
    std::fs::write(&copy_schema, text.replacen("name = \"telco_churn\"", "name = \"telco_copy\"", 1)).expect("copy");
    let (mine, other) = (partition.join("bank1"), partition.join("bank2"));
    corrupt(&mine.join("train.csv"), 30, "MonthlyCharges", "lots");
    let config = cluster.write_worker_config(
        "bank1",
        &[
            ("telco_churn", &schema, &mine.join("train.csv"), &mine.join("test.csv")),
            ("telco_copy", &copy_schema, &other.join("train.csv"), &other.join("test.csv")),
        ],
        "",
    );
    cluster.spawn_worker("bank1", &config);
    cluster.wait_workers(1, Duration::from_secs(60));
    let line = workers_line(&cluster, "bank1");
    assert!(line.contains("datasets: telco_copy (schema ") && line.ends_with("), telco_churn: unavailable (corrupt file)"), "{line}");
    assert!(!line.contains("lots") && !line.contains("MonthlyCharges") && !line.contains("train.csv"), "no contents: {line}");
    let log = cluster.read_log("bank1");
    let said = log.lines().find(|l| l.contains("dataset `telco_churn` is unavailable and not offered")).unwrap_or_default();
    assert!(said.contains("bank1/train.csv:30") && said.contains("MonthlyCharges") && said.contains("lots"), "stderr: {log}");
    assert!(log.contains("ERROR") && log.contains("dataset `telco_churn` is unavailable (corrupt file)"), "logged at once: {log}");
}

#[test]
fn a_data_file_that_goes_bad_while_the_worker_runs_withdraws_the_offer_until_it_is_fixed() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 2, 7);
    cluster.add_telco_worker("bank1", &partition);
    cluster.wait_workers(1, Duration::from_secs(60));
    assert!(workers_line(&cluster, "bank1").contains("datasets: telco_churn (schema "));
    let train = partition.join("bank1/train.csv");
    let good = std::fs::read(&train).expect("read");
    corrupt(&train, 5, "tenure", "soon");
    let line = wait_line(&cluster, "bank1", "the offer to be withdrawn", |l| l.contains("telco_churn: unavailable (corrupt file)"));
    assert!(line.contains(" connected "), "the worker stays connected: {line}");
    let log = cluster.read_log("bank1");
    assert!(log.contains("bank1/train.csv:5") && log.contains("soon"), "the operator is told where: {log}");
    assert!(log.contains("datasets changed: registered again"), "{log}");
    std::fs::write(&train, good).expect("fixed");
    wait_line(&cluster, "bank1", "the offer to be restored", |l| l.contains("datasets: telco_churn (schema "));
    assert!(cluster.read_log("bank1").contains("dataset `telco_churn` checked again: valid, offered"));
}

/// Three ordinary banks and a fourth from another partition of the data, with `edit` applied to
/// its training file and `policy` lines in its configuration.
fn with_bank4(seed: u64, edit: impl FnOnce(&Path), policy: &str) -> Cluster {
    let (mut cluster, partition) = Cluster::telco_federation(3, seed);
    let bank4 = partition.join("../partition4");
    partition_telco(&bank4, 4, seed);
    let (_, schema) = telco();
    let dir = bank4.join("bank4");
    edit(&dir.join("train.csv"));
    let config =
        cluster.write_worker_config("bank4", &[("telco_churn", &schema, &dir.join("train.csv"), &dir.join("test.csv"))], policy);
    cluster.spawn_worker("bank4", &config);
    cluster.wait_workers(4, Duration::from_secs(60));
    cluster
}

/// `bank`'s outcome in each round of a finished job.
fn outcomes(done: &serde_json::Value, bank: &str) -> Vec<serde_json::Value> {
    let rounds = done["rounds"].as_array().cloned().unwrap_or_default();
    rounds
        .iter()
        .filter_map(|r| r["participants"].as_array().and_then(|ps| ps.iter().find(|p| p["worker_id"] == bank)).cloned())
        .collect()
}

#[test]
fn training_labels_of_one_class_are_refused_with_the_typed_reason_and_nothing_more() {
    let cluster = with_bank4(11, |train| edit_column(train, "Churn", |_, _| "No".into()), "");
    assert!(cluster.read_log("bank4").contains("all training labels are one class"), "the operator is warned at start");
    assert!(workers_line(&cluster, "bank4").contains("datasets: telco_churn (schema "), "offered (its test split serves evaluation)");
    let job = cluster.submit(&telco_job("one-class", "kind = \"logistic_regression\"", 1, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(180));
    assert_eq!(done["status"], "completed", "the others train without it: {done:#}\n{}", cluster.logs());
    let bank4 = outcomes(&done, "bank4");
    let first = bank4.first().expect("bank4 was selected for round 1");
    assert_eq!(first["status"], "refused", "{first:#}");
    // The typed refusal only: not which class, nor how many rows.
    assert_eq!(first["reason"], "all training labels are one class", "{first:#}");
    let text = String::from_utf8_lossy(&cluster.confide(&["job", "get", &job]).stdout).to_string();
    assert!(text.contains("bank4 refused"), "{text}");
}

#[test]
fn a_policy_that_cannot_serve_the_whole_job_refuses_it_at_the_first_task_naming_the_key() {
    // No shared error details: a policy reason is the bank's rules, not its data.
    let cluster = with_bank4(13, |_| {}, "[policy]\nmax_rounds_per_job = 2\n");
    let job = cluster.submit(&telco_job("three-rounds", "kind = \"logistic_regression\"", 3, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let reason = "the job has 3 rounds; this bank contributes to at most 2 rounds of a job (policy.max_rounds_per_job = 2)";
    let bank4 = outcomes(&done, "bank4");
    let first = bank4.first().expect("bank4 was selected for round 1");
    assert_eq!((&first["status"], first["reason"].as_str()), (&"refused".into(), Some(reason)), "round 1, not round 3: {first:#}");
    assert!(bank4.iter().all(|o| o["status"] != "contributed"), "bank4 took no part in any round: {bank4:?}");
    // Its very first task, the job's statistics (round 0), was already refused.
    let log = plain_text(&cluster.read_log("bank4"));
    let stats = log.lines().find(|l| l.contains("task failed") && l.contains("round=0"));
    assert!(stats.is_some_and(|l| l.contains(reason)), "the statistics task is refused: {log}");
}
