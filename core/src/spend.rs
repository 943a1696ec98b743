//! What a differentially private job costs, from its public parameters alone: the
//! coordinator's plan (the noise multiplier solved for a target ε), the CLI's per-round table,
//! and — with the same arithmetic, run by the bank on its own row counts — each task's spend
//! that a bank's budget ledger charges. Nobody has to trust anybody else's numbers: every
//! figure here is a function of the job's `[privacy]` section, its round budget and a bank's
//! row counts.
//!
//! Spends are record level (adding or removing one customer row) and kept per split: the
//! statistics and training read the training split, evaluations the test split. The splits are
//! disjoint sets of rows, so by parallel composition a bank's spend is the larger of the two.
//!
//! | task | split | mechanism |
//! |---|---|---|
//! | statistics | train | Gaussian, ρ = 1/(2σ_s²) ([`confide_datasets`]' per-slot sensitivities) |
//! | training, record mode | train | DP-SGD: subsampled Gaussian, q = batch_size/rows, epochs·round(1/q) steps |
//! | training, institution mode | train | distributed discrete Gaussian bounded as ρ = (2C)²/(2σ²C²) = 2/σ² per round |
//! | evaluation | test | Gaussian, ρ = 1/(2σ_e²) |
//! | tree level (gbdt, record mode) | train | Gaussian, ρ = 1/(2σ²) per level, `max_depth` levels per tree |
//!
//! Trees (`kind = "gbdt"`, record mode only): every level of a tree is one Gaussian mechanism.
//! Each bank adds `N(0, σ²Δ²)` to every entry of its level histogram vector before it leaves,
//! where Δ is the vector's L2 sensitivity to one row (one slot per sampled feature, within one
//! node, moves by (g, h, 1); the bank computes Δ itself, see the worker's `trees` module), so a
//! level costs ρ = 1/(2σ²) whatever its size. A tree is charged `max_depth` levels, the most it
//! can use (trees that stop early spend less at the banks, which charge per level task), and
//! row subsampling is not counted as amplification. The statistics phase's fine histograms of
//! federated binning are part of the statistics vector, noised at σ_s like the rest of it.
//!
//! Institution mode: a bank's clipped update moves by at most 2C when one of its rows changes
//! (both updates lie in the ball of radius C), so the record-level ρ is four times the
//! institution-level ρ = 1/(2σ²) that [`institution_epsilon`] reports. The discrete noise is
//! scaled up by each bank so that its quantisation and the discrete sum's deviation from a
//! Gaussian stay inside this bound (see [`crate::discrete_noise`]).

use crate::job::{JobSpec, PrivacyMode, PrivacySpec};
use crate::privacy::{Accountant, Mechanism, PrivacyError};

/// The public parameters a DP job's spend depends on: what every task carries to the bank (in
/// its job terms) so the bank computes its spend itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpJob {
    /// The job's `[privacy]` section, with the noise multiplier resolved.
    pub privacy: PrivacySpec,
    /// Training rounds planned.
    pub rounds: u64,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Expected batch size (DP-SGD samples each row with probability batch_size / rows).
    pub batch_size: usize,
    /// Evaluations every this many rounds (and the last).
    pub evaluate_every: u64,
    /// A tree job's Gaussian mechanisms per round (tree): its `max_depth` levels. None: not a
    /// tree job (training rounds are DP-SGD or institution-level updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_levels: Option<u64>,
}

impl DpJob {
    /// The DP parameters of `spec` (None: the job is not differentially private).
    pub fn of(spec: &JobSpec) -> Option<DpJob> {
        Some(DpJob {
            privacy: spec.privacy.clone()?,
            rounds: spec.training.rounds,
            local_epochs: spec.training.local_epochs,
            batch_size: spec.training.batch_size,
            evaluate_every: spec.evaluation.every.max(1),
            tree_levels: spec.model.gbdt().map(|g| u64::from(g.max_depth)),
        })
    }

    /// Training tasks per round: a tree job's levels, otherwise one.
    pub fn tasks_per_round(&self) -> u64 {
        self.tree_levels.unwrap_or(1)
    }

    /// Whether round `round` is evaluated (as [`JobSpec::evaluates`]).
    pub fn evaluates(&self, round: u64) -> bool {
        round.is_multiple_of(self.evaluate_every) || round == self.rounds
    }

    /// The resolved noise multiplier.
    pub fn sigma(&self) -> Result<f64, SpendError> {
        self.privacy.noise_multiplier.ok_or(SpendError::Unresolved)
    }

