//! Growing one tree level by level from summed histograms: the coordinator's side.
//!
//! [`GrowingTree`] is the state between levels: the nodes decided so far and the open
//! frontier. It travels to the banks with each level's task (JSON), so a bank routes its rows
//! to the frontier exactly as the coordinator decided, and its histogram vector has the length
//! [`GrowingTree::vector_len`] says. [`GrowingTree::apply_level`] takes the level's summed
//! histograms and, for every open node, either splits it (best gain over sampled features,
//! thresholds and both default directions, both children meeting `min_child_weight` and
//! `min_leaf_rows`, gain above γ) or makes it a leaf with value `−η·G/(H+λ)`. Children at
//! `max_depth` become leaves at once from the split's left and right sums.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use confide_core::model::GbdtSpec;

use crate::features::MISSING_SLOT;
use crate::{FeatureSet, GbdtError, HistLayout, Node, Tree};

/// Splits must reduce the loss by more than this (XGBoost's `kRtEps`).
const MIN_LOSS_CHG: f64 = 1e-6;

/// Row counts come back from fixed-point sums (1/65536 resolution): a count this close below
/// the floor meets it.
const COUNT_SLACK: f64 = 0.5;

/// The hyper-parameters split finding uses.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowParams {
    /// Shrinkage η (the job's learning rate).
    pub eta: f64,
    /// L2 penalty λ.
    pub lambda: f64,
    /// Minimum loss reduction γ.
    pub gamma: f64,
    /// Minimum Σ hessian per child.
    pub min_child_weight: f64,
    /// Minimum rows per child, summed over banks.
    pub min_leaf_rows: u64,
    /// Deepest split level.
    pub max_depth: u32,
}

impl GrowParams {
    /// From a job's tree spec and learning rate.
    pub fn new(spec: &GbdtSpec, eta: f64) -> Self {
        Self {
            eta,
            lambda: spec.lambda,
            gamma: spec.gamma,
            min_child_weight: spec.min_child_weight,
            min_leaf_rows: spec.min_leaf_rows,
            max_depth: spec.max_depth,
        }
    }
}

/// A node while its tree grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrowNode {
    /// Decided.
    Done(Node),
    /// On the frontier, waiting for its level's histograms.
    Open,
}

/// One tree between levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowingTree {
    /// The tree's index in the ensemble (0-based): seeds its row and column samples.
    pub index: u64,
    /// Feature indices this tree may split on (ascending; the column sample).
    pub features: Vec<usize>,
    /// Nodes so far (0 = root).
    pub nodes: Vec<GrowNode>,
    /// Open node indices, in node order.
    pub frontier: Vec<u32>,
    /// The open nodes whose histograms a level's vector holds, in vector order (a subset of
    /// the frontier, in node order). After a split whose children are both open, only the child
    /// with fewer rows (by the summed counts) is sent: its sibling's histograms are the parent's
    /// minus its own, derived by the coordinator ([`GrowingTree::apply_level`]), which halves
    /// what the banks send below the root. All of the frontier at the root and after
    /// [`GrowingTree::send_all`].
    pub sent: Vec<u32>,
    /// Depth of the frontier's nodes.
    pub depth: u32,
    /// Coordinator side only (never travels): how to derive each open node that is not sent.
    #[serde(skip)]
    derived: Vec<Derived>,
    /// Coordinator side only: the standard deviation of the noise on each entry of the level's
    /// summed vector (a DP job's; 0 for exact sums), see [`GrowingTree::set_noise`].
    #[serde(skip)]
    noise_sd: f64,
}

/// How many standard deviations of its noise a side's Σ hessian must clear (on top of
/// `min_child_weight`) to be a split candidate under DP noise.
const NOISE_Z: f64 = 2.0;

/// An open node whose histograms are its parent's minus its sibling's.
#[derive(Debug, Clone, PartialEq)]
struct Derived {
    node: u32,
    sibling: u32,
    parent: Vec<f64>,
}

impl GrowingTree {
    /// A tree with an open root.
    pub fn new(index: u64, features: Vec<usize>) -> Self {
        Self { index, features, nodes: vec![GrowNode::Open], frontier: vec![0], sent: vec![0], depth: 0, derived: Vec::new(), noise_sd: 0.0 }
    }

    /// States the noise on each entry of the next level's summed vector (a DP job's: the banks'
    /// σ·Δ, times √banks). Post-processing only: a side whose Σ hessian is not `NOISE_Z` noise
    /// standard deviations (over the slots it sums; √2 more in a node derived as parent − sibling)
    /// above `min_child_weight` is no candidate, since G²/(H + λ) of a side that is mostly noise
    /// would beat every real split.
    pub fn set_noise(&mut self, per_entry_sd: f64) {
        self.noise_sd = if per_entry_sd.is_finite() { per_entry_sd.max(0.0) } else { 0.0 };
    }

    /// True when some open node's histograms are to be derived from its parent's: a level sum
    /// that misses a bank's histograms cannot be used then (see [`GrowingTree::send_all`]).
    pub fn derives(&self) -> bool {
        !self.derived.is_empty()
    }

