//! Exporting federated recommendation models (biased MF, two-tower) and serving them at a bank:
//! the automatic export and `confide model export` write the item side, the catalogue rows and
//! an ONNX scoring graph; one bank feeds its own user-state file (which never left it) into that
//! graph with onnxruntime (`examples/recommendation/score_onnxruntime.py`) and gets the scores
//! its worker computes with libtorch for its held-out ratings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use confide_core::model::{ModelParams, ModelSpec};
use confide_e2e::{Cluster, repo_root, shared_datasets};
use confide_export::card::ModelCard;
use confide_worker::ml::recsys::{UserParams, score_pairs};

/// Largest |onnxruntime − worker| accepted on a score (float32, a handful of products).
const TOLERANCE: f64 = 1e-5;

/// `(user id, item id)` of every rating in a bank's ratings file (`userId,movieId,...`).
fn pairs(ratings: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(ratings).expect("ratings file");
    text.lines()
        .skip(1)
        .map(|l| {
            let mut cells = l.split(',');
            let user = cells.next().expect("user").to_string();
            (user, cells.next().expect("item").to_string())
        })
        .collect()
}

/// The worker's own scores (libtorch, `recsys::score_pairs`) for `pairs`, from the exported
/// item side and the bank's user-state file.
fn worker_scores(export: &Path, spec: &ModelSpec, user_state: &Path, pairs: &[(String, String)]) -> Vec<f64> {
    let global = ModelParams::read_safetensors_any(&std::fs::read(export.join("model.safetensors")).expect("weights")).expect("item side");
    let users = UserParams::from_safetensors(&std::fs::read(user_state).expect("user state"), spec).expect("user side");
    let catalogue = std::fs::read_to_string(export.join("items.csv")).expect("items.csv");
    let item_row: HashMap<&str, i64> = catalogue
        .lines()
        .skip(1)
        .map(|l| {
            let (id, row) = l.rsplit_once(',').expect("item_id,row");
            (id, row.parse().expect("row"))
        })
        .collect();
    let u: Vec<i64> = pairs.iter().map(|(u, _)| users.row_of(u).expect("a test user of this bank") as i64).collect();
    let i: Vec<i64> = pairs.iter().map(|(_, i)| item_row[i.as_str()]).collect();
    score_pairs(spec, &global, &users, &u, &i, tch::Device::Cpu).expect("worker scores").into_iter().map(f64::from).collect()
}

/// Scores `pairs` with the serving example in onnxruntime.
fn onnxruntime_scores(export: &Path, user_state: &Path, pairs_csv: &Path, out: &Path) -> Vec<f64> {
    let status = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("examples/recommendation/score_onnxruntime.py"))
        .args([export, user_state, pairs_csv, out])
        .status()
        .expect("python runs");
    assert!(status.success(), "score_onnxruntime.py failed");
    let text = std::fs::read_to_string(out).expect("scores");
    text.lines().skip(1).map(|l| l.rsplit(',').next().and_then(|s| s.parse().ok()).expect("score")).collect()
}

