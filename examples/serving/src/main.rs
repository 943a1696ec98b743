//! `confide-score`: scores a CSV of raw rows with a model exported by `confide model export`,
//! using tract, a pure-Rust ONNX runtime (nothing is downloaded at build or run time).
//!
//! ```sh
//! confide-score export/model.onnx rows.csv --id-column customerID -o scores.csv
//! ```
//!
//! The exported graph has one input per feature column of the dataset schema, shape `[N, 1]`:
//! float inputs take the cell parsed as a number (blank, `NA`, `N/A` or `null` = missing, fed as
//! NaN); string inputs take the cell with surrounding whitespace trimmed. The preprocessing
//! (imputation, standardisation, one-hot) runs inside the graph. The output CSV holds
//! `id,probability`; `NaN` marks a row the model refuses (a missing cell the schema does not
//! impute, or a category outside the agreed levels).
//!
//! A gradient-boosted tree export (`gbdt`) is served the same way: its graph reads the same raw
//! columns and runs the trees as `ai.onnx.ml` TreeEnsembleClassifier, which tract implements
//! (tract has no TreeEnsembleRegressor, which is why the exporter uses the classifier).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Cells that mean "missing" (besides blank), as in the dataset schemas' default `na_values`.
const MISSING: [&str; 3] = ["NA", "N/A", "null"];

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Score raw CSV rows with an exported Confide ONNX model (tract, pure Rust)"
)]
struct Args {
    /// The exported `model.onnx`.
    model: PathBuf,
    /// CSV with a header naming at least every feature column (extra columns are ignored).
    rows: PathBuf,
    /// Where to write `id,probability` (standard output when absent).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Column whose value identifies a row in the output (default: the 0-based row number).
    #[arg(long)]
    id_column: Option<String>,
}

/// A raw-column input of the graph.
#[derive(Debug)]
struct Input {
    name: String,
    numeric: bool,
}

/// A loaded model, ready to score batches of any size.
struct Scorer {
    model: InferenceModel,
    inputs: Vec<Input>,
    probability: usize,
}

impl Scorer {
    fn load(path: &Path) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .with_context(|| format!("cannot load ONNX model {}", path.display()))?;
        let mut inputs = Vec::new();
        for (i, outlet) in model.input_outlets()?.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let dt = model.input_fact(i)?.datum_type.concretize();
            let numeric = match dt {
                Some(DatumType::F32) => true,
                Some(DatumType::String) => false,
                other => bail!("input `{name}` has type {other:?}; expected float or string"),
            };
            inputs.push(Input { name, numeric });
        }
        let probability = model
            .output_outlets()?
            .iter()
            .position(|o| model.node(o.node).name == "probability")
            .context("the model has no `probability` output; was it exported by confide?")?;
        Ok(Self {
            model,
            inputs,
            probability,
        })
    }

    /// Probabilities for `rows` rows whose cells are looked up by input name.
    fn score(&self, rows: usize, cell: impl Fn(usize, &str) -> Result<String>) -> Result<Vec<f32>> {
        let mut model = self.model.clone();
        let mut values: TVec<TValue> = tvec![];
        for (i, input) in self.inputs.iter().enumerate() {
            let tensor = if input.numeric {
                let mut column = Vec::with_capacity(rows);
                for r in 0..rows {
                    let raw = cell(r, &input.name)?;
                    column.push(if raw.is_empty() || MISSING.contains(&raw.as_str()) {
                        f32::NAN
                    } else {
                        raw.parse::<f64>().with_context(|| {
                            format!(
                                "row {}: column `{}`: `{raw}` is not a number",
                                r + 1,
                                input.name
                            )
                        })? as f32
                    });
                }
                tract_ndarray::Array2::from_shape_vec((rows, 1), column)?.into_tensor()
            } else {
                let column = (0..rows)
                    .map(|r| cell(r, &input.name))
                    .collect::<Result<Vec<_>>>()?;
                tract_ndarray::Array2::from_shape_vec((rows, 1), column)?.into_tensor()
            };
            let dt = if input.numeric {
                f32::datum_type()
            } else {
                String::datum_type()
            };
            model.set_input_fact(i, InferenceFact::dt_shape(dt, tvec!(rows, 1)))?;
            values.push(tensor.into());
        }
        let plan = model.into_optimized()?.into_runnable()?;
        let outputs = plan.run(values)?;
        let probability = outputs
            .get(self.probability)
            .context("missing probability output")?;
        Ok(probability
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scorer = Scorer::load(&args.model)?;
    let mut reader = csv::ReaderBuilder::new()
        .from_path(&args.rows)
        .with_context(|| format!("cannot read {}", args.rows.display()))?;
    let header: Vec<String> = reader
        .headers()?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if i == 0 {
                h.trim_start_matches('\u{feff}').to_string()
            } else {
                h.to_string()
            }
        })
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    for input in &scorer.inputs {
        if column(&input.name).is_none() {
            bail!(
                "{}: no column `{}` (the model reads {:?})",
                args.rows.display(),
                input.name,
                scorer.inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
            );
        }
    }
    let id = match &args.id_column {
        Some(name) => Some(column(name).with_context(|| format!("no id column `{name}`"))?),
        None => None,
    };
    let records = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot parse {}", args.rows.display()))?;
    let probabilities = scorer.score(records.len(), |r, name| {
        let c = column(name).context("column vanished")?;
        Ok(records[r].get(c).unwrap_or_default().trim().to_string())
    })?;

    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(["id", "probability"])?;
    for (r, (record, p)) in records.iter().zip(&probabilities).enumerate() {
        let id = id
            .and_then(|c| record.get(c))
            .map_or_else(|| r.to_string(), str::to_string);
        writer.write_record([id, format_probability(*p)])?;
    }
    writer.flush()?;
    Ok(())
}

/// Shortest text that reads back as the same `f32` (`NaN` for a refused row).
fn format_probability(p: f32) -> String {
    if p.is_nan() {
        "NaN".into()
    } else {
        format!("{p:?}")
    }
}