    /// Asks the next level for every open node's histograms (no derivation): what the
    /// coordinator does when the banks in the last sum are not all those in the next, since a
    /// parent summed over other banks than its child cannot be subtracted.
    pub fn send_all(&mut self) {
        self.sent = self.frontier.clone();
        self.derived.clear();
    }

    /// True when no node is open (the tree is complete).
    pub fn is_done(&self) -> bool {
        self.frontier.is_empty()
    }

    /// The histogram layout of one frontier node.
    pub fn layout(&self, set: &FeatureSet) -> HistLayout {
        HistLayout::new(set, &self.features)
    }

    /// Length of the current level's histogram vector.
    pub fn vector_len(&self, set: &FeatureSet) -> usize {
        self.layout(set).vector_len(self.sent.len())
    }

    /// The frontier position a row (its slots, one per feature of the set) reaches, or None when
    /// it ends in a decided leaf.
    pub fn route(&self, row_slots: &[u16]) -> Option<u32> {
        self.route_with(row_slots, &self.frontier_positions())
    }

    /// Number of histogram blocks in the current level's vector (the sent open nodes).
    pub fn frontier_len(&self) -> usize {
        self.sent.len()
    }

    /// For every node index, its block in the level's vector (None for decided nodes and for
    /// open nodes that are not sent): what [`GrowingTree::route_with`] looks up, computed once
    /// per level.
    pub fn frontier_positions(&self) -> Vec<Option<u32>> {
        let mut at = vec![None; self.nodes.len()];
        for (p, &n) in self.sent.iter().enumerate() {
            if let Some(slot) = at.get_mut(n as usize) {
                *slot = Some(p as u32);
            }
        }
        at
    }

    /// [`GrowingTree::route`] with the frontier positions precomputed.
    pub fn route_with(&self, row_slots: &[u16], positions: &[Option<u32>]) -> Option<u32> {
        let mut at = 0usize;
        // Children come after their parent (checked), so a walk takes fewer than `nodes.len()` steps.
        for _ in 0..self.nodes.len() {
            match self.nodes.get(at)? {
                GrowNode::Open => return positions.get(at).copied().flatten(),
                GrowNode::Done(Node::Leaf { .. }) => return None,
                GrowNode::Done(Node::Split { feature, bin_split, default_left, left, right, .. }) => {
                    let slot = row_slots.get(*feature as usize).copied().unwrap_or(MISSING_SLOT);
                    // Slot b + 1 holds bin b; bins below `bin_split` go left (`x < cuts[bin_split − 1]`).
                    let go_left = if slot == MISSING_SLOT { *default_left } else { slot <= *bin_split };
                    at = if go_left { *left } else { *right } as usize;
                }
            }
        }
        None
    }

