//! ONNX export of the tabular families (logistic regression, MLP) with the federated
//! preprocessing inside the graph, so a serving system feeds raw feature columns.
//!
//! The graph mirrors [`confide_datasets::Preprocessing::encode`] and the worker's network:
//!
//! ```text
//! numeric column x (float [N,1], NaN = missing)
//!     bad = IsNaN(x) or IsInf(x);  z = Where(bad, 0, (x − mean) / std)   (0 is the mean)
//!     refused if IsInf(x), or if IsNaN(x) and the column's policy is fail/drop
//! categorical column s (string [N,1])
//!     i = CategoryMapper(s): level → index; blank / na_values → mode (impute policy);
//!         anything else → −1
//!     onehot = Cast(Equal(i, [0..L)));  refused if i < 0
//! X = Concat(columns, axis 1) → Gemm(fc0) → Relu → … → Gemm(fcK)           = h [N,1]
//! logit = Reshape(Where(refused, NaN, h), [N]);  probability = Reshape(Where(refused, NaN, Sigmoid(h)), [N])
//! ```
//!
//! A row the federation would not have accepted (a missing cell where the schema says `fail` or
//! `drop`, an infinite number, or a category outside the agreed levels) therefore scores NaN
//! instead of a guess. The NaN is selected at the end, never pushed through the matrix products,
//! so runtimes whose kernels do not propagate NaN agree. Categorical cells are compared exactly:
//! trim surrounding whitespace before feeding them, as the CSV loader does. Only operators both
//! onnxruntime and tract implement are used (opset 13, `ai.onnx.ml` 1).
//!
//! A `gbdt` tree ensemble gets the same raw-column inputs in front of an `ai.onnx.ml` tree
//! ensemble ([`gbdt`]).
//!
//! The recommendation families get a scoring graph instead ([`recommendation`]): the federated
//! item side is in the graph, the bank's own user side is fed in.

use std::collections::HashSet;

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{ColumnTransform, DatasetSchema, MissingPolicy, Preprocessing};
use confide_gbdt::{FeatureKind, GbdtModel, Node};
use prost::Message;

use crate::ExportError;
use crate::pb;
use crate::trees::FlatTree;

/// Default-domain opset the graph is written for.
pub const OPSET: i64 = 13;
/// `ai.onnx.ml` opset (CategoryMapper, TreeEnsembleClassifier).
pub const ML_OPSET: i64 = 1;
/// ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 7;
/// Name of the probability output, float `[N]`.
pub const PROBABILITY: &str = "probability";
/// Name of the logit output, float `[N]`.
pub const LOGIT: &str = "logit";

/// What the exported graph reads and writes, for the model card and serving code.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphSignature {
    /// One input per feature column, in schema order.
    pub inputs: Vec<GraphInput>,
    /// Output names (`probability`, `logit`), each float `[N]`.
    pub outputs: Vec<String>,
}

/// One raw-column input of the graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphInput {
    /// Input name: the schema column name.
    pub name: String,
    /// `float` (`[N,1]`, NaN = missing) or `string` (`[N,1]`).
    pub dtype: &'static str,
    /// How a missing cell is handled in the graph.
    pub missing: String,
}

/// The ONNX file's bytes and its signature.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// Serialized `ModelProto`.
    pub bytes: Vec<u8>,
    /// Inputs and outputs.
    pub signature: GraphSignature,
}

