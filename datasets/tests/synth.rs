//! The synthetic generator end to end: deterministic per seed, loads back through the schema
//! loader in both formats, drift knobs move institution statistics the way the ground truth says,
//! and a plain logistic fit recovers the ground truth's coefficients.

use std::path::Path;

use confide_datasets::synth::{ColumnGen, GroundTruth, SynthConfig, Synthesizer, builtin_schema};
use confide_datasets::{ColumnData, DataFormat, DatasetSchema, RawTable, load_table};

fn generate(out: &Path, cfg: &SynthConfig, format: DataFormat) -> GroundTruth {
    let schema = builtin_schema().expect("built-in schema");
    let truth = Synthesizer::new(&schema, cfg)
        .expect("plans")
        .write(out, format, confide_datasets::synth::BUILTIN_SCHEMA, false)
        .expect("generates");
    let on_disk: GroundTruth = serde_json::from_str(
        &std::fs::read_to_string(out.join("ground_truth.json")).expect("ground truth written"),
    )
    .expect("ground truth parses");
    // JSON keeps every count and name exactly and every parameter to within float printing.
    assert_eq!((&on_disk.config, &on_disk.feature_names), (&truth.config, &truth.feature_names));
    for (a, b) in on_disk.institutions.iter().zip(&truth.institutions) {
        assert_eq!(
            (&a.name, a.train_rows, a.test_rows, a.positives),
            (&b.name, b.train_rows, b.test_rows, b.positives)
        );
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-12);
        assert!(
            close(&a.coefficients, &b.coefficients) && close(&a.numeric_shift, &b.numeric_shift)
        );
        assert!((a.intercept_shift - b.intercept_shift).abs() < 1e-12);
    }
    truth
}

/// Loads `bankN/{train,test}` with the schema written beside them.
fn load(out: &Path, bank: &str, split: &str, format: DataFormat) -> RawTable {
    let schema = DatasetSchema::from_file(out.join("schema.toml")).expect("schema.toml");
    load_table(out.join(bank).join(format!("{split}.{}", format.extension())), &schema)
        .expect("generated file loads with its schema")
}

fn small() -> SynthConfig {
    SynthConfig { rows: 3_000, institutions: 3, seed: 7, ..SynthConfig::default() }
}

#[test]
fn generation_is_deterministic_per_seed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let cfg = SynthConfig { covariate_shift: 0.5, label_shift: 0.5, concept_drift: 0.5, ..small() };
    generate(dirs[0].path(), &cfg, DataFormat::Csv);
    generate(dirs[1].path(), &cfg, DataFormat::Csv);
    generate(dirs[2].path(), &SynthConfig { seed: 8, ..cfg.clone() }, DataFormat::Csv);
    let read = |d: &Path| std::fs::read(d.join("bank2/train.csv")).expect("file");
    assert_eq!(read(dirs[0].path()), read(dirs[1].path()));
    assert_ne!(read(dirs[0].path()), read(dirs[2].path()));

    // The same seed in Parquet gives the same rows.
    let pq = tempfile::tempdir().expect("tempdir");
    generate(pq.path(), &cfg, DataFormat::Parquet);
    for bank in ["bank1", "bank2", "bank3"] {
        for split in ["train", "test"] {
            let (a, b) = (
                load(dirs[0].path(), bank, split, DataFormat::Csv),
                load(pq.path(), bank, split, DataFormat::Parquet),
            );
            assert_eq!((a.columns, a.labels), (b.columns, b.labels), "{bank}/{split}");
        }
    }
}

