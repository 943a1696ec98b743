//! The bank's own rules, enforced by its worker whatever the coordinator asks: which datasets
//! (only those configured are offered at all), which model kinds (custom TorchScript code only
//! when allowed explicitly, optionally pinned by hash), how many rounds per job and
//! how many jobs per day, how many evaluations per (job, round) — plus the minimum number of institutions per round, enforced by the
//! secure-aggregation client. A refused task is reported to the coordinator as a `policy`
//! failure, which the job's owner sees as `refused` with this module's reason.
//!
//! Usage counters survive restarts: they live in `data_dir/policy_usage.json`, written
//! atomically ([`Policy::load`]); simulated banks keep them in memory ([`Policy::in_memory`]).
//!
//! The task machine ([`crate::task`]) checks the rules it can decide alone (datasets, schema
//! fingerprints, participant floor) and asks its driver for the rest with an
//! [`AdmissionRequest`], answered here by [`Policy::admit_request`] — so the file I/O of the
//! counters and of the federation CA stays out of the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use confide_core::model::ModelSpec;

use crate::config::PolicyConfig;
use crate::failure::Failure;
use crate::membership::Membership;
use crate::task::{AdmissionRequest, JobTerms, Purpose};

const DAY_SECS: u64 = 24 * 3600;

/// What this worker has agreed to so far.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Usage {
    /// Per job: first-seen time (Unix seconds) and training rounds contributed to.
    jobs: BTreeMap<String, JobUsage>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct JobUsage {
    first_seen: u64,
    rounds: Vec<u64>,
    /// Evaluation tasks admitted, per round (absent in files written before the limit).
    #[serde(default)]
    evaluations: BTreeMap<u64, u32>,
}

