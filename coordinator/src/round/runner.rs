//! Drives one job: federated preprocessing statistics, then round after round of
//! select → train → aggregate → server step → evaluate → checkpoint, until the round budget or
//! early stopping. A thin tokio layer over [`Phase`] and [`super::schedule`]: it owns the clock,
//! the task streams and the store, and nothing else.
//!
//! Durability: a round is committed (checkpoints written, then one transaction) only once it
//! is complete. After a crash the runner restarts from the job's last committed round, so an
//! interrupted round is simply run again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_core::job::JobSpec;
use confide_core::metrics::EvalContribution;
use confide_core::model::{ModelParams, ModelSpec, ParamLayout};
use confide_core::strategy::{ServerOptimizer, ServerState};
use confide_datasets::{DatasetSchema, Preprocessing};
use confide_proto::v1::{self as pb, task::Kind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::phase::{Phase, PhaseOutcome};
use super::schedule::{self, EarlyStopping};
use super::secure;
use crate::Shared;
use crate::hub::Inbound;
use crate::store::{JobStatus, ParticipantRecord, RoundRecord, now_rfc3339};

/// How a job's run ended.
enum Finished {
    Completed(Option<String>),
    Cancelled,
}

/// Runs a job to its end and records how it ended.
pub async fn run(shared: &Arc<Shared>, job_id: &str, cancel: CancellationToken) {
    let result = drive(shared, job_id, &cancel).await;
    let status = match &result {
        Ok(Finished::Completed(reason)) => {
            // Exported before the job reads as completed, so whoever sees `completed` finds
            // the export (or its recorded error) in place; a crash in between re-runs both.
            crate::export::export_completed(shared, job_id, reason.clone()).await;
            let r = shared.store.set_job_status(job_id, JobStatus::Completed, None, reason.as_deref());
            tracing::info!(job = %job_id, "job completed");
            r
        }
        Ok(Finished::Cancelled) => {
            tracing::info!(job = %job_id, "job runner stopped (job cancelled, or coordinator shutting down)");
            Ok(())
        }
        Err(e) => {
            tracing::error!(job = %job_id, error = %e, "job failed");
            shared.store.set_job_status(job_id, JobStatus::Failed, Some(e), None)
        }
    };
    if let Err(e) = status {
        tracing::error!(job = %job_id, error = %e, "could not record the job's end");
    }
    if let Ok(Some(job)) = shared.store.job(job_id).map(|j| j.filter(|j| j.status.is_final()))
        && let Ok(view) = crate::jobs::job_proto(shared, &job) {
            shared.jobs.publish(pb::JobEvent {
                job_id: job_id.into(),
                round: job.rounds_completed,
                kind: Some(pb::job_event::Kind::JobFinished(view)),
            });
        }
}

/// Everything fixed for the job's lifetime.
struct JobCtx<'a> {
    shared: &'a Arc<Shared>,
    id: &'a str,
    spec: JobSpec,
    fingerprint: String,
    cancel: &'a CancellationToken,
}

