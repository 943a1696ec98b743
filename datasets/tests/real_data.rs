//! The shipped schemas against the real shared datasets (`../shared/datasets/` beside the
//! project root), and the partition tool end to end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use confide_datasets::partition::{PartitionConfig, Scheme, partition_csv, partition_file};
use confide_datasets::{
    ColumnData, DataFormat, DatasetSchema, Preprocessing, load_csv, load_table, local_stats,
};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared(relative: &str) -> PathBuf {
    manifest_dir().join("../../shared/datasets").join(relative)
}

fn schema(name: &str) -> DatasetSchema {
    DatasetSchema::from_file(manifest_dir().join("schemas").join(format!("{name}.toml")))
        .expect("schema parses")
}

const TELCO: &str = "telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv";
const BANK: &str = "bank_churn_modelling/Churn_Modelling.csv";
const UCI: &str = "uci_credit_card_default/UCI_Credit_Card.csv";

#[test]
fn telco_loads_in_full_with_its_blank_total_charges() {
    let s = schema("telco_churn");
    let t = load_csv(shared(TELCO), &s).expect("Telco loads");
    assert_eq!((t.rows, t.positives(), t.dropped_rows), (7043, 1869, 0));
    let total = t.columns.iter().find(|c| c.name == "TotalCharges").expect("column");
    let ColumnData::Numeric(values) = &total.data else { panic!("numeric") };
    assert_eq!(values.iter().filter(|v| v.is_none()).count(), 11);
    assert_eq!(s.input_dim(), 4 + 41);
    assert_eq!(s.feature_names().len(), s.input_dim());
    assert!(s.feature_names().contains(&"Contract=Month-to-month".to_string()));

    let p = Preprocessing::from_aggregate(&s, &local_stats(&t, &s)).expect("preprocessing");
    assert_eq!(p.feature_names(), s.feature_names());
    let e = p.encode(&t).expect("encodes");
    assert_eq!((e.rows, e.dim), (7043, 45));
    assert!(e.features.iter().all(|v| v.is_finite()));
    // Standardised numeric columns have mean ≈ 0.
    let tenure = s.feature_names().iter().position(|n| n == "tenure").expect("tenure");
    let mean =
        (0..e.rows).map(|r| f64::from(e.features[r * e.dim + tenure])).sum::<f64>() / e.rows as f64;
    assert!(mean.abs() < 1e-4, "{mean}");
}

#[test]
fn telco_with_fail_policy_names_the_first_blank_line() {
    let mut s = schema("telco_churn");
    for c in &mut s.columns {
        c.missing = None;
    }
    let e = load_csv(shared(TELCO), &s).expect_err("blank TotalCharges must fail").to_string();
    assert!(
        e.contains(
            "WA_Fn-UseC_-Telco-Customer-Churn.csv:490: column `TotalCharges`: missing value"
        ),
        "{e}"
    );
}

#[test]
fn bank_and_uci_load_in_full() {
    let t = load_csv(shared(BANK), &schema("bank_churn_modelling")).expect("Churn_Modelling loads");
    assert_eq!((t.rows, t.positives()), (10_000, 2037));
    let t = load_csv(shared(UCI), &schema("uci_credit_card_default")).expect("UCI loads");
    assert_eq!((t.rows, t.positives()), (30_000, 6636));
}

/// Every data line of `input` appears in exactly one output file, byte for byte.
fn assert_rows_conserved(input: &Path, out: &Path, institutions: &[&str]) {
    let text = std::fs::read_to_string(input).expect("input");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let mut expected: HashMap<&str, isize> = HashMap::new();
    for l in lines {
        *expected.entry(l).or_default() += 1;
    }
    let mut outputs = Vec::new();
    for inst in institutions {
        for file in ["train.csv", "test.csv"] {
            outputs.push(std::fs::read_to_string(out.join(inst).join(file)).expect("output file"));
        }
    }
    for o in &outputs {
        let mut lines = o.lines();
        assert_eq!(lines.next(), Some(header));
        for l in lines {
            *expected.entry(l).or_default() -= 1;
        }
    }
    assert!(expected.values().all(|&n| n == 0), "rows not conserved");
}

#[test]
fn bank_partitions_by_geography() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema("bank_churn_modelling");
    let cfg = PartitionConfig {
        institutions: Some(3),
        scheme: Scheme::ByColumn { column: "Geography".into() },
        ..PartitionConfig::default()
    };
    let summary = partition_csv(&shared(BANK), &s, dir.path(), &cfg, false).expect("partitions");
    let sizes: Vec<(String, usize)> =
        summary.institutions.iter().map(|i| (i.name.clone(), i.train_rows + i.test_rows)).collect();
    assert_eq!(sizes, [("France".into(), 5014), ("Germany".into(), 2509), ("Spain".into(), 2477)]);
    assert_rows_conserved(&shared(BANK), dir.path(), &["France", "Germany", "Spain"]);
    // Each part loads with the schema, and refusing to overwrite protects earlier output.
    let t = load_csv(dir.path().join("Germany/test.csv"), &s).expect("part loads");
    assert_eq!(t.rows, summary.institutions[1].test_rows);
    assert!(partition_csv(&shared(BANK), &s, dir.path(), &cfg, false).is_err());
    assert!(dir.path().join("partition.json").exists());
}

