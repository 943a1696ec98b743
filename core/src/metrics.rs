//! Exact federated metrics for binary classifiers, from additive sums.
//!
//! Each institution contributes one [`EvalContribution`] vector: per-bucket counts of positive
//! and negative scores and a handful of sums. Vectors are added across institutions (by secure
//! aggregation), so the coordinator computes AUC, KS and Gini exactly to the bucket resolution
//! over the union of all test sets — not an average of per-bank AUCs — without seeing a score.

use std::collections::BTreeMap;

/// Number of scalar sums after the two histograms.
pub const EVAL_SUMS: usize = 8;

/// Additive evaluation sums of one institution (or of all, once summed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalContribution {
    /// Positives whose score fell in each bucket (bucket b covers [b/B, (b+1)/B)).
    pub pos_hist: Vec<f64>,
    /// Negatives whose score fell in each bucket.
    pub neg_hist: Vec<f64>,
    /// Examples.
    pub n: f64,
    /// Σ binary cross-entropy.
    pub log_loss_sum: f64,
    /// Σ (p − y)².
    pub brier_sum: f64,
    /// Correct predictions at threshold 0.5.
    pub correct: f64,
    /// True positives at 0.5.
    pub tp: f64,
    /// False positives at 0.5.
    pub fp: f64,
    /// False negatives at 0.5.
    pub fn_: f64,
    /// Positive examples.
    pub positives: f64,
}

impl EvalContribution {
    /// Length of the flat vector for `buckets` score buckets.
    pub fn vector_len(buckets: usize) -> usize {
        2 * buckets + EVAL_SUMS
    }

    /// Builds the contribution from predicted probabilities and 0/1 labels.
    pub fn from_predictions(probs: &[f32], labels: &[f32], buckets: usize) -> Self {
        Self::from_predictions_with_floor(probs, labels, buckets, 1e-7)
    }

    /// [`Self::from_predictions`] with the log loss computed from probabilities clamped to
    /// `[floor, 1 − floor]`, which bounds one row's loss by −ln(floor) (differential privacy).
    pub fn from_predictions_with_floor(probs: &[f32], labels: &[f32], buckets: usize, floor: f64) -> Self {
        let mut c = Self { pos_hist: vec![0.0; buckets], neg_hist: vec![0.0; buckets], ..Self::default() };
        for (&p, &y) in probs.iter().zip(labels) {
            let p = f64::from(p).clamp(0.0, 1.0);
            let positive = y >= 0.5;
            let b = ((p * buckets as f64) as usize).min(buckets.saturating_sub(1));
            let pc = p.clamp(floor, 1.0 - floor);
            c.n += 1.0;
            if positive {
                c.pos_hist[b] += 1.0;
                c.positives += 1.0;
                c.log_loss_sum -= pc.ln();
                c.brier_sum += (1.0 - p) * (1.0 - p);
            } else {
                c.neg_hist[b] += 1.0;
                c.log_loss_sum -= (1.0 - pc).ln();
                c.brier_sum += p * p;
            }
            let predicted = p >= 0.5;
            match (predicted, positive) {
                (true, true) => c.tp += 1.0,
                (true, false) => c.fp += 1.0,
                (false, true) => c.fn_ += 1.0,
                (false, false) => {}
            }
            if predicted == positive {
                c.correct += 1.0;
            }
        }
        c
    }

