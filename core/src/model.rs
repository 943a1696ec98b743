//! Model families, their parameter layouts, and the checkpoint format.
//!
//! A model's parameters travel and rest as one flat `f32` vector in layout order; on disk and on
//! the wire they are a safetensors file whose tensor names match the worker's libtorch variable
//! names (`fc0.weight`, `fc0.bias`, ...). The coordinator initialises, aggregates and exports
//! models through this module alone, so it never needs libtorch.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A model family and its shape hyper-parameters, as named in a job file's `[model]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// One linear layer and a sigmoid: `fc0: input -> 1`.
    LogisticRegression,
    /// Fully connected layers with ReLU: `fc0: input -> hidden[0]`, ..., `fcK: hidden[K-1] -> 1`.
    Mlp {
        /// Width of each hidden layer, input side first.
        hidden: Vec<usize>,
    },
    /// A TorchScript module scripted by the job's owner; see [`TorchScriptSpec`].
    #[serde(rename = "torchscript")]
    TorchScript(TorchScriptSpec),
    /// Biased matrix factorisation: `r̂(u, i) = μ + b_u + b_i + p_u·q_i`. The federated layout
    /// holds the item side and μ; `p_u` and `b_u` stay at the institution holding user `u`.
    MatrixFactorization {
        /// Embedding width of users and items.
        dim: usize,
    },
    /// Two-tower model: `r̂(u, i) = μ + b_u + b_i + f(p_u)·g(q_i)`, where `f` (user tower) and
    /// `g` (item tower) are shared MLPs with ReLU between layers. Towers, item embeddings and
    /// biases are federated; user embeddings and biases stay at the institution.
    TwoTower {
        /// Embedding width of users and items (the towers' input width).
        dim: usize,
        /// Width of each tower layer, input side first; the last is the scoring space.
        hidden: Vec<usize>,
    },
    /// Gradient-boosted decision trees (binary logistic objective), grown level by level from
    /// securely summed gradient histograms; see [`GbdtSpec`]. One tree per round: the job's
    /// `[training] rounds` is the number of trees and `learning_rate` the shrinkage (XGBoost's
    /// `eta`). Its checkpoint is a tree ensemble (`confide-gbdt`), not a parameter vector.
    Gbdt(GbdtSpec),
}

/// Tree-growing hyper-parameters of a `gbdt` model, named as XGBoost names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbdtSpec {
    /// Deepest level a split may sit on: a tree has at most `2^max_depth` leaves (1..=12).
    #[serde(default = "gbdt_defaults::max_depth")]
    pub max_depth: u32,
    /// L2 penalty on leaf weights (XGBoost's `lambda`, ≥ 0).
    #[serde(default = "gbdt_defaults::lambda")]
    pub lambda: f64,
    /// Smallest loss reduction a split must bring (XGBoost's `gamma`, ≥ 0).
    #[serde(default)]
    pub gamma: f64,
    /// Smallest hessian sum a child may have (XGBoost's `min_child_weight`, ≥ 0).
    #[serde(default = "gbdt_defaults::min_child_weight")]
    pub min_child_weight: f64,
    /// Fraction of its training rows each bank samples per tree (0 < subsample ≤ 1).
    #[serde(default = "gbdt_defaults::one")]
    pub subsample: f64,
    /// Fraction of the features each tree may split on, drawn from the job's seed (0 < · ≤ 1).
    #[serde(default = "gbdt_defaults::one")]
    pub colsample_bytree: f64,
    /// Most bins per numeric feature (2..=1024); cut points are quantiles of the federation's
    /// securely summed fine histograms.
    #[serde(default = "gbdt_defaults::max_bin")]
    pub max_bin: u32,
    /// Fewest rows, summed over banks, a leaf may describe: a split whose child would hold fewer
    /// is not made, so no leaf describes a handful of customers (≥ 1).
    #[serde(default = "gbdt_defaults::min_leaf_rows")]
    pub min_leaf_rows: u64,
}

// f64 fields: equality is only used to compare validated (finite) specs.
impl Eq for GbdtSpec {}

impl Default for GbdtSpec {
    fn default() -> Self {
        Self {
            max_depth: gbdt_defaults::max_depth(),
            lambda: gbdt_defaults::lambda(),
            gamma: 0.0,
            min_child_weight: gbdt_defaults::min_child_weight(),
            subsample: 1.0,
            colsample_bytree: 1.0,
            max_bin: gbdt_defaults::max_bin(),
            min_leaf_rows: gbdt_defaults::min_leaf_rows(),
        }
    }
}

