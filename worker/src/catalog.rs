//! The bank's datasets, checked before they are offered.
//!
//! At start every configured dataset is loaded and validated against its schema, both splits
//! ([`LocalDataset::load`]); only those that pass are offered to the coordinator. The others are
//! reported to it as unavailable with the kind of problem alone ([`DatasetProblem`]), while the
//! bank's operator gets the full detail (file, line, column) in the worker's log at once.
//!
//! [`Catalog::refresh`], polled every [`POLL_INTERVAL`] by the session driver, re-checks a
//! dataset whenever one of its files changes (size, modification time or inode — a cheap
//! `stat`, no new dependency): a file that goes bad withdraws the offer, a fixed one restores
//! it, without a restart; the driver registers again so the coordinator sees the change.
//!
//! Training labels that are all one class do not make a dataset unavailable — its test split
//! still serves evaluation — but its statistics and training tasks are refused
//! ([`crate::task::BankProfile::one_class`]), and the operator is warned at the check.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::DatasetConfig;
use crate::failure::Failure;
use crate::task::{DatasetProblem, DatasetRef, UnavailableDataset};
use crate::tasks::{LocalDataset, Unusable};

/// How often the files of the configured datasets are looked at for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), inode })
}

/// The stamps of a dataset's schema, training and test files (None: missing).
type Stamps = [Option<FileStamp>; 3];

fn stamps(config: &DatasetConfig) -> Stamps {
    [stamp(&config.schema), stamp(&config.train), stamp(&config.test)]
}

/// Where a configured dataset stands.
#[derive(Debug, Clone)]
pub enum Status {
    /// Checked and offered, its splits loaded.
    Offered {
        /// The loaded dataset.
        data: Arc<LocalDataset>,
        /// Every training label is the same class: training tasks are refused.
        one_class: bool,
    },
    /// Not offered, and why.
    Unavailable(Unusable),
}

impl Status {
    /// What the coordinator is told of it: offered with this fingerprint, or unavailable for
    /// this kind of problem.
    fn registered(&self) -> Result<&str, DatasetProblem> {
        match self {
            Status::Offered { data, .. } => Ok(&data.fingerprint),
            Status::Unavailable(u) => Err(u.problem),
        }
    }
}

#[derive(Debug)]
struct Entry {
    config: DatasetConfig,
    stamps: Stamps,
    status: Status,
}

/// The configured datasets and where each stands, in configuration order.
#[derive(Debug)]
pub struct Catalog {
    entries: RwLock<Vec<Entry>>,
}

fn check(config: &DatasetConfig) -> Status {
    match LocalDataset::load(config.clone()) {
        Ok((data, checked)) => Status::Offered { data: Arc::new(data), one_class: checked.one_class },
        Err(u) => Status::Unavailable(u),
    }
}

/// Tells the bank's operator what a check found (`before`: the previous status, None at start).
fn report(name: &str, status: &Status, before: Option<&Status>) {
    match (status, before) {
        (Status::Unavailable(u), _) => tracing::error!(
            dataset = name,
            problem = u.problem.as_str(),
            "dataset `{name}` is unavailable ({}): {}; it is not offered to the coordinator",
            u.problem.describe(),
            u.detail
        ),
        (Status::Offered { one_class: true, .. }, _) => tracing::warn!(
            dataset = name,
            "dataset `{name}`: all training labels are one class; it is offered for evaluation only \
             (statistics and training tasks are refused)"
        ),
        (Status::Offered { .. }, Some(Status::Unavailable(_))) => {
            tracing::info!(dataset = name, "dataset `{name}` checked again: valid, offered")
        }
        (Status::Offered { .. }, _) => tracing::info!(dataset = name, "dataset `{name}` checked: offered"),
    }
}

