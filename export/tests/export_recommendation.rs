//! Exporting recommendation models: the item side, the catalogue rows, the ONNX scoring graph's
//! signature and weights, the card's ratings target and recommendation section, and TorchScript
//! refused for them without failing `all`.

mod common;

use confide_core::outcome::ParticipantStatus;
use std::collections::BTreeMap;

use confide_core::job::Feedback;
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{DatasetSchema, Preprocessing, RecommendationPrep};
use confide_export::card::ModelCard;
use confide_export::{
    ExportError, Family, Format, JobExport, Participant, RoundReport, export_job, names,
    onnx, pb,
};
use prost::Message;

const SCHEMA: &str = r#"
name = "ratings"
[recommendation]
user = "userId"
item = "movieId"
rating = "rating"
min_rating = 0.5
max_rating = 5.0
relevant_from = 4.0
"#;

/// Item ids in row order; one needs CSV quoting.
const ITEMS: [&str; 4] = ["10", "20", "thirty, the sequel", "40"];

fn job(spec: ModelSpec) -> JobExport {
    let schema = DatasetSchema::parse(SCHEMA, "ratings.toml").expect("schema");
    let prep = Preprocessing {
        schema_fingerprint: schema.fingerprint(),
        rows: 500,
        columns: Vec::new(),
        recommendation: Some(RecommendationPrep {
            mean_rating: 3.5,
            rating_std: 1.0,
            users: 42,
            items: ITEMS.iter().map(|s| s.to_string()).collect(),
            relevant_from: 4.0,
            ranking_negatives: 99,
            top_k: 10,
            eval_seed: 7,
            feedback: Feedback::Explicit,
        }),
    };
    let params = ModelParams::init(spec.layout(ITEMS.len()), 5);
    let rounds = (1..=2)
        .map(|round| RoundReport {
            round,
            participants: vec![Participant { institution: "bank1".into(), status: ParticipantStatus::Contributed }],
            metrics: BTreeMap::from([
                ("rmse".to_string(), 1.0 - round as f64 / 10.0),
                ("hr@10".to_string(), 0.3),
                ("ndcg@10".to_string(), 0.2),
            ]),
            duration_secs: 0.5,
            completed_at: "2026-01-01T00:00:00Z".into(),
        })
        .collect();
    common::completed_job("rec-job", "ratings", &spec, SCHEMA, &prep, &params, rounds)
}

fn two_tower() -> ModelSpec {
    ModelSpec::TwoTower { dim: 3, hidden: vec![5, 2] }
}

#[test]
fn all_formats_of_a_recommendation_model_are_onnx_and_safetensors() {
    let job = job(ModelSpec::MatrixFactorization { dim: 3 });
    assert_eq!(Family::of(&job.spec.model).expect("exportable"), Family::Recommendation);
    assert_eq!(job.available_formats().expect("formats"), [Format::Onnx, Format::Safetensors]);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = export_job(&job, dir.path(), &job.available_formats().expect("formats")).expect("export");
    let written: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(written, [names::ONNX, names::SAFETENSORS, names::PREPROCESSING, names::ITEMS]);
    assert!(!dir.path().join(names::TORCHSCRIPT).exists());
}

#[test]
fn torchscript_alone_is_refused_for_recommendation_before_anything_is_written() {
    let job = job(two_tower());
    let dir = tempfile::tempdir().expect("tempdir");
    let err = export_job(&job, dir.path(), &[Format::Safetensors, Format::TorchScript]).expect_err("refused");
    assert!(matches!(err, ExportError::Unsupported { .. }), "{err:?}");
    assert_eq!(err.to_string(), "torchscript export is not supported for recommendation (two_tower[3;5,2]) models yet");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "nothing written");
}

#[test]
fn items_csv_maps_every_catalogue_id_to_its_row_quoting_where_needed() {
    let job = job(ModelSpec::MatrixFactorization { dim: 3 });
    let dir = tempfile::tempdir().expect("tempdir");
    export_job(&job, dir.path(), &[Format::Safetensors]).expect("export");
    let text = std::fs::read_to_string(dir.path().join(names::ITEMS)).expect("items.csv");
    assert_eq!(text, "item_id,row\n10,0\n20,1\n\"thirty, the sequel\",2\n40,3\n");
}

