//! Exports a trained model to the formats serving systems load, without libtorch, so that the
//! coordinator and CLI (which never link tch) can write them.
//!
//! - [`torchscript`]: a TorchScript archive (`torch.jit.load`-able) written directly as a zip of
//!   pickles, TorchScript source and raw tensor storages.

pub mod torchscript;

pub use torchscript::{TorchScriptError, torchscript_archive, write_torchscript};
