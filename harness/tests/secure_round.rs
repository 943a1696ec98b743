//! Secure rounds end to end in memory: the coordinator's `JobMachine` (with the secure-
//! aggregation server inside) and honest banks running the worker's real `TaskMachine`s, on a
//! virtual clock. Dropouts at every phase, refusals, cancel and resume.

use confide_core::model::ModelParams;
use confide_core::outcome::ParticipantStatus;
use confide_coordinator::round::machine::JobEnd;
use confide_harness::fixture::{self, FakeCompute, Phase};
use confide_harness::honest::HonestBank;
use confide_harness::{Bank, Ended, Federation, ScriptedBank};
use confide_proto::v1::{contribution::Body, task::Kind};
use confide_worker::config::PolicyConfig;

fn compute(i: usize) -> FakeCompute {
    FakeCompute::new(30 + 10 * i, i as u64, 0.01 * (i as f64 + 1.0))
}

fn honest(n: usize) -> Vec<Box<dyn Bank>> {
    (1..=n).map(|i| HonestBank::with_defaults(&format!("bank{i}"), compute(i)).boxed()).collect()
}

/// Banks that accept a changing set of contributors (count protection off): dropouts are the
/// point of these tests; the protection has its own (`malicious_coordinator.rs`).
fn tolerant(n: usize) -> Vec<Box<dyn Bank>> {
    let policy = PolicyConfig { protect_counts: false, ..PolicyConfig::default() };
    (1..=n).map(|i| HonestBank::new(&format!("bank{i}"), compute(i), policy.clone()).boxed()).collect()
}

fn head(f: &Federation) -> ModelParams {
    ModelParams::read_safetensors_any(f.store.head_model().expect("head")).expect("readable")
}

fn status(f: &Federation, round: u64, bank: &str) -> (ParticipantStatus, String) {
    let r = f.store.rounds.iter().find(|r| r.round == round).unwrap_or_else(|| panic!("round {round} not committed"));
    let p = r.participants.iter().find(|p| p.worker_id == bank).unwrap_or_else(|| panic!("{bank} not in round {round}"));
    (p.status, p.reason.clone())
}

#[test]
fn secure_rounds_give_the_plain_result_to_the_quantisation_bound() {
    let mut secure = Federation::new(fixture::job(&fixture::job_toml(3, "")), honest(4));
    secure.run();
    secure.completed();
    let plain_toml = format!("insecure_plain_aggregation = true\n{}", fixture::job_toml(3, ""));
    let plain_banks: Vec<Box<dyn Bank>> = (1..=4).map(|i| ScriptedBank::new(&format!("bank{i}"), compute(i)).boxed()).collect();
    let mut plain = Federation::new(fixture::job(&plain_toml), plain_banks);
    plain.run();
    plain.completed();
    let (s, p) = (head(&secure), head(&plain));
    let worst = s.values.iter().zip(&p.values).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "secure and plain models differ by {worst}");
    assert_eq!(secure.store.rounds[2].metrics["train_examples"], plain.store.rounds[2].metrics["train_examples"]);
    // Only masked vectors left the banks: no plain contribution in secure mode.
    for r in 1..=3 {
        assert_eq!(status(&secure, r, "bank1").0, ParticipantStatus::Contributed);
    }
}

/// Runs a 2-round secure job in which bank4 disconnects as soon as the coordinator has relayed
/// `relays` secure-aggregation messages to it in `phase` of round `round`.
fn drop_bank4(phase: Phase, round: u64, relays: usize) -> Federation {
    let mut f = Federation::new(fixture::job(&fixture::job_toml(2, "[selection]\nround_deadline_secs = 120")), tolerant(5));
    let task_of = |f: &Federation| {
        f.assigned.iter().find(|(w, t)| w == "bank4" && t.round == round && t.kind.as_ref().and_then(Phase::of) == Some(phase)).map(|(_, t)| t.task_id.clone())
    };
    f.run_until(|f| {
        let Some(task) = task_of(f) else { return false };
        f.relayed.iter().filter(|(w, t)| w == "bank4" && t.task_id == task && matches!(t.kind, Some(Kind::Secagg(_)))).count() >= relays
    });
    f.disconnect("bank4");
    f.run();
    f
}

#[test]
fn a_bank_dropping_out_at_any_stage_of_a_training_round_leaves_a_correct_sum() {
    for relays in 0..=3 {
        let f = drop_bank4(Phase::Train, 1, relays);
        f.completed();
        let (st, reason) = status(&f, 1, "bank4");
        assert_ne!(st, ParticipantStatus::Refused, "after {relays} relays: {reason}");
        let contributors = f.store.rounds[0].metrics["contributors"];
        let examples = f.store.rounds[0].metrics["train_examples"];
        // Rows of banks 1-5 are 40, 50, 60, 70, 80. Either bank4's masked input made it into
        // the sum (it dropped after sending it) or it did not — never half of it.
        match st {
            ParticipantStatus::Contributed => assert_eq!((contributors, examples), (5.0, 300.0), "after {relays} relays"),
            _ => assert_eq!((contributors, examples), (4.0, 230.0), "after {relays} relays: {st:?} {reason}"),
        }
    }
}

