//! Record-level DP for tree jobs (`kind = "gbdt"`, `[privacy] mode = "record"`) in memory: the
//! coordinator's `JobMachine` and honest banks running the worker's real `TaskMachine`s and its
//! real tree code under secure aggregation. The job completes on noisy sums, and every vector a
//! bank computed for a tree level or for the binning statistics is the exact one plus Gaussian
//! noise of the stated scale (σ·Δ per level entry): what leaves the bank, before masking.

use confide_harness::fixture::{self, FakeCompute};
use confide_harness::honest::{ComputeTap, HonestBank};
use confide_harness::{Bank, Federation};
use confide_worker::task::TaskKind;
use confide_worker::trees;

const BANKS: usize = 3;
const SIGMA: f64 = 1.5;

fn compute(i: usize) -> FakeCompute {
    FakeCompute::new(60 + 20 * i, i as u64, 0.0)
}

/// A DP tree job. The harness banks' test rows are their 60–120 training rows: evaluation
/// noise at the usual scale would swamp their log loss (and trip the divergence check), so the
/// evaluations here are nearly exact; the levels carry the noise under test.
fn job(trees: u64) -> String {
    format!(
        "name = \"harness-dp-trees\"\ndataset = \"toy\"\n[model]\nkind = \"gbdt\"\nmax_depth = 3\nmin_leaf_rows = 10\n[training]\nrounds = {trees}\n\
         learning_rate = 0.3\n[selection]\nmin_workers = 3\n[privacy]\nmode = \"record\"\nnoise_multiplier = {SIGMA}\n\
         evaluation_noise_multiplier = 0.05\n"
    )
}

fn sd(diffs: &[f64]) -> f64 {
    (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt()
}

#[test]
fn a_dp_tree_job_completes_and_every_level_vector_carries_the_stated_noise() {
    let (mut banks, mut taps): (Vec<Box<dyn Bank>>, Vec<ComputeTap>) = (Vec::new(), Vec::new());
    for i in 1..=BANKS {
        let bank = HonestBank::with_defaults(&format!("bank{i}"), compute(i));
        taps.push(bank.computations());
        banks.push(bank.boxed());
    }
    let mut f = Federation::new(fixture::job(&job(3)), banks);
    f.run();
    f.completed();
    assert_eq!(f.store.rounds.len(), 3, "one committed round per tree");

    let schema = fixture::schema();
    let (mut level_diffs, mut expected_sd, mut levels) = (Vec::new(), None, 0);
    for (i, tap) in taps.iter().enumerate() {
        let table = compute(i + 1).table;
        let computed = tap.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (req, noisy) in &computed {
            assert!(req.dp.is_some(), "every task of the job carries its DP terms");
            match &req.kind {
                TaskKind::Grow { model, tree, pos_weight, .. } => {
                    let checkpoint = req.checkpoint.as_deref().expect("checkpoint");
                    let subsample = model.spec.gbdt().map_or(1.0, |g| g.subsample);
                    let exact = trees::level_contribution(
                        &trees::Boosters::default(),
                        &table,
                        &schema,
                        &req.job_id,
                        checkpoint,
                        tree,
                        *pos_weight,
                        subsample,
                        None,
                    )
                    .expect("exact level");
                    assert_eq!(exact.len(), noisy.len());
                    let diffs: Vec<f64> = noisy.iter().zip(&exact).map(|(n, e)| n - e).collect();
                    assert!(diffs.iter().all(|d| *d != 0.0), "bank{} level {}: an entry left the bank without noise", i + 1, tree.depth);
                    let stated = SIGMA * trees::level_sensitivity(tree.features.len(), *pos_weight);
                    assert!(expected_sd.is_none_or(|s: f64| (s - stated).abs() < 1e-12), "one scale for the job");
                    expected_sd = Some(stated);
                    level_diffs.extend(diffs);
                    levels += 1;
                }
                TaskKind::Stats { fine_histograms: true, .. } => {
                    let exact = trees::binning_stats(&table, &schema, None).expect("exact statistics");
                    assert_eq!(exact.len(), noisy.len());
                    assert!(noisy.iter().zip(&exact).all(|(n, e)| n != e), "bank{}: statistics without noise", i + 1);
                }
                _ => {}
            }
        }
    }
    // Three trees of up to three levels at each of three banks.
    assert!(levels >= 3 * BANKS, "{levels} level vectors");
    let stated = expected_sd.expect("some level");
    let measured = sd(&level_diffs);
    assert!((measured / stated - 1.0).abs() < 0.1, "level noise sd {measured} over {} entries, stated {stated}", level_diffs.len());
}
