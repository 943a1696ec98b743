//! A finished job's model, exported through `confide model export`, scores held-out raw rows in
//! onnxruntime (the PyPI package, in `.venv`) and in the tract serving example exactly as the
//! worker scores the same rows after its own preprocessing (max abs difference ≤ 1e-5).
//!
//! One federation of three banks runs two jobs at once: a logistic regression on the Telco
//! schema (only `TotalCharges` imputes) and an MLP on a variant of it whose every column
//! imputes, with missing numeric and categorical cells in the held-out rows. The coordinator's
//! automatic export and its model card are checked too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing};
use confide_e2e::{Cluster, binary, partition_telco, repo_root, telco, telco_job};
use confide_export::card::ModelCard;
use confide_worker::ml;

const BANKS: [&str; 3] = ["bank1", "bank2", "bank3"];
const TOLERANCE: f64 = 1e-5;

/// The Telco schema with every feature column imputing missing cells, as another dataset name.
fn imputing_schema(dir: &Path) -> PathBuf {
    let (_, schema) = telco();
    let text = std::fs::read_to_string(schema).expect("telco schema");
    let text = text.replacen("name = \"telco_churn\"", "name = \"telco_churn_impute\"", 1).replacen(
        "missing = \"fail\"",
        "missing = \"impute\"",
        1,
    );
    let path = dir.join("telco_impute.toml");
    std::fs::write(&path, text).expect("write schema");
    path
}

/// Every bank's held-out rows, with cells blanked in the named columns every `every` rows.
fn held_out(partition: &Path, out: &Path, blanks: &[(&str, usize, &str)]) {
    let mut writer = csv::Writer::from_path(out).expect("held-out csv");
    let mut header_written = false;
    let mut n = 0usize;
    for bank in BANKS {
        let mut reader = csv::Reader::from_path(partition.join(bank).join("test.csv")).expect("test split");
        let header = reader.headers().expect("header").clone();
        if !header_written {
            writer.write_record(&header).expect("write header");
            header_written = true;
        }
        for record in reader.records() {
            let record = record.expect("row");
            let row: Vec<&str> = header
                .iter()
                .zip(record.iter())
                .map(|(column, cell)| {
                    blanks
                        .iter()
                        .find(|(c, every, _)| *c == column && n.is_multiple_of(*every))
                        .map_or(cell, |(_, _, marker)| *marker)
                })
                .collect();
            writer.write_record(&row).expect("write row");
            n += 1;
        }
    }
    writer.flush().expect("flush");
}