    /// The flat vector: positive histogram, negative histogram, then the sums.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(Self::vector_len(self.pos_hist.len()));
        v.extend_from_slice(&self.pos_hist);
        v.extend_from_slice(&self.neg_hist);
        v.extend_from_slice(&[
            self.n,
            self.positives,
            self.log_loss_sum,
            self.brier_sum,
            self.correct,
            self.tp,
            self.fp,
            self.fn_,
        ]);
        v
    }

    /// Reads a (summed) flat vector. Counts decoded from fixed point are rounded to integers.
    pub fn from_slice(v: &[f64], buckets: usize) -> Option<Self> {
        if v.len() != Self::vector_len(buckets) || v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let round = |x: f64| x.round().max(0.0);
        let (pos, rest) = v.split_at(buckets);
        let (neg, s) = rest.split_at(buckets);
        Some(Self {
            pos_hist: pos.iter().copied().map(round).collect(),
            neg_hist: neg.iter().copied().map(round).collect(),
            n: round(s[0]),
            positives: round(s[1]),
            log_loss_sum: s[2].max(0.0),
            brier_sum: s[3].max(0.0),
            correct: round(s[4]),
            tp: round(s[5]),
            fp: round(s[6]),
            fn_: round(s[7]),
        })
    }

    /// All metrics, by name.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let (auc, ks) = auc_ks(&self.pos_hist, &self.neg_hist);
        let n = self.n.max(1.0);
        m.insert("examples".into(), self.n);
        if let Some(auc) = auc {
            m.insert("auc".into(), auc);
            m.insert("gini".into(), 2.0 * auc - 1.0);
        }
        if let Some(ks) = ks {
            m.insert("ks".into(), ks);
        }
        m.insert("log_loss".into(), self.log_loss_sum / n);
        m.insert("brier".into(), self.brier_sum / n);
        m.insert("accuracy".into(), self.correct / n);
        if self.tp + self.fp > 0.0 {
            m.insert("precision".into(), self.tp / (self.tp + self.fp));
        }
        if self.tp + self.fn_ > 0.0 {
            m.insert("recall".into(), self.tp / (self.tp + self.fn_));
        }
        m.insert("positive_rate".into(), self.positives / n);
        m
    }
}

/// AUC (ties within a bucket count one half) and KS from score histograms; None without both classes.
pub fn auc_ks(pos: &[f64], neg: &[f64]) -> (Option<f64>, Option<f64>) {
    let p_total: f64 = pos.iter().sum();
    let n_total: f64 = neg.iter().sum();
    if p_total <= 0.0 || n_total <= 0.0 {
        return (None, None);
    }
    let (mut neg_below, mut pos_below, mut num, mut ks) = (0.0, 0.0, 0.0f64, 0.0f64);
    for (p, n) in pos.iter().zip(neg) {
        num += p * (neg_below + 0.5 * n);
        neg_below += n;
        pos_below += p;
        ks = ks.max((neg_below / n_total - pos_below / p_total).abs());
    }
    (Some(num / (p_total * n_total)), Some(ks))
}

/// Whether larger values of `metric` are better; None for an unknown metric.
/// Ranking metrics are named with their cut-off: `hr@10`, `ndcg@10`.
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "auc" | "ks" | "gini" | "accuracy" | "precision" | "recall" => Some(true),
        "log_loss" | "brier" | "rmse" | "mae" => Some(false),
        m => {
            let (name, k) = m.split_once('@')?;
            let k_ok = k.parse::<u32>().is_ok_and(|k| k > 0);
            (k_ok && (name == "hr" || name == "ndcg")).then_some(true)
        }
    }
}

/// Length of a [`RecommendationEval`] vector.
pub const RECOMMENDATION_EVAL_LEN: usize = 7;

/// Additive evaluation sums of a recommendation model at one institution (or all, once summed).
///
/// Rating error is summed over every held-out rating; ranking follows the usual sampled protocol
/// (He et al. 2017): each held-out *relevant* rating is ranked against sampled items its user
/// has not rated, and hits and discounted gains at the cut-off `k` are summed. Institutions send
/// only these sums, so the coordinator's RMSE, HR@k and NDCG@k are exact over all test sets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecommendationEval {
    /// Σ (r̂ − r)² over held-out ratings.
    pub squared_error_sum: f64,
    /// Σ |r̂ − r| over held-out ratings.
    pub absolute_error_sum: f64,
    /// Held-out ratings scored.
    pub ratings: f64,
    /// Relevant held-out items ranked within the top k.
    pub hits: f64,
    /// Σ 1/log2(rank + 2) over relevant held-out items ranked within the top k (rank 0-based).
    pub ndcg_sum: f64,
    /// Relevant held-out items ranked.
    pub ranked: f64,
    /// Users with at least one held-out rating.
    pub users: f64,
}

impl RecommendationEval {
    /// Adds one rating prediction.
    pub fn add_rating(&mut self, predicted: f64, actual: f64) {
        let e = predicted - actual;
        self.squared_error_sum += e * e;
        self.absolute_error_sum += e.abs();
        self.ratings += 1.0;
    }

