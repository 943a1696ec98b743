//! The TorchScript archive written by `confide-export` (pure Rust, no libtorch) is loaded by
//! `torch.jit.load` in the project's Python (`.venv/bin/python`, installed by
//! `scripts/setup.sh`) and scores held-out Telco rows exactly as the worker's own libtorch
//! prediction does — from the encoded features (`forward`) and from raw columns through the
//! module's in-archive preprocessing (`categorical_codes` → `predict_raw`). libtorch's C++
//! loader (`torch::jit::load`, through tch), which C++ and JVM serving stacks use, loads it too.
//! A federated job's model exported through `confide model export --format torchscript` and
//! the coordinator's automatic export on completion score the banks' test rows the same way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use confide_core::job::{LocalOptimizer, LocalTraining};
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{ColumnData, DatasetSchema, Encoded, Preprocessing, RawTable};
use confide_e2e::{Cluster, repo_root, telco, telco_job};
use confide_worker::ml;
use serde_json::{Value, json};

/// Rows trained on; the rest of the 7,043 are held out and scored.
const TRAIN_ROWS: usize = 5_000;
const MAX_ABS_DIFF: f64 = 1e-5;

/// Rows `range` of a table.
fn slice(table: &RawTable, range: std::ops::Range<usize>) -> RawTable {
    let mut t = table.clone();
    t.rows = range.len();
    t.labels = table.labels[range.clone()].to_vec();
    for c in &mut t.columns {
        c.data = match &c.data {
            ColumnData::Numeric(v) => ColumnData::Numeric(v[range.clone()].to_vec()),
            ColumnData::Categorical(v) => ColumnData::Categorical(v[range.clone()].to_vec()),
        };
    }
    t
}

/// `table` with one more row whose every feature is missing: the encoding imputes the
/// federation's mean (numeric) and mode (categorical), which the module must do alike.
fn with_all_missing_row(mut table: RawTable) -> RawTable {
    table.rows += 1;
    table.labels.push(0.0);
    for c in &mut table.columns {
        match &mut c.data {
            ColumnData::Numeric(v) => v.push(None),
            ColumnData::Categorical(v) => v.push(None),
        }
    }
    table
}

/// The raw columns of `table` as a serving system holds them: numbers (null = missing) and
/// categorical strings ("" = missing).
fn raw_request(table: &RawTable, schema: &DatasetSchema) -> (Value, Value) {
    let mut numeric = vec![Vec::new(); table.rows];
    let mut categorical = vec![Vec::new(); table.rows];
    for column in &table.columns {
        match &column.data {
            ColumnData::Numeric(values) => {
                for (row, v) in numeric.iter_mut().zip(values) {
                    row.push(json!(v));
                }
            }
            ColumnData::Categorical(codes) => {
                let levels = schema.column(&column.name).expect("schema column").level_names();
                for (row, code) in categorical.iter_mut().zip(codes) {
                    row.push(json!(code.map_or("", |c| levels[c as usize].as_str())));
                }
            }
        }
    }
    (json!(numeric), json!(categorical))
}

/// Runs the Python scorer on `model` and returns its response.
fn score_in_python(dir: &Path, model: &Path, encoded: &Encoded, numeric: Value, categorical: Value) -> Value {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: this test needs Python with torch; run `bash scripts/setup.sh` first",
        python.display()
    );
    let rows: Vec<&[f32]> = encoded.features.chunks(encoded.dim).collect();
    let request = json!({ "encoded": rows, "numeric": numeric, "categorical": categorical });
    let (request_path, response_path) = (dir.join("request.json"), dir.join("response.json"));
    std::fs::write(&request_path, request.to_string()).expect("write request");
    let out = Command::new(&python)
        .arg("-W")
        .arg("ignore")
        .arg(repo_root().join("export/tests/score_torchscript.py"))
        .args([model, &request_path, &response_path])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "torch.jit.load / scoring failed (is torch installed in .venv? `bash scripts/setup.sh`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&response_path).expect("response")).expect("response JSON")
}

