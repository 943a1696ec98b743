//! Exporting gradient-boosted trees: random ensembles (built by hand, independent of training)
//! scored on random rows with missing cells and categorical levels by XGBoost from `model.json`
//! and by onnxruntime from `model.onnx` (raw columns in) must match `GbdtModel::predict_proba`
//! within 1e-6; the card lists trees, depth and importance; bad checkpoints and formats that do
//! not apply to trees are refused.

mod common;

use std::path::Path;
use std::process::Command;

use confide_core::model::{GbdtSpec, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing, load_csv_from_reader, local_stats};
use confide_export::card::ModelCard;
use confide_export::{ExportError, Format, JobExport, export_job, names};
use confide_gbdt::{FeatureKind, FeatureSet, GbdtModel, Node, Tree, TreeFeature};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const SCHEMA: &str = r#"
name = "trees"
missing = "impute"
[target]
column = "y"
positive = "1"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "income"
type = "numeric"
range = [0, 100]
[[columns]]
name = "segment"
type = "categorical"
levels = ["retail", "private", "sme"]
[[columns]]
name = "age"
type = "numeric"
missing = "fail"
range = [18, 90]
[[columns]]
name = "channel"
type = "categorical"
levels = ["web", "branch<2y"]
"#;

const ROWS: &str = "id,income,segment,age,channel,y\n1,10,retail,30,web,1\n2,20,private,40,branch<2y,0\n3,,sme,50,,0\n4,40,sme,60,web,1\n";

fn schema() -> DatasetSchema {
    DatasetSchema::parse(SCHEMA, "trees.toml").expect("schema")
}

fn preprocessing(schema: &DatasetSchema) -> Preprocessing {
    let table = load_csv_from_reader(ROWS.as_bytes(), "rows.csv", schema).expect("rows");
    Preprocessing::from_aggregate(schema, &local_stats(&table, schema)).expect("prep")
}

/// Numeric features first (in another order than the schema's columns), then indicators, as
/// `confide-gbdt`'s feature space lays them out.
fn feature_set(rng: &mut ChaCha8Rng) -> FeatureSet {
    let mut cuts = |low: f32, high: f32| {
        let mut c: Vec<f32> = (0..12).map(|_| (rng.random_range(low..high) * 4.0).round() / 4.0).collect();
        c.sort_by(f32::total_cmp);
        c.dedup();
        c
    };
    let mut features = vec![
        TreeFeature { name: "income".into(), column: "income".into(), kind: FeatureKind::Numeric { cuts: cuts(0.0, 100.0) } },
        TreeFeature { name: "age".into(), column: "age".into(), kind: FeatureKind::Numeric { cuts: cuts(18.0, 90.0) } },
    ];
    for (column, levels) in [("segment", &["retail", "private", "sme"][..]), ("channel", &["web", "branch<2y"][..])] {
        for (level, name) in levels.iter().enumerate() {
            features.push(TreeFeature {
                name: format!("{column}={name}"),
                column: column.into(),
                kind: FeatureKind::Indicator { level: level as u32 },
            });
        }
    }
    FeatureSet { features }
}

/// A random tree of depth ≤ `max_depth` (pre-order: children after their parent).
fn random_tree(rng: &mut ChaCha8Rng, features: &FeatureSet, max_depth: u32) -> Tree {
    fn grow(nodes: &mut Vec<Node>, rng: &mut ChaCha8Rng, features: &FeatureSet, depth: u32, max_depth: u32) -> u32 {
        let at = nodes.len();
        let cover = rng.random_range(1.0..100.0);
        nodes.push(Node::Leaf { value: rng.random_range(-0.4f32..0.4), cover });
        if depth < max_depth && rng.random_bool(0.8) {
            let feature = rng.random_range(0..features.len());
            let cuts = features.features[feature].cuts();
            let bin = rng.random_range(0..cuts.len());
            let default_left = rng.random_bool(0.5);
            let left = grow(nodes, rng, features, depth + 1, max_depth);
            let right = grow(nodes, rng, features, depth + 1, max_depth);
            nodes[at] = Node::Split {
                feature: feature as u32,
                threshold: cuts[bin],
                bin_split: bin as u16 + 1,
                default_left,
                left,
                right,
                gain: rng.random_range(0.0..50.0),
                cover,
            };
        }
        at as u32
    }
    let mut nodes = Vec::new();
    grow(&mut nodes, rng, features, 0, max_depth);
    Tree { nodes }
}

