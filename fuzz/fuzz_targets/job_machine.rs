//! Random event sequences against the coordinator's `JobMachine` (through the harness's
//! in-memory federation): contributions with hostile bodies (wrong lengths, NaN, stray
//! secure-aggregation bytes, failure reports of unknown kinds), disconnects and reconnects,
//! time jumps, store faults, cancel and crash-resume. The machine must never panic, never
//! emit an effect after finishing, and never commit a round out of order.
#![no_main]

use std::time::Duration;

use confide_coordinator::round::machine::Persist;
use confide_harness::fixture::{self, FakeCompute};
use confide_harness::store::StoreFault;
use confide_harness::{Bank, Ended, Federation, Script, ScriptedBank};
use confide_proto::v1::{self as pb, contribution::Body};
use libfuzzer_sys::fuzz_target;

const BANKS: [&str; 4] = ["bank1", "bank2", "bank3", "bank4"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, ops)) = data.split_first() else { return };
    let extra = "[selection]\nmin_workers = 2\nround_deadline_secs = 20\nmax_round_attempts = 3\n[evaluation]\nscore_buckets = 4";
    let toml = format!("insecure_plain_aggregation = {}\n{}", mode & 1 == 0, fixture::job_toml(3, extra));
    let banks: Vec<Box<dyn Bank>> = BANKS
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let script = if mode & (2 << i) != 0 { Script::Silent } else { Script::Honest };
            ScriptedBank::new(id, FakeCompute::new(20 + i * 7, i as u64, 0.01 * i as f64)).by_default(script).boxed()
        })
        .collect();
    let mut f = Federation::new(fixture::job(&toml), banks);
    for op in ops.chunks(3) {
        let (a, b) = (op.get(1).copied().unwrap_or(0), op.get(2).copied().unwrap_or(0));
        let bank = BANKS[a as usize % BANKS.len()];
        match op[0] % 9 {
            0 | 1 => {
                f.step();
            }
            2 => f.disconnect(bank),
            3 => f.connect(bank),
            4 => f.advance(Duration::from_secs(u64::from(b))),
            5 => {
                f.store.fault = match b % 4 {
                    0 => StoreFault::DiskFull(usize::from(b >> 2)),
                    1 => StoreFault::Corrupt,
                    _ => StoreFault::None,
                }
            }
            6 => {
                let tasks = f.open_tasks();
                let Some((task, owner)) = tasks.get(usize::from(b) % tasks.len().max(1)).cloned() else { continue };
                let from = if a & 0x80 != 0 { bank.to_string() } else { owner };
                let body = match a % 4 {
                    0 => Body::Plain(pb::PlainVector { values: (0..b).map(|i| f64::from(i) * if a & 8 != 0 { f64::NAN } else { 1.0 }).collect() }),
                    1 => Body::Secagg(op.to_vec()),
                    2 => Body::Failure(pb::TaskFailure { kind: i32::from(b), reason: "x".into(), reference: String::from_utf8_lossy(op).into_owned() }),
                    _ => Body::Plain(pb::PlainVector { values: vec![1e300; usize::from(b)] }),
                };
                let _ = f.inject(&from, &task, body);
            }
            7 => f.stop(),
            _ => f.crash_and_resume(),
        }
        if matches!(f.ended, Ended::Finished(_)) {
            assert!(f.machine.is_finished());
            assert!(f.machine.poll_effect().is_none(), "an effect after the end");
        }
        // Rounds commit in order, each once, from 1 on (a resumed round replaces nothing).
        let committed: Vec<u64> = f.store.rounds.iter().map(|r| r.round).collect();
        assert!(committed.iter().enumerate().all(|(i, r)| *r == i as u64 + 1), "rounds committed out of order: {committed:?}");
        let writes = f.store.writes.iter().filter(|w| matches!(w, Persist::Round { .. })).count();
        assert!(writes >= committed.len());
        if matches!(f.ended, Ended::Finished(_)) {
            break;
        }
    }
    f.run();
});
