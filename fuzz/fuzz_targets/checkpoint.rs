//! What a worker (and `confide model pull`) reads from the network: a safetensors checkpoint,
//! against an expected layout and self-described.
#![no_main]

use confide_core::model::{ModelParams, ModelSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let layout = ModelSpec::Mlp { hidden: vec![4] }.layout(3);
    if let Ok(p) = ModelParams::from_safetensors(data, &layout) {
        assert_eq!(p.values.len(), layout.len());
        assert!(p.values.iter().all(|v| v.is_finite()));
    }
    let _ = ModelParams::read_safetensors_any(data);
});
