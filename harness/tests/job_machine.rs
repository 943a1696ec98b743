//! The coordinator's round logic, as a specification: one `JobMachine` and scripted plain banks
//! on a virtual clock. (Secure aggregation with the worker's real `TaskMachine` is in
//! `secure_round.rs`.) What only the end-to-end tests covered before — selection, deadlines,
//! dropouts, refusals, retries, cancel, resume after a crash, a full disk — is stated here.

use std::time::Duration;

use confide_core::model::ModelParams;
use confide_core::outcome::{FailureKind, ParticipantStatus};
use confide_coordinator::round::activity;
use confide_coordinator::round::errors::PhaseError;
use confide_coordinator::round::machine::{JobEnd, Persist};
use confide_harness::fixture::{self, FakeCompute, Phase};
use confide_harness::store::StoreFault;
use confide_harness::{Bank, Ended, Federation, Script, ScriptedBank};
use confide_proto::v1 as pb;

/// Plain aggregation with two banks allowed (the harness's banks are honest unless scripted).
const PLAIN: &str = "insecure_plain_aggregation = true";

fn toml(rounds: u64, extra: &str) -> String {
    format!("{PLAIN}\n{}", fixture::job_toml(rounds, extra))
}

fn bank(id: &str, rows: usize, delta: f64) -> ScriptedBank {
    ScriptedBank::new(id, FakeCompute::new(rows, rows as u64, delta))
}

fn banks3() -> Vec<Box<dyn Bank>> {
    vec![bank("bank1", 40, 0.01).boxed(), bank("bank2", 60, 0.02).boxed(), bank("bank3", 100, -0.01).boxed()]
}

/// The global model the store holds now.
fn head(f: &Federation) -> ModelParams {
    ModelParams::read_safetensors_any(f.store.head_model().expect("a head model")).expect("readable")
}

fn statuses(f: &Federation, round: u64) -> Vec<(String, ParticipantStatus, String)> {
    let r = f.store.rounds.iter().find(|r| r.round == round).unwrap_or_else(|| panic!("round {round} not committed"));
    r.participants.iter().map(|p| (p.worker_id.clone(), p.status, p.reason.clone())).collect()
}

#[test]
fn statistics_then_rounds_apply_the_weighted_mean_update() {
    let mut f = Federation::new(fixture::job(&toml(3, "")), banks3());
    f.run();
    assert_eq!(f.completed(), None);
    assert_eq!(f.store.rounds.len(), 3);
    // The federation's preprocessing counts every bank's rows.
    let prep: confide_datasets::Preprocessing = serde_json::from_str(f.store.prep_json.as_deref().expect("prep")).expect("json");
    assert_eq!(prep.rows, 200);
    // FedAvg with server rate 1: each round moves every parameter by Σ nδ / Σ n.
    let mean = (40.0 * 0.01 + 60.0 * 0.02 + 100.0 * -0.01) / 200.0;
    let init = ModelParams::init(f.machine_layout(), 42);
    for (w, w0) in head(&f).values.iter().zip(&init.values) {
        assert!((f64::from(*w) - f64::from(*w0) - 3.0 * mean).abs() < 1e-5, "{w} vs {w0} + 3·{mean}");
    }
    let r1 = &f.store.rounds[0];
    assert_eq!(r1.metrics["train_examples"], 200.0);
    assert_eq!(r1.metrics["contributors"], 3.0);
    assert!(r1.metrics.contains_key("auc"), "every round is evaluated by default: {:?}", r1.metrics);
    assert!(statuses(&f, 2).iter().all(|(_, s, _)| *s == ParticipantStatus::Contributed));
}

/// The harness knows the layout only through the job; a helper keeps the tests short.
trait Layout {
    fn machine_layout(&self) -> confide_core::model::ParamLayout;
}

impl Layout for Federation {
    fn machine_layout(&self) -> confide_core::model::ParamLayout {
        let prep: confide_datasets::Preprocessing = serde_json::from_str(self.store.prep_json.as_deref().expect("prep")).expect("json");
        confide_core::model::ModelSpec::LogisticRegression.layout(prep.input_dim())
    }
}

