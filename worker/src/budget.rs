//! The bank's privacy-budget ledger: per dataset, the record-level RDP every admitted task of a
//! differentially private job spent, computed by the bank itself with
//! [`confide_core::spend::task_spend`] from the job's public parameters and the bank's own row
//! counts (never a number the coordinator sent), against the dataset's `epsilon_budget` at its
//! `delta` (see [`crate::config::DatasetConfig`]).
//!
//! [`Budget::charge`] is the sans-IO decision plus one durable write: under one lock it checks a
//! task (and, at a job's first task, the whole job's planned spend) against what is left, adds
//! the spend and rewrites `data_dir/privacy_budget.json` atomically (temp file, fsync, rename)
//! before it answers — so the driver lets no key, share or vector leave before the charge is on
//! disk, and two tasks or jobs on one dataset can never together pass the budget.
//!
//! Charging is conservative: a task is charged when it is admitted, and a task that fails later
//! is not refunded (its noise may already have been drawn and part of its output sent). A
//! rerun of a round is a new release and is charged again. The splits are disjoint rows, so the
//! dataset's ε is the larger of the training and test splits' (parallel composition).
//!
//! A job that is not DP on a dataset voids the bound (the ledger records it, `budget show` says
//! so) unless the dataset has `require_dp`, which refuses it as `dp_required`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use confide_core::privacy::{Accountant, default_orders};
use confide_core::spend::{self, BankRows, DpJob, DpTask, Spend, SpendError};

use crate::config::DatasetConfig;
use crate::failure::{Failure, FailureKind};

/// File name of the ledger inside the worker's data directory.
pub const FILE_NAME: &str = "privacy_budget.json";

/// The ledger file's format tag: a file without it (another program's JSON) is refused.
const FORMAT: &str = "confide-privacy-budget/1";

/// What the bank allows on one dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The ε all jobs together may spend (None: unlimited, still accounted).
    pub epsilon_budget: Option<f64>,
    /// The δ the budget is stated at.
    pub delta: f64,
    /// Refuse jobs that are not DP.
    pub require_dp: bool,
}

impl Limits {
    /// The limits configured for a dataset.
    pub fn of(config: &DatasetConfig) -> Self {
        Self { epsilon_budget: config.epsilon_budget, delta: config.delta, require_dp: config.require_dp }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { epsilon_budget: None, delta: crate::config::DEFAULT_DELTA, require_dp: false }
    }
}

/// What a task does, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskClass {
    /// Preprocessing statistics (training split).
    Stats,
    /// A training round (training split).
    Train,
    /// An evaluation (test split).
    Evaluate,
}

impl TaskClass {
    /// The accountant's view of the task.
    pub fn dp_task(self) -> DpTask {
        match self {
            TaskClass::Stats => DpTask::Statistics,
            TaskClass::Train => DpTask::Training,
            TaskClass::Evaluate => DpTask::Evaluation,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskClass::Stats => "stats",
            TaskClass::Train => "train",
            TaskClass::Evaluate => "evaluate",
        }
    }
}

/// One admitted task's charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    /// The job.
    pub job: String,
    /// The round.
    pub round: u64,
    /// What the task did.
    pub task: TaskClass,
    /// This task's spend alone, as ε at the dataset's δ.
    pub epsilon: f64,
    /// The dataset's cumulative ε at its δ after this charge.
    pub epsilon_after: f64,
}

/// One job's spend on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLedger {
    /// The job's δ (None: the job is not DP).
    pub delta: Option<f64>,
    /// What its tasks spent.
    pub spend: Spend,
    /// Tasks admitted.
    pub tasks: u64,
}

/// One dataset's ledger.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetLedger {
    /// Everything spent on the dataset.
    pub spend: Spend,
    /// Every charge, in order.
    pub charges: Vec<Charge>,
    /// Per job.
    pub jobs: BTreeMap<String, JobLedger>,
    /// Jobs that were not DP and used the dataset: while any is listed the ε bound is void.
    pub non_dp_jobs: Vec<String>,
}

impl DatasetLedger {
    /// The dataset's ε at `delta` per split and in total (the larger).
    pub fn epsilons(&self, delta: f64) -> Result<(f64, f64, f64), Failure> {
        let (train, test) = self.spend.epsilons(delta).map_err(Failure::internal)?;
        Ok((train, test, train.max(test)))
    }