/// Builds the ONNX graph of a logistic regression or MLP with its preprocessing.
/// `metadata` is stored as the model's `metadata_props` (job id, schema fingerprint, ...).
pub fn tabular(
    spec: &ModelSpec,
    schema: &DatasetSchema,
    preprocessing: &Preprocessing,
    params: &ModelParams,
    metadata: &[(String, String)],
) -> Result<OnnxModel, ExportError> {
    let layout = spec.layout(preprocessing.input_dim());
    if params.layout != layout {
        return Err(ExportError::Inconsistent(format!(
            "the model's parameters do not fit {} with {} encoded inputs",
            spec.label(),
            preprocessing.input_dim()
        )));
    }
    let mut g = GraphBuilder::default();
    let mut signature = GraphSignature {
        inputs: Vec::new(),
        outputs: vec![PROBABILITY.into(), LOGIT.into()],
    };
    let mut seen = HashSet::new();
    let mut encoded = Vec::new();
    // Per column, a bool [N,1]: the row cannot be scored.
    let mut refusals: Vec<String> = Vec::new();
    for (i, transform) in preprocessing.columns.iter().enumerate() {
        let name = transform.name();
        let column = schema.column(name).ok_or_else(|| {
            ExportError::Inconsistent(format!(
                "preprocessing column `{name}` is not in the schema"
            ))
        })?;
        if name == PROBABILITY || name == LOGIT || name.starts_with("confide/") {
            return Err(ExportError::Inconsistent(format!(
                "column `{name}` clashes with a name the exported graph uses"
            )));
        }
        if !seen.insert(name) {
            return Err(ExportError::Inconsistent(format!(
                "column `{name}` appears twice"
            )));
        }
        let impute = schema.policy_for(column) == MissingPolicy::Impute;
        let p = format!("confide/c{i}");
        match transform {
            ColumnTransform::Numeric { mean, std, .. } => {
                let missing = if impute {
                    format!("NaN → federated mean {mean}")
                } else {
                    "NaN → NaN score (schema refuses missing cells)".into()
                };
                g.input(name, pb::tensor_proto::DataType::Float, &missing);
                signature.inputs.push(GraphInput {
                    name: name.into(),
                    dtype: "float",
                    missing,
                });
                let mean_c = g.float_const(&format!("{p}/mean"), &[], &[*mean as f32]);
                let std_c = g.float_const(&format!("{p}/std"), &[], &[*std as f32]);
                let centred = g.node("Sub", &[name, &mean_c], &format!("{p}/centred"), vec![]);
                let z = g.node("Div", &[&centred, &std_c], &format!("{p}/z"), vec![]);
                let nan = g.node("IsNaN", &[name], &format!("{p}/is_missing"), vec![]);
                let inf = g.node("IsInf", &[name], &format!("{p}/is_infinite"), vec![]);
                let bad = g.node("Or", &[&nan, &inf], &format!("{p}/is_bad"), vec![]);
                let zero = g.float_const(&format!("{p}/zero"), &[], &[0.0]);
                encoded.push(g.node("Where", &[&bad, &zero, &z], &format!("{p}/encoded"), vec![]));
                refusals.push(if impute { inf } else { bad });
            }
            ColumnTransform::Categorical { levels, mode, .. } => {
                let mode_name = levels.get(*mode as usize).cloned().unwrap_or_default();
                let missing = if impute {
                    format!(
                        "blank or {:?} → federated mode `{mode_name}`; unknown level → NaN score",
                        schema.na_values
                    )
                } else {
                    "blank or unknown level → NaN score (schema refuses missing cells)".into()
                };
                g.input(name, pb::tensor_proto::DataType::String, &missing);
                signature.inputs.push(GraphInput {
                    name: name.into(),
                    dtype: "string",
                    missing,
                });
                // Blank and `na_values` cells take the mode's index when imputed.
                let markers = if impute { missing_markers(schema) } else { Vec::new() };
                let (index, onehot) = g.category_onehot(&p, name, levels, &markers, i64::from(*mode));
                encoded.push(onehot);
                let zero = g.int_const(&format!("{p}/zero"), &[], &[0]);
                refusals.push(g.node("Less", &[&index, &zero], &format!("{p}/unknown"), vec![]));
            }
        }
    }
    let refs: Vec<&str> = encoded.iter().map(String::as_str).collect();
    let mut h = g.node(
        "Concat",
        &refs,
        "confide/features",
        vec![attr_int("axis", 1)],
    );
    let layers = spec.hidden().len() + 1;
    for layer in 0..layers {
        let (w_name, b_name) = (format!("fc{layer}.weight"), format!("fc{layer}.bias"));
        let shape = |n: &str| {
            params
                .layout
                .tensors
                .iter()
                .find(|t| t.name == n)
                .map(|t| t.shape.clone())
        };
        let (Some(w_shape), Some(w), Some(b)) = (
            shape(&w_name),
            params.tensor(&w_name),
            params.tensor(&b_name),
        ) else {
            return Err(ExportError::Inconsistent(format!(
                "the model lacks layer fc{layer}"
            )));
        };
        let dims: Vec<i64> = w_shape.iter().map(|&d| d as i64).collect();
        let w_c = g.float_const(&w_name, &dims, w);
        let b_c = g.float_const(&b_name, &[b.len() as i64], b);
        h = g.node(
            "Gemm",
            &[&h, &w_c, &b_c],
            &format!("confide/fc{layer}"),
            vec![attr_int("transB", 1)],
        );
        if layer + 1 < layers {
            h = g.node("Relu", &[&h], &format!("confide/relu{layer}"), vec![]);
        }
    }
    let mut refused = refusals
        .first()
        .cloned()
        .ok_or_else(|| ExportError::Inconsistent("the schema has no feature columns".into()))?;
    for (i, r) in refusals.iter().enumerate().skip(1) {
        refused = g.node("Or", &[&refused, r], &format!("confide/refused{i}"), vec![]);
    }
    let nan = g.float_const("confide/nan", &[], &[f32::NAN]);
    let flat = g.int_const("confide/flat_shape", &[1], &[-1]);
    let logit = g.node("Where", &[&refused, &nan, &h], "confide/logit", vec![]);
    g.node("Reshape", &[&logit, &flat], LOGIT, vec![]);
    let sigmoid = g.node("Sigmoid", &[&h], "confide/sigmoid", vec![]);
    let probability = g.node(
        "Where",
        &[&refused, &nan, &sigmoid],
        "confide/probability",
        vec![],
    );
    g.node("Reshape", &[&probability, &flat], PROBABILITY, vec![]);
    g.output(PROBABILITY);
    g.output(LOGIT);

    let doc = format!(
        "{} over raw `{}` columns with federated preprocessing in-graph; outputs `{PROBABILITY}` and `{LOGIT}` [N]",
        spec.label(),
        schema.name
    );
    let model = model_proto(spec, g, doc, metadata, true);
    Ok(OnnxModel {
        bytes: model.encode_to_vec(),
        signature,
    })
}