    /// Checks what a bank reads from a task before relying on it (the coordinator is not
    /// trusted to have validated the job): a resolved, positive σ, positive C and noise
    /// multipliers, δ in (0, 1), at least one round, epoch and row per batch. The first bad
    /// field, named.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.privacy;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let checks = [
            ("privacy.noise_multiplier", p.noise_multiplier.is_some_and(positive)),
            ("privacy.clip_norm", positive(p.clip_norm)),
            ("privacy.delta", p.delta > 0.0 && p.delta < 1.0),
            ("privacy.statistics_noise_multiplier", positive(p.statistics_noise_multiplier)),
            ("privacy.evaluation_noise_multiplier", positive(p.evaluation_noise_multiplier)),
            ("training.rounds", self.rounds > 0),
            ("training.local_epochs", self.local_epochs > 0),
            ("training.batch_size", self.batch_size > 0),
            ("evaluation.every", self.evaluate_every > 0),
            ("model.max_depth", self.tree_levels.is_none_or(|l| l > 0)),
            ("privacy.mode", self.tree_levels.is_none() || p.mode == PrivacyMode::Record),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(format!("differential privacy terms: `{field}` is missing or out of range")),
            None => Ok(()),
        }
    }
}

/// A bank's rows in the two splits of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankRows {
    /// Training rows.
    pub train: u64,
    /// Test rows.
    pub test: u64,
}

/// What a task does with a bank's rows, as the accountant sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpTask {
    /// The preprocessing statistics of the training split.
    Statistics,
    /// One round of local training; for a tree job, one level of a tree.
    Training,
    /// One evaluation on the test split.
    Evaluation,
}

/// Record-level RDP spent on each split of one dataset.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Spend {
    /// Spent on the training split.
    pub train: Accountant,
    /// Spent on the test split.
    pub test: Accountant,
}

impl Spend {
    /// Adds another spend (sequential composition per split).
    pub fn absorb(&mut self, other: &Spend) {
        self.train.absorb(&other.train);
        self.test.absorb(&other.test);
    }

    /// The dataset's ε at `delta`: the larger of the two splits' (parallel composition).
    pub fn epsilon(&self, delta: f64) -> Result<f64, PrivacyError> {
        Ok(self.train.epsilon(delta)?.0.max(self.test.epsilon(delta)?.0))
    }

    /// The training split's and the test split's ε at `delta`.
    pub fn epsilons(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        Ok((self.train.epsilon(delta)?.0, self.test.epsilon(delta)?.0))
    }
}

/// Why a spend could not be computed or planned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpendError {
    /// The job is not differentially private.
    #[error("the job is not differentially private")]
    NotPrivate,
    /// The noise multiplier has not been resolved (a job file with only `target_epsilon`).
    #[error("the noise multiplier is not resolved yet")]
    Unresolved,
    /// The bank has no training rows.
    #[error("no training rows")]
    NoRows,
    /// The accountant refused the parameters.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
    /// No noise multiplier up to [`MAX_NOISE_MULTIPLIER`] reaches the target.
    #[error("no noise multiplier up to {max} reaches ε = {target} over {rounds} rounds (the fixed parts alone spend ε = {floor:.3})")]
    Unreachable {
        /// Target ε.
        target: f64,
        /// Planned rounds.
        rounds: u64,
        /// ε spent with the largest noise multiplier tried (statistics, for instance).
        floor: f64,
        /// The largest noise multiplier tried.
        max: f64,
    },
}

pub use crate::privacy::MAX_NOISE_MULTIPLIER;

/// The L2 sensitivity Δ of a tree level's histogram vector to one row, for a tree sampling
/// `features` features with positive rows weighted `pos_weight`: the row sits in one node and,
/// per sampled feature, in one slot, to which it adds (g, h, 1) with |g| ≤ max(1, pos_weight)
/// and h ≤ max(1, pos_weight)/4 (|p − y| ≤ 1, p(1 − p) ≤ 1/4), each plus 2⁻¹⁶, more than
/// rounding onto the gradients' grid (2⁻¹⁶ or finer) adds: Δ = √(F·(g_max² + h_max² + 1)). Each bank adds
/// `N(0, σ²Δ²)` to every entry (the worker's `trees` module), so a level is ρ = 1/(2σ²).
pub fn tree_level_sensitivity(features: usize, pos_weight: f64) -> f64 {
    const GRID: f64 = 1.0 / 65_536.0;
    let w = pos_weight.max(1.0);
    let (g, h) = (w + GRID, w / 4.0 + GRID);
    (features as f64 * (g * g + h * h + 1.0)).sqrt()
}

