//! What a running job is doing, as its users see it: waiting for participants, training, or
//! stalled on its store, each with a reason a person can act on. The job machine computes it
//! (pure); the runner keeps the latest per job for `GetJob`, the watch stream and the
//! Prometheus gauge.
//!
//! The waiting reason compares what the connected banks offer (dataset name and schema
//! fingerprint) with what the job needs, so a job that cannot start says why, e.g.
//! `waiting for participants: 1 of 3 connected banks offers telco_churn with schema d357a1b2c3d4…,
//! 3 needed; bank2 offers fingerprint 8c1a04f9e2b7…; bank3 does not offer telco_churn`.

use std::fmt::Write;

use confide_proto::v1 as pb;

use crate::hub::WorkerInfo;

/// The kind of thing a running job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    /// Not enough eligible banks are connected for its next round.
    Waiting,
    /// A round (or the statistics phase) is under way.
    Training,
    /// Its store refuses writes; it retries the same write until it succeeds.
    Stalled,
}

impl ActivityKind {
    /// Every kind, in declaration order.
    pub const ALL: [ActivityKind; 3] = [ActivityKind::Waiting, ActivityKind::Training, ActivityKind::Stalled];

    /// The lower-case name shown in `pb::Job.activity` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Waiting => "waiting",
            ActivityKind::Training => "training",
            ActivityKind::Stalled => "stalled",
        }
    }
}

/// A job's activity with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// What it does.
    pub kind: ActivityKind,
    /// Why, for people.
    pub reason: String,
}

impl Activity {
    /// The wire form.
    pub fn to_proto(&self) -> pb::JobActivity {
        pb::JobActivity { activity: self.kind.as_str().into(), reason: self.reason.clone() }
    }
}

/// The stalled reason of a full disk (B's full-disk test asserts it verbatim).
pub const DISK_FULL: &str = "stalled: no space left on device";

/// Fingerprints are shown by their first 12 hex digits (enough to tell schemas apart).
pub fn short_fingerprint(fp: &str) -> String {
    let short: String = fp.chars().take(12).collect();
    if short.len() < fp.len() { format!("{short}…") } else { short }
}

/// Banks named one by one in a waiting reason; the rest are counted.
const NAMED: usize = 5;

/// Why a job needing `min_workers` banks offering `dataset` with schema `fingerprint` cannot
/// start with `workers` connected. `floored` are the offering banks left out because their
/// own floor on participants is above the number of banks that could take part.
pub fn waiting_reason(workers: &[WorkerInfo], dataset: &str, fingerprint: &str, min_workers: usize, floored: &[&WorkerInfo]) -> String {
    let offering = workers.iter().filter(|w| w.offers(dataset, fingerprint)).count();
    let mut out = String::from("waiting for participants: ");
    if workers.is_empty() {
        let _ = write!(out, "no bank is connected; {min_workers} needed offering {dataset} with schema {}", short_fingerprint(fingerprint));
        return out;
    }
    let verb = if offering == 1 { "offers" } else { "offer" };
    let _ = write!(
        out,
        "{offering} of {} connected banks {verb} {dataset} with schema {}, {min_workers} needed",
        workers.len(),
        short_fingerprint(fingerprint)
    );
    let mut details: Vec<String> = Vec::new();
    for w in workers.iter().filter(|w| !w.offers(dataset, fingerprint)) {
        let others: Vec<String> = w.datasets.iter().filter(|d| d.name == dataset).map(|d| short_fingerprint(&d.schema_fingerprint)).collect();
        let unavailable = w.unavailable.iter().find(|u| u.name == dataset);
        details.push(if let Some(u) = unavailable {
            // The bank configured it but its own check failed (the kind only, never the detail).
            format!("{} has {}", w.id, u.display())
        } else if others.is_empty() {
            format!("{} does not offer {dataset}", w.id)
        } else {
            format!("{} offers fingerprint {}", w.id, others.join(", "))
        });
    }
    // A floor is the reason only when enough banks offer the data.
    for w in floored.iter().filter(|_| offering >= min_workers) {
        details.push(format!("{} takes part only in rounds of at least {} banks (its own floor)", w.id, w.min_participants));
    }
    let more = details.len().saturating_sub(NAMED);
    for d in details.iter().take(NAMED) {
        let _ = write!(out, "; {d}");
    }
    if more > 0 {
        let _ = write!(out, "; and {more} more");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank(id: &str, offers: &[(&str, &str)], floor: u32) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            datasets: offers.iter().map(|(n, f)| pb::DatasetOffer { name: (*n).into(), schema_fingerprint: (*f).into() }).collect(),
            capabilities: pb::Capabilities::default(),
            signing_public_key: Vec::new(),
            min_participants: floor,
            certificate: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    #[test]
    fn the_reason_names_what_each_bank_offers_instead() {
        let fp = "d357a1b2c3d4e5f60718";
        let workers = [
            bank("bank1", &[("telco_churn", fp)], 3),
            bank("bank2", &[("telco_churn", "8c1a04f9e2b7aa55")], 3),
            bank("bank3", &[("credit", fp)], 3),
        ];
        assert_eq!(
            waiting_reason(&workers, "telco_churn", fp, 3, &[]),
            "waiting for participants: 1 of 3 connected banks offers telco_churn with schema d357a1b2c3d4…, 3 needed; \
             bank2 offers fingerprint 8c1a04f9e2b7…; bank3 does not offer telco_churn"
        );
        assert_eq!(
            waiting_reason(&[], "telco_churn", fp, 3, &[]),
            "waiting for participants: no bank is connected; 3 needed offering telco_churn with schema d357a1b2c3d4…"
        );
        let floored = bank("bank4", &[("telco_churn", fp)], 5);
        let reason = waiting_reason(&workers[..1], "telco_churn", fp, 1, &[&floored]);
        assert!(reason.ends_with("bank4 takes part only in rounds of at least 5 banks (its own floor)"), "{reason}");
        // A bank whose own check refused the dataset says so, by kind only.
        let mut broken = bank("bank5", &[], 3);
        broken.unavailable.push(pb::UnavailableDataset {
            name: "telco_churn".into(),
            problem: pb::DatasetProblem::Corrupt.into(),
        });
        let reason = waiting_reason(&[workers[0].clone(), broken], "telco_churn", fp, 3, &[]);
        assert!(reason.ends_with("; bank5 has telco_churn: unavailable (corrupt file)"), "{reason}");
    }
}
