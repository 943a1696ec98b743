//! A coordinator that cheats, against banks running the worker's real task logic: each test
//! tries one of the holes of the guard issue and checks that the banks refuse and that what the
//! coordinator received does not determine a bank's input. Attacks that need no modified
//! coordinator (differencing jobs) run through the real `JobMachine`; the others feed scripted
//! wire tasks straight into a bank, as a modified coordinator would send them.

use confide_coordinator::round::machine::Persist;
use confide_core::outcome::{FailureKind, ParticipantStatus};
use confide_harness::fixture::{self, FakeCompute};
use confide_harness::honest::HonestBank;
use confide_harness::{Bank, Federation};
use confide_proto::v1::{self as pb, contribution::Body, task::Kind};
use confide_worker::task::Failure;

fn compute(i: usize) -> FakeCompute {
    FakeCompute::new(30 + 10 * i, i as u64, 0.01 * (i as f64 + 1.0))
}

fn bank(i: usize) -> HonestBank {
    HonestBank::with_defaults(&format!("bank{i}"), compute(i))
}

fn boxed(banks: Vec<HonestBank>) -> Vec<Box<dyn Bank>> {
    banks.into_iter().map(HonestBank::boxed).collect()
}

/// Everything `tap` saw leave the bank.
fn bodies(tap: &confide_harness::honest::Wiretap) -> Vec<Body> {
    tap.lock().expect("tap").iter().filter_map(|(_, c)| c.body.clone()).collect()
}

#[test]
fn a_plain_flag_in_the_task_does_not_make_a_bank_send_its_vector_in_the_clear() {
    // A coordinator's job asks for plain aggregation (it would see every bank's statistics).
    let banks: Vec<HonestBank> = (1..=3).map(bank).collect();
    let taps: Vec<_> = banks.iter().map(HonestBank::wiretap).collect();
    let toml = format!("insecure_plain_aggregation = true\n{}", fixture::job_toml(1, "[selection]\nmax_round_attempts = 1"));
    let mut f = Federation::new(fixture::job(&toml), boxed(banks));
    f.run();
    // Every bank refused (deterministic): the job fails at once rather than asking again.
    assert!(f.failure().starts_with("preprocessing statistics not retried: bank1 refused: policy refusal"), "{}", f.failure());
    for tap in &taps {
        let sent = bodies(tap);
        assert!(!sent.iter().any(|b| matches!(b, Body::Plain(_))), "a plain vector left the bank: {sent:?}");
        assert!(sent.iter().all(|b| matches!(b, Body::Failure(r) if r.typed_kind() == Some(FailureKind::Policy))), "{sent:?}");
    }
    // Before the guard, the same job gave the coordinator each bank's exact statistics.
    assert!(f.store.prep_json.is_none());
}

#[test]
fn the_same_job_without_one_bank_cannot_difference_the_statistics() {
    // The curious admin of the issue: a job over banks 1-4, then the same job while bank 4 is
    // offline. Banks 1-3 compute identical statistics both times; the second sum minus the
    // first would be bank 4's statistics (its row count, its column sums).
    let job = fixture::job(&fixture::job_toml(1, "[selection]\nmax_round_attempts = 2"));
    let mut first = Federation::new(job.clone(), boxed((1..=4).map(bank).collect()));
    first.run();
    first.completed();
    let mut banks = first.into_banks();
    banks.retain(|b| b.info().id != "bank4");
    let mut second = Federation::new(job, banks);
    second.run();
    let err = second.failure();
    assert!(err.starts_with("preprocessing statistics not retried"), "{err}");
    assert!(err.contains("policy refusal"), "the banks refused to unmask: {err}");
    assert!(second.store.prep_json.is_none(), "no statistics over banks 1-3 were revealed");
    assert!(!second.store.writes.iter().any(|w| matches!(w, Persist::Start { .. })));
}

#[test]
fn a_round_without_one_bank_cannot_isolate_its_count() {
    // Rounds over banks 1-4, then the coordinator leaves bank 4 out: Σn over 1-4 minus Σn over
    // 1-3 would be bank 4's training rows (the round's `train_examples`).
    let mut f = Federation::new(fixture::job(&fixture::job_toml(3, "[selection]\nmax_round_attempts = 2")), boxed((1..=4).map(bank).collect()));
    f.run_until(|f| f.store.rounds.len() == 1);
    f.disconnect("bank4");
    f.run();
    assert_eq!(f.store.rounds.len(), 1, "no sum over banks 1-3 was revealed");
    let err = f.failure();
    assert!(err.starts_with("round 2 not retried"), "{err}");
    for b in ["bank1", "bank2", "bank3"] {
        assert!(err.contains(&format!("{b} refused: policy refusal ({b}'s log, ref ")), "{err}");
    }
}

