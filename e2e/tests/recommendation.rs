//! Recommendation end to end: federated biased-MF and two-tower (implicit feedback) jobs on a
//! slice of MovieLens latest-small,
//! submitted from a job file through the CLI (which reads the schema and the item catalogue),
//! run by the real coordinator and three real workers with secure aggregation over mutual TLS.
//! Users are partitioned across the banks; each bank keeps its users' embeddings in its own
//! state directory.

use std::path::Path;
use std::time::Duration;

use confide_e2e::{Cluster, repo_root, shared_datasets};

/// RMSE of predicting the mean training rating for every held-out rating, over all banks.
fn global_mean_rmse(partition: &Path, banks: &[&str]) -> f64 {
    let ratings = |file: &str| -> Vec<f64> {
        banks
            .iter()
            .flat_map(|b| {
                let text = std::fs::read_to_string(partition.join(b).join(file)).expect("split file");
                text.lines().skip(1).map(|l| l.split(',').nth(2).and_then(|r| r.parse().ok()).expect("rating")).collect::<Vec<f64>>()
            })
            .collect()
    };
    let train = ratings("train.csv");
    let mean = train.iter().sum::<f64>() / train.len() as f64;
    let test = ratings("test.csv");
    (test.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / test.len() as f64).sqrt()
}

#[test]
fn federated_mf_beats_the_global_mean_two_tower_ranks_above_chance_and_users_stay_at_their_banks() {
    let mut cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (schema, partition) = cluster.movielens_federation(dir.path(), 150, 5);
    let banks = ["bank1", "bank2", "bank3"];
    let job = format!(
        "name = \"mf\"\ndataset = \"movielens_latest_small\"\nschema = {:?}\ncatalogue = {:?}\nseed = 3\n\
         [model]\nkind = \"matrix_factorization\"\ndim = 16\n\
         [training]\nrounds = 6\nlocal_epochs = 1\nbatch_size = 128\nlearning_rate = 0.01\noptimizer = \"adam\"\nl2 = 0.05\n",
        schema,
        shared_datasets().join("movielens_latest_small/movies.csv"),
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let rounds = done["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 6);
    let first = &rounds[0]["metrics"];
    let last = &rounds[5]["metrics"];
    assert_eq!(last["contributors"].as_f64(), Some(3.0));
    let rmse = last["rmse"].as_f64().expect("rmse");
    let baseline = global_mean_rmse(&partition, &banks);
    assert!(rmse.is_finite() && rmse < baseline, "federated MF RMSE {rmse} vs global mean {baseline}");
    assert!(rmse < first["rmse"].as_f64().expect("first rmse"), "training improved RMSE");
    let hr = last["hr@10"].as_f64().expect("hr@10");
    let ndcg = last["ndcg@10"].as_f64().expect("ndcg@10");
    assert!((0.0..=1.0).contains(&hr) && ndcg > 0.0 && ndcg <= hr, "HR@10 {hr}, NDCG@10 {ndcg}");
    // Every held-out rating of the three banks was scored, and the counts are exact integers.
    let held_out: usize = banks
        .iter()
        .map(|b| std::fs::read_to_string(partition.join(b).join("test.csv")).expect("test").lines().count() - 1)
        .sum();
    assert_eq!(last["ratings_evaluated"].as_f64(), Some(held_out as f64));
    assert_eq!(last["users_evaluated"].as_f64(), Some(150.0));
    // Each bank's user side stays in its own state directory.
    for bank in banks {
        let state = cluster.worker_data_dir(bank).join("user_state").join(&id).join("round-6.safetensors");
        assert!(state.exists(), "{} holds its users' embeddings", state.display());
    }
    // The global model is the item side only: pulled, it has no user tensors.
    let model = dir.path().join("model.safetensors");
    let out = cluster.confide(&["model", "pull", &id, "--output", model.to_str().expect("utf-8")]);
    assert!(out.status.success(), "pull: {}", String::from_utf8_lossy(&out.stderr));
    let params = confide_core::model::ModelParams::read_safetensors_any(&std::fs::read(&model).expect("model")).expect("readable");
    let names: Vec<&str> = params.layout.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["item_embedding", "item_bias", "global_bias"]);
    assert_eq!(params.layout.tensors[0].shape, vec![9742, 16]);

    // The two-tower model with implicit feedback (sampled negatives) on the same banks: ranking
    // metrics only, and the towers are part of the federated model.
    let two_tower = job
        .replace("name = \"mf\"", "name = \"two-tower\"")
        .replace("kind = \"matrix_factorization\"\ndim = 16", "kind = \"two_tower\"\ndim = 16\nhidden = [32, 16]")
        .replace("rounds = 6", "rounds = 3\nfeedback = \"implicit\"\nnegatives = 2");
    let id = cluster.submit(&two_tower);
    let done = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    let last = &done["rounds"][2]["metrics"];
    assert!(last.get("rmse").is_none(), "no rating error for implicit feedback: {last}");
    let hr = last["hr@10"].as_f64().expect("hr@10");
    assert!(hr > 0.1, "two-tower ranks held-out items above chance (0.1): {hr}");
    let out = cluster.confide(&["model", "pull", &id, "--output", model.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let params = confide_core::model::ModelParams::read_safetensors_any(&std::fs::read(&model).expect("model")).expect("readable");
    assert!(params.tensor("user_tower.fc1.weight").is_some() && params.tensor("user_embedding").is_none());
}

#[test]
fn recommendation_jobs_with_the_wrong_schema_or_catalogue_are_refused_with_the_reason() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let movies = shared_datasets().join("movielens_latest_small/movies.csv");
    let submit = |schema: &Path, catalogue: &Path| {
        let job = format!(
            "name = \"mf\"\ndataset = \"{}\"\nschema = {schema:?}\ncatalogue = {catalogue:?}\n\
             [model]\nkind = \"matrix_factorization\"\ndim = 8\n[training]\nrounds = 1\nlearning_rate = 0.01\n",
            if schema.ends_with("telco_churn.toml") { "telco_churn" } else { "movielens_latest_small" }
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, job).expect("job file");
        cluster.confide(&["job", "submit", path.to_str().expect("utf-8")])
    };
    // A tabular schema: the CLI cannot find the item column to read the catalogue with.
    let out = submit(&confide_e2e::telco().1, &movies);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("catalogue") && err.contains("[recommendation]"), "{err}");
    // A catalogue file without the schema's item column.
    let bad = dir.path().join("items.csv");
    std::fs::write(&bad, "id,title\n1,A\n").expect("catalogue");
    let out = submit(&repo_root().join("datasets/schemas/movielens_latest_small.toml"), &bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("field `catalogue`") && err.contains("movieId"), "{err}");
    // A catalogue listing an item twice is refused before anything is sent.
    std::fs::write(&bad, "movieId\n1\n1\n").expect("catalogue");
    let out = submit(&repo_root().join("datasets/schemas/movielens_latest_small.toml"), &bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listed twice"), "{}", String::from_utf8_lossy(&out.stderr));
}