    /// Adds one ranked relevant item: its score against the sampled negatives' scores.
    /// Ties count against the item (a constant model gets no hits).
    pub fn add_ranking(&mut self, positive: f64, negatives: &[f64], k: usize) {
        let rank = rank_against(positive, negatives);
        self.ranked += 1.0;
        if rank < k {
            self.hits += 1.0;
            self.ndcg_sum += 1.0 / ((rank + 2) as f64).log2();
        }
    }

    /// The flat vector that is securely summed.
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.squared_error_sum,
            self.absolute_error_sum,
            self.ratings,
            self.hits,
            self.ndcg_sum,
            self.ranked,
            self.users,
        ]
    }

    /// Reads a (summed) vector; counts decoded from fixed point are rounded to integers.
    pub fn from_slice(v: &[f64]) -> Option<Self> {
        let &[squared_error_sum, absolute_error_sum, ratings, hits, ndcg_sum, ranked, users] = v else { return None };
        if v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let round = |x: f64| x.round().max(0.0);
        Some(Self {
            squared_error_sum: squared_error_sum.max(0.0),
            absolute_error_sum: absolute_error_sum.max(0.0),
            ratings: round(ratings),
            hits: round(hits),
            ndcg_sum: ndcg_sum.max(0.0),
            ranked: round(ranked),
            users: round(users),
        })
    }

    /// `rmse` and `mae` (when ratings were scored), `hr@k` and `ndcg@k` (when items were
    /// ranked), and the counts.
    pub fn metrics(&self, k: usize) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        m.insert("ratings_evaluated".into(), self.ratings);
        m.insert("users_evaluated".into(), self.users);
        m.insert("items_ranked".into(), self.ranked);
        if self.ratings > 0.0 {
            m.insert("rmse".into(), (self.squared_error_sum / self.ratings).sqrt());
            m.insert("mae".into(), self.absolute_error_sum / self.ratings);
        }
        if self.ranked > 0.0 {
            m.insert(format!("hr@{k}"), self.hits / self.ranked);
            m.insert(format!("ndcg@{k}"), self.ndcg_sum / self.ranked);
        }
        m
    }
}

