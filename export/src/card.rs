//! The model card: what was trained, on which data, by how many institutions, how well, under
//! which privacy settings, and the hashes of the exported files — as JSON ([`ModelCard`]) and as
//! markdown ([`ModelCard::to_markdown`]).
//!
//! For logistic regression the card carries a scorecard-friendly coefficient table: per encoded
//! feature the coefficient and odds ratio, and for numeric features the coefficient on the raw
//! (unstandardised) scale, with the matching raw-scale intercept.
//!
//! For a gradient-boosted tree ensemble a [`TreeCard`] gives the number of trees, their depth
//! and leaves, the base score, and every feature's importance by gain and by cover (summed over
//! its splits, as XGBoost's `total_gain` and `total_cover`).
//!
//! For a recommendation model the card's target is the rating column and its range, and a
//! [`RecommendationCard`] describes the catalogue, the embedding width, the towers and how the
//! model was evaluated (the per-round RMSE / HR@k / NDCG@k are in the rounds table).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use confide_core::job::JobSpec;
use confide_core::model::ModelSpec;
use confide_datasets::{ColumnTransform, ColumnType, MissingPolicy};
use confide_gbdt::{FeatureImportance, GbdtModel};
use serde::{Deserialize, Serialize};

use crate::onnx::GraphSignature;
use crate::{ExportedFile, JobExport, JobInfo, RoundReport};

/// Version of the card's JSON layout.
pub const CARD_VERSION: u32 = 1;

/// The model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// [`CARD_VERSION`].
    pub card_version: u32,
    /// The job's record.
    pub job: JobInfo,
    /// The job file as validated by the coordinator.
    pub job_spec: JobSpec,
    /// Model family and size.
    pub model: ModelSummary,
    /// Dataset schema and the federated preprocessing.
    pub data: DataSummary,
    /// Rounds and participating institutions.
    pub training: TrainingSummary,
    /// Privacy settings the job ran under.
    pub privacy: PrivacySummary,
    /// Recommendation models only: catalogue, embeddings, towers and evaluation settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<RecommendationCard>,
    /// Gradient-boosted trees only: trees, depth and feature importance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<TreeCard>,
    /// Logistic regression only: the coefficient table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coefficients: Option<CoefficientTable>,
    /// The ONNX graph's inputs and outputs (when ONNX was exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_signature: Option<serde_json::Value>,
    /// Every exported file except the card itself, with its SHA-256.
    pub files: Vec<ExportedFile>,
}

/// Model family and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Family and shape hyper-parameters.
    pub spec: ModelSpec,
    /// Short label (`mlp[32,16]`).
    pub label: String,
    /// Width of the encoded input.
    pub input_dim: usize,
    /// Trainable scalars.
    pub parameters: usize,
    /// Names of the encoded inputs, in order (`tenure`, `Contract=One year`, ...).
    pub encoded_features: Vec<String>,
}

/// The data the model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Schema name (the dataset).
    pub dataset: String,
    /// Schema fingerprint every institution's data matched.
    pub schema_fingerprint: String,
    /// Target column: the binary target, or a ratings schema's rating column.
    pub target: String,
    /// Target value meaning positive (probability refers to it); none for ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_class: Option<String>,
    /// Ratings schemas: the valid rating range `[min, max]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_range: Option<[f64; 2]>,
    /// Training rows across the federation (from the securely summed statistics).
    pub federation_rows: u64,
    /// Every column of the schema.
    pub columns: Vec<ColumnCard>,
}