#[test]
fn the_scoring_graph_takes_the_banks_user_side_and_embeds_the_item_side() {
    let job = job(two_tower());
    let model = onnx::recommendation(&job.spec.model, &job.params, &job.metadata()).expect("graph");
    let names_of = |v: &[pb::ValueInfoProto]| v.iter().map(|i| i.name().to_string()).collect::<Vec<_>>();
    let proto = pb::ModelProto::decode(model.bytes.as_slice()).expect("valid protobuf");
    let graph = proto.graph.expect("graph");
    assert_eq!(names_of(&graph.input), [onnx::USER_EMBEDDING, onnx::USER_BIAS, onnx::ITEM_INDEX]);
    assert_eq!(names_of(&graph.output), [onnx::SCORE, onnx::USER_VECTOR, onnx::ITEM_VECTOR]);
    assert_eq!(model.signature.outputs, [onnx::SCORE, onnx::USER_VECTOR, onnx::ITEM_VECTOR]);
    // Every federated tensor is an initializer with the checkpoint's values; no user tensor is.
    for spec in &job.params.layout.tensors {
        let init = graph.initializer.iter().find(|t| t.name() == spec.name).unwrap_or_else(|| panic!("{} in graph", spec.name));
        assert_eq!(init.float_data, job.params.tensor(&spec.name).expect("tensor"), "{}", spec.name);
        assert_eq!(init.dims.iter().product::<i64>() as usize, spec.shape.iter().product::<usize>(), "{}", spec.name);
    }
    assert!(graph.initializer.iter().all(|t| !t.name().starts_with("user_embedding") && !t.name().starts_with("user_bias")));
    // Two tower layers per tower: Gemm, Relu, Gemm.
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "Gemm").count(), 4);
    assert_eq!(ops.iter().filter(|o| **o == "Relu").count(), 2);
    assert_eq!(proto.opset_import.len(), 1, "default domain only");
}

#[test]
fn matrix_factorisation_scores_with_a_plain_dot_product() {
    let job = job(ModelSpec::MatrixFactorization { dim: 3 });
    let model = onnx::recommendation(&job.spec.model, &job.params, &[]).expect("graph");
    let graph = pb::ModelProto::decode(model.bytes.as_slice()).expect("protobuf").graph.expect("graph");
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Gather", "Gather", "Mul", "ReduceSum", "Add", "Add", "Add", "Identity", "Identity"]);
}

#[test]
fn a_checkpoint_that_is_not_the_item_side_is_refused() {
    let job = job(ModelSpec::MatrixFactorization { dim: 3 });
    let err = onnx::recommendation(&ModelSpec::MatrixFactorization { dim: 4 }, &job.params, &[]).expect_err("wrong width");
    assert!(err.to_string().contains("not the item side"), "{err}");
}

#[test]
fn the_card_names_the_rating_column_and_describes_the_recommender() {
    let job = job(two_tower());
    let dir = tempfile::tempdir().expect("tempdir");
    export_job(&job, dir.path(), &[Format::Onnx]).expect("export");
    let card: ModelCard =
        serde_json::from_slice(&std::fs::read(dir.path().join(names::CARD_JSON)).expect("card")).expect("card json");
    assert_eq!(card.data.target, "rating");
    assert_eq!(card.data.positive_class, None);
    assert_eq!(card.data.rating_range, Some([0.5, 5.0]));
    let rec = card.recommendation.expect("recommendation section");
    assert_eq!((rec.catalogue_items, rec.embedding_dim, rec.tower_layers.as_slice()), (4, 3, [5, 2].as_slice()));
    assert_eq!((rec.federation_users, rec.top_k, rec.ranking_negatives), (42, 10, 99));
    assert_eq!(rec.feedback, "explicit");
    assert!(card.coefficients.is_none());
    let md = std::fs::read_to_string(dir.path().join(names::CARD_MD)).expect("card md");
    assert!(md.contains("| target | rating `rating` in [0.5, 5] (the score output) |"), "{md}");
    assert!(md.contains("## Recommendation model") && md.contains("| catalogue | 4 items"), "{md}");
    assert!(md.contains("| towers | [5, 2] per tower"), "{md}");
    assert!(md.contains("`user_embedding`") && md.contains("`item_index`"), "{md}");
    assert!(md.contains("hr@10") && md.contains("ndcg@10") && md.contains("rmse"), "{md}");
}
