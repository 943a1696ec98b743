//! Credit-default comparison (issue 4, item 4): centralised vs federated (IID and Dirichlet
//! label skew) vs local-only, logistic regression and an MLP, on the UCI Taiwan credit card
//! default data, with the positive class weighted by negatives/positives (22 % defaults).
//! Writes `benches/results/credit.{csv,md}` and one PNG per partition × model.
//!
//! `cargo run --release -p confide-benches --bin compare_credit [OUT_DIR]`

use confide_benches::comparison::{self, ModelPlan, PartitionPlan, Study};
use confide_datasets::partition::{PartitionConfig, Scheme};

fn partition(label: &str, institutions: usize, scheme: Scheme) -> PartitionPlan {
    PartitionPlan {
        label: label.into(),
        config: PartitionConfig {
            institutions: Some(institutions),
            scheme,
            test_fraction: 0.2,
            seed: 42,
            min_rows: 500,
            holdout: Default::default(),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = comparison::out_dir_from_args();
    let seeds = comparison::seeds_from_env(&[1, 2, 3])?;
    let training = "rounds = 20\nlocal_epochs = 1\nbatch_size = 64\nlearning_rate = 0.002\noptimizer = \"momentum\"";
    let study = Study {
        dataset: "UCI Taiwan credit default".into(),
        slug: "uci_credit_card_default".into(),
        csv: comparison::shared_datasets().join("uci_credit_card_default/UCI_Credit_Card.csv"),
        schema: comparison::repo_root().join("datasets/schemas/uci_credit_card_default.toml"),
        partitions: vec![
            partition("IID", 5, Scheme::Iid),
            partition("Dirichlet α=0.3", 5, Scheme::Dirichlet { alpha: 0.3 }),
        ],
        models: vec![
            ModelPlan::logistic_regression(training),
            ModelPlan::mlp(
                &[32, 16],
                &training
                    .replace("rounds = 20", "rounds = 30")
                    .replace("0.002", "0.01"),
            ),
        ],
        seeds,
        balance_classes: true,
    };
    let results = comparison::run_study(&study)?;
    for path in comparison::write_outputs(
        &results,
        &out,
        "credit",
        "Credit default: centralised vs federated vs local-only",
    )? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