    /// Whether a job that was not DP used the dataset (the ε bound then says nothing).
    pub fn void(&self) -> bool {
        !self.non_dp_jobs.is_empty()
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// [`FORMAT`].
    format: String,
    /// The institution whose ledger this is (a file copied from another bank is refused).
    institution: String,
    /// Per dataset.
    datasets: BTreeMap<String, DatasetLedger>,
}

/// A task asking to be charged.
#[derive(Debug, Clone, Copy)]
pub struct ChargeRequest<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The round.
    pub round: u64,
    /// The dataset the task reads.
    pub dataset: &'a str,
    /// What the task does.
    pub task: TaskClass,
    /// The job's DP parameters (None: not DP).
    pub dp: Option<&'a DpJob>,
    /// The bank's own row counts of the dataset (None: unknown).
    pub rows: Option<BankRows>,
}

/// What an admitted DP task was charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charged {
    /// This task's ε at the dataset's δ.
    pub epsilon: f64,
    /// The dataset's cumulative ε at its δ.
    pub cumulative: f64,
    /// What is left of the budget (None: no budget).
    pub remaining: Option<f64>,
    /// The dataset's δ.
    pub delta: f64,
}

/// The ledger could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The file cannot be read or parsed.
    #[error("{0}")]
    Unreadable(String),
    /// The file is another program's or another institution's.
    #[error("{path}: {why} (not this bank's privacy-budget ledger; refusing to start rather than reset the spend)")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The bank's budget ledger (see the module docs).
#[derive(Debug)]
pub struct Budget {
    /// Where it persists; None keeps it in memory (simulated banks, tests).
    path: Option<PathBuf>,
    /// Per configured dataset.
    limits: BTreeMap<String, Limits>,
    /// The ledger.
    state: Mutex<State>,
}

impl Budget {
    /// Opens `data_dir/privacy_budget.json` for `institution` (a missing file starts empty; an
    /// unreadable, foreign or inconsistent one is an error, never a reset).
    pub fn load(data_dir: &Path, institution: &str, limits: BTreeMap<String, Limits>) -> Result<Self, BudgetError> {
        let path = data_dir.join(FILE_NAME);
        let state = read(&path, institution)?.unwrap_or_else(|| empty(institution));
        Ok(Self { path: Some(path), limits, state: Mutex::new(state) })
    }

    /// A ledger in memory only.
    pub fn in_memory(institution: &str, limits: BTreeMap<String, Limits>) -> Self {
        Self { path: None, limits, state: Mutex::new(empty(institution)) }
    }

    /// The limits of `dataset` (the defaults for one not configured).
    pub fn limits(&self, dataset: &str) -> Limits {
        self.limits.get(dataset).copied().unwrap_or_default()
    }