/// Builds the ONNX graph of a `gbdt` tree ensemble with its feature space in-graph: raw
/// columns in, `probability` and `logit` `[N]` out.
///
/// ```text
/// numeric column x (float [N,1], NaN = missing)     the feature is x itself (trees handle NaN)
///     refused if IsInf(x), or if IsNaN(x) and the column's policy is fail/drop
/// categorical column s (string [N,1])
///     i = CategoryMapper(s): level → index; blank / na_values → −2 (missing); anything else → −1
///     indicators = Where(i = −2, NaN, Cast(Equal(i, [0..L))))     one per level, NaN when missing
///     refused if i = −1 (a level the federation never agreed), or missing under fail/drop
/// X = Concat(columns, axis 1)      (the trees' feature indices map onto X's columns)
/// margin = TreeEnsembleClassifier(X) score column 1 (BRANCH_LT, NaN follows default_left) + base margin
/// logit = Reshape(Where(refused, NaN, margin), [N]);  probability = Reshape(Where(refused, NaN, Sigmoid(margin)), [N])
/// ```
///
/// The ensemble is `ai.onnx.ml`'s TreeEnsembleClassifier with two class labels and every leaf
/// weight on class 0: both onnxruntime and tract then report the raw sum of leaf values as the
/// second score column (onnxruntime's binary layout, tract's copy of it), which is the margin
/// before the base. TreeEnsembleRegressor would be the plainer operator, but tract does not
/// implement it; the base margin is added outside the operator because the runtimes treat
/// `base_values` of a binary classifier differently.
pub fn gbdt(
    spec: &ModelSpec,
    schema: &DatasetSchema,
    model: &GbdtModel,
    metadata: &[(String, String)],
) -> Result<OnnxModel, ExportError> {
    crate::trees::check_features(model, schema)?;
    let trees = crate::trees::flatten_all(model)?;
    let mut g = GraphBuilder::default();
    let mut signature = GraphSignature { inputs: Vec::new(), outputs: vec![PROBABILITY.into(), LOGIT.into()] };
    let read: HashSet<&str> = model.features.features.iter().map(|f| f.column.as_str()).collect();
    let mut blocks = Vec::new();
    let mut offsets: Vec<(&str, i64)> = Vec::new();
    let mut width = 0i64;
    let mut refusals: Vec<String> = Vec::new();
    for (i, column) in schema.feature_columns().filter(|c| read.contains(c.name.as_str())).enumerate() {
        let name = column.name.as_str();
        if name == PROBABILITY || name == LOGIT || name.starts_with("confide/") {
            return Err(ExportError::Inconsistent(format!("column `{name}` clashes with a name the exported graph uses")));
        }
        let impute = schema.policy_for(column) == MissingPolicy::Impute;
        let p = format!("confide/c{i}");
        offsets.push((name, width));
        match column.kind {
            confide_datasets::ColumnType::Categorical => {
                let levels = column.level_names();
                let missing = if impute {
                    format!("blank or {:?} → missing (NaN indicators, the trees' default directions); unknown level → NaN score", schema.na_values)
                } else {
                    "blank or unknown level → NaN score (schema refuses missing cells)".into()
                };
                g.input(name, pb::tensor_proto::DataType::String, &missing);
                signature.inputs.push(GraphInput { name: name.into(), dtype: "string", missing });
                let (index, onehot) = g.category_onehot(&p, name, levels, &missing_markers(schema), -2);
                let missing_code = g.int_const(&format!("{p}/missing_code"), &[], &[-2]);
                let is_missing = g.node("Equal", &[&index, &missing_code], &format!("{p}/is_missing"), vec![]);
                let nan = g.float_const(&format!("{p}/nan"), &[], &[f32::NAN]);
                blocks.push(g.node("Where", &[&is_missing, &nan, &onehot], &format!("{p}/indicators"), vec![]));
                let unknown_code = g.int_const(&format!("{p}/unknown_code"), &[], &[-1]);
                let unknown = g.node("Equal", &[&index, &unknown_code], &format!("{p}/unknown"), vec![]);
                refusals.push(if impute { unknown } else { g.node("Or", &[&unknown, &is_missing], &format!("{p}/is_bad"), vec![]) });
                width += levels.len() as i64;
            }
            _ => {
                let missing = if impute {
                    "NaN → missing (the trees' default directions)".to_string()
                } else {
                    "NaN → NaN score (schema refuses missing cells)".into()
                };
                g.input(name, pb::tensor_proto::DataType::Float, &missing);
                signature.inputs.push(GraphInput { name: name.into(), dtype: "float", missing });
                let inf = g.node("IsInf", &[name], &format!("{p}/is_infinite"), vec![]);
                refusals.push(if impute {
                    inf
                } else {
                    let nan = g.node("IsNaN", &[name], &format!("{p}/is_missing"), vec![]);
                    g.node("Or", &[&nan, &inf], &format!("{p}/is_bad"), vec![])
                });
                blocks.push(name.to_string());
                width += 1;
            }
        }
    }
    // Column of X each tree feature reads.
    let mut column_of = Vec::with_capacity(model.features.len());
    for f in &model.features.features {
        let base = offsets
            .iter()
            .find(|(name, _)| *name == f.column)
            .map(|(_, o)| *o)
            .ok_or_else(|| ExportError::Inconsistent(format!("tree feature `{}` reads no graph input", f.name)))?;
        column_of.push(match f.kind {
            FeatureKind::Numeric { .. } => base,
            FeatureKind::Indicator { level } => base + i64::from(level),
        });
    }
    let refs: Vec<&str> = blocks.iter().map(String::as_str).collect();
    let x = g.node("Concat", &refs, "confide/features", vec![attr_int("axis", 1)]);
    let ensemble = tree_ensemble_attributes(&trees, &column_of)?;
    g.nodes.push(pb::NodeProto {
        input: vec![x],
        output: vec!["confide/label".into(), "confide/scores".into()],
        name: Some("confide/trees".into()),
        op_type: Some("TreeEnsembleClassifier".into()),
        domain: Some("ai.onnx.ml".into()),
        attribute: ensemble,
        ..Default::default()
    });
    let second = g.int_const("confide/second_score", &[1], &[1]);
    let sum = g.node("Gather", &["confide/scores", &second], "confide/leaf_sum", vec![attr_int("axis", 1)]);
    let base = g.float_const("confide/base_margin", &[], &[model.base_margin]);
    let margin = g.node("Add", &[&sum, &base], "confide/margin", vec![]);
    let mut refused = refusals.first().cloned().ok_or_else(|| ExportError::Inconsistent("the tree model reads no column".into()))?;
    for (i, r) in refusals.iter().enumerate().skip(1) {
        refused = g.node("Or", &[&refused, r], &format!("confide/refused{i}"), vec![]);
    }
    let nan = g.float_const("confide/nan", &[], &[f32::NAN]);
    let flat = g.int_const("confide/flat_shape", &[1], &[-1]);
    let logit = g.node("Where", &[&refused, &nan, &margin], "confide/logit", vec![]);
    g.node("Reshape", &[&logit, &flat], LOGIT, vec![]);
    let sigmoid = g.node("Sigmoid", &[&margin], "confide/sigmoid", vec![]);
    let probability = g.node("Where", &[&refused, &nan, &sigmoid], "confide/probability", vec![]);
    g.node("Reshape", &[&probability, &flat], PROBABILITY, vec![]);
    g.output(PROBABILITY);
    g.output(LOGIT);
    let doc = format!(
        "{} ({} trees) over raw `{}` columns with the tree feature space in-graph; outputs `{PROBABILITY}` and `{LOGIT}` [N]",
        spec.label(),
        model.trees.len(),
        schema.name
    );
    Ok(OnnxModel { bytes: model_proto(spec, g, doc, metadata, true).encode_to_vec(), signature })
}