impl Catalog {
    /// Checks every configured dataset, telling the operator about each bad one.
    pub fn open(configs: &[DatasetConfig]) -> Catalog {
        let entries = configs
            .iter()
            .map(|config| {
                // Stamped before the check, so a change while it reads is seen at the next poll.
                let stamps = stamps(config);
                let status = check(config);
                report(&config.name, &status, None);
                Entry { config: config.clone(), stamps, status }
            })
            .collect();
        Catalog { entries: RwLock::new(entries) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-checks the datasets whose files changed since their last check (blocking: it reads
    /// them). True when what the coordinator should be told changed (an offer withdrawn or
    /// restored, a new fingerprint, another problem): the driver then registers again.
    pub fn refresh(&self) -> bool {
        let changed: Vec<(usize, DatasetConfig, Stamps)> = self
            .read()
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let now = stamps(&e.config);
                (now != e.stamps).then(|| (i, e.config.clone(), now))
            })
            .collect();
        let mut registration_changed = false;
        for (i, config, now) in changed {
            // Read outside the lock: tasks keep using the current version meanwhile.
            let status = check(&config);
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = entries.get_mut(i) else { continue };
            if status.registered() != entry.status.registered() {
                registration_changed = true;
                report(&config.name, &status, Some(&entry.status));
            } else if let Status::Unavailable(u) = &status {
                // Still bad, perhaps elsewhere in the file: the operator sees the new detail.
                report(&config.name, &Status::Unavailable(u.clone()), Some(&entry.status));
            }
            entry.stamps = now;
            entry.status = status;
        }
        registration_changed
    }

    /// The datasets offered, by name.
    pub fn offers(&self) -> Vec<DatasetRef> {
        let mut offers: Vec<DatasetRef> = self
            .read()
            .iter()
            .filter_map(|e| match &e.status {
                Status::Offered { data, .. } => {
                    Some(DatasetRef { name: e.config.name.clone(), schema_fingerprint: data.fingerprint.clone() })
                }
                Status::Unavailable(_) => None,
            })
            .collect();
        offers.sort_by(|a, b| a.name.cmp(&b.name));
        offers
    }

    /// The datasets configured but not offered, with the kind of problem.
    pub fn unavailable(&self) -> Vec<UnavailableDataset> {
        self.problems().into_iter().map(|(name, u)| UnavailableDataset { name, problem: u.problem }).collect()
    }

    /// The unavailable datasets with the full detail (for the operator, never the coordinator).
    pub fn problems(&self) -> Vec<(String, Unusable)> {
        let mut v: Vec<(String, Unusable)> = self
            .read()
            .iter()
            .filter_map(|e| match &e.status {
                Status::Unavailable(u) => Some((e.config.name.clone(), u.clone())),
                Status::Offered { .. } => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The offered datasets whose training labels are all one class.
    pub fn one_class(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|e| matches!(e.status, Status::Offered { one_class: true, .. }))
            .map(|e| e.config.name.clone())
            .collect()
    }

    /// The offered dataset `name`; a configured but unavailable one is a
    /// [`crate::failure::FailureKind::DatasetUnavailable`] failure (the file went bad after the task was admitted).
    pub fn get(&self, name: &str) -> Result<Arc<LocalDataset>, Failure> {
        let entries = self.read();
        match entries.iter().find(|e| e.config.name == name).map(|e| &e.status) {
            Some(Status::Offered { data, .. }) => Ok(data.clone()),
            Some(Status::Unavailable(u)) => Err(Failure::dataset_unavailable(name, u.problem)),
            None => Err(Failure::internal(format!("dataset `{name}` is not loaded"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::failure::FailureKind;

    const SCHEMA: &str = r#"
name = "toy"
[target]
column = "y"
positive = "1"
negative = "0"
[[columns]]
name = "x"
type = "numeric"
"#;

    fn dataset(dir: &Path, train: &str, test: &str) -> DatasetConfig {
        std::fs::write(dir.join("schema.toml"), SCHEMA).expect("schema");
        std::fs::write(dir.join("train.csv"), train).expect("train");
        std::fs::write(dir.join("test.csv"), test).expect("test");
        config(dir)
    }

    fn config(dir: &Path) -> DatasetConfig {
        DatasetConfig::files("toy", dir.join("schema.toml"), dir.join("train.csv"), dir.join("test.csv"))
    }

    const GOOD: &str = "x,y\n1.5,1\n2.5,0\n3.5,1\n";

    fn problem(catalog: &Catalog) -> Option<(DatasetProblem, String)> {
        catalog.problems().into_iter().next().map(|(_, u)| (u.problem, u.detail))
    }

    #[test]
    fn a_valid_dataset_is_offered_with_its_splits_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::open(&[dataset(dir.path(), GOOD, GOOD)]);
        assert_eq!(catalog.offers().len(), 1);
        assert!(catalog.unavailable().is_empty() && catalog.one_class().is_empty());
        let data = catalog.get("toy").expect("offered");
        // Loaded by the check: removing the file does not affect the loaded version.
        std::fs::remove_file(dir.path().join("train.csv")).expect("rm");
        assert_eq!(data.table(crate::tasks::Split::Train).expect("cached").rows, 3);
    }

    #[test]
    fn missing_empty_and_corrupt_files_make_the_dataset_unavailable_with_the_detail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dataset(dir.path(), GOOD, GOOD);
        std::fs::remove_file(&cfg.test).expect("rm");
        let (p, detail) = problem(&Catalog::open(std::slice::from_ref(&cfg))).expect("unavailable");
        assert_eq!(p, DatasetProblem::Missing);
        assert!(detail.contains("test.csv"), "{detail}");

        std::fs::write(&cfg.test, "").expect("0 bytes");
        assert_eq!(problem(&Catalog::open(std::slice::from_ref(&cfg))).expect("unavailable").0, DatasetProblem::Empty);
        std::fs::write(&cfg.test, "x,y\n").expect("a header only");
        let (p, detail) = problem(&Catalog::open(std::slice::from_ref(&cfg))).expect("unavailable");
        assert_eq!((p, detail.contains("no usable rows")), (DatasetProblem::Empty, true), "{detail}");

        std::fs::write(&cfg.train, "x,y\n1.5,1\ntwelve,0\n").expect("corrupt");
        let catalog = Catalog::open(std::slice::from_ref(&cfg));
        let (p, detail) = problem(&catalog).expect("unavailable");
        assert_eq!(p, DatasetProblem::Corrupt);
        assert!(detail.contains("train.csv:3") && detail.contains("twelve"), "file, line and value: {detail}");
        assert!(catalog.offers().is_empty());
        let refused = catalog.get("toy").expect_err("not offered");
        assert_eq!(refused.kind, FailureKind::DatasetUnavailable);
        assert!(!refused.reason.contains("twelve") && !refused.reason.contains("train.csv"), "{refused}");

        let mut bad_schema = cfg.clone();
        bad_schema.schema = PathBuf::from("/nonexistent/schema.toml");
        assert_eq!(problem(&Catalog::open(&[bad_schema])).expect("unavailable").0, DatasetProblem::Missing);
    }

    #[test]
    fn one_class_training_labels_are_offered_but_flagged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::open(&[dataset(dir.path(), "x,y\n1,1\n2,1\n", GOOD)]);
        assert_eq!(catalog.offers().len(), 1);
        assert_eq!(catalog.one_class(), ["toy"]);
    }

    #[test]
    fn a_changed_file_is_checked_again_and_the_offer_withdrawn_then_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dataset(dir.path(), GOOD, GOOD);
        let catalog = Catalog::open(std::slice::from_ref(&cfg));
        assert!(!catalog.refresh(), "nothing changed");
        std::fs::write(&cfg.train, "x,y\n1.5,1\n2.5,oops\n").expect("corrupt");
        assert!(catalog.refresh(), "the offer is withdrawn");
        assert!(catalog.offers().is_empty());
        assert_eq!(catalog.unavailable(), [UnavailableDataset { name: "toy".into(), problem: DatasetProblem::Corrupt }]);
        assert!(!catalog.refresh(), "checked once per change");
        std::fs::write(&cfg.train, GOOD.to_string() + "4.5,0\n").expect("fixed");
        assert!(catalog.refresh(), "the offer is restored");
        assert_eq!(catalog.get("toy").expect("offered").table(crate::tasks::Split::Train).expect("rows").rows, 4);
    }
}