/// One schema column and its preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnCard {
    /// Column name.
    pub name: String,
    /// `numeric`, `categorical`, `id`, `timestamp`, `ignored`.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Missing-cell policy (feature columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<MissingPolicy>,
    /// Federated mean (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Federated population standard deviation (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Agreed levels (categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<String>>,
    /// Federated most frequent level (categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// What a recommendation model is and how it was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationCard {
    /// Items in the shared catalogue (rows of `item_embedding`; `items.csv` maps ids to rows).
    pub catalogue_items: usize,
    /// Embedding width of users and items.
    pub embedding_dim: usize,
    /// Tower layer widths, input side first (empty for matrix factorisation: identity towers).
    pub tower_layers: Vec<usize>,
    /// How a pair is scored.
    pub scoring: String,
    /// `explicit` (ratings, squared error) or `implicit` (interactions, sampled negatives).
    pub feedback: String,
    /// Users across the federation; their embeddings stayed at their banks.
    pub federation_users: u64,
    /// Federated mean rating (where the global bias started).
    pub mean_rating: f64,
    /// Held-out ratings at or above this were relevant for HR@k / NDCG@k.
    pub relevant_from: f64,
    /// Cut-off k of HR@k and NDCG@k.
    pub top_k: usize,
    /// Sampled unrated items each relevant held-out item was ranked against.
    pub ranking_negatives: usize,
}

/// What a tree ensemble is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeCard {
    /// Trees in the ensemble (one per round).
    pub trees: usize,
    /// Depth of the deepest tree (a lone leaf has depth 0).
    pub max_depth: u32,
    /// Mean depth over the trees.
    pub mean_depth: f64,
    /// Leaves over all trees.
    pub leaves: usize,
    /// Splits over all trees.
    pub splits: usize,
    /// Margin before any tree.
    pub base_margin: f32,
    /// `sigmoid(base_margin)`: XGBoost's `base_score`.
    pub base_score: f64,
    /// Features the trees may split on (numeric columns, then one indicator per level).
    pub features: usize,
    /// Per feature with at least one split, most total gain first.
    pub importance: Vec<FeatureImportance>,
}

impl TreeCard {
    /// The card section of `model`.
    pub fn of(model: &GbdtModel) -> Self {
        let depths: Vec<u32> = model.trees.iter().map(confide_gbdt::Tree::depth).collect();
        let nodes = model.trees.iter().flat_map(|t| &t.nodes);
        let splits = model.trees.iter().flat_map(|t| &t.nodes).filter(|n| matches!(n, confide_gbdt::Node::Split { .. })).count();
        TreeCard {
            trees: model.trees.len(),
            max_depth: depths.iter().copied().max().unwrap_or(0),
            mean_depth: if depths.is_empty() { 0.0 } else { depths.iter().map(|&d| f64::from(d)).sum::<f64>() / depths.len() as f64 },
            leaves: nodes.count() - splits,
            splits,
            base_margin: model.base_margin,
            base_score: 1.0 / (1.0 + (-f64::from(model.base_margin)).exp()),
            features: model.features.len(),
            importance: model.importance(),
        }
    }
}

/// Rounds and institutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Rounds completed.
    pub rounds_completed: u64,
    /// Round budget in the job file.
    pub rounds_budget: u64,
    /// Institutions that contributed to at least one round.
    pub institutions: Vec<String>,
    /// Per round: contributing institutions and federated metrics.
    pub rounds: Vec<RoundCard>,
    /// The exported model's federated metrics (its round's; the last round's by default).
    pub final_metrics: BTreeMap<String, f64>,
}

/// One round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundCard {
    /// 1-based round.
    pub round: u64,
    /// Institutions whose contribution is in the aggregate.
    pub institutions_contributed: usize,
    /// Selected institutions that did not contribute (dropped, failed, refused).
    pub institutions_missing: usize,
    /// Securely aggregated metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds.
    pub duration_secs: f64,
}

/// Privacy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySummary {
    /// Contributions summed with secure aggregation (false: insecure plain sums, debugging).
    pub secure_aggregation: bool,
    /// Bits of the ring masked values live in.
    pub modulus_bits: u32,
    /// Shamir threshold as a fraction of participants (always at least a majority).
    pub threshold_fraction: f64,
    /// Largest per-parameter update a contribution encodes (larger ones are clipped).
    pub update_clip: f64,
    /// SecAgg+ neighbours per participant (0 = complete graph).
    pub secagg_plus_neighbours: u32,
    /// Fewest institutions a round accepts.
    pub min_institutions_per_round: usize,
    /// Differential privacy, in one line ("not applied" without it).
    pub differential_privacy: String,
    /// Differential privacy's parameters and each bank's own spend, when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpCard>,
}