/// TreeEnsembleClassifier's attributes for the flattened trees (`column_of`: feature → column of
/// the graph's feature matrix). A model without trees gets one leaf of value 0, since the
/// operator needs a node.
fn tree_ensemble_attributes(trees: &[FlatTree], column_of: &[i64]) -> Result<Vec<pb::AttributeProto>, ExportError> {
    let lone_leaf = FlatTree { nodes: vec![Node::Leaf { value: 0.0, cover: 0.0 }], parents: vec![None] };
    let trees: Vec<&FlatTree> = if trees.is_empty() { vec![&lone_leaf] } else { trees.iter().collect() };
    let (mut tree_ids, mut node_ids, mut feature_ids, mut modes, mut values) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut true_ids, mut false_ids, mut missing_true) = (vec![], vec![], vec![]);
    let (mut leaf_tree, mut leaf_node, mut leaf_weight) = (vec![], vec![], vec![]);
    for (t, tree) in trees.iter().enumerate() {
        for (n, node) in tree.nodes.iter().enumerate() {
            tree_ids.push(t as i64);
            node_ids.push(n as i64);
            match node {
                Node::Split { feature, threshold, default_left, left, right, .. } => {
                    let column = column_of
                        .get(*feature as usize)
                        .copied()
                        .ok_or_else(|| ExportError::Inconsistent(format!("tree {t} splits on feature {feature}, which the model lacks")))?;
                    feature_ids.push(column);
                    // `x < threshold` is the true branch, Confide's left child.
                    modes.push("BRANCH_LT".to_string());
                    values.push(*threshold);
                    true_ids.push(i64::from(*left));
                    false_ids.push(i64::from(*right));
                    missing_true.push(i64::from(*default_left));
                }
                Node::Leaf { value, .. } => {
                    feature_ids.push(0);
                    modes.push("LEAF".to_string());
                    values.push(0.0);
                    true_ids.push(0);
                    false_ids.push(0);
                    missing_true.push(0);
                    leaf_tree.push(t as i64);
                    leaf_node.push(n as i64);
                    leaf_weight.push(*value);
                }
            }
        }
    }
    let leaves = leaf_tree.len();
    Ok(vec![
        attr_ints("classlabels_int64s", &[0, 1]),
        attr_ints("class_ids", &vec![0; leaves]),
        attr_ints("class_nodeids", &leaf_node),
        attr_ints("class_treeids", &leaf_tree),
        attr_floats("class_weights", &leaf_weight),
        attr_ints("nodes_falsenodeids", &false_ids),
        attr_ints("nodes_featureids", &feature_ids),
        attr_ints("nodes_missing_value_tracks_true", &missing_true),
        attr_strings("nodes_modes", &modes),
        attr_ints("nodes_nodeids", &node_ids),
        attr_ints("nodes_treeids", &tree_ids),
        attr_ints("nodes_truenodeids", &true_ids),
        attr_floats("nodes_values", &values),
        attr_string("post_transform", "NONE"),
    ])
}

