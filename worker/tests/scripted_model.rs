//! Custom models: a module scripted in Python by `examples/custom_model/make_model.py` (run with
//! the project's venv, torch 2.13) is loaded by the worker, trained with the shared local loop
//! on Telco churn, evaluated, and refused when it does not match the job's layout or width.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use confide_core::model::{ModelError, TorchScriptSpec};
use confide_datasets::{DatasetSchema, Encoded, Preprocessing, load_csv, local_stats};
use confide_worker::ml::{
    Classifier, Device, MlError, ModelParams, ModelSpec, Optimizer, ScriptedNet, TrainConfig, build_model,
    evaluate_with, train_model,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Telco, every fifth row held out, encoded with the training rows' preprocessing.
fn telco() -> &'static (Encoded, Encoded) {
    static DATA: OnceLock<(Encoded, Encoded)> = OnceLock::new();
    DATA.get_or_init(|| {
        let schema = DatasetSchema::from_file(root().join("datasets/schemas/telco_churn.toml")).expect("schema");
        let table = load_csv(root().join("../shared/datasets/telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"), &schema)
            .expect("Telco loads");
        let p = Preprocessing::from_aggregate(&schema, &local_stats(&table, &schema)).expect("preprocessing");
        let all = p.encode(&table).expect("encodes");
        let mut parts = [Vec::new(), Vec::new()].map(|f: Vec<f32>| Encoded { features: f, labels: Vec::new(), rows: 0, dim: all.dim });
        for r in 0..all.rows {
            let part = &mut parts[usize::from(r % 5 == 4)];
            part.features.extend_from_slice(&all.features[r * all.dim..(r + 1) * all.dim]);
            part.labels.push(all.labels[r]);
            part.rows += 1;
        }
        let [train, test] = parts;
        (train, test)
    })
}

/// A scripted module and its resolved spec and initial parameters, as the coordinator sees them.
struct Scripted {
    module: Vec<u8>,
    spec: ModelSpec,
    init: ModelParams,
}

/// Runs `make_model.py` for Telco's width, with dropout so training and evaluation modes differ.
fn scripted() -> &'static Scripted {
    static MODEL: OnceLock<Scripted> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let dim = telco().0.dim.to_string();
        let out = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("examples/custom_model/make_model.py"))
            .args(["--input-dim", &dim, "--hidden", "16", "--dropout", "0.1", "--out"])
            .arg(dir.path())
            .output()
            .expect("the project's venv python runs");
        assert!(out.status.success(), "make_model.py: {}", String::from_utf8_lossy(&out.stderr));
        let module = std::fs::read(dir.path().join("model.pt")).expect("model.pt");
        let parameters = std::fs::read(dir.path().join("init.safetensors")).expect("init.safetensors");
        let mut ts = TorchScriptSpec {
            module: "model.pt".into(),
            parameters: "init.safetensors".into(),
            module_sha256: None,
            parameters_sha256: None,
            input_dim: None,
            layout: Default::default(),
        };
        let init = ts.resolve(&module, &parameters).expect("make_model.py writes valid files");
        assert_eq!(ts.input_dim, Some(telco().0.dim));
        Scripted { module, spec: ModelSpec::TorchScript(ts), init }
    })
}

fn cfg(epochs: usize, prox_mu: f64) -> TrainConfig {
    TrainConfig { epochs, batch_size: 64, learning_rate: 0.01, optimizer: Optimizer::Adam, prox_mu, pos_weight: None, seed: 3 }
}

#[test]
fn a_scripted_module_loads_with_its_dotted_parameter_names_and_round_trips_values() {
    let s = scripted();
    let dim = telco().0.dim;
    let net = ScriptedNet::load(&s.module, &s.init, dim, Device::Cpu).expect("loads");
    assert_eq!(net.params().expect("reads back"), s.init, "values go in and come out by layout name");
    assert!(s.init.layout.tensors.iter().any(|t| t.name == "blocks.0.fc.weight"), "nested names keep their dots");
    // Other values load into the same module.
    let mut shifted = s.init.clone();
    shifted.values.iter_mut().for_each(|v| *v += 0.25);
    let net = ScriptedNet::load(&s.module, &shifted, dim, Device::Cpu).expect("loads");
    assert_eq!(net.params().expect("reads back"), shifted);
}

