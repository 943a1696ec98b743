//! The bank's contribution ledger: what it has put into which sums, kept durably so that a
//! coordinator cannot difference two sums to learn one bank's vector or count.
//!
//! Secure aggregation shows the coordinator only sums, but two sums over different sets of
//! institutions that contain the *same* vector from every bank but one give that bank's vector
//! exactly (with four banks, four sums over different threes give all four). Two rules,
//! applied when the set of institutions whose inputs are in a sum is final — just before this
//! bank sends its unmasking shares, the step without which the sum is not revealed:
//!
//! 1. **No exact repeats across sets.** A vector (by SHA-256 of its values) goes into sums over
//!    one set of institutions only. The same deterministic computation — the same dataset
//!    statistics, the same evaluation, a training rerun that comes out the same — for another
//!    set is refused. The key is the vector itself, which is what the model, data and settings
//!    determine, not the job id: a new job repeating an old computation is caught too.
//! 2. **No isolating counts.** The counts a vector carries (training rows in statistics and
//!    training vectors, test rows and positives in evaluation vectors) stay the same from round
//!    to round while the vectors around them change. For each count the ledger keeps the sets
//!    of institutions it was summed over, and refuses a new set if, together with the earlier
//!    ones, it would let some bank's count be solved for (its indicator vector lies in the span
//!    of the sets' indicator vectors: {1,2,3,4} then {1,2,3} gives bank 4's count).
//!
//! Rule 2 has a price: after a bank's counts were in a sum over a set of institutions, a sum
//! over a set that differs by one bank (a dropout, a bank joining later, a refusal) is refused,
//! so such a round fails instead of completing without that bank. `[policy] protect_counts =
//! false` turns rule 2 off (rule 1 always holds); differential privacy's noise on the counts is
//! what restores dropout tolerance without giving counts away.
//!
//! What the ledger cannot stop alone: sums of *nearly* identical vectors (a second job with a
//! slightly different learning rate) differenced approximately. Differential privacy's noise
//! and budget bound that (see `SECURITY.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::failure::Failure;

/// What a sum would reveal of this bank: checked (and, when admitted, recorded) before the
/// bank lets the sum be unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumCheck {
    /// SHA-256 hex of the contributed vector's values (little-endian f64).
    pub digest: String,
    /// The institutions whose inputs are in the sum (this bank included).
    pub institutions: BTreeSet<String>,
    /// The counts the vector carries, each as a key naming the dataset, the split, what is
    /// counted and its value.
    pub counts: Vec<String>,
}

impl SumCheck {
    /// The digest of a vector's values.
    pub fn digest_of(values: &[f64]) -> String {
        let mut bytes = Vec::with_capacity(values.len() * 8);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        confide_core::sha256_hex(&bytes)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    /// Vector digest → the institutions of the sum it went into.
    sums: BTreeMap<String, BTreeSet<String>>,
    /// Count key → the sets of institutions it was summed over.
    counts: BTreeMap<String, Vec<BTreeSet<String>>>,
}

/// The ledger; see the module docs.
#[derive(Debug)]
pub struct Ledger {
    path: Option<PathBuf>,
    state: Mutex<State>,
    /// Apply rule 2 (`[policy] protect_counts`).
    protect_counts: bool,
}

impl Ledger {
    /// The ledger in `data_dir/contribution_ledger.json` (a missing file starts empty; an
    /// unreadable one is an error, so the rules cannot be reset by corrupting the file).
    pub fn load(data_dir: &Path, protect_counts: bool) -> Result<Self, Failure> {
        let path = data_dir.join("contribution_ledger.json");
        let state = crate::state_file::read(&path, "contribution ledger").map_err(Failure::internal)?.unwrap_or_default();
        Ok(Self { path: Some(path), state: Mutex::new(state), protect_counts })
    }

    /// A ledger kept in memory only (simulated banks, tests).
    pub fn in_memory(protect_counts: bool) -> Self {
        Self { path: None, state: Mutex::new(State::default()), protect_counts }
    }

    /// Admits a sum and records it durably, or refuses it (a policy failure naming the rule).
    pub fn admit(&self, check: &SumCheck) -> Result<(), Failure> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.clone();
        match state.sums.get(&check.digest) {
            Some(set) if *set != check.institutions => {
                return Err(Failure::policy(
                    "refusing to unmask: this bank already put the identical vector into a sum over another set of institutions \
                     (differencing the two sums would reveal a bank's input)",
                ));
            }
            Some(_) => {}
            None => {
                state.sums.insert(check.digest.clone(), check.institutions.clone());
            }
        }
        let counts = if self.protect_counts { check.counts.as_slice() } else { &[] };
        for key in counts {
            let sets = state.counts.entry(key.clone()).or_default();
            if sets.contains(&check.institutions) {
                continue;
            }
            let mut with = sets.clone();
            with.push(check.institutions.clone());
            if let Some(isolated) = isolated_member(&with) {
                return Err(Failure::policy(format!(
                    "refusing to unmask: with the sums this bank's counts were already in, this set of institutions would \
                     reveal {isolated}'s count"
                )));
            }
            sets.push(check.institutions.clone());
        }
        if *state != before {
            self.save(&state)?;
        }
        Ok(())
    }

    fn save(&self, state: &State) -> Result<(), Failure> {
        match &self.path {
            Some(path) => crate::state_file::write(path, state),
            None => Ok(()),
        }
    }
}

