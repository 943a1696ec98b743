//! DP-SGD speed (issue 13, item 7): one local epoch of record-level DP-SGD
//! (`confide_worker::ml::dp_sgd::train_local_dp`: Poisson batches, per-example clipping from
//! activations and output gradients, Gaussian noise) against the same epoch without DP
//! (`train_local`, shuffled batches of the same expected size), and against Opacus on the same
//! model, data, batch size and CPU threads (`benches/python/dp_speed.py`). MLP[32,16] on the UCI
//! Taiwan credit rows (the target: DP ≤ 2× the non-DP epoch time, and ≥ Opacus's rows/s).
//!
//! Runs alternate between the sides; medians over `RUNS` runs after a warm-up.
//!
//! `cargo run --release -p confide-benches --bin dp_speed [OUT_DIR]` (needs
//! `.venv/bin/pip install opacus==1.6.0` for the Opacus column; `PYTHON` overrides the interpreter).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use confide_benches::comparison;
use confide_benches::speed::{BoxError, median, spread, taiwan_rows, write_f32};
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Encoded;
use confide_report::Table;
use confide_worker::ml::dp_sgd::{DpSgd, train_local_dp};
use confide_worker::ml::{self, Device, Optimizer, TrainConfig};

const RUNS: usize = 5;
const LEARNING_RATE: f64 = 0.1;
const CLIP: f64 = 1.0;
const SIGMA: f64 = 1.0;

fn config(batch: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: batch,
        learning_rate: LEARNING_RATE,
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        prox_mu: 0.0,
        pos_weight: None,
        seed,
    }
}

/// Rows/s of one epoch, with DP-SGD at sampling rate batch/rows when `dp`.
fn rust_run(spec: &ModelSpec, data: &Encoded, batch: usize, dp: bool, seed: u64) -> Result<f64, BoxError> {
    let init = ModelParams::init(spec.layout(data.dim), 1);
    let cfg = config(batch, seed);
    let started = Instant::now();
    if dp {
        let dp = DpSgd { clip_norm: CLIP, noise_multiplier: SIGMA, sampling_rate: batch as f64 / data.rows as f64 };
        train_local_dp(spec, &init, data, &cfg, &dp, Device::Cpu)?;
    } else {
        ml::train_local(spec, &init, data, &cfg, Device::Cpu)?;
    }
    Ok(data.rows as f64 / started.elapsed().as_secs_f64())
}

/// (rows/s of each run, torch and opacus versions) from the Opacus script, or why not.
fn opacus_run(python: &Path, files: &(PathBuf, PathBuf), data: &Encoded, batch: usize, threads: usize) -> Result<(Vec<f64>, String), String> {
    let script = comparison::repo_root().join("benches/python/dp_speed.py");
    let output = Command::new(python)
        .arg(&script)
        .args(["--features", &files.0.to_string_lossy(), "--labels", &files.1.to_string_lossy()])
        .args(["--rows", &data.rows.to_string(), "--dim", &data.dim.to_string(), "--hidden", "32,16"])
        .args(["--batch", &batch.to_string(), "--epochs", "1", "--runs", "1", "--lr", &LEARNING_RATE.to_string()])
        .args(["--clip", &CLIP.to_string(), "--sigma", &SIGMA.to_string(), "--threads", &threads.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&output.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| format!("no JSON from {}: {e}", script.display()))?;
    let rates = v["rows_per_s"].as_array().ok_or("no rows_per_s")?.iter().filter_map(serde_json::Value::as_f64).collect();
    Ok((rates, format!("torch {}, opacus {}", v["torch"].as_str().unwrap_or("?"), v["opacus"].as_str().unwrap_or("?"))))
}

fn main() -> Result<(), BoxError> {
    let out = comparison::out_dir_from_args();
    let python = std::env::var_os("PYTHON").map_or_else(|| comparison::repo_root().join(".venv/bin/python"), PathBuf::from);
    let data = taiwan_rows()?;
    let scratch = tempfile::tempdir()?;
    let files = (scratch.path().join("features.f32"), scratch.path().join("labels.f32"));
    write_f32(&files.0, &data.features)?;
    write_f32(&files.1, &data.labels)?;
    let spec = ModelSpec::Mlp { hidden: vec![32, 16] };
    let mut table = Table::new([
        "batch",
        "threads",
        "non-DP rows/s",
        "DP-SGD rows/s",
        "DP time / non-DP time",
        "Opacus rows/s",
        "DP-SGD / Opacus",
        "DP-SGD runs",
        "Opacus runs",
    ]);
    let mut versions = String::from("Opacus not installed");
    let default_threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    for batch in [64, 256] {
        for threads in [1, default_threads] {
            ml::set_cpu_threads(threads);
            rust_run(&spec, &data, batch, false, 0)?;
            rust_run(&spec, &data, batch, true, 0)?;
            let (mut plain, mut private, mut opacus) = (Vec::new(), Vec::new(), Vec::new());
            for run in 1..=RUNS as u64 {
                plain.push(rust_run(&spec, &data, batch, false, run)?);
                private.push(rust_run(&spec, &data, batch, true, run)?);
                match opacus_run(&python, &files, &data, batch, threads) {
                    Ok((rates, v)) => {
                        opacus.extend(rates);
                        versions = v;
                    }
                    Err(e) if run == 1 => eprintln!("Opacus column left empty: {e}"),
                    Err(_) => {}
                }
            }
            let (p, d, o) = (median(plain.clone()), median(private.clone()), median(opacus.clone()));
            eprintln!("batch {batch:>3} threads {threads}: non-DP {p:>8.0} rows/s  DP-SGD {d:>8.0} rows/s ({:.2}× time)  Opacus {o:>8.0} rows/s", p / d);
            table.push_row([
                batch.to_string(),
                threads.to_string(),
                format!("{p:.0}"),
                format!("{d:.0}"),
                format!("{:.2}", p / d),
                if opacus.is_empty() { "—".into() } else { format!("{o:.0}") },
                if opacus.is_empty() { "—".into() } else { format!("{:.2}", d / o) },
                spread(&private),
                if opacus.is_empty() { "—".into() } else { spread(&opacus) },
            ])?;
        }
    }
    println!("\nDP-SGD speed, MLP[32,16], {} rows × {} features, one epoch per run, median of {RUNS} runs ({versions})\n\n{table}", data.rows, data.dim);
    std::fs::create_dir_all(&out)?;
    table.write_csv(&out.join("dp_speed.csv"))?;
    let md = format!(
        "# DP-SGD speed: worker DP-SGD vs its non-DP epoch and vs Opacus\n\nGenerated by `cargo run --release -p confide-benches --bin dp_speed`. \
         UCI Taiwan credit default, {} rows × {} encoded features, MLP[32,16], float32, CPU, SGD lr {LEARNING_RATE}, C = {CLIP}, σ = {SIGMA}, \
         Poisson rate batch/rows, one epoch per run, median of {RUNS} runs after one warm-up ({versions}).\n\n{}",
        data.rows,
        data.dim,
        table.to_markdown()
    );
    std::fs::write(out.join("dp_speed.md"), md)?;
    eprintln!("wrote {}", out.join("dp_speed.{csv,md}").display());
    Ok(())
}