mod gbdt_defaults {
    pub fn max_depth() -> u32 {
        6
    }
    pub fn lambda() -> f64 {
        1.0
    }
    pub fn min_child_weight() -> f64 {
        1.0
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn max_bin() -> u32 {
        256
    }
    pub fn min_leaf_rows() -> u64 {
        50
    }
}

/// Tensor names of the recommendation models' shared (federated) item side.
pub mod rec_names {
    /// Item embeddings `[items, dim]`.
    pub const ITEM_EMBEDDING: &str = "item_embedding";
    /// Item biases `[items]`.
    pub const ITEM_BIAS: &str = "item_bias";
    /// Global bias μ `[1]`.
    pub const GLOBAL_BIAS: &str = "global_bias";
    /// Local-only user embeddings `[users, dim]` (never in a federated layout).
    pub const USER_EMBEDDING: &str = "user_embedding";
    /// Local-only user biases `[users]` (never in a federated layout).
    pub const USER_BIAS: &str = "user_bias";
    /// Prefix of the user tower's layers (`user_tower.fc0.weight`, ...).
    pub const USER_TOWER: &str = "user_tower";
    /// Prefix of the item tower's layers.
    pub const ITEM_TOWER: &str = "item_tower";
}

/// A custom model: a module scripted in Python (`torch.jit.script(...).save(...)`) whose
/// parameters are trained federatedly. Its `forward(x: [N, input_dim]) -> [N]` (or `[N, 1]`)
/// returns one logit per row.
///
/// In a job file only `module` and `parameters` are written; the coordinator reads both files
/// at submission and fills in the rest, so the stored job names the module by content hash and
/// carries the parameter layout the coordinator aggregates without libtorch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptSpec {
    /// Path of the scripted module (`model.pt`), relative to the job file; read by the CLI.
    pub module: String,
    /// Path of the initial parameters (safetensors, F32, named as the module's
    /// `named_parameters()`), relative to the job file; read by the CLI.
    pub parameters: String,
    /// SHA-256 (hex) of the module. Set by the coordinator; when written in a job file it pins
    /// the module, and a submission whose file hashes otherwise is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_sha256: Option<String>,
    /// Content hash of the initial parameters as stored by the coordinator (set at submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_sha256: Option<String>,
    /// Input width the module was built for, from the parameters file's `confide.input_dim`
    /// metadata when present (set at submission); checked against the schema's encoded width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_dim: Option<usize>,
    /// The parameter layout, read from the parameters file (set at submission; a value written
    /// in a job file is replaced).
    #[serde(default, skip_serializing_if = "ParamLayout::is_empty_layout")]
    pub layout: ParamLayout,
}

/// Every model kind's name, as [`ModelSpec::kind_name`] gives it (bank policies list these).
pub const MODEL_KINDS: &[&str] = &["logistic_regression", "mlp", "matrix_factorization", "two_tower", "torchscript", "gbdt"];

impl ModelSpec {
    /// Widths of the hidden layers (empty for logistic regression).
    pub fn hidden(&self) -> &[usize] {
        match self {
            ModelSpec::LogisticRegression
            | ModelSpec::MatrixFactorization { .. }
            | ModelSpec::TorchScript(_)
            | ModelSpec::Gbdt(_) => &[],
            ModelSpec::Mlp { hidden } | ModelSpec::TwoTower { hidden, .. } => hidden,
        }
    }

    /// True for the recommendation families, whose layouts are sized by the item catalogue and
    /// whose evaluation is [`crate::metrics::RecommendationEval`].
    pub fn is_recommendation(&self) -> bool {
        matches!(self, ModelSpec::MatrixFactorization { .. } | ModelSpec::TwoTower { .. })
    }

    /// The tree hyper-parameters of a `gbdt` model (None for the parameter-vector families).
    pub fn gbdt(&self) -> Option<&GbdtSpec> {
        match self {
            ModelSpec::Gbdt(g) => Some(g),
            _ => None,
        }
    }