/// A DP job's guarantee as planned, and what each bank reported spending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpCard {
    /// `record` (DP-SGD in each bank) or `institution` (distributed discrete Gaussian noise
    /// under secure aggregation).
    pub mode: String,
    /// The planned ε: record mode at a bank of `planned_rows` training rows (statistics
    /// included), institution mode for one institution's whole participation.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// How ε was computed.
    pub accountant: String,
    /// σ: noise standard deviation over C.
    pub noise_multiplier: f64,
    /// C: per-row gradient bound (record) or per-bank update bound (institution).
    pub clip_norm: f64,
    /// Rounds planned.
    pub rounds: u64,
    /// Record mode: the training rows the planned ε is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_rows: Option<u64>,
    /// Institution mode: participants per round whose noise may be missing (dropped out or
    /// colluding) — the assumption under which the sum carries the planned noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout_allowance: Option<u32>,
    /// σ of the statistics' Gaussian noise.
    pub statistics_noise_multiplier: f64,
    /// σ of the evaluations' Gaussian noise.
    pub evaluation_noise_multiplier: f64,
    /// ε the evaluations spend on a bank's test rows (record level, parallel to training).
    pub evaluation_epsilon: f64,
    /// Each bank's record-level ε for this job, as the bank itself computed and reported it
    /// with its last upload (its budget ledger has the details).
    pub bank_spend: Vec<BankSpend>,
}

/// One bank's reported spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankSpend {
    /// Institution id.
    pub institution: String,
    /// Its ε at the job's δ (record level, both splits: the larger).
    pub epsilon: f64,
}

/// The DP card of `job`, or None when the job is not differentially private.
fn dp_card(job: &JobExport) -> Option<DpCard> {
    let dp = confide_core::spend::DpJob::of(&job.spec)?;
    let plan = confide_core::spend::plan_for(&dp).ok()?;
    let p = &dp.privacy;
    let institution = p.mode == confide_core::job::PrivacyMode::Institution;
    Some(DpCard {
        mode: p.mode.name().into(),
        epsilon: plan.epsilon,
        delta: plan.delta,
        accountant: "Rényi DP (subsampled Gaussian for DP-SGD, zCDP for the Gaussian and distributed discrete Gaussian \
                     mechanisms), composed over steps and rounds, converted to (ε, δ) as in dp-accounting"
            .into(),
        noise_multiplier: plan.noise_multiplier,
        clip_norm: plan.clip_norm,
        rounds: dp.rounds,
        planned_rows: p.planned_rows.filter(|_| !institution),
        dropout_allowance: institution.then_some(p.dropout_allowance),
        statistics_noise_multiplier: p.statistics_noise_multiplier,
        evaluation_noise_multiplier: p.evaluation_noise_multiplier,
        evaluation_epsilon: plan.evaluation_epsilon,
        bank_spend: job
            .job
            .audit_heads
            .iter()
            .filter_map(|h| h.dp_epsilon.map(|epsilon| BankSpend { institution: h.institution.clone(), epsilon }))
            .collect(),
    })
}

/// The logistic-regression coefficient table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoefficientTable {
    /// Intercept on the standardised scale (the model's bias).
    pub intercept: f64,
    /// Intercept when numeric features are fed raw: `b − Σ coef·mean/std`.
    pub intercept_raw_scale: f64,
    /// One row per encoded feature.
    pub rows: Vec<CoefficientRow>,
}

/// One encoded feature's coefficient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoefficientRow {
    /// Encoded feature (`tenure`, `Contract=Two year`).
    pub feature: String,
    /// Coefficient on the standardised scale (log-odds per standard deviation, or for a level,
    /// log-odds of that level being present).
    pub coefficient: f64,
    /// `exp(coefficient)`.
    pub odds_ratio: f64,
    /// Numeric features: log-odds per raw unit, `coefficient / std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coefficient_raw_scale: Option<f64>,
    /// Numeric features: `exp(coefficient_raw_scale)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odds_ratio_raw_scale: Option<f64>,
}

