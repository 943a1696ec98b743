//! One aggregation phase of a round, as a pure state machine (no sockets, no clock).
//!
//! A phase hands one task to each selected worker and sums the vectors they contribute:
//! preprocessing statistics, a weighted model update, or evaluation histograms. The driver
//! feeds it what arrives ([`Phase::handle_contribution`], [`Phase::handle_disconnect`]) and the
//! time ([`Phase::handle_timeout`] once [`Phase::poll_timeout`] has passed), sends whatever
//! [`Phase::poll_transmit`] yields, and stops when [`Phase::outcome`] is ready.
//!
//! Summation is either secure (the default: a `confide_secagg::Server`, so the coordinator
//! only ever learns the sum) or plain (debugging only).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use confide_proto::v1::contribution::Body;

use confide_core::outcome::{FailureKind, ParticipantStatus};

pub use super::errors::PhaseError;
use crate::store::ParticipantRecord;

/// How a selected worker stands in the phase.
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantState {
    /// Task sent, nothing received yet.
    Pending,
    /// Its contribution is in the sum.
    Contributed,
    /// It reported that it could not do the task.
    Failed {
        /// How the worker classified the failure (None: a kind this coordinator does not know).
        kind: Option<FailureKind>,
        /// What the job's owner is told: the bank's reason when it shares details, else the
        /// kind and the reference into the bank's own log (see [`report_reason`]).
        reason: String,
    },
    /// It went silent, disconnected or missed the deadline.
    Dropped {
        /// What happened.
        reason: String,
    },
}

impl ParticipantState {
    fn record(&self, worker_id: &str) -> ParticipantRecord {
        let (status, reason) = match self {
            ParticipantState::Pending => (ParticipantStatus::Pending, String::new()),
            ParticipantState::Contributed => (ParticipantStatus::Contributed, String::new()),
            ParticipantState::Failed { kind: Some(k), reason } if k.status() == ParticipantStatus::Refused => {
                (ParticipantStatus::Refused, reason.clone())
            }
            ParticipantState::Failed { reason, .. } => (ParticipantStatus::Failed, reason.clone()),
            ParticipantState::Dropped { reason } => (ParticipantStatus::Dropped, reason.clone()),
        };
        ParticipantRecord { worker_id: worker_id.to_string(), status, reason }
    }
}

/// Why a phase produced no sum.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseFailure {
    /// Human-readable reason, naming how many contributions arrived and what the others did.
    pub reason: String,
}

/// The end of a phase.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    /// The summed vector, or why there is none.
    pub sum: Result<Vec<f64>, PhaseFailure>,
    /// Outcome per selected worker.
    pub participants: Vec<ParticipantRecord>,
    /// Workers whose failure would repeat with the same task (a deterministic
    /// [`FailureKind`]: their data, their policy): a retry goes without them.
    pub deterministic: Vec<String>,
}

/// Plain summation (debugging only): the coordinator sees each vector.
#[derive(Debug)]
struct PlainSum {
    acc: Vec<f64>,
}

/// How contributions are summed.
#[derive(Debug)]
enum Summation {
    Plain(PlainSum),
    Secure(Box<crate::round::secure::SecurePhase>),
}

/// One phase of a round; see the module docs for the calling order.
#[derive(Debug)]
pub struct Phase {
    participants: BTreeMap<String, ParticipantState>,
    vector_len: usize,
    min_contributions: usize,
    deadline: Instant,
    summation: Summation,
    outbox: VecDeque<(String, Vec<u8>)>,
    outcome: Option<PhaseOutcome>,
    /// Secure aggregation failed while some participants were still silent: the reason, and
    /// until when to wait for their failure reports.
    failed_early: Option<(String, Instant)>,
}

