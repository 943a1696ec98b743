//! What the coordinator parses from the Admin API: a job file and a dataset schema (TOML).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (job, schema) = text.split_once("\u{0}").unwrap_or((text, text));
    if let Ok(spec) = confide_core::job::JobSpec::from_toml(job) {
        assert!(spec.validate().is_ok());
    }
    if let Ok(schema) = confide_datasets::DatasetSchema::parse(schema, "fuzz") {
        let _ = schema.fingerprint();
        let _ = confide_datasets::stats_len(&schema);
    }
});
