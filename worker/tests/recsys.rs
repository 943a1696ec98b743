//! Recommendation models in the worker: what a bank sends (the item side's weighted update and
//! two sums) and what it keeps (its users' embeddings), and that MF and the two-tower model
//! actually learn MovieLens ratings with real libtorch.

use std::path::{Path, PathBuf};

use confide_core::job::{Feedback, LocalOptimizer, LocalTraining};
use confide_core::model::{ModelParams, ModelSpec, rec_names};
use confide_datasets::partition::{PartitionConfig, Scheme, plan_ratings_partition};
use confide_datasets::{Catalogue, DatasetSchema, Preprocessing, RecommendationPrep, load_ratings};
use confide_worker::config::DatasetConfig;
use confide_worker::ml::Device;
use confide_worker::ml::recsys::{RecData, RecTrainConfig, UserParams, evaluate_recommender, train_recommender};
use confide_worker::tasks::{LocalDataset, ModelInput, UserStateStore, eval_contribution, train_contribution};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema_path() -> PathBuf {
    repo().join("datasets/schemas/movielens_latest_small.toml")
}

fn local(seed: u64, feedback: Feedback) -> LocalTraining {
    LocalTraining {
        epochs: 1,
        batch_size: 64,
        learning_rate: 0.01,
        optimizer: LocalOptimizer::Adam,
        prox_mu: 0.0,
        pos_weight: None,
        seed,
        l2: 0.05,
        feedback,
        negatives: 4,
    }
}

fn prep_for(schema: &DatasetSchema, items: Vec<String>, mean: f64) -> Preprocessing {
    Preprocessing {
        schema_fingerprint: schema.fingerprint(),
        rows: 0,
        columns: Vec::new(),
        recommendation: Some(RecommendationPrep {
            mean_rating: mean,
            rating_std: 1.0,
            users: 0,
            items,
            relevant_from: 4.0,
            ranking_negatives: 99,
            top_k: 10,
            eval_seed: 42,
            feedback: Feedback::Explicit,
        }),
    }
}

/// A small bank: users `alice`, `bob`, `carol` over items 1..=120.
fn write_bank(dir: &Path) -> DatasetConfig {
    let mut train = String::from("userId,movieId,rating,timestamp\n");
    let mut test = train.clone();
    for (u, user) in ["alice", "bob", "carol"].iter().enumerate() {
        for i in 1..=30 {
            let item = (i * (u + 2)) % 120 + 1;
            let line = format!("{user},{item},{}.0,{i}\n", 1 + (i + u) % 5);
            if i % 5 == 0 { test.push_str(&line) } else { train.push_str(&line) }
        }
    }
    std::fs::write(dir.join("train.csv"), train).expect("train");
    std::fs::write(dir.join("test.csv"), test).expect("test");
    DatasetConfig::files("movielens_latest_small", schema_path(), dir.join("train.csv"), dir.join("test.csv"))
}

