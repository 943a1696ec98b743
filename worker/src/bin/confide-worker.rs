//! `confide-worker`: a bank's worker daemon. Dials out to the coordinator, trains on local data
//! with libtorch, and sends only securely aggregated contributions.
//!
//! `confide-worker --config bank.toml` runs the daemon; `confide-worker audit show|verify
//! --config bank.toml` reads the bank's audit log of everything it sent; `confide-worker budget
//! show --config bank.toml` what each dataset's privacy budget has left.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confide_worker::audit::{self, Record};
use confide_worker::budget;
use confide_worker::config::WorkerConfig;

/// Confide worker daemon (one per institution).
#[derive(Debug, Parser)]
#[command(version, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Args {
    /// Worker configuration file (TOML).
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    /// Coordinator URL, overriding the configuration file's `coordinator`.
    #[arg(long)]
    coordinator: Option<String>,
    /// Connect in plaintext without a certificate. Development only: prints a warning.
    #[arg(long)]
    insecure_dev: bool,
    /// Something other than running the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The bank's audit log (`data_dir/audit.log`): every upload, recorded before it was sent.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The bank's privacy-budget ledger (`data_dir/privacy_budget.json`), read-only.
    #[command(subcommand)]
    Budget(BudgetCommand),
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// Per dataset: budget, δ, ε spent (training split, test split, total = the larger),
    /// remaining, charges and per-job totals; says when a non-DP job voided the bound.
    Show {
        /// Worker configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Lists the records: time, job, round, phase, what was sent, vector length, participants,
    /// threshold, reason.
    Show {
        /// Worker configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this job's records.
        #[arg(long)]
        job: Option<String>,
        /// The records as JSON lines, exactly as stored.
        #[arg(long)]
        json: bool,
    },
    /// Checks the chain and every signature (by the bank's identity); exit 1 naming the first
    /// bad record.
    Verify {
        /// Worker configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also print this job's audit head (its latest record), to match against the model card.
        #[arg(long)]
        job: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    match (args.command, args.config) {
        (Some(Command::Audit(command)), _) => audit_command(command),
        (Some(Command::Budget(BudgetCommand::Show { config, json })), _) => budget_show(&config, json),
        (None, Some(config)) => daemon(&config, args.coordinator, args.insecure_dev).await,
        (None, None) => {
            eprintln!("confide-worker: --config is required");
            ExitCode::from(2)
        }
    }
}

/// Reads a configuration file, reporting an unreadable one (exit 2).
fn read_config(path: &Path) -> Result<WorkerConfig, ExitCode> {
    WorkerConfig::from_file(path).map_err(|e| {
        eprintln!("confide-worker: {e}");
        ExitCode::from(2)
    })
}

async fn daemon(path: &Path, coordinator: Option<String>, insecure_dev: bool) -> ExitCode {
    let mut config = match read_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(url) = coordinator {
        config.coordinator = url;
    }
    config.insecure_dev = insecure_dev && config.tls.is_none();
    if config.insecure_dev {
        eprintln!("confide-worker: WARNING: --insecure-dev: plaintext, unauthenticated connection (development only)");
    }
    if let Err(e) = config.validate() {
        eprintln!("confide-worker: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let worker = match confide_worker::daemon::start(config) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("confide-worker: {e}");
            return if e.is_bad_input() { ExitCode::from(2) } else { ExitCode::FAILURE };
        }
    };
    // The operator sees at once what is not offered, and why (the log has it too).
    for (name, problem) in worker.compute.catalog().problems() {
        eprintln!("confide-worker: dataset `{name}` is unavailable and not offered: {problem}");
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    match confide_worker::daemon::run(worker, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        // The coordinator cannot be used as configured, or refuses this identity (README: 3).
        Err(e) => {
            eprintln!("confide-worker: {e}");
            ExitCode::from(3)
        }
    }
}

/// Writes a command's output. A reader that went away (`| head`) ends the command quietly
/// with exit 0 instead of the panic `println!` gives.
fn emit(text: &str) -> Result<(), ExitCode> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("confide-worker: writing the output: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn audit_command(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Show { config, job, json } => {
            let config = match read_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let records = match audit::read_records(&confide_worker::daemon::audit_path(&config)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("confide-worker: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let shown = records.iter().filter(|r| job.as_deref().is_none_or(|j| r.entry.job == j));
            if json {
                for r in shown {
                    match serde_json::to_string(r) {
                        Ok(line) => {
                            if let Err(code) = emit(&format!("{line}\n")) {
                                return code;
                            }
                        }
                        Err(e) => {
                            eprintln!("confide-worker: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                ExitCode::SUCCESS
            } else {
                emit(&table(shown)).map_or_else(|code| code, |()| ExitCode::SUCCESS)
            }
        }
        AuditCommand::Verify { config, job } => {
            let config = match read_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let key = match confide_worker::daemon::audit_key(&config) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("confide-worker: {e}");
                    return ExitCode::from(2);
                }
            };
            match audit::verify(&confide_worker::daemon::audit_path(&config), &key) {
                Ok(report) => {
                    let mut text = format!("{} records, chain and signatures intact, head {}\n", report.records, report.head);
                    match job.map(|j| (report.heads.get(&j).cloned(), j)) {
                        Some((Some(head), job)) => text.push_str(&format!("job {job}: audit head {head}\n")),
                        Some((None, job)) => text.push_str(&format!("job {job}: no records\n")),
                        None => {}
                    }
                    emit(&text).map_or_else(|code| code, |()| ExitCode::SUCCESS)
                }
                Err(e) => {
                    let _ = emit(&format!("audit log NOT intact: {e}\n"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `budget show`: the ledger as the running worker last wrote it (it is replaced atomically, so
/// this reads a whole version).
fn budget_show(path: &Path, json: bool) -> ExitCode {
    let config = match read_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ledger = match budget::read_ledger(&confide_worker::daemon::budget_path(&config), &config.institution_id) {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => {
            eprintln!("confide-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limits = confide_worker::daemon::budget_limits(&config);
    let mut names: Vec<&String> = limits.keys().chain(ledger.keys()).collect();
    names.sort();
    names.dedup();
    let mut views = Vec::new();
    for name in names {
        let limit = limits.get(name).copied().unwrap_or_default();
        let empty = budget::DatasetLedger::default();
        match dataset_view(name, limit, ledger.get(name).unwrap_or(&empty)) {
            Ok(v) => views.push(v),
            Err(e) => {
                eprintln!("confide-worker: dataset `{name}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let text = if json {
        let doc = serde_json::json!({ "institution": config.institution_id, "datasets": views });
        format!("{doc:#}\n")
    } else {
        views.iter().map(budget_text).collect::<Vec<_>>().join("\n")
    };
    emit(&text).map_or_else(|code| code, |()| ExitCode::SUCCESS)
}

/// One dataset's ledger as `budget show --json` prints it.
fn dataset_view(name: &str, limit: budget::Limits, d: &budget::DatasetLedger) -> Result<serde_json::Value, confide_worker::failure::Failure> {
    let (train, test, total) = d.epsilons(limit.delta)?;
    let mut jobs = serde_json::Map::new();
    for (job, j) in &d.jobs {
        let epsilon = match j.delta {
            Some(_) => Some(j.spend.epsilon(limit.delta).map_err(confide_worker::failure::Failure::internal)?),
            None => None,
        };
        jobs.insert(job.clone(), serde_json::json!({ "dp": j.delta.is_some(), "delta": j.delta, "epsilon": epsilon, "tasks": j.tasks }));
    }
    Ok(serde_json::json!({
        "dataset": name,
        "epsilon_budget": limit.epsilon_budget,
        "delta": limit.delta,
        "require_dp": limit.require_dp,
        "epsilon_spent": { "train": train, "test": test, "total": total },
        "remaining": limit.epsilon_budget.map(|b| (b - total).max(0.0)),
        "charges": d.charges.len(),
        "jobs": jobs,
        "void": d.void(),
        "non_dp_jobs": d.non_dp_jobs,
    }))
}

/// One dataset's view as text.
fn budget_text(v: &serde_json::Value) -> String {
    let num = |x: &serde_json::Value| x.as_f64().map_or_else(|| "-".to_string(), |f| format!("{f:.4}"));
    let spent = &v["epsilon_spent"];
    let mut out = format!("dataset {}\n", v["dataset"].as_str().unwrap_or_default());
    let budget = v["epsilon_budget"].as_f64().map_or_else(|| "none (accounted, not limited)".to_string(), |b| b.to_string());
    out.push_str(&format!("  budget     ε = {budget} at δ = {:e}{}\n", v["delta"].as_f64().unwrap_or_default(), if v["require_dp"] == true { ", DP required" } else { "" }));
    out.push_str(&format!("  spent      ε = {} (training split {}, test split {})\n", num(&spent["total"]), num(&spent["train"]), num(&spent["test"])));
    out.push_str(&format!("  remaining  ε = {}\n", num(&v["remaining"])));
    out.push_str(&format!("  charges    {}\n", v["charges"]));
    if let Some(jobs) = v["jobs"].as_object() {
        for (job, j) in jobs {
            let what = if j["dp"] == true { format!("ε = {}", num(&j["epsilon"])) } else { "not DP".to_string() };
            out.push_str(&format!("  job {job}: {what}, {} tasks\n", j["tasks"]));
        }
    }
    if v["void"] == true {
        let jobs: Vec<&str> = v["non_dp_jobs"].as_array().map(|a| a.iter().filter_map(|j| j.as_str()).collect()).unwrap_or_default();
        out.push_str(&format!(
            "  BOUND VOID: jobs that were not differentially private used this dataset ({}); the ε above covers only the DP jobs\n",
            jobs.join(", ")
        ));
    }
    out
}

/// The records as an aligned text table.
fn table<'a>(records: impl Iterator<Item = &'a Record>) -> String {
    const HEADER: [&str; 10] = ["SEQ", "TIME", "JOB", "ROUND", "PHASE", "WHAT", "LEN", "PARTICIPANTS", "THRESHOLD", "REASON"];
    let rows: Vec<[String; 10]> = records
        .map(|r| {
            let e = &r.entry;
            let dash = || "-".to_string();
            [
                r.seq.to_string(),
                e.time.clone(),
                e.job.clone(),
                e.round.to_string(),
                e.phase.as_str().to_string(),
                e.sent.as_str().to_string(),
                e.vector_len.map_or_else(dash, |n| n.to_string()),
                if e.participants.is_empty() { dash() } else { e.participants.join(",") },
                e.threshold.map_or_else(dash, |t| t.to_string()),
                match (&e.failure, &e.budget) {
                    (Some(f), _) => format!("{}: {}", f.kind, f.reason),
                    (None, Some(b)) => format!(
                        "dataset {}: ε {:.4} spent, {:.4} in total at δ = {:e}, {}",
                        b.dataset,
                        b.epsilon,
                        b.cumulative,
                        b.delta,
                        b.remaining.map_or_else(|| "no budget".to_string(), |r| format!("{r:.4} remaining"))
                    ),
                    (None, None) => dash(),
                },
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
