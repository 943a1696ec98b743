//! Small, real inputs for the harness: a tabular schema, per-bank tables whose additive
//! statistics give a real federated preprocessing, job snapshots from job-file text, and
//! [`FakeCompute`] — deterministic stand-ins for local training and evaluation whose
//! federated result a test can compute by hand.

use std::sync::Arc;

use confide_coordinator::hub::WorkerInfo;
use confide_coordinator::round::machine::JobSnapshot;
use confide_core::contribution::TrainContribution;
use confide_core::job::JobSpec;
use confide_core::metrics::EvalContribution;
use confide_core::outcome::FailureKind;
use confide_datasets::{DatasetSchema, RawTable};
use confide_proto::v1::{self as pb, task::Kind};

/// The harness's dataset schema: two numeric features (with declared ranges, for DP jobs), one
/// categorical, a 0/1 target.
pub const SCHEMA: &str = r#"
name = "toy"
missing = "fail"

[target]
column = "y"
positive = "1"
negative = "0"

[[columns]]
name = "x1"
type = "numeric"
range = [0, 100]

[[columns]]
name = "x2"
type = "numeric"
range = [0, 17]

[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b"]
"#;

/// The parsed [`SCHEMA`].
pub fn schema() -> DatasetSchema {
    DatasetSchema::parse(SCHEMA, "harness schema").unwrap_or_else(|e| panic!("harness schema: {e}"))
}

/// A job snapshot of a fresh job (nothing committed yet) from job-file text; the dataset is
/// always `toy`.
pub fn job(spec_toml: &str) -> JobSnapshot {
    let spec = JobSpec::from_toml(spec_toml).unwrap_or_else(|e| panic!("harness job: {e}"));
    JobSnapshot {
        job_id: "job-1".into(),
        spec,
        schema: schema(),
        head: None,
        rounds_completed: 0,
        past_metrics: Vec::new(),
        catalogue: None,
        initial_params: None,
        // The coordinator's defaults (30 min to start, 30 min idle), on the virtual clock.
        defaults: confide_coordinator::config::JobDefaults::default(),
    }
}

/// A minimal job file: `rounds` rounds of logistic regression, with extra TOML appended.
pub fn job_toml(rounds: u64, extra: &str) -> String {
    format!(
        "name = \"harness\"\ndataset = \"toy\"\n[model]\nkind = \"logistic_regression\"\n[training]\nrounds = {rounds}\nlearning_rate = 0.1\n{extra}\n"
    )
}

/// Which phase a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Preprocessing statistics.
    Statistics,
    /// Training.
    Train,
    /// Evaluation.
    Evaluate,
}

impl Phase {
    /// The phase of a task kind (None for relays and cancels).
    pub fn of(kind: &Kind) -> Option<Phase> {
        match kind {
            Kind::Stats(_) => Some(Phase::Statistics),
            Kind::Train(_) | Kind::TreeLevel(_) => Some(Phase::Train),
            Kind::Evaluate(_) => Some(Phase::Evaluate),
            Kind::Secagg(_) | Kind::Cancel(_) => None,
        }
    }
}

/// One bank's data and its deterministic computation.
#[derive(Debug, Clone)]
pub struct FakeCompute {
    /// The bank's rows.
    pub table: Arc<RawTable>,
    /// What every training contribution moves each parameter by, before weighting.
    pub delta: f64,
    /// The mean training loss it reports.
    pub loss: f64,
    /// Training returns the unweighted update, weight 1 and loss 0 (the institution-level DP
    /// contract) instead of the sample-weighted one.
    pub unweighted: bool,
}

impl FakeCompute {
    /// A bank of `rows` rows drawn from `seed`, whose training moves every parameter by `delta`.
    pub fn new(rows: usize, seed: u64, delta: f64) -> Self {
        let mut csv = String::from("x1,x2,c,y\n");
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        for i in 0..rows {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let x1 = (state >> 33) % 100;
            let x2 = (state >> 13) % 17;
            let c = if (state >> 7) % 3 == 0 { "a" } else { "b" };
            let y = u8::from((x1 + i as u64) % 4 == 0);
            csv.push_str(&format!("{x1},{x2}.5,{c},{y}\n"));
        }
        let table = confide_datasets::load_csv_from_reader(csv.as_bytes(), "harness.csv", &schema())
            .unwrap_or_else(|e| panic!("harness table: {e}"));
        Self { table: Arc::new(table), delta, loss: 0.5 + delta, unweighted: false }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.table.rows
    }

    /// The honest contribution to a task, of the length its aggregation setup names.
    pub fn compute(&self, kind: &Kind) -> Result<Vec<f64>, pb::TaskFailure> {
        let fail = |reason: &str| pb::TaskFailure::new(FailureKind::Protocol, reason);
        match kind {
            Kind::Stats(_) => Ok(confide_datasets::local_stats(&self.table, &schema())),
            Kind::TreeLevel(_) => Err(fail("this fixture's banks train parameter-vector models only")),
            Kind::Train(t) => {
                let len = t.aggregation.as_ref().ok_or_else(|| fail("no aggregation setup"))?.vector_len as usize;
                let params = len.checked_sub(confide_core::contribution::TRAIN_EXTRAS).ok_or_else(|| fail("vector too short"))?;
                let global = vec![0.0f32; params];
                let local: Vec<f32> = global.iter().map(|g| g + self.delta as f32).collect();
                let (samples, loss) = if self.unweighted { (1, 0.0) } else { (self.rows(), self.loss) };
                let c = TrainContribution::from_training(&local, &global, samples, loss).map_err(|e| fail(&e.to_string()))?;
                Ok(c.to_vec())
            }
            Kind::Evaluate(t) => {
                let buckets = t.score_buckets as usize;
                let labels = &self.table.labels;
                let probs: Vec<f32> = (0..labels.len()).map(|i| ((i % 10) as f32 + 0.5) / 10.0).collect();
                Ok(EvalContribution::from_predictions(&probs, labels, buckets).to_vec())
            }
            Kind::Secagg(_) | Kind::Cancel(_) => Err(fail("not a task")),
        }
    }
}

/// What bank `id` registers: the toy dataset with its fingerprint, and `key` as its signing key.
pub fn worker_info(id: &str, _compute: &FakeCompute, key: Option<&ed25519_dalek::VerifyingKey>) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        datasets: vec![pb::DatasetOffer { name: "toy".into(), schema_fingerprint: schema().fingerprint() }],
        unavailable: Vec::new(),
        capabilities: pb::Capabilities::default(),
        signing_public_key: key.map(|k| k.to_bytes().to_vec()).unwrap_or_default(),
        min_participants: 3,
        certificate: Vec::new(),
    }
}