#[test]
fn generated_files_load_back_with_the_counts_the_ground_truth_reports() {
    for format in [DataFormat::Csv, DataFormat::Parquet] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SynthConfig { missing_rate: 0.05, ..small() };
        let truth = generate(dir.path(), &cfg, format);
        assert_eq!(truth.institutions.iter().map(|i| i.rows).sum::<u64>(), 3_000);
        for inst in &truth.institutions {
            let (train, test) = (
                load(dir.path(), &inst.name, "train", format),
                load(dir.path(), &inst.name, "test", format),
            );
            assert_eq!((train.rows as u64, test.rows as u64), (inst.train_rows, inst.test_rows));
            assert_eq!((train.positives() + test.positives()) as u64, inst.positives);
            let ratio = test.rows as f64 / (train.rows + test.rows) as f64;
            assert!((ratio - 0.2).abs() < 0.05, "{}: test fraction {ratio}", inst.name);
            // Blank cells went through the built-in schema's `impute` policy.
            let ColumnData::Numeric(tenure) = &train.columns[0].data else { panic!("numeric") };
            let missing =
                tenure.iter().filter(|v| v.is_none()).count() as f64 / tenure.len() as f64;
            assert!((0.02..0.09).contains(&missing), "{}: missing rate {missing}", inst.name);
        }
        // Refuses to overwrite earlier output.
        let schema = builtin_schema().expect("schema");
        let again = Synthesizer::new(&schema, &small()).expect("plans").write(
            dir.path(),
            format,
            "",
            false,
        );
        assert!(again.expect_err("exists").to_string().contains("already exists"));
    }
}

/// Mean of each numeric feature column and the positive rate of a table.
fn numeric_means(t: &RawTable) -> Vec<f64> {
    t.columns
        .iter()
        .filter_map(|c| match &c.data {
            ColumnData::Numeric(v) => {
                Some(v.iter().flatten().sum::<f64>() / v.iter().flatten().count() as f64)
            }
            ColumnData::Categorical(_) => None,
        })
        .collect()
}

fn positive_rate(t: &RawTable) -> f64 {
    t.positives() as f64 / t.rows as f64
}

/// Numeric (center, scale) pairs from the ground truth, in schema order.
fn scales(truth: &GroundTruth) -> Vec<(f64, f64)> {
    truth
        .columns
        .iter()
        .filter_map(|g| match g {
            ColumnGen::Numeric { center, scale, .. } => Some((*center, *scale)),
            _ => None,
        })
        .collect()
}