/// DP-SGD's Poisson sampling rate at a bank of `rows` training rows: `batch_size / rows`, at most 1.
pub fn sampling_rate(batch_size: usize, rows: u64) -> f64 {
    (batch_size as f64 / rows.max(1) as f64).min(1.0)
}

/// Noisy DP-SGD steps of `epochs` epochs at sampling rate `q`: round(1/q) per epoch (what the
/// worker's DP-SGD runs).
pub fn dp_sgd_steps(q: f64, epochs: usize) -> u64 {
    (1.0 / q).round().max(1.0) as u64 * epochs as u64
}

/// The record-level spend of one task of `job` at a bank with `rows`.
pub fn task_spend(job: &DpJob, task: DpTask, rows: BankRows) -> Result<Spend, SpendError> {
    task_spend_with(job, task, rows, job.sigma()?)
}

fn task_spend_with(job: &DpJob, task: DpTask, rows: BankRows, sigma: f64) -> Result<Spend, SpendError> {
    let p = &job.privacy;
    let mut spend = Spend::default();
    match task {
        DpTask::Statistics => spend.train.compose(gaussian(p.statistics_noise_multiplier), 1)?,
        DpTask::Evaluation => spend.test.compose(gaussian(p.evaluation_noise_multiplier), 1)?,
        // A tree level: the Gaussian mechanism on the level histograms (see the module docs).
        DpTask::Training if job.tree_levels.is_some() => spend.train.compose(gaussian(sigma), 1)?,
        DpTask::Training => match p.mode {
            PrivacyMode::Record => {
                if rows.train == 0 {
                    return Err(SpendError::NoRows);
                }
                let q = sampling_rate(job.batch_size, rows.train);
                let steps = dp_sgd_steps(q, job.local_epochs);
                spend.train.compose(Mechanism::SubsampledGaussian { sampling_rate: q, noise_multiplier: sigma }, steps)?;
            }
            PrivacyMode::Institution => spend.train.compose(Mechanism::Zcdp { rho: 2.0 / (sigma * sigma) }, 1)?,
        },
    }
    Ok(spend)
}

/// The Gaussian mechanism at noise multiplier σ on a vector of L2 sensitivity 1: ρ = 1/(2σ²).
fn gaussian(sigma: f64) -> Mechanism {
    Mechanism::Zcdp { rho: 1.0 / (2.0 * sigma * sigma) }
}

/// The whole job's spend at a bank with `rows` after `rounds` training rounds (statistics once,
/// then the rounds and their evaluations), each round run once.
pub fn job_spend(job: &DpJob, rows: BankRows, rounds: u64) -> Result<Spend, SpendError> {
    job_spend_with(job, rows, rounds, job.sigma()?)
}

fn job_spend_with(job: &DpJob, rows: BankRows, rounds: u64, sigma: f64) -> Result<Spend, SpendError> {
    let mut total = task_spend_with(job, DpTask::Statistics, rows, sigma)?;
    let round = task_spend_with(job, DpTask::Training, rows, sigma)?;
    let eval = task_spend_with(job, DpTask::Evaluation, rows, sigma)?;
    for r in 1..=rounds {
        for _ in 0..job.tasks_per_round() {
            total.absorb(&round);
        }
        if job.evaluates(r) {
            total.absorb(&eval);
        }
    }
    Ok(total)
}

/// Institution-level ε of institution mode after `rounds` rounds: ρ = 1/(2σ²) per round for
/// adding or removing one bank's whole (clipped) update.
pub fn institution_epsilon(sigma: f64, rounds: u64, delta: f64) -> Result<f64, SpendError> {
    let mut acc = Accountant::default();
    acc.compose(Mechanism::Zcdp { rho: 1.0 / (2.0 * sigma * sigma) }, rounds)?;
    Ok(acc.epsilon(delta)?.0)
}