fn random_model(seed: u64, trees: usize, base_margin: f32) -> GbdtModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let features = feature_set(&mut rng);
    let trees = (0..trees).map(|_| random_tree(&mut rng, &features, 4)).collect();
    let model = GbdtModel { base_margin, features, trees };
    // Through the checkpoint format, as the coordinator stores it.
    GbdtModel::from_bytes(&model.to_bytes()).expect("a valid checkpoint")
}

/// One raw row: income (None = missing), segment, age (None = missing), channel.
#[derive(Debug, Clone)]
struct RawRow {
    income: Option<f32>,
    segment: String,
    age: Option<f32>,
    channel: String,
}

const SEGMENTS: [&str; 3] = ["retail", "private", "sme"];
const CHANNELS: [&str; 2] = ["web", "branch<2y"];

fn random_rows(rng: &mut ChaCha8Rng, model: &GbdtModel, n: usize) -> Vec<RawRow> {
    let cut_of = |rng: &mut ChaCha8Rng, f: usize| {
        let cuts = model.features.features[f].cuts();
        cuts[rng.random_range(0..cuts.len())]
    };
    let level = |rng: &mut ChaCha8Rng, levels: &[&str]| match rng.random_range(0..10) {
        0 => String::new(),
        1 => "NA".to_string(),
        _ => levels[rng.random_range(0..levels.len())].to_string(),
    };
    (0..n)
        .map(|_| RawRow {
            // Some values sit exactly on a threshold, where `x < threshold` decides.
            income: match rng.random_range(0..6) {
                0 => None,
                1 => Some(cut_of(rng, 0)),
                _ => Some(rng.random_range(-5.0f32..105.0)),
            },
            segment: level(rng, &SEGMENTS),
            age: Some(if rng.random_bool(0.2) { cut_of(rng, 1) } else { rng.random_range(18.0f32..90.0) }),
            channel: level(rng, &CHANNELS),
        })
        .collect()
}

/// The trees' feature matrix of rows, as the feature space's contract defines it.
fn feature_matrix(model: &GbdtModel, rows: &[RawRow]) -> Array2<f32> {
    let missing = |s: &str| s.is_empty() || s == "NA";
    Array2::from_shape_fn((rows.len(), model.features.len()), |(r, f)| {
        let row = &rows[r];
        let feature = &model.features.features[f];
        match (&feature.kind, feature.column.as_str()) {
            (FeatureKind::Numeric { .. }, "income") => row.income.unwrap_or(f32::NAN),
            (FeatureKind::Numeric { .. }, _) => row.age.unwrap_or(f32::NAN),
            (FeatureKind::Indicator { level }, column) => {
                let (cell, levels) = if column == "segment" { (&row.segment, &SEGMENTS[..]) } else { (&row.channel, &CHANNELS[..]) };
                if missing(cell) {
                    f32::NAN
                } else {
                    f32::from(u8::from(levels[*level as usize] == cell))
                }
            }
        }
    })
}

fn gbdt_spec() -> ModelSpec {
    ModelSpec::Gbdt(GbdtSpec { max_depth: 4, ..GbdtSpec::default() })
}