#[test]
fn covariate_shift_moves_institution_means_the_way_the_ground_truth_says() {
    let cfg =
        SynthConfig { rows: 40_000, institutions: 4, test_fraction: 0.0, ..SynthConfig::default() };
    let (still, shifted) =
        (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let none = generate(still.path(), &cfg, DataFormat::Csv);
    let truth =
        generate(shifted.path(), &SynthConfig { covariate_shift: 0.8, ..cfg }, DataFormat::Csv);
    let scale = scales(&truth);
    let z_means = |dir: &Path, truth: &GroundTruth| -> Vec<Vec<f64>> {
        truth
            .institutions
            .iter()
            .map(|i| {
                let means = numeric_means(&load(dir, &i.name, "train", DataFormat::Csv));
                means.iter().zip(&scale).map(|(m, (c, s))| (m - c) / s).collect()
            })
            .collect()
    };
    // Without shift, institutions agree to sampling noise on every numeric column.
    let flat = z_means(still.path(), &none);
    for j in 0..scale.len() {
        let spread = flat.iter().map(|m| m[j]).fold(f64::MIN, f64::max)
            - flat.iter().map(|m| m[j]).fold(f64::MAX, f64::min);
        assert!(spread < 0.06, "column {j}: spread {spread} without covariate shift");
    }
    // With shift, every clearly separated pair of institutions is ordered as its shifts are.
    let moved = z_means(shifted.path(), &truth);
    let mut checked = 0;
    let pairs = (0..4).flat_map(|a| (0..4).map(move |b| (a, b)));
    for ((a, b), j) in pairs.flat_map(|p| (0..scale.len()).map(move |j| (p, j))) {
        let (sa, sb) =
            (truth.institutions[a].numeric_shift[j], truth.institutions[b].numeric_shift[j]);
        if sa - sb > 0.3 {
            checked += 1;
            assert!(
                moved[a][j] > moved[b][j],
                "column {j}: bank{} (shift {sa:.2}) vs bank{} (shift {sb:.2})",
                a + 1,
                b + 1
            );
        }
    }
    assert!(checked >= 10, "only {checked} pairs were far enough apart to check");
    // Level frequencies follow the tilted probabilities.
    for (k, inst) in truth.institutions.iter().enumerate() {
        let t = load(shifted.path(), &inst.name, "train", DataFormat::Csv);
        let ColumnData::Categorical(contract) = &t.columns[6].data else { panic!("contract") };
        for (level, p) in inst.level_probabilities[0].iter().enumerate() {
            let seen = contract.iter().filter(|v| **v == Some(level as u32)).count() as f64
                / contract.len() as f64;
            assert!((seen - p).abs() < 0.03, "bank{} contract level {level}: {seen} vs {p}", k + 1);
        }
    }
}

#[test]
fn label_shift_orders_positive_rates_by_intercept_shift() {
    let cfg =
        SynthConfig { rows: 40_000, institutions: 4, test_fraction: 0.0, ..SynthConfig::default() };
    let (still, shifted) =
        (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let none = generate(still.path(), &cfg, DataFormat::Csv);
    for inst in &none.institutions {
        let rate = positive_rate(&load(still.path(), &inst.name, "train", DataFormat::Csv));
        assert_eq!(inst.intercept_shift, 0.0);
        assert!(
            (rate - 0.25).abs() < 0.02,
            "{}: positive rate {rate} without label shift",
            inst.name
        );
    }
    let truth = generate(shifted.path(), &SynthConfig { label_shift: 1.0, ..cfg }, DataFormat::Csv);
    let mut by_shift: Vec<(f64, f64)> = truth
        .institutions
        .iter()
        .map(|i| {
            (
                i.intercept_shift,
                positive_rate(&load(shifted.path(), &i.name, "train", DataFormat::Csv)),
            )
        })
        .collect();
    by_shift.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in by_shift.windows(2) {
        if pair[1].0 - pair[0].0 > 0.2 {
            assert!(pair[1].1 > pair[0].1, "rates not ordered by intercept shift: {by_shift:?}");
        }
    }
    let rates: Vec<f64> = by_shift.iter().map(|p| p.1).collect();
    let spread = rates.iter().cloned().fold(f64::MIN, f64::max)
        - rates.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "label shift 1.0 gave a positive-rate spread of only {spread}");
}

/// Design matrix on the ground truth's scale: intercept, z for numeric columns, and for each
/// categorical column an indicator per level after the first (the reference).
fn design(t: &RawTable, truth: &GroundTruth) -> (Vec<Vec<f64>>, Vec<f64>) {
    let scale = scales(truth);
    let mut rows = vec![vec![1.0]; t.rows];
    let mut numeric = 0;
    for col in &t.columns {
        match &col.data {
            ColumnData::Numeric(v) => {
                let (c, s) = scale[numeric];
                numeric += 1;
                for (row, x) in rows.iter_mut().zip(v) {
                    row.push((x.expect("no missing cells") - c) / s);
                }
            }
            ColumnData::Categorical(v) => {
                let levels = v.iter().flatten().max().map_or(0, |m| *m as usize + 1);
                for (row, l) in rows.iter_mut().zip(v) {
                    let l = l.expect("no missing cells") as usize;
                    row.extend((1..levels).map(|i| f64::from(u8::from(i == l))));
                }
            }
        }
    }
    (rows, t.labels.iter().map(|&y| f64::from(y)).collect())
}

/// The truth's coefficients in [`design`]'s layout (categorical levels relative to the first).
fn truth_in_design_layout(weights: &[f64], intercept: f64, truth: &GroundTruth) -> Vec<f64> {
    let mut out = vec![intercept];
    let mut w = 0;
    for g in &truth.columns {
        match g {
            ColumnGen::Numeric { .. } => {
                out.push(weights[w]);
                w += 1;
            }
            ColumnGen::Categorical { probabilities, .. } => {
                let n = probabilities.len();
                out[0] += weights[w];
                out.extend((1..n).map(|l| weights[w + l] - weights[w]));
                w += n;
            }
            _ => {}
        }
    }
    out
}

/// Logistic regression by full-batch gradient descent.
fn fit(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let d = x[0].len();
    let mut beta = vec![0.0; d];
    let mut grad = vec![0.0; d];
    for _ in 0..1500 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        for (row, &label) in x.iter().zip(y) {
            let z: f64 = row.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let err = 1.0 / (1.0 + (-z).exp()) - label;
            for (g, a) in grad.iter_mut().zip(row) {
                *g += err * a;
            }
        }
        for (b, g) in beta.iter_mut().zip(&grad) {
            *b -= 1.0 * g / x.len() as f64;
        }
    }
    beta
}