    /// Embedding width of a recommendation model (None for tabular models).
    pub fn embedding_dim(&self) -> Option<usize> {
        match self {
            ModelSpec::MatrixFactorization { dim } | ModelSpec::TwoTower { dim, .. } => Some(*dim),
            _ => None,
        }
    }

    /// The federated parameter layout. `input_dim` is the number of encoded features for
    /// tabular models and the number of catalogue items for recommendation models; a
    /// TorchScript model's layout is the one read from its parameters file, whatever `input_dim`.
    pub fn layout(&self, input_dim: usize) -> ParamLayout {
        if let ModelSpec::TorchScript(t) = self {
            return t.layout.clone();
        }
        if let ModelSpec::Gbdt(_) = self {
            // A tree ensemble has no parameter vector (its checkpoint is `confide-gbdt`'s JSON).
            return ParamLayout { tensors: Vec::new() };
        }
        if let Some(dim) = self.embedding_dim() {
            return self.item_side_layout(input_dim, dim);
        }
        let mut tensors = Vec::new();
        let mut fan_in = input_dim;
        let widths = self.hidden().iter().copied().chain(std::iter::once(1));
        for (i, out) in widths.enumerate() {
            tensors.push(TensorSpec { name: format!("fc{i}.weight"), shape: vec![out, fan_in] });
            tensors.push(TensorSpec { name: format!("fc{i}.bias"), shape: vec![out] });
            fan_in = out;
        }
        ParamLayout { tensors }
    }

    fn item_side_layout(&self, items: usize, dim: usize) -> ParamLayout {
        use rec_names::*;
        let mut tensors = vec![
            TensorSpec { name: ITEM_EMBEDDING.into(), shape: vec![items, dim] },
            TensorSpec { name: ITEM_BIAS.into(), shape: vec![items] },
            TensorSpec { name: GLOBAL_BIAS.into(), shape: vec![1] },
        ];
        for tower in [USER_TOWER, ITEM_TOWER] {
            let mut fan_in = dim;
            for (i, &out) in self.hidden().iter().enumerate() {
                tensors.push(TensorSpec { name: format!("{tower}.fc{i}.weight"), shape: vec![out, fan_in] });
                tensors.push(TensorSpec { name: format!("{tower}.fc{i}.bias"), shape: vec![out] });
                fan_in = out;
            }
        }
        ParamLayout { tensors }
    }

    /// The layout of the parameters an institution keeps for its `users` local users and never
    /// sends: user embeddings `[users, dim]` and user biases `[users]`. None for tabular models.
    pub fn local_user_layout(&self, users: usize) -> Option<ParamLayout> {
        let dim = self.embedding_dim()?;
        Some(ParamLayout {
            tensors: vec![
                TensorSpec { name: rec_names::USER_EMBEDDING.into(), shape: vec![users, dim] },
                TensorSpec { name: rec_names::USER_BIAS.into(), shape: vec![users] },
            ],
        })
    }

    /// The family's name as written in job files and bank policies (`logistic_regression`, `mlp`,
    /// `matrix_factorization`, `two_tower`, `torchscript`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            ModelSpec::LogisticRegression => "logistic_regression",
            ModelSpec::Mlp { .. } => "mlp",
            ModelSpec::TorchScript(_) => "torchscript",
            ModelSpec::MatrixFactorization { .. } => "matrix_factorization",
            ModelSpec::TwoTower { .. } => "two_tower",
            ModelSpec::Gbdt(_) => "gbdt",
        }
    }

    /// A short human label (`logistic_regression`, `mlp[32,16]`, `torchscript[<sha256 prefix>]`).
    pub fn label(&self) -> String {
        let widths = |h: &[usize]| h.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
        match self {
            ModelSpec::LogisticRegression => "logistic_regression".into(),
            ModelSpec::Mlp { hidden } => format!("mlp[{}]", widths(hidden)),
            ModelSpec::MatrixFactorization { dim } => format!("matrix_factorization[{dim}]"),
            ModelSpec::TwoTower { dim, hidden } => format!("two_tower[{dim};{}]", widths(hidden)),
            ModelSpec::Gbdt(g) => format!("gbdt[depth {}]", g.max_depth),
            ModelSpec::TorchScript(t) => {
                let hash = t.module_sha256.as_deref().unwrap_or("unresolved");
                format!("torchscript[{}]", hash.chars().take(12).collect::<String>())
            }
        }
    }
}