/// How long a failed secure phase waits for silent participants to report why.
const FAILURE_REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Phase {
    /// A plain-sum phase over `participants`, needing `min_contributions`, ending at `deadline`.
    pub fn plain(participants: &[String], vector_len: usize, min_contributions: usize, deadline: Instant) -> Self {
        Self::with(participants, vector_len, min_contributions, deadline, Summation::Plain(PlainSum { acc: vec![0.0; vector_len] }))
    }

    /// A secure-aggregation phase.
    pub fn secure(
        participants: &[String],
        vector_len: usize,
        min_contributions: usize,
        deadline: Instant,
        secure: crate::round::secure::SecurePhase,
    ) -> Self {
        let mut phase = Self::with(participants, vector_len, min_contributions, deadline, Summation::Secure(Box::new(secure)));
        phase.pump_secure();
        phase
    }

    fn with(participants: &[String], vector_len: usize, min_contributions: usize, deadline: Instant, summation: Summation) -> Self {
        Self {
            participants: participants.iter().map(|w| (w.clone(), ParticipantState::Pending)).collect(),
            vector_len,
            min_contributions,
            deadline,
            summation,
            outbox: VecDeque::new(),
            outcome: None,
            failed_early: None,
        }
    }

    /// Feeds one worker's contribution.
    pub fn handle_contribution(&mut self, from: &str, body: Body, now: Instant) -> Result<(), PhaseError> {
        if self.outcome.is_some() {
            return Err(PhaseError::Over);
        }
        let state = self.participants.get(from).ok_or_else(|| PhaseError::NotParticipant(from.into()))?;
        if *state != ParticipantState::Pending {
            return Err(PhaseError::AlreadyFinished(from.into()));
        }
        let result = match body {
            Body::Failure(failure) => {
                let kind = failure.typed_kind();
                let reason = report_reason(from, &failure);
                self.set(from, ParticipantState::Failed { kind, reason });
                if let Summation::Secure(s) = &mut self.summation {
                    s.drop_participant(from, now);
                }
                Ok(())
            }
            Body::Plain(v) => match &mut self.summation {
                Summation::Plain(p) => {
                    check_vector(&v.values, self.vector_len)?;
                    for (a, x) in p.acc.iter_mut().zip(&v.values) {
                        *a += x;
                    }
                    self.set(from, ParticipantState::Contributed);
                    Ok(())
                }
                Summation::Secure(_) => Err(PhaseError::WrongMode { found: "plain", expected: "secure" }),
            },
            Body::Secagg(bytes) => match &mut self.summation {
                Summation::Secure(s) => s.handle_message(from, &bytes, now),
                Summation::Plain(_) => Err(PhaseError::WrongMode { found: "secure", expected: "plain" }),
            },
        };
        self.pump_secure();
        self.maybe_finish(now);
        result
    }

    /// A worker's task stream closed: it can no longer take part.
    pub fn handle_disconnect(&mut self, worker: &str, now: Instant) {
        if self.participants.get(worker) == Some(&ParticipantState::Pending) {
            self.set(worker, ParticipantState::Dropped { reason: "disconnected during the round".into() });
            if let Summation::Secure(s) = &mut self.summation {
                s.drop_participant(worker, now);
            }
            self.pump_secure();
            self.maybe_finish(now);
        }
    }

    /// When the driver must call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        if let Some((_, until)) = &self.failed_early {
            return (*until).min(self.deadline);
        }
        match &self.summation {
            Summation::Secure(s) => s.poll_timeout().map_or(self.deadline, |t| t.min(self.deadline)),
            Summation::Plain(_) => self.deadline,
        }
    }

    /// Advances time: stage deadlines of secure aggregation, and the phase deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if let Summation::Secure(s) = &mut self.summation {
            s.handle_timeout(now);
        }
        let draining_over = self.failed_early.as_ref().is_some_and(|(_, until)| now >= *until);
        if now >= self.deadline || draining_over {
            let reason = if draining_over { "silent when secure aggregation aborted" } else { "missed the round deadline" };
            let late: Vec<String> = self.pending().collect();
            for w in late {
                self.set(&w, ParticipantState::Dropped { reason: reason.into() });
            }
            if let Summation::Secure(s) = &mut self.summation {
                s.abort_at_deadline();
            }
        }
        self.pump_secure();
        self.maybe_finish(now);
    }

    /// Next message to relay to a worker (secure aggregation only).
    pub fn poll_transmit(&mut self) -> Option<(String, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The outcome, once the phase is over.
    pub fn outcome(&self) -> Option<&PhaseOutcome> {
        self.outcome.as_ref()
    }

    /// Workers still expected to contribute.
    pub fn pending(&self) -> impl Iterator<Item = String> + '_ {
        self.participants.iter().filter(|(_, s)| **s == ParticipantState::Pending).map(|(w, _)| w.clone())
    }

    fn set(&mut self, worker: &str, state: ParticipantState) {
        if let Some(s) = self.participants.get_mut(worker) {
            *s = state;
        }
    }

    fn records(&self) -> Vec<ParticipantRecord> {
        self.participants.iter().map(|(w, s)| s.record(w)).collect()
    }

    fn deterministic(&self) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(_, s)| matches!(s, ParticipantState::Failed { kind: Some(k), .. } if k.is_deterministic()))
            .map(|(w, _)| w.clone())
            .collect()
    }

    fn pump_secure(&mut self) {
        let Summation::Secure(s) = &mut self.summation else { return };
        while let Some(t) = s.poll_transmit() {
            self.outbox.push_back(t);
        }
        for (worker, reason) in s.take_dropped() {
            if self.participants.get(&worker) == Some(&ParticipantState::Pending) {
                self.participants.insert(worker, ParticipantState::Dropped { reason });
            }
        }
        // A survivor's input is in the sum even if it disconnected or failed afterwards.
        for worker in s.take_contributed() {
            if self.participants.contains_key(&worker) {
                self.participants.insert(worker, ParticipantState::Contributed);
            }
        }
    }

    fn failure_summary(&self, contributed: usize) -> String {
        let others: Vec<String> = self
            .records()
            .into_iter()
            .filter(|r| !r.status.contributed())
            .map(|r| format!("{} {}: {}", r.worker_id, r.status, r.reason))
            .collect();
        format!(
            "{contributed} of {} selected workers contributed, {} needed{}{}",
            self.participants.len(),
            self.min_contributions,
            if others.is_empty() { "" } else { "; " },
            others.join("; ")
        )
    }

    fn maybe_finish(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if let Some((reason, _)) = &self.failed_early {
            // Secure aggregation already failed; wait (briefly) for the silent participants'
            // own failure reports, so the job records why they failed rather than "dropped".
            if self.pending().next().is_none() {
                let reason = reason.clone();
                let contributed = self.participants.values().filter(|s| **s == ParticipantState::Contributed).count();
                self.outcome = Some(PhaseOutcome {
                    sum: Err(PhaseFailure { reason: format!("{reason} ({})", self.failure_summary(contributed)) }),
                    participants: self.records(),
                    deterministic: self.deterministic(),
                });
            }
            return;
        }
        let contributed = self.participants.values().filter(|s| **s == ParticipantState::Contributed).count();
        let pending = self.participants.values().filter(|s| **s == ParticipantState::Pending).count();
        let sum = match &mut self.summation {
            Summation::Plain(p) => {
                if pending > 0 {
                    return;
                }
                if contributed >= self.min_contributions {
                    Ok(std::mem::take(&mut p.acc))
                } else {
                    Err(PhaseFailure { reason: String::new() })
                }
            }
            Summation::Secure(s) => match s.take_result() {
                None => return,
                Some(Ok(sum)) if contributed >= self.min_contributions => Ok(sum),
                Some(Ok(_)) => Err(PhaseFailure { reason: String::new() }),
                Some(Err(reason)) if pending > 0 => {
                    self.failed_early = Some((reason, now + FAILURE_REPORT_GRACE));
                    return self.maybe_finish(now);
                }
                Some(Err(reason)) => Err(PhaseFailure { reason }),
            },
        };
        let sum = sum.map_err(|f| PhaseFailure {
            reason: if f.reason.is_empty() { self.failure_summary(contributed) } else { format!("{} ({})", f.reason, self.failure_summary(contributed)) },
        });
        self.outcome = Some(PhaseOutcome { sum, participants: self.records(), deterministic: self.deterministic() });
    }
}

