//! The layout of one level's histogram vector and building it from a bank's rows.
//!
//! A level's vector is, for every open node of the tree (frontier order), for every sampled
//! feature (ascending feature index), for every slot of that feature (missing first, then the
//! bins), the triple `[Σ gradient, Σ hessian, rows]`. Everything in it is a sum over rows, so
//! the banks' vectors add up to the federation's.

use ndarray::ArrayView2;

use crate::FeatureSet;

/// Values per histogram slot: Σ gradient, Σ hessian, rows.
pub const STATS: usize = 3;

/// Where each sampled feature's slots sit in one node's block.
#[derive(Debug, Clone, PartialEq)]
pub struct HistLayout {
    /// Sampled feature indices, ascending.
    pub features: Vec<usize>,
    /// Offset of each sampled feature's first slot (in slots) within a node's block.
    pub offsets: Vec<usize>,
    /// Slots per sampled feature.
    pub slots: Vec<usize>,
    /// Values per node (`STATS ×` total slots).
    pub node_len: usize,
}

impl HistLayout {
    /// The layout for `features` (ascending indices into `set`).
    pub fn new(set: &FeatureSet, features: &[usize]) -> Self {
        // An index past the set has no slots (a checked tree never names one: `GrowingTree::check`).
        let slots: Vec<usize> = features.iter().map(|&f| set.features.get(f).map_or(0, |t| t.slots())).collect();
        let mut offsets = Vec::with_capacity(slots.len());
        let mut total = 0;
        for s in &slots {
            offsets.push(total);
            total += s;
        }
        Self { features: features.to_vec(), offsets, slots, node_len: STATS * total }
    }

    /// The `[Σ g, Σ h, rows]` triple of `slot` of the `i`-th sampled feature in a node's block.
    pub fn stats<'a>(&self, node_block: &'a [f64], i: usize, slot: usize) -> &'a [f64] {
        let at = STATS * (self.offsets[i] + slot);
        &node_block[at..at + STATS]
    }

    /// Length of a level's vector with `nodes` open nodes.
    pub fn vector_len(&self, nodes: usize) -> usize {
        self.node_len * nodes
    }
}