    /// Checks a task against the dataset's rules and budget and, when admitted, charges it
    /// durably before returning. Ok(None): a task of a job that is not DP (recorded, and the
    /// bound marked void). Refusals: `dp_required` (a non-DP job under `require_dp`),
    /// `budget_exhausted` (the task, or at its first task the whole job, would pass the budget;
    /// the reason with the remaining budget stays in the bank's log), `policy` (the job's δ
    /// above the dataset's, or not below 1/rows).
    pub fn charge(&self, r: &ChargeRequest<'_>) -> Result<Option<Charged>, Failure> {
        let limits = self.limits(r.dataset);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        let ledger = next.datasets.entry(r.dataset.to_string()).or_default();
        let Some(dp) = r.dp else {
            if limits.require_dp {
                return Err(Failure::new(
                    FailureKind::DpRequired,
                    format!("dataset `{}` requires differential privacy at this bank (require_dp) and the job is not DP", r.dataset),
                )
                .shareable());
            }
            let job = ledger.jobs.entry(r.job_id.to_string()).or_insert_with(|| JobLedger { delta: None, spend: Spend::default(), tasks: 0 });
            job.tasks += 1;
            if !ledger.non_dp_jobs.iter().any(|j| j == r.job_id) {
                ledger.non_dp_jobs.push(r.job_id.to_string());
            }
            self.commit(&mut state, next)?;
            return Ok(None);
        };
        let job_delta = dp.privacy.delta;
        if job_delta > limits.delta {
            return Err(Failure::policy(format!(
                "the job's δ = {job_delta:e} is above the δ = {:e} this bank states its budget for dataset `{}` at (datasets.delta)",
                limits.delta, r.dataset
            ))
            .shareable());
        }
        let rows = r.rows.ok_or_else(|| Failure::internal(format!("the row counts of dataset `{}` are not known", r.dataset)))?;
        if job_delta * rows.train.max(1) as f64 >= 1.0 {
            // Not shareable: the reason bounds the bank's row count.
            return Err(Failure::policy(format!(
                "the job's δ = {job_delta:e} is not below 1/{} (1 over this bank's training rows of dataset `{}`)",
                rows.train, r.dataset
            )));
        }
        let task = spend::task_spend(dp, r.task.dp_task(), rows).map_err(spend_failure)?;
        let eps = |s: &Spend| s.epsilon(limits.delta).map_err(Failure::internal);
        let first = !ledger.jobs.get(r.job_id).is_some_and(|j| j.tasks > 0);
        if let (true, Some(budget)) = (first, limits.epsilon_budget) {
            let mut planned = ledger.spend.clone();
            planned.absorb(&spend::job_spend(dp, rows, dp.rounds).map_err(spend_failure)?);
            let (now, whole) = (eps(&ledger.spend)?, eps(&planned)?);
            if whole > budget {
                return Err(Failure::new(
                    FailureKind::BudgetExhausted,
                    format!(
                        "dataset `{}`: the job's planned spend would bring ε to {whole:.4} at δ = {:e}, over the budget of {budget} \
                         (spent {now:.4}, remaining {:.4})",
                        r.dataset,
                        limits.delta,
                        (budget - now).max(0.0)
                    ),
                ));
            }
        }
        let before = eps(&ledger.spend)?;
        let mut after = ledger.spend.clone();
        after.absorb(&task);
        let cumulative = eps(&after)?;
        if let Some(budget) = limits.epsilon_budget
            && cumulative > budget
        {
            return Err(Failure::new(
                FailureKind::BudgetExhausted,
                format!(
                    "dataset `{}`: this {} task of round {} would bring ε to {cumulative:.4} at δ = {:e}, over the budget of {budget} \
                     (spent {before:.4}, remaining {:.4})",
                    r.dataset,
                    r.task.as_str(),
                    r.round,
                    limits.delta,
                    (budget - before).max(0.0)
                ),
            ));
        }
        let epsilon = eps(&task)?;
        ledger.spend = after;
        ledger.charges.push(Charge { job: r.job_id.to_string(), round: r.round, task: r.task, epsilon, epsilon_after: cumulative });
        let job = ledger.jobs.entry(r.job_id.to_string()).or_insert_with(|| JobLedger {
            delta: Some(job_delta),
            spend: Spend::default(),
            tasks: 0,
        });
        job.spend.absorb(&task);
        job.tasks += 1;
        self.commit(&mut state, next)?;
        Ok(Some(Charged { epsilon, cumulative, remaining: limits.epsilon_budget.map(|b| (b - cumulative).max(0.0)), delta: limits.delta }))
    }

    /// The cumulative ε `job` spent on `dataset` at the job's own δ (0: nothing, or not DP).
    pub fn job_epsilon(&self, dataset: &str, job: &str) -> f64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .datasets
            .get(dataset)
            .and_then(|d| d.jobs.get(job))
            .and_then(|j| j.delta.and_then(|delta| j.spend.epsilon(delta).ok()))
            .filter(|e| e.is_finite())
            .unwrap_or(0.0)
    }

    /// A copy of the ledger per dataset.
    pub fn snapshot(&self) -> BTreeMap<String, DatasetLedger> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).datasets.clone()
    }

    fn commit(&self, state: &mut State, next: State) -> Result<(), Failure> {
        if let Some(path) = &self.path {
            crate::state_file::write(path, &next)?;
        }
        *state = next;
        Ok(())
    }
}

fn spend_failure(e: SpendError) -> Failure {
    match e {
        SpendError::Unresolved => Failure::protocol("the job's noise multiplier is not resolved"),
        SpendError::NoRows => Failure::data("the dataset has no training rows"),
        other => Failure::protocol(format!("the job's privacy parameters: {other}")),
    }
}

fn empty(institution: &str) -> State {
    State { format: FORMAT.into(), institution: institution.into(), datasets: BTreeMap::new() }
}

/// Reads the ledger at `path` for `institution` without opening it for charging (what
/// `confide-worker budget show` reads while the worker runs); None when there is none yet.
pub fn read_ledger(path: &Path, institution: &str) -> Result<Option<BTreeMap<String, DatasetLedger>>, BudgetError> {
    Ok(read(path, institution)?.map(|s| s.datasets))
}

