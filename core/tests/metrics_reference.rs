//! The exact histogram metrics of `confide_core::metrics` checked against independent,
//! deliberately naive references computed from raw scores: O(n²) pair counting for AUC, a
//! threshold sweep for KS, and per-row sums for log loss, Brier score and the confusion counts.
//! (The unit tests in `metrics.rs` cover AUC on grid scores and additivity; these add KS,
//! off-grid scores with the documented bucket-resolution bound, and the scalar metrics.)

use confide_core::metrics::EvalContribution;
use proptest::prelude::*;

/// AUC by counting every positive/negative pair: 1 when the positive scores higher, ½ on a tie.
fn brute_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if labels[i] && !labels[j] {
                pairs += 1.0;
                wins += if si > sj {
                    1.0
                } else if si == sj {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

/// KS: the largest gap between the empirical CDFs of negatives and positives, over every
/// threshold that is a score in the data (the CDFs only change there).
fn brute_ks(scores: &[f64], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|&&y| y).count() as f64;
    let negatives = labels.len() as f64 - positives;
    scores
        .iter()
        .map(|&t| {
            let pos_below = scores.iter().zip(labels).filter(|&(&s, &y)| y && s <= t).count() as f64;
            let neg_below = scores.iter().zip(labels).filter(|&(&s, &y)| !y && s <= t).count() as f64;
            (neg_below / negatives - pos_below / positives).abs()
        })
        .fold(0.0, f64::max)
}

/// Fraction of positive/negative pairs whose scores differ but fall in the same bucket: the
/// only pairs the histogram cannot order, each off by at most ½.
fn same_bucket_pair_fraction(scores: &[f64], labels: &[bool], buckets: usize) -> f64 {
    let bucket = |s: f64| ((s * buckets as f64) as usize).min(buckets - 1);
    let (mut shared, mut pairs) = (0.0, 0.0);
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if labels[i] && !labels[j] {
                pairs += 1.0;
                if si != sj && bucket(si) == bucket(sj) {
                    shared += 1.0;
                }
            }
        }
    }
    shared / pairs
}

fn contribution(scores: &[f64], labels: &[bool], buckets: usize) -> EvalContribution {
    let probs: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
    let ys: Vec<f32> = labels.iter().map(|&y| if y { 1.0 } else { 0.0 }).collect();
    EvalContribution::from_predictions(&probs, &ys, buckets)
}

/// Scores exactly representable in f32, so the f64 reference sees the values the metrics see.
fn f32_scores(raw: &[f32]) -> Vec<f64> {
    raw.iter().map(|&s| f64::from(s)).collect()
}

