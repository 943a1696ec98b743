//! Synthetic datasets (in progress).