/// Enforces a [`PolicyConfig`].
#[derive(Debug)]
pub struct Policy {
    /// The bank's rules.
    config: PolicyConfig,
    /// Where the usage counters persist; None keeps them in memory only.
    path: Option<PathBuf>,
    /// What this bank has agreed to so far.
    usage: Mutex<Usage>,
    /// Who may be a peer in a round (no one twice, by default).
    membership: Membership,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Policy {
    /// Loads the usage counters from `data_dir` (a missing file starts empty; an unreadable one
    /// is an error, so a bank's limits cannot be reset by corrupting the file).
    pub fn load(config: PolicyConfig, data_dir: &Path) -> Result<Self, Failure> {
        let path = data_dir.join("policy_usage.json");
        let usage = crate::state_file::read(&path, "usage record").map_err(Failure::policy)?.unwrap_or_default();
        Ok(Self { config, path: Some(path), usage: Mutex::new(usage), membership: Membership::open_to_all() })
    }

    /// A policy whose usage counters live in memory only (simulated banks, tests): limits hold
    /// for the life of the process.
    pub fn in_memory(config: PolicyConfig) -> Self {
        Self { config, path: None, usage: Mutex::default(), membership: Membership::open_to_all() }
    }

    /// The same rules, with `membership` deciding who may be a peer (pinned members, revoked
    /// certificates) instead of any CA-signed institution.
    pub fn with_membership(self, membership: Membership) -> Self {
        Self { membership, ..self }
    }

    /// Answers a task machine's [`AdmissionRequest`]: the peer list against the bank's
    /// [`Membership`] (no one twice, no revoked certificate, only pinned members), every peer
    /// key bound by the federation CA (when one is configured), the whole job's terms
    /// ([`Self::admit_terms`]), then the model and usage rules (recorded when admitted, so a
    /// task refused for its peers or its job does not use up the bank's budget).
    pub fn admit_request(&self, request: &AdmissionRequest) -> Result<(), Failure> {
        self.membership.check(&request.peers)?;
        if let Some(ca) = &request.federation_ca {
            crate::secure::check_peer_bindings(ca, &request.peers)?;
        }
        if let Some(terms) = &request.terms {
            self.admit_terms(terms)?;
        }
        match &request.purpose {
            Purpose::Statistics => self.admit_job(&request.job_id),
            Purpose::Training { model } => self.admit_training(&request.job_id, request.round, model),
            Purpose::Evaluation { model } => self.admit_evaluation(&request.job_id, request.round, model),
        }
    }

    /// Checks the whole job against the rules that do not depend on the round: its model and
    /// its number of rounds. Every task of the job is checked, so the first (its statistics)
    /// already refuses a job this bank would leave part-way. The reason names the policy key
    /// and the job's value; it is about the bank's rules, not its data, so it is shareable.
    pub fn admit_terms(&self, terms: &JobTerms) -> Result<(), Failure> {
        self.admit_model(&terms.model)?;
        let max = self.config.max_rounds_per_job;
        if max > 0 && terms.rounds > max {
            return Err(Failure::policy(format!(
                "the job has {} rounds; this bank contributes to at most {max} rounds of a job (policy.max_rounds_per_job = {max})",
                terms.rounds
            ))
            .shareable());
        }
        Ok(())
    }

    /// Checks a training task for `job` round `round` of `model`, and records it.
    pub fn admit_training(&self, job: &str, round: u64, model: &ModelSpec) -> Result<(), Failure> {
        self.admit_model(model)?;
        self.admit(job, Some(round), false)
    }

    /// Checks that this bank runs `model` on its data at all: its kind must be allowed (a
    /// custom `torchscript` model only when listed explicitly) and a custom module's hash must
    /// be pinned when the bank pins hashes.
    pub fn admit_model(&self, model: &ModelSpec) -> Result<(), Failure> {
        let kind = model.kind_name();
        let allowed = &self.config.allowed_models;
        let listed = allowed.iter().any(|m| m == kind);
        if let ModelSpec::TorchScript(ts) = model {
            if !listed {
                return Err(Failure::policy(
                    "custom TorchScript models are not allowed by this bank (add \"torchscript\" to policy.allowed_models)",
                )
                .shareable());
            }
            let pins = &self.config.allowed_torchscript_sha256;
            let hash = ts.module_sha256.as_deref().unwrap_or_default();
            if !pins.is_empty() && !pins.iter().any(|p| p.eq_ignore_ascii_case(hash)) {
                return Err(Failure::policy(format!("TorchScript module {hash} is not among this bank's allowed_torchscript_sha256")).shareable());
            }
            return Ok(());
        }
        if !allowed.is_empty() && !listed {
            return Err(Failure::policy(format!(
                "model kind `{kind}` is not allowed by this bank (policy.allowed_models: {})",
                allowed.join(", ")
            ))
            .shareable());
        }
        Ok(())
    }

    /// Checks any task of `job` (statistics, evaluation) against the jobs-per-day limit.
    pub fn admit_job(&self, job: &str) -> Result<(), Failure> {
        self.admit(job, None, false)
    }

    /// Checks an evaluation of `model` for `job` round `round` against the model rules, the
    /// jobs-per-day limit and `max_evaluations_per_round`, and records it: the test set answers
    /// a bounded number of queries per round however often the coordinator asks.
    pub fn admit_evaluation(&self, job: &str, round: u64, model: &ModelSpec) -> Result<(), Failure> {
        self.admit_model(model)?;
        self.admit(job, Some(round), true)
    }

    fn admit(&self, job: &str, round: Option<u64>, evaluation: bool) -> Result<(), Failure> {
        let now = now_secs();
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let before = usage.clone();
        if !usage.jobs.contains_key(job) {
            let recent = usage.jobs.values().filter(|j| now.saturating_sub(j.first_seen) < DAY_SECS).count();
            let max = self.config.max_jobs_per_day;
            if max > 0 && recent >= max as usize {
                return Err(Failure::policy(format!("this bank takes part in at most {max} jobs per 24 hours (policy.max_jobs_per_day)")).shareable());
            }
            usage.jobs.insert(job.to_string(), JobUsage { first_seen: now, ..JobUsage::default() });
        }
        if let (true, Some(round), Some(entry)) = (evaluation, round, usage.jobs.get_mut(job)) {
            let done = entry.evaluations.entry(round).or_default();
            let max = self.config.max_evaluations_per_round.max(1);
            if *done >= max {
                return Err(Failure::policy(format!(
                    "this bank evaluates round {round} of a job at most {max} times (policy.max_evaluations_per_round)"
                ))
                .shareable());
            }
            *done += 1;
        } else if let (Some(round), Some(entry)) = (round, usage.jobs.get_mut(job))
            && !entry.rounds.contains(&round) {
                let max = self.config.max_rounds_per_job;
                if max > 0 && entry.rounds.len() as u64 >= max {
                    return Err(Failure::policy(format!(
                        "this bank contributes to at most {max} rounds of a job (policy.max_rounds_per_job = {max})"
                    ))
                    .shareable());
                }
                entry.rounds.push(round);
            }
        if *usage != before
            && let Some(path) = &self.path
        {
            crate::state_file::write(path, &*usage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use confide_core::model::TorchScriptSpec;

    use super::*;
    use crate::failure::FailureKind;

    fn mlp() -> ModelSpec {
        ModelSpec::Mlp { hidden: vec![4] }
    }

    fn policy(dir: &Path, f: impl FnOnce(&mut PolicyConfig)) -> Policy {
        let mut config = PolicyConfig::default();
        f(&mut config);
        Policy::load(config, dir).expect("load")
    }

    #[test]
    fn limits_rounds_per_job_and_survives_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = policy(dir.path(), |c| c.max_rounds_per_job = 2);
        p.admit_training("j", 1, &mlp()).expect("1");
        p.admit_training("j", 1, &mlp()).expect("a rerun round counts once");
        p.admit_training("j", 2, &mlp()).expect("2");
        drop(p);
        let p = policy(dir.path(), |c| c.max_rounds_per_job = 2);
        let err = p.admit_training("j", 3, &mlp()).expect_err("third round");
        assert_eq!(err.kind, FailureKind::Policy);
        assert!(err.reason.contains("at most 2 rounds"), "{err}");
        p.admit_training("other", 1, &mlp()).expect("another job has its own budget");
    }

    #[test]
    fn limits_jobs_per_day_and_model_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = policy(dir.path(), |c| {
            c.max_jobs_per_day = 1;
            c.allowed_models = vec!["logistic_regression".into()];
        });
        p.admit_job("a").expect("first job");
        p.admit_training("a", 1, &ModelSpec::LogisticRegression).expect("allowed model");
        assert!(p.admit_training("a", 2, &mlp()).expect_err("mlp refused").reason.contains("not allowed"));
        assert!(p.admit_job("b").expect_err("second job today").reason.contains("at most 1 jobs"));
    }

    fn scripted(hash: &str) -> ModelSpec {
        ModelSpec::TorchScript(TorchScriptSpec {
            module: "model.pt".into(),
            parameters: "init.safetensors".into(),
            module_sha256: Some(hash.into()),
            parameters_sha256: None,
            input_dim: None,
            layout: Default::default(),
        })
    }

    #[test]
    fn custom_modules_are_refused_unless_allowed_explicitly_and_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let open = policy(dir.path(), |_| {});
        open.admit_model(&mlp()).expect("an empty list allows the built-in kinds");
        let err = open.admit_training("j", 1, &scripted(&a)).expect_err("custom code is denied by default");
        assert_eq!(err.kind, FailureKind::Policy);
        assert!(err.reason.contains("allowed_models"), "{err}");
        let allowed = policy(dir.path(), |c| c.allowed_models = vec!["torchscript".into()]);
        allowed.admit_model(&scripted(&a)).expect("any module once torchscript is listed");
        assert!(allowed.admit_model(&mlp()).is_err(), "the list now limits the built-in kinds too");
        let pinned = policy(dir.path(), |c| {
            c.allowed_models = vec!["torchscript".into()];
            c.allowed_torchscript_sha256 = vec![a.to_uppercase()];
        });
        pinned.admit_model(&scripted(&a)).expect("the pinned module");
        let err = pinned.admit_model(&scripted(&b)).expect_err("another module");
        assert!(err.reason.contains(&b), "{err}");
    }

    #[test]
    fn an_in_memory_policy_answers_admission_requests_without_a_file() {
        let p = Policy::in_memory(PolicyConfig { max_jobs_per_day: 1, ..Default::default() });
        let request = |job: &str, purpose: Purpose| AdmissionRequest {
            job_id: job.into(),
            round: 1,
            dataset: "d".into(),
            purpose,
            terms: None,
            peers: Vec::new(),
            federation_ca: None,
        };
        p.admit_request(&request("a", Purpose::Statistics)).expect("first job");
        p.admit_request(&request("a", Purpose::Training { model: mlp() })).expect("the same job");
        let err = p.admit_request(&request("b", Purpose::Statistics)).expect_err("a second job today");
        assert_eq!(err.kind, FailureKind::Policy);
        let err = p.admit_request(&request("a", Purpose::Evaluation { model: scripted(&"a".repeat(64)) })).expect_err("custom code");
        assert!(err.reason.contains("allowed_models"), "{err}");
    }

    #[test]
    fn evaluations_per_round_are_limited_and_survive_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = policy(dir.path(), |c| c.max_evaluations_per_round = 1);
        p.admit_evaluation("j", 1, &mlp()).expect("the first evaluation of round 1");
        drop(p);
        let p = policy(dir.path(), |c| c.max_evaluations_per_round = 1);
        let err = p.admit_evaluation("j", 1, &mlp()).expect_err("a second evaluation of round 1");
        assert_eq!(err.kind, FailureKind::Policy);
        assert!(err.reason.contains("max_evaluations_per_round"), "{err}");
        p.admit_evaluation("j", 2, &mlp()).expect("round 2 is another query");
        p.admit_training("j", 1, &mlp()).expect("training is counted apart");
        let default = policy(dir.path(), |_| {});
        default.admit_evaluation("k", 1, &mlp()).expect("first");
        default.admit_evaluation("k", 1, &mlp()).expect("one retry by default");
        assert!(default.admit_evaluation("k", 1, &mlp()).is_err(), "not a third");
    }