#[test]
fn user_embeddings_stay_in_the_bank_and_only_the_item_side_update_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = LocalDataset::open(write_bank(dir.path())).expect("dataset");
    let items: Vec<String> = (1..=120).map(|i| i.to_string()).collect();
    let prep = prep_for(&data.schema, items, 3.0);
    let prep_key = serde_json::to_string(&prep).expect("json");
    let spec = ModelSpec::MatrixFactorization { dim: 8 };
    let layout = spec.layout(120);
    let global = ModelParams::init(layout.clone(), 1);
    let checkpoint = global.to_safetensors(None);
    let store = UserStateStore::new(dir.path());
    let model = ModelInput { spec: &spec, checkpoint: &checkpoint, module: None, prep: &prep, prep_key: &prep_key, job_id: "job-1", round: 1 };

    let sent = train_contribution(&data, &model, &local(1, Feedback::Explicit), None, &store, Device::Cpu).expect("trains");
    // Exactly the shared layout (item embeddings, item biases, global bias) plus n and n·loss.
    assert_eq!(sent.len(), layout.len() + 2);
    assert_eq!(sent[layout.len()], 72.0, "weight = the bank's training ratings");
    let users = store.load_before("job-1", 2, &spec).expect("state saved");
    assert_eq!(users.ids, ["alice", "bob", "carol"]);
    // No user-side value appears anywhere in what was sent.
    let sent_f32: std::collections::HashSet<u32> = sent.iter().map(|v| (*v as f32).to_bits()).collect();
    for value in users.embedding.iter().chain(&users.bias).filter(|v| **v != 0.0) {
        assert!(!sent_f32.contains(&value.to_bits()), "user value {value} leaked into the contribution");
    }
    // The user side is trained every round and persisted; a second round starts from it.
    let initial = {
        let mut fresh = UserParams::new(8);
        fresh.rows_for(&users.ids, 0);
        fresh
    };
    assert_ne!(users.embedding, initial.embedding);
    // A retried round 1 starts again from the users before round 1: the same result.
    let again = train_contribution(&data, &model, &local(1, Feedback::Explicit), None, &store, Device::Cpu).expect("retry");
    assert_eq!(again, sent, "a retried round does not train the users twice");
    assert_eq!(store.load_before("job-1", 2, &spec).expect("state"), users);
    let round2 = ModelInput { round: 2, ..model };
    train_contribution(&data, &round2, &local(2, Feedback::Explicit), None, &store, Device::Cpu).expect("second round");
    let after = store.load_before("job-1", 3, &spec).expect("state");
    assert_ne!(after.embedding, users.embedding, "round 2 updated the user side");
    let round3 = ModelInput { round: 3, ..model };
    train_contribution(&data, &round3, &local(3, Feedback::Explicit), None, &store, Device::Cpu).expect("third round");
    assert_eq!(store.rounds("job-1").expect("rounds"), [2, 3], "older rounds are pruned");
    // Evaluation sends the seven recommendation sums, never per-user values.
    let eval = eval_contribution(&data, &round3, 10, None, &store, Device::Cpu).expect("evaluates");
    assert_eq!(eval.len(), confide_core::metrics::RECOMMENDATION_EVAL_LEN);
    assert_eq!(eval[2], 18.0, "every held-out rating scored");
    assert_eq!(eval[6], 3.0, "three users evaluated");
    // Another job gets its own user side, and a hostile job id cannot escape the state dir.
    assert!(store.load_before("job-2", 9, &spec).expect("empty").is_empty());
    let evil = ModelInput { job_id: "../../etc", ..model };
    let err = train_contribution(&data, &evil, &local(1, Feedback::Explicit), None, &store, Device::Cpu).expect_err("path id");
    assert_eq!(err.kind, confide_worker::failure::FailureKind::Protocol);
}

#[test]
fn new_users_start_deterministically_and_state_files_round_trip() {
    let spec = ModelSpec::TwoTower { dim: 4, hidden: vec![8, 4] };
    let ids: Vec<String> = ["u1", "u2"].map(String::from).to_vec();
    let (mut a, mut b) = (UserParams::new(4), UserParams::new(4));
    assert_eq!(a.rows_for(&ids, 9), [0, 1]);
    b.rows_for(&["u2".to_string()], 9);
    b.rows_for(&ids, 9);
    assert_eq!(a.embedding[..4], b.embedding[4..], "a user's start depends on the seed and id, not on order");
    let back = UserParams::from_safetensors(&a.to_safetensors(&spec).expect("bytes"), &spec).expect("reads");
    assert_eq!(back, a);
    let mut c = UserParams::new(4);
    c.rows_for(&ids, 10);
    assert_ne!(c.embedding, a.embedding, "another job seed gives other starts");
}