/// Name of the recommendation graph's user-embedding input, float `[N, dim]`.
pub const USER_EMBEDDING: &str = "user_embedding";
/// Name of the recommendation graph's user-bias input, float `[N]`.
pub const USER_BIAS: &str = "user_bias";
/// Name of the recommendation graph's catalogue-row input, int64 `[N]`.
pub const ITEM_INDEX: &str = "item_index";
/// Name of the recommendation graph's output, float `[N]`: the predicted rating (explicit
/// feedback) or preference logit (implicit feedback), unclamped, as the worker scores it.
pub const SCORE: &str = "score";
/// Name of the recommendation graph's user-vector output `f(p_u)`, float `[N, k]`.
pub const USER_VECTOR: &str = "user_vector";
/// Name of the recommendation graph's item-vector output `g(q_i)`, float `[N, k]`, for an
/// approximate-nearest-neighbour index (`score = user_vector · item_vector + biases`).
pub const ITEM_VECTOR: &str = "item_vector";

/// Builds the scoring graph of a recommendation model from its federated item side:
///
/// ```text
/// q = Gather(item_embedding, item_index)        b_i = Gather(item_bias, item_index)
/// f = user tower(user_embedding), g = item tower(q)   (Gemm → Relu → … → Gemm; identity for MF)
/// score = ReduceSum(f · g, axis 1) + user_bias + b_i + global_bias
/// ```
///
/// `f` and `g` are also outputs (`user_vector`, `item_vector`, `[N, k]`): feeding every
/// catalogue row once gives the item vectors of a retrieval index, and a user's vector is its
/// query (`score` = their dot product + `user_bias` + `item_bias` + `global_bias`).
///
/// The user side (`user_embedding`, `user_bias`) is an input: it never leaves the bank that
/// trained it, and the bank feeds its own rows. An `item_index` outside the catalogue is an
/// error of the runtime's `Gather`, not a guess.
pub fn recommendation(
    spec: &ModelSpec,
    params: &ModelParams,
    metadata: &[(String, String)],
) -> Result<OnnxModel, ExportError> {
    use confide_core::model::rec_names;
    let dim = spec.embedding_dim().ok_or_else(|| {
        ExportError::Inconsistent(format!("{} is not a recommendation model", spec.label()))
    })?;
    let items = params.tensor(rec_names::ITEM_BIAS).map_or(0, <[f32]>::len);
    if params.layout != spec.layout(items) || items == 0 {
        return Err(ExportError::Inconsistent(format!(
            "the model's parameters are not the item side of {} over a catalogue",
            spec.label()
        )));
    }
    let tensor = |name: &str| {
        params
            .tensor(name)
            .ok_or_else(|| ExportError::Inconsistent(format!("the model lacks `{name}`")))
    };
    let mut g = GraphBuilder::default();
    let float = pb::tensor_proto::DataType::Float;
    let int64 = pb::tensor_proto::DataType::Int64;
    let inputs = [
        (
            USER_EMBEDDING,
            float,
            vec![Dim::Batch, Dim::Fixed(dim as i64)],
            "float",
            format!(
                "the bank's own user embeddings [N, {dim}] (its worker's user_state file, tensor `{}`)",
                rec_names::USER_EMBEDDING
            ),
        ),
        (
            USER_BIAS,
            float,
            vec![Dim::Batch],
            "float",
            format!(
                "the bank's own user biases [N] (tensor `{}`)",
                rec_names::USER_BIAS
            ),
        ),
        (
            ITEM_INDEX,
            int64,
            vec![Dim::Batch],
            "int64",
            format!("catalogue row of the item, 0..{items} (items.csv)"),
        ),
    ];
    let mut signature = GraphSignature {
        inputs: Vec::new(),
        outputs: vec![SCORE.into(), USER_VECTOR.into(), ITEM_VECTOR.into()],
    };
    for (name, dtype, dims, dtype_name, doc) in inputs {
        let mut info = value_info(name, dtype, &dims);
        info.doc_string = Some(doc.clone());
        g.inputs.push(info);
        signature.inputs.push(GraphInput {
            name: name.into(),
            dtype: dtype_name,
            missing: doc,
        });
    }
    let emb = g.float_const(
        rec_names::ITEM_EMBEDDING,
        &[items as i64, dim as i64],
        tensor(rec_names::ITEM_EMBEDDING)?,
    );
    let item_bias = g.float_const(
        rec_names::ITEM_BIAS,
        &[items as i64],
        tensor(rec_names::ITEM_BIAS)?,
    );
    let global_bias = g.float_const(
        rec_names::GLOBAL_BIAS,
        &[1],
        tensor(rec_names::GLOBAL_BIAS)?,
    );
    let q = g.node(
        "Gather",
        &[&emb, ITEM_INDEX],
        "confide/item_row",
        vec![attr_int("axis", 0)],
    );
    let bi = g.node(
        "Gather",
        &[&item_bias, ITEM_INDEX],
        "confide/item_bias_row",
        vec![attr_int("axis", 0)],
    );
    let tower = |g: &mut GraphBuilder, prefix: &str, x: &str| -> Result<String, ExportError> {
        let layers = spec.hidden().len();
        let mut h = x.to_string();
        for layer in 0..layers {
            let (w_name, b_name) = (
                format!("{prefix}.fc{layer}.weight"),
                format!("{prefix}.fc{layer}.bias"),
            );
            let (w, b) = (tensor(&w_name)?, tensor(&b_name)?);
            let fan_in = w.len() / b.len().max(1);
            let w_c = g.float_const(&w_name, &[b.len() as i64, fan_in as i64], w);
            let b_c = g.float_const(&b_name, &[b.len() as i64], b);
            h = g.node(
                "Gemm",
                &[&h, &w_c, &b_c],
                &format!("confide/{prefix}/fc{layer}"),
                vec![attr_int("transB", 1)],
            );
            if layer + 1 < layers {
                h = g.node(
                    "Relu",
                    &[&h],
                    &format!("confide/{prefix}/relu{layer}"),
                    vec![],
                );
            }
        }
        Ok(h)
    };
    let f = tower(&mut g, rec_names::USER_TOWER, USER_EMBEDDING)?;
    let item_vector = tower(&mut g, rec_names::ITEM_TOWER, &q)?;
    let product = g.node("Mul", &[&f, &item_vector], "confide/product", vec![]);
    let axis = g.int_const("confide/feature_axis", &[1], &[1]);
    let interaction = g.node(
        "ReduceSum",
        &[&product, &axis],
        "confide/interaction",
        vec![attr_int("keepdims", 0)],
    );
    let with_user = g.node(
        "Add",
        &[&interaction, USER_BIAS],
        "confide/with_user_bias",
        vec![],
    );
    let with_item = g.node("Add", &[&with_user, &bi], "confide/with_item_bias", vec![]);
    g.node("Add", &[&with_item, &global_bias], SCORE, vec![]);
    g.node("Identity", &[&f], USER_VECTOR, vec![]);
    g.node("Identity", &[&item_vector], ITEM_VECTOR, vec![]);
    let width = spec.hidden().last().copied().unwrap_or(dim) as i64;
    g.output(SCORE);
    for name in [USER_VECTOR, ITEM_VECTOR] {
        g.outputs
            .push(value_info(name, float, &[Dim::Batch, Dim::Fixed(width)]));
    }
    let doc = format!(
        "{} scoring graph: the bank's `{USER_EMBEDDING}` [N,{dim}] and `{USER_BIAS}` [N] with `{ITEM_INDEX}` [N] (catalogue row) → `{SCORE}` [N] = μ + b_u + b_i + f(p_u)·g(q_i)",
        spec.label()
    );
    Ok(OnnxModel {
        bytes: model_proto(spec, g, doc, metadata, false).encode_to_vec(),
        signature,
    })
}