#[test]
fn a_silent_bank_is_dropped_at_the_deadline_and_the_round_completes_without_it() {
    let silent = bank("bank4", 50, 0.5).on(Phase::Train, 2, Script::Silent);
    let mut banks = banks3();
    banks.push(silent.boxed());
    let mut f = Federation::new(fixture::job(&toml(2, "[selection]\nmin_workers = 3\nround_deadline_secs = 30")), banks);
    let t0 = f.clock.now();
    f.run();
    f.completed();
    let r2 = statuses(&f, 2);
    let b4 = r2.iter().find(|(w, _, _)| w == "bank4").expect("bank4 selected");
    assert_eq!((b4.1, b4.2.as_str()), (ParticipantStatus::Dropped, "missed the round deadline"));
    assert_eq!(f.store.rounds[1].metrics["contributors"], 3.0);
    assert!(f.clock.now() >= t0 + Duration::from_secs(30), "round 2 waited for its deadline on the virtual clock");
    // Its evaluation task was never sent: it did not contribute to the model being evaluated.
    let evals_to_b4 = f.assigned.iter().filter(|(w, t)| w == "bank4" && t.round == 2 && t.kind.as_ref().and_then(Phase::of) == Some(Phase::Evaluate)).count();
    assert_eq!(evals_to_b4, 0);
}

#[test]
fn failures_and_refusals_are_recorded_with_their_kind() {
    let failing = bank("bank4", 50, 0.0).on(Phase::Train, 1, Script::Fail(FailureKind::Data, "train.csv line 3, column x1".into()));
    let refusing = bank("bank5", 50, 0.0).on(Phase::Train, 1, Script::Fail(FailureKind::Policy, "at most 0 rounds".into()));
    let mut banks = banks3();
    banks.push(failing.boxed());
    banks.push(refusing.boxed());
    let mut f = Federation::new(fixture::job(&toml(1, "")), banks);
    f.run();
    f.completed();
    let r1 = statuses(&f, 1);
    assert!(r1.contains(&("bank4".into(), ParticipantStatus::Failed, "data: train.csv line 3, column x1".into())), "{r1:?}");
    assert!(r1.contains(&("bank5".into(), ParticipantStatus::Refused, "at most 0 rounds".into())), "{r1:?}");
}

#[test]
fn a_round_without_enough_contributions_is_retried_then_the_job_fails_naming_why() {
    // Two of three banks drop out of every training phase: each attempt ends with 1 of 3,
    // 3 needed; a dropout may not repeat, so the round is retried up to its limit.
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).on(Phase::Train, 1, Script::Silent).boxed(),
        bank("bank3", 40, 0.01).on(Phase::Train, 1, Script::Silent).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(2, "[selection]\nmin_workers = 3\nmax_round_attempts = 3\nround_deadline_secs = 10")), banks);
    f.run();
    let err = f.failure();
    assert!(err.starts_with("round 1 failed 3 times; last: 1 of 3 selected workers contributed, 3 needed"), "{err}");
    assert_eq!(f.failed_attempt_reasons().len(), 3);
    // Every attempt's outcomes are durable, and nothing was committed.
    assert_eq!(f.store.failed.iter().filter(|(r, a, p)| *r == 1 && *a == 3 && p.status == ParticipantStatus::Dropped).count(), 2);
    assert!(f.store.rounds.is_empty());
}

#[test]
fn deterministic_refusals_fail_the_job_at_once_when_too_few_banks_remain() {
    // Two of three banks refuse by policy (deterministic): a retry would fail the same way, so
    // there is one attempt, not five.
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).on(Phase::Train, 1, Script::Fail(FailureKind::Policy, "no".into())).boxed(),
        bank("bank3", 40, 0.01).on(Phase::Train, 1, Script::Fail(FailureKind::Data, "train.csv line 3".into())).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(2, "[selection]\nmin_workers = 3")), banks);
    f.run();
    assert_eq!(
        f.failure(),
        "round 1 not retried: bank2 refused: no; bank3 failed: data: train.csv line 3; a retry would fail the same way, \
         and without them 1 eligible bank is left, 3 needed"
    );
    assert_eq!(f.failed_attempt_reasons().len(), 1, "one attempt, no retries");
    assert_eq!(f.store.failed.iter().filter(|(r, a, _)| *r == 1 && *a == 1).count(), 3);
}