#[test]
fn dropouts_during_statistics_and_evaluation_do_not_stop_the_job() {
    let f = drop_bank4(Phase::Statistics, 0, 1);
    f.completed();
    let prep: confide_datasets::Preprocessing = serde_json::from_str(f.store.prep_json.as_deref().expect("prep")).expect("json");
    assert_eq!(prep.rows, 230, "bank4's statistics are not in the preprocessing");
    let f = drop_bank4(Phase::Evaluate, 1, 1);
    f.completed();
    let (st, reason) = status(&f, 1, "bank4");
    assert_eq!(st, ParticipantStatus::Contributed, "its update is in round 1's model");
    assert!(reason.starts_with("evaluation dropped"), "{reason}");
}

#[test]
fn a_bank_refusing_by_policy_sends_no_key_and_is_shown_refused() {
    // A 2-round job and a bank that contributes to at most 1 round of a job: refused at the
    // job's first task (its statistics), not at round 2, with the key and the job's value.
    let strict = PolicyConfig { max_rounds_per_job: 1, ..PolicyConfig::default() };
    let mut banks = tolerant(3);
    banks.push(HonestBank::new("bank4", compute(4), strict).boxed());
    let mut f = Federation::new(fixture::job(&fixture::job_toml(2, "")), banks);
    f.run();
    f.completed();
    for round in [1, 2] {
        let (st, reason) = status(&f, round, "bank4");
        assert_eq!(st, ParticipantStatus::Refused, "round {round}");
        assert_eq!(reason, "the job has 2 rounds; this bank contributes to at most 1 rounds of a job (policy.max_rounds_per_job = 1)");
        assert_eq!(f.store.rounds[round as usize - 1].metrics["contributors"], 3.0);
    }
    let prep: confide_datasets::Preprocessing = serde_json::from_str(f.store.prep_json.as_deref().expect("prep")).expect("json");
    assert_eq!(prep.rows, 40 + 50 + 60, "bank4's statistics are not in the preprocessing either");
}

#[test]
fn the_refusing_bank_sends_nothing_but_its_refusal() {
    let strict = PolicyConfig { max_rounds_per_job: 1, ..PolicyConfig::default() };
    let mut bank = HonestBank::new("bank4", compute(4), strict);
    // Drive bank4 by hand through two rounds' training tasks taken from a real federation.
    let mut f = Federation::new(fixture::job(&fixture::job_toml(2, "")), honest(4));
    f.run();
    f.completed();
    let now = f.clock.now();
    for (_, task) in f.assigned.iter().filter(|(w, t)| w == "bank4" && t.kind.as_ref().and_then(Phase::of) == Some(Phase::Train)) {
        bank.deliver(now, task.clone());
    }
    let round2 = f.assigned.iter().find(|(w, t)| w == "bank4" && t.round == 2 && matches!(t.kind, Some(Kind::Train(_)))).map(|(_, t)| t.task_id.clone()).expect("round 2 task");
    let tap = bank.wiretap();
    let sent: Vec<_> = tap.lock().expect("tap").iter().filter(|(t, _)| *t == round2).map(|(_, c)| c.body.clone()).collect();
    assert_eq!(sent.len(), 1, "one message for the refused task: {sent:?}");
    // The refusal travels as its kind, a reference and the policy's reason — the bank's rules
    // checked against the job, nothing of its data.
    let reason = "the job has 2 rounds; this bank contributes to at most 1 rounds of a job (policy.max_rounds_per_job = 1)";
    assert!(matches!(&sent[0], Some(Body::Failure(f)) if f.reason == reason && f.reference.len() == 12), "{sent:?}");
}

#[test]
fn cancel_mid_protocol_stops_every_bank_without_more_messages() {
    let mut f = Federation::new(fixture::job(&fixture::job_toml(3, "")), honest(4));
    f.run_until(|f| f.relayed.iter().any(|(_, t)| t.round == 2 && matches!(t.kind, Some(Kind::Secagg(_)))));
    f.stop();
    f.run();
    assert!(matches!(f.ended, Ended::Finished(JobEnd::Stopped)), "{:?}", f.ended);
    assert_eq!(f.store.rounds.len(), 1);
    let cancels = f.relayed.iter().filter(|(_, t)| t.round == 2 && matches!(t.kind, Some(Kind::Cancel(_)))).count();
    assert_eq!(cancels, 4, "every bank busy with round 2 is told to stop");
}