/// Cells the loader reads as missing: blank and the schema's `na_values`.
fn missing_markers(schema: &DatasetSchema) -> Vec<String> {
    std::iter::once(String::new()).chain(schema.na_values.iter().cloned()).collect()
}

/// The `ModelProto` around a built graph (`ai.onnx.ml` imported only when `ml` is set).
fn model_proto(
    spec: &ModelSpec,
    g: GraphBuilder,
    doc: String,
    metadata: &[(String, String)],
    ml: bool,
) -> pb::ModelProto {
    let mut opset_import = vec![pb::OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(OPSET),
    }];
    if ml {
        opset_import.push(pb::OperatorSetIdProto {
            domain: Some("ai.onnx.ml".into()),
            version: Some(ML_OPSET),
        });
    }
    pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import,
        producer_name: Some("confide".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: Some("org.confide".into()),
        model_version: Some(1),
        doc_string: Some(doc),
        graph: Some(pb::GraphProto {
            name: Some(format!("confide_{}", spec.kind_name())),
            node: g.nodes,
            initializer: g.initializers,
            input: g.inputs,
            output: g.outputs,
            ..Default::default()
        }),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    }
}

/// Accumulates nodes, initializers, inputs and outputs.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
}

impl GraphBuilder {
    /// A `[N,1]` graph input.
    fn input(&mut self, name: &str, dtype: pb::tensor_proto::DataType, doc: &str) {
        let mut info = value_info(name, dtype, &[Dim::Batch, Dim::Fixed(1)]);
        info.doc_string = Some(doc.to_string());
        self.inputs.push(info);
    }

