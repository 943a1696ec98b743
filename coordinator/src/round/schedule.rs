//! Pure scheduling decisions: who takes part in a round, and when a job stops early.

use std::collections::BTreeMap;

use confide_core::job::{EarlyStoppingSpec, JobSpec, SelectionSpec};
use confide_core::metrics::higher_is_better;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Picks a round's participants from the eligible workers: all of them at `fraction = 1`, else a
/// seeded random `ceil(fraction · n)`, never fewer than `min_workers`. Deterministic in
/// (seed, round, attempt), so a rerun round after a crash selects the same workers when they
/// are all back. The result is sorted.
pub fn select(eligible: &[String], spec: &SelectionSpec, seed: u64, round: u64, attempt: u32) -> Vec<String> {
    let mut pool: Vec<String> = eligible.to_vec();
    pool.sort();
    let want = ((spec.fraction * pool.len() as f64).ceil() as usize).max(spec.min_workers).min(pool.len());
    if want < pool.len() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ round.rotate_left(17) ^ u64::from(attempt).rotate_left(41));
        pool.shuffle(&mut rng);
        pool.truncate(want);
        pool.sort();
    }
    pool
}

/// The round whose model a completed job ends with when its early-stopping rule restores the
/// best one (`restore_best`, the default): the best round by the rule's metric, from the
/// committed rounds' metrics in order. None: the latest model stands.
pub fn final_round<'a>(spec: &JobSpec, rounds: impl IntoIterator<Item = (u64, &'a BTreeMap<String, f64>)>) -> Option<u64> {
    let mut tracker = EarlyStopping::new(spec.early_stopping.clone());
    for (round, metrics) in rounds {
        tracker.observe(round, metrics);
    }
    tracker.restored_round()
}

/// Tracks the watched metric and says when it has stopped improving.
#[derive(Debug)]
pub struct EarlyStopping {
    spec: Option<EarlyStoppingSpec>,
    best: Option<f64>,
    /// The round that scored `best`.
    best_round: Option<u64>,
    since_best: u64,
}

impl EarlyStopping {
    /// A tracker for the job's rule (None = never stop early).
    pub fn new(spec: Option<EarlyStoppingSpec>) -> Self {
        Self { spec, best: None, best_round: None, since_best: 0 }
    }

    /// Feeds round `round`'s metrics (rounds without the metric are not evaluations and are
    /// skipped).
    pub fn observe(&mut self, round: u64, metrics: &BTreeMap<String, f64>) {
        let Some(spec) = &self.spec else { return };
        let Some(&value) = metrics.get(&spec.metric) else { return };
        let higher = higher_is_better(&spec.metric).unwrap_or(true);
        let improved = match self.best {
            None => true,
            Some(best) if higher => value > best + spec.min_delta,
            Some(best) => value < best - spec.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.best_round = Some(round);
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
    }

    /// The round whose model the job ends with when its rule restores the best one
    /// (`restore_best`): the last round that improved the metric. None without such a rule or
    /// before any evaluation (the latest model stands).
    pub fn restored_round(&self) -> Option<u64> {
        self.spec.as_ref().filter(|s| s.restore_best).and(self.best_round)
    }

    /// Why to stop now, if the metric has not improved for `patience` evaluations.
    pub fn should_stop(&self) -> Option<String> {
        let spec = self.spec.as_ref()?;
        (self.since_best >= spec.patience).then(|| {
            let kept = match self.restored_round() {
                Some(r) => format!(" at round {r}, whose model the job keeps"),
                None => String::new(),
            };
            format!(
                "early stopping: {} did not improve by more than {} for {} evaluations (best {:.5}{kept})",
                spec.metric,
                spec.min_delta,
                spec.patience,
                self.best.unwrap_or(f64::NAN)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("bank{i:02}")).collect()
    }

    #[test]
    fn fraction_respects_the_floor_and_is_deterministic() {
        let spec = SelectionSpec { fraction: 0.1, min_workers: 3, ..SelectionSpec::default() };
        let a = select(&names(20), &spec, 7, 4, 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a, select(&names(20), &spec, 7, 4, 1));
        assert_ne!(a, select(&names(20), &spec, 7, 5, 1), "another round draws other banks");
        let spec = SelectionSpec { fraction: 0.5, min_workers: 3, ..SelectionSpec::default() };
        assert_eq!(select(&names(20), &spec, 7, 4, 1).len(), 10);
        let spec = SelectionSpec::default();
        assert_eq!(select(&names(4), &spec, 7, 4, 1), names(4));
    }

    #[test]
    fn stops_after_patience_evaluations_without_improvement() {
        let spec = EarlyStoppingSpec { metric: "auc".into(), patience: 2, min_delta: 0.001, restore_best: true };
        let mut es = EarlyStopping::new(Some(spec));
        for (round, auc) in [0.70, 0.75, 0.7505, 0.749].into_iter().enumerate() {
            es.observe(round as u64 + 1, &BTreeMap::from([("auc".to_string(), auc)]));
        }
        assert!(es.should_stop().is_some());
        assert_eq!(es.restored_round(), Some(2), "0.7505 is not better than 0.75 by more than min_delta");
        let rule = EarlyStoppingSpec { metric: "log_loss".into(), patience: 1, min_delta: 0.0, restore_best: false };
        let mut lower = EarlyStopping::new(Some(rule));
        lower.observe(1, &BTreeMap::from([("log_loss".to_string(), 0.5)]));
        lower.observe(2, &BTreeMap::from([("log_loss".to_string(), 0.4)]));
        assert!(lower.should_stop().is_none());
        lower.observe(3, &BTreeMap::from([("log_loss".to_string(), 0.45)]));
        assert!(lower.should_stop().is_some());
        assert_eq!(lower.restored_round(), None, "restore_best = false keeps the last model");
    }
}