#[test]
fn a_bank_with_a_data_error_is_left_out_of_the_retry_when_enough_remain() {
    // bank4's data is broken. The first attempt fails without enough contributions (bank3
    // restarts mid-phase); the retry goes without bank4 and completes.
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).boxed(),
        bank("bank3", 40, 0.01).on(Phase::Train, 1, Script::Silent).boxed(),
        bank("bank4", 40, 0.01).by_default(Script::Fail(FailureKind::Data, "bad cell".into())).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nmin_workers = 3")), banks);
    f.run_until(|f| f.assigned.iter().any(|(w, t)| w == "bank3" && t.kind.as_ref().and_then(Phase::of) == Some(Phase::Train)));
    f.replace_bank(bank("bank3", 40, 0.01).boxed());
    f.run();
    f.completed();
    let train_tasks_to_b4 = f
        .assigned
        .iter()
        .filter(|(w, t)| w == "bank4" && t.round == 1 && t.kind.as_ref().and_then(Phase::of) == Some(Phase::Train))
        .count();
    assert_eq!(train_tasks_to_b4, 1, "not retried with the same input");
    let b4 = statuses(&f, 1).into_iter().find(|(w, _, _)| w == "bank4").expect("bank4 recorded");
    assert_eq!((b4.1, b4.2.as_str()), (ParticipantStatus::Failed, "data: bad cell"));
}

#[test]
fn a_wrong_vector_is_rejected_and_the_round_goes_on_without_it() {
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).boxed(),
        bank("bank3", 40, 0.01).boxed(),
        bank("bank4", 40, 0.01).on(Phase::Train, 1, Script::Send(vec![1.0; 3])).boxed(),
        bank("bank5", 40, 0.01).on(Phase::Train, 1, Script::Send(vec![f64::NAN; 9])).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nround_deadline_secs = 10")), banks);
    f.run();
    f.completed();
    assert!(f.rejected.iter().any(|(w, e)| w == "bank4" && matches!(e, PhaseError::Length { found: 3, .. })), "{:?}", f.rejected);
    assert!(f.rejected.iter().any(|(w, e)| w == "bank5" && matches!(e, PhaseError::NotFinite { .. } | PhaseError::Length { .. })), "{:?}", f.rejected);
    assert_eq!(f.store.rounds[0].metrics["contributors"], 3.0);
}

#[test]
fn a_bank_that_disconnects_mid_round_is_dropped_at_once() {
    let mut banks = banks3();
    banks.push(bank("bank4", 40, 0.3).on(Phase::Train, 1, Script::Silent).boxed());
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nround_deadline_secs = 3600")), banks);
    f.run_until(|f| f.assigned.iter().any(|(_, t)| t.kind.as_ref().and_then(Phase::of) == Some(Phase::Train)));
    let before = f.clock.now();
    f.disconnect("bank4");
    f.run();
    f.completed();
    assert!(f.clock.now() < before + Duration::from_secs(3600), "no wait for the deadline");
    let b4 = statuses(&f, 1).into_iter().find(|(w, _, _)| w == "bank4").expect("bank4");
    assert_eq!((b4.1, b4.2.as_str()), (ParticipantStatus::Dropped, "disconnected during the round"));
}

#[test]
fn cancel_mid_round_tells_the_busy_banks_and_stops() {
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).on(Phase::Train, 2, Script::Silent).boxed(),
        bank("bank3", 40, 0.01).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(5, "")), banks);
    f.run_until(|f| f.store.rounds.len() == 1 && f.assigned.iter().any(|(_, t)| t.round == 2));
    f.step();
    f.stop();
    f.run();
    assert!(matches!(f.ended, Ended::Finished(JobEnd::Stopped)), "{:?}", f.ended);
    let cancelled: Vec<&str> = f
        .relayed
        .iter()
        .filter(|(_, t)| t.round == 2 && matches!(t.kind, Some(confide_proto::v1::task::Kind::Cancel(_))))
        .map(|(w, _)| w.as_str())
        .collect();
    assert_eq!(cancelled, ["bank2"], "only the bank still busy with round 2 is told to stop");
    assert_eq!(f.store.rounds.len(), 1, "nothing after the cancel is committed");
}