fn both_classes(labels: &[bool]) -> bool {
    labels.iter().any(|&y| y) && labels.iter().any(|&y| !y)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Scores on the bucket grid (one score per bucket centre): KS from the histograms is exact.
    #[test]
    fn ks_on_grid_scores_equals_the_threshold_sweep(
        rows in proptest::collection::vec((0u32..50, any::<bool>()), 2..150),
    ) {
        let buckets = 50;
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        prop_assume!(both_classes(&labels));
        let raw: Vec<f32> = rows.iter().map(|r| (r.0 as f32 + 0.5) / buckets as f32).collect();
        let scores = f32_scores(&raw);
        let m = contribution(&scores, &labels, buckets).metrics();
        prop_assert!((m["ks"] - brute_ks(&scores, &labels)).abs() < 1e-12, "ks {} vs {}", m["ks"], brute_ks(&scores, &labels));
        prop_assert!((m["auc"] - brute_auc(&scores, &labels)).abs() < 1e-12);
        prop_assert!((m["gini"] - (2.0 * brute_auc(&scores, &labels) - 1.0)).abs() < 1e-12);
    }

    /// Arbitrary scores in [0, 1]: the histogram AUC differs from the pairwise AUC by at most
    /// half the fraction of pairs that share a bucket with different scores.
    #[test]
    fn auc_on_arbitrary_scores_is_within_the_bucket_resolution(
        rows in proptest::collection::vec((0.0f32..=1.0, any::<bool>()), 2..150),
        buckets in prop_oneof![Just(10usize), Just(100), Just(10_000)],
    ) {
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        prop_assume!(both_classes(&labels));
        let scores = f32_scores(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let auc = contribution(&scores, &labels, buckets).metrics()["auc"];
        let exact = brute_auc(&scores, &labels);
        let bound = 0.5 * same_bucket_pair_fraction(&scores, &labels, buckets);
        prop_assert!((auc - exact).abs() <= bound + 1e-12, "auc {auc} vs exact {exact}, bound {bound}");
    }

    /// Arbitrary scores: KS from histograms can only under-read the sweep (it sees coarser
    /// thresholds), and by no more than the largest share of either class in one bucket.
    #[test]
    fn ks_on_arbitrary_scores_is_within_the_bucket_resolution(
        rows in proptest::collection::vec((0.0f32..=1.0, any::<bool>()), 2..150),
        buckets in prop_oneof![Just(10usize), Just(100), Just(10_000)],
    ) {
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        prop_assume!(both_classes(&labels));
        let scores = f32_scores(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let c = contribution(&scores, &labels, buckets);
        let ks = c.metrics()["ks"];
        let exact = brute_ks(&scores, &labels);
        let (p, n) = (c.pos_hist.iter().sum::<f64>(), c.neg_hist.iter().sum::<f64>());
        let widest = c.pos_hist.iter().zip(&c.neg_hist).map(|(a, b)| (a / p).max(b / n)).fold(0.0, f64::max);
        prop_assert!(ks <= exact + 1e-12, "histogram KS {ks} exceeds the sweep {exact}");
        prop_assert!(exact - ks <= widest + 1e-12, "ks {ks} vs exact {exact}, widest bucket {widest}");
    }

    /// Log loss, Brier score, accuracy, precision and recall equal their per-row definitions.
    #[test]
    fn scalar_metrics_equal_their_per_row_definitions(
        rows in proptest::collection::vec((0.0f32..=1.0, any::<bool>()), 1..200),
    ) {
        let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let scores = f32_scores(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let m = contribution(&scores, &labels, 100).metrics();
        let n = scores.len() as f64;
        let clamp = |p: f64| p.clamp(1e-7, 1.0 - 1e-7);
        let log_loss = scores.iter().zip(&labels).map(|(&p, &y)| if y { -clamp(p).ln() } else { -(1.0 - clamp(p)).ln() }).sum::<f64>() / n;
        let brier = scores.iter().zip(&labels).map(|(&p, &y)| (p - if y { 1.0 } else { 0.0 }).powi(2)).sum::<f64>() / n;
        let count = |pred: bool, actual: bool| scores.iter().zip(&labels).filter(|&(&p, &y)| (p >= 0.5) == pred && y == actual).count() as f64;
        let (tp, fp, fn_, tn) = (count(true, true), count(true, false), count(false, true), count(false, false));
        prop_assert!((m["log_loss"] - log_loss).abs() < 1e-9);
        prop_assert!((m["brier"] - brier).abs() < 1e-12);
        prop_assert!((m["accuracy"] - (tp + tn) / n).abs() < 1e-12);
        prop_assert_eq!(m.get("precision").copied(), (tp + fp > 0.0).then(|| tp / (tp + fp)));
        prop_assert_eq!(m.get("recall").copied(), (tp + fn_ > 0.0).then(|| tp / (tp + fn_)));
        prop_assert!((m["positive_rate"] - labels.iter().filter(|&&y| y).count() as f64 / n).abs() < 1e-12);
    }
}

/// A hand-checked fixture: 3 positives, 3 negatives, one cross-class tie.
#[test]
fn small_fixture_matches_hand_computed_values() {
    let scores = [0.15, 0.35, 0.55, 0.55, 0.75, 0.95];
    let labels = [false, true, false, true, false, true];
    // Pairs (pos, neg): 0.35>0.15; 0.55>0.15, 0.55=0.55 (½); 0.95 beats all 3 → 1+1.5+3 = 5.5 of 9.
    let m = contribution(&scores, &labels, 10_000).metrics();
    assert!((m["auc"] - 5.5 / 9.0).abs() < 1e-12, "auc {}", m["auc"]);
    assert!((brute_auc(&scores, &labels) - 5.5 / 9.0).abs() < 1e-12);
    // CDF gaps at thresholds 0.15, 0.35, 0.55, 0.75, 0.95: 1/3, 0, 0, 1/3, 0.
    assert!((m["ks"] - 1.0 / 3.0).abs() < 1e-12, "ks {}", m["ks"]);
    assert!((brute_ks(&scores, &labels) - 1.0 / 3.0).abs() < 1e-12);
}
