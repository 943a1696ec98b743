//! Exports a finished job's model for serving systems, without libtorch.
//!
//! [`export_job`] writes into one directory:
//!
//! | file | what |
//! | --- | --- |
//! | `model.onnx` | the model with the federated preprocessing in-graph ([`onnx`]): raw columns in, `probability` out |
//! | `model.pt` | a TorchScript module ([`torchscript`]) for `torch.jit.load` (Python) or `torch::jit::load` (C++): encoded rows into `forward`, raw columns into `predict_raw` |
//! | `model.safetensors` | the weights (tensor names as in the worker, `fc0.weight`, ...), job metadata in the header |
//! | `preprocessing.json` | the federated means, standard deviations, modes and levels the model was trained with |
//! | `model_card.json`, `model_card.md` | job, data, rounds, institutions, metrics, privacy settings, file hashes ([`card`]) |
//!
//! A recommendation model (matrix factorisation, two-tower) exports its federated item side
//! only, since user embeddings never leave the bank that trained them:
//!
//! | file | what |
//! | --- | --- |
//! | `model.onnx` | the scoring graph ([`onnx::recommendation`]): the bank's `user_embedding` [N, dim] and `user_bias` [N] with `item_index` [N] in, `score` [N] out (and `user_vector`, `item_vector` [N, k] for a retrieval index) |
//! | `model.safetensors` | the item side (`item_embedding`, `item_bias`, `global_bias`, tower layers) |
//! | `items.csv` | `item_id,row`: the catalogue row of every item id |
//! | `preprocessing.json`, model card | as above, with a recommendation section in the card |
//!
//! A gradient-boosted tree ensemble (`gbdt`) is written as trees, not weights:
//!
//! | file | what |
//! | --- | --- |
//! | `model.onnx` | the trees as an `ai.onnx.ml` tree ensemble behind the raw columns' feature space ([`onnx::gbdt`]): raw columns in, `probability` and `logit` out |
//! | `model.json` | XGBoost's JSON model format ([`xgboost`]), for `xgboost.Booster(model_file=...)` over the tree features |
//! | `preprocessing.json`, model card | as above, with a trees section in the card (trees, depth, importance by gain and cover) |
//!
//! Safetensors and TorchScript do not apply to trees ([`ExportError::NotApplicable`]).
//!
//! TorchScript is not written for recommendation models: asking for it alone is an
//! [`ExportError::Unsupported`], and `--format all` and the automatic export after a job
//! completes write the formats [`Family::formats`] lists.
//!
//! A model family maps to an exporter in [`Family::of`]. A custom TorchScript model (written by
//! the job's owner) is exported as its trained parameters under the module's own names
//! (safetensors, for `load_state_dict` into the owner's module) with the model card; no graph is
//! generated from someone else's code.

pub mod card;
pub mod onnx;
pub mod torchscript;
pub mod trees;
pub mod xgboost;

/// Protobuf types generated from the vendored `proto/onnx/onnx.proto` (package `onnx`).
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use confide_core::job::JobSpec;
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing};
use confide_gbdt::GbdtModel;
use serde::{Deserialize, Serialize};