fn read(path: &Path, institution: &str) -> Result<Option<State>, BudgetError> {
    let foreign = |why: String| BudgetError::Foreign { path: path.to_path_buf(), why };
    let value: Option<serde_json::Value> = crate::state_file::read(path, "privacy-budget ledger").map_err(BudgetError::Unreadable)?;
    let Some(value) = value else { return Ok(None) };
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(foreign(format!("no `format` = {FORMAT:?}")));
    }
    let state: State =
        serde_json::from_value(value).map_err(|e| BudgetError::Unreadable(format!("{}: unreadable privacy-budget ledger: {e}", path.display())))?;
    if state.institution != institution {
        return Err(foreign(format!("it belongs to institution `{}`, this worker is `{institution}`", state.institution)));
    }
    for (name, d) in &state.datasets {
        let mut accountants = vec![("spend", &d.spend)];
        accountants.extend(d.jobs.iter().map(|(job, j)| (job.as_str(), &j.spend)));
        for (what, s) in accountants {
            for acc in [&s.train, &s.test] {
                check_accountant(acc).map_err(|why| foreign(format!("dataset `{name}`, {what}: {why}")))?;
            }
        }
    }
    Ok(Some(state))
}

/// An accountant as stored: its orders must be this version's and every value a finite RDP ≥ 0
/// (otherwise composing onto it would silently track other orders or undercount).
fn check_accountant(acc: &Accountant) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Stored {
        orders: Vec<f64>,
        rdp: Vec<f64>,
    }
    let stored: Stored = serde_json::to_value(acc).and_then(serde_json::from_value).map_err(|e| e.to_string())?;
    if stored.orders != default_orders() {
        return Err("the accountant's RDP orders are not this worker's".into());
    }
    if stored.rdp.len() != stored.orders.len() {
        return Err(format!("{} RDP values for {} orders", stored.rdp.len(), stored.orders.len()));
    }
    if !stored.rdp.iter().all(|r| r.is_finite() && *r >= 0.0) {
        return Err("an RDP value is negative or not finite".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confide_core::job::JobSpec;

    use super::*;

    const ROWS: BankRows = BankRows { train: 2000, test: 500 };

    fn dp_job(sigma: f64, rounds: u64) -> DpJob {
        let text = format!(
            "name = \"dp\"\ndataset = \"d\"\n[model]\nkind = \"logistic_regression\"\n[training]\nrounds = {rounds}\nbatch_size = 64\n\
             learning_rate = 0.1\n[privacy]\nmode = \"record\"\nnoise_multiplier = {sigma}\ndelta = 1e-5\n"
        );
        DpJob::of(&JobSpec::from_toml(&text).expect("valid DP job")).expect("dp")
    }

    fn limits(budget: Option<f64>, require_dp: bool) -> BTreeMap<String, Limits> {
        BTreeMap::from([("d".to_string(), Limits { epsilon_budget: budget, delta: 1e-5, require_dp })])
    }

    fn request<'a>(job: &'a str, round: u64, task: TaskClass, dp: Option<&'a DpJob>) -> ChargeRequest<'a> {
        ChargeRequest { job_id: job, round, dataset: "d", task, dp, rows: Some(ROWS) }
    }

    /// Charges every task of `dp` as the coordinator would send them; the first refusal.
    fn run_job(b: &Budget, job: &str, dp: &DpJob) -> Result<(), Failure> {
        b.charge(&request(job, 0, TaskClass::Stats, Some(dp)))?;
        for round in 1..=dp.rounds {
            b.charge(&request(job, round, TaskClass::Train, Some(dp)))?;
            if dp.evaluates(round) {
                b.charge(&request(job, round, TaskClass::Evaluate, Some(dp)))?;
            }
        }
        Ok(())
    }

    fn job_epsilon(dp: &DpJob, jobs: usize) -> f64 {
        let one = spend::job_spend(dp, ROWS, dp.rounds).expect("spend");
        let mut total = Spend::default();
        (0..jobs).for_each(|_| total.absorb(&one));
        total.epsilon(1e-5).expect("eps")
    }

    #[test]
    fn a_job_is_charged_what_the_shared_arithmetic_says_and_the_next_one_is_refused() {
        let dp = dp_job(1.5, 3);
        let (one, two) = (job_epsilon(&dp, 1), job_epsilon(&dp, 2));
        let b = Budget::in_memory("bank1", limits(Some((one + two) / 2.0), false));
        run_job(&b, "j1", &dp).expect("the first job fits");
        let d = &b.snapshot()["d"];
        assert!((d.epsilons(1e-5).expect("eps").2 - one).abs() < 1e-9, "charged exactly the job's spend");
        let tasks = 1 + 3 + (1..=3).filter(|r| dp.evaluates(*r)).count();
        assert_eq!(d.charges.len(), tasks);
        assert!((b.job_epsilon("d", "j1") - one).abs() < 1e-9);
        let err = run_job(&b, "j2", &dp).expect_err("the second does not");
        assert_eq!(err.kind, FailureKind::BudgetExhausted);
        assert!(err.reason.contains("remaining") && !err.shareable, "the remaining budget stays in the bank's log: {err}");
        assert_eq!(b.snapshot()["d"].charges.len(), tasks, "refused at its first task, nothing charged");
        assert!(FailureKind::BudgetExhausted.is_deterministic());
    }

    #[test]
    fn a_task_that_would_pass_the_budget_is_refused_even_mid_job() {
        let dp = dp_job(1.5, 3);
        let b = Budget::in_memory("bank1", limits(Some(job_epsilon(&dp, 1) * 0.999), false));
        // The whole-job check refuses the job at its statistics.
        assert_eq!(run_job(&b, "j", &dp).expect_err("over").kind, FailureKind::BudgetExhausted);
        // A job whose first task was already charged (the budget lowered by a restart) is
        // refused at the task that would pass it.
        let b = Budget::in_memory("bank1", limits(None, false));
        b.charge(&request("j", 0, TaskClass::Stats, Some(&dp))).expect("stats");
        let tight = Budget { limits: limits(Some(b.snapshot()["d"].epsilons(1e-5).expect("e").2 + 1e-6), false), ..b };
        let err = tight.charge(&request("j", 1, TaskClass::Train, Some(&dp))).expect_err("no room for a round");
        assert_eq!(err.kind, FailureKind::BudgetExhausted);
        assert!(err.reason.contains("train task of round 1"), "{err}");
    }

    #[test]
    fn a_tree_job_is_charged_per_level_and_refused_by_a_small_budget() {
        let text = "name = \"trees\"\ndataset = \"d\"\n[model]\nkind = \"gbdt\"\nmax_depth = 3\n[training]\nrounds = 4\nlearning_rate = 0.3\n\
                    [privacy]\nmode = \"record\"\nnoise_multiplier = 2.0\nplanned_rows = 1000\n";
        let dp = DpJob::of(&JobSpec::from_toml(text).expect("valid DP tree job")).expect("dp");
        // Every level task a grow phase sends is charged as a training task: 3 per tree.
        let levels = |b: &Budget, job: &str| -> Result<(), Failure> {
            b.charge(&request(job, 0, TaskClass::Stats, Some(&dp)))?;
            for round in 1..=dp.rounds {
                for _ in 0..3 {
                    b.charge(&request(job, round, TaskClass::Train, Some(&dp)))?;
                }
                if dp.evaluates(round) {
                    b.charge(&request(job, round, TaskClass::Evaluate, Some(&dp)))?;
                }
            }
            Ok(())
        };
        let whole = job_epsilon(&dp, 1);
        let b = Budget::in_memory("bank1", limits(Some(whole * 1.001), false));
        levels(&b, "j").expect("the planned levels fit");
        let d = &b.snapshot()["d"];
        assert!((d.epsilons(1e-5).expect("eps").2 - whole).abs() < 1e-9, "charged exactly the job's spend");
        assert_eq!(d.charges.iter().filter(|c| c.task == TaskClass::Train).count(), 12);
        // A level costs ρ = 1/(2σ²): a 13th level (a repeated level, say) does not fit.
        assert_eq!(b.charge(&request("j", 4, TaskClass::Train, Some(&dp))).expect_err("over").kind, FailureKind::BudgetExhausted);
        // A bank whose budget is below the job's planned spend refuses it at its first task.
        let small = Budget::in_memory("bank1", limits(Some(whole * 0.9), false));
        let err = levels(&small, "j").expect_err("refused");
        assert_eq!(err.kind, FailureKind::BudgetExhausted);
        assert!(small.snapshot().get("d").is_none_or(|d| d.charges.is_empty()), "nothing charged");
        // Planned as DP-SGD rounds instead, the job would look far cheaper: levels are counted.
        let as_rounds = DpJob { tree_levels: None, ..dp.clone() };
        assert!(job_epsilon(&as_rounds, 1) < whole);
    }

    #[test]
    fn require_dp_refuses_other_jobs_and_without_it_they_void_the_bound() {
        let strict = Budget::in_memory("bank1", limits(Some(5.0), true));
        let err = strict.charge(&request("plain", 0, TaskClass::Stats, None)).expect_err("not DP");
        assert_eq!((err.kind, err.shareable), (FailureKind::DpRequired, true));
        assert!(err.reason.contains("require_dp"));
        let open = Budget::in_memory("bank1", limits(Some(5.0), false));
        assert_eq!(open.charge(&request("plain", 0, TaskClass::Stats, None)).expect("allowed"), None);
        let d = &open.snapshot()["d"];
        assert!(d.void() && d.non_dp_jobs == ["plain"]);
        assert_eq!(open.job_epsilon("d", "plain"), 0.0);
    }

    #[test]
    fn a_jobs_delta_above_the_banks_or_not_below_one_over_rows_is_refused() {
        let b = Budget::in_memory("bank1", BTreeMap::from([("d".to_string(), Limits { epsilon_budget: None, delta: 1e-6, require_dp: false })]));
        let dp = dp_job(1.5, 1);
        let err = b.charge(&request("j", 0, TaskClass::Stats, Some(&dp))).expect_err("δ 1e-5 > 1e-6");
        assert!(err.reason.contains("datasets.delta") && err.shareable, "{err}");
        let b = Budget::in_memory("bank1", limits(None, false));
        let large = ChargeRequest { rows: Some(BankRows { train: 200_000, test: 10 }), ..request("j", 0, TaskClass::Stats, Some(&dp)) };
        let err = b.charge(&large).expect_err("δ = 1e-5 ≥ 1/200000");
        assert!(err.reason.contains("1/200000") && !err.shareable, "the row count stays at the bank: {err}");
        let unknown = ChargeRequest { rows: None, ..request("j", 0, TaskClass::Stats, Some(&dp)) };
        assert_eq!(b.charge(&unknown).expect_err("no rows").kind, FailureKind::Internal);
    }

    #[test]
    fn the_spend_survives_restarts_and_a_corrupt_or_foreign_file_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dp = dp_job(1.5, 3);
        let (one, two) = (job_epsilon(&dp, 1), job_epsilon(&dp, 2));
        let lim = limits(Some((one + two) / 2.0), false);
        run_job(&Budget::load(dir.path(), "bank1", lim.clone()).expect("empty"), "j1", &dp).expect("first job");
        let reopened = Budget::load(dir.path(), "bank1", lim.clone()).expect("reload");
        assert!((reopened.snapshot()["d"].epsilons(1e-5).expect("e").2 - one).abs() < 1e-9);
        assert_eq!(run_job(&reopened, "j2", &dp).expect_err("still spent").kind, FailureKind::BudgetExhausted);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read_to_string(&path).expect("ledger");
        assert!(matches!(Budget::load(dir.path(), "bank2", lim.clone()), Err(BudgetError::Foreign { .. })), "another bank's file");
        let cases = [
            ("{not json".to_string(), "corrupt"),
            ("{\"jobs\": {}}".to_string(), "another program's"),
            (good.replacen("1.1", "1.2", 1), "other orders"),
            (good.replacen("\"rdp\": [\n", "\"rdp\": [\n-1.0,\n", 1), "an extra (negative) value"),
        ];
        for (text, what) in cases {
            std::fs::write(&path, &text).expect("write");
            assert!(Budget::load(dir.path(), "bank1", lim.clone()).is_err(), "{what}");
        }
    }

    #[test]
    fn concurrent_jobs_on_one_dataset_never_pass_the_budget_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dp = dp_job(1.5, 3);
        let budget = job_epsilon(&dp, 1) * 1.2;
        let b = Arc::new(Budget::load(dir.path(), "bank1", limits(Some(budget), false)).expect("load"));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (b, dp) = (b.clone(), dp.clone());
                std::thread::spawn(move || run_job(&b, &format!("j{i}"), &dp).is_ok())
            })
            .collect();
        let completed = threads.into_iter().filter_map(|t| t.join().ok()).filter(|ok| *ok).count();
        let d = &b.snapshot()["d"];
        let spent = d.epsilons(1e-5).expect("eps").2;
        assert!(spent <= budget, "spent {spent} of {budget}");
        assert!(completed <= 1, "{completed} jobs completed");
        let on_disk = Budget::load(dir.path(), "bank1", limits(Some(budget), false)).expect("reload").snapshot();
        // Every charge was persisted (the JSON round trip of an f64 may differ in the last bit).
        assert_eq!(on_disk["d"].charges.len(), d.charges.len());
        assert!((on_disk["d"].epsilons(1e-5).expect("eps").2 - spent).abs() < 1e-9);
    }
}