#[test]
fn a_scripted_module_trains_federated_style_and_reaches_a_churn_auc() {
    let (train, test) = telco();
    let s = scripted();
    let mut before = build_model(&s.spec, Some(&s.module), &s.init, train.dim, Device::Cpu).expect("builds");
    let auc_before = evaluate_with(before.as_mut(), test, 10_000, Device::Cpu).expect("evaluates").metrics()["auc"];
    let mut net = build_model(&s.spec, Some(&s.module), &s.init, train.dim, Device::Cpu).expect("builds");
    let out = train_model(net.as_mut(), train, &cfg(5, 0.0), Device::Cpu).expect("trains");
    assert_eq!(out.samples, train.rows);
    assert!(out.epoch_losses.last() < out.epoch_losses.first(), "loss falls: {:?}", out.epoch_losses);
    assert_eq!(out.params.layout, s.init.layout);
    let mut trained = build_model(&s.spec, Some(&s.module), &out.params, train.dim, Device::Cpu).expect("builds");
    let auc = evaluate_with(trained.as_mut(), test, 10_000, Device::Cpu).expect("evaluates").metrics()["auc"];
    println!("scripted wide-and-deep on Telco: AUC {auc_before:.4} before, {auc:.4} after 5 local epochs");
    assert!(auc > 0.82, "the scripted model learns churn: AUC {auc:.4}");

    // Deterministic given the seed (dropout draws from the seeded libtorch generator) ...
    let mut again = build_model(&s.spec, Some(&s.module), &s.init, train.dim, Device::Cpu).expect("builds");
    let repeat = train_model(again.as_mut(), train, &cfg(5, 0.0), Device::Cpu).expect("trains");
    assert_eq!(repeat.params, out.params, "same seed, same parameters");
    // ... and the FedProx term pulls the local model towards the global one.
    let mut prox = build_model(&s.spec, Some(&s.module), &s.init, train.dim, Device::Cpu).expect("builds");
    let anchored = train_model(prox.as_mut(), train, &cfg(5, 10.0), Device::Cpu).expect("trains");
    let drift = |p: &ModelParams| p.values.iter().zip(&s.init.values).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>();
    assert!(drift(&anchored.params) < drift(&out.params), "FedProx keeps the update closer to the global model");
}

#[test]
fn modules_that_do_not_match_the_layout_or_width_are_refused() {
    let s = scripted();
    let dim = telco().0.dim;
    let load = |params: &ModelParams, dim: usize| ScriptedNet::load(&s.module, params, dim, Device::Cpu).map(|_| ());

    let mut renamed = s.init.clone();
    renamed.layout.tensors[0].name = "wider.weight".into();
    assert!(matches!(load(&renamed, dim), Err(MlError::MissingVariable(n)) if n == "wider.weight"));

    let mut missing = s.init.clone();
    let last = missing.layout.tensors.pop().expect("tensors");
    missing.values.truncate(missing.values.len() - last.numel());
    assert!(matches!(load(&missing, dim), Err(MlError::UnexpectedVariable(n)) if n == "head_bias"));

    let mut reshaped = s.init.clone();
    reshaped.layout.tensors[0].shape = vec![dim, 1];
    assert!(matches!(load(&reshaped, dim), Err(MlError::ShapeMismatch { .. })));

    let err = load(&s.init, dim + 1).expect_err("the module was built for another width");
    assert!(matches!(&err, MlError::ScriptedModule(m) if m.contains(&format!("[2, {}]", dim + 1))), "{err}");

    let err = ScriptedNet::load(b"PK\x03\x04 not really", &s.init, dim, Device::Cpu).expect_err("garbage");
    assert!(matches!(&err, MlError::ScriptedModule(m) if m.contains("cannot load")), "{err}");

    let err = build_model(&s.spec, None, &s.init, dim, Device::Cpu).expect_err("no module shipped");
    assert!(matches!(err, MlError::ScriptedModule(_)), "{err}");
    // The coordinator-side check refuses a NaN before any worker sees it.
    let mut nan = s.init.clone();
    nan.values[0] = f32::NAN;
    assert!(matches!(ModelParams::new(nan.layout, nan.values), Err(ModelError::NotFinite { index: 0, .. })));
}