/// Errors exporting a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A stored input (job spec, schema, preprocessing, checkpoint) could not be read.
    #[error("cannot read the job's {what}: {message}")]
    Input {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The inputs disagree with each other (e.g. parameters that do not fit the schema).
    #[error("inconsistent job: {0}")]
    Inconsistent(String),
    /// The job has no preprocessing or model yet (it never completed its first step).
    #[error("job {job} has no {what} yet; only a job that trained can be exported")]
    NotTrained {
        /// Job id.
        job: String,
        /// What is missing.
        what: &'static str,
    },
    /// This model family cannot be written in this format (yet).
    #[error("{format} export is not supported for {family} models yet")]
    Unsupported {
        /// Format name.
        format: &'static str,
        /// Model label.
        family: String,
    },
    /// The format cannot hold this kind of model (weights for trees, trees for a network).
    #[error("{format} export does not apply to {family} models: {reason}")]
    NotApplicable {
        /// Format name.
        format: &'static str,
        /// Model label.
        family: String,
        /// Why, and what to export instead.
        reason: &'static str,
    },
    /// The TorchScript archive could not be built.
    #[error(transparent)]
    TorchScript(#[from] torchscript::TorchScriptError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `model.onnx`, preprocessing in-graph.
    Onnx,
    /// `model.safetensors` (with `preprocessing.json`).
    Safetensors,
    /// `model.pt`, a TorchScript archive.
    #[serde(rename = "torchscript")]
    TorchScript,
    /// `model.json` in XGBoost's JSON model format (tree ensembles).
    #[serde(rename = "xgboost")]
    XgboostJson,
}

impl Format {
    /// Every format this build can write; a family writes those of them it supports
    /// ([`Family::formats`], what `--format all` and the automatic export produce).
    pub const AVAILABLE: &'static [Format] = &[Format::Onnx, Format::Safetensors, Format::TorchScript, Format::XgboostJson];

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
            Format::TorchScript => "torchscript",
            Format::XgboostJson => "xgboost",
        }
    }
}

/// How a model family is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Fully connected binary classifiers over encoded tabular features (logistic regression,
    /// MLP): raw-column ONNX graph, coefficient table for logistic regression.
    Tabular,
    /// Matrix factorisation and two-tower models: the item side and a scoring graph the bank
    /// feeds its own user side into.
    Recommendation,
    /// A job owner's scripted TorchScript module: its trained parameters under the module's own
    /// names (safetensors, ready for `load_state_dict` into the owner's module) and the card.
    /// The graph is the owner's code, so no ONNX or TorchScript file is generated for it.
    Custom,
    /// Gradient-boosted trees (`gbdt`): the trees as ONNX (raw columns in) and as XGBoost JSON.
    Trees,
}

impl Family {
    /// The exporter family of a model spec; families without an exporter are refused.
    pub fn of(spec: &ModelSpec) -> Result<Family, ExportError> {
        #[allow(unreachable_patterns)] // new families are added to ModelSpec before their exporter
        match spec {
            ModelSpec::LogisticRegression | ModelSpec::Mlp { .. } => Ok(Family::Tabular),
            ModelSpec::MatrixFactorization { .. } | ModelSpec::TwoTower { .. } => {
                Ok(Family::Recommendation)
            }
            ModelSpec::TorchScript(_) => Ok(Family::Custom),
            ModelSpec::Gbdt(_) => Ok(Family::Trees),
            other => Err(ExportError::Unsupported {
                format: "any",
                family: other.label(),
            }),
        }
    }
}

impl Family {
    /// The formats this family is written in: what `--format all` and the automatic export
    /// after a job completes produce ([`Format::AVAILABLE`] less the unsupported ones).
    pub fn formats(self) -> Vec<Format> {
        Format::AVAILABLE
            .iter()
            .copied()
            .filter(|&f| self.supports(f))
            .collect()
    }

    /// True when `format` can be written for this family.
    pub fn supports(self, format: Format) -> bool {
        match self {
            Family::Tabular => format != Format::XgboostJson,
            Family::Recommendation => matches!(format, Format::Onnx | Format::Safetensors),
            Family::Custom => format == Format::Safetensors,
            Family::Trees => matches!(format, Format::Onnx | Format::XgboostJson),
        }
    }
}

/// The job as the coordinator records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// Job name.
    pub name: String,
    /// `completed`, `running`, ...
    pub status: String,
    /// RFC 3339 submission time.
    pub created_at: String,
    /// RFC 3339 time of the last change (completion, for a finished job).
    pub updated_at: String,
    /// Why the job stopped before its round budget, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Content hash of the exported global model checkpoint.
    pub model_hash: String,
    /// The round the exported model is from (the best round's when early stopping restores
    /// it; None: the last round's, for records that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_round: Option<u64>,
    /// Per bank, the hash of its own audit-log record of its last upload for this job, as its
    /// submission carried it: a validator matches it against the bank's log
    /// (`confide-worker audit verify --job`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_heads: Vec<AuditHead>,
}

