//! Data-layer throughput: synthetic generation to CSV and Parquet, and loading the same rows
//! back with the CSV and Parquet loaders (rows/s). `CONFIDE_BENCH_ROWS` sets the row count
//! (default 1,000,000). Run: `cargo bench -p confide-datasets --bench data_io`.

use std::path::Path;
use std::time::Instant;

use confide_datasets::synth::{BUILTIN_SCHEMA, SynthConfig, Synthesizer, builtin_schema};
use confide_datasets::{DataFormat, load_table};

fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::var("CONFIDE_BENCH_ROWS")
        .ok()
        .map(|v| v.replace('_', "").parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let schema = builtin_schema()?;
    let dir = tempfile::tempdir()?;
    let config = SynthConfig {
        rows,
        institutions: 1,
        test_fraction: 0.0,
        covariate_shift: 0.5,
        missing_rate: 0.01,
        ..SynthConfig::default()
    };
    println!("| step | format | rows | seconds | rows/s | file MiB |");
    println!("|---|---|---:|---:|---:|---:|");
    for format in [DataFormat::Csv, DataFormat::Parquet] {
        let out = dir.path().join(format.extension());
        let started = Instant::now();
        Synthesizer::new(&schema, &config)?.write(&out, format, BUILTIN_SCHEMA, false)?;
        let generate = started.elapsed().as_secs_f64();
        let file = out.join("bank1").join(format!("train.{}", format.extension()));
        let started = Instant::now();
        let table = load_table(&file, &schema)?;
        let load = started.elapsed().as_secs_f64();
        anyhow::ensure!(table.rows as u64 == rows, "loaded {} of {rows} rows", table.rows);
        let name = format.extension();
        let mib = size_mib(&file);
        println!(
            "| generate | {name} | {rows} | {generate:.2} | {:.0} | {mib:.1} |",
            rows as f64 / generate
        );
        println!("| load | {name} | {rows} | {load:.2} | {:.0} | {mib:.1} |", rows as f64 / load);
    }
    Ok(())
}