#[test]
fn cli_partitions_uci_with_dirichlet_skew_deterministically() {
    let exe = env!("CARGO_BIN_EXE_confide-partition");
    let run = |out: &Path| {
        let status = std::process::Command::new(exe)
            .args(["--input", &shared(UCI).display().to_string()])
            .args([
                "--schema",
                &manifest_dir().join("schemas/uci_credit_card_default.toml").display().to_string(),
            ])
            .args(["--out", &out.display().to_string()])
            .args(["--institutions", "4", "--scheme", "dirichlet", "--alpha", "0.5", "--seed", "9"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("runs");
        assert!(status.success());
    };
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    run(a.path());
    run(b.path());
    let banks = ["bank1", "bank2", "bank3", "bank4"];
    assert_rows_conserved(&shared(UCI), a.path(), &banks);
    for bank in banks {
        for file in ["train.csv", "test.csv"] {
            let read = |d: &Path| std::fs::read(d.join(bank).join(file)).expect("file");
            assert_eq!(
                read(a.path()),
                read(b.path()),
                "{bank}/{file} differs between identical runs"
            );
        }
    }
    // The quoted header is copied verbatim.
    let first = std::fs::read_to_string(a.path().join("bank1/train.csv")).expect("file");
    assert!(first.starts_with("\"ID\",\"LIMIT_BAL\""));
}

#[test]
fn cli_reports_errors_without_panicking() {
    let exe = env!("CARGO_BIN_EXE_confide-partition");
    let out = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(exe)
        .args(["--input", &shared(TELCO).display().to_string()])
        .args([
            "--schema",
            &manifest_dir().join("schemas/bank_churn_modelling.toml").display().to_string(),
        ])
        .args(["--out", &out.path().display().to_string(), "--institutions", "2"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not in the schema"), "{stderr}");
}

#[test]
fn parquet_partitions_match_csv_partitions_row_for_row() {
    let s = schema("bank_churn_modelling");
    let dir = tempfile::tempdir().expect("tempdir");
    // CSV → one Parquet file holding every row in input order.
    let whole = dir.path().join("whole");
    let copy =
        PartitionConfig { institutions: Some(1), test_fraction: 0.0, ..PartitionConfig::default() };
    partition_file(&shared(BANK), &s, &whole, &copy, Some(DataFormat::Parquet), false)
        .expect("CSV to Parquet");
    let parquet = whole.join("bank1/train.parquet");
    let (from_csv, from_parquet) =
        (load_csv(shared(BANK), &s).expect("csv"), load_table(&parquet, &s).expect("parquet"));
    assert_eq!(
        (from_parquet.columns.clone(), from_parquet.labels.clone()),
        (from_csv.columns, from_csv.labels)
    );

    // Parquet → CSV and Parquet → Parquet by Geography give the same institutions, rows and
    // tables as CSV → CSV with the same seed.
    let by_geo = PartitionConfig {
        scheme: Scheme::ByColumn { column: "Geography".into() },
        institutions: None,
        ..PartitionConfig::default()
    };
    let reference = dir.path().join("reference");
    partition_csv(&shared(BANK), &s, &reference, &by_geo, false).expect("CSV to CSV");
    for format in [DataFormat::Csv, DataFormat::Parquet] {
        let out = dir.path().join(format!("from-parquet-{}", format.extension()));
        let summary =
            partition_file(&parquet, &s, &out, &by_geo, Some(format), false).expect("from Parquet");
        assert_eq!(summary.format, format.extension());
        for inst in ["France", "Germany", "Spain"] {
            for split in ["train", "test"] {
                let expected = load_table(reference.join(inst).join(format!("{split}.csv")), &s)
                    .expect("reference part");
                let got =
                    load_table(out.join(inst).join(format!("{split}.{}", format.extension())), &s)
                        .expect("part loads");
                assert_eq!(
                    (got.columns, got.labels),
                    (expected.columns, expected.labels),
                    "{inst}/{split}"
                );
            }
        }
    }
    // Identifiers keep every digit through Parquet and back to CSV.
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).expect("read");
    let (original, reencoded) =
        (read("reference/France/train.csv"), read("from-parquet-csv/France/train.csv"));
    let ids = |text: &str| -> Vec<String> {
        text.lines().skip(1).map(|l| l.split(',').nth(1).expect("CustomerId").to_string()).collect()
    };
    assert_eq!(ids(&reencoded), ids(&original));
}

#[test]
fn cli_writes_parquet_with_format_flag() {
    let exe = env!("CARGO_BIN_EXE_confide-partition");
    let out = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(exe)
        .args(["--input", &shared(TELCO).display().to_string()])
        .args(["--schema", &manifest_dir().join("schemas/telco_churn.toml").display().to_string()])
        .args(["--out", &out.path().display().to_string(), "--institutions", "3"])
        .args(["--format", "parquet", "--test-fraction", "0.25"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("runs");
    assert!(status.success());
    let s = schema("telco_churn");
    let mut total = 0;
    for bank in ["bank1", "bank2", "bank3"] {
        let train = load_table(out.path().join(bank).join("train.parquet"), &s).expect("train");
        let test = load_table(out.path().join(bank).join("test.parquet"), &s).expect("test");
        let ratio = test.rows as f64 / (train.rows + test.rows) as f64;
        assert!((ratio - 0.25).abs() < 0.01, "{bank}: test fraction {ratio}");
        total += train.rows + test.rows;
    }
    assert_eq!(total, 7043);
}