/// One bank's audit head for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Institution id.
    pub institution: String,
    /// The round of the upload it records.
    pub round: u64,
    /// SHA-256 hex of the bank's audit record.
    pub head: String,
    /// A DP job: the bank's own record-level ε for this job, reported with that upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_epsilon: Option<f64>,
}

/// How one institution fared in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    /// Institution id.
    pub institution: String,
    /// How it fared in the round.
    pub status: confide_core::outcome::ParticipantStatus,
}

/// One completed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// 1-based round.
    pub round: u64,
    /// Selected institutions and their outcome.
    pub participants: Vec<Participant>,
    /// Federated metrics of the model this round produced.
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds.
    pub duration_secs: f64,
    /// RFC 3339 completion time.
    pub completed_at: String,
}

/// Everything an export needs, already parsed.
#[derive(Debug, Clone)]
pub struct JobExport {
    /// The job's record.
    pub job: JobInfo,
    /// The validated job spec.
    pub spec: JobSpec,
    /// The dataset schema.
    pub schema: DatasetSchema,
    /// The federated preprocessing the model was trained with.
    pub preprocessing: Preprocessing,
    /// The final global model (no tensors for a tree ensemble: see [`JobExport::trees`]).
    pub params: ModelParams,
    /// A `gbdt` job's final tree ensemble (None for the parameter-vector families).
    pub trees: Option<GbdtModel>,
    /// Completed rounds, in order.
    pub rounds: Vec<RoundReport>,
}

impl JobExport {
    /// Parses the stored texts: the spec (JSON), schema (TOML), preprocessing (JSON) and the
    /// global model checkpoint (safetensors; a `gbdt` job's is `confide-gbdt`'s JSON), checking
    /// they fit together.
    pub fn from_stored(
        job: JobInfo,
        spec_json: &str,
        schema_toml: &str,
        preprocessing_json: Option<&str>,
        model: Option<&[u8]>,
        rounds: Vec<RoundReport>,
    ) -> Result<Self, ExportError> {
        let input = |what: &'static str| move |e: String| ExportError::Input { what, message: e };
        let spec: JobSpec =
            serde_json::from_str(spec_json).map_err(|e| input("job spec")(e.to_string()))?;
        let schema = DatasetSchema::parse(schema_toml, "job schema")
            .map_err(|e| input("dataset schema")(e.to_string()))?;
        let not_trained = |what| ExportError::NotTrained {
            job: job.id.clone(),
            what,
        };
        let prep_json = preprocessing_json
            .filter(|s| !s.is_empty())
            .ok_or_else(|| not_trained("preprocessing"))?;
        let preprocessing: Preprocessing =
            serde_json::from_str(prep_json).map_err(|e| input("preprocessing")(e.to_string()))?;
        if preprocessing.schema_fingerprint != schema.fingerprint() {
            return Err(ExportError::Inconsistent(
                "the preprocessing was computed for another schema than the job's".into(),
            ));
        }
        let model = model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| not_trained("model"))?;
        let layout = spec.model.layout(preprocessing.input_dim());
        let (params, trees) = if spec.model.gbdt().is_some() {
            let trees = GbdtModel::from_bytes(model).map_err(|e| input("model checkpoint")(e.to_string()))?;
            trees::check_features(&trees, &schema)?;
            (ModelParams { layout, values: Vec::new() }, Some(trees))
        } else {
            let params = ModelParams::from_safetensors(model, &layout)
                .map_err(|e| input("model checkpoint")(e.to_string()))?;
            (params, None)
        };
        Ok(Self {
            job,
            spec,
            schema,
            preprocessing,
            params,
            trees,
            rounds,
        })
    }

    /// Every format this job's model family is written in (see [`Family::formats`]).
    pub fn available_formats(&self) -> Result<Vec<Format>, ExportError> {
        Ok(Family::of(&self.spec.model)?.formats())
    }

    /// Key/value metadata stored in the ONNX and safetensors files.
    pub fn metadata(&self) -> Vec<(String, String)> {
        vec![
            ("confide.job_id".into(), self.job.id.clone()),
            ("confide.job_name".into(), self.job.name.clone()),
            ("confide.model".into(), self.spec.model.label()),
            ("confide.dataset".into(), self.schema.name.clone()),
            (
                "confide.schema_fingerprint".into(),
                self.schema.fingerprint(),
            ),
            ("confide.model_hash".into(), self.job.model_hash.clone()),
            (
                "confide.rounds_completed".into(),
                self.rounds.len().to_string(),
            ),
            (
                "confide.feature_names".into(),
                match &self.trees {
                    // The trees' feature space (model.json's feature order).
                    Some(m) => m.features.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join("\t"),
                    None => self.preprocessing.feature_names().join("\t"),
                },
            ),
        ]
    }
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// File name inside the export directory.
    pub name: String,
    /// What it holds (`onnx`, `safetensors`, `preprocessing`).
    pub kind: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What [`export_job`] wrote.