/// One named tensor of a layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name shared by the checkpoint file and the worker's variable store.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of scalars in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered list of tensors that make up a model; the flat vector concatenates them in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    /// Tensors in flat-vector order.
    pub tensors: Vec<TensorSpec>,
}

impl ParamLayout {
    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(TensorSpec::numel).sum()
    }

    /// True when the layout has no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the layout lists no tensors (serde's skip test for unresolved layouts).
    pub fn is_empty_layout(&self) -> bool {
        self.tensors.is_empty()
    }

    /// `(spec, offset)` of every tensor in the flat vector.
    pub fn offsets(&self) -> impl Iterator<Item = (&TensorSpec, usize)> {
        self.tensors.iter().scan(0usize, |off, t| {
            let start = *off;
            *off += t.numel();
            Some((t, start))
        })
    }
}

/// Errors reading or combining model parameters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The bytes are not a valid safetensors file.
    #[error("checkpoint is not a valid safetensors file: {0}")]
    Format(String),
    /// A tensor the layout needs is missing from the file.
    #[error("checkpoint lacks tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has another shape or dtype than the layout says.
    #[error("tensor `{name}` has shape {found:?} ({dtype}), expected {expected:?} (F32)")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the layout requires.
        expected: Vec<usize>,
        /// Element type in the file.
        dtype: String,
    },
    /// A flat vector does not have the layout's length.
    #[error("parameter vector has {found} values, layout needs {expected}")]
    Length {
        /// Values given.
        found: usize,
        /// Values needed.
        expected: usize,
    },
    /// A value is NaN or infinite.
    #[error("parameter {index} is not finite ({value})")]
    NotFinite {
        /// Flat index of the value.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A custom (TorchScript) model's files are unusable.
    #[error("torchscript model: {0}")]
    TorchScript(String),
}

/// Metadata key under which a custom model's parameters file records the input width.
pub const INPUT_DIM_KEY: &str = "confide.input_dim";

/// Largest scripted module accepted.
pub const MAX_MODULE_BYTES: usize = 1 << 30;

impl TorchScriptSpec {
    /// Checks a submitted module and initial-parameters file and records what the coordinator
    /// and workers need: the module's hash, the parameter layout (from the file, in the order
    /// its `confide.layout` metadata records, else natural name order) and the input width.
    /// Returns the initial parameters. Nothing here runs the module (the coordinator has no
    /// libtorch); workers check the module against the layout before training.
    pub fn resolve(&mut self, module: &[u8], parameters: &[u8]) -> Result<ModelParams, ModelError> {
        let bad = |m: String| Err(ModelError::TorchScript(m));
        if module.is_empty() {
            return bad(format!("module `{}` is empty", self.module));
        }
        if module.len() > MAX_MODULE_BYTES {
            return bad(format!("module `{}` is larger than {MAX_MODULE_BYTES} bytes", self.module));
        }
        // `torch.jit.save` writes a zip archive.
        if !module.starts_with(b"PK\x03\x04") {
            return bad(format!("module `{}` is not a TorchScript archive (torch.jit.save output)", self.module));
        }
        let hash = crate::sha256_hex(module);
        if let Some(pinned) = &self.module_sha256
            && !pinned.eq_ignore_ascii_case(&hash)
        {
            return bad(format!("module `{}` hashes to {hash}, the job file pins {pinned}", self.module));
        }
        let params = ModelParams::read_safetensors_any(parameters)
            .map_err(|e| ModelError::TorchScript(format!("parameters `{}`: {e}", self.parameters)))?;
        let in_file = safetensors::SafeTensors::deserialize(parameters)
            .map_err(|e| ModelError::Format(e.to_string()))?
            .names()
            .len();
        if params.layout.tensors.is_empty() {
            return bad(format!("parameters `{}` hold no tensors", self.parameters));
        }
        if in_file != params.layout.tensors.len() {
            return bad(format!(
                "parameters `{}`: the `{LAYOUT_ORDER_KEY}` metadata lists {} tensors, the file holds {in_file}",
                self.parameters,
                params.layout.tensors.len()
            ));
        }
        check_torchscript_names(&params.layout)?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(parameters).map_err(|e| ModelError::Format(e.to_string()))?;
        let input_dim = match header.metadata().as_ref().and_then(|m| m.get(INPUT_DIM_KEY)) {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(d) if d > 0 => Some(d),
                _ => return bad(format!("parameters `{}`: metadata `{INPUT_DIM_KEY}` = {v:?} is not a positive width", self.parameters)),
            },
        };
        self.module_sha256 = Some(hash);
        self.input_dim = input_dim;
        self.layout = params.layout.clone();
        Ok(params)
    }
}