/// A job's privacy plan: what `confide job submit` prints and the coordinator stores.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Record or institution level.
    pub mode: PrivacyMode,
    /// The noise multiplier σ (solved, or as given).
    pub noise_multiplier: f64,
    /// δ.
    pub delta: f64,
    /// C.
    pub clip_norm: f64,
    /// The headline ε: record mode, the training split's at a bank of `planned_rows`;
    /// institution mode, the institution-level ε.
    pub epsilon: f64,
    /// Record mode: the rows the headline is for.
    pub planned_rows: Option<u64>,
    /// ε the evaluations spend on a bank's test split (record level; parallel to training).
    pub evaluation_epsilon: f64,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whom = match (self.mode, self.planned_rows) {
            (PrivacyMode::Record, Some(rows)) => format!("record level, at a bank of {rows} training rows"),
            (PrivacyMode::Record, None) => "record level".to_string(),
            (PrivacyMode::Institution, _) => "institution level".to_string(),
        };
        write!(
            f,
            "ε = {:.3}, δ = {:.1e}, σ = {:.4}, C = {} ({whom}); evaluations spend ε = {:.3} on each bank's test rows",
            self.epsilon, self.delta, self.noise_multiplier, self.clip_norm, self.evaluation_epsilon
        )
    }
}

/// Resolves `spec`'s noise multiplier from its target ε when not given, and returns the plan.
/// The spec's `privacy.noise_multiplier` is set, so the stored job carries it.
pub fn resolve(spec: &mut JobSpec) -> Result<Plan, SpendError> {
    let job = DpJob::of(spec).ok_or(SpendError::NotPrivate)?;
    let sigma = match (job.privacy.noise_multiplier, job.privacy.target_epsilon) {
        (Some(s), _) => s,
        (None, Some(target)) => solve(target, job.rounds, |sigma| headline(&job, sigma))?,
        (None, None) => return Err(SpendError::Unresolved),
    };
    if let Some(stored) = spec.privacy.as_mut() {
        stored.noise_multiplier = Some(sigma);
    }
    plan_for(&DpJob::of(spec).ok_or(SpendError::NotPrivate)?)
}

/// The plan of a job whose noise multiplier is resolved.
pub fn plan_for(job: &DpJob) -> Result<Plan, SpendError> {
    let p = &job.privacy;
    let sigma = job.sigma()?;
    let rows = BankRows { train: p.planned_rows.unwrap_or(1).max(1), test: 1 };
    let evaluation_epsilon = job_spend_with(job, rows, job.rounds, sigma)?.test.epsilon(p.delta)?.0;
    Ok(Plan {
        mode: p.mode,
        noise_multiplier: sigma,
        delta: p.delta,
        clip_norm: p.clip_norm,
        epsilon: headline(job, sigma)?,
        planned_rows: p.planned_rows,
        evaluation_epsilon,
    })
}

fn headline(job: &DpJob, sigma: f64) -> Result<f64, SpendError> {
    let p = &job.privacy;
    match p.mode {
        PrivacyMode::Institution => institution_epsilon(sigma, job.rounds, p.delta),
        PrivacyMode::Record => {
            let rows = BankRows { train: p.planned_rows.unwrap_or(1).max(1), test: 1 };
            Ok(job_spend_with(job, rows, job.rounds, sigma)?.train.epsilon(p.delta)?.0)
        }
    }
}

/// The smallest σ whose ε is at most `target` ([`crate::privacy::smallest_sigma`]).
fn solve(target: f64, rounds: u64, eps_at: impl Fn(f64) -> Result<f64, SpendError>) -> Result<f64, SpendError> {
    match crate::privacy::smallest_sigma(target, &eps_at)? {
        Some(sigma) => Ok(sigma),
        None => Err(SpendError::Unreachable { target, rounds, floor: eps_at(MAX_NOISE_MULTIPLIER)?, max: MAX_NOISE_MULTIPLIER }),
    }
}

/// One row of the per-round table: after `round` rounds, the training split's ε at the bank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundSpend {
    /// Rounds trained.
    pub round: u64,
    /// The training split's cumulative ε (statistics included).
    pub train_epsilon: f64,
    /// The test split's cumulative ε.
    pub test_epsilon: f64,
}

