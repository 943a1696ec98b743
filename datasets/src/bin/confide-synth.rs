//! `confide-synth`: generates a synthetic dataset for scale tests — any number of rows over K
//! institutions, with covariate shift, label-prior shift and concept drift between them — as
//! per-institution `train`/`test` CSV or Parquet files, plus `ground_truth.json` (the logistic
//! model the labels were drawn from) and `schema.toml`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use confide_datasets::synth::{BUILTIN_SCHEMA, SynthConfig, Synthesizer, builtin_schema};
use confide_datasets::{DataFormat, DatasetSchema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// Comma-separated values.
    Csv,
    /// Apache Parquet (snappy-compressed).
    Parquet,
}

/// Generate a synthetic dataset with a known logistic ground truth and drift between institutions.
#[derive(Debug, Parser)]
#[command(name = "confide-synth", version)]
struct Args {
    /// Output directory; receives `bankN/train.<ext>`, `bankN/test.<ext>`, `ground_truth.json`
    /// and `schema.toml`.
    #[arg(long, required_unless_present = "print_schema")]
    out: Option<PathBuf>,
    /// Schema to generate (default: the built-in churn-like schema).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Print the built-in schema (TOML) and exit.
    #[arg(long)]
    print_schema: bool,
    /// Rows across all institutions (underscores allowed: 1_000_000).
    #[arg(long, default_value = "100_000", value_parser = parse_count)]
    rows: u64,
    /// Number of institutions.
    #[arg(long, default_value_t = 3)]
    institutions: usize,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Covariate shift strength: numeric means move by N(0, s²) scales, level odds by e^N(0, s²).
    #[arg(long, default_value_t = 0.0)]
    covariate_shift: f64,
    /// Label-prior shift strength: intercepts move by N(0, s²) (logit units).
    #[arg(long, default_value_t = 0.0)]
    label_shift: f64,
    /// Concept drift strength: each coefficient moves by N(0, (s/2)²).
    #[arg(long, default_value_t = 0.0)]
    concept_drift: f64,
    /// Positive rate without drift (the intercept is calibrated to it).
    #[arg(long, default_value_t = 0.25)]
    positive_rate: f64,
    /// Probability that a feature cell is blank (only in columns whose missing policy is not `fail`).
    #[arg(long, default_value_t = 0.0)]
    missing_rate: f64,
    /// Fraction of each institution's rows written to its test file.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: FormatArg,
    /// Replace existing train/test files.
    #[arg(long)]
    force: bool,
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.replace('_', "").parse().map_err(|e| format!("{text:?} is not a row count: {e}"))
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.print_schema {
        print!("{BUILTIN_SCHEMA}");
        return Ok(());
    }
    let out = args.out.as_ref().ok_or_else(|| anyhow::anyhow!("--out is required"))?;
    let (schema, schema_text) = match &args.schema {
        Some(path) => {
            let schema = DatasetSchema::from_file(path)?;
            let text = std::fs::read_to_string(path)?;
            (schema, text)
        }
        None => (builtin_schema()?, BUILTIN_SCHEMA.to_string()),
    };
    let config = SynthConfig {
        rows: args.rows,
        institutions: args.institutions,
        seed: args.seed,
        covariate_shift: args.covariate_shift,
        label_shift: args.label_shift,
        concept_drift: args.concept_drift,
        positive_rate: args.positive_rate,
        missing_rate: args.missing_rate,
        test_fraction: args.test_fraction,
    };
    let format = match args.format {
        FormatArg::Csv => DataFormat::Csv,
        FormatArg::Parquet => DataFormat::Parquet,
    };
    let started = Instant::now();
    let truth = Synthesizer::new(&schema, &config)?.write(out, format, &schema_text, args.force)?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{:<10} {:>12} {:>8} {:>12} {:>10}", "institution", "train", "test", "positive%", "shift");
    for inst in &truth.institutions {
        let pct = 100.0 * inst.positives as f64 / inst.rows.max(1) as f64;
        println!(
            "{:<10} {:>12} {:>8} {:>11.1}% {:>+10.3}",
            inst.name, inst.train_rows, inst.test_rows, pct, inst.intercept_shift
        );
    }
    println!(
        "generated {} rows in {seconds:.2} s ({:.0} rows/s); wrote {}",
        config.rows,
        config.rows as f64 / seconds.max(1e-9),
        out.join("ground_truth.json").display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confide-synth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