/// One bank's histograms for a level: `slots` is the bank's binned matrix
/// ([`FeatureSet::bin_matrix`]), `node_of_row[r]` the frontier position of row `r` (None when the
/// row is not in the tree's sample or sits in a closed node), `grad`/`hess` per row.
///
/// Rows past the shortest of `slots`, `grad`, `hess` and `node_of_row`, rows of a node at or past
/// `nodes`, and slots past a feature's last (a malformed matrix) are not counted.
pub fn build(layout: &HistLayout, slots: ArrayView2<'_, u16>, grad: &[f64], hess: &[f64], node_of_row: &[Option<u32>], nodes: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; layout.vector_len(nodes)];
    // Per sampled feature: its column in the matrix, the value offset of its slot 0 and its last slot.
    let plan: Vec<(usize, usize, usize)> = layout
        .features
        .iter()
        .zip(&layout.offsets)
        .zip(&layout.slots)
        .filter(|&((&f, _), &s)| s > 0 && f < slots.ncols())
        .map(|((&f, &o), &s)| (f, STATS * o, s - 1))
        .collect();
    let rows = slots.nrows().min(grad.len()).min(hess.len()).min(node_of_row.len());
    for r in 0..rows {
        let Some(node) = node_of_row[r] else { continue };
        let node = node as usize;
        if node >= nodes {
            continue;
        }
        let (g, h) = (grad[r], hess[r]);
        let block = &mut out[node * layout.node_len..(node + 1) * layout.node_len];
        let row = slots.row(r);
        for &(f, offset, last) in &plan {
            let at = offset + STATS * (row[f] as usize).min(last);
            block[at] += g;
            block[at + 1] += h;
            block[at + 2] += 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{FeatureKind, TreeFeature};
    use ndarray::Array2;
    use proptest::prelude::*;

    /// A generated row: raw slots, gradient, hessian, frontier node, bank.
    type Row = (Vec<u16>, f64, f64, Option<u32>, usize);

    fn set(cuts: &[usize]) -> FeatureSet {
        let features = cuts
            .iter()
            .enumerate()
            .map(|(i, &n)| TreeFeature {
                name: format!("f{i}"),
                column: format!("f{i}"),
                kind: FeatureKind::Numeric { cuts: (0..n).map(|c| c as f32).collect() },
            })
            .collect();
        FeatureSet { features }
    }

    #[test]
    fn layout_places_features_one_after_another() {
        let s = set(&[3, 0, 5]);
        let l = HistLayout::new(&s, &[0, 2]);
        assert_eq!((l.offsets.clone(), l.slots.clone(), l.node_len), (vec![0, 5], vec![5, 7], STATS * 12));
        assert_eq!(l.vector_len(4), 4 * STATS * 12);
        // One row in node 1, feature 2's slot 3.
        let slots = Array2::from_shape_vec((1, 3), vec![1u16, 1, 3]).expect("shape");
        let v = build(&l, slots.view(), &[0.5], &[0.25], &[Some(1)], 2);
        let at = l.node_len + STATS * (5 + 3);
        assert_eq!(&v[at..at + 3], &[0.5, 0.25, 1.0]);
        // The row counts once per sampled feature.
        assert_eq!(v.iter().sum::<f64>(), 2.0 * (0.5 + 0.25 + 1.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// (1) The banks' histograms add up to the histogram of their pooled rows.
        #[test]
        fn banks_sum_to_the_pooled_histogram(
            cuts in proptest::collection::vec(0usize..6, 1..5),
            rows in proptest::collection::vec((proptest::collection::vec(0u16..8, 5), -1.0f64..1.0, 0.0f64..0.25, proptest::option::of(0u32..4), 0usize..3), 0..120),
            sample in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let s = set(&cuts);
            let mut features: Vec<usize> = (0..cuts.len()).filter(|&f| sample[f]).collect();
            if features.is_empty() {
                features.push(0);
            }
            let layout = HistLayout::new(&s, &features);
            let nodes = 3;
            let one = |rs: &[&Row]| {
                let mut m = Array2::<u16>::zeros((rs.len(), cuts.len()));
                for (r, row) in rs.iter().enumerate() {
                    for (j, c) in cuts.iter().enumerate() {
                        // Slots within the feature's range (0 = missing).
                        m[[r, j]] = row.0[j] % (*c as u16 + 2);
                    }
                }
                let g: Vec<f64> = rs.iter().map(|r| r.1).collect();
                let h: Vec<f64> = rs.iter().map(|r| r.2).collect();
                let n: Vec<Option<u32>> = rs.iter().map(|r| r.3).collect();
                build(&layout, m.view(), &g, &h, &n, nodes)
            };
            let pooled = one(&rows.iter().collect::<Vec<_>>());
            let mut summed = vec![0.0; layout.vector_len(nodes)];
            for bank in 0..3 {
                let mine: Vec<_> = rows.iter().filter(|r| r.4 == bank).collect();
                for (s, v) in summed.iter_mut().zip(one(&mine)) {
                    *s += v;
                }
            }
            prop_assert_eq!(pooled.len(), summed.len());
            for (a, b) in pooled.iter().zip(&summed) {
                prop_assert!((a - b).abs() < 1e-9, "{} vs {}", a, b);
            }
            // Every counted row appears once per sampled feature.
            let counted = rows.iter().filter(|r| r.3.is_some_and(|n| n < nodes as u32)).count();
            let total_rows: f64 = pooled.chunks_exact(STATS).map(|t| t[2]).sum();
            prop_assert_eq!(total_rows, (counted * features.len()) as f64);
        }
    }
}