impl ModelCard {
    /// Builds the card of an export that wrote `files`.
    pub fn new(job: &JobExport, files: &[ExportedFile], signature: Option<GraphSignature>) -> Self {
        let prep = &job.preprocessing;
        let dp = dp_card(job);
        let transform = |name: &str| prep.columns.iter().find(|c| c.name() == name);
        let columns = job
            .schema
            .columns
            .iter()
            .map(|c| {
                let mut card = ColumnCard {
                    name: c.name.clone(),
                    kind: c.kind,
                    missing: c.is_feature().then(|| job.schema.policy_for(c)),
                    mean: None,
                    std: None,
                    levels: None,
                    mode: None,
                };
                match transform(&c.name) {
                    Some(ColumnTransform::Numeric { mean, std, .. }) => {
                        (card.mean, card.std) = (Some(*mean), Some(*std));
                    }
                    Some(ColumnTransform::Categorical { levels, mode, .. }) => {
                        card.mode = levels.get(*mode as usize).cloned();
                        card.levels = Some(levels.clone());
                    }
                    None => {}
                }
                card
            })
            .collect();
        let secure = &job.spec.secure_aggregation;
        let trees = job.trees.as_ref().map(TreeCard::of);
        let (input_dim, parameters, encoded_features) = match &job.trees {
            // A tree's scalars are its thresholds and leaf values: one per node.
            Some(m) => (
                m.features.len(),
                m.trees.iter().map(|t| t.nodes.len()).sum(),
                m.features.features.iter().map(|f| f.name.clone()).collect(),
            ),
            None => (prep.input_dim(), job.params.values.len(), prep.feature_names()),
        };
        ModelCard {
            card_version: CARD_VERSION,
            job: job.job.clone(),
            job_spec: job.spec.clone(),
            model: ModelSummary {
                spec: job.spec.model.clone(),
                label: job.spec.model.label(),
                input_dim,
                parameters,
                encoded_features,
            },
            data: DataSummary {
                dataset: job.schema.name.clone(),
                schema_fingerprint: job.schema.fingerprint(),
                target: match (&job.schema.target, &job.schema.recommendation) {
                    (Some(t), _) => t.column.clone(),
                    (None, Some(r)) => r.rating.clone(),
                    (None, None) => String::new(),
                },
                positive_class: job.schema.target.as_ref().map(|t| t.positive.clone()),
                rating_range: job.schema.recommendation.as_ref().map(|r| [r.min_rating, r.max_rating]),
                federation_rows: prep.rows,
                columns,
            },
            training: training_summary(&job.rounds, job.spec.training.rounds, job.job.model_round),
            privacy: PrivacySummary {
                secure_aggregation: !job.spec.insecure_plain_aggregation,
                modulus_bits: secure.modulus_bits,
                threshold_fraction: secure.threshold_fraction,
                update_clip: secure.update_clip,
                secagg_plus_neighbours: secure.sparse_neighbours,
                min_institutions_per_round: job.spec.selection.min_workers,
                differential_privacy: match &dp {
                    None => "not applied".into(),
                    Some(d) if d.mode == "record" => format!(
                        "record-level DP-SGD in every bank: ε = {:.3}, δ = {:.1e} at a bank of {} training rows",
                        d.epsilon,
                        d.delta,
                        d.planned_rows.map_or("the planned".to_string(), |r| r.to_string())
                    ),
                    Some(d) => format!(
                        "institution-level distributed discrete Gaussian under secure aggregation: ε = {:.3}, δ = {:.1e} per institution",
                        d.epsilon, d.delta
                    ),
                },
                dp,
            },
            recommendation: recommendation_card(job),
            trees,
            coefficients: coefficient_table(job),
            onnx_signature: signature.and_then(|s| serde_json::to_value(s).ok()),
            files: files.to_vec(),
        }
    }