#[test]
fn a_coordinator_crash_mid_round_resumes_from_the_last_commit_with_the_same_result() {
    let job = fixture::job(&toml(4, "[strategy]\nkind = \"fedadam\"\nserver_learning_rate = 0.1"));
    let mut reference = Federation::new(job.clone(), banks3());
    reference.run();
    reference.completed();

    let mut f = Federation::new(job, banks3());
    f.run_until(|f| f.store.rounds.len() == 2 && f.assigned.iter().any(|(_, t)| t.round == 3));
    let committed: Vec<_> = f.store.rounds.clone();
    f.crash_and_resume();
    f.run();
    f.completed();
    assert_eq!(&f.store.rounds[..2], &committed[..], "rounds 1-2 are untouched by the restart");
    assert_eq!(f.store.rounds.len(), 4);
    // The interrupted round ran again from the committed head, FedAdam moments included.
    assert_eq!(head(&f), head(&reference));
    assert_eq!(f.store.rounds[3].metrics, reference.store.rounds[3].metrics);
}

#[test]
fn a_full_disk_during_a_commit_pauses_the_job_which_then_completes_unharmed() {
    let job = fixture::job(&toml(3, ""));
    let mut reference = Federation::new(job.clone(), banks3());
    reference.run();

    let mut f = Federation::new(job, banks3());
    f.run_until(|f| f.store.rounds.len() == 1);
    f.store.fault = StoreFault::DiskFull(4);
    let t = f.clock.now();
    f.run();
    f.completed();
    assert_eq!(f.store.refused_writes, 4);
    // Backoff 1 + 2 + 4 + 8 s on the virtual clock, then the same write went through.
    assert!(f.clock.now() >= t + Duration::from_secs(15), "waited {:?}", f.clock.now() - t);
    assert_eq!(head(&f), head(&reference));
    assert_eq!(f.store.rounds.len(), 3);
    let round_writes = f.store.writes.iter().filter(|w| matches!(w, Persist::Round { .. })).count();
    assert_eq!(round_writes, 3, "each round committed exactly once");
}

#[test]
fn a_corrupted_store_fails_the_job_for_good() {
    let mut f = Federation::new(fixture::job(&toml(3, "")), banks3());
    f.run_until(|f| f.store.rounds.len() == 1);
    f.store.fault = StoreFault::Corrupt;
    f.run();
    assert!(f.failure().contains("corrupted"), "{}", f.failure());
}

#[test]
fn too_few_eligible_workers_fail_the_job_after_the_waiting_limit() {
    let banks = vec![bank("bank1", 40, 0.01).boxed(), bank("bank2", 40, 0.01).boxed()];
    // `wait_for_workers_secs` is the idle timeout's old name; before the first phase it ends
    // the job as not started.
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nmin_workers = 3\nwait_for_workers_secs = 60")), banks);
    let t0 = f.clock.now();
    f.run();
    let fp = activity::short_fingerprint(&fixture::schema().fingerprint());
    assert_eq!(f.failure(), format!("no round could start within 1m: waiting for participants: 2 of 2 connected banks offer toy with schema {fp}, 3 needed"));
    assert_eq!(f.clock.now(), t0 + Duration::from_secs(60));
}

#[test]
fn a_job_waits_for_workers_and_starts_when_enough_connect() {
    let two = vec![bank("bank1", 40, 0.01).boxed(), bank("bank2", 60, 0.02).boxed()];
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nmin_workers = 3\nstart_deadline_secs = 0\nidle_timeout_secs = 0")), two);
    f.run();
    assert!(matches!(f.ended, Ended::Running), "waits (no limit) rather than failing");
    assert!(f.assigned.is_empty(), "no task before enough banks are connected");
    f.add_bank(bank("bank3", 100, -0.01).boxed());
    f.run();
    f.completed();
}

