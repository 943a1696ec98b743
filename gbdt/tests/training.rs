//! In-process boosting: banks' summed histograms grow the trees one bank with all rows grows,
//! leaves respect the row floor, and a booster's margins follow the model it syncs to.

use confide_gbdt::grow::GrowNode;
use confide_gbdt::train::train_in_process;
use confide_gbdt::{FeatureKind, FeatureSet, GbdtError, GbdtModel, GrowParams, GrowingTree, LocalBooster, Node, Tree, TreeFeature};
use ndarray::Array2;
use proptest::prelude::*;

/// `features` numeric features with `cuts` equally spaced cuts over [-5, 5].
fn numeric_set(features: usize, cuts: usize) -> FeatureSet {
    let step = 10.0 / (cuts + 1) as f32;
    let features = (0..features)
        .map(|i| TreeFeature {
            name: format!("f{i}"),
            column: format!("f{i}"),
            kind: FeatureKind::Numeric { cuts: (1..=cuts).map(|c| -5.0 + c as f32 * step).collect() },
        })
        .collect();
    FeatureSet { features }
}

fn params(min_leaf_rows: u64, max_depth: u32) -> GrowParams {
    GrowParams { eta: 0.3, lambda: 1.0, gamma: 0.0, min_child_weight: 1e-3, min_leaf_rows, max_depth }
}

/// Rows whose label leans on the first features, so the trees have something to split on.
fn rows_strategy(features: usize) -> impl Strategy<Value = Vec<(Vec<Option<f32>>, f64, usize)>> {
    proptest::collection::vec(
        (proptest::collection::vec(proptest::option::weighted(0.9, -5.0f32..5.0), features), 0.0f64..1.0, 0usize..4),
        150..300,
    )
}

fn matrix(rows: &[&(Vec<Option<f32>>, f64, usize)], features: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows.len(), features), |(r, f)| rows[r].0[f].unwrap_or(f32::NAN))
}

fn label(row: &(Vec<Option<f32>>, f64, usize)) -> f32 {
    let x0 = row.0[0].unwrap_or(1.0);
    let x1 = row.0.get(1).copied().flatten().unwrap_or(0.0);
    let p = 1.0 / (1.0 + (-(0.8 * f64::from(x0) - 0.5 * f64::from(x1))).exp());
    if row.1 < p { 1.0 } else { 0.0 }
}