/// A member whose indicator vector lies in the span of the sets' indicator vectors — whose
/// count the sums over these sets would determine — if any.
fn isolated_member(sets: &[BTreeSet<String>]) -> Option<String> {
    let members: Vec<&String> = sets.iter().flatten().collect::<BTreeSet<_>>().into_iter().collect();
    let rows: Vec<Vec<f64>> = sets.iter().map(|s| members.iter().map(|m| if s.contains(*m) { 1.0 } else { 0.0 }).collect()).collect();
    let basis = row_echelon(rows);
    members.iter().enumerate().find(|(j, _)| {
        let mut unit = vec![0.0; members.len()];
        unit[*j] = 1.0;
        in_span(&basis, unit)
    }).map(|(_, m)| (*m).clone())
}

const EPS: f64 = 1e-9;

/// A reduced row-echelon basis of the rows' span (rows of 0/1, so pivots stay well away from 0).
fn row_echelon(mut rows: Vec<Vec<f64>>) -> Vec<(usize, Vec<f64>)> {
    let width = rows.first().map_or(0, Vec::len);
    let mut basis: Vec<(usize, Vec<f64>)> = Vec::new();
    for col in 0..width {
        let Some(p) = rows.iter().position(|r| r[col].abs() > EPS) else { continue };
        let mut pivot = rows.swap_remove(p);
        let scale = pivot[col];
        pivot.iter_mut().for_each(|x| *x /= scale);
        for r in rows.iter_mut().chain(basis.iter_mut().map(|(_, b)| b)) {
            let f = r[col];
            if f.abs() > EPS {
                r.iter_mut().zip(&pivot).for_each(|(x, y)| *x -= f * y);
            }
        }
        basis.push((col, pivot));
    }
    basis
}

fn in_span(basis: &[(usize, Vec<f64>)], mut v: Vec<f64>) -> bool {
    for (col, b) in basis {
        let f = v[*col];
        if f.abs() > EPS {
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= f * y);
        }
    }
    v.iter().all(|x| x.abs() < EPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<String> {
        ids.iter().map(|i| format!("bank{i}")).collect()
    }

    fn check(digest: &str, ids: &[u32], counts: &[&str]) -> SumCheck {
        SumCheck { digest: digest.into(), institutions: set(ids), counts: counts.iter().map(|c| c.to_string()).collect() }
    }

    #[test]
    fn an_identical_vector_goes_into_sums_over_one_set_only() {
        let l = Ledger::in_memory(true);
        l.admit(&check("v", &[1, 2, 3, 4], &[])).expect("first sum");
        l.admit(&check("v", &[1, 2, 3, 4], &[])).expect("the same sum again reveals nothing new");
        let err = l.admit(&check("v", &[1, 2, 3], &[])).expect_err("another set");
        assert!(err.reason.contains("identical vector"), "{err}");
        l.admit(&check("w", &[1, 2, 3], &[])).expect("another vector");
    }

    #[test]
    fn four_sums_over_different_threes_are_refused_before_they_isolate_anyone() {
        // The curious admin's attack from the issue: four jobs, each missing another bank.
        let l = Ledger::in_memory(true);
        let c = ["telco/train-rows=120"];
        l.admit(&check("a", &[1, 2, 3], &c)).expect("1,2,3");
        l.admit(&check("b", &[1, 2, 4], &c)).expect("1,2,4 alone gives n3 - n4, no single count");
        l.admit(&check("c", &[1, 3, 4], &c)).expect("still no single count");
        let err = l.admit(&check("d", &[2, 3, 4], &c)).expect_err("the fourth set would solve every count");
        assert!(err.reason.contains("count"), "{err}");
        let err = l.admit(&check("e", &[1, 2], &c)).expect_err("a subset isolates bank3 (and, with the others, everyone)");
        assert!(err.reason.contains("count"), "{err}");
    }

    #[test]
    fn a_dropout_after_a_full_round_would_isolate_the_dropped_bank() {
        let l = Ledger::in_memory(true);
        let c = ["telco/train-rows=80"];
        l.admit(&check("r1", &[1, 2, 3, 4], &c)).expect("round 1");
        l.admit(&check("r2", &[1, 2, 3, 4], &c)).expect("round 2, same set");
        let err = l.admit(&check("r3", &[1, 2, 3], &c)).expect_err("bank4 dropped");
        assert!(err.reason.contains("bank4"), "{err}");
        l.admit(&check("r4", &[1, 2, 3, 4], &c)).expect("the full set again");
    }

    #[test]
    fn the_ledger_survives_restarts_and_a_corrupted_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        Ledger::load(dir.path(), true).expect("empty").admit(&check("v", &[1, 2, 3], &["k"])).expect("recorded");
        let l = Ledger::load(dir.path(), true).expect("reload");
        assert!(l.admit(&check("v", &[1, 2, 4], &[])).is_err(), "remembered across restarts");
        std::fs::write(dir.path().join("contribution_ledger.json"), b"{not json").expect("write");
        assert!(Ledger::load(dir.path(), true).is_err());
    }

    #[test]
    fn span_checks_match_hand_computed_cases() {
        assert_eq!(isolated_member(&[set(&[1, 2]), set(&[1, 2])]), None);
        assert_eq!(isolated_member(&[set(&[1, 2]), set(&[2, 3])]), None);
        assert!(isolated_member(&[set(&[1, 2]), set(&[2, 3]), set(&[1, 3])]).is_some(), "three pairs of three banks solve all");
        assert_eq!(isolated_member(&[set(&[1, 2, 3]), set(&[1, 2])]), Some("bank3".into()));
        assert_eq!(isolated_member(&[set(&[1])]), Some("bank1".into()), "a sum of one is that bank's value");
    }
}