#[derive(Debug, Clone)]
pub struct ExportManifest {
    /// The directory.
    pub dir: PathBuf,
    /// Model files and `preprocessing.json`, with hashes (as listed in the card).
    pub files: Vec<ExportedFile>,
    /// The model card files (`model_card.json`, `model_card.md`).
    pub card_files: Vec<PathBuf>,
}

/// File names inside an export directory.
pub mod names {
    /// ONNX graph.
    pub const ONNX: &str = "model.onnx";
    /// safetensors weights.
    pub const SAFETENSORS: &str = "model.safetensors";
    /// TorchScript archive.
    pub const TORCHSCRIPT: &str = "model.pt";
    /// XGBoost JSON model (tree ensembles).
    pub const XGBOOST: &str = "model.json";
    /// Federated preprocessing.
    pub const PREPROCESSING: &str = "preprocessing.json";
    /// Recommendation models: `item_id,row` for every catalogue item.
    pub const ITEMS: &str = "items.csv";
    /// Model card, JSON.
    pub const CARD_JSON: &str = "model_card.json";
    /// Model card, markdown.
    pub const CARD_MD: &str = "model_card.md";
}

/// Writes the requested formats, `preprocessing.json` and the model card into `dir` (created
/// if needed; files of the same name are replaced atomically).
pub fn export_job(
    job: &JobExport,
    dir: &Path,
    formats: &[Format],
) -> Result<ExportManifest, ExportError> {
    let family = Family::of(&job.spec.model)?;
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files = Vec::new();
    let mut signature = None;
    let mut formats = formats.to_vec();
    formats.dedup();
    // Refused before anything is written.
    if let Some(&refused) = formats.iter().find(|&&f| !family.supports(f)) {
        return Err(unsupported(job, refused));
    }
    for format in formats {
        let (name, bytes) = match (format, family) {
            (Format::Onnx, Family::Tabular) => {
                let model = onnx::tabular(
                    &job.spec.model,
                    &job.schema,
                    &job.preprocessing,
                    &job.params,
                    &job.metadata(),
                )?;
                signature = Some(model.signature);
                (names::ONNX, model.bytes)
            }
            (Format::Safetensors, Family::Tabular | Family::Recommendation | Family::Custom) => {
                let meta: HashMap<String, String> = job.metadata().into_iter().collect();
                (names::SAFETENSORS, job.params.to_safetensors(Some(meta)))
            }
            (Format::Onnx, Family::Recommendation) => {
                let model = onnx::recommendation(&job.spec.model, &job.params, &job.metadata())?;
                signature = Some(model.signature);
                (names::ONNX, model.bytes)
            }
            (Format::TorchScript, Family::Tabular) => (
                names::TORCHSCRIPT,
                torchscript::torchscript_archive(&job.spec.model, &job.params, &job.preprocessing)?,
            ),
            (Format::Onnx, Family::Trees) => {
                let model = onnx::gbdt(&job.spec.model, &job.schema, trees_of(job)?, &job.metadata())?;
                signature = Some(model.signature);
                (names::ONNX, model.bytes)
            }
            (Format::XgboostJson, Family::Trees) => {
                (names::XGBOOST, xgboost::model_json(trees_of(job)?, job.spec.training.pos_weight.unwrap_or(1.0))?)
            }
            (Format::TorchScript, Family::Recommendation)
            | (Format::Onnx | Format::TorchScript, Family::Custom)
            | (Format::XgboostJson, Family::Tabular | Family::Recommendation | Family::Custom)
            | (Format::Safetensors | Format::TorchScript, Family::Trees) => {
                return Err(unsupported(job, format));
            }
        };
        files.push(write_file(dir, name, format.name(), &bytes)?);
    }
    let prep = serde_json::to_vec_pretty(&job.preprocessing)
        .map_err(|e| ExportError::Inconsistent(format!("preprocessing: {e}")))?;
    files.push(write_file(
        dir,
        names::PREPROCESSING,
        "preprocessing",
        &prep,
    )?);

    if let Some(rec) = &job.preprocessing.recommendation {
        files.push(write_file(dir, names::ITEMS, "items", &items_csv(&rec.items)?)?);
    }

    let card = card::ModelCard::new(job, &files, signature);
    let json = serde_json::to_vec_pretty(&card)
        .map_err(|e| ExportError::Inconsistent(format!("model card: {e}")))?;
    write_file(dir, names::CARD_JSON, "model_card", &json)?;
    write_file(
        dir,
        names::CARD_MD,
        "model_card",
        card.to_markdown().as_bytes(),
    )?;
    Ok(ExportManifest {
        dir: dir.to_path_buf(),
        files,
        card_files: vec![dir.join(names::CARD_JSON), dir.join(names::CARD_MD)],
    })
}

