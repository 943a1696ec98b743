//! Training speed (issue 4, item 5): local-epoch throughput (rows/s) of the worker's training
//! loop, `confide_worker::ml::train_local`, against the same model trained by PyTorch in Python
//! on the same machine (`benches/python/train_speed.py`): same data (the UCI Taiwan credit
//! default rows, encoded by the federation preprocessing), layers, batch size, optimizer (SGD,
//! momentum 0.9), epochs and float32 on the CPU, at 1 thread and at the machine's default.
//!
//! Each timed run is one `train_local` call of `EPOCHS` epochs (model construction, copying the
//! rows into a tensor, training, reading the parameters back), after one untimed warm-up run;
//! the Python side times the same scope. Medians over `RUNS` runs, alternating between the sides.
//!
//! `cargo run --release -p confide-benches --bin train_speed [OUT_DIR]`
//! (`PYTHON` overrides the interpreter, default `.venv/bin/python` in the repository).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use confide_benches::comparison;
use confide_benches::speed::{BoxError, median, spread, taiwan_rows, write_f32};
use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::Encoded;
use confide_report::Table;
use confide_worker::ml::{self, Device, Optimizer, TrainConfig};

const EPOCHS: usize = 3;
const RUNS: usize = 5;
const LEARNING_RATE: f64 = 0.01;
const MOMENTUM: f64 = 0.9;

/// Rows/s of one timed `train_local` call of `EPOCHS` epochs.
fn rust_run(
    spec: &ModelSpec,
    data: &Encoded,
    batch: usize,
    epochs: usize,
    seed: u64,
) -> Result<f64, BoxError> {
    let init = ModelParams::init(spec.layout(data.dim), 1);
    let cfg = TrainConfig {
        epochs,
        batch_size: batch,
        learning_rate: LEARNING_RATE,
        optimizer: Optimizer::Sgd { momentum: MOMENTUM },
        prox_mu: 0.0,
        pos_weight: None,
        seed,
    };
    let started = Instant::now();
    ml::train_local(spec, &init, data, &cfg, Device::Cpu)?;
    Ok((data.rows * epochs) as f64 / started.elapsed().as_secs_f64())
}

struct PythonRun {
    torch: String,
    threads: usize,
    rows_per_s: Vec<f64>,
}

fn python_rows_per_s(
    python: &Path,
    files: &(PathBuf, PathBuf),
    data: &Encoded,
    hidden: &[usize],
    batch: usize,
    threads: usize,
) -> Result<PythonRun, BoxError> {
    let script = comparison::repo_root().join("benches/python/train_speed.py");
    let hidden: Vec<String> = hidden.iter().map(ToString::to_string).collect();
    let output = Command::new(python)
        .arg(&script)
        .args([
            "--features",
            &files.0.to_string_lossy(),
            "--labels",
            &files.1.to_string_lossy(),
        ])
        .args([
            "--rows",
            &data.rows.to_string(),
            "--dim",
            &data.dim.to_string(),
            "--hidden",
            &hidden.join(","),
        ])
        .args([
            "--batch",
            &batch.to_string(),
            "--epochs",
            &EPOCHS.to_string(),
            "--runs",
            "1",
        ])
        .args([
            "--lr",
            &LEARNING_RATE.to_string(),
            "--momentum",
            &MOMENTUM.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{} printed no JSON ({e}): {}",
            script.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let rows_per_s = v["rows_per_s"]
        .as_array()
        .ok_or("no rows_per_s in the Python output")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok(PythonRun {
        torch: v["torch"].as_str().unwrap_or("?").to_string(),
        threads: v["threads"]
            .as_u64()
            .and_then(|t| usize::try_from(t).ok())
            .unwrap_or(threads),
        rows_per_s,
    })
}

fn main() -> Result<(), BoxError> {
    let out = comparison::out_dir_from_args();
    let python = std::env::var_os("PYTHON").map_or_else(
        || comparison::repo_root().join(".venv/bin/python"),
        PathBuf::from,
    );
    let data = taiwan_rows()?;
    let scratch = tempfile::tempdir()?;
    let files = (
        scratch.path().join("features.f32"),
        scratch.path().join("labels.f32"),
    );
    write_f32(&files.0, &data.features)?;
    write_f32(&files.1, &data.labels)?;
    let default_threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    eprintln!(
        "{} rows × {} features, {EPOCHS} epochs per run, median of {RUNS} runs",
        data.rows, data.dim
    );

    let mut table = Table::new([
        "model",
        "batch",
        "threads",
        "Rust train_local rows/s",
        "PyTorch rows/s",
        "Rust / PyTorch",
        "Rust runs min-max",
        "PyTorch runs min-max",
    ]);
    let mut torch_version = String::new();
    let models: [(&str, ModelSpec); 2] = [
        ("LR", ModelSpec::LogisticRegression),
        (
            "MLP[32,16]",
            ModelSpec::Mlp {
                hidden: vec![32, 16],
            },
        ),
    ];
    for (label, spec) in &models {
        for batch in [64, 256] {
            for threads in [1, default_threads] {
                // Runs alternate between the two sides (one Python process per run, each with
                // its own warm-up) so that load from other work on the host hits both alike.
                ml::set_cpu_threads(threads);
                rust_run(spec, &data, batch, 1, 0)?;
                let (mut rust, mut py) = (
                    Vec::new(),
                    PythonRun {
                        torch: String::new(),
                        threads,
                        rows_per_s: Vec::new(),
                    },
                );
                for run in 1..=RUNS {
                    rust.push(rust_run(spec, &data, batch, EPOCHS, run as u64)?);
                    let one =
                        python_rows_per_s(&python, &files, &data, spec.hidden(), batch, threads)?;
                    py.rows_per_s.extend(one.rows_per_s);
                    (py.torch, py.threads) = (one.torch, one.threads);
                }
                torch_version.clone_from(&py.torch);
                let (r, p) = (median(rust.clone()), median(py.rows_per_s.clone()));
                eprintln!(
                    "{label:<11} batch {batch:>3} threads {threads}: Rust {r:>9.0} rows/s  PyTorch {p:>9.0} rows/s ({} threads)  ratio {:.2}",
                    py.threads,
                    r / p
                );
                table.push_row([
                    label.to_string(),
                    batch.to_string(),
                    threads.to_string(),
                    format!("{r:.0}"),
                    format!("{p:.0}"),
                    format!("{:.2}", r / p),
                    spread(&rust),
                    spread(&py.rows_per_s),
                ])?;
            }
        }
    }
    println!(
        "\nTraining speed, {} rows × {} features, {EPOCHS} epochs/run, median of {RUNS} runs (torch {torch_version})\n\n{table}",
        data.rows, data.dim
    );
    std::fs::create_dir_all(&out)?;
    table.write_csv(&out.join("train_speed.csv"))?;
    let md = format!(
        "# Training speed: worker `train_local` vs PyTorch (Python)\n\nGenerated by `cargo run --release -p confide-benches --bin train_speed`. \
         UCI Taiwan credit default, {} rows × {} encoded features, float32, CPU, SGD momentum {MOMENTUM}, lr {LEARNING_RATE}, \
         {EPOCHS} epochs per timed run, median of {RUNS} runs after one warm-up; PyTorch {torch_version} from the project venv.\n\n{}",
        data.rows,
        data.dim,
        table.to_markdown()
    );
    std::fs::write(out.join("train_speed.md"), md)?;
    eprintln!("wrote {}", out.join("train_speed.{csv,md}").display());
    Ok(())
}