/// `id,probability` rows written by the onnxruntime script or `confide-score`.
fn read_scores(path: &Path) -> Vec<(String, f64)> {
    let mut reader = csv::Reader::from_path(path).expect("scores");
    reader
        .records()
        .map(|r| {
            let r = r.expect("score row");
            let p = r.get(1).expect("probability").trim();
            (r.get(0).expect("id").to_string(), if p.eq_ignore_ascii_case("nan") { f64::NAN } else { p.parse().expect("number") })
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Scores `rows` with onnxruntime in Python.
fn onnxruntime_scores(model: &Path, rows: &Path, out: &Path) -> Vec<(String, f64)> {
    run(Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("examples/serving/score_onnxruntime.py"))
        .args([model, rows, out])
        .args(["--id-column", "customerID"]));
    read_scores(out)
}

/// Scores `rows` with the tract serving example.
fn tract_scores(model: &Path, rows: &Path, out: &Path) -> Vec<(String, f64)> {
    run(Command::new(binary("confide-score")).arg(model).arg(rows).args(["--id-column", "customerID", "-o"]).arg(out));
    read_scores(out)
}

/// The worker's own predictions: the CSV loaded and encoded as in training, then `ml::predict`.
fn worker_scores(export: &Path, schema: &Path, spec: &ModelSpec, rows: &Path) -> Vec<f64> {
    let schema = DatasetSchema::from_file(schema).expect("schema");
    let prep: Preprocessing =
        serde_json::from_slice(&std::fs::read(export.join("preprocessing.json")).expect("preprocessing.json")).expect("parse");
    let table = confide_datasets::load_csv(rows, &schema).expect("held-out rows load under the job's schema");
    let encoded = prep.encode(&table).expect("encode");
    let bytes = std::fs::read(export.join("model.safetensors")).expect("model.safetensors");
    let params = ModelParams::from_safetensors(&bytes, &spec.layout(prep.input_dim())).expect("params");
    ml::predict(spec, &params, &encoded.features, encoded.rows, encoded.dim, ml::Device::Cpu)
        .expect("predict")
        .into_iter()
        .map(f64::from)
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "same number of rows");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Checks a directory's model card against the files beside it; returns the card.
fn checked_card(dir: &Path) -> ModelCard {
    let card: ModelCard =
        serde_json::from_slice(&std::fs::read(dir.join("model_card.json")).expect("model_card.json")).expect("card");
    let names: Vec<&str> = card.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["model.onnx", "model.safetensors", "preprocessing.json"]);
    for f in &card.files {
        let bytes = std::fs::read(dir.join(&f.name)).expect("listed file");
        assert_eq!(confide_core::sha256_hex(&bytes), f.sha256, "{}: the card's hash matches the file", f.name);
    }
    let md = std::fs::read_to_string(dir.join("model_card.md")).expect("model_card.md");
    assert!(card.files.iter().all(|f| md.contains(&f.sha256)));
    card
}

struct Case {
    name: &'static str,
    job: String,
    spec: ModelSpec,
    schema: PathBuf,
    /// Columns blanked in the held-out rows: (column, every n-th row, marker).
    blanks: Vec<(&'static str, usize, &'static str)>,
}

#[test]
fn exported_onnx_scores_raw_rows_like_the_worker_in_onnxruntime_and_tract() {
    let mut cluster = Cluster::start();
    let dir = cluster.dir.path().to_path_buf();
    let partition = partition_telco(&dir.join("partition"), 3, 11);
    let (_, telco_schema) = telco();
    let impute_schema = imputing_schema(&dir);
    for bank in BANKS {
        let (train, test) = (partition.join(bank).join("train.csv"), partition.join(bank).join("test.csv"));
        let config = cluster.write_worker_config(
            bank,
            &[("telco_churn", &telco_schema, &train, &test), ("telco_churn_impute", &impute_schema, &train, &test)],
            "",
        );
        cluster.spawn_worker(bank, &config);
    }
    let lr_job = telco_job("export-lr", "kind = \"logistic_regression\"", 4, "");
    let mlp_job = telco_job("export-mlp", "kind = \"mlp\"\nhidden = [16, 8]", 4, "")
        .replace("dataset = \"telco_churn\"", "dataset = \"telco_churn_impute\"")
        .replace(&telco_schema.display().to_string(), &impute_schema.display().to_string());
    let cases = [
        Case {
            name: "lr",
            job: cluster.submit(&lr_job),
            spec: ModelSpec::LogisticRegression,
            schema: telco_schema.clone(),
            blanks: vec![("TotalCharges", 7, "")],
        },
        Case {
            name: "mlp",
            job: cluster.submit(&mlp_job),
            spec: ModelSpec::Mlp { hidden: vec![16, 8] },
            schema: impute_schema.clone(),
            blanks: vec![("TotalCharges", 7, ""), ("tenure", 13, "NA"), ("PaymentMethod", 5, ""), ("Contract", 11, " ")],
        },
    ];

    for case in &cases {
        let done = cluster.wait_finished(&case.job, Duration::from_secs(300));
        assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
        assert!(done["export_error"].is_null(), "automatic export failed: {done:#}");

        // The data-science team's export.
        let export = dir.join(format!("export-{}", case.name));
        let out = cluster.confide(&["model", "export", &case.job, "--format", "all", "--output", export.to_str().expect("utf-8")]);
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        let card = checked_card(&export);
        assert_eq!(card.job.id, case.job);
        assert_eq!(card.training.rounds_completed, 4);
        assert_eq!(card.training.institutions, BANKS);
        assert!(card.training.rounds.iter().all(|r| r.institutions_contributed == 3 && r.metrics.contains_key("auc")));
        assert_eq!(card.training.final_metrics.get("auc"), done["rounds"][3]["metrics"]["auc"].as_f64().as_ref());
        assert!(card.privacy.secure_aggregation);
        assert_eq!(card.privacy.differential_privacy, "not applied");
        assert_eq!(card.coefficients.as_ref().map(|t| t.rows.len()), (case.name == "lr").then_some(card.model.input_dim));

        // The coordinator's automatic export holds the same model. (safetensors writes its
        // metadata map in no fixed order, so that file is compared by content.)
        let auto = PathBuf::from(done["export_dir"].as_str().expect("export_dir in job get"));
        assert!(auto.starts_with(dir.join("coordinator")), "{}", auto.display());
        let auto_card = checked_card(&auto);
        for (a, b) in auto_card.files.iter().zip(&card.files).filter(|(a, _)| a.name != "model.safetensors") {
            assert_eq!(a.sha256, b.sha256, "{}: automatic and CLI exports agree", a.name);
        }
        let weights = |d: &Path| {
            let bytes = std::fs::read(d.join("model.safetensors")).expect("model.safetensors");
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
            let layout = case.spec.layout(card.model.input_dim);
            (ModelParams::from_safetensors(&bytes, &layout).expect("weights"), meta.metadata().clone())
        };
        assert_eq!(weights(&auto), weights(&export), "automatic and CLI safetensors agree");

        // Held-out raw rows, with missing cells where the schema imputes.
        let rows = dir.join(format!("held-out-{}.csv", case.name));
        held_out(&partition, &rows, &case.blanks);
        let model = export.join("model.onnx");
        let worker = worker_scores(&export, &case.schema, &case.spec, &rows);
        let ort = onnxruntime_scores(&model, &rows, &dir.join(format!("ort-{}.csv", case.name)));
        let tract = tract_scores(&model, &rows, &dir.join(format!("tract-{}.csv", case.name)));
        assert!(worker.len() > 1000, "{} held-out rows", worker.len());
        let ort_p: Vec<f64> = ort.iter().map(|(_, p)| *p).collect();
        let tract_p: Vec<f64> = tract.iter().map(|(_, p)| *p).collect();
        assert_eq!(ort.iter().map(|(id, _)| id).collect::<Vec<_>>(), tract.iter().map(|(id, _)| id).collect::<Vec<_>>());
        let (d_ort, d_tract) = (max_abs_diff(&ort_p, &worker), max_abs_diff(&tract_p, &ort_p));
        println!("{}: {} rows, max |onnxruntime − worker| = {d_ort:.3e}, max |tract − onnxruntime| = {d_tract:.3e}", case.name, worker.len());
        assert!(d_ort <= TOLERANCE, "onnxruntime vs worker: {d_ort}");
        assert!(d_tract <= TOLERANCE, "tract vs onnxruntime: {d_tract}");
    }

    // Rows the federation refuses (a blank where the schema says `fail`, an unknown category)
    // score NaN in both runtimes instead of a guess; a valid row beside them still scores.
    let export = dir.join("export-lr");
    let rows = dir.join("refused.csv");
    let mut reader = csv::Reader::from_path(partition.join("bank1/test.csv")).expect("test split");
    let header = reader.headers().expect("header").clone();
    let first: Vec<String> = reader.records().next().expect("a row").expect("row").iter().map(String::from).collect();
    let mut writer = csv::Writer::from_path(&rows).expect("refused csv");
    writer.write_record(&header).expect("header");
    let contract = header.iter().position(|h| h == "Contract").expect("Contract column");
    for (id, value) in [("valid", None), ("blank-contract", Some("")), ("unknown-contract", Some("Quarterly"))] {
        let mut row = first.clone();
        row[0] = id.into();
        if let Some(v) = value {
            row[contract] = v.into();
        }
        writer.write_record(&row).expect("row");
    }
    writer.flush().expect("flush");
    for scores in [
        onnxruntime_scores(&export.join("model.onnx"), &rows, &dir.join("ort-refused.csv")),
        tract_scores(&export.join("model.onnx"), &rows, &dir.join("tract-refused.csv")),
    ] {
        let by_id: BTreeMap<String, f64> = scores.into_iter().collect();
        assert!(by_id["valid"].is_finite(), "{by_id:?}");
        assert!(by_id["blank-contract"].is_nan() && by_id["unknown-contract"].is_nan(), "{by_id:?}");
    }
}

#[test]
fn a_failed_automatic_export_is_recorded_and_the_job_still_completes() {
    let (cluster, _) = Cluster::telco_federation(3, 5);
    // A plain file where the coordinator's `jobs/` folder would go: no export can be written.
    std::fs::write(cluster.dir.path().join("coordinator").join("jobs"), "in the way").expect("blocker");
    let job = cluster.submit(&telco_job("export-fails", "kind = \"logistic_regression\"", 2, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(240));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert!(done["export_dir"].is_null(), "{done:#}");
    let error = done["export_error"].as_str().expect("export error recorded");
    assert!(error.contains("jobs"), "the error names the path: {error}");
    let text = cluster.confide(&["job", "get", &job]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("export   FAILED"), "{}", String::from_utf8_lossy(&text.stdout));
    // The model is still there for the team to export themselves.
    let out = cluster.dir.path().join("manual-export");
    let export = cluster.confide(&["model", "export", &job, "--format", "onnx", "-o", out.to_str().expect("utf-8")]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(out.join("model.onnx").exists() && out.join("model_card.json").exists());
    assert!(!out.join("model.safetensors").exists(), "only the asked format is written");
    // TorchScript is refused with a clear message until its writer lands.
    let ts = cluster.confide(&["model", "export", &job, "--format", "torchscript", "-o", out.to_str().expect("utf-8")]);
    assert_eq!(ts.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&ts.stderr).contains("TorchScript export is not available"), "{}", String::from_utf8_lossy(&ts.stderr));
}
