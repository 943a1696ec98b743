//! A `gbdt` job's tree ensemble as both tree writers ([`crate::xgboost`], [`crate::onnx::gbdt`])
//! lay it out: every tree flattened breadth-first from its root (reachable nodes only, each once,
//! with its parent), and the model's feature space checked against the dataset schema, so the
//! two files describe the same trees over the same raw columns.

use confide_datasets::{ColumnType, DatasetSchema};
use confide_gbdt::{FeatureKind, GbdtModel, Node, Tree};

use crate::ExportError;

/// One tree, renumbered breadth-first: node 0 is the root, children follow their parent, and
/// `parents[i]` is node `i`'s parent (None for the root).
#[derive(Debug, Clone, PartialEq)]
pub struct FlatTree {
    /// Nodes with child indices into this vector.
    pub nodes: Vec<Node>,
    /// Parent of every node.
    pub parents: Vec<Option<u32>>,
}

impl FlatTree {
    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Leaf { .. })).count()
    }
}

/// Flattens `tree` (tree number `t`, for messages). A checkpoint read by
/// [`GbdtModel::from_bytes`] has children after their parents, so the walk ends; a node reached
/// twice would make the files disagree about which rows reach it, so it is refused.
pub fn flatten(tree: &Tree, t: usize) -> Result<FlatTree, ExportError> {
    let bad = |why: String| ExportError::Inconsistent(format!("tree {t}: {why}"));
    let mut seen = vec![false; tree.nodes.len()];
    let mut flat = FlatTree { nodes: Vec::new(), parents: Vec::new() };
    // (old index, new parent index, is left child)
    let mut queue = std::collections::VecDeque::from([(0usize, None::<(u32, bool)>)]);
    while let Some((old, parent)) = queue.pop_front() {
        let node = tree.nodes.get(old).ok_or_else(|| bad(format!("node {old} does not exist")))?;
        let slot = seen.get_mut(old).ok_or_else(|| bad(format!("node {old} does not exist")))?;
        if std::mem::replace(slot, true) {
            return Err(bad(format!("node {old} has two parents")));
        }
        let new = flat.nodes.len() as u32;
        if let Some((p, is_left)) = parent
            && let Some(Node::Split { left, right, .. }) = flat.nodes.get_mut(p as usize)
        {
            *(if is_left { left } else { right }) = new;
        }
        if let Node::Split { left, right, .. } = node {
            queue.push_back((*left as usize, Some((new, true))));
            queue.push_back((*right as usize, Some((new, false))));
        }
        flat.nodes.push(node.clone());
        flat.parents.push(parent.map(|(p, _)| p));
    }
    Ok(flat)
}

/// Every tree of `model`, flattened.
pub fn flatten_all(model: &GbdtModel) -> Result<Vec<FlatTree>, ExportError> {
    model.trees.iter().enumerate().map(|(t, tree)| flatten(tree, t)).collect()
}

/// Checks that every tree feature reads a schema feature column of its kind (a numeric column's
/// raw value, or a level the categorical column declares).
pub fn check_features(model: &GbdtModel, schema: &DatasetSchema) -> Result<(), ExportError> {
    if model.features.is_empty() {
        return Err(ExportError::Inconsistent("the tree model has no features".into()));
    }
    for (i, f) in model.features.features.iter().enumerate() {
        let column = schema
            .column(&f.column)
            .filter(|c| c.is_feature())
            .ok_or_else(|| ExportError::Inconsistent(format!("tree feature {i} reads `{}`, not a feature column of the schema", f.column)))?;
        let fits = match &f.kind {
            FeatureKind::Numeric { .. } => column.kind == ColumnType::Numeric,
            FeatureKind::Indicator { level } => {
                column.kind == ColumnType::Categorical && (*level as usize) < column.level_names().len()
            }
        };
        if !fits {
            return Err(ExportError::Inconsistent(format!(
                "tree feature {i} (`{}`) does not fit column `{}` of the schema",
                f.name, f.column
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(left: u32, right: u32) -> Node {
        Node::Split { feature: 0, threshold: 1.0, bin_split: 1, default_left: true, left, right, gain: 1.0, cover: 2.0 }
    }

    fn leaf(value: f32) -> Node {
        Node::Leaf { value, cover: 1.0 }
    }

    #[test]
    fn flattening_renumbers_breadth_first_and_drops_unreachable_nodes() {
        // 0 → (3, 1); 1 → (4, 5); 2 unreachable.
        let tree = Tree { nodes: vec![split(3, 1), split(4, 5), leaf(9.0), leaf(0.5), leaf(1.5), leaf(2.5)] };
        let flat = flatten(&tree, 0).expect("a tree");
        assert_eq!(flat.nodes.len(), 5);
        assert_eq!(flat.parents, [None, Some(0), Some(0), Some(2), Some(2)]);
        assert!(matches!(flat.nodes[0], Node::Split { left: 1, right: 2, .. }));
        assert!(matches!(flat.nodes[1], Node::Leaf { value, .. } if value == 0.5));
        assert!(matches!(flat.nodes[2], Node::Split { left: 3, right: 4, .. }));
        assert_eq!(flat.leaves(), 3);
        for row in [[0.0f32], [2.0], [f32::NAN]] {
            let relinked = Tree { nodes: flat.nodes.clone() };
            assert_eq!(relinked.predict(&row), tree.predict(&row), "{row:?}");
        }
    }

    #[test]
    fn a_node_with_two_parents_is_refused() {
        let tree = Tree { nodes: vec![split(1, 2), split(3, 3), split(3, 4), leaf(0.0), leaf(1.0)] };
        let err = flatten(&tree, 7).expect_err("shared node");
        assert!(err.to_string().contains("tree 7: node 3 has two parents"), "{err}");
    }
}