/// The name libtorch gives a scripted module's parameter in a variable store (tch replaces the
/// dots of `named_parameters()` names: `deep.0.weight` → `deep_0_weight`).
pub fn torchscript_var_name(name: &str) -> String {
    name.replace('.', "_")
}

/// Tensor names must be `named_parameters()` names (identifiers joined by dots) that stay
/// distinct under [`torchscript_var_name`].
fn check_torchscript_names(layout: &ParamLayout) -> Result<(), ModelError> {
    let mut seen = std::collections::HashMap::new();
    for t in &layout.tensors {
        let ok = !t.name.is_empty()
            && t.name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !ok {
            return Err(ModelError::TorchScript(format!("tensor name {:?} is not a parameter name (identifiers joined by dots)", t.name)));
        }
        if let Some(other) = seen.insert(torchscript_var_name(&t.name), t.name.clone()) {
            return Err(ModelError::TorchScript(format!(
                "tensors `{other}` and `{}` collide once dots become underscores; rename one",
                t.name
            )));
        }
    }
    Ok(())
}

/// Standard deviation of initial embedding values.
pub const EMBEDDING_INIT_STD: f64 = 0.1;

/// Metadata key under which checkpoints record their tensor order.
pub const LAYOUT_ORDER_KEY: &str = "confide.layout";

/// A model's parameters: a layout and one flat vector of values in layout order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// What the values mean.
    pub layout: ParamLayout,
    /// Values, tensors concatenated in layout order.
    pub values: Vec<f32>,
}