/// 0-based rank of `positive` among `negatives`: the number of negatives scoring at least as high.
pub fn rank_against(positive: f64, negatives: &[f64]) -> usize {
    negatives.iter().filter(|&&n| n >= positive).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Brute-force AUC over all positive/negative pairs on raw scores.
    fn brute_auc(probs: &[f32], labels: &[f32]) -> f64 {
        let (mut num, mut pairs) = (0.0, 0.0);
        for (i, &pi) in probs.iter().enumerate() {
            for (j, &pj) in probs.iter().enumerate() {
                if labels[i] >= 0.5 && labels[j] < 0.5 {
                    pairs += 1.0;
                    num += if pi > pj { 1.0 } else if pi == pj { 0.5 } else { 0.0 };
                }
            }
        }
        num / pairs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With scores on the bucket grid, the histogram AUC is exact; sums are additive.
        #[test]
        fn histogram_auc_equals_brute_force_and_is_additive(
            rows in proptest::collection::vec((0u32..100, proptest::bool::ANY), 2..200),
            split in 0usize..200,
        ) {
            let buckets = 100;
            let probs: Vec<f32> = rows.iter().map(|(s, _)| (*s as f32 + 0.5) / buckets as f32).collect();
            let labels: Vec<f32> = rows.iter().map(|(_, y)| if *y { 1.0 } else { 0.0 }).collect();
            prop_assume!(labels.iter().any(|&y| y > 0.5) && labels.iter().any(|&y| y < 0.5));
            let whole = EvalContribution::from_predictions(&probs, &labels, buckets);
            let auc = whole.metrics()["auc"];
            prop_assert!((auc - brute_auc(&probs, &labels)).abs() < 1e-12);

            let k = split.min(rows.len());
            let a = EvalContribution::from_predictions(&probs[..k], &labels[..k], buckets).to_vec();
            let b = EvalContribution::from_predictions(&probs[k..], &labels[k..], buckets).to_vec();
            let summed: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let merged = EvalContribution::from_slice(&summed, buckets).expect("length");
            prop_assert!((merged.metrics()["auc"] - auc).abs() < 1e-12);
            prop_assert_eq!(merged.n, whole.n);
        }
    }

    #[test]
    fn perfect_and_inverted_classifiers() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        let good = EvalContribution::from_predictions(&[0.1, 0.2, 0.8, 0.9], &labels, 10).metrics();
        assert_eq!(good["auc"], 1.0);
        assert_eq!(good["ks"], 1.0);
        assert_eq!(good["accuracy"], 1.0);
        let bad = EvalContribution::from_predictions(&[0.9, 0.8, 0.2, 0.1], &labels, 10).metrics();
        assert_eq!(bad["auc"], 0.0);
        assert_eq!(bad["gini"], -1.0);
    }

    /// Brute force: sort all candidates by score (positive last among ties), find the positive.
    fn brute_rank(positive: f64, negatives: &[f64]) -> usize {
        let mut all: Vec<(f64, bool)> = negatives.iter().map(|&n| (n, false)).collect();
        all.push((positive, true));
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.iter().position(|(_, p)| *p).expect("positive present")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// HR@k and NDCG@k from summed institution vectors equal a brute-force sort of each list,
        /// and RMSE equals the direct formula over all ratings.
        #[test]
        fn recommendation_metrics_match_brute_force_and_are_additive(
            lists in proptest::collection::vec((0u8..20, proptest::collection::vec(0u8..20, 1..30)), 1..40),
            ratings in proptest::collection::vec((0.5f64..5.0, 0.5f64..5.0), 1..60),
            k in 1usize..12,
            split in 0usize..40,
        ) {
            let (mut a, mut b) = (RecommendationEval::default(), RecommendationEval::default());
            let (mut hits, mut ndcg) = (0.0, 0.0);
            for (i, (pos, negs)) in lists.iter().enumerate() {
                let negs: Vec<f64> = negs.iter().map(|&n| f64::from(n)).collect();
                let part = if i < split { &mut a } else { &mut b };
                part.add_ranking(f64::from(*pos), &negs, k);
                let r = brute_rank(f64::from(*pos), &negs);
                if r < k {
                    hits += 1.0;
                    ndcg += 1.0 / (r as f64 + 2.0).log2();
                }
            }
            let mut sq = 0.0;
            for (i, &(p, r)) in ratings.iter().enumerate() {
                let part = if i < split { &mut a } else { &mut b };
                part.add_rating(p, r);
                sq += (p - r) * (p - r);
            }
            let summed: Vec<f64> = a.to_vec().iter().zip(b.to_vec()).map(|(x, y)| x + y).collect();
            let m = RecommendationEval::from_slice(&summed).expect("length").metrics(k);
            let n = lists.len() as f64;
            let (hr_name, ndcg_name) = (format!("hr@{k}"), format!("ndcg@{k}"));
            prop_assert!((m[&hr_name] - hits / n).abs() < 1e-12);
            prop_assert!((m[&ndcg_name] - ndcg / n).abs() < 1e-12);
            prop_assert!((m["rmse"] - (sq / ratings.len() as f64).sqrt()).abs() < 1e-9);
        }
    }

    #[test]
    fn ranking_ties_count_against_the_item_and_metric_directions_are_known() {
        let mut e = RecommendationEval::default();
        e.add_ranking(1.0, &[1.0; 99], 10);
        assert_eq!(e.hits, 0.0, "a constant model must not score hits");
        e.add_ranking(2.0, &[1.0; 99], 10);
        assert_eq!(e.metrics(10)["hr@10"], 0.5);
        assert_eq!(e.metrics(10)["ndcg@10"], 0.5);
        assert_eq!(higher_is_better("rmse"), Some(false));
        assert_eq!(higher_is_better("hr@10"), Some(true));
        assert_eq!(higher_is_better("ndcg@5"), Some(true));
        assert_eq!(higher_is_better("ndcg@0"), None);
        assert_eq!(higher_is_better("foo@10"), None);
        assert!(RecommendationEval::from_slice(&[0.0; 6]).is_none());
    }

    #[test]
    fn one_class_has_no_auc_and_wrong_length_is_refused() {
        let c = EvalContribution::from_predictions(&[0.3, 0.4], &[1.0, 1.0], 10);
        assert!(!c.metrics().contains_key("auc"));
        assert!(EvalContribution::from_slice(&[0.0; 3], 10).is_none());
    }
}
