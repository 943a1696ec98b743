//! Benchmarks for Confide. Shared setup code lives here (one module per benchmarked crate); the
//! criterion benches are in `benches/`, one-shot timing binaries in `src/bin/`, and measured
//! numbers in `RESULTS.md`.

pub mod comparison;
pub mod dp;
pub mod federation;
pub mod gbdt;
pub mod secagg;
pub mod sim;
pub mod speed;
