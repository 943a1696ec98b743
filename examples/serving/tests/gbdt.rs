//! `confide-score` serves a gradient-boosted tree export: tract runs the graph's
//! TreeEnsembleClassifier with its in-graph feature space and gives the model's own
//! probabilities (to f32 precision), NaN for rows the federation would refuse.

use std::process::Command;

use confide_core::model::{GbdtSpec, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing, load_csv_from_reader, local_stats};
use confide_export::{Format, JobExport, JobInfo, export_job, names};
use confide_gbdt::{FeatureKind, FeatureSet, GbdtModel, Node, Tree, TreeFeature};

const SCHEMA: &str = r#"
name = "serve-trees"
missing = "impute"
[target]
column = "y"
positive = "1"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "segment"
type = "categorical"
levels = ["retail", "sme"]
[[columns]]
name = "income"
type = "numeric"
range = [0, 100]
"#;

const TRAIN: &str = "id,segment,income,y\n1,retail,10,1\n2,sme,20,0\n3,,,0\n";

fn split(feature: u32, threshold: f32, default_left: bool, left: u32, right: u32) -> Node {
    Node::Split { feature, threshold, bin_split: 1, default_left, left, right, gain: 3.0, cover: 10.0 }
}

fn leaf(value: f32) -> Node {
    Node::Leaf { value, cover: 5.0 }
}

/// Two trees over `income`, `segment=retail`, `segment=sme`, with both default directions.
fn model() -> GbdtModel {
    let features = FeatureSet {
        features: vec![
            TreeFeature { name: "income".into(), column: "income".into(), kind: FeatureKind::Numeric { cuts: vec![25.0, 50.0] } },
            TreeFeature { name: "segment=retail".into(), column: "segment".into(), kind: FeatureKind::Indicator { level: 0 } },
            TreeFeature { name: "segment=sme".into(), column: "segment".into(), kind: FeatureKind::Indicator { level: 1 } },
        ],
    };
    let trees = vec![
        Tree { nodes: vec![split(0, 25.0, false, 1, 2), leaf(-0.4), split(2, 0.5, true, 3, 4), leaf(0.1), leaf(0.7)] },
        Tree { nodes: vec![split(1, 0.5, true, 1, 2), split(0, 50.0, true, 3, 4), leaf(-0.25), leaf(0.05), leaf(0.3)] },
    ];
    GbdtModel { base_margin: -0.2, features, trees }
}

fn job(model: &GbdtModel) -> JobExport {
    let schema = DatasetSchema::parse(SCHEMA, "serve.toml").expect("schema");
    let table = load_csv_from_reader(TRAIN.as_bytes(), "train.csv", &schema).expect("rows");
    let prep = Preprocessing::from_aggregate(&schema, &local_stats(&table, &schema)).expect("prep");
    let spec = ModelSpec::Gbdt(GbdtSpec { max_depth: 2, ..GbdtSpec::default() });
    let spec_json = serde_json::json!({ "name": "t", "dataset": "serve-trees", "model": spec, "training": { "rounds": 2, "learning_rate": 0.3 } });
    let info = JobInfo {
        id: "job-1".into(),
        name: "t".into(),
        status: "completed".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:01:00Z".into(),
        stop_reason: None,
        model_hash: "0".repeat(64),
        model_round: None,
        audit_heads: vec![],
    };
    let prep_json = serde_json::to_string(&prep).expect("prep json");
    JobExport::from_stored(info, &spec_json.to_string(), SCHEMA, Some(&prep_json), Some(&model.to_bytes()), vec![]).expect("job")
}

#[test]
fn confide_score_serves_a_tree_export_with_missing_cells_and_refusals() {
    let model = model();
    let dir = tempfile::tempdir().expect("tempdir");
    export_job(&job(&model), dir.path(), &[Format::Onnx]).expect("export");
    // (segment, income) cells and the tree features they mean; `NA` and blank are missing.
    let nan = f32::NAN;
    let rows: [(&str, &str, Option<[f32; 3]>); 8] = [
        ("retail", "10", Some([10.0, 1.0, 0.0])),
        ("sme", "25", Some([25.0, 0.0, 1.0])),
        ("sme", "", Some([nan, 0.0, 1.0])),
        ("", "60", Some([60.0, nan, nan])),
        ("NA", "NA", Some([nan, nan, nan])),
        ("retail", "50", Some([50.0, 1.0, 0.0])),
        ("corporate", "10", None),
        ("retail", "inf", None),
    ];
    let mut csv = String::from("customer,segment,income\n");
    for (i, (segment, income, _)) in rows.iter().enumerate() {
        csv.push_str(&format!("c{i},{segment},{income}\n"));
    }
    let input = dir.path().join("rows.csv");
    std::fs::write(&input, csv).expect("rows");
    let out = Command::new(env!("CARGO_BIN_EXE_confide-score"))
        .arg(dir.path().join(names::ONNX))
        .arg(&input)
        .args(["--id-column", "customer"])
        .output()
        .expect("run confide-score");
    assert!(out.status.success(), "confide-score failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let scored: Vec<(String, f32)> = stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (id, p) = l.split_once(',').expect("id,probability");
            (id.to_string(), p.parse().expect("a probability"))
        })
        .collect();
    assert_eq!(scored.len(), rows.len(), "{stdout}");
    for (i, ((id, p), (_, _, features))) in scored.iter().zip(&rows).enumerate() {
        assert_eq!(id, &format!("c{i}"));
        match features {
            Some(x) => {
                let x = ndarray::Array2::from_shape_vec((1, 3), x.to_vec()).expect("row");
                let want = model.predict_proba(x.view())[0];
                assert!((f64::from(*p) - want).abs() <= 1e-6, "row {i}: tract {p} vs {want}");
            }
            None => assert!(p.is_nan(), "row {i} is refused: {p}"),
        }
    }
}
