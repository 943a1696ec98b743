//! Custom models end to end: a data-science team scripts a wide-and-deep network in Python
//! (`examples/custom_model/make_model.py`), submits it with the CLI, and three bank workers
//! train its parameters federatedly under secure aggregation. Its AUC is compared with the
//! built-in MLP on the same banks, rounds and optimizer; banks that have not allowed custom code
//! (or pinned another module) refuse it, and unusable files are refused at submission.

use std::time::Duration;

use confide_core::model::ModelParams;
use confide_e2e::{Cluster, partition_telco, script_custom_model, telco, telco_job};

const ROUNDS: u64 = 8;

/// The Telco schema's encoded width, as `confide schema width` prints it for the team.
fn telco_width(cluster: &Cluster) -> usize {
    let (_, schema) = telco();
    let out = cluster.confide(&["schema", "width", schema.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a width")
}

/// The `[model]` table of a custom model scripted into `dir` (relative to the job file).
fn custom_model(dir: &str) -> String {
    format!("kind = \"torchscript\"\nmodule = \"{dir}/model.pt\"\nparameters = \"{dir}/init.safetensors\"")
}

/// A bank's policy lines: which kinds it allows and which module hashes it pins.
/// A bank policy table; these banks share their refusal reasons, which the test reads.
fn policy(kinds: &[&str], pins: &[&str]) -> String {
    format!("[policy]\nallowed_models = {kinds:?}\nallowed_torchscript_sha256 = {pins:?}\nshare_error_details = true\n")
}

fn final_auc(job: &serde_json::Value) -> f64 {
    job["rounds"].as_array().and_then(|r| r.last()).and_then(|r| r["metrics"]["auc"].as_f64()).expect("auc")
}

fn mean_round_secs(job: &serde_json::Value) -> f64 {
    let rounds = job["rounds"].as_array().expect("rounds");
    rounds.iter().filter_map(|r| r["duration_secs"].as_f64()).sum::<f64>() / rounds.len() as f64
}

#[test]
fn a_scripted_module_trains_federatedly_and_matches_the_builtin_mlp() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 42);
    let width = telco_width(&cluster);
    let hash = script_custom_model(&cluster.dir.path().join("custom"), width, &["--hidden", "32"]);
    for bank in ["bank1", "bank2", "bank3"] {
        cluster.add_telco_worker_with_config(bank, &partition, &policy(&["mlp", "torchscript"], &[&hash]), &[]);
    }
    cluster.wait_workers(3, Duration::from_secs(30));

    let custom = cluster.submit(&telco_job("custom-e2e", &custom_model("custom"), ROUNDS, ""));
    let mlp = cluster.submit(&telco_job("mlp-e2e", "kind = \"mlp\"\nhidden = [32]", ROUNDS, ""));
    let custom_done = cluster.wait_finished(&custom, Duration::from_secs(300));
    let mlp_done = cluster.wait_finished(&mlp, Duration::from_secs(300));
    assert_eq!(custom_done["status"], "completed", "{custom_done:#}\n{}", cluster.logs());
    assert_eq!(mlp_done["status"], "completed", "{mlp_done:#}");
    for r in custom_done["rounds"].as_array().expect("rounds") {
        let contributed = r["participants"].as_array().map(|ps| ps.iter().filter(|p| p["status"] == "contributed").count());
        assert_eq!(contributed, Some(3), "every bank trains the custom model: {r:#}");
    }
    assert_eq!(custom_done["spec"]["model"]["module_sha256"], hash.as_str(), "the stored job names the module by hash");
    let text = String::from_utf8_lossy(&cluster.confide(&["job", "get", &custom]).stdout).to_string();
    assert!(text.contains(&format!("module   torchscript {hash}")), "{text}");

    let (custom_auc, mlp_auc) = (final_auc(&custom_done), final_auc(&mlp_done));
    println!(
        "after {ROUNDS} rounds on 3 banks: custom wide-and-deep AUC {custom_auc:.4} ({:.2} s/round), built-in mlp[32] AUC {mlp_auc:.4} ({:.2} s/round)",
        mean_round_secs(&custom_done),
        mean_round_secs(&mlp_done)
    );
    assert!(custom_auc > 0.8, "the custom model learned churn: {custom_auc:.4}");
    assert!(custom_auc >= mlp_auc - 0.01, "custom {custom_auc:.4} is comparable to the built-in MLP {mlp_auc:.4}");

    // The trained global model comes back under the module's own parameter names.
    let pulled = cluster.dir.path().join("custom-global.safetensors");
    let out = cluster.confide(&["model", "pull", &custom, "-o", pulled.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let global = ModelParams::read_safetensors_any(&std::fs::read(&pulled).expect("pulled")).expect("global");
    let init = ModelParams::read_safetensors_any(&std::fs::read(cluster.dir.path().join("custom/init.safetensors")).expect("init"))
        .expect("init");
    assert_eq!(global.layout, init.layout);
    assert_ne!(global.values, init.values, "training moved the parameters");

    // The automatic export holds the same trained parameters under the module's names, and the
    // CLI refuses to generate a graph from the owner's code.
    assert!(custom_done["export_error"].is_null(), "{custom_done:#}");
    let export_dir = custom_done["export_dir"].as_str().expect("exported on completion");
    let exported = std::fs::read(std::path::Path::new(export_dir).join("model.safetensors")).expect("exported weights");
    assert_eq!(ModelParams::read_safetensors_any(&exported).expect("weights").values, global.values);
    let onnx = cluster.confide(&["model", "export", &custom, "--format", "onnx", "-o", cluster.dir.path().join("x").to_str().expect("utf-8")]);
    assert_eq!(onnx.status.code(), Some(2), "{}", String::from_utf8_lossy(&onnx.stderr));
}

#[test]
fn banks_refuse_custom_code_they_have_not_allowed_and_bad_files_are_refused_at_submission() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 5, 5);
    let width = telco_width(&cluster);
    let hash = script_custom_model(&cluster.dir.path().join("custom"), width, &["--hidden", "8"]);
    for bank in ["bank1", "bank2", "bank3"] {
        cluster.add_telco_worker_with_config(bank, &partition, &policy(&["torchscript"], &[]), &[]);
    }
    cluster.add_telco_worker_with_config("bank4", &partition, "[policy]\nshare_error_details = true\n", &[]);
    cluster.add_telco_worker_with_config("bank5", &partition, &policy(&["torchscript"], &[&"0".repeat(64)]), &[]);
    cluster.wait_workers(5, Duration::from_secs(30));

    let job = cluster.submit(&telco_job("custom-policy", &custom_model("custom"), 2, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let outcome = |bank: &str| {
        done["rounds"][1]["participants"].as_array().and_then(|ps| ps.iter().find(|p| p["worker_id"] == bank).cloned()).expect("selected")
    };
    assert_eq!(outcome("bank1")["status"], "contributed");
    let (bank4, bank5) = (outcome("bank4"), outcome("bank5"));
    assert_eq!(bank4["status"], "refused", "{bank4:#}");
    assert!(bank4["reason"].as_str().unwrap_or("").contains("allowed_models"), "deny by default: {bank4:#}");
    assert_eq!(bank5["status"], "refused", "{bank5:#}");
    assert!(bank5["reason"].as_str().unwrap_or("").contains(&hash), "another module is pinned: {bank5:#}");

    // A module scripted for another width is refused before any bank sees it ...
    script_custom_model(&cluster.dir.path().join("narrow"), width - 1, &["--hidden", "8"]);
    let path = cluster.dir.path().join("narrow-job.toml");
    std::fs::write(&path, telco_job("narrow", &custom_model("narrow"), 2, "")).expect("job file");
    let out = cluster.confide(&["job", "submit", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "bad input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("built for {} inputs", width - 1)), "{stderr}");

    // ... a missing module is named before anything is sent ...
    let path = cluster.dir.path().join("missing-job.toml");
    std::fs::write(&path, telco_job("missing", &custom_model("nowhere"), 2, "")).expect("job file");
    let out = cluster.confide(&["job", "submit", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "bad input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("field `model.module`") && stderr.contains("nowhere/model.pt"), "{stderr}");

    // ... and NaN initial parameters are refused.
    let init = cluster.dir.path().join("custom/init.safetensors");
    let mut params = ModelParams::read_safetensors_any(&std::fs::read(&init).expect("init")).expect("init");
    params.values[3] = f32::NAN;
    std::fs::write(&init, params.to_safetensors(None)).expect("poisoned init");
    let path = cluster.dir.path().join("nan-job.toml");
    std::fs::write(&path, telco_job("nan", &custom_model("custom"), 2, "")).expect("job file");
    let out = cluster.confide(&["job", "submit", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "bad input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not finite"), "{stderr}");
}
