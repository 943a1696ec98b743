//! Churn comparison (issue 4, item 4): centralised vs federated (IID, Dirichlet label skew, by
//! country) vs local-only, logistic regression and an MLP, on Telco churn and the bank's
//! Churn_Modelling. Writes `benches/results/churn.{csv,md}` and one PNG per partition × model.
//!
//! `cargo run --release -p confide-benches --bin compare_churn [OUT_DIR]`

use confide_benches::comparison::{self, ModelPlan, PartitionPlan, Study};
use confide_datasets::partition::{PartitionConfig, Scheme};

fn partition(label: &str, institutions: Option<usize>, scheme: Scheme) -> PartitionPlan {
    PartitionPlan {
        label: label.into(),
        config: PartitionConfig {
            institutions,
            scheme,
            test_fraction: 0.2,
            seed: 42,
            min_rows: 200,
            holdout: Default::default(),
        },
    }
}

fn models() -> Vec<ModelPlan> {
    let training = "rounds = 20\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.01\noptimizer = \"momentum\"";
    vec![
        ModelPlan::logistic_regression(training),
        ModelPlan::mlp(&[32, 16], &training.replace("rounds = 20", "rounds = 30")),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = comparison::out_dir_from_args();
    let seeds = comparison::seeds_from_env(&[1, 2, 3])?;
    let data = comparison::shared_datasets();
    let schemas = comparison::repo_root().join("datasets/schemas");
    let studies = [
        Study {
            dataset: "Telco churn".into(),
            slug: "telco_churn".into(),
            csv: data.join("telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"),
            schema: schemas.join("telco_churn.toml"),
            partitions: vec![
                partition("IID", Some(3), Scheme::Iid),
                partition("Dirichlet α=0.5", Some(4), Scheme::Dirichlet { alpha: 0.5 }),
            ],
            models: models(),
            seeds: seeds.clone(),
            balance_classes: false,
        },
        Study {
            dataset: "Bank Churn_Modelling".into(),
            slug: "bank_churn_modelling".into(),
            csv: data.join("bank_churn_modelling/Churn_Modelling.csv"),
            schema: schemas.join("bank_churn_modelling.toml"),
            partitions: vec![
                partition("IID", Some(3), Scheme::Iid),
                partition("Dirichlet α=0.3", Some(3), Scheme::Dirichlet { alpha: 0.3 }),
                partition(
                    "by Geography",
                    None,
                    Scheme::ByColumn {
                        column: "Geography".into(),
                    },
                ),
            ],
            models: models(),
            seeds: seeds.clone(),
            balance_classes: false,
        },
    ];
    let mut results = Vec::new();
    for study in &studies {
        results.extend(comparison::run_study(study)?);
    }
    for path in comparison::write_outputs(
        &results,
        &out,
        "churn",
        "Churn: centralised vs federated vs local-only",
    )? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