    /// A float `[N]` graph output.
    fn output(&mut self, name: &str) {
        self.outputs.push(value_info(
            name,
            pb::tensor_proto::DataType::Float,
            &[Dim::Batch],
        ));
    }

    /// Appends a node whose single output is `out`; returns `out`.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: &str,
        attribute: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(out.to_string()),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        });
        out.to_string()
    }

    /// A categorical column's level index (CategoryMapper: level → 0..L, each of `markers` that
    /// is not a level → `marker_code`, anything else → −1) and its one-hot float `[N, L]`.
    fn category_onehot(&mut self, p: &str, name: &str, levels: &[String], markers: &[String], marker_code: i64) -> (String, String) {
        let mut keys: Vec<String> = levels.to_vec();
        let mut values: Vec<i64> = (0..levels.len() as i64).collect();
        for marker in markers {
            if !keys.contains(marker) {
                keys.push(marker.clone());
                values.push(marker_code);
            }
        }
        let index = self.node(
            "CategoryMapper",
            &[name],
            &format!("{p}/index"),
            vec![attr_strings("cats_strings", &keys), attr_ints("cats_int64s", &values), attr_int("default_int64", -1)],
        );
        self.ml_node_last();
        let width = levels.len() as i64;
        let all_levels: Vec<i64> = (0..width).collect();
        let range = self.int_const(&format!("{p}/levels"), &[1, width], &all_levels);
        let hits = self.node("Equal", &[&index, &range], &format!("{p}/hits"), vec![]);
        let onehot = self.node(
            "Cast",
            &[&hits],
            &format!("{p}/onehot"),
            vec![attr_int("to", pb::tensor_proto::DataType::Float as i64)],
        );
        (index, onehot)
    }

    /// Moves the last node into the `ai.onnx.ml` domain.
    fn ml_node_last(&mut self) {
        if let Some(n) = self.nodes.last_mut() {
            n.domain = Some("ai.onnx.ml".into());
        }
    }

    fn float_const(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        self.initializers.push(pb::TensorProto {
            dims: dims.to_vec(),
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            float_data: values.to_vec(),
            name: Some(name.to_string()),
            ..Default::default()
        });
        name.to_string()
    }

    fn int_const(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            dims: dims.to_vec(),
            data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
            int64_data: values.to_vec(),
            name: Some(name.to_string()),
            ..Default::default()
        });
        name.to_string()
    }
}

enum Dim {
    Batch,
    Fixed(i64),
}

fn value_info(name: &str, dtype: pb::tensor_proto::DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => Value::DimParam("N".into()),
                Dim::Fixed(n) => Value::DimValue(*n),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(dtype as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_floats(name: &str, floats: &[f32]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Floats as i32),
        floats: floats.to_vec(),
        ..Default::default()
    }
}

fn attr_string(name: &str, value: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn attr_strings(name: &str, strings: &[String]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Strings as i32),
        strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}