/// What the job's owner is told of a failure report (capped at 1000 bytes). A bank that keeps its error details (the
/// default) sends only the kind and a reference into its own log:
/// `data error (bank2's log, ref 7f3a…)`; one that shares details sends its reason.
pub fn report_reason(worker: &str, failure: &confide_proto::v1::TaskFailure) -> String {
    const MAX_REASON: usize = 1000;
    let kind = failure.typed_kind();
    if !failure.reason.is_empty() {
        // A shared reason reads as before: `data: train.csv line 7, …` (a refusal's alone).
        let mut reason = match kind {
            Some(k) if k.status() == ParticipantStatus::Refused => failure.reason.clone(),
            Some(k) => format!("{k}: {}", failure.reason),
            None => format!("unclassified: {}", failure.reason),
        };
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        return reason;
    }
    let what = kind.map_or("unclassified failure", FailureKind::describe);
    let reference: String = failure.reference.chars().filter(char::is_ascii_hexdigit).take(16).collect();
    if reference.is_empty() { format!("{what} (see {worker}'s log)") } else { format!("{what} ({worker}'s log, ref {reference})") }
}

/// Checks a plain vector's length and finiteness.
pub fn check_vector(values: &[f64], expected: usize) -> Result<(), PhaseError> {
    if values.len() != expected {
        return Err(PhaseError::Length { found: values.len(), expected });
    }
    if let Some(index) = values.iter().position(|x| !x.is_finite()) {
        return Err(PhaseError::NotFinite { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_proto::v1::{PlainVector, TaskFailure};
    use std::time::Duration;

    fn workers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("bank{i}")).collect()
    }

    fn plain(v: &[f64]) -> Body {
        Body::Plain(PlainVector { values: v.to_vec() })
    }

    #[test]
    fn sums_all_contributions_then_finishes() {
        let t0 = Instant::now();
        let mut phase = Phase::plain(&workers(3), 2, 3, t0 + Duration::from_secs(10));
        phase.handle_contribution("bank1", plain(&[1.0, 2.0]), t0).expect("1");
        phase.handle_contribution("bank2", plain(&[3.0, 4.0]), t0).expect("2");
        assert!(phase.outcome().is_none());
        phase.handle_contribution("bank3", plain(&[5.0, 6.0]), t0).expect("3");
        let out = phase.outcome().expect("done");
        assert_eq!(out.sum.as_ref().expect("sum"), &vec![9.0, 12.0]);
        assert!(out.participants.iter().all(|p| p.status == ParticipantStatus::Contributed));
    }

    #[test]
    fn bad_contributions_are_rejected_without_touching_the_sum() {
        let t0 = Instant::now();
        let mut phase = Phase::plain(&workers(2), 2, 2, t0 + Duration::from_secs(10));
        assert_eq!(
            phase.handle_contribution("bank1", plain(&[1.0]), t0),
            Err(PhaseError::Length { found: 1, expected: 2 })
        );
        assert_eq!(phase.handle_contribution("bank1", plain(&[1.0, f64::NAN]), t0), Err(PhaseError::NotFinite { index: 1 }));
        assert_eq!(
            phase.handle_contribution("mallory", plain(&[1.0, 1.0]), t0),
            Err(PhaseError::NotParticipant("mallory".into()))
        );
        phase.handle_contribution("bank1", plain(&[1.0, 1.0]), t0).expect("good one");
        assert_eq!(phase.handle_contribution("bank1", plain(&[1.0, 1.0]), t0), Err(PhaseError::AlreadyFinished("bank1".into())));
        phase.handle_contribution("bank2", plain(&[2.0, 2.0]), t0).expect("good two");
        assert_eq!(phase.outcome().expect("done").sum.as_ref().expect("sum"), &vec![3.0, 3.0]);
    }

    #[test]
    fn deadline_drops_the_silent_and_succeeds_if_enough_arrived() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        let mut phase = Phase::plain(&workers(3), 1, 2, deadline);
        phase.handle_contribution("bank1", plain(&[1.0]), t0).expect("1");
        phase.handle_contribution("bank2", plain(&[1.0]), t0).expect("2");
        phase.handle_timeout(t0 + Duration::from_secs(5));
        assert!(phase.outcome().is_none(), "not yet at the deadline");
        phase.handle_timeout(deadline);
        let out = phase.outcome().expect("done");
        assert_eq!(out.sum.as_ref().expect("sum"), &vec![2.0]);
        let late = out.participants.iter().find(|p| p.worker_id == "bank3").expect("bank3");
        assert_eq!(late.status, ParticipantStatus::Dropped);
    }

    #[test]
    fn too_few_contributions_fail_with_every_reason() {
        let t0 = Instant::now();
        let mut phase = Phase::plain(&workers(3), 1, 3, t0 + Duration::from_secs(10));
        phase.handle_contribution("bank1", plain(&[1.0]), t0).expect("1");
        phase
            .handle_contribution(
                "bank2",
                Body::Failure(TaskFailure::new(FailureKind::Data, "train.csv line 7, column tenure: not a number: 'x'")),
                t0,
            )
            .expect("failure report");
        phase.handle_disconnect("bank3", t0);
        let out = phase.outcome().expect("done");
        let reason = &out.sum.as_ref().expect_err("must fail").reason;
        assert!(reason.contains("1 of 3") && reason.contains("line 7") && reason.contains("disconnected"), "{reason}");
    }
}