#[test]
fn logistic_fit_recovers_the_ground_truth_coefficients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg =
        SynthConfig { rows: 30_000, institutions: 1, test_fraction: 0.0, ..SynthConfig::default() };
    let truth = generate(dir.path(), &cfg, DataFormat::Parquet);
    let (x, y) = design(&load(dir.path(), "bank1", "train", DataFormat::Parquet), &truth);
    let fitted = fit(&x, &y);
    let expected = truth_in_design_layout(&truth.coefficients, truth.intercept, &truth);
    assert_eq!(fitted.len(), expected.len());
    let mut main = 0;
    for (i, (f, e)) in fitted.iter().zip(&expected).enumerate() {
        if e.abs() >= 0.25 {
            main += 1;
            assert_eq!(f.signum(), e.signum(), "coefficient {i}: fitted {f:.3}, truth {e:.3}");
        }
        assert!((f - e).abs() < 0.25, "coefficient {i}: fitted {f:.3}, truth {e:.3}");
    }
    assert!(main >= 8, "only {main} coefficients are large enough to check");
}

#[test]
fn concept_drift_gives_each_institution_its_own_coefficients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = SynthConfig {
        rows: 40_000,
        institutions: 2,
        concept_drift: 1.5,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    let truth = generate(dir.path(), &cfg, DataFormat::Csv);
    let own: Vec<Vec<f64>> = truth
        .institutions
        .iter()
        .map(|i| {
            truth_in_design_layout(&i.coefficients, truth.intercept + i.intercept_shift, &truth)
        })
        .collect();
    for (k, inst) in truth.institutions.iter().enumerate() {
        let (x, y) = design(&load(dir.path(), &inst.name, "train", DataFormat::Csv), &truth);
        let fitted = fit(&x, &y);
        let distance = |w: &[f64]| {
            fitted.iter().zip(w).skip(1).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
        };
        let (mine, other) = (distance(&own[k]), distance(&own[1 - k]));
        assert!(
            mine < 0.5 * other,
            "{}: fit is {mine:.3} from its own truth, {other:.3} from the other's",
            inst.name
        );
    }
    // Without concept drift every institution shares the global coefficients.
    let plain = Synthesizer::new(
        &builtin_schema().expect("schema"),
        &SynthConfig { concept_drift: 0.0, ..cfg },
    )
    .expect("plans");
    assert!(
        plain.truth().institutions.iter().all(|i| i.coefficients == plain.truth().coefficients)
    );
}

#[test]
fn cli_prints_its_schema_generates_and_refuses_bad_requests() {
    let exe = env!("CARGO_BIN_EXE_confide-synth");
    let printed = std::process::Command::new(exe).arg("--print-schema").output().expect("runs");
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).expect("utf-8");
    assert_eq!(
        DatasetSchema::parse(&text, "printed").expect("parses"),
        builtin_schema().expect("schema")
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("synth");
    let run = |extra: &[&str]| {
        std::process::Command::new(exe)
            .args(["--out", &out.display().to_string(), "--rows", "2_000", "--institutions", "2"])
            .args(extra)
            .output()
            .expect("runs")
    };
    let ok = run(&["--format", "parquet", "--label-shift", "1"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("rows/s"));
    assert_eq!(
        load(&out, "bank2", "train", DataFormat::Parquet).rows
            + load(&out, "bank2", "test", DataFormat::Parquet).rows,
        1_000
    );
    let again = run(&["--format", "parquet"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = run(&["--force", "--positive-rate", "1.5"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("positive rate 1.5 must be in (0, 1)"));
}
