//! An honest bank: the worker's real `TaskMachine` with [`crate::fixture::FakeCompute`] behind
//! it, secure aggregation included. (Filled in once the worker's core lands.)