    /// The card as markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        // `write!` into a String cannot fail.
        let _ = self.write_markdown(&mut md);
        md
    }

    fn write_markdown(&self, md: &mut String) -> std::fmt::Result {
        let j = &self.job;
        writeln!(md, "# Model card: {}\n", j.name)?;
        writeln!(md, "| | |\n|---|---|")?;
        writeln!(md, "| job | `{}` ({}) |", j.id, j.status)?;
        match &self.trees {
            Some(t) => writeln!(md, "| model | {} — {} trees over {} features |", self.model.label, t.trees, t.features)?,
            None => writeln!(
                md,
                "| model | {} — {} inputs, {} parameters |",
                self.model.label, self.model.input_dim, self.model.parameters
            )?,
        }
        writeln!(
            md,
            "| dataset | `{}` (schema `{}`) |",
            self.data.dataset,
            short(&self.data.schema_fingerprint)
        )?;
        match (&self.data.positive_class, self.data.rating_range) {
            (Some(positive), _) => writeln!(
                md,
                "| target | `{}` = `{positive}` (the probability output) |",
                self.data.target
            )?,
            (None, Some([lo, hi])) => writeln!(
                md,
                "| target | rating `{}` in [{lo}, {hi}] (the score output) |",
                self.data.target
            )?,
            (None, None) => writeln!(md, "| target | `{}` |", self.data.target)?,
        }
        writeln!(
            md,
            "| rounds | {} of {} |",
            self.training.rounds_completed, self.training.rounds_budget
        )?;
        writeln!(
            md,
            "| institutions | {} distinct: {} |",
            self.training.institutions.len(),
            self.training.institutions.join(", ")
        )?;
        writeln!(md, "| federation rows | {} |", self.data.federation_rows)?;
        writeln!(
            md,
            "| submitted / finished | {} / {} |",
            j.created_at, j.updated_at
        )?;
        if let Some(reason) = &j.stop_reason {
            writeln!(md, "| stopped early | {reason} |")?;
        }
        writeln!(md, "| model checkpoint | `{}` |", j.model_hash)?;
        if let Some(round) = j.model_round {
            let best = if Some(round) == self.training.rounds.last().map(|r| r.round) { "" } else { " (the best round by the early-stopping metric)" };
            writeln!(md, "| model from round | {round}{best} |")?;
        }

        writeln!(md, "\n## Final federated metrics\n")?;
        writeln!(md, "| metric | value |\n|---|---|")?;
        for (k, v) in &self.training.final_metrics {
            writeln!(md, "| {k} | {v:.4} |")?;
        }

        writeln!(md, "\n## Rounds\n")?;
        let keys: BTreeSet<&String> = self
            .training
            .rounds
            .iter()
            .flat_map(|r| r.metrics.keys())
            .collect();
        write!(md, "| round | institutions | missing | seconds |")?;
        for k in &keys {
            write!(md, " {k} |")?;
        }
        write!(md, "\n|---|---|---|---|")?;
        for _ in &keys {
            write!(md, "---|")?;
        }
        writeln!(md)?;
        for r in &self.training.rounds {
            write!(
                md,
                "| {} | {} | {} | {:.2} |",
                r.round, r.institutions_contributed, r.institutions_missing, r.duration_secs
            )?;
            for k in &keys {
                match r.metrics.get(*k) {
                    Some(v) => write!(md, " {v:.4} |")?,
                    None => write!(md, " |")?,
                }
            }
            writeln!(md)?;
        }

        let p = &self.privacy;
        writeln!(md, "\n## Privacy\n")?;
        writeln!(
            md,
            "- secure aggregation: {}",
            if p.secure_aggregation {
                "on"
            } else {
                "**off** (insecure plain sums)"
            }
        )?;
        writeln!(
            md,
            "- ring modulus: 2^{}; Shamir threshold fraction {} (always a majority)",
            p.modulus_bits, p.threshold_fraction
        )?;
        writeln!(md, "- update clip: {} per parameter", p.update_clip)?;
        let graph = if p.secagg_plus_neighbours == 0 {
            "complete graph".to_string()
        } else {
            format!("SecAgg+ with {} neighbours", p.secagg_plus_neighbours)
        };
        writeln!(
            md,
            "- masking graph: {graph}; at least {} institutions per round",
            p.min_institutions_per_round
        )?;
        writeln!(md, "- differential privacy: {}", p.differential_privacy)?;
        if let Some(d) = &p.dp {
            writeln!(md, "  - mode: {}; accountant: {}", d.mode, d.accountant)?;
            writeln!(md, "  - σ = {:.4}, C = {}, {} rounds", d.noise_multiplier, d.clip_norm, d.rounds)?;
            if let Some(a) = d.dropout_allowance {
                writeln!(
                    md,
                    "  - assumption: in every round at most {a} participant(s)' noise is missing from the sum (dropped out or colluding with the coordinator); each bank adds its share for the rest"
                )?;
            }
            writeln!(
                md,
                "  - statistics noise σ = {}, evaluation noise σ = {} (evaluations spend ε = {:.3} on each bank's test rows)",
                d.statistics_noise_multiplier, d.evaluation_noise_multiplier, d.evaluation_epsilon
            )?;
            if d.bank_spend.is_empty() {
                writeln!(md, "  - no bank reported its spend")?;
            }
            for b in &d.bank_spend {
                writeln!(md, "  - {} spent ε = {:.3} (its own accountant; `confide-worker budget show`)", b.institution, b.epsilon)?;
            }
        }

        if !j.audit_heads.is_empty() {
            writeln!(md, "\n## Audit heads\n")?;
            writeln!(
                md,
                "Each bank's own signed audit log records everything it sent; its last record \
                 for this job must hash to the head below (`confide-worker audit verify --job {}`).\n",
                j.id
            )?;
            writeln!(md, "| institution | last round | audit head |\n|---|---|---|")?;
            for h in &j.audit_heads {
                writeln!(md, "| {} | {} | `{}` |", h.institution, h.round, h.head)?;
            }
        }

        writeln!(md, "\n## Data schema\n")?;
        writeln!(
            md,
            "| column | type | missing | preprocessing |\n|---|---|---|---|"
        )?;
        for c in &self.data.columns {
            let kind = serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let missing = c
                .missing
                .and_then(|m| serde_json::to_value(m).ok())
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let prep = match (c.mean, c.std, &c.levels, &c.mode) {
                // Trees read raw values; missing cells take each split's default direction.
                (Some(_), Some(_), _, _) if self.trees.is_some() => "raw value (NaN = missing)".into(),
                (_, _, Some(levels), Some(_)) if self.trees.is_some() => {
                    format!("one indicator per level of {levels:?} (NaN when missing)")
                }
                (Some(m), Some(s), _, _) => format!("(x − {m:.6}) / {s:.6}"),
                (_, _, Some(levels), Some(mode)) => {
                    format!("one-hot over {levels:?}; mode `{mode}`")
                }
                _ => "not used".into(),
            };
            writeln!(md, "| `{}` | {kind} | {missing} | {prep} |", c.name)?;
        }

        if let Some(r) = &self.recommendation {
            writeln!(md, "\n## Recommendation model\n")?;
            writeln!(md, "| | |\n|---|---|")?;
            writeln!(md, "| catalogue | {} items (`items.csv`: item id → row) |", r.catalogue_items)?;
            writeln!(md, "| embedding width | {} |", r.embedding_dim)?;
            let towers = if r.tower_layers.is_empty() {
                "none (matrix factorisation)".to_string()
            } else {
                format!("{:?} per tower, ReLU between layers", r.tower_layers)
            };
            writeln!(md, "| towers | {towers} |")?;
            writeln!(md, "| scoring | {} |", r.scoring)?;
            writeln!(md, "| feedback | {} |", r.feedback)?;
            writeln!(md, "| users | {} across the federation; their embeddings never left their banks |", r.federation_users)?;
            writeln!(md, "| mean rating | {:.4} |", r.mean_rating)?;
            writeln!(
                md,
                "| ranking evaluation | HR@{k} / NDCG@{k}: each held-out rating ≥ {} ranked against {} sampled unrated items |",
                r.relevant_from,
                r.ranking_negatives,
                k = r.top_k
            )?;
        }

        if let Some(t) = &self.trees {
            writeln!(md, "\n## Trees\n")?;
            writeln!(md, "| | |\n|---|---|")?;
            writeln!(md, "| trees | {} |", t.trees)?;
            writeln!(md, "| depth | deepest {}, mean {:.2} |", t.max_depth, t.mean_depth)?;
            writeln!(md, "| leaves / splits | {} / {} |", t.leaves, t.splits)?;
            writeln!(md, "| base score | {:.6} (margin {}) |", t.base_score, t.base_margin)?;
            writeln!(md, "| features | {} (numeric raw values, then one indicator per categorical level) |", t.features)?;
            writeln!(md, "\n### Feature importance\n")?;
            writeln!(md, "Summed over each feature's splits: gain is the loss reduction, cover the hessian of the rows split (XGBoost's `total_gain`, `total_cover`).\n")?;
            writeln!(md, "| feature | total gain | gain share | total cover | splits | mean gain | mean cover |\n|---|---|---|---|---|---|---|")?;
            let all_gain: f64 = t.importance.iter().map(|f| f.total_gain).sum();
            for f in &t.importance {
                let share = if all_gain > 0.0 { f.total_gain / all_gain } else { 0.0 };
                let per = |v: f64| v / f.splits.max(1) as f64;
                writeln!(
                    md,
                    "| `{}` | {:.4} | {:.1}% | {:.4} | {} | {:.4} | {:.4} |",
                    f.feature,
                    f.total_gain,
                    100.0 * share,
                    f.total_cover,
                    f.splits,
                    per(f.total_gain),
                    per(f.total_cover)
                )?;
            }
        }

        if let Some(t) = &self.coefficients {
            writeln!(md, "\n## Coefficients (logistic regression)\n")?;
            writeln!(
                md,
                "Standardised scale: log-odds per standard deviation (numeric) or for the level being present (one-hot). Raw scale: per unit of the raw column.\n"
            )?;
            writeln!(
                md,
                "| feature | coefficient | odds ratio | coefficient (raw scale) | odds ratio (raw scale) |\n|---|---|---|---|---|"
            )?;
            writeln!(
                md,
                "| (intercept) | {:.6} | | {:.6} | |",
                t.intercept, t.intercept_raw_scale
            )?;
            for r in &t.rows {
                let raw = r
                    .coefficient_raw_scale
                    .map(|v| format!("{v:.6}"))
                    .unwrap_or_default();
                let raw_or = r
                    .odds_ratio_raw_scale
                    .map(|v| format!("{v:.6}"))
                    .unwrap_or_default();
                writeln!(
                    md,
                    "| `{}` | {:.6} | {:.6} | {raw} | {raw_or} |",
                    r.feature, r.coefficient, r.odds_ratio
                )?;
            }
        }

        if let Some(sig) = &self.onnx_signature {
            writeln!(md, "\n## Serving (model.onnx)\n")?;
            if self.recommendation.is_some() {
                writeln!(
                    md,
                    "The bank feeds its own user side (its worker's `user_state/<job>/round-<R>.safetensors`) with catalogue rows from `items.csv`; outputs `score`, float [N] (unclamped), and its factors `user_vector`, `item_vector`, float [N, k].\n"
                )?;
                writeln!(md, "| input | type | what |\n|---|---|---|")?;
            } else {
                writeln!(
                    md,
                    "One input per feature column, shape [N,1]; outputs `probability` and `logit`, float [N].\n"
                )?;
                writeln!(md, "| input | type | missing |\n|---|---|---|")?;
            }
            for input in sig
                .get("inputs")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let field = |k: &str| {
                    input
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                writeln!(
                    md,
                    "| `{}` | {} | {} |",
                    field("name"),
                    field("dtype"),
                    field("missing")
                )?;
            }
        }

        writeln!(md, "\n## Files\n")?;
        writeln!(md, "| file | bytes | sha256 |\n|---|---|---|")?;
        for f in &self.files {
            writeln!(md, "| `{}` | {} | `{}` |", f.name, f.bytes, f.sha256)?;
        }
        Ok(())
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

fn training_summary(rounds: &[RoundReport], budget: u64, model_round: Option<u64>) -> TrainingSummary {
    let contributed = |r: &RoundReport| {
        r.participants
            .iter()
            .filter(|p| p.status.contributed())
            .map(|p| p.institution.clone())
            .collect::<Vec<_>>()
    };
    let institutions: BTreeSet<String> = rounds.iter().flat_map(contributed).collect();
    TrainingSummary {
        rounds_completed: rounds.len() as u64,
        rounds_budget: budget,
        institutions: institutions.into_iter().collect(),
        rounds: rounds
            .iter()
            .map(|r| {
                let n = contributed(r).len();
                RoundCard {
                    round: r.round,
                    institutions_contributed: n,
                    institutions_missing: r.participants.len() - n,
                    metrics: r.metrics.clone(),
                    duration_secs: r.duration_secs,
                }
            })
            .collect(),
        // The exported model's round (the best one when early stopping restored it).
        final_metrics: model_round
            .and_then(|m| rounds.iter().find(|r| r.round == m))
            .or(rounds.last())
            .map(|r| r.metrics.clone())
            .unwrap_or_default(),
    }
}

/// The recommendation section (None for tabular models).
fn recommendation_card(job: &JobExport) -> Option<RecommendationCard> {
    let rec = job.preprocessing.recommendation.as_ref()?;
    let spec = &job.spec.model;
    let scoring = if spec.hidden().is_empty() {
        "μ + b_u + b_i + p_u·q_i"
    } else {
        "μ + b_u + b_i + f(p_u)·g(q_i), f and g the user and item towers"
    };
    Some(RecommendationCard {
        catalogue_items: rec.items.len(),
        embedding_dim: spec.embedding_dim()?,
        tower_layers: spec.hidden().to_vec(),
        scoring: scoring.into(),
        feedback: serde_json::to_value(rec.feedback)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        federation_users: rec.users,
        mean_rating: rec.mean_rating,
        relevant_from: rec.relevant_from,
        top_k: rec.top_k,
        ranking_negatives: rec.ranking_negatives,
    })
}

/// The coefficient table of a logistic regression (None for other families).
fn coefficient_table(job: &JobExport) -> Option<CoefficientTable> {
    if job.spec.model != ModelSpec::LogisticRegression {
        return None;
    }
    let weights = job.params.tensor("fc0.weight")?;
    let bias = f64::from(*job.params.tensor("fc0.bias")?.first()?);
    let mut rows = Vec::with_capacity(weights.len());
    let mut intercept_raw = bias;
    let mut w = weights.iter().map(|&v| f64::from(v));
    for column in &job.preprocessing.columns {
        match column {
            ColumnTransform::Numeric {
                name, mean, std, ..
            } => {
                let coefficient = w.next()?;
                let raw = coefficient / std;
                intercept_raw -= raw * mean;
                rows.push(CoefficientRow {
                    feature: name.clone(),
                    coefficient,
                    odds_ratio: coefficient.exp(),
                    coefficient_raw_scale: Some(raw),
                    odds_ratio_raw_scale: Some(raw.exp()),
                });
            }
            ColumnTransform::Categorical { name, levels, .. } => {
                for level in levels {
                    let coefficient = w.next()?;
                    rows.push(CoefficientRow {
                        feature: format!("{name}={level}"),
                        coefficient,
                        odds_ratio: coefficient.exp(),
                        coefficient_raw_scale: None,
                        odds_ratio_raw_scale: None,
                    });
                }
            }
        }
    }
    Some(CoefficientTable {
        intercept: bias,
        intercept_raw_scale: intercept_raw,
        rows,
    })
}
