//! Local training on real data (Telco churn from `../shared/datasets/`), FedProx, determinism,
//! and refusal of malformed inputs.

use std::path::PathBuf;
use std::sync::OnceLock;

use confide_datasets::{DatasetSchema, Encoded, Preprocessing, load_csv, local_stats};
use confide_worker::ml::{
    Device, MlError, ModelParams, ModelSpec, Optimizer, TrainConfig, evaluate, predict, train_local,
};

/// Telco split 80/20 by row position (every fifth row held out), encoded with preprocessing
/// derived from the training rows' statistics, as one institution would.
fn telco() -> &'static (Encoded, Encoded) {
    static DATA: OnceLock<(Encoded, Encoded)> = OnceLock::new();
    DATA.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let schema = DatasetSchema::from_file(root.join("datasets/schemas/telco_churn.toml"))
            .expect("schema");
        let table = load_csv(
            root.join("../shared/datasets/telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv"),
            &schema,
        )
        .expect("Telco loads");
        let p = Preprocessing::from_aggregate(&schema, &local_stats(&table, &schema))
            .expect("preprocessing");
        let all = p.encode(&table).expect("encodes");
        let (mut train, mut test) = (empty(all.dim), empty(all.dim));
        for r in 0..all.rows {
            let part = if r % 5 == 4 { &mut test } else { &mut train };
            part.features.extend_from_slice(&all.features[r * all.dim..(r + 1) * all.dim]);
            part.labels.push(all.labels[r]);
            part.rows += 1;
        }
        (train, test)
    })
}

fn empty(dim: usize) -> Encoded {
    Encoded { features: Vec::new(), labels: Vec::new(), rows: 0, dim }
}

/// Exact AUC by sorting (ties count one half).
fn auc(probs: &[f32], labels: &[f32]) -> f64 {
    let mut pairs: Vec<(f32, bool)> =
        probs.iter().copied().zip(labels.iter().map(|&y| y > 0.5)).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0f64, 0usize);
    while i < pairs.len() {
        let j = (i..pairs.len()).find(|&j| pairs[j].0 != pairs[i].0).unwrap_or(pairs.len());
        let mid_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += mid_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let pos = pairs.iter().filter(|p| p.1).count() as f64;
    let neg = pairs.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn cfg(epochs: usize, optimizer: Optimizer, learning_rate: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        learning_rate,
        optimizer,
        prox_mu: 0.0,
        pos_weight: None,
        seed: 7,
    }
}

#[test]
fn logistic_regression_on_telco_reaches_reference_auc() {
    let (train, test) = telco();
    let spec = ModelSpec::LogisticRegression;
    let global = ModelParams::init(spec.layout(train.dim), 1);
    let out = train_local(&spec, &global, train, &cfg(10, Optimizer::Adam, 0.01), Device::Cpu)
        .expect("trains");
    assert_eq!(out.samples, train.rows);
    assert_eq!(out.epoch_losses.len(), 10);
    assert!(
        out.mean_loss < 0.45 && out.epoch_losses[9] < out.epoch_losses[0],
        "{:?}",
        out.epoch_losses
    );
    let probs = predict(&spec, &out.params, &test.features, test.rows, test.dim, Device::Cpu)
        .expect("predicts");
    let a = auc(&probs, &test.labels);
    assert!(a > 0.82, "held-out AUC {a}");
    // The histogram AUC the coordinator computes agrees with the exact one.
    let contribution = evaluate(&spec, &out.params, test, 1000, Device::Cpu).expect("evaluates");
    let hist_auc = contribution.metrics().get("auc").copied().expect("auc metric");
    assert!((hist_auc - a).abs() < 0.005, "histogram AUC {hist_auc} vs exact {a}");
}

#[test]
fn mlp_trains_with_momentum_and_pos_weight() {
    let (train, test) = telco();
    let spec = ModelSpec::Mlp { hidden: vec![32, 16] };
    let global = ModelParams::init(spec.layout(train.dim), 2);
    let mut c = cfg(3, Optimizer::Sgd { momentum: 0.9 }, 0.01);
    c.pos_weight = Some(2.8);
    let out = train_local(&spec, &global, train, &c, Device::Cpu).expect("trains");
    let probs = predict(&spec, &out.params, &test.features, test.rows, test.dim, Device::Cpu)
        .expect("predicts");
    assert!(auc(&probs, &test.labels) > 0.8);
    // The positive weight pushes scores up: mean predicted probability exceeds the base rate.
    let mean = probs.iter().map(|&p| f64::from(p)).sum::<f64>() / probs.len() as f64;
    assert!(mean > 0.35, "mean probability {mean}");
}

#[test]
fn training_is_deterministic_per_seed() {
    let (train, _) = telco();
    let spec = ModelSpec::Mlp { hidden: vec![8] };
    let global = ModelParams::init(spec.layout(train.dim), 3);
    let c = cfg(1, Optimizer::Adam, 0.01);
    let a = train_local(&spec, &global, train, &c, Device::Cpu).expect("trains");
    let b = train_local(&spec, &global, train, &c, Device::Cpu).expect("trains");
    assert_eq!(a, b);
    let other = train_local(&spec, &global, train, &TrainConfig { seed: 8, ..c }, Device::Cpu)
        .expect("trains");
    assert_ne!(a.params, other.params);
}