    /// Checks a tree received from elsewhere against the feature set: sampled features exist,
    /// ascending, at least one; splits name existing features, valid bins and children after
    /// them; the frontier lists exactly the open nodes, in node order.
    pub fn check(&self, set: &FeatureSet) -> Result<(), GbdtError> {
        let bad = |why: String| Err(GbdtError::Model(format!("growing tree {}: {why}", self.index)));
        if self.features.is_empty() {
            return bad("samples no feature".into());
        }
        if self.features.windows(2).any(|w| w[0] >= w[1]) || self.features.iter().any(|&f| f >= set.len()) {
            return bad("its feature sample is not ascending indices into the feature set".into());
        }
        if self.nodes.is_empty() {
            return bad("has no nodes".into());
        }
        let mut open = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                GrowNode::Open => open.push(i as u32),
                GrowNode::Done(Node::Split { feature, threshold, bin_split, left, right, .. }) => {
                    let child_ok = |c: u32| (c as usize) > i && (c as usize) < self.nodes.len();
                    let cuts = set.features.get(*feature as usize).map(|f| f.cuts());
                    let bin_ok = cuts.is_some_and(|c| *bin_split >= 1 && (*bin_split as usize) <= c.len() && c[*bin_split as usize - 1] == *threshold);
                    if !bin_ok || !child_ok(*left) || !child_ok(*right) || left == right {
                        return bad(format!("node {i} is not a valid split"));
                    }
                }
                GrowNode::Done(Node::Leaf { .. }) => {}
            }
        }
        if open != self.frontier {
            return bad("its frontier does not list its open nodes in order".into());
        }
        if self.sent.windows(2).any(|w| w[0] >= w[1]) || self.sent.iter().any(|n| !self.frontier.contains(n)) {
            return bad("the nodes it asks histograms for are not open nodes in order".into());
        }
        Ok(())
    }

    /// Decides every frontier node from the level's summed histograms (see the module docs).
    /// At the root, fails with [`GbdtError::LeafFloor`] when the federation has fewer rows than
    /// `min_leaf_rows`.
    pub fn apply_level(&mut self, summed: &[f64], set: &FeatureSet, params: &GrowParams) -> Result<(), GbdtError> {
        self.check(set)?;
        let layout = self.layout(set);
        let expected = layout.vector_len(self.sent.len());
        if summed.len() != expected {
            return Err(GbdtError::Length { what: "summed level histograms", found: summed.len(), expected });
        }
        if summed.iter().any(|v| !v.is_finite()) {
            return Err(GbdtError::NotFinite);
        }
        let blocks = self.frontier_blocks(summed, layout.node_len)?;
        let floor = params.min_leaf_rows as f64 - COUNT_SLACK;
        let child_depth = self.depth + 1;
        let mut next = Vec::new();
        let (mut sent, mut derived) = (Vec::new(), Vec::new());
        for (&node, block) in self.frontier.clone().iter().zip(&blocks) {
            let block = block.as_slice();
            // Every feature's slots hold all the node's rows, so each feature's total is the
            // node's; under DP noise they differ, and their mean is the least noisy estimate.
            let total = node_total(&layout, block);
            if self.depth == 0 && total.n < floor {
                return Err(GbdtError::LeafFloor { rows: total.n, floor: params.min_leaf_rows });
            }
            let is_derived = self.derived.iter().any(|d| d.node == node);
            let sd = if is_derived { self.noise_sd * std::f64::consts::SQRT_2 } else { self.noise_sd };
            let best = if self.depth < params.max_depth { best_split_noisy(&layout, block, set, params, sd) } else { None };
            let decided = match best {
                Some(split) if split.loss_chg > params.gamma && split.loss_chg > MIN_LOSS_CHG => {
                    let left = self.nodes.len() as u32;
                    for side in [split.left, split.right] {
                        if child_depth >= params.max_depth {
                            self.nodes.push(GrowNode::Done(leaf(side, params)));
                        } else {
                            next.push(self.nodes.len() as u32);
                            self.nodes.push(GrowNode::Open);
                        }
                    }
                    if child_depth < params.max_depth {
                        // The child with fewer rows is sent; its sibling is derived.
                        let (small, large) = if split.left.n <= split.right.n { (left, left + 1) } else { (left + 1, left) };
                        sent.push(small);
                        derived.push(Derived { node: large, sibling: small, parent: block.to_vec() });
                    }
                    Node::Split {
                        feature: split.feature as u32,
                        threshold: split.threshold,
                        bin_split: split.bin_split,
                        default_left: split.default_left,
                        left,
                        right: left + 1,
                        gain: split.loss_chg,
                        cover: total.h,
                    }
                }
                _ => leaf(total, params),
            };
            self.nodes[node as usize] = GrowNode::Done(decided);
        }
        sent.sort_unstable();
        self.frontier = next;
        self.sent = sent;
        self.derived = derived;
        self.depth = child_depth;
        Ok(())
    }

    /// Every frontier node's summed block, in frontier order: a sent node's from the level's
    /// vector, a derived node's as its parent's minus its sibling's.
    fn frontier_blocks(&self, summed: &[f64], node_len: usize) -> Result<Vec<Vec<f64>>, GbdtError> {
        let block_of = |node: u32| {
            self.sent.iter().position(|&n| n == node).map(|p| &summed[p * node_len..(p + 1) * node_len])
        };
        self.frontier
            .iter()
            .map(|&node| {
                if let Some(block) = block_of(node) {
                    return Ok(block.to_vec());
                }
                let d = self.derived.iter().find(|d| d.node == node).ok_or_else(|| {
                    GbdtError::Model(format!("growing tree {}: node {node} is neither sent nor derivable", self.index))
                })?;
                let sibling = block_of(d.sibling).ok_or_else(|| GbdtError::Model(format!("growing tree {}: node {node}'s sibling was not sent", self.index)))?;
                let mut block: Vec<f64> = d.parent.iter().zip(sibling).map(|(p, c)| p - c).collect();
                // A slot without rows has no gradient: counts subtract exactly, G and H leave
                // rounding residue that would let noise pick between equivalent splits.
                for slot in block.chunks_exact_mut(crate::hist::STATS) {
                    if slot[2] < COUNT_SLACK {
                        slot.fill(0.0);
                    }
                }
                Ok(block)
            })
            .collect()
    }

    /// The finished tree (None while nodes are open).
    pub fn finish(&self) -> Option<Tree> {
        if !self.frontier.is_empty() {
            return None;
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| match n {
                GrowNode::Done(node) => Some(node.clone()),
                GrowNode::Open => None,
            })
            .collect::<Option<Vec<Node>>>()?;
        Some(Tree { nodes })
    }

    /// The tree as JSON, as it travels with a level's task.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a tree sent as JSON and checks it against the feature set ([`GrowingTree::check`]).
    pub fn from_json(bytes: &[u8], set: &FeatureSet) -> Result<Self, GbdtError> {
        let tree: Self = serde_json::from_slice(bytes).map_err(|e| GbdtError::Model(e.to_string()))?;
        tree.check(set)?;
        Ok(tree)
    }
}

/// Σ gradient, Σ hessian and rows of a set of rows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GradSums {
    /// Σ gradient.
    pub g: f64,
    /// Σ hessian.
    pub h: f64,
    /// Rows (summed counts).
    pub n: f64,
}