/// Largest change across users of `score − user_vector·item_vector − user_bias` for the same
/// items: zero when the graph's vector outputs are the factors of its score (the residual is
/// then `item_bias + global_bias`, whoever the user).
fn vector_residual_spread(export: &Path, dim: usize) -> f64 {
    const CHECK: &str = r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
dim, rng, items = int(sys.argv[2]), np.random.default_rng(0), np.arange(32, dtype=np.int64)
residuals = []
for _ in range(3):
    u = np.repeat(rng.normal(size=(1, dim)).astype(np.float32), len(items), 0)
    b = np.full(len(items), rng.normal(), dtype=np.float32)
    score, uv, iv = s.run(["score", "user_vector", "item_vector"], {"user_embedding": u, "user_bias": b, "item_index": items})
    residuals.append(score - (uv * iv).sum(1) - b)
print(float(np.max(np.ptp(np.stack(residuals), axis=0))))
"#;
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .args(["-c", CHECK])
        .arg(export)
        .arg(dim.to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "vector check: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
}

fn checked_card(dir: &Path) -> ModelCard {
    let card: ModelCard = serde_json::from_slice(&std::fs::read(dir.join("model_card.json")).expect("card")).expect("card json");
    for f in &card.files {
        let bytes = std::fs::read(dir.join(&f.name)).expect("listed file exists");
        assert_eq!(confide_core::sha256_hex(&bytes), f.sha256, "{} hash", f.name);
    }
    card
}

struct Case {
    name: &'static str,
    spec: ModelSpec,
    rounds: u64,
    job: String,
}

#[test]
fn a_bank_scores_its_users_with_the_exported_item_side_like_its_worker() {
    let mut cluster = Cluster::start();
    let dir = cluster.dir.path().to_path_buf();
    let (schema, partition) = cluster.movielens_federation(&dir, 60, 7);
    let job = |name: &str, model: &str, rounds: u64| {
        format!(
            "name = {name:?}\ndataset = \"movielens_latest_small\"\nschema = {schema:?}\ncatalogue = {:?}\nseed = 3\n\
             [model]\n{model}\n[training]\nrounds = {rounds}\nbatch_size = 128\nlearning_rate = 0.01\noptimizer = \"adam\"\nl2 = 0.05\n",
            shared_datasets().join("movielens_latest_small/movies.csv"),
        )
    };
    let cases = [
        Case {
            name: "mf",
            spec: ModelSpec::MatrixFactorization { dim: 8 },
            rounds: 2,
            job: cluster.submit(&job("export-mf", "kind = \"matrix_factorization\"\ndim = 8", 2)),
        },
        Case {
            name: "two-tower",
            spec: ModelSpec::TwoTower { dim: 8, hidden: vec![16, 8] },
            rounds: 1,
            job: cluster.submit(&job("export-two-tower", "kind = \"two_tower\"\ndim = 8\nhidden = [16, 8]", 1)),
        },
    ];
    for case in &cases {
        let done = cluster.wait_finished(&case.job, Duration::from_secs(300));
        assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
        assert!(done["export_error"].is_null(), "automatic export failed: {done:#}");
        let auto = PathBuf::from(done["export_dir"].as_str().expect("export_dir in job get"));
        let auto_card = checked_card(&auto);
        let auto_files: Vec<&str> = auto_card.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(auto_files, ["model.onnx", "model.safetensors", "preprocessing.json", "items.csv"], "no model.pt for recommendation");

        // TorchScript on its own is refused with the reason, and nothing is written.
        let refused = dir.join(format!("refused-{}", case.name));
        let out = cluster.confide(&["model", "export", &case.job, "--format", "torchscript", "--output", refused.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("torchscript export is not supported for recommendation"), "{err}");
        assert!(!refused.join("model_card.json").exists());

        // The data-science team's export.
        let export = dir.join(format!("export-{}", case.name));
        let out = cluster.confide(&["model", "export", &case.job, "--output", export.to_str().expect("utf-8")]);
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        let card = checked_card(&export);
        for (a, b) in auto_card.files.iter().zip(&card.files).filter(|(a, _)| a.name != "model.safetensors") {
            assert_eq!(a.sha256, b.sha256, "{}: automatic and CLI exports agree", a.name);
        }
        assert_eq!(card.training.rounds_completed, case.rounds);
        assert_eq!(card.data.target, "rating");
        assert_eq!(card.data.positive_class, None);
        assert_eq!(card.data.rating_range, Some([0.5, 5.0]));
        let rec = card.recommendation.as_ref().expect("recommendation section");
        assert_eq!(rec.catalogue_items, 9742);
        assert_eq!(rec.embedding_dim, 8);
        assert_eq!(rec.tower_layers, case.spec.hidden());
        assert!(card.training.rounds.iter().all(|r| ["rmse", "hr@10", "ndcg@10"].iter().all(|m| r.metrics.contains_key(*m))));
        let md = std::fs::read_to_string(export.join("model_card.md")).expect("card md");
        assert!(md.contains("## Recommendation model") && md.contains("9742 items"), "{md}");

        // bank1 serves its own held-out users: its user-state file + the exported item side.
        let user_state = cluster
            .worker_data_dir("bank1")
            .join("user_state")
            .join(&case.job)
            .join(format!("round-{}.safetensors", case.rounds));
        let test = partition.join("bank1/test.csv");
        let pairs = pairs(&test);
        assert!(pairs.len() > 50, "bank1 holds out {} ratings", pairs.len());
        let worker = worker_scores(&export, &case.spec, &user_state, &pairs);
        let ort = onnxruntime_scores(&export, &user_state, &test, &dir.join(format!("ort-{}.csv", case.name)));
        assert_eq!(ort.len(), worker.len());
        let diff = ort.iter().zip(&worker).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{}: {} pairs, max |onnxruntime − worker| = {diff:.3e}", case.name, worker.len());
        assert!(diff <= TOLERANCE, "onnxruntime vs worker: {diff}");
        // Scores that vary by user and item: a graph ignoring either would not match the worker.
        let spread = worker.iter().copied().fold(f64::NEG_INFINITY, f64::max) - worker.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(spread > 1e-3, "scores spread {spread}");
        // The vector outputs (for a retrieval index) factor the score.
        let residual = vector_residual_spread(&export, 8);
        assert!(residual <= TOLERANCE, "score − user_vector·item_vector − user_bias varies by user: {residual}");
    }
}