#[test]
fn fedprox_keeps_weights_closer_to_the_global_model() {
    let (train, _) = telco();
    let spec = ModelSpec::LogisticRegression;
    let global = ModelParams::init(spec.layout(train.dim), 4);
    let distance = |mu: f64| {
        let c = TrainConfig { prox_mu: mu, ..cfg(2, Optimizer::Sgd { momentum: 0.0 }, 0.05) };
        let out = train_local(&spec, &global, train, &c, Device::Cpu).expect("trains");
        out.params
            .values
            .iter()
            .zip(&global.values)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (fedavg, fedprox) = (distance(0.0), distance(1.0));
    assert!(fedprox < 0.8 * fedavg, "FedProx distance {fedprox} vs FedAvg {fedavg}");
}

#[test]
fn malformed_inputs_are_refused() {
    let (train, _) = telco();
    let spec = ModelSpec::LogisticRegression;
    let c = cfg(1, Optimizer::Adam, 0.01);
    let wrong = ModelParams::init(spec.layout(train.dim + 1), 1);
    let err = train_local(&spec, &wrong, train, &c, Device::Cpu).expect_err("shape mismatch");
    assert!(matches!(err, MlError::LayoutMismatch { .. }), "{err}");
    let mlp = ModelSpec::Mlp { hidden: vec![4] };
    let err =
        train_local(&mlp, &ModelParams::init(spec.layout(train.dim), 1), train, &c, Device::Cpu)
            .expect_err("family mismatch");
    assert!(matches!(err, MlError::LayoutMismatch { .. }), "{err}");

    let global = ModelParams::init(spec.layout(2), 1);
    let tiny = |features: Vec<f32>, labels: Vec<f32>| Encoded {
        rows: labels.len(),
        dim: 2,
        features,
        labels,
    };
    let run = |data: &Encoded, c: &TrainConfig| train_local(&spec, &global, data, c, Device::Cpu);
    assert!(matches!(run(&tiny(vec![], vec![]), &c), Err(MlError::NoData)));
    assert!(matches!(run(&tiny(vec![1.0; 3], vec![1.0, 0.0]), &c), Err(MlError::Data(_))));
    assert!(matches!(run(&tiny(vec![f32::NAN, 0.0], vec![1.0]), &c), Err(MlError::Data(_))));
    assert!(matches!(run(&tiny(vec![1.0, 0.0], vec![0.5]), &c), Err(MlError::Data(_))));
    for bad in [
        TrainConfig { epochs: 0, ..c.clone() },
        TrainConfig { batch_size: 0, ..c.clone() },
        TrainConfig { learning_rate: f64::NAN, ..c.clone() },
        TrainConfig { prox_mu: -1.0, ..c.clone() },
        TrainConfig { pos_weight: Some(0.0), ..c.clone() },
        TrainConfig { optimizer: Optimizer::Sgd { momentum: 1.0 }, ..c.clone() },
    ] {
        assert!(
            matches!(run(&tiny(vec![1.0, 0.0], vec![1.0]), &bad), Err(MlError::InvalidConfig(_))),
            "{bad:?}"
        );
    }
    // A learning rate that blows up produces an error, never parameters.
    let huge = tiny(vec![1e20; 4], vec![1.0, 0.0]);
    let diverge =
        TrainConfig { learning_rate: 1e30, ..cfg(3, Optimizer::Sgd { momentum: 0.0 }, 1.0) };
    let err = run(&huge, &diverge).expect_err("diverges");
    assert!(matches!(err, MlError::NonFiniteLoss { .. } | MlError::Model(_)), "{err}");
}

#[test]
fn train_config_serde_and_job_conversion() {
    let c = TrainConfig { pos_weight: Some(3.0), ..cfg(2, Optimizer::Sgd { momentum: 0.9 }, 0.1) };
    let json = serde_json::to_string(&c).expect("serialises");
    assert_eq!(serde_json::from_str::<TrainConfig>(&json).expect("parses"), c);
    let local = confide_core::job::LocalTraining {
        epochs: 2,
        batch_size: 64,
        learning_rate: 0.1,
        optimizer: confide_core::job::LocalOptimizer::Momentum,
        prox_mu: 0.0,
        pos_weight: Some(3.0),
        seed: 7,
        l2: 0.0,
        feedback: Default::default(),
        negatives: 4,
    };
    assert_eq!(TrainConfig::from(&local), c);
}

/// Training throughput on Telco (CPU, batch 64); run with `--ignored --nocapture`.
#[test]
#[ignore = "timing report, not a check"]
fn throughput_report() {
    let (train, test) = telco();
    if let Some(n) = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()) {
        confide_worker::ml::set_cpu_threads(n);
    }
    for spec in [ModelSpec::LogisticRegression, ModelSpec::Mlp { hidden: vec![32, 16] }] {
        for (name, optimizer) in
            [("sgd", Optimizer::Sgd { momentum: 0.9 }), ("adam", Optimizer::Adam)]
        {
            let global = ModelParams::init(spec.layout(train.dim), 1);
            let c = cfg(10, optimizer, 0.01);
            let start = std::time::Instant::now();
            let out = train_local(&spec, &global, train, &c, Device::Cpu).expect("trains");
            let secs = start.elapsed().as_secs_f64();
            let probs =
                predict(&spec, &out.params, &test.features, test.rows, test.dim, Device::Cpu)
                    .expect("predicts");
            println!(
                "{:<22} {name:<5} {:>9.0} rows/s  ({} rows × 10 epochs in {secs:.2} s, held-out AUC {:.4})",
                spec.label(),
                (train.rows * 10) as f64 / secs,
                train.rows,
                auc(&probs, &test.labels)
            );
        }
    }
}