/// Sums of histogram slots in fixed point (2⁻⁶⁴ resolution, i128), so a side's sums depend on
/// which slots it holds, not on the order they were added in. Candidates that split the node's
/// rows the same way (through empty bins, or "missing vs the rest" seen from either side) then
/// get bit-identical gains and the tie-break decides, whichever way the rows were spread over
/// banks; floating-point sums would let last-bit noise pick between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ExactSums {
    g: i128,
    h: i128,
    n: i128,
}

/// 2⁶⁴: the fixed-point scale of [`ExactSums`] (histogram sums stay far below 2⁶³ in magnitude).
const EXACT_SCALE: f64 = 18_446_744_073_709_551_616.0;

impl ExactSums {
    fn add(self, s: &[f64]) -> Self {
        // `as` saturates; the sums were checked finite.
        let q = |x: f64| (x * EXACT_SCALE).round() as i128;
        Self { g: self.g + q(s[0]), h: self.h + q(s[1]), n: self.n + q(s[2]) }
    }

    fn plus(self, o: Self) -> Self {
        Self { g: self.g + o.g, h: self.h + o.h, n: self.n + o.n }
    }

    fn minus(self, o: Self) -> Self {
        Self { g: self.g - o.g, h: self.h - o.h, n: self.n - o.n }
    }

    fn to_sums(self) -> GradSums {
        GradSums { g: self.g as f64 / EXACT_SCALE, h: self.h as f64 / EXACT_SCALE, n: self.n as f64 / EXACT_SCALE }
    }
}

/// The best split candidate of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitCandidate {
    /// Feature index into the set.
    pub feature: usize,
    /// Bins `0..bin_split` go left.
    pub bin_split: u16,
    /// `cuts[bin_split − 1]`.
    pub threshold: f32,
    /// Where missing values go.
    pub default_left: bool,
    /// XGBoost's `loss_chg`.
    pub loss_chg: f64,
    /// The left child's sums.
    pub left: GradSums,
    /// The right child's sums.
    pub right: GradSums,
}

fn exact_total(layout: &HistLayout, block: &[f64], i: usize) -> ExactSums {
    (0..layout.slots[i]).fold(ExactSums::default(), |acc, s| acc.add(layout.stats(block, i, s)))
}

/// The node's sums: the mean of its sampled features' totals. Exact sums make them all equal
/// and the integer mean returns them bit for bit; noisy sums (a DP job's) average out.
fn node_total(layout: &HistLayout, block: &[f64]) -> GradSums {
    let n = layout.slots.len().max(1) as i128;
    let sum = (0..layout.slots.len()).fold(ExactSums::default(), |acc, i| acc.plus(exact_total(layout, block, i)));
    ExactSums { g: sum.g / n, h: sum.h / n, n: sum.n / n }.to_sums()
}

/// XGBoost's `CalcGain` without L1 or `max_delta_step`: G²/(H+λ) (no ½).
fn calc_gain(s: GradSums, lambda: f64) -> f64 {
    s.g * s.g / (s.h + lambda)
}

/// XGBoost's leaf weight `−G/(H+λ)` (0 where the hessian is below `min_child_weight` or not
/// positive), times the shrinkage, as the `f32` XGBoost stores.
fn leaf(s: GradSums, params: &GrowParams) -> Node {
    let weight = if s.h < params.min_child_weight || s.h <= 0.0 { 0.0 } else { -s.g / (s.h + params.lambda) };
    Node::Leaf { value: (params.eta * weight) as f32, cover: s.h }
}

/// The highest-`loss_chg` valid split of one node's block, ties to the lowest feature, then the
/// lowest boundary, then missing-right (the scan order, replacing only on a strictly higher gain).
///
/// A candidate's gain is against its own feature's total, of which its two sides are a
/// partition: exact sums make that `total`; with a DP job's noisy sums, where features' totals
/// differ, comparing against one shared total would favour the features whose noise made their
/// total small. Sides with too little hessian (H < `min_child_weight`, H + λ ≤ 0) or too few
/// (noisy) rows are not candidates.
pub fn best_split(layout: &HistLayout, block: &[f64], _total: GradSums, set: &FeatureSet, params: &GrowParams) -> Option<SplitCandidate> {
    best_split_noisy(layout, block, set, params, 0.0)
}

