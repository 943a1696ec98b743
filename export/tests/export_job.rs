//! Exporting a small job: files and hashes, the ONNX graph's signature, the coefficient table,
//! and refusals of inputs that do not fit together.

mod common;

use confide_core::outcome::ParticipantStatus;
use std::collections::BTreeMap;

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing, load_csv_from_reader, local_stats};
use confide_export::card::ModelCard;
use confide_export::{
    ExportError, Format, JobExport, Participant, RoundReport, export_job, names,
};
use prost::Message;

const SCHEMA: &str = r#"
name = "tiny"
missing = "fail"
[target]
column = "y"
positive = "1"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "income"
type = "numeric"
missing = "impute"
[[columns]]
name = "segment"
type = "categorical"
levels = ["retail", "private", "sme"]
[[columns]]
name = "age"
type = "numeric"
"#;

const ROWS: &str =
    "id,income,segment,age,y\n1,10,retail,30,1\n2,20,private,40,0\n3,,sme,50,0\n4,40,sme,60,1\n";

fn job(spec: ModelSpec, seed: u64) -> JobExport {
    let schema = DatasetSchema::parse(SCHEMA, "tiny.toml").expect("schema");
    let table = load_csv_from_reader(ROWS.as_bytes(), "rows.csv", &schema).expect("rows");
    let prep = Preprocessing::from_aggregate(&schema, &local_stats(&table, &schema)).expect("prep");
    let params = ModelParams::init(spec.layout(prep.input_dim()), seed);
    let rounds = (1..=2)
        .map(|round| RoundReport {
            round,
            participants: ["bank1", "bank2", "bank3"]
                .iter()
                .map(|b| Participant {
                    institution: b.to_string(),
                    status: if round == 2 && *b == "bank3" {
                        ParticipantStatus::Dropped
                    } else {
                        ParticipantStatus::Contributed
                    },
                })
                .collect(),
            metrics: BTreeMap::from([("auc".to_string(), 0.7 + round as f64 / 100.0)]),
            duration_secs: 0.5,
            completed_at: "2026-01-01T00:00:00Z".into(),
        })
        .collect();
    common::completed_job("tiny-job", "tiny", &spec, SCHEMA, &prep, &params, rounds)
}

#[test]
fn writes_every_format_and_a_card_whose_hashes_match_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job(ModelSpec::Mlp { hidden: vec![4] }, 1);
    let manifest = export_job(&job, dir.path(), &job.available_formats().expect("formats")).expect("export");
    let card: ModelCard =
        serde_json::from_slice(&std::fs::read(dir.path().join(names::CARD_JSON)).expect("card"))
            .expect("card json");
    let listed: Vec<&str> = card.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(listed, [names::ONNX, names::SAFETENSORS, names::TORCHSCRIPT, names::PREPROCESSING]);
    assert_eq!(card.files, manifest.files);
    for f in &card.files {
        let bytes = std::fs::read(dir.path().join(&f.name)).expect("file");
        assert_eq!(confide_core::sha256_hex(&bytes), f.sha256, "{}", f.name);
        assert_eq!(bytes.len() as u64, f.bytes);
    }
    assert_eq!(card.training.rounds_completed, 2);
    assert_eq!(card.training.institutions, ["bank1", "bank2", "bank3"]);
    assert_eq!(card.training.rounds[1].institutions_contributed, 2);
    assert_eq!(card.training.rounds[1].institutions_missing, 1);
    assert!(card.privacy.secure_aggregation);
    assert_eq!(card.privacy.differential_privacy, "not applied");
    assert!(
        card.coefficients.is_none(),
        "only logistic regression has a coefficient table"
    );
    let md = std::fs::read_to_string(dir.path().join(names::CARD_MD)).expect("markdown");
    for f in &card.files {
        assert!(md.contains(&f.sha256), "markdown lists {}", f.name);
    }
    assert!(md.contains("differential privacy: not applied"));
    // Each bank's audit head, for matching the card against the bank's own log.
    let heads: Vec<(&str, &str)> = card
        .job
        .audit_heads
        .iter()
        .map(|h| (h.institution.as_str(), h.head.as_str()))
        .collect();
    let (a, b) = ("a1".repeat(32), "b2".repeat(32));
    assert_eq!(heads, [("bank1", a.as_str()), ("bank2", b.as_str())]);
    assert!(md.contains("## Audit heads"), "{md}");
    assert!(md.contains(&format!("| bank1 | 2 | `{a}` |")), "{md}");

    // The safetensors file reads back as the same parameters and carries the job's metadata.
    let st = std::fs::read(dir.path().join(names::SAFETENSORS)).expect("safetensors");
    assert_eq!(
        ModelParams::from_safetensors(&st, &job.params.layout).expect("reads"),
        job.params
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&st).expect("header");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("confide.job_id"))
            .map(String::as_str),
        Some("job-1")
    );
}