async fn drive(shared: &Arc<Shared>, job_id: &str, cancel: &CancellationToken) -> Result<Finished, String> {
    let job = shared.store.job(job_id).map_err(|e| e.to_string())?.ok_or("job vanished from the database")?;
    if job.status.is_final() {
        return Ok(Finished::Cancelled);
    }
    let spec: JobSpec = serde_json::from_str(&job.spec_json).map_err(|e| format!("stored job spec unreadable: {e}"))?;
    let schema = DatasetSchema::parse(&job.schema_toml, "stored schema").map_err(|e| e.to_string())?;
    let ctx = JobCtx { shared, id: job_id, fingerprint: schema.fingerprint(), spec, cancel };
    shared.store.set_job_status(job_id, JobStatus::Running, None, None).map_err(|e| e.to_string())?;

    // Start: federated preprocessing statistics and the initial model, committed together.
    let (mut job, prep) = match (&job.preprocessing_json, &job.model_hash) {
        (Some(p), Some(_)) => {
            let prep: Preprocessing = serde_json::from_str(p).map_err(|e| format!("stored preprocessing unreadable: {e}"))?;
            (job, prep)
        }
        _ => {
            let Some(summed) = ctx.aggregate_stats(&schema).await? else { return Ok(Finished::Cancelled) };
            let prep = Preprocessing::from_aggregate(&schema, &summed).map_err(|e| format!("federated statistics: {e}"))?;
            let layout = ctx.spec.model.layout(prep.input_dim());
            let params = ctx.initial_params(layout.clone(), prep.input_dim())?;
            let model_hash = ctx.put_model(&params, 0)?;
            let state = ServerOptimizer::new(ctx.spec.strategy.clone(), layout.len());
            let state_hash = shared.store.checkpoints().put(&state.state().to_bytes()).map_err(|e| e.to_string())?;
            let prep_json = serde_json::to_string(&prep).map_err(|e| e.to_string())?;
            shared.store.set_job_start(job_id, &prep_json, &model_hash, &state_hash).map_err(|e| e.to_string())?;
            let job = shared.store.job(job_id).map_err(|e| e.to_string())?.ok_or("job vanished")?;
            (job, prep)
        }
    };
    let layout = ctx.spec.model.layout(prep.input_dim());
    let prepared = Prepared { json: serde_json::to_string(&prep).map_err(|e| e.to_string())?, rows: prep.rows };
    let (mut global, mut optimizer) = ctx.load_head(&job, &layout)?;
    let mut early = EarlyStopping::new(ctx.spec.early_stopping.clone());
    for past in shared.store.rounds(job_id).map_err(|e| e.to_string())? {
        early.observe(&past.metrics);
    }

    for round in job.rounds_completed + 1..=ctx.spec.training.rounds {
        let mut attempt = 1;
        loop {
            if cancel.is_cancelled() {
                return Ok(Finished::Cancelled);
            }
            let started = Instant::now();
            let Some(participants) = ctx.select(round, attempt).await? else { return Ok(Finished::Cancelled) };
            ctx.publish(round, pb::job_event::Kind::RoundStarted(pb::RoundStarted {
                participants: participants.clone(),
                rounds_total: ctx.spec.training.rounds,
            }));
            match ctx.run_round(round, &participants, &mut global, &mut optimizer, &prepared, job.model_hash.as_deref()).await? {
                RoundResult::Cancelled => return Ok(Finished::Cancelled),
                RoundResult::Failed { reason, participants } => {
                    tracing::warn!(job = %job_id, round, attempt, %reason, "round attempt failed");
                    shared.store.record_failed_attempt(job_id, round, attempt, &participants).map_err(|e| e.to_string())?;
                    shared.metrics.round_attempts_failed.inc();
                    ctx.publish(round, pb::job_event::Kind::RoundFailed(pb::RoundAttemptFailed { reason: reason.clone() }));
                    if attempt >= ctx.spec.selection.max_round_attempts {
                        return Err(format!("round {round} failed {attempt} times; last: {reason}"));
                    }
                    attempt += 1;
                    // A previous global may have been advanced in memory; reload the committed head.
                    job = shared.store.job(job_id).map_err(|e| e.to_string())?.ok_or("job vanished")?;
                    (global, optimizer) = ctx.load_head(&job, &layout)?;
                }
                RoundResult::Done { metrics, participants } => {
                    let model_hash = ctx.put_model(&global, round)?;
                    let state_hash =
                        shared.store.checkpoints().put(&optimizer.state().to_bytes()).map_err(|e| e.to_string())?;
                    let record = RoundRecord {
                        round,
                        model_hash,
                        state_hash,
                        metrics,
                        duration_secs: started.elapsed().as_secs_f64(),
                        completed_at: now_rfc3339(),
                        participants,
                    };
                    shared.store.complete_round(job_id, attempt, &record).map_err(|e| e.to_string())?;
                    shared.metrics.rounds_completed.inc();
                    shared.metrics.round_duration.observe(record.duration_secs);
                    for p in &record.participants {
                        shared.metrics.participants.get_or_create(&crate::telemetry::OutcomeLabels { status: p.status.clone() }).inc();
                    }
                    tracing::info!(job = %job_id, round, secs = record.duration_secs, metrics = ?record.metrics, "round completed");
                    early.observe(&record.metrics);
                    ctx.publish(round, pb::job_event::Kind::RoundCompleted(crate::jobs::round_proto(&record)));
                    job = shared.store.job(job_id).map_err(|e| e.to_string())?.ok_or("job vanished")?;
                    break;
                }
            }
        }
        if let Some(reason) = early.should_stop() {
            return Ok(Finished::Completed(Some(reason)));
        }
    }
    Ok(Finished::Completed(None))
}