/// [`best_split`] on sums whose entries carry noise of standard deviation `sd` (see
/// [`GrowingTree::set_noise`]; 0: exact).
fn best_split_noisy(layout: &HistLayout, block: &[f64], set: &FeatureSet, params: &GrowParams, sd: f64) -> Option<SplitCandidate> {
    let floor = params.min_leaf_rows as f64 - COUNT_SLACK;
    // `slots`: how many slots the side sums (its hessian's noise grows with their root).
    let valid = |s: GradSums, slots: usize| {
        s.h >= params.min_child_weight + NOISE_Z * sd * (slots as f64).sqrt() && s.n >= floor && s.h + params.lambda > 0.0
    };
    let mut best: Option<SplitCandidate> = None;
    for (i, &feature) in layout.features.iter().enumerate() {
        let Some(cuts) = set.features.get(feature).map(|f| f.cuts()) else { continue };
        if layout.slots[i] != cuts.len() + 2 {
            continue;
        }
        let own_total = exact_total(layout, block, i);
        let parent_gain = calc_gain(own_total.to_sums(), params.lambda);
        let missing = ExactSums::default().add(layout.stats(block, i, MISSING_SLOT as usize));
        let mut prefix = ExactSums::default();
        for k in 1..=cuts.len() {
            // Bins 0..k are slots 1..=k.
            prefix = prefix.add(layout.stats(block, i, k));
            for default_left in [false, true] {
                let left_exact = if default_left { prefix.plus(missing) } else { prefix };
                let (left, right) = (left_exact.to_sums(), own_total.minus(left_exact).to_sums());
                let left_slots = k + usize::from(default_left);
                if !valid(left, left_slots) || !valid(right, layout.slots[i] - left_slots) {
                    continue;
                }
                let loss_chg = calc_gain(left, params.lambda) + calc_gain(right, params.lambda) - parent_gain;
                if best.is_none_or(|b| loss_chg > b.loss_chg) {
                    best = Some(SplitCandidate { feature, bin_split: k as u16, threshold: cuts[k - 1], default_left, loss_chg, left, right });
                }
            }
        }
    }
    best
}

/// The features tree `index` may split on: `max(1, round(rate · n))` of `0..n`, drawn from the
/// job's seed and the tree index (every party computes the same sample), ascending.
pub fn column_sample(seed: u64, index: u64, n: usize, rate: f64) -> Vec<usize> {
    if rate >= 1.0 || n == 0 {
        return (0..n).collect();
    }
    let take = ((rate * n as f64).round() as usize).clamp(1, n);
    let mut rng = ChaCha20Rng::from_seed(stream_seed(b"gbdt.colsample\0\0", seed, index));
    let mut chosen = rand::seq::index::sample(&mut rng, n, take).into_vec();
    chosen.sort_unstable();
    chosen
}