impl ModelParams {
    /// Wraps `values`, checking the length against the layout and that every value is finite.
    pub fn new(layout: ParamLayout, values: Vec<f32>) -> Result<Self, ModelError> {
        if values.len() != layout.len() {
            return Err(ModelError::Length { found: values.len(), expected: layout.len() });
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::NotFinite { index, value });
        }
        Ok(Self { layout, values })
    }

    /// Deterministic initialisation from `seed`: Glorot-uniform weights, zero biases, and
    /// embeddings (tensors named `*embedding`) uniform with standard deviation
    /// [`EMBEDDING_INIT_STD`].
    pub fn init(layout: ParamLayout, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::with_capacity(layout.len());
        for t in &layout.tensors {
            if t.name.ends_with("embedding") {
                // Embedding rows: uniform with standard deviation EMBEDDING_INIT_STD, so that
                // dot products start small but gradients do not vanish (Glorot on
                // `[items, dim]` would shrink with the catalogue size).
                let bound = EMBEDDING_INIT_STD * 3f64.sqrt();
                values.extend((0..t.numel()).map(|_| rng.random_range(-bound..bound) as f32));
            } else if t.shape.len() == 2 {
                let (fan_out, fan_in) = (t.shape[0] as f64, t.shape[1] as f64);
                let bound = (6.0 / (fan_in + fan_out)).sqrt();
                values.extend((0..t.numel()).map(|_| rng.random_range(-bound..bound) as f32));
            } else {
                values.extend(std::iter::repeat_n(0.0f32, t.numel()));
            }
        }
        Self { layout, values }
    }

    /// Zeros in the given layout (server-optimizer moment buffers start here).
    pub fn zeros(layout: ParamLayout) -> Self {
        let n = layout.len();
        Self { layout, values: vec![0.0; n] }
    }

    /// Mutable values of one tensor, by name.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let (off, n) = self.layout.offsets().find(|(t, _)| t.name == name).map(|(t, off)| (off, t.numel()))?;
        Some(&mut self.values[off..off + n])
    }

    /// Values of one tensor, by name.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.layout
            .offsets()
            .find(|(t, _)| t.name == name)
            .map(|(t, off)| &self.values[off..off + t.numel()])
    }

    /// Serialises to a safetensors file (little-endian F32 tensors named as in the layout),
    /// with `metadata` stored in the file header.
    /// The tensor order is recorded under the metadata key [`LAYOUT_ORDER_KEY`].
    pub fn to_safetensors(&self, metadata: Option<HashMap<String, String>>) -> Vec<u8> {
        use safetensors::tensor::{Dtype, TensorView};
        let mut metadata = metadata.unwrap_or_default();
        let order: Vec<&str> = self.layout.tensors.iter().map(|t| t.name.as_str()).collect();
        metadata.insert(LAYOUT_ORDER_KEY.into(), order.join(","));
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views: Vec<(String, TensorView<'_>)> = self
            .layout
            .offsets()
            .filter_map(|(t, off)| {
                let slice = &bytes[off * 4..(off + t.numel()) * 4];
                TensorView::new(Dtype::F32, t.shape.clone(), slice).ok().map(|v| (t.name.clone(), v))
            })
            .collect();
        // Serialisation of well-formed views into memory cannot fail; fall back to empty on the
        // impossible path rather than panicking.
        safetensors::serialize(views, Some(metadata)).unwrap_or_default()
    }

    /// Reads a safetensors file against an expected layout: every tensor must be present as F32
    /// with the layout's shape, and every value finite. Extra tensors are ignored.
    pub fn from_safetensors(bytes: &[u8], layout: &ParamLayout) -> Result<Self, ModelError> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        let mut values = Vec::with_capacity(layout.len());
        for t in &layout.tensors {
            let view = file.tensor(&t.name).map_err(|_| ModelError::MissingTensor(t.name.clone()))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != t.shape.as_slice() {
                return Err(ModelError::Shape {
                    name: t.name.clone(),
                    found: view.shape().to_vec(),
                    expected: t.shape.clone(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            values.extend(
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Self::new(layout.clone(), values)
    }

    /// Reads any safetensors file of F32 tensors, taking the layout from the file itself: in the
    /// order recorded by [`Self::to_safetensors`], else in natural name order (`fc2` before `fc10`).
    pub fn read_safetensors_any(bytes: &[u8]) -> Result<Self, ModelError> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        let recorded = header.metadata().as_ref().and_then(|m| m.get(LAYOUT_ORDER_KEY)).cloned();
        let names: Vec<String> = match recorded {
            Some(order) => order.split(',').map(str::to_string).collect(),
            None => {
                let mut names: Vec<String> = file.names().into_iter().map(|n| n.to_string()).collect();
                names.sort_by_key(|a| natural_key(a));
                names
            }
        };
        let mut tensors = Vec::new();
        for name in names {
            let view = file.tensor(&name).map_err(|_| ModelError::MissingTensor(name.clone()))?;
            tensors.push(TensorSpec { name, shape: view.shape().to_vec() });
        }
        Self::from_safetensors(bytes, &ParamLayout { tensors })
    }
}

/// Orders `fc10.weight` after `fc2.weight`.
fn natural_key(name: &str) -> (String, u64, String) {
    let prefix: String = name.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let rest = &name[prefix.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = rest[digits.len()..].to_string();
    (prefix, digits.parse().unwrap_or(0), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_layout_chains_widths_and_ends_in_one_logit() {
        let layout = ModelSpec::Mlp { hidden: vec![8, 4] }.layout(10);
        let shapes: Vec<_> = layout.tensors.iter().map(|t| (t.name.as_str(), t.shape.clone())).collect();
        assert_eq!(
            shapes,
            vec![
                ("fc0.weight", vec![8, 10]),
                ("fc0.bias", vec![8]),
                ("fc1.weight", vec![4, 8]),
                ("fc1.bias", vec![4]),
                ("fc2.weight", vec![1, 4]),
                ("fc2.bias", vec![1]),
            ]
        );
        assert_eq!(layout.len(), 80 + 8 + 32 + 4 + 4 + 1);
    }

    #[test]
    fn every_kind_name_is_listed_for_bank_policies() {
        let ts = ModelSpec::TorchScript(TorchScriptSpec {
            module: "m.pt".into(),
            parameters: "p.safetensors".into(),
            module_sha256: None,
            parameters_sha256: None,
            input_dim: None,
            layout: ParamLayout::default(),
        });
        for spec in [ModelSpec::LogisticRegression, ModelSpec::Mlp { hidden: vec![2] }, ts] {
            assert!(MODEL_KINDS.contains(&spec.kind_name()), "{}", spec.kind_name());
        }
    }

    #[test]
    fn logistic_regression_is_one_linear_layer() {
        let layout = ModelSpec::LogisticRegression.layout(5);
        assert_eq!(layout.len(), 6);
        assert_eq!(layout.tensors[0].shape, vec![1, 5]);
    }

    #[test]
    fn safetensors_round_trip_preserves_values_and_checks_shape() {
        let layout = ModelSpec::Mlp { hidden: vec![3] }.layout(4);
        let params = ModelParams::init(layout.clone(), 7);
        let bytes = params.to_safetensors(None);
        let back = ModelParams::from_safetensors(&bytes, &layout).expect("round trip");
        assert_eq!(back, params);
        assert_eq!(ModelParams::read_safetensors_any(&bytes).expect("any"), params);

        let other = ModelSpec::Mlp { hidden: vec![3] }.layout(5);
        assert!(matches!(
            ModelParams::from_safetensors(&bytes, &other),
            Err(ModelError::Shape { .. })
        ));
        assert!(matches!(ModelParams::from_safetensors(b"garbage", &layout), Err(ModelError::Format(_))));
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let layout = ModelSpec::LogisticRegression.layout(1);
        let err = ModelParams::new(layout, vec![0.0, f32::NAN]).expect_err("NaN must be refused");
        assert!(matches!(err, ModelError::NotFinite { index: 1, .. }));
    }

    #[test]
    fn matrix_factorisation_layout_holds_only_the_item_side() {
        let spec = ModelSpec::MatrixFactorization { dim: 8 };
        let layout = spec.layout(100);
        let shapes: Vec<_> = layout.tensors.iter().map(|t| (t.name.as_str(), t.shape.clone())).collect();
        assert_eq!(shapes, vec![("item_embedding", vec![100, 8]), ("item_bias", vec![100]), ("global_bias", vec![1])]);
        assert_eq!(layout.len(), 100 * 8 + 100 + 1);
        assert!(layout.tensors.iter().all(|t| !t.name.starts_with("user_embedding") && t.name != "user_bias"));
        let local = spec.local_user_layout(7).expect("recommendation model");
        assert_eq!(local.len(), 7 * 8 + 7);
        assert!(ModelSpec::Mlp { hidden: vec![2] }.local_user_layout(7).is_none());
    }

    #[test]
    fn two_tower_layout_adds_both_towers() {
        let spec = ModelSpec::TwoTower { dim: 8, hidden: vec![16, 4] };
        let names: Vec<_> = spec.layout(10).tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        assert_eq!(names[..3].iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["item_embedding", "item_bias", "global_bias"]);
        assert!(names.contains(&("user_tower.fc0.weight".into(), vec![16, 8])));
        assert!(names.contains(&("user_tower.fc1.weight".into(), vec![4, 16])));
        assert!(names.contains(&("item_tower.fc1.bias".into(), vec![4])));
        assert_eq!(spec.layout(10).len(), 10 * 8 + 10 + 1 + 2 * (16 * 8 + 16 + 4 * 16 + 4));
        assert_eq!(spec.kind_name(), "two_tower");
        assert!(MODEL_KINDS.contains(&spec.kind_name()));
    }

    #[test]
    fn embeddings_start_small_but_not_vanishing() {
        let params = ModelParams::init(ModelSpec::MatrixFactorization { dim: 16 }.layout(5000), 3);
        let emb = params.tensor("item_embedding").expect("tensor");
        let var = emb.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / emb.len() as f64;
        assert!((var.sqrt() - EMBEDDING_INIT_STD).abs() < 0.01, "std {}", var.sqrt());
        assert!(params.tensor("item_bias").expect("bias").iter().all(|v| *v == 0.0));
    }

    #[test]
    fn init_is_deterministic_per_seed() {
        let layout = ModelSpec::Mlp { hidden: vec![16] }.layout(12);
        assert_eq!(ModelParams::init(layout.clone(), 1), ModelParams::init(layout.clone(), 1));
        assert_ne!(ModelParams::init(layout.clone(), 1), ModelParams::init(layout, 2));
    }

    /// A custom model's parameters file as `make_model.py` writes it.
    fn scripted_parameters(tensors: &[(&str, Vec<usize>, f32)], meta: &[(&str, &str)]) -> Vec<u8> {
        use safetensors::tensor::{Dtype, TensorView};
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, shape, v)| std::iter::repeat_n(*v, shape.iter().product()).flat_map(f32::to_le_bytes).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&data)
            .map(|((n, shape, _), d)| (n.to_string(), TensorView::new(Dtype::F32, shape.clone(), d).expect("view")))
            .collect();
        let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        safetensors::serialize(views, Some(meta)).expect("serialise")
    }

    fn torchscript_spec() -> TorchScriptSpec {
        TorchScriptSpec {
            module: "model.pt".into(),
            parameters: "init.safetensors".into(),
            module_sha256: None,
            parameters_sha256: None,
            input_dim: None,
            layout: ParamLayout::default(),
        }
    }

    const MODULE: &[u8] = b"PK\x03\x04 a zip archive";

    #[test]
    fn torchscript_layout_comes_from_the_parameters_file_in_recorded_order() {
        let bytes = scripted_parameters(
            &[("wide.weight", vec![1, 3], 0.5), ("deep.0.weight", vec![4, 3], 0.1), ("deep.0.bias", vec![4], 0.0)],
            &[(LAYOUT_ORDER_KEY, "wide.weight,deep.0.weight,deep.0.bias"), (INPUT_DIM_KEY, "3")],
        );
        let mut spec = torchscript_spec();
        let params = spec.resolve(MODULE, &bytes).expect("valid files");
        let names: Vec<&str> = spec.layout.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["wide.weight", "deep.0.weight", "deep.0.bias"]);
        assert_eq!(params.values.len(), 3 + 12 + 4);
        assert_eq!(params.tensor("wide.weight"), Some(&[0.5f32; 3][..]));
        assert_eq!(spec.input_dim, Some(3));
        assert_eq!(spec.module_sha256.as_deref(), Some(crate::sha256_hex(MODULE).as_str()));
        let model = ModelSpec::TorchScript(spec.clone());
        assert_eq!(model.layout(99), spec.layout, "the width does not change a scripted layout");
        assert_eq!(model.kind_name(), "torchscript");
        assert_eq!(model.label(), format!("torchscript[{}]", &crate::sha256_hex(MODULE)[..12]));
        let json = serde_json::to_string(&model).expect("json");
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).expect("back"), model);
    }

    #[test]
    fn torchscript_files_are_refused_with_the_reason() {
        let good = scripted_parameters(&[("fc.weight", vec![1, 2], 0.1)], &[]);
        let refuse = |module: &[u8], params: &[u8], pin: Option<&str>| {
            let mut spec = torchscript_spec();
            spec.module_sha256 = pin.map(str::to_string);
            spec.resolve(module, params).expect_err("must be refused").to_string()
        };
        assert!(refuse(b"", &good, None).contains("empty"));
        assert!(refuse(b"def forward(x): ...", &good, None).contains("not a TorchScript archive"));
        assert!(refuse(MODULE, &good, Some(&"0".repeat(64))).contains("pins"));
        assert!(refuse(MODULE, b"not safetensors", None).contains("init.safetensors"));
        let nan = scripted_parameters(&[("fc.weight", vec![1, 2], f32::NAN)], &[]);
        assert!(refuse(MODULE, &nan, None).contains("not finite"));
        let collide = scripted_parameters(&[("a_b.c", vec![1], 0.0), ("a.b_c", vec![1], 0.0)], &[]);
        assert!(refuse(MODULE, &collide, None).contains("collide"));
        let bad_name = scripted_parameters(&[("fc weight", vec![1], 0.0)], &[]);
        assert!(refuse(MODULE, &bad_name, None).contains("not a parameter name"));
        let partial = scripted_parameters(
            &[("a.weight", vec![1], 0.0), ("b.weight", vec![1], 0.0)],
            &[(LAYOUT_ORDER_KEY, "a.weight")],
        );
        assert!(refuse(MODULE, &partial, None).contains("lists 1 tensors, the file holds 2"));
        let width = scripted_parameters(&[("fc.weight", vec![1, 2], 0.1)], &[(INPUT_DIM_KEY, "two")]);
        assert!(refuse(MODULE, &width, None).contains(INPUT_DIM_KEY));
        let mut spec = torchscript_spec();
        spec.module_sha256 = Some(crate::sha256_hex(MODULE).to_uppercase());
        spec.resolve(MODULE, &good).expect("a matching pin is accepted in either case");
    }
}