/// The seed the machine asks local training to start from, for one delivery of `task`.
fn training_seed(f: &Federation, task: &pb::Task, machine_seed: [u8; 32]) -> u64 {
    use confide_worker::task::{BankProfile, DatasetRef, Effect, TaskKind, TaskMachine};
    let profile = BankProfile {
        institution_id: "bank1".into(),
        identity: confide_harness::honest::identity("bank1"),
        datasets: vec![DatasetRef { name: "toy".into(), schema_fingerprint: fixture::schema().fingerprint() }],
        unavailable: Vec::new(),
        one_class: Vec::new(),
        min_participants: 3,
        federation_ca: None,
        allow_plain_aggregation: false,
        share_error_details: false,
        floors: Default::default(),
    };
    let mut m = TaskMachine::from_wire(&profile, task.clone(), machine_seed);
    for _ in 0..100 {
        match m.poll_effect() {
            Some(Effect::Admit(_)) => m.handle_admission(Ok(())),
            Some(Effect::Fetch(req)) => m.handle_fetched(req.blob, f.store.blobs.get(&req.hash).cloned().ok_or_else(|| Failure::protocol("no blob"))),
            Some(Effect::Compute(req)) => match req.kind {
                TaskKind::Train { local, .. } => return local.seed,
                other => panic!("not training: {other:?}"),
            },
            Some(_) => {}
            None => break,
        }
    }
    panic!("the machine never asked to train")
}

#[test]
fn a_rerun_of_the_same_training_does_not_start_from_the_coordinators_seed() {
    // The coordinator reruns round 1 with the same seed and model: each run trains from the
    // task's seed mixed with the bank's own secret randomness, so the two vectors are not one
    // deterministic computation that two sums over different sets could difference.
    let mut f = Federation::new(fixture::job(&fixture::job_toml(1, "")), boxed((1..=3).map(bank).collect()));
    f.run();
    f.completed();
    let (_, train) = f.assigned.iter().find(|(w, t)| w == "bank1" && matches!(t.kind, Some(Kind::Train(_)))).cloned().expect("task");
    let Some(Kind::Train(t)) = &train.kind else { unreachable!() };
    let coordinators: confide_core::job::LocalTraining = serde_json::from_str(&t.train_config_json).expect("config");
    let (first, second) = (training_seed(&f, &train, [1; 32]), training_seed(&f, &train, [2; 32]));
    assert_ne!(first, second, "two runs of the same task train from different seeds");
    assert_ne!(first, coordinators.seed, "not the coordinator's seed");
}

#[test]
fn failure_reports_carry_a_kind_and_a_reference_not_the_banks_data() {
    let mut broken = bank(4);
    broken.fail_with = Some(Failure::data("bank4/train.csv line 42, column income: not a number: '1234567'"));
    let tap = broken.wiretap();
    let mut banks: Vec<HonestBank> = (1..=3).map(bank).collect();
    banks.push(broken);
    let mut f = Federation::new(fixture::job(&fixture::job_toml(1, "")), boxed(banks));
    f.run();
    let reports: Vec<pb::TaskFailure> = bodies(&tap)
        .into_iter()
        .filter_map(|b| match b {
            Body::Failure(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(!reports.is_empty(), "a failure report");
    for report in &reports {
        assert_eq!(report.typed_kind(), Some(FailureKind::Data));
        assert!(report.reason.is_empty(), "{report:?}");
        assert_eq!(report.reference.len(), 12);
    }
    let recorded = f.store.failed.iter().map(|(_, _, p)| p.clone()).chain(f.store.rounds.iter().flat_map(|r| r.participants.clone()));
    let b4: Vec<_> = recorded.filter(|p| p.worker_id == "bank4" && p.status == ParticipantStatus::Failed).collect();
    assert!(!b4.is_empty());
    for p in b4 {
        assert!(reports.iter().any(|r| p.reason == format!("data error (bank4's log, ref {})", r.reference)), "{}", p.reason);
        assert!(!p.reason.contains("1234567") && !p.reason.contains("train.csv"));
    }
}

#[test]
fn a_bank_that_shares_details_still_reports_them() {
    let policy = confide_worker::config::PolicyConfig { share_error_details: true, ..Default::default() };
    let mut dev = HonestBank::new("bank4", compute(4), policy);
    dev.fail_with = Some(Failure::data("bank4/train.csv line 42, column income"));
    let mut banks: Vec<HonestBank> = (1..=3).map(bank).collect();
    banks.push(dev);
    let mut f = Federation::new(fixture::job(&fixture::job_toml(1, "")), boxed(banks));
    f.run();
    let b4 = f.store.failed.iter().map(|(_, _, p)| p.clone()).chain(f.store.rounds.iter().flat_map(|r| r.participants.clone())).find(|p| p.worker_id == "bank4");
    assert_eq!(b4.map(|p| p.reason), Some("data: bank4/train.csv line 42, column income".to_string()));
}