#[test]
fn onnx_graph_reads_one_raw_input_per_feature_column() {
    let job = job(ModelSpec::LogisticRegression, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    export_job(&job, dir.path(), &[Format::Onnx]).expect("export");
    let bytes = std::fs::read(dir.path().join(names::ONNX)).expect("onnx");
    let model = confide_export::pb::ModelProto::decode(bytes.as_slice()).expect("valid protobuf");
    let graph = model.graph.expect("graph");
    let inputs: Vec<(String, i32)> = graph
        .input
        .iter()
        .map(|i| {
            let Some(confide_export::pb::type_proto::Value::TensorType(t)) =
                i.r#type.as_ref().and_then(|t| t.value.clone())
            else {
                panic!("tensor input")
            };
            (
                i.name.clone().unwrap_or_default(),
                t.elem_type.unwrap_or_default(),
            )
        })
        .collect();
    use confide_export::pb::tensor_proto::DataType;
    assert_eq!(
        inputs,
        [
            ("income".into(), DataType::Float as i32),
            ("segment".into(), DataType::String as i32),
            ("age".into(), DataType::Float as i32)
        ]
    );
    let outputs: Vec<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    assert_eq!(outputs, ["probability", "logit"]);
    // Missing `income` is imputed (only an infinite value refuses the row); missing `age` refuses it.
    let refusal_inputs: Vec<&str> = graph
        .node
        .iter()
        .filter(|n| n.output.iter().any(|o| o.starts_with("confide/refused")))
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    assert!(
        refusal_inputs.contains(&"confide/c0/is_infinite"),
        "{refusal_inputs:?}"
    );
    assert!(
        !refusal_inputs.contains(&"confide/c0/is_bad"),
        "{refusal_inputs:?}"
    );
    assert!(
        refusal_inputs.contains(&"confide/c1/unknown"),
        "{refusal_inputs:?}"
    );
    assert!(
        refusal_inputs.contains(&"confide/c2/is_bad"),
        "{refusal_inputs:?}"
    );
    let ml_ops: Vec<_> = graph
        .node
        .iter()
        .filter(|n| n.domain.as_deref() == Some("ai.onnx.ml"))
        .collect();
    assert_eq!(
        ml_ops.len(),
        1,
        "one CategoryMapper for the one categorical column"
    );
}

#[test]
fn logistic_regression_coefficients_on_the_raw_scale_give_the_same_logit() {
    let job = job(ModelSpec::LogisticRegression, 3);
    let card = ModelCard::new(&job, &[], None);
    let table = card.coefficients.expect("coefficient table");
    let w = job.params.tensor("fc0.weight").expect("weights");
    assert_eq!(table.rows.len(), w.len());
    assert_eq!(table.rows[1].feature, "segment=retail");
    // A raw row: income 25, segment private, age 45.
    let encoded = job
        .preprocessing
        .encode(
            &load_csv_from_reader(
                "id,income,segment,age,y\n9,25,private,45,0\n".as_bytes(),
                "r",
                &job.schema,
            )
            .expect("row"),
        )
        .expect("encode");
    let standardised: f64 = table.intercept
        + encoded
            .features
            .iter()
            .zip(&table.rows)
            .map(|(x, r)| f64::from(*x) * r.coefficient)
            .sum::<f64>();
    let raw: f64 = table.intercept_raw_scale
        + 25.0 * table.rows[0].coefficient_raw_scale.expect("numeric")
        + table.rows[2].coefficient
        + 45.0 * table.rows[4].coefficient_raw_scale.expect("numeric");
    assert!((standardised - raw).abs() < 1e-5, "{standardised} vs {raw}");
    for r in &table.rows {
        assert!((r.odds_ratio - r.coefficient.exp()).abs() < 1e-12);
    }
}

#[test]
fn writes_torchscript_alone_and_refuses_inputs_that_do_not_fit() {
    let job = job(ModelSpec::LogisticRegression, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = export_job(&job, dir.path(), &[Format::TorchScript]).expect("torchscript export");
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(listed, [names::TORCHSCRIPT, names::PREPROCESSING]);
    let archive = std::fs::read(dir.path().join(names::TORCHSCRIPT)).expect("model.pt");
    assert_eq!(archive[..2], *b"PK", "a TorchScript archive is a zip file");

    let prep = serde_json::to_string(&job.preprocessing).expect("prep");
    let spec = serde_json::to_string(&job.spec).expect("spec");
    let model = job.params.to_safetensors(None);
    let not_trained =
        JobExport::from_stored(job.job.clone(), &spec, SCHEMA, None, Some(&model), vec![]);
    assert!(matches!(
        not_trained,
        Err(ExportError::NotTrained {
            what: "preprocessing",
            ..
        })
    ));
    let other_schema = SCHEMA.replace("\"sme\"]", "\"sme\", \"corporate\"]");
    let mismatch = JobExport::from_stored(
        job.job.clone(),
        &spec,
        &other_schema,
        Some(&prep),
        Some(&model),
        vec![],
    );
    assert!(
        matches!(mismatch, Err(ExportError::Inconsistent(_))),
        "{mismatch:?}"
    );
    let mlp = ModelParams::init(
        ModelSpec::Mlp { hidden: vec![3] }.layout(job.preprocessing.input_dim()),
        1,
    );
    let wrong_model = JobExport::from_stored(
        job.job.clone(),
        &spec,
        SCHEMA,
        Some(&prep),
        Some(&mlp.to_safetensors(None)),
        vec![],
    );
    assert!(
        matches!(
            wrong_model,
            Err(ExportError::Input {
                what: "model checkpoint",
                ..
            })
        ),
        "{wrong_model:?}"
    );
}

#[test]
fn custom_torchscript_models_export_their_trained_parameters_and_card_only() {
    use confide_core::model::{ParamLayout, TensorSpec, TorchScriptSpec};
    let input_dim = job(ModelSpec::LogisticRegression, 1).preprocessing.input_dim();
    let layout = ParamLayout {
        tensors: vec![
            TensorSpec { name: "deep.0.weight".into(), shape: vec![4, input_dim] },
            TensorSpec { name: "deep.0.bias".into(), shape: vec![4] },
            TensorSpec { name: "head.weight".into(), shape: vec![1, 4] },
        ],
    };
    let spec = ModelSpec::TorchScript(TorchScriptSpec {
        module: "model.pt".into(),
        parameters: "init.safetensors".into(),
        module_sha256: Some("ab".repeat(32)),
        parameters_sha256: None,
        input_dim: Some(input_dim),
        layout,
    });
    let custom = job(spec, 5);
    assert_eq!(custom.available_formats().expect("family"), [Format::Safetensors]);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = export_job(&custom, dir.path(), &[Format::Onnx]).expect_err("no ONNX from the owner's code");
    assert!(err.to_string().contains("custom TorchScript"), "{err}");
    assert!(!dir.path().join(names::ONNX).exists(), "nothing written on refusal");

    let manifest = export_job(&custom, dir.path(), &custom.available_formats().expect("formats")).expect("export");
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(listed, [names::SAFETENSORS, names::PREPROCESSING]);
    let bytes = std::fs::read(dir.path().join(names::SAFETENSORS)).expect("weights");
    let back = ModelParams::read_safetensors_any(&bytes).expect("readable");
    assert_eq!(back.values, custom.params.values, "the trained values under the module's names");
    assert_eq!(back.layout.tensors[0].name, "deep.0.weight");
    assert!(dir.path().join(names::CARD_JSON).exists() && dir.path().join(names::CARD_MD).exists());
}

#[test]
fn a_card_of_the_best_rounds_model_says_which_round_and_shows_its_metrics() {
    let mut job = job(ModelSpec::LogisticRegression, 3);
    job.job.model_round = Some(1);
    let card = ModelCard::new(&job, &[], None);
    assert_eq!(card.training.final_metrics["auc"], 0.71, "round 1's metrics, not the last round's");
    let md = card.to_markdown();
    assert!(md.contains("| model from round | 1 (the best round by the early-stopping metric) |"), "{md}");
    job.job.model_round = Some(2);
    let md = ModelCard::new(&job, &[], None).to_markdown();
    assert!(md.contains("| model from round | 2 |"), "{md}");
}