/// Loads the archive with libtorch's C++ `torch::jit::load` and runs `forward`.
fn score_in_libtorch(model: &Path, encoded: &Encoded) -> Vec<f32> {
    let module = tch::CModule::load(model).expect("libtorch loads the archive");
    let rows = i64::try_from(encoded.rows).expect("rows");
    let dim = i64::try_from(encoded.dim).expect("dim");
    let x = tch::Tensor::from_slice(&encoded.features).reshape([rows, dim]);
    let probs = tch::no_grad(|| module.forward_ts(&[x])).expect("forward");
    Vec::<f32>::try_from(&probs).expect("float probabilities")
}

fn max_abs_diff(expected: &[f32], found: &Value) -> f64 {
    let found = found.as_array().expect("probabilities");
    assert_eq!(found.len(), expected.len(), "one probability per row");
    expected
        .iter()
        .zip(found)
        // Compared as f32, the type both sides computed in (JSON parsing may move the last f64 bit).
        .map(|(e, f)| f64::from((*e - f.as_f64().expect("number") as f32).abs()))
        .fold(0.0, f64::max)
}

fn exported_model_scores_like_the_worker(spec: ModelSpec) {
    let (csv, schema_path) = telco();
    let schema = DatasetSchema::from_file(&schema_path).expect("schema");
    let table = confide_datasets::load_csv(&csv, &schema).expect("telco loads");
    let (train, test) = (slice(&table, 0..TRAIN_ROWS), with_all_missing_row(slice(&table, TRAIN_ROWS..table.rows)));
    let missing_totals = test.columns.iter().find(|c| c.name == "TotalCharges").map(|c| match &c.data {
        ColumnData::Numeric(v) => v.iter().filter(|x| x.is_none()).count(),
        ColumnData::Categorical(_) => 0,
    });
    assert_eq!(missing_totals, Some(3 + 1), "held-out rows include Telco's blank TotalCharges cells");
    let prep = Preprocessing::from_aggregate(&schema, &confide_datasets::local_stats(&train, &schema)).expect("prep");
    let (train_x, test_x) = (prep.encode(&train).expect("encode"), prep.encode(&test).expect("encode"));

    let init = ModelParams::init(spec.layout(prep.input_dim()), 3);
    let local = LocalTraining {
        epochs: 3,
        batch_size: 64,
        learning_rate: 0.01,
        optimizer: LocalOptimizer::Adam,
        prox_mu: 0.0,
        pos_weight: None,
        seed: 3,
    };
    let trained = ml::train_local(&spec, &init, &train_x, &ml::TrainConfig::from(&local), ml::Device::Cpu).expect("train");
    let worker = ml::predict(&spec, &trained.params, &test_x.features, test_x.rows, test_x.dim, ml::Device::Cpu).expect("predict");

    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.pt");
    confide_export::torchscript::write_torchscript(&spec, &trained.params, &prep, &model).expect("export");
    let (numeric, categorical) = raw_request(&test, &schema);
    let response = score_in_python(dir.path(), &model, &test_x, numeric, categorical);

    let forward = max_abs_diff(&worker, &response["forward"]);
    let raw = max_abs_diff(&worker, &response["predict_raw"]);
    println!(
        "{}: {} held-out rows, torch {}: max |forward − worker| = {forward:.3e}, max |predict_raw − worker| = {raw:.3e}",
        spec.label(),
        test_x.rows,
        response["torch_version"]
    );
    assert!(forward <= MAX_ABS_DIFF, "forward on encoded rows differs from the worker by {forward}");
    assert!(raw <= MAX_ABS_DIFF, "predict_raw on raw columns differs from the worker by {raw}");
    let encode_diff = response["encode_max_abs_diff"].as_f64().expect("encode diff");
    assert!(encode_diff <= 1e-6, "the module's encode differs from Preprocessing::encode by {encode_diff}");

    let libtorch = score_in_libtorch(&model, &test_x);
    let cpp = max_abs_diff(&worker, &json!(libtorch));
    println!("{}: max |libtorch torch::jit::load − worker| = {cpp:.3e}", spec.label());
    assert!(cpp <= MAX_ABS_DIFF, "libtorch's loader scores differently from the worker by {cpp}");

    let refusal = response["unknown_level_error"].as_str().unwrap_or("no error");
    assert!(refusal.contains("unknown categorical level: Nope"), "an unknown level is refused by name: {refusal}");

    // Parameters keep the checkpoint's names and shapes; the preprocessing travels along.
    let expected: serde_json::Map<String, Value> =
        spec.layout(prep.input_dim()).tensors.iter().map(|t| (t.name.clone(), json!(t.shape))).collect();
    assert_eq!(response["parameters"], Value::Object(expected));
    assert_eq!(response["buffers"]["numeric_mean"], json!([4]), "Telco has four numeric columns");
    assert_eq!(response["feature_names"], json!(prep.feature_names()));
    assert_eq!(response["metadata"]["preprocessing"], serde_json::to_value(&prep).expect("prep JSON"));
    assert_eq!(response["metadata"]["model"], serde_json::to_value(&spec).expect("spec JSON"));
}

