//! Institution-level DP end to end in memory: the coordinator's `JobMachine` chooses the noise
//! plan's encoding, honest banks (the worker's real `TaskMachine`s) clip, round and add their
//! discrete Gaussian shares under real secure aggregation, and the model moves by the mean
//! update plus the noise of the sum — with the weight summed exactly (the mean's scale below).

use confide_core::model::ModelParams;
use confide_core::outcome::ParticipantStatus;
use confide_harness::fixture::{self, FakeCompute};
use confide_harness::honest::HonestBank;
use confide_harness::{Bank, Federation};

const BANKS: usize = 4;
const ROUNDS: u64 = 3;

fn banks(unweighted: bool) -> Vec<Box<dyn Bank>> {
    (1..=BANKS)
        .map(|i| {
            let compute = FakeCompute { unweighted, ..FakeCompute::new(30 + 10 * i, i as u64, 0.01 * (i as f64 + 1.0)) };
            HonestBank::with_defaults(&format!("bank{i}"), compute).boxed()
        })
        .collect()
}

fn head(f: &Federation) -> ModelParams {
    ModelParams::read_safetensors_any(f.store.head_model().expect("head")).expect("readable")
}

#[test]
fn an_institution_dp_job_trains_on_noisy_sums_with_the_weight_exact() {
    let privacy = "[privacy]\nmode = \"institution\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndropout_allowance = 1\n";
    let mut dp = Federation::new(fixture::job(&fixture::job_toml(ROUNDS, privacy)), banks(true));
    dp.run();
    dp.completed();
    // Without privacy, the unweighted updates average to the mean of the banks' deltas.
    let mut exact = Federation::new(fixture::job(&fixture::job_toml(ROUNDS, "")), banks(true));
    exact.run();
    exact.completed();
    for r in &dp.store.rounds {
        assert!(r.participants.iter().all(|p| p.status == ParticipantStatus::Contributed), "round {}: {:?}", r.round, r.participants);
        assert_eq!(r.metrics["contributors"], BANKS as f64, "round {}", r.round);
        assert!(!r.metrics.contains_key("train_examples"), "a DP round publishes no row count");
    }
    let (noisy, plain) = (head(&dp), head(&exact));
    let diffs: Vec<f64> = noisy.values.iter().zip(&plain.values).map(|(a, b)| f64::from(a - b)).collect();
    // The mean over 4 banks of updates carrying noise of σ·C over the sum: per round the
    // parameter moves by noise of standard deviation ≈ σ·C·√(4/3)/4 ≈ 0.29.
    let per_round = 1.0 * 1.0 * (BANKS as f64 / (BANKS - 1) as f64).sqrt() / BANKS as f64;
    let bound = 8.0 * per_round * (ROUNDS as f64).sqrt();
    assert!(diffs.iter().all(|d| d.abs() < bound), "noise beyond 8 standard deviations: {diffs:?}");
    let rms = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    assert!(rms > per_round / 10.0, "the sum carries noise: rms {rms} vs {per_round} per round");
}