/// Users 1..=`max_user` of MovieLens, split 80/20 per user, indexed for one party.
fn movielens_party(max_user: u32, dim: usize) -> (RecData, RecData, UserParams, RecommendationPrep, f64) {
    let shared = repo().join("../shared/datasets/movielens_latest_small");
    let schema = DatasetSchema::from_file(schema_path()).expect("schema");
    let spec = schema.recommendation.clone().expect("ratings schema");
    let all = load_ratings(shared.join("ratings.csv"), &schema).expect("ratings");
    let catalogue = Catalogue::from_csv(shared.join("movies.csv"), &spec.item).expect("catalogue");
    let keep: Vec<usize> = (0..all.len()).filter(|&r| all.user_ids[all.user[r] as usize].parse::<u32>().is_ok_and(|u| u <= max_user)).collect();
    let user_of: Vec<usize> = keep.iter().map(|&r| all.user[r] as usize).collect();
    let times: Vec<i64> = keep.iter().map(|&r| all.timestamp[r]).collect();
    let plan = plan_ratings_partition(&user_of, &times, &PartitionConfig { institutions: Some(1), scheme: Scheme::Users, min_rows: 1, ..Default::default() })
        .expect("split");
    let pick = |rows: &[usize]| {
        let mut r = all.clone();
        let idx: Vec<usize> = rows.iter().map(|&i| keep[i]).collect();
        r.user = idx.iter().map(|&i| all.user[i]).collect();
        r.item = idx.iter().map(|&i| all.item[i].clone()).collect();
        r.rating = idx.iter().map(|&i| all.rating[i]).collect();
        r.timestamp = idx.iter().map(|&i| all.timestamp[i]).collect();
        r.line = idx.iter().map(|&i| all.line[i]).collect();
        r
    };
    let mut users = UserParams::new(dim);
    let train = RecData::index(&pick(&plan[0].train), &catalogue, &spec, &mut users, 1).expect("train");
    let test = RecData::index(&pick(&plan[0].test), &catalogue, &spec, &mut users, 1).expect("test");
    let mean = train.rating.iter().map(|&r| f64::from(r)).sum::<f64>() / train.len() as f64;
    let baseline = (test.rating.iter().map(|&r| (f64::from(r) - mean).powi(2)).sum::<f64>() / test.len() as f64).sqrt();
    let mut prep = prep_for(&schema, catalogue.ids().to_vec(), mean).recommendation.expect("prep");
    prep.mean_rating = mean;
    (train, test, users, prep, baseline)
}

#[test]
fn matrix_factorisation_predicts_movielens_ratings_better_than_the_global_mean() {
    let (train, test, mut users, prep, baseline) = movielens_party(200, 16);
    let spec = ModelSpec::MatrixFactorization { dim: 16 };
    let mut global = ModelParams::init(spec.layout(prep.items.len()), 1);
    global.tensor_mut(rec_names::GLOBAL_BIAS).expect("bias")[0] = prep.mean_rating as f32;
    let untrained = evaluate_recommender(&spec, &global, &users, &train, &test, &prep, (0.5, 5.0), Device::Cpu).expect("eval");
    for epoch in 0..5 {
        let cfg = RecTrainConfig::from(&LocalTraining { batch_size: 128, ..local(epoch, Feedback::Explicit) });
        global = train_recommender(&spec, &global, &mut users, &train, &cfg, Device::Cpu).expect("trains").shared;
    }
    let e = evaluate_recommender(&spec, &global, &users, &train, &test, &prep, (0.5, 5.0), Device::Cpu).expect("eval");
    let m = e.metrics(10);
    assert!(m["rmse"] < baseline - 0.02, "MF RMSE {} vs global mean {baseline}", m["rmse"]);
    assert!(m["hr@10"] > untrained.metrics(10)["hr@10"], "ranking improved: {m:?}");
    assert_eq!(e.ratings as usize, test.len());
    // Evaluation is deterministic: the same negatives, the same sums.
    let again = evaluate_recommender(&spec, &global, &users, &train, &test, &prep, (0.5, 5.0), Device::Cpu).expect("eval");
    assert_eq!(again, e);
}

#[test]
fn two_tower_with_implicit_feedback_ranks_held_out_items_above_chance() {
    let (train, test, mut users, mut prep, _) = movielens_party(200, 16);
    prep.feedback = Feedback::Implicit;
    let spec = ModelSpec::TwoTower { dim: 16, hidden: vec![32, 16] };
    let mut global = ModelParams::init(spec.layout(prep.items.len()), 2);
    for epoch in 0..3 {
        let cfg = RecTrainConfig::from(&LocalTraining { batch_size: 256, ..local(epoch, Feedback::Implicit) });
        let out = train_recommender(&spec, &global, &mut users, &train, &cfg, Device::Cpu).expect("trains");
        assert!(out.mean_loss.is_finite());
        global = out.shared;
    }
    let e = evaluate_recommender(&spec, &global, &users, &train, &test, &prep, (0.5, 5.0), Device::Cpu).expect("eval");
    let m = e.metrics(10);
    assert!(!m.contains_key("rmse"), "no rating error for implicit feedback");
    // Random ranking among 100 candidates hits the top 10 a tenth of the time.
    assert!(m["hr@10"] > 0.2, "two-tower HR@10 {m:?}");
}