#[test]
fn exported_logistic_regression_scores_like_the_worker_in_torch_jit_load() {
    exported_model_scores_like_the_worker(ModelSpec::LogisticRegression);
}

#[test]
fn exported_mlp_scores_like_the_worker_in_torch_jit_load() {
    exported_model_scores_like_the_worker(ModelSpec::Mlp { hidden: vec![32, 16] });
}

#[test]
fn federated_job_exports_torchscript_through_the_cli_and_on_completion() {
    let (cluster, partition) = Cluster::telco_federation(3, 11);
    let job = cluster.submit(&telco_job("torchscript-e2e", "kind = \"mlp\"\nhidden = [8]", 3, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(180));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());

    let dir = cluster.dir.path().join("cli-export");
    let out = cluster.confide(&["model", "export", &job, "--format", "torchscript", "-o", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "model export: {}", String::from_utf8_lossy(&out.stderr));
    let model = dir.join("model.pt");
    let cli_archive = std::fs::read(&model).expect("model export wrote model.pt");

    // The coordinator exported the same archive (the writer is deterministic) when the job completed.
    let done = cluster.wait_for(&job, Duration::from_secs(30), "the automatic export", |j| !j["export_dir"].is_null() || !j["export_error"].is_null());
    assert!(done["export_error"].is_null(), "automatic export failed: {done:#}");
    let auto = Path::new(done["export_dir"].as_str().expect("export_dir")).join("model.pt");
    assert_eq!(std::fs::read(&auto).expect("automatic model.pt"), cli_archive, "CLI and automatic exports agree byte for byte");

    // Score every bank's test rows with the worker and with torch.jit.load.
    let (_, schema_path) = telco();
    let schema = DatasetSchema::from_file(&schema_path).expect("schema");
    let prep: Preprocessing = serde_json::from_slice(&std::fs::read(dir.join("preprocessing.json")).expect("preprocessing.json")).expect("prep");
    let spec = ModelSpec::Mlp { hidden: vec![8] };
    let pulled = cluster.dir.path().join("model.safetensors");
    let out = cluster.confide(&["model", "pull", &job, "-o", pulled.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let params = ModelParams::from_safetensors(&std::fs::read(&pulled).expect("model"), &spec.layout(prep.input_dim())).expect("params");
    for bank in ["bank1", "bank2", "bank3"] {
        let test = confide_datasets::load_csv(partition.join(bank).join("test.csv"), &schema).expect("test split");
        let x = prep.encode(&test).expect("encode");
        let worker = ml::predict(&spec, &params, &x.features, x.rows, x.dim, ml::Device::Cpu).expect("predict");
        let (numeric, categorical) = raw_request(&test, &schema);
        let scratch = tempfile::tempdir().expect("tempdir");
        let response = score_in_python(scratch.path(), &model, &x, numeric, categorical);
        let (forward, raw) = (max_abs_diff(&worker, &response["forward"]), max_abs_diff(&worker, &response["predict_raw"]));
        println!("{bank}: {} test rows: max |forward − worker| = {forward:.3e}, max |predict_raw − worker| = {raw:.3e}", x.rows);
        assert!(forward <= MAX_ABS_DIFF && raw <= MAX_ABS_DIFF, "{bank}: forward {forward}, predict_raw {raw}");
    }
}