/// A `gbdt` job's trees (present whenever [`JobExport::from_stored`] read a gbdt checkpoint).
fn trees_of(job: &JobExport) -> Result<&GbdtModel, ExportError> {
    job.trees
        .as_ref()
        .ok_or_else(|| ExportError::Inconsistent(format!("{} has no tree ensemble", job.spec.model.label())))
}

/// The error for a format the job's family is not written in.
fn unsupported(job: &JobExport, format: Format) -> ExportError {
    let label = job.spec.model.label();
    match (format, job.spec.model.gbdt().is_some()) {
        (Format::Safetensors | Format::TorchScript, true) => {
            return ExportError::NotApplicable {
                format: format.name(),
                family: format!("gradient-boosted tree ({label})"),
                reason: "a tree ensemble has no weight tensors or network graph; export `onnx` (model.onnx) or `xgboost` (model.json)",
            };
        }
        (Format::XgboostJson, false) => {
            return ExportError::NotApplicable {
                format: format.name(),
                family: label,
                reason: "XGBoost's JSON model format holds tree ensembles only (gbdt jobs)",
            };
        }
        _ => {}
    }
    let family = match job.spec.model {
        ModelSpec::TorchScript(_) => "custom TorchScript",
        _ => "recommendation",
    };
    ExportError::Unsupported {
        format: format.name(),
        family: format!("{family} ({})", job.spec.model.label()),
    }
}

/// The catalogue as `item_id,row` CSV (ids quoted where they need it).
fn items_csv(items: &[String]) -> Result<Vec<u8>, ExportError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| ExportError::Inconsistent(format!("catalogue: {e}"));
    out.write_record(["item_id", "row"]).map_err(failed)?;
    for (row, id) in items.iter().enumerate() {
        out.write_record([id.as_str(), &row.to_string()]).map_err(failed)?;
    }
    out.into_inner()
        .map_err(|e| ExportError::Inconsistent(format!("catalogue: {e}")))
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename.
fn write_file(
    dir: &Path,
    name: &str,
    kind: &str,
    bytes: &[u8],
) -> Result<ExportedFile, ExportError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| ExportError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(ExportedFile {
        name: name.into(),
        kind: kind.into(),
        sha256: confide_core::sha256_hex(bytes),
        bytes: bytes.len() as u64,
    })
}
