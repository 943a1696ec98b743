//! `confide-partition`: splits one CSV or Parquet file into per-institution `train`/`test` files
//! (IID, Dirichlet label skew, or one institution per value of a column) for federated
//! simulations, in CSV or Parquet (`--format`), and writes a `partition.json` manifest beside them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use confide_datasets::partition::{PartitionConfig, Scheme, partition_file};
use confide_datasets::{DataFormat, DatasetSchema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemeArg {
    /// Seeded shuffle, near-equal parts.
    Iid,
    /// Label skew with Dirichlet(alpha) class proportions.
    Dirichlet,
    /// One institution per value of `--by-column`.
    ByColumn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// Comma-separated values.
    Csv,
    /// Apache Parquet (snappy-compressed).
    Parquet,
}

/// Split a CSV or Parquet file into per-institution train/test folders.
#[derive(Debug, Parser)]
#[command(name = "confide-partition", version)]
struct Args {
    /// Input file: CSV, or Parquet when it ends in `.parquet` or `.pq`.
    #[arg(long)]
    input: PathBuf,
    /// Dataset schema (TOML) the file follows.
    #[arg(long)]
    schema: PathBuf,
    /// Output directory; receives `<institution>/train.<ext>`, `<institution>/test.<ext>` and `partition.json`.
    #[arg(long)]
    out: PathBuf,
    /// Output format (default: the input's). CSV to CSV copies rows byte for byte.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Number of institutions (required for iid and dirichlet; checked against the number of values for by-column).
    #[arg(long)]
    institutions: Option<usize>,
    /// Assignment scheme (default: by-column when --by-column is given, else iid).
    #[arg(long, value_enum)]
    scheme: Option<SchemeArg>,
    /// Dirichlet concentration: small values skew labels strongly.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Column whose values define the institutions (e.g. Geography).
    #[arg(long)]
    by_column: Option<String>,
    /// Fraction of each institution's rows, stratified by label, written to the test file.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Smallest acceptable institution, in rows.
    #[arg(long, default_value_t = 10)]
    min_rows: usize,
    /// Replace existing train/test files.
    #[arg(long)]
    force: bool,
}

fn scheme(args: &Args) -> Result<Scheme, String> {
    match (args.scheme, &args.by_column) {
        (None | Some(SchemeArg::ByColumn), Some(column)) => {
            Ok(Scheme::ByColumn { column: column.clone() })
        }
        (Some(SchemeArg::ByColumn), None) => {
            Err("--scheme by-column needs --by-column <COLUMN>".into())
        }
        (Some(other), Some(_)) => {
            Err(format!("--by-column cannot be combined with --scheme {other:?}"))
        }
        (None | Some(SchemeArg::Iid), None) => Ok(Scheme::Iid),
        (Some(SchemeArg::Dirichlet), None) => Ok(Scheme::Dirichlet { alpha: args.alpha }),
    }
}

fn run(args: &Args) -> Result<(), String> {
    let schema = DatasetSchema::from_file(&args.schema).map_err(|e| e.to_string())?;
    let cfg = PartitionConfig {
        institutions: args.institutions,
        scheme: scheme(args)?,
        test_fraction: args.test_fraction,
        seed: args.seed,
        min_rows: args.min_rows,
    };
    let format = args.format.map(|f| match f {
        FormatArg::Csv => DataFormat::Csv,
        FormatArg::Parquet => DataFormat::Parquet,
    });
    let summary = partition_file(&args.input, &schema, &args.out, &cfg, format, args.force)
        .map_err(|e| e.to_string())?;
    println!("{:<16} {:>10} {:>8} {:>10} {:>8}", "institution", "train", "pos%", "test", "pos%");
    let pct = |p: usize, n: usize| if n == 0 { 0.0 } else { 100.0 * p as f64 / n as f64 };
    for i in &summary.institutions {
        println!(
            "{:<16} {:>10} {:>7.1}% {:>10} {:>7.1}%",
            i.name,
            i.train_rows,
            pct(i.train_positives, i.train_rows),
            i.test_rows,
            pct(i.test_positives, i.test_rows)
        );
    }
    println!("wrote {}", args.out.join("partition.json").display());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confide-partition: error: {e}");
            ExitCode::FAILURE
        }
    }
}
