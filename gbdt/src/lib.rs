//! Federated gradient-boosted decision trees (horizontal, histogram-based), as pure functions
//! and values: nothing here does I/O, reads a clock or draws OS randomness.
//!
//! How a `gbdt` job runs (the coordinator's job machine and the worker's tasks drive it):
//! 1. **Federated binning** ([`features`]): with the preprocessing statistics every bank sends
//!    a fine histogram of each numeric column over the schema's declared range; the securely
//!    summed histograms give quantile cut points ([`FeatureSet::from_fine_histograms`]), so no
//!    cut comes from one bank's values. Categorical columns become one indicator feature per
//!    level (one-hot splits).
//! 2. **Level-wise growth** ([`grow`]): for each level of a tree every bank builds gradient,
//!    hessian and row-count histograms for all open nodes × sampled features × bins
//!    ([`hist`], [`LocalBooster::level_histograms`]); the federation securely sums them and the
//!    coordinator picks every open node's split from the sums ([`GrowingTree::apply_level`]),
//!    with XGBoost's gain (λ, γ, `min_child_weight`), a learned default direction for missing
//!    values, and a floor on rows per child summed over banks (`min_leaf_rows`). Leaf values
//!    come from summed G and H.
//! 3. The committed ensemble ([`GbdtModel`]) is the job's checkpoint (JSON), scored by banks
//!    for evaluation and exported as XGBoost JSON and ONNX (`confide-export`).
//!
//! [`train`] runs the same steps over in-process banks (histograms summed in memory): the
//! reference the tests compare the federation against, and the benches' local-only baseline.

pub mod features;
pub mod grow;
pub mod hist;
pub mod train;
pub mod tree;

pub use features::{FeatureKind, FeatureSet, TreeFeature};
pub use grow::{GrowParams, GrowingTree, column_sample};
pub use hist::HistLayout;
pub use train::{LocalBooster, train_in_process};
pub use tree::{FeatureImportance, GbdtModel, Node, Tree};

/// Why a tree step cannot go on. Messages name what is wrong, never a bank's values.
#[derive(Debug, thiserror::Error)]
pub enum GbdtError {
    /// A summed vector does not have the length its layout needs.
    #[error("{what} has {found} values, expected {expected}")]
    Length {
        /// Which vector.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The layout's length.
        expected: usize,
    },
    /// A numeric column has no declared `range` (federated binning needs one).
    #[error("column `{0}` has no declared range; gbdt's federated binning needs `range = [low, high]` on every numeric column")]
    Unranged(String),
    /// The federation has fewer rows than a leaf must describe.
    #[error("the federation's {rows} training rows cannot meet the leaf floor min_leaf_rows = {floor}")]
    LeafFloor {
        /// Rows summed over the banks (the root's count).
        rows: f64,
        /// `min_leaf_rows`.
        floor: u64,
    },
    /// A summed histogram holds a non-finite value.
    #[error("the summed histograms hold a value that is not finite")]
    NotFinite,
    /// A stored or received model cannot be read.
    #[error("tree model: {0}")]
    Model(String),
    /// The rows do not match the model's features.
    #[error("data: {0}")]
    Data(String),
}