#[test]
fn early_stopping_ends_the_job_with_its_reason() {
    // Banks whose evaluation never changes: AUC stays flat, so patience 1 stops after round 2.
    let mut f = Federation::new(fixture::job(&toml(10, "[early_stopping]\nmetric = \"auc\"\npatience = 1")), banks3());
    f.run();
    let reason = f.completed().expect("a stop reason");
    assert!(reason.starts_with("early stopping: auc did not improve"), "{reason}");
    assert_eq!(f.store.rounds.len(), 2);
}

#[test]
fn a_contribution_to_a_closed_or_foreign_task_is_refused() {
    let mut f = Federation::new(fixture::job(&toml(1, "")), banks3());
    f.run_until(|f| f.assigned.iter().any(|(_, t)| t.kind.as_ref().and_then(Phase::of) == Some(Phase::Train)));
    let (owner, task) = f.assigned.iter().rev().find(|(_, t)| t.round == 1).cloned().expect("a training task");
    let other = if owner == "bank1" { "bank2" } else { "bank1" };
    let now = f.clock.now();
    let body = confide_proto::v1::contribution::Body::Plain(confide_proto::v1::PlainVector { values: vec![0.0] });
    let err = f.machine.handle_contribution(now, other, &task.task_id, body).expect_err("not its task");
    assert_eq!(err, PhaseError::Over, "a task id that is not the sender's is refused");
    f.run();
    f.completed();
}

/// The activities the job published, in order: (kind, reason).
fn activities(f: &Federation) -> Vec<(String, String)> {
    f.events
        .iter()
        .filter_map(|(_, e)| match e {
            pb::job_event::Kind::ActivityChanged(a) => Some((a.activity.clone(), a.reason.clone())),
            _ => None,
        })
        .collect()
}

fn offer(name: &str, fingerprint: &str) -> pb::DatasetOffer {
    pb::DatasetOffer { name: name.into(), schema_fingerprint: fingerprint.into() }
}

#[test]
fn a_job_no_bank_fits_says_why_once_and_fails_at_its_start_deadline() {
    let other = "8c1a04f9e2b7".repeat(5);
    let banks = vec![
        bank("bank1", 40, 0.01).boxed(),
        bank("bank2", 40, 0.01).offering(vec![offer("toy", &other)]).boxed(),
        bank("bank3", 40, 0.01).offering(vec![offer("credit", &fixture::schema().fingerprint())]).boxed(),
    ];
    let mut f = Federation::new(fixture::job(&toml(3, "[selection]\nmin_workers = 3")), banks);
    let t0 = f.clock.now();
    f.run();
    let fp = activity::short_fingerprint(&fixture::schema().fingerprint());
    let reason = format!(
        "waiting for participants: 1 of 3 connected banks offers toy with schema {fp}, 3 needed; bank2 offers fingerprint 8c1a04f9e2b7…; \
         bank3 does not offer toy"
    );
    assert_eq!(activities(&f), [("waiting".to_string(), reason.clone())], "said once, not once per check");
    // The coordinator's default start deadline, on the virtual clock.
    assert_eq!(f.failure(), format!("no round could start within 30m: {reason}"));
    assert_eq!(f.clock.now(), t0 + Duration::from_secs(30 * 60));
    assert!(f.assigned.is_empty());
}

#[test]
fn the_waiting_reason_follows_the_banks_that_connect_and_training_clears_it() {
    let mut f = Federation::new(fixture::job(&toml(1, "[selection]\nmin_workers = 3\nstart_deadline_secs = 120")), vec![bank("bank1", 40, 0.01).boxed()]);
    f.run_until(|f| f.machine.activity().is_some());
    f.add_bank(bank("bank2", 40, 0.01).boxed());
    f.add_bank(bank("bank3", 40, 0.01).boxed());
    f.run();
    f.completed();
    let seen = activities(&f);
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["waiting", "waiting", "training"], "{seen:?}");
    assert!(seen[0].1.contains("1 of 1 connected banks offers toy"), "{seen:?}");
    assert!(seen[1].1.contains("2 of 2 connected banks offer toy"), "{seen:?}");
    assert_eq!(seen[2].1, "computing the federation's preprocessing statistics");
    assert!(f.machine.activity().is_none(), "an ended job does nothing");
}