/// The federation's preprocessing, as shipped in every task.
struct Prepared {
    /// Serialised once per job.
    json: String,
    /// Rows across the federation (bounds any institution's update weight).
    rows: u64,
}

enum RoundResult {
    Done { metrics: BTreeMap<String, f64>, participants: Vec<ParticipantRecord> },
    Failed { reason: String, participants: Vec<ParticipantRecord> },
    Cancelled,
}

/// Extra slots after the weighted update in a training contribution: Σ weights, Σ weight·loss.
const TRAIN_EXTRAS: usize = 2;

impl JobCtx<'_> {
    fn publish(&self, round: u64, kind: pb::job_event::Kind) {
        self.shared.jobs.publish(pb::JobEvent { job_id: self.id.into(), round, kind: Some(kind) });
    }

    fn put_model(&self, params: &ModelParams, round: u64) -> Result<String, String> {
        let meta = HashMap::from([
            ("confide.job".to_string(), self.id.to_string()),
            ("confide.round".to_string(), round.to_string()),
            ("confide.model".to_string(), self.spec.model.label()),
        ]);
        self.shared.store.checkpoints().put(&params.to_safetensors(Some(meta))).map_err(|e| e.to_string())
    }

    /// The model round 1 starts from: a built-in family is initialised from the job's seed, a
    /// custom one starts from the parameters submitted with it.
    fn initial_params(&self, layout: ParamLayout, input_dim: usize) -> Result<ModelParams, String> {
        let ModelSpec::TorchScript(ts) = &self.spec.model else {
            return Ok(ModelParams::init(layout, self.spec.seed));
        };
        if let Some(dim) = ts.input_dim
            && dim != input_dim
        {
            return Err(format!("the torchscript module was built for {dim} inputs, the federation encodes {input_dim}"));
        }
        let hash = ts.parameters_sha256.as_deref().ok_or("torchscript job without stored initial parameters")?;
        let bytes = self.shared.store.checkpoints().get(hash).map_err(|e| e.to_string())?;
        ModelParams::from_safetensors(&bytes, &layout).map_err(|e| format!("initial parameters {hash}: {e}"))
    }

    fn load_head(&self, job: &crate::store::JobRecord, layout: &ParamLayout) -> Result<(ModelParams, ServerOptimizer), String> {
        let cp = self.shared.store.checkpoints();
        let model_hash = job.model_hash.as_deref().ok_or("job has no model checkpoint")?;
        let global = ModelParams::from_safetensors(&cp.get(model_hash).map_err(|e| e.to_string())?, layout)
            .map_err(|e| format!("checkpoint {model_hash}: {e}"))?;
        let optimizer = match job.state_hash.as_deref() {
            Some(h) if ServerOptimizer::is_adaptive(&self.spec.strategy) => {
                let state = ServerState::from_bytes(&cp.get(h).map_err(|e| e.to_string())?, layout.len())
                    .map_err(|e| format!("optimizer checkpoint {h}: {e}"))?;
                ServerOptimizer::with_state(self.spec.strategy.clone(), state)
            }
            _ => ServerOptimizer::new(self.spec.strategy.clone(), layout.len()),
        };
        Ok((global, optimizer))
    }

    /// Waits until enough eligible workers are connected, then picks this round's participants.
    /// None when the job was cancelled while waiting.
    async fn select(&self, round: u64, attempt: u32) -> Result<Option<Vec<String>>, String> {
        let waited = Instant::now();
        loop {
            let eligible: Vec<String> = self
                .shared
                .hub
                .connected()
                .into_iter()
                .filter(|w| w.offers(&self.spec.dataset, &self.fingerprint))
                .map(|w| w.id)
                .collect();
            if eligible.len() >= self.spec.selection.min_workers {
                return Ok(Some(schedule::select(&eligible, &self.spec.selection, self.spec.seed, round, attempt)));
            }
            let limit = self.spec.selection.wait_for_workers_secs;
            if limit > 0 && waited.elapsed() > Duration::from_secs(limit) {
                return Err(format!(
                    "round {round}: only {} eligible workers (offering `{}` with this schema) after {limit} s, {} needed",
                    eligible.len(),
                    self.spec.dataset,
                    self.spec.selection.min_workers
                ));
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                _ = self.shared.hub.wait_for_change() => {}
            }
        }
    }

    /// Phase 0: every eligible worker contributes its additive preprocessing statistics.
    /// Retries like a round. None when cancelled.
    async fn aggregate_stats(&self, schema: &DatasetSchema) -> Result<Option<Vec<f64>>, String> {
        let len = confide_datasets::stats_len(schema);
        for attempt in 1..=self.spec.selection.max_round_attempts {
            let Some(participants) = self.select(0, attempt).await? else { return Ok(None) };
            let dataset = self.dataset_ref();
            let outcome = self
                .run_phase(0, &participants, len, secure::Encoding::Statistics, |_, aggregation| {
                    Kind::Stats(pb::StatsTask { dataset: Some(dataset.clone()), aggregation: Some(aggregation) })
                })
                .await?;
            let Some(outcome) = outcome else { return Ok(None) };
            match outcome.sum {
                Ok(sum) => return Ok(Some(sum)),
                Err(f) => {
                    self.shared.store.record_failed_attempt(self.id, 0, attempt, &outcome.participants).map_err(|e| e.to_string())?;
                    self.publish(0, pb::job_event::Kind::RoundFailed(pb::RoundAttemptFailed {
                        reason: format!("preprocessing statistics: {}", f.reason),
                    }));
                    if attempt == self.spec.selection.max_round_attempts {
                        return Err(format!("preprocessing statistics failed {attempt} times; last: {}", f.reason));
                    }
                }
            }
        }
        Err("preprocessing statistics never ran".into())
    }

    fn dataset_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef { name: self.spec.dataset.clone(), schema_fingerprint: self.fingerprint.clone() }
    }

    fn model_ref(&self, hash: &str) -> Result<pb::ModelRef, String> {
        let path = self.shared.store.checkpoints().path(hash).map_err(|e| e.to_string())?;
        let size_bytes = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        let spec_json = serde_json::to_string(&self.spec.model).map_err(|e| e.to_string())?;
        Ok(pb::ModelRef { hash: hash.into(), size_bytes, spec_json })
    }

    /// One round: train phase, server step, evaluation phase.
    async fn run_round(
        &self,
        round: u64,
        participants: &[String],
        global: &mut ModelParams,
        optimizer: &mut ServerOptimizer,
        prep: &Prepared,
        head_hash: Option<&str>,
    ) -> Result<RoundResult, String> {
        let prep_json = prep.json.as_str();
        let head_hash = head_hash.ok_or("job has no model checkpoint")?;
        let model = self.model_ref(head_hash)?;
        let dataset = self.dataset_ref();
        let n_params = global.values.len();
        let order: HashMap<&str, u64> = participants.iter().enumerate().map(|(i, w)| (w.as_str(), i as u64)).collect();
        let spec = &self.spec;
        let train = self
            .run_phase(round, participants, n_params + TRAIN_EXTRAS, secure::Encoding::WeightedUpdate { rows: prep.rows }, |worker, aggregation| {
                let index = order.get(worker).copied().unwrap_or_default();
                Kind::Train(pb::TrainTask {
                    dataset: Some(dataset.clone()),
                    model: Some(model.clone()),
                    preprocessing_json: prep_json.to_string(),
                    train_config_json: serde_json::to_string(&spec.local_training(round, index)).unwrap_or_default(),
                    aggregation: Some(aggregation),
                })
            })
            .await?;
        let Some(train) = train else { return Ok(RoundResult::Cancelled) };
        let sum = match train.sum {
            Ok(sum) => sum,
            Err(f) => return Ok(RoundResult::Failed { reason: f.reason, participants: train.participants }),
        };
        let (update, extras) = sum.split_at(n_params);
        let (weight, loss_sum) = (extras[0], extras[1]);
        if let Err(e) = optimizer.step(global, update, weight) {
            return Ok(RoundResult::Failed { reason: format!("aggregate refused: {e}"), participants: train.participants });
        }
        let mut metrics = BTreeMap::from([
            ("train_loss".to_string(), loss_sum / weight),
            ("train_examples".to_string(), weight.round()),
            ("contributors".to_string(), train.participants.iter().filter(|p| p.status == "contributed").count() as f64),
        ]);
        if spec.evaluates(round) {
            // Evaluate the new global model; it is shipped as a provisional checkpoint that becomes
            // the round's model once the round commits.
            let new_hash = self.put_model(global, round)?;
            let model = self.model_ref(&new_hash)?;
            let buckets = spec.evaluation.score_buckets as usize;
            let contributors: Vec<String> =
                train.participants.iter().filter(|p| p.status == "contributed").map(|p| p.worker_id.clone()).collect();
            let eval = self
                .run_phase(round, &contributors, EvalContribution::vector_len(buckets), secure::Encoding::Counts, |_, aggregation| {
                    Kind::Evaluate(pb::EvaluateTask {
                        dataset: Some(dataset.clone()),
                        model: Some(model.clone()),
                        preprocessing_json: prep_json.to_string(),
                        score_buckets: spec.evaluation.score_buckets,
                        aggregation: Some(aggregation),
                    })
                })
                .await?;
            let Some(eval) = eval else { return Ok(RoundResult::Cancelled) };
            match eval.sum {
                Ok(sum) => {
                    let c = EvalContribution::from_slice(&sum, buckets).ok_or("evaluation vector has the wrong length")?;
                    metrics.extend(c.metrics());
                }
                Err(f) => {
                    return Ok(RoundResult::Failed {
                        reason: format!("evaluation: {}", f.reason),
                        participants: merge(train.participants, eval.participants),
                    });
                }
            }
            return Ok(RoundResult::Done { metrics, participants: merge(train.participants, eval.participants) });
        }
        Ok(RoundResult::Done { metrics, participants: train.participants })
    }

    /// Hands a task to each participant and sums their contributions. None when cancelled.
    async fn run_phase(
        &self,
        round: u64,
        participants: &[String],
        vector_len: usize,
        encoding: secure::Encoding,
        mut make_task: impl FnMut(&str, pb::AggregationSetup) -> Kind,
    ) -> Result<Option<PhaseOutcome>, String> {
        let shared = self.shared;
        let deadline = Instant::now() + Duration::from_secs(self.spec.selection.round_deadline_secs);
        let min = self.spec.selection.min_workers.min(participants.len());
        let (inbox_tx, mut inbox) = mpsc::channel::<Inbound>(64);
        // Workers that vanished since selection are out before the phase starts.
        let (present, absent): (Vec<String>, Vec<String>) = participants.iter().cloned().partition(|w| shared.hub.is_connected(w));
        let mut phase;
        let setups: Vec<(String, pb::AggregationSetup)>;
        if self.spec.insecure_plain_aggregation {
            phase = Phase::plain(participants, vector_len, min, deadline);
            setups = present
                .iter()
                .map(|w| (w.clone(), pb::AggregationSetup { insecure_plain: true, vector_len: vector_len as u64, secure: None }))
                .collect();
        } else if present.len() < 2 {
            return Ok(Some(PhaseOutcome {
                sum: Err(super::phase::PhaseFailure { reason: format!("only {} selected workers still connected", present.len()) }),
                participants: absent.iter().map(|w| ParticipantRecord { worker_id: w.clone(), status: "dropped".into(), reason: "disconnected before the phase".into() }).collect(),
            }));
        } else {
            let workers = shared.hub.connected();
            match secure::SecurePhase::new(&self.spec, &present, &workers, vector_len, encoding, round, Instant::now()) {
                Ok((secure_phase, s)) => {
                    setups = s;
                    phase = Phase::secure(participants, vector_len, min, deadline, secure_phase);
                }
                Err(e) => {
                    return Ok(Some(PhaseOutcome {
                        sum: Err(super::phase::PhaseFailure { reason: format!("secure aggregation setup: {e}") }),
                        participants: participants.iter().map(|w| ParticipantRecord { worker_id: w.clone(), status: "failed".into(), reason: e.clone() }).collect(),
                    }));
                }
            }
        }
        for w in &absent {
            phase.handle_disconnect(w, Instant::now());
        }
        let mut task_of: HashMap<String, String> = HashMap::new();
        // The task-stream session each task went to: a worker that reconnects has lost its tasks.
        let mut session_of: HashMap<String, Option<u64>> = HashMap::new();
        for (worker, setup) in setups {
            let task_id = uuid::Uuid::new_v4().to_string();
            shared.hub.open_task(&task_id, &worker, self.id, round, inbox_tx.clone());
            task_of.insert(worker.clone(), task_id.clone());
            session_of.insert(worker.clone(), shared.hub.generation(&worker));
            let task = pb::Task { task_id, job_id: self.id.into(), round, kind: Some(make_task(&worker, setup)) };
            if !shared.hub.send(&worker, task).await {
                phase.handle_disconnect(&worker, Instant::now());
            }
        }
        drop(inbox_tx);
        let mut liveness = tokio::time::interval(Duration::from_millis(500));
        let result = loop {
            while let Some((worker, message)) = phase.poll_transmit() {
                if let Some(task_id) = task_of.get(&worker) {
                    let relay = pb::Task {
                        task_id: task_id.clone(),
                        job_id: self.id.into(),
                        round,
                        kind: Some(Kind::Secagg(pb::SecAggRelay { message })),
                    };
                    if !shared.hub.send(&worker, relay).await {
                        phase.handle_disconnect(&worker, Instant::now());
                    }
                }
            }
            if let Some(outcome) = phase.outcome() {
                break Some(outcome.clone());
            }
            let wake = tokio::time::Instant::from_std(phase.poll_timeout());
            tokio::select! {
                _ = self.cancel.cancelled() => break None,
                msg = inbox.recv() => match msg {
                    Some(Inbound { worker_id, body, ack, .. }) => {
                        let r = phase.handle_contribution(&worker_id, body, Instant::now());
                        if let Err(e) = &r {
                            tracing::warn!(job = %self.id, round, worker = %worker_id, error = %e, "contribution rejected");
                        }
                        let _ = ack.send(r.map_err(|e| e.to_string()));
                    }
                    None => phase.handle_timeout(Instant::now()),
                },
                _ = tokio::time::sleep_until(wake) => phase.handle_timeout(Instant::now()),
                _ = liveness.tick() => {
                    let gone: Vec<String> = phase
                        .pending()
                        .filter(|w| !shared.hub.is_connected(w) || session_of.get(w).copied().flatten() != shared.hub.generation(w))
                        .collect();
                    for w in gone {
                        phase.handle_disconnect(&w, Instant::now());
                    }
                }
            }
        };
        shared.hub.close_tasks(task_of.values());
        // Tell workers still busy with this phase to stop.
        let pending: Vec<String> = phase.pending().collect();
        for w in pending {
            if let Some(task_id) = task_of.get(&w) {
                let cancel = pb::Task {
                    task_id: task_id.clone(),
                    job_id: self.id.into(),
                    round,
                    kind: Some(Kind::Cancel(pb::CancelTask { reason: "phase over".into() })),
                };
                shared.hub.send(&w, cancel).await;
            }
        }
        Ok(result)
    }
}

/// Combines train and evaluation outcomes: the status is the training one (whether the
/// worker's update is in the model); an evaluation failure is added as the reason.
fn merge(train: Vec<ParticipantRecord>, eval: Vec<ParticipantRecord>) -> Vec<ParticipantRecord> {
    train
        .into_iter()
        .map(|t| match eval.iter().find(|e| e.worker_id == t.worker_id) {
            Some(e) if e.status != "contributed" && t.status == "contributed" => {
                ParticipantRecord { reason: format!("evaluation {}: {}", e.status, e.reason), ..t }
            }
            _ => t,
        })
        .collect()
}