fn gbdt_job(model: &GbdtModel) -> JobExport {
    let schema = schema();
    common::completed_job_from_checkpoint("trees-job", "trees", &gbdt_spec(), SCHEMA, &preprocessing(&schema), &model.to_bytes(), vec![])
        .expect("inputs fit together")
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `score_gbdt.py` over an export directory.
fn score_in_python(dir: &Path, features: &Array2<f32>, rows: &[RawRow]) -> Value {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: this test needs Python with xgboost and onnxruntime", python.display());
    let nan_free = |v: f32| if v.is_nan() { Value::Null } else { json!(v) };
    let matrix: Vec<Vec<Value>> = features.outer_iter().map(|r| r.iter().map(|&v| nan_free(v)).collect()).collect();
    let column = |f: &dyn Fn(&RawRow) -> Value| rows.iter().map(f).collect::<Vec<_>>();
    let request = json!({
        "features": matrix,
        "columns": {
            "income": column(&|r| r.income.map_or(Value::Null, |v| json!(v))),
            "segment": column(&|r| json!(r.segment)),
            "age": column(&|r| r.age.map_or(Value::Null, |v| json!(v))),
            "channel": column(&|r| json!(r.channel)),
        },
    });
    let (request_path, response_path) = (dir.join("request.json"), dir.join("response.json"));
    std::fs::write(&request_path, request.to_string()).expect("write request");
    let out = Command::new(&python)
        .args(["-W", "ignore"])
        .arg(repo_root().join("export/tests/score_gbdt.py"))
        .args([dir, &request_path, &response_path])
        .output()
        .expect("run python");
    assert!(out.status.success(), "xgboost / onnxruntime scoring failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&std::fs::read(&response_path).expect("response")).expect("response JSON")
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array().expect("array").iter().map(Value::as_f64).collect()
}

#[test]
fn xgboost_and_onnxruntime_score_random_ensembles_as_the_model_does() {
    for (seed, trees, base_margin) in [(1u64, 20usize, 0.0f32), (2, 35, 0.7), (3, 8, -1.3), (4, 1, 0.25)] {
        let model = random_model(seed, trees, base_margin);
        let job = gbdt_job(&model);
        assert_eq!(job.available_formats().expect("family"), [Format::Onnx, Format::XgboostJson]);
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = export_job(&job, dir.path(), &job.available_formats().expect("formats")).expect("export");
        let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(listed, [names::ONNX, names::XGBOOST, names::PREPROCESSING]);

        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let mut rows = random_rows(&mut rng, &model, 300);
        // Rows the federation would not have accepted: an unknown level, a missing `age`
        // (the schema fails on it).
        let refused_from = rows.len();
        rows.push(RawRow { segment: "corporate".into(), ..rows[0].clone() });
        rows.push(RawRow { age: None, ..rows[1].clone() });
        let x = feature_matrix(&model, &rows);
        let expected = model.predict_proba(x.view());
        let margins = model.predict_margins(x.view());
        let response = score_in_python(dir.path(), &x, &rows);

        assert_eq!(response["xgb_trees"], json!(trees), "seed {seed}");
        assert_eq!(response["ort_inputs"], json!(["income", "segment", "age", "channel"]), "schema order");
        assert_eq!(response["ort_shape"], json!([rows.len()]));
        let (xgb, xgb_margin) = (floats(&response["xgb_probability"]), floats(&response["xgb_margin"]));
        let (ort, ort_logit) = (floats(&response["ort_probability"]), floats(&response["ort_logit"]));
        for r in 0..refused_from {
            let want = expected[r];
            let got = xgb[r].expect("xgboost scores every row");
            assert!((got - want).abs() <= 1e-6, "seed {seed} row {r}: xgboost {got} vs {want} ({:?})", rows[r]);
            let got = ort[r].expect("a valid row is scored");
            assert!((got - want).abs() <= 1e-6, "seed {seed} row {r}: onnxruntime {got} vs {want} ({:?})", rows[r]);
            for (what, m) in [("xgboost margin", xgb_margin[r]), ("onnx logit", ort_logit[r])] {
                let m = m.expect("a margin");
                assert!((m - margins[r]).abs() <= 1e-5, "seed {seed} row {r}: {what} {m} vs {}", margins[r]);
            }
        }
        for r in refused_from..rows.len() {
            assert_eq!((ort[r], ort_logit[r]), (None, None), "row {r} is refused: {:?}", rows[r]);
        }
        // XGBoost reads the same gain and cover per feature (stored as f32).
        for f in model.importance() {
            let name = confide_export::xgboost::feature_name(&f.feature);
            let gain = response["xgb_total_gain"][&name].as_f64().expect("gain");
            let cover = response["xgb_total_cover"][&name].as_f64().expect("cover");
            assert!((gain - f.total_gain).abs() <= 1e-5 * f.total_gain.max(1.0), "{name}: {gain} vs {}", f.total_gain);
            assert!((cover - f.total_cover).abs() <= 1e-5 * f.total_cover.max(1.0), "{name}: {cover} vs {}", f.total_cover);
        }
    }
}

#[test]
fn the_card_lists_trees_depth_and_importance_by_gain_and_cover() {
    let model = random_model(7, 12, 0.3);
    let job = gbdt_job(&model);
    let dir = tempfile::tempdir().expect("tempdir");
    export_job(&job, dir.path(), &[Format::XgboostJson]).expect("export");
    let card: ModelCard = serde_json::from_slice(&std::fs::read(dir.path().join(names::CARD_JSON)).expect("card")).expect("card json");
    let trees = card.trees.expect("a trees section");
    assert_eq!(trees.trees, 12);
    assert_eq!(trees.max_depth, model.trees.iter().map(Tree::depth).max().expect("trees"));
    assert!(trees.max_depth >= 1 && trees.max_depth <= 4);
    let nodes: usize = model.trees.iter().map(|t| t.nodes.len()).sum();
    assert_eq!(trees.leaves + trees.splits, nodes);
    assert_eq!(trees.features, 7);
    assert!((trees.base_score - 1.0 / (1.0 + (-0.3f64).exp())).abs() < 1e-7);
    // Through the card's JSON (the last bit of an f64 may not survive it).
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    let want = model.importance();
    assert_eq!(trees.importance.len(), want.len());
    for (got, want) in trees.importance.iter().zip(&want) {
        assert_eq!((&got.feature, got.splits), (&want.feature, want.splits));
        assert!(close(got.total_gain, want.total_gain) && close(got.total_cover, want.total_cover), "{got:?} vs {want:?}");
    }
    assert!(trees.importance.len() >= 2, "random trees split on several features");
    assert_eq!(card.model.encoded_features[..2], ["income", "age"]);
    assert_eq!(card.model.input_dim, 7);
    assert_eq!(card.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), [names::XGBOOST, names::PREPROCESSING]);

    let md = std::fs::read_to_string(dir.path().join(names::CARD_MD)).expect("markdown");
    assert!(md.contains("| model | gbdt[depth 4] — 12 trees over 7 features |"), "{md}");
    assert!(md.contains("## Trees") && md.contains("### Feature importance"), "{md}");
    assert!(md.contains(&format!("| depth | deepest {}, mean ", trees.max_depth)), "{md}");
    let top = &trees.importance[0];
    assert!(md.contains(&format!("| `{}` | {:.4} |", top.feature, top.total_gain)), "{md}");
    assert!(md.contains(&format!("| {:.4} | {} |", top.total_cover, top.splits)), "{md}");
    assert!(md.contains("| `income` | numeric | impute | raw value (NaN = missing) |"), "{md}");
}

#[test]
fn corrupt_or_mismatched_checkpoints_and_weight_formats_are_refused() {
    let schema = schema();
    let prep = preprocessing(&schema);
    let read = |bytes: &[u8]| common::completed_job_from_checkpoint("t", "trees", &gbdt_spec(), SCHEMA, &prep, bytes, vec![]);

    let err = read(b"{\"base_margin\": 0.0, \"trees\": [").expect_err("corrupt");
    assert!(matches!(err, ExportError::Input { what: "model checkpoint", .. }), "{err:?}");
    assert!(err.to_string().contains("cannot read the job's model checkpoint: tree model:"), "{err}");
    let mut model = random_model(9, 3, 0.0);
    // A safetensors checkpoint of another family is not a tree ensemble either.
    let mlp = confide_core::model::ModelParams::init(ModelSpec::LogisticRegression.layout(6), 1);
    assert!(matches!(read(&mlp.to_safetensors(None)), Err(ExportError::Input { what: "model checkpoint", .. })));

    model.features.features[3].kind = FeatureKind::Indicator { level: 5 };
    let err = read(&model.to_bytes()).expect_err("a level the schema lacks");
    assert!(matches!(&err, ExportError::Inconsistent(m) if m.contains("does not fit column `segment`")), "{err:?}");
    model.features.features[0].column = "id".into();
    let err = read(&model.to_bytes()).expect_err("not a feature column");
    assert!(err.to_string().contains("reads `id`, not a feature column"), "{err}");

    let job = gbdt_job(&random_model(9, 3, 0.0));
    let dir = tempfile::tempdir().expect("tempdir");
    for format in [Format::Safetensors, Format::TorchScript] {
        let err = export_job(&job, dir.path(), &[Format::Onnx, format]).expect_err("no weights in a tree ensemble");
        assert!(matches!(err, ExportError::NotApplicable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("{} export does not apply to gradient-boosted tree (gbdt[depth 4]) models", format.name())), "{text}");
        assert!(text.contains("`xgboost` (model.json)"), "{text}");
    }
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing written on refusal");
}

#[test]
fn xgboost_json_is_refused_for_networks() {
    let schema = schema();
    let prep = preprocessing(&schema);
    let spec = ModelSpec::LogisticRegression;
    let params = confide_core::model::ModelParams::init(spec.layout(prep.input_dim()), 1);
    let job = common::completed_job("lr", "trees", &spec, SCHEMA, &prep, &params, vec![]);
    assert!(!job.available_formats().expect("formats").contains(&Format::XgboostJson));
    let dir = tempfile::tempdir().expect("tempdir");
    let err = export_job(&job, dir.path(), &[Format::XgboostJson]).expect_err("not a tree ensemble");
    assert!(err.to_string().contains("xgboost export does not apply to logistic_regression models"), "{err}");
}