#[test]
fn a_resumed_secure_job_completes_with_the_uninterrupted_result() {
    let job = fixture::job(&fixture::job_toml(3, ""));
    let mut reference = Federation::new(job.clone(), honest(4));
    reference.run();
    let mut f = Federation::new(job, honest(4));
    f.run_until(|f| f.store.rounds.len() == 1 && f.relayed.iter().any(|(_, t)| t.round == 2));
    f.crash_and_resume();
    f.run();
    f.completed();
    let (a, b) = (head(&f), head(&reference));
    let worst = a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "resumed model differs by {worst}");
}

/// Runs a 2-round secure job with banks under `policy`; the coordinator crashes once round 1's
/// evaluation is under way (every bank admitted it and advertised its keys), before the round
/// is committed, so the resumed coordinator retries round 1 and asks for its evaluation again.
fn crash_during_evaluation(policy: PolicyConfig) -> Federation {
    let banks = (1..=4).map(|i| HonestBank::new(&format!("bank{i}"), compute(i), policy.clone()).boxed()).collect();
    let mut f = Federation::new(fixture::job(&fixture::job_toml(2, "")), banks);
    let evaluations = |f: &Federation| -> Vec<String> {
        f.assigned.iter().filter(|(_, t)| t.round == 1 && matches!(t.kind, Some(Kind::Evaluate(_)))).map(|(_, t)| t.task_id.clone()).collect()
    };
    f.run_until(|f| {
        let tasks = evaluations(f);
        tasks.len() == 4 && f.relayed.iter().filter(|(_, t)| tasks.contains(&t.task_id)).count() >= 4
    });
    assert!(f.store.rounds.is_empty(), "round 1 is not committed yet");
    f.crash_and_resume();
    f.run();
    f
}

#[test]
fn a_round_retried_after_its_evaluation_still_completes_under_the_evaluation_limit() {
    let f = crash_during_evaluation(PolicyConfig::default());
    f.completed();
    let evaluated_round1 = f.assigned.iter().filter(|(w, t)| w == "bank1" && t.round == 1 && matches!(t.kind, Some(Kind::Evaluate(_)))).count();
    assert_eq!(evaluated_round1, 2, "round 1 was evaluated twice: before the crash and on its retry");
    assert!(f.store.rounds[0].metrics.contains_key("auc"));

    // A bank that allows one evaluation per round refuses the retry's: it is typed, so the
    // round is retried instead of hanging, and the job fails naming the bank's rule once the
    // attempts run out — the bank's test set is not queried a second time for round 1.
    let once = PolicyConfig { max_evaluations_per_round: 1, share_error_details: true, ..PolicyConfig::default() };
    let f = crash_during_evaluation(once);
    let failure = f.failure();
    assert!(failure.contains("round 1") && failure.contains("policy.max_evaluations_per_round"), "{failure}");
    let reasons = f.failed_attempt_reasons();
    assert!(!reasons.is_empty() && reasons.iter().all(|r| r.contains("evaluation")), "{reasons:?}");
}

#[test]
fn an_honest_default_job_runs_within_the_banks_floors() {
    // The default job against banks with default floors: threshold, graph, buckets and ranges
    // the coordinator picks are all accepted, and every round has every bank's contribution.
    let mut f = Federation::new(fixture::job(&fixture::job_toml(2, "")), honest(3));
    f.run();
    f.completed();
    for r in 1..=2 {
        for b in 1..=3 {
            assert_eq!(status(&f, r, &format!("bank{b}")).0, ParticipantStatus::Contributed, "round {r} bank{b}");
        }
    }
}

#[test]
fn banks_refusing_by_policy_are_left_out_of_the_retry_so_the_others_reach_the_threshold() {
    // Five banks, two of which do not allow the job's model: at n = 5 the threshold is 4, so
    // the first attempt aborts with three keys; the retry goes without the refusing two.
    let refuse = PolicyConfig { allowed_models: vec!["mlp".into()], ..PolicyConfig::default() };
    let mut banks = honest(3);
    for i in 4..=5 {
        banks.push(HonestBank::new(&format!("bank{i}"), compute(i), refuse.clone()).boxed());
    }
    let mut f = Federation::new(fixture::job(&fixture::job_toml(1, "")), banks);
    f.run();
    f.completed();
    assert_eq!(f.store.rounds[0].metrics["contributors"], 3.0);
    let refused_first: Vec<_> = f.store.failed.iter().filter(|(r, a, p)| *r == 1 && *a == 1 && p.status == ParticipantStatus::Refused).map(|(_, _, p)| p.worker_id.clone()).collect();
    assert_eq!(refused_first, ["bank4", "bank5"]);
}