/// The cumulative spend after each round at a bank of `rows` (what `confide privacy plan` prints).
pub fn per_round(job: &DpJob, rows: BankRows) -> Result<Vec<RoundSpend>, SpendError> {
    let sigma = job.sigma()?;
    let mut total = task_spend_with(job, DpTask::Statistics, rows, sigma)?;
    let round = task_spend_with(job, DpTask::Training, rows, sigma)?;
    let eval = task_spend_with(job, DpTask::Evaluation, rows, sigma)?;
    let mut out = Vec::new();
    for r in 1..=job.rounds {
        for _ in 0..job.tasks_per_round() {
            total.absorb(&round);
        }
        if job.evaluates(r) {
            total.absorb(&eval);
        }
        let (train_epsilon, test_epsilon) = total.epsilons(job.privacy.delta)?;
        out.push(RoundSpend { round: r, train_epsilon, test_epsilon });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;

    fn job(privacy: &str) -> JobSpec {
        let text = format!(
            "name = \"dp\"\ndataset = \"d\"\n[model]\nkind = \"mlp\"\nhidden = [8]\n[training]\nrounds = 10\nbatch_size = 64\nlearning_rate = 0.1\n[privacy]\n{privacy}\n"
        );
        JobSpec::from_toml(&text).expect("valid DP job")
    }

    #[test]
    fn a_target_epsilon_is_met_by_the_solved_noise_and_missed_by_a_little_less() {
        let mut spec = job("mode = \"record\"\ntarget_epsilon = 4.0\nplanned_rows = 5000\ndelta = 1e-5");
        let plan = resolve(&mut spec).expect("reachable");
        assert!(plan.epsilon <= 4.0 && plan.epsilon > 3.99, "{plan}");
        let dp = DpJob::of(&spec).expect("dp");
        let rows = BankRows { train: 5000, test: 1000 };
        let less = job_spend_with(&dp, rows, 10, plan.noise_multiplier * 0.99).expect("spend");
        assert!(less.train.epsilon(1e-5).expect("eps").0 > 4.0);
        // A larger bank spends less at the same noise; a smaller one more.
        let big = job_spend(&dp, BankRows { train: 50_000, test: 1000 }, 10).expect("spend").train.epsilon(1e-5).expect("eps").0;
        let small = job_spend(&dp, BankRows { train: 1000, test: 1000 }, 10).expect("spend").train.epsilon(1e-5).expect("eps").0;
        assert!(big < plan.epsilon && small > plan.epsilon, "{big} {} {small}", plan.epsilon);
    }

    #[test]
    fn the_per_round_table_grows_and_ends_at_the_jobs_spend() {
        let mut spec = job("mode = \"record\"\nnoise_multiplier = 1.1\nplanned_rows = 5000");
        resolve(&mut spec).expect("given sigma");
        let dp = DpJob::of(&spec).expect("dp");
        let rows = BankRows { train: 5000, test: 1200 };
        let table = per_round(&dp, rows).expect("table");
        assert_eq!(table.len(), 10);
        assert!(table.windows(2).all(|w| w[1].train_epsilon > w[0].train_epsilon));
        let whole = job_spend(&dp, rows, 10).expect("spend").epsilons(1e-5).expect("eps");
        assert!((table[9].train_epsilon - whole.0).abs() < 1e-12 && (table[9].test_epsilon - whole.1).abs() < 1e-12);
    }

    #[test]
    fn institution_level_is_a_quarter_of_the_record_level_rho() {
        let mut spec = job("mode = \"institution\"\ntarget_epsilon = 2.0");
        let plan = resolve(&mut spec).expect("reachable");
        assert!((plan.epsilon - 2.0).abs() < 1e-2, "{plan}");
        let sigma = plan.noise_multiplier;
        let mut four = Accountant::default();
        four.compose(Mechanism::Zcdp { rho: 4.0 / (2.0 * sigma * sigma) }, 10).expect("compose");
        let record = job_spend(&DpJob::of(&spec).expect("dp"), BankRows { train: 10, test: 10 }, 10).expect("spend");
        let mut stats = Accountant::default();
        stats.compose(gaussian(spec.privacy.as_ref().expect("p").statistics_noise_multiplier), 1).expect("stats");
        four.absorb(&stats);
        let (a, b) = (record.train.epsilon(1e-5).expect("eps").0, four.epsilon(1e-5).expect("eps").0);
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn terms_a_bank_cannot_rely_on_are_named() {
        let mut spec = job("mode = \"record\"\nnoise_multiplier = 1.0\nplanned_rows = 100");
        resolve(&mut spec).expect("given");
        let dp = DpJob::of(&spec).expect("dp");
        dp.validate().expect("valid");
        for (field, tamper) in [
            ("privacy.noise_multiplier", (|d: &mut DpJob| d.privacy.noise_multiplier = Some(0.0)) as fn(&mut DpJob)),
            ("privacy.noise_multiplier", |d| d.privacy.noise_multiplier = None),
            ("privacy.clip_norm", |d| d.privacy.clip_norm = f64::NAN),
            ("privacy.statistics_noise_multiplier", |d| d.privacy.statistics_noise_multiplier = -1.0),
            ("training.batch_size", |d| d.batch_size = 0),
        ] {
            let mut bad = dp.clone();
            tamper(&mut bad);
            assert!(bad.validate().expect_err(field).contains(field));
        }
    }

    fn tree_job(privacy: &str) -> JobSpec {
        let text = format!(
            "name = \"trees\"\ndataset = \"d\"\n[model]\nkind = \"gbdt\"\nmax_depth = 4\n[training]\nrounds = 20\nlearning_rate = 0.3\n\
             [evaluation]\nevery = 5\n[privacy]\n{privacy}\n"
        );
        JobSpec::from_toml(&text).expect("valid DP tree job")
    }

    #[test]
    fn a_tree_job_spends_one_gaussian_per_level_and_its_target_solves_back_to_its_noise() {
        let mut spec = tree_job("mode = \"record\"\nnoise_multiplier = 3.0\nplanned_rows = 5000");
        resolve(&mut spec).expect("given sigma");
        let dp = DpJob::of(&spec).expect("dp");
        assert_eq!(dp.tree_levels, Some(4));
        // 20 trees × 4 levels of ρ = 1/(2·3²), and the statistics at σ_s; no sampling, so the
        // bank's rows do not matter.
        let mut expected = Accountant::default();
        expected.compose(Mechanism::Zcdp { rho: 1.0 / 18.0 }, 80).expect("levels");
        expected.compose(gaussian(spec.privacy.as_ref().expect("p").statistics_noise_multiplier), 1).expect("stats");
        let eps = expected.epsilon(1e-5).expect("eps").0;
        for rows in [BankRows { train: 100, test: 50 }, BankRows { train: 100_000, test: 50 }] {
            let got = job_spend(&dp, rows, 20).expect("spend").train.epsilon(1e-5).expect("eps").0;
            assert!((got - eps).abs() < 1e-9, "{got} vs {eps}");
        }
        // One level task is one of those Gaussians.
        let level = task_spend(&dp, DpTask::Training, BankRows { train: 100, test: 50 }).expect("level");
        let mut one = Accountant::default();
        one.compose(Mechanism::Zcdp { rho: 1.0 / 18.0 }, 1).expect("one");
        assert!((level.train.epsilon(1e-5).expect("eps").0 - one.epsilon(1e-5).expect("eps").0).abs() < 1e-12);
        // The per-round table ends at the job's spend; four levels a round make it grow fast.
        let table = per_round(&dp, BankRows { train: 100, test: 50 }).expect("table");
        assert!((table[19].train_epsilon - eps).abs() < 1e-9);
        // Asking for that ε solves back to σ = 3.
        let mut target = tree_job(&format!("mode = \"record\"\ntarget_epsilon = {eps}\nplanned_rows = 5000"));
        let plan = resolve(&mut target).expect("reachable");
        assert!((plan.noise_multiplier - 3.0).abs() < 1e-2 && plan.epsilon <= eps + 1e-9, "{plan}");
        // Deeper trees cost more at the same noise.
        let mut deeper = tree_job("mode = \"record\"\nnoise_multiplier = 3.0\nplanned_rows = 5000");
        if let ModelSpec::Gbdt(g) = &mut deeper.model {
            g.max_depth = 6;
        }
        let deeper = DpJob::of(&deeper).expect("dp");
        assert!(plan_for(&deeper).expect("plan").epsilon > eps);
    }

    #[test]
    fn a_bank_refuses_tree_terms_in_institution_mode() {
        let mut spec = tree_job("mode = \"record\"\nnoise_multiplier = 3.0\nplanned_rows = 5000");
        resolve(&mut spec).expect("given");
        let mut dp = DpJob::of(&spec).expect("dp");
        dp.validate().expect("record mode trees");
        dp.privacy.mode = PrivacyMode::Institution;
        assert!(dp.validate().expect_err("institution").contains("privacy.mode"));
        dp.privacy.mode = PrivacyMode::Record;
        dp.tree_levels = Some(0);
        assert!(dp.validate().expect_err("no levels").contains("model.max_depth"));
    }

    #[test]
    fn unreachable_targets_are_refused() {
        // The statistics alone (σ_s = 0.1) spend far more than ε = 0.5.
        let mut spec = job("mode = \"record\"\ntarget_epsilon = 0.5\nplanned_rows = 5000\nstatistics_noise_multiplier = 0.1");
        assert!(matches!(resolve(&mut spec), Err(SpendError::Unreachable { .. })));
    }
}