/// A ChaCha20 key for one named stream of `(seed, index)`: the name keeps the column sample,
/// the row sample and any later stream apart for the same seed.
pub(crate) fn stream_seed(domain: &[u8; 16], seed: u64, index: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(domain);
    key[16..24].copy_from_slice(&seed.to_le_bytes());
    key[24..32].copy_from_slice(&index.to_le_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{FeatureKind, TreeFeature};
    use crate::{LocalBooster, hist};
    use ndarray::Array2;
    use proptest::prelude::*;

    fn numeric_set(cuts: Vec<Vec<f32>>) -> FeatureSet {
        let features = cuts
            .into_iter()
            .enumerate()
            .map(|(i, c)| TreeFeature { name: format!("f{i}"), column: format!("f{i}"), kind: FeatureKind::Numeric { cuts: c } })
            .collect();
        FeatureSet { features }
    }

    fn params(min_leaf_rows: u64, max_depth: u32) -> GrowParams {
        GrowParams { eta: 0.3, lambda: 1.0, gamma: 0.0, min_child_weight: 0.5, min_leaf_rows, max_depth }
    }

    /// Strictly increasing cuts from positive steps.
    fn cuts_strategy() -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(0.1f32..3.0, 1..6).prop_map(|steps| {
            let mut at = -5.0f32;
            steps.into_iter().map(|s| {
                at += s;
                at
            }).collect()
        })
    }

    /// A value near the cuts: missing, exactly a cut, just beside one, or anywhere.
    fn value_strategy() -> impl Strategy<Value = (u8, usize, f32)> {
        (0u8..5, 0usize..8, -8.0f32..12.0)
    }

    fn value_of(cuts: &[f32], (kind, i, x): (u8, usize, f32)) -> f32 {
        let c = cuts[i % cuts.len()];
        match kind {
            0 => f32::NAN,
            1 => c,
            2 => c - f32::EPSILON * c.abs().max(1.0),
            3 => c + f32::EPSILON * c.abs().max(1.0),
            _ => x,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// (3) Routing on slots reaches the node that `Tree::predict` reaches on the raw values.
        #[test]
        fn route_agrees_with_predict(
            cuts in proptest::collection::vec(cuts_strategy(), 1..4),
            decisions in proptest::collection::vec((0u8..3, 0usize..4, 0usize..8, any::<bool>()), 1..40),
            rows in proptest::collection::vec(proptest::collection::vec(value_strategy(), 4), 1..40),
        ) {
            let set = numeric_set(cuts.clone());
            // Nodes in breadth-first order from the decisions; splits below depth 4.
            let mut nodes: Vec<GrowNode> = vec![GrowNode::Open];
            let mut queue = std::collections::VecDeque::from([(0usize, 0u32)]);
            let mut d = decisions.iter().cycle().take(64);
            while let Some((at, depth)) = queue.pop_front() {
                let Some(&(kind, f, k, default_left)) = d.next() else { break };
                match kind {
                    0 if depth < 4 => {
                        let f = f % cuts.len();
                        let k = k % cuts[f].len() + 1;
                        let left = nodes.len() as u32;
                        nodes.push(GrowNode::Open);
                        nodes.push(GrowNode::Open);
                        queue.push_back((left as usize, depth + 1));
                        queue.push_back((left as usize + 1, depth + 1));
                        nodes[at] = GrowNode::Done(Node::Split {
                            feature: f as u32, threshold: cuts[f][k - 1], bin_split: k as u16, default_left,
                            left, right: left + 1, gain: 1.0, cover: 1.0,
                        });
                    }
                    1 => nodes[at] = GrowNode::Done(Node::Leaf { value: -1.0 - at as f32, cover: 1.0 }),
                    _ => {}
                }
            }
            let frontier: Vec<u32> = (0..nodes.len() as u32).filter(|&i| nodes[i as usize] == GrowNode::Open).collect();
            let tree = GrowingTree { index: 0, features: (0..cuts.len()).collect(), nodes: nodes.clone(), frontier: frontier.clone(), sent: frontier.clone(), depth: 1, derived: Vec::new(), noise_sd: 0.0 };
            prop_assert!(tree.check(&set).is_ok());
            // Open nodes as leaves that name their frontier position.
            let as_tree = Tree {
                nodes: nodes.iter().enumerate().map(|(i, n)| match n {
                    GrowNode::Open => Node::Leaf { value: 1000.0 + frontier.iter().position(|&o| o as usize == i).unwrap_or(0) as f32, cover: 0.0 },
                    GrowNode::Done(n) => n.clone(),
                }).collect(),
            };
            for row in &rows {
                let raw: Vec<f32> = (0..cuts.len()).map(|f| value_of(&cuts[f], row[f])).collect();
                let slots: Vec<u16> = raw.iter().zip(&set.features).map(|(&x, f)| f.slot_of(x)).collect();
                let reached = as_tree.predict(&raw);
                match tree.route(&slots) {
                    Some(p) => prop_assert_eq!(reached, 1000.0 + p as f32),
                    None => prop_assert!(reached < 0.0, "route found no open node, predict reached {}", reached),
                }
            }
        }

        /// (4) Every decided node's split has the largest gain over all candidate splits computed
        /// directly from the node's rows (or the node is a leaf when none is worth making).
        #[test]
        fn chosen_split_is_the_brute_force_best(
            cuts in proptest::collection::vec(cuts_strategy(), 1..4),
            rows in proptest::collection::vec((proptest::collection::vec(value_strategy(), 4), any::<bool>(), -1.0f64..1.0), 20..120),
            min_leaf_rows in 1u64..12,
            gamma in prop_oneof![Just(0.0), 0.0f64..2.0],
        ) {
            let set = numeric_set(cuts.clone());
            let nf = cuts.len();
            let raw = Array2::from_shape_fn((rows.len(), nf), |(r, f)| value_of(&cuts[f], rows[r].0[f]));
            let labels: Vec<f32> = rows.iter().map(|r| if r.1 { 1.0 } else { 0.0 }).collect();
            let mut bank = LocalBooster::new(&set, raw.clone(), labels, 0.0, 1.5);
            for (m, r) in bank.margins.iter_mut().zip(&rows) {
                *m = r.2;
            }
            let mut p = params(min_leaf_rows, 3);
            p.gamma = gamma;
            let (grad, hess) = bank.gradients();
            let mut tree = GrowingTree::new(0, (0..nf).collect());
            while !tree.is_done() {
                // Every open node's rows, sent or derived (routing by frontier position).
                let mut every_open = vec![None; tree.nodes.len()];
                for (p, &n) in tree.frontier.iter().enumerate() {
                    every_open[n as usize] = Some(p as u32);
                }
                let reach: Vec<Option<u32>> = (0..rows.len()).map(|r| tree.route_with(&bank.slots.row(r).to_vec(), &every_open)).collect();
                let frontier = tree.frontier.clone();
                let h = bank.level_histograms(&set, &tree, 1.0, 0);
                tree.apply_level(&h, &set, &p).expect("level");
                for (pos, &node) in frontier.iter().enumerate() {
                    let mine: Vec<usize> = (0..rows.len()).filter(|&r| reach[r] == Some(pos as u32)).collect();
                    let sums = |rs: &mut dyn Iterator<Item = usize>| rs.fold(GradSums::default(), |a, r| GradSums { g: a.g + grad[r], h: a.h + hess[r], n: a.n + 1.0 });
                    let total = sums(&mut mine.iter().copied());
                    let mut brute = f64::NEG_INFINITY;
                    for f in 0..nf {
                        for &c in &cuts[f] {
                            for default_left in [false, true] {
                                let goes_left = |r: usize| { let x = raw[[r, f]]; if x.is_nan() { default_left } else { x < c } };
                                let left = sums(&mut mine.iter().copied().filter(|&r| goes_left(r)));
                                let right = sums(&mut mine.iter().copied().filter(|&r| !goes_left(r)));
                                let ok = |s: GradSums| s.h >= p.min_child_weight && s.n >= min_leaf_rows as f64;
                                if ok(left) && ok(right) {
                                    brute = brute.max(calc_gain(left, p.lambda) + calc_gain(right, p.lambda) - calc_gain(total, p.lambda));
                                }
                            }
                        }
                    }
                    let depth_allows = tree.depth - 1 < p.max_depth;
                    match &tree.nodes[node as usize] {
                        GrowNode::Done(Node::Split { gain, cover, .. }) => {
                            prop_assert!(depth_allows);
                            prop_assert!((gain - brute).abs() <= 1e-9 * brute.abs().max(1.0), "chosen {} brute {}", gain, brute);
                            prop_assert!(*gain > gamma);
                            prop_assert!((cover - total.h).abs() < 1e-9);
                        }
                        GrowNode::Done(Node::Leaf { value, cover }) => {
                            prop_assert!(!(brute > gamma && brute > MIN_LOSS_CHG), "leaf although a split gains {}", brute);
                            prop_assert!((cover - total.h).abs() < 1e-9);
                            let w = if total.h < p.min_child_weight { 0.0 } else { -total.g / (total.h + p.lambda) };
                            prop_assert!((f64::from(*value) - p.eta * w).abs() < 1e-6);
                        }
                        GrowNode::Open => prop_assert!(false, "a frontier node stayed open"),
                    }
                }
            }
            let finished = tree.finish().expect("finished");
            prop_assert!(finished.depth() <= p.max_depth);
        }

        /// Column samples: the right size, distinct, ascending, reproducible, seed-dependent.
        #[test]
        fn column_sample_is_a_reproducible_subset(seed in any::<u64>(), index in 0u64..1000, n in 1usize..60, rate in 0.01f64..1.2) {
            let s = column_sample(seed, index, n, rate);
            let want = if rate >= 1.0 { n } else { ((rate * n as f64).round() as usize).clamp(1, n) };
            prop_assert_eq!(s.len(), want);
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|&f| f < n));
            prop_assert_eq!(&s, &column_sample(seed, index, n, rate));
        }
    }

    #[test]
    fn column_samples_differ_between_trees() {
        let samples: std::collections::BTreeSet<Vec<usize>> = (0..20).map(|i| column_sample(7, i, 30, 0.5)).collect();
        assert!(samples.len() > 15);
    }

    #[test]
    fn the_root_refuses_a_federation_below_the_leaf_floor_and_bad_vectors() {
        let set = numeric_set(vec![vec![0.0, 1.0]]);
        let mut tree = GrowingTree::new(0, vec![0]);
        let layout = tree.layout(&set);
        let slots = Array2::from_shape_vec((3, 1), vec![1u16, 2, 3]).expect("shape");
        let h = hist::build(&layout, slots.view(), &[0.1, 0.2, -0.3], &[0.25; 3], &[Some(0); 3], 1);
        let e = tree.apply_level(&h, &set, &params(50, 3)).expect_err("floor");
        assert!(matches!(e, GbdtError::LeafFloor { rows, floor: 50 } if rows == 3.0), "{e}");
        let e = tree.apply_level(&h[1..], &set, &params(1, 3)).expect_err("length");
        assert!(matches!(e, GbdtError::Length { .. }));
        let mut bad = h.clone();
        bad[4] = f64::INFINITY;
        assert!(matches!(tree.apply_level(&bad, &set, &params(1, 3)), Err(GbdtError::NotFinite)));
        // A count just under the floor from fixed-point rounding still meets it.
        let mut rounded = h.clone();
        rounded.iter_mut().skip(2).step_by(3).for_each(|n| *n -= 1.0 / 65536.0);
        tree.apply_level(&rounded, &set, &params(3, 3)).expect("meets the floor");
        assert!(tree.finish().is_some(), "three rows cannot be split into children of three");
    }

    #[test]
    fn noisy_sums_with_negative_hessians_and_counts_give_no_invalid_split_and_zero_leaves() {
        // What a DP job's sums can look like: two features over 40 rows, then every H and count
        // pushed far below zero in some slots and up in others (noise), G arbitrary.
        let set = numeric_set(vec![vec![0.0, 1.0, 2.0], vec![5.0]]);
        let layout = GrowingTree::new(0, vec![0, 1]).layout(&set);
        let rows = 40;
        let slots = Array2::from_shape_fn((rows, 2), |(r, f)| if f == 0 { (r % 4 + 1) as u16 } else { (r % 2 + 1) as u16 });
        let grad: Vec<f64> = (0..rows).map(|r| if r % 4 < 2 { -0.5 } else { 0.5 }).collect();
        let exact = hist::build(&layout, slots.view(), &grad, &[0.25; 40], &[Some(0); 40], 1);
        let noise = |i: usize| ((i * 7919) % 23) as f64 - 11.0;
        let mut noisy: Vec<f64> = exact.iter().enumerate().map(|(i, v)| v + 3.0 * noise(i)).collect();
        for (k, slot) in noisy.chunks_exact_mut(3).enumerate() {
            if k % 2 == 0 {
                slot[1] -= 100.0;
                slot[2] -= 100.0;
            }
        }
        let p = GrowParams { min_child_weight: 1.0, ..params(5, 2) };
        let mut tree = GrowingTree::new(0, vec![0, 1]);
        // The root floor reads the noisy counts; a floor of 5 rows is not met by counts this
        // negative, which is the post-processed answer, not a crash.
        let _ = tree.apply_level(&noisy, &set, &p);
        // Every candidate split either has valid sides or is not taken.
        let total = node_total(&layout, &noisy);
        if let Some(split) = best_split(&layout, &noisy, total, &set, &p) {
            for side in [split.left, split.right] {
                assert!(side.h >= p.min_child_weight && side.h + p.lambda > 0.0 && side.n >= 5.0 - COUNT_SLACK, "{split:?}");
            }
        }
        // All hessians negative: the root is a leaf of value 0 (no division by H + λ ≤ 0).
        let all_negative: Vec<f64> = exact.chunks_exact(3).flat_map(|s| [s[0] + 1.0, -50.0, 60.0]).collect();
        let mut tree = GrowingTree::new(0, vec![0, 1]);
        tree.apply_level(&all_negative, &set, &p).expect("decided");
        let t = tree.finish().expect("a single leaf");
        assert!(matches!(t.nodes[..], [Node::Leaf { value, .. }] if value == 0.0), "{t:?}");
    }

    #[test]
    fn under_stated_noise_a_side_whose_hessian_the_noise_could_have_made_is_no_candidate() {
        // One feature, three bins. Bin 1 holds noise only (G = 30, H = 1.5, 60 "rows"): as a side
        // it scores 30²/2.5 = 360, far above the real split between bins 2 and 3 (G ±20, H 25).
        let set = numeric_set(vec![vec![0.0, 1.0]]);
        let layout = GrowingTree::new(0, vec![0]).layout(&set);
        let block = [0.0, 0.0, 0.0, 30.0, 1.5, 60.0, -20.0, 25.0, 100.0, 20.0, 25.0, 100.0];
        let p = params(10, 2);
        let total = node_total(&layout, &block);
        let exact = best_split(&layout, &block, total, &set, &p).expect("a split");
        assert_eq!((exact.bin_split, exact.default_left), (1, false), "{exact:?}");
        // With noise of standard deviation 2 per entry, a side must clear 2 · 2 · √slots of hessian.
        let noisy = best_split_noisy(&layout, &block, &set, &p, 2.0).expect("a split");
        assert_eq!(noisy.bin_split, 2, "{noisy:?}");
        // The tree applies the stated noise; a new tree states none.
        let mut tree = GrowingTree::new(0, vec![0]);
        tree.set_noise(2.0);
        tree.apply_level(&block, &set, &p).expect("level");
        assert!(matches!(tree.nodes[0], GrowNode::Done(Node::Split { threshold, .. }) if threshold == 1.0), "{:?}", tree.nodes[0]);
        assert_eq!(GrowingTree::new(0, vec![0]).noise_sd, 0.0);
    }

    #[test]
    fn a_nodes_sums_are_the_mean_of_its_features_totals_and_exact_sums_are_kept_bit_for_bit() {
        let set = numeric_set(vec![vec![0.0], vec![0.0]]);
        let layout = GrowingTree::new(0, vec![0, 1]).layout(&set);
        // Feature 0 says G = 4, feature 1 says G = 8 (noise); H = 10 and 14; rows 20 and 30.
        let block = [0.0, 0.0, 0.0, 1.0, 4.0, 5.0, 3.0, 6.0, 15.0, 0.0, 0.0, 0.0, 8.0, 14.0, 30.0, 0.0, 0.0, 0.0];
        let t = node_total(&layout, &block);
        assert_eq!((t.g, t.h, t.n), (6.0, 12.0, 25.0));
        let mut tree = GrowingTree::new(0, vec![0, 1]);
        tree.apply_level(&block, &set, &params(1, 0)).expect("leaf");
        let leaf = tree.finish().expect("done");
        assert!(matches!(leaf.nodes[..], [Node::Leaf { value, .. }] if value == (0.3 * -6.0 / 13.0) as f32), "{leaf:?}");
        // Equal totals (exact sums on the 2⁻¹⁶ grid) come back unchanged.
        let g = 1234.0 + 3.0 / 65536.0;
        let exact = [0.0, 0.0, 0.0, g, 7.5, 9.0, 0.0, 0.0, 0.0, g - 1.0, 7.0, 8.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0];
        let t = node_total(&layout, &exact);
        assert_eq!((t.g, t.h, t.n), (g, 7.5, 9.0));
    }

    #[test]
    fn a_growing_tree_travels_as_checked_json() {
        let set = numeric_set(vec![vec![0.0, 1.0]]);
        let tree = GrowingTree::new(4, vec![0]);
        assert_eq!(GrowingTree::from_json(&tree.to_json(), &set).expect("reads"), tree);
        let bad = GrowingTree::new(4, vec![3]);
        assert!(matches!(GrowingTree::from_json(&bad.to_json(), &set), Err(GbdtError::Model(_))));
        let mut bad = GrowingTree::new(4, vec![0]);
        bad.frontier = vec![];
        assert!(matches!(GrowingTree::from_json(&bad.to_json(), &set), Err(GbdtError::Model(_))));
        assert!(matches!(GrowingTree::from_json(b"{", &set), Err(GbdtError::Model(_))));
    }
}