    #[test]
    fn the_whole_job_is_checked_at_its_first_task_naming_the_key_and_the_jobs_value() {
        let p = Policy::in_memory(PolicyConfig { max_rounds_per_job: 2, allowed_models: vec!["mlp".into()], ..Default::default() });
        let terms = |rounds: u64, model: ModelSpec| JobTerms { rounds, model, score_buckets: 100, dp: None };
        let request = |terms: JobTerms| AdmissionRequest {
            job_id: "j".into(),
            round: 0,
            dataset: "d".into(),
            purpose: Purpose::Statistics,
            terms: Some(terms),
            peers: Vec::new(),
            federation_ca: None,
        };
        p.admit_request(&request(terms(2, mlp()))).expect("a 2-round job fits");
        let err = p.admit_request(&request(terms(3, mlp()))).expect_err("a 3-round job does not, at its statistics");
        assert_eq!(err.kind, FailureKind::Policy);
        assert_eq!(
            err.reason,
            "the job has 3 rounds; this bank contributes to at most 2 rounds of a job (policy.max_rounds_per_job = 2)"
        );
        assert!(err.shareable, "the bank's rules are not its data");
        let err = p.admit_request(&request(terms(1, ModelSpec::LogisticRegression))).expect_err("a model it does not allow");
        assert!(err.reason.contains("logistic_regression") && err.reason.contains("policy.allowed_models"), "{err}");
        let unlimited = Policy::in_memory(PolicyConfig::default());
        unlimited.admit_request(&request(terms(100_000, mlp()))).expect("0 = no limit");
    }

    #[test]
    fn a_usage_file_without_evaluation_counts_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy_usage.json"), br#"{"jobs":{"j":{"first_seen":1,"rounds":[1]}}}"#).expect("write");
        let p = Policy::load(PolicyConfig::default(), dir.path()).expect("an older file");
        p.admit_evaluation("j", 1, &mlp()).expect("no evaluation recorded yet");
    }

    #[test]
    fn a_corrupted_usage_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy_usage.json"), b"{not json").expect("write");
        assert!(Policy::load(PolicyConfig::default(), dir.path()).is_err());
    }
}
