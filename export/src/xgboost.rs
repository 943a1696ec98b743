//! `model.json`: a `gbdt` model in XGBoost's JSON model format (the schema XGBoost 3.x saves
//! with `Booster.save_model("model.json")`), so `xgboost.Booster(model_file="model.json")` loads
//! it and scores a `DMatrix` of the tree features exactly as the banks do.
//!
//! The booster reads the trees' feature space, not raw columns: every numeric column's raw value
//! then one indicator per categorical level (1.0 / 0.0, NaN when the cell is missing), in the
//! order of `feature_names`; NaN is missing. XGBoost's split rule is Confide's (`x < threshold`
//! left, missing the node's default way), leaf values already carry the shrinkage, and
//! `base_score` is the probability of the base margin (margin 0 ↔ 0.5).
//!
//! What XGBoost keeps per node but Confide's trees do not: `base_weights` of a split node is the
//! cover-weighted mean of its children's (the node's expected contribution, what attribution
//! methods use); it plays no part in prediction.

use confide_gbdt::{FeatureKind, GbdtModel, Node};
use serde_json::{Value, json};

use crate::ExportError;
use crate::trees::{FlatTree, flatten_all};

/// The XGBoost version whose JSON schema is written.
pub const SCHEMA_VERSION: [u32; 3] = [3, 0, 0];

/// XGBoost's parent index of a root node.
const NO_PARENT: i64 = 2_147_483_647;

/// The `model.json` bytes of `model`. `scale_pos_weight` is the job's `pos_weight` (1 without
/// it), recorded as the objective's parameter as XGBoost does; it does not change predictions.
pub fn model_json(model: &GbdtModel, scale_pos_weight: f64) -> Result<Vec<u8>, ExportError> {
    let features = model.features.len();
    let trees = flatten_all(model)?;
    let tree_values: Vec<Value> = trees.iter().enumerate().map(|(id, t)| tree_json(id, t, features)).collect();
    let n = trees.len();
    let base_score = 1.0 / (1.0 + (-f64::from(model.base_margin)).exp());
    let (names, types): (Vec<String>, Vec<&str>) = model
        .features
        .features
        .iter()
        .map(|f| {
            let kind = match f.kind {
                FeatureKind::Numeric { .. } => "q",
                FeatureKind::Indicator { .. } => "i",
            };
            (feature_name(&f.name), kind)
        })
        .unzip();
    let doc = json!({
        "learner": {
            "attributes": {},
            "feature_names": names,
            "feature_types": types,
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": { "num_parallel_tree": "1", "num_trees": n.to_string() },
                    "iteration_indptr": (0..=n).collect::<Vec<_>>(),
                    "tree_info": vec![0; n],
                    "trees": tree_values,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                // XGBoost writes a vector-valued base score as `[p]`.
                "base_score": format!("[{base_score:E}]"),
                // The base margin is the model's own; XGBoost must not re-estimate it.
                "boost_from_average": "0",
                "num_class": "0",
                "num_feature": features.to_string(),
                "num_target": "1",
            },
            "objective": {
                "name": "binary:logistic",
                "reg_loss_param": { "scale_pos_weight": format!("{scale_pos_weight}") },
            },
        },
        "version": SCHEMA_VERSION,
    });
    serde_json::to_vec(&doc).map_err(|e| ExportError::Inconsistent(format!("model.json: {e}")))
}

/// XGBoost refuses feature names holding `[`, `]` or `<` (its dump syntax); those become `(`,
/// `)` and `lt` (levels such as `<25` occur in bank data).
pub fn feature_name(name: &str) -> String {
    name.replace('[', "(").replace(']', ")").replace('<', "lt")
}

fn tree_json(id: usize, tree: &FlatTree, features: usize) -> Value {
    let n = tree.nodes.len();
    let (mut left, mut right, mut index, mut condition, mut default_left) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut loss, mut hessian) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for node in &tree.nodes {
        match node {
            Node::Split { feature, threshold, default_left: d, left: l, right: r, gain, cover, .. } => {
                left.push(i64::from(*l));
                right.push(i64::from(*r));
                index.push(*feature);
                condition.push(*threshold);
                default_left.push(u8::from(*d));
                loss.push(*gain as f32);
                hessian.push(*cover as f32);
            }
            Node::Leaf { value, cover } => {
                left.push(-1);
                right.push(-1);
                index.push(0);
                condition.push(*value);
                default_left.push(0);
                loss.push(0.0);
                hessian.push(*cover as f32);
            }
        }
    }
    let parents: Vec<i64> = tree.parents.iter().map(|p| p.map_or(NO_PARENT, i64::from)).collect();
    json!({
        "base_weights": base_weights(tree),
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": default_left,
        "id": id,
        "left_children": left,
        "loss_changes": loss,
        "parents": parents,
        "right_children": right,
        "split_conditions": condition,
        "split_indices": index,
        "split_type": vec![0; n],
        "sum_hessian": hessian,
        "tree_param": {
            "num_deleted": "0",
            "num_feature": features.to_string(),
            "num_nodes": n.to_string(),
            "size_leaf_vector": "1",
        },
    })
}

/// Leaf values at leaves; at a split the cover-weighted mean of its children's (plain mean where
/// both covers are 0). Children follow their parents, so a backward pass sees them first.
fn base_weights(tree: &FlatTree) -> Vec<f32> {
    let mut w = vec![0f64; tree.nodes.len()];
    let cover = |i: u32| match tree.nodes.get(i as usize) {
        Some(Node::Split { cover, .. } | Node::Leaf { cover, .. }) => *cover,
        None => 0.0,
    };
    for i in (0..tree.nodes.len()).rev() {
        w[i] = match &tree.nodes[i] {
            Node::Leaf { value, .. } => f64::from(*value),
            Node::Split { left, right, .. } => {
                let (wl, wr) = (w.get(*left as usize).copied().unwrap_or(0.0), w.get(*right as usize).copied().unwrap_or(0.0));
                let (cl, cr) = (cover(*left), cover(*right));
                if cl + cr > 0.0 { (wl * cl + wr * cr) / (cl + cr) } else { (wl + wr) / 2.0 }
            }
        };
    }
    w.into_iter().map(|v| v as f32).collect()
}