fn booster(set: &FeatureSet, rows: &[&(Vec<Option<f32>>, f64, usize)], features: usize) -> LocalBooster {
    LocalBooster::new(set, matrix(rows, features), rows.iter().map(|r| label(r)).collect(), 0.0, 1.0)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

fn same_tree(a: &Tree, b: &Tree) -> Result<(), String> {
    if a.nodes.len() != b.nodes.len() {
        return Err(format!("{} nodes vs {}", a.nodes.len(), b.nodes.len()));
    }
    for (i, (x, y)) in a.nodes.iter().zip(&b.nodes).enumerate() {
        let same = match (x, y) {
            (
                Node::Split { feature: f1, threshold: t1, bin_split: k1, default_left: d1, left: l1, right: r1, gain: g1, cover: c1 },
                Node::Split { feature: f2, threshold: t2, bin_split: k2, default_left: d2, left: l2, right: r2, gain: g2, cover: c2 },
            ) => (f1, t1, k1, d1, l1, r1) == (f2, t2, k2, d2, l2, r2) && close(*g1, *g2, 1e-9) && close(*c1, *c2, 1e-9),
            (Node::Leaf { value: v1, cover: c1 }, Node::Leaf { value: v2, cover: c2 }) => {
                close(f64::from(*v1), f64::from(*v2), 1e-6) && close(*c1, *c2, 1e-9)
            }
            _ => false,
        };
        if !same {
            return Err(format!("node {i}: {x:?} vs {y:?}"));
        }
    }
    Ok(())
}

/// The leaf index a row reaches.
fn leaf_of(tree: &Tree, row: &[f32]) -> usize {
    let mut at = 0usize;
    while let Some(Node::Split { feature, threshold, default_left, left, right, .. }) = tree.nodes.get(at) {
        let x = row[*feature as usize];
        let go_left = if x.is_nan() { *default_left } else { x < *threshold };
        at = if go_left { *left } else { *right } as usize;
    }
    at
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// (2) Rows split across banks grow the same trees as one bank holding them all.
    #[test]
    fn banks_grow_the_trees_one_bank_grows(rows in rows_strategy(3), colsample in prop_oneof![Just(1.0), 0.3f64..1.0], seed in any::<u64>()) {
        let set = numeric_set(3, 15);
        let all: Vec<_> = rows.iter().collect();
        let p = params(10, 3);
        let mut pooled = vec![booster(&set, &all, 3)];
        let mut banks: Vec<LocalBooster> =
            (0..4).map(|b| booster(&set, &rows.iter().filter(|r| r.2 == b).collect::<Vec<_>>(), 3)).collect();
        let one = train_in_process(&set, &mut pooled, &p, 4, 1.0, colsample, seed).expect("pooled");
        let many = train_in_process(&set, &mut banks, &p, 4, 1.0, colsample, seed).expect("banks");
        prop_assert_eq!(one.trees.len(), 4);
        prop_assert!(one.trees.iter().any(|t| t.nodes.len() > 1), "no tree split at all");
        let raw = matrix(&all, 3);
        for (t, (a, b)) in one.trees.iter().zip(&many.trees).enumerate() {
            if let Err(e) = same_tree(a, b) {
                prop_assert!(false, "tree {}: {}", t, e);
            }
        }
        for (a, b) in one.predict_margins(raw.view()).iter().zip(many.predict_margins(raw.view())) {
            prop_assert!((a - b).abs() < 1e-5);
        }
        // (The boosters' margin bookkeeping has its own test: sync_adds_new_trees_and_recomputes_after_a_shorter_model.)
    }

    /// (6) No leaf of a trained tree describes fewer than `min_leaf_rows` rows.
    #[test]
    fn leaves_hold_at_least_the_floor(rows in rows_strategy(2), floor in 5u64..60, depth in 1u32..5) {
        let set = numeric_set(2, 30);
        let all: Vec<_> = rows.iter().collect();
        let mut banks: Vec<LocalBooster> =
            (0..3).map(|b| booster(&set, &rows.iter().filter(|r| r.2 % 3 == b).collect::<Vec<_>>(), 2)).collect();
        let model = train_in_process(&set, &mut banks, &params(floor, depth), 3, 1.0, 1.0, 1).expect("trains");
        let raw = matrix(&all, 2);
        for tree in &model.trees {
            prop_assert!(tree.depth() <= depth);
            let mut counts = vec![0u64; tree.nodes.len()];
            for r in 0..raw.nrows() {
                counts[leaf_of(tree, &raw.row(r).to_vec())] += 1;
            }
            for (i, node) in tree.nodes.iter().enumerate() {
                if matches!(node, Node::Leaf { .. }) {
                    prop_assert!(counts[i] >= floor, "leaf {} holds {} rows, floor {}", i, counts[i], floor);
                }
            }
        }
    }
}

#[test]
fn a_federation_below_the_floor_fails_at_the_root() {
    let set = numeric_set(2, 5);
    let rows: Vec<(Vec<Option<f32>>, f64, usize)> = (0..40).map(|i| (vec![Some(i as f32 / 8.0 - 2.5), None], 0.5, i % 2)).collect();
    let mut banks: Vec<LocalBooster> =
        (0..2).map(|b| booster(&set, &rows.iter().filter(|r| r.2 == b).collect::<Vec<_>>(), 2)).collect();
    let e = train_in_process(&set, &mut banks, &params(50, 3), 2, 1.0, 1.0, 0).expect_err("floor");
    assert!(matches!(e, GbdtError::LeafFloor { rows, floor: 50 } if rows == 40.0), "{e}");
    assert!(train_in_process(&set, &mut banks, &params(40, 3), 2, 1.0, 1.0, 0).is_ok());
}

#[test]
fn sync_adds_new_trees_and_recomputes_after_a_shorter_model() {
    let set = numeric_set(1, 3);
    let raw = Array2::from_shape_vec((3, 1), vec![-4.0f32, 0.0, f32::NAN]).expect("shape");
    let mut bank = LocalBooster::new(&set, raw.clone(), vec![0.0, 1.0, 1.0], 0.0, 1.0);
    let split = |v: f32| Tree {
        nodes: vec![
            Node::Split { feature: 0, threshold: -2.5, bin_split: 1, default_left: true, left: 1, right: 2, gain: 1.0, cover: 1.0 },
            Node::Leaf { value: v, cover: 1.0 },
            Node::Leaf { value: -v, cover: 1.0 },
        ],
    };
    let mut model = GbdtModel { base_margin: 0.5, features: set.clone(), trees: vec![split(0.25), split(1.0)] };
    bank.sync(&model);
    assert_eq!(bank.trees_applied, 2);
    // The booster started at base margin 0, then applied two trees.
    assert_eq!(bank.margins, vec![1.25, -1.25, 1.25]);
    model.trees.truncate(1);
    bank.sync(&model);
    assert_eq!(bank.margins, model.predict_margins(raw.view()));
    assert_eq!(bank.trees_applied, 1);
}

#[test]
fn a_row_sample_is_fixed_per_tree_and_differs_between_trees() {
    let set = numeric_set(1, 3);
    let raw = Array2::from_shape_fn((400, 1), |(r, _)| r as f32 / 40.0 - 5.0);
    let bank = LocalBooster::new(&set, raw, vec![0.0; 400], 0.0, 1.0);
    let a = bank.row_sample(3, 0.5, 11);
    assert_eq!(a, bank.row_sample(3, 0.5, 11));
    assert_ne!(a, bank.row_sample(4, 0.5, 11));
    assert_ne!(a, bank.row_sample(3, 0.5, 12));
    let kept = a.iter().filter(|&&k| k).count();
    assert!((150..250).contains(&kept), "{kept}");
    assert!(bank.row_sample(3, 1.0, 11).iter().all(|&k| k));
    // Unsampled rows add nothing to a level's histograms.
    let tree = GrowingTree::new(3, vec![0]);
    let h = bank.level_histograms(&set, &tree, 0.5, 11);
    assert_eq!(h.iter().skip(2).step_by(3).sum::<f64>(), kept as f64);
    assert!(matches!(tree.nodes[0], GrowNode::Open));
}

#[test]
fn gradients_are_the_weighted_logistic_loss() {
    let set = numeric_set(1, 3);
    let raw = Array2::from_shape_vec((2, 1), vec![0.0f32, 0.0]).expect("shape");
    let mut bank = LocalBooster::new(&set, raw, vec![1.0, 0.0], 0.0, 3.0);
    bank.margins = vec![0.0, 2.0];
    let (g, h) = bank.gradients();
    let p = 1.0 / (1.0 + (-2.0f64).exp());
    // Exact where the values are on the 2⁻¹⁶ grid, within half a grid step elsewhere.
    assert_eq!((g[0], h[0]), (3.0 * (0.5 - 1.0), 3.0 * 0.25));
    assert!((g[1] - p).abs() <= confide_gbdt::train::GRID / 2.0 && (h[1] - p * (1.0 - p)).abs() <= confide_gbdt::train::GRID / 2.0);
    assert!([g[1], h[1]].iter().all(|v| (v / confide_gbdt::train::GRID).fract() == 0.0), "on the grid: {g:?} {h:?}");
}