#[test]
fn when_every_bank_stops_mid_job_it_waits_with_the_reason_then_fails_after_its_idle_timeout() {
    let job = toml(5, "[selection]\nmin_workers = 3\nround_deadline_secs = 30\nidle_timeout_secs = 600");
    let mut f = Federation::new(fixture::job(&job), banks3());
    f.run_until(|f| f.store.rounds.len() == 2 && f.assigned.iter().any(|(_, t)| t.round == 3));
    for b in ["bank1", "bank2", "bank3"] {
        f.disconnect(b);
    }
    f.run_until(|f| f.machine.activity().is_some_and(|a| a.kind == activity::ActivityKind::Waiting));
    let waiting_since = f.clock.now();
    let fp = activity::short_fingerprint(&fixture::schema().fingerprint());
    let reason = format!("waiting for participants: no bank is connected; 3 needed offering toy with schema {fp}");
    assert_eq!(f.machine.activity().map(|a| a.reason.clone()), Some(reason.clone()));
    f.run();
    assert_eq!(f.failure(), format!("idle for 10m with no round progress (round 3 could not start): {reason}"));
    assert_eq!(f.clock.now(), waiting_since + Duration::from_secs(600));
    assert_eq!(f.store.rounds.len(), 2, "the committed rounds stay");
}

#[test]
fn a_full_disk_shows_the_job_stalled_once_and_clears_when_writes_succeed() {
    let mut f = Federation::new(fixture::job(&toml(3, "")), banks3());
    f.run_until(|f| f.store.rounds.len() == 1);
    f.store.fault = StoreFault::DiskFull(4);
    f.run_until(|f| f.machine.activity().is_some_and(|a| a.kind == activity::ActivityKind::Stalled));
    assert_eq!(f.machine.activity().map(|a| a.reason.as_str()), Some("stalled: no space left on device"));
    f.run_until(|f| f.store.refused_writes == 4 && f.machine.activity().is_some_and(|a| a.kind == activity::ActivityKind::Training));
    f.run();
    f.completed();
    let seen = activities(&f);
    let stalled = seen.iter().filter(|(k, _)| k == "stalled").count();
    assert_eq!(stalled, 1, "four refused writes, one stalled line: {seen:?}");
    let at = seen.iter().position(|(k, _)| k == "stalled").expect("stalled");
    assert_eq!(seen.get(at + 1).map(|(k, _)| k.as_str()), Some("training"), "resumes by itself: {seen:?}");
}

#[test]
fn a_loss_far_above_round_ones_fails_the_job_as_diverged_before_committing() {
    let mut f = Federation::new(fixture::job(&toml(5, "")), vec![bank("bank1", 40, 0.0).boxed(), bank("bank2", 40, 0.0).boxed(), bank("bank3", 40, 0.0).boxed()]);
    // Round 2 is already summed when round 1 commits (the banks answer at once).
    f.run_until(|f| f.store.rounds.len() == 1);
    for id in ["bank1", "bank2", "bank3"] {
        let mut compute = FakeCompute::new(40, 40, 0.0);
        compute.loss = 30.0;
        f.replace_bank(ScriptedBank::new(id, compute).boxed());
    }
    f.run();
    assert_eq!(f.failure(), "diverged at round 3: train loss 30.0000 (round 1: 0.5000); lower the learning rate");
    assert_eq!(f.store.rounds.len(), 2, "the diverged round is not committed");
}

#[test]
fn a_classifier_loss_ten_times_a_coin_flips_is_divergence_from_round_one() {
    let banks: Vec<Box<dyn Bank>> = ["bank1", "bank2", "bank3"]
        .into_iter()
        .map(|id| {
            let mut compute = FakeCompute::new(40, 40, 0.0);
            compute.loss = 30.0;
            ScriptedBank::new(id, compute).boxed()
        })
        .collect();
    let mut f = Federation::new(fixture::job(&toml(5, "")), banks);
    f.run();
    assert_eq!(f.failure(), "diverged at round 1: train loss 30.0000 (a coin flip scores 0.6931); lower the learning rate");
    assert!(f.store.rounds.is_empty());
}
