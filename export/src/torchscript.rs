//! TorchScript export written directly from Rust: a zip archive laid out as `torch.jit.save`
//! lays it out, which `torch.jit.load` (Python) and `torch::jit::load` (C++) load and run.
//!
//! The archive holds one scripted module, `__torch__.ConfideClassifier`:
//!
//! - submodules `fc0 … fcK` (`__torch__.ConfideLinear`), whose parameters `weight` and `bias`
//!   carry exactly the checkpoint's values, so `named_parameters()` yields the safetensors names
//!   (`fc0.weight`, `fc0.bias`, ...);
//! - `forward(x)`: positive-class probabilities `[N]` for an encoded `[N, input_dim]` float32
//!   batch — the inputs the worker trains on, as `confide_datasets::Preprocessing::encode` writes
//!   them (standardised numerics, one-hot categoricals, schema order); `logits(x)` before the
//!   sigmoid;
//! - the federation's preprocessing, so a serving system can also start from raw columns:
//!   `encode(numeric, categorical)` takes a `[N, numeric columns]` float tensor (NaN = missing,
//!   which becomes the mean) and a `[N, categorical columns]` int64 tensor of level codes (−1 =
//!   missing, which becomes the federation's mode) and returns what `forward` reads;
//!   `categorical_codes(rows)` maps `List[List[str]]` values (blank = missing) to those codes;
//!   `predict_raw(numeric, categorical)` chains encoding and `forward`. The buffers
//!   `numeric_mean`/`numeric_std` (float64) and attributes `numeric_columns`,
//!   `categorical_columns`, `categorical_levels`, `feature_names` describe the columns;
//! - an extra file `confide.json` (model family, feature names, the full preprocessing), read with
//!   `torch.jit.load(path, _extra_files={"confide.json": ""})`.
//!
//! `encode` works on the device of its `numeric` input (move the module there first with `.to()`).
//! The module is saved in eval mode (`training = False`); it has no dropout or batch norm, so the
//! mode changes nothing.
//!
//! Format notes (PyTorch 2.x, archive format version 3): `<name>/data.pkl` pickles the module
//! object, its tensors as persistent ids naming storages in `<name>/data/<key>` (raw
//! little-endian, 64-byte aligned); `<name>/code/__torch__.py` holds the classes in the
//! serialised TorchScript dialect that `torch.jit.save` itself writes; `constants.pkl` is the
//! (empty) tuple of tensor constants the code refers to.

mod pickle;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use confide_core::model::{ModelParams, ModelSpec};
use confide_datasets::{ColumnTransform, Preprocessing};
use zip::write::SimpleFileOptions;

use pickle::{Pickler, StorageKind};

/// Folder inside the archive that holds every record (`torch.jit.save` uses the file stem; the
/// loader accepts any single top-level folder).
const ARCHIVE_ROOT: &str = "confide_model";
/// Archive format version PyTorch 2.x writes for TorchScript modules without upgraders.
const FORMAT_VERSION: &str = "3";
/// Storage records are aligned like `torch.jit.save` aligns them, so they can be memory-mapped.
const STORAGE_ALIGNMENT: u16 = 64;
/// Name of the extra file with the model's metadata.
pub const METADATA_FILE: &str = "confide.json";
const MODULE_CLASS: &str = "ConfideClassifier";
const LINEAR_CLASS: &str = "ConfideLinear";

/// Errors exporting a TorchScript archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorchScriptError {
    /// The parameters do not have the layout the model family and preprocessing imply.
    #[error(
        "parameters do not fit {model} over {input_dim} encoded inputs: {detail} \
         (was the checkpoint trained with this preprocessing?)"
    )]
    Layout {
        /// Model label, e.g. `mlp[32,16]`.
        model: String,
        /// Encoded width the preprocessing gives.
        input_dim: usize,
        /// What differs.
        detail: String,
    },
    /// The preprocessing holds a value a TorchScript module cannot carry (e.g. a NaN mean).
    #[error("preprocessing cannot be exported: {0}")]
    Preprocessing(String),
    /// Building the zip container failed.
    #[error("writing the TorchScript archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// Writing the output file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// File being written.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Writes the TorchScript archive for a trained `spec` model with `params`, whose inputs were
/// encoded by `prep`, to `out` (atomically: a temporary file in the same folder is renamed over
/// `out`). See the module documentation for what the scripted module offers.
pub fn write_torchscript(
    spec: &ModelSpec,
    params: &ModelParams,
    prep: &Preprocessing,
    out: &Path,
) -> Result<(), TorchScriptError> {
    let bytes = torchscript_archive(spec, params, prep)?;
    let io = |source| TorchScriptError::Io {
        path: out.to_path_buf(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(())
}

/// The TorchScript archive's bytes (what [`write_torchscript`] writes).
pub fn torchscript_archive(
    spec: &ModelSpec,
    params: &ModelParams,
    prep: &Preprocessing,
) -> Result<Vec<u8>, TorchScriptError> {
    let input_dim = prep.input_dim();
    let expected = spec.layout(input_dim);
    if params.layout != expected {
        let detail = expected
            .tensors
            .iter()
            .zip(&params.layout.tensors)
            .find(|(e, f)| e != f)
            .map(|(e, f)| {
                format!(
                    "`{}` {:?} where `{}` {:?} is expected",
                    f.name, f.shape, e.name, e.shape
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "{} tensors where {} are expected",
                    params.layout.tensors.len(),
                    expected.tensors.len()
                )
            });
        return Err(TorchScriptError::Layout {
            model: spec.label(),
            input_dim,
            detail,
        });
    }
    let columns = Columns::of(prep)?;
    let layers = spec.hidden().len() + 1;

    let mut storages: Vec<Vec<u8>> = Vec::new();
    let mut data = Pickler::new();
    data.begin_object("__torch__", MODULE_CLASS);
    for (name, values) in [
        ("numeric_mean", &columns.mean),
        ("numeric_std", &columns.std),
    ] {
        data.str(name);
        let bytes = f64_bytes(values);
        storage_tensor(
            &mut data,
            &mut storages,
            StorageKind::Double,
            &[values.len()],
            bytes,
            false,
        );
    }
    data.str("training");
    data.bool(false);
    data.str("input_dim");
    data.int(to_i64(input_dim));
    for (name, text) in [
        ("model_kind", spec.label()),
        ("schema_fingerprint", prep.schema_fingerprint.clone()),
    ] {
        data.str(name);
        data.str(&text);
    }
    let feature_names = prep.feature_names();
    for (name, texts) in [
        ("feature_names", &feature_names),
        ("numeric_columns", &columns.numeric_names),
        ("categorical_columns", &columns.categorical_names),
    ] {
        data.str(name);
        data.str_list(texts);
    }
    for (name, ints) in [
        ("numeric_offsets", &columns.numeric_offsets),
        ("categorical_offsets", &columns.categorical_offsets),
        ("categorical_modes", &columns.categorical_modes),
    ] {
        data.str(name);
        data.int_list(ints);
    }
    data.str("categorical_levels");
    data.str_list_list(&columns.categorical_levels);
    for layer in 0..layers {
        data.str(&format!("fc{layer}"));
        data.begin_object("__torch__", LINEAR_CLASS);
        for part in ["weight", "bias"] {
            let name = format!("fc{layer}.{part}");
            let (shape, values) = expected
                .tensors
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| Some((t.shape.clone(), params.tensor(&name)?)))
                .ok_or_else(|| TorchScriptError::Layout {
                    model: spec.label(),
                    input_dim,
                    detail: format!("no tensor `{name}`"),
                })?;
            data.str(part);
            storage_tensor(
                &mut data,
                &mut storages,
                StorageKind::Float,
                &shape,
                f32_bytes(values),
                true,
            );
        }
        data.str("training");
        data.bool(false);
        data.end_object();
    }
    data.end_object();

    let mut constants = Pickler::new();
    constants.empty_tuple();

    let metadata = serde_json::json!({
        "format": "confide-torchscript/1",
        "model": spec,
        "model_label": spec.label(),
        "input_dim": input_dim,
        "feature_names": feature_names,
        "preprocessing": prep,
    });

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let record = |name: &str| format!("{ARCHIVE_ROOT}/{name}");
    for (key, bytes) in storages.iter().enumerate() {
        zip.start_file(
            record(&format!("data/{key}")),
            stored.with_alignment(STORAGE_ALIGNMENT),
        )?;
        write_record(&mut zip, bytes)?;
    }
    let records: [(&str, Vec<u8>); 6] = [
        ("data.pkl", data.finish()),
        ("code/__torch__.py", module_source(layers).into_bytes()),
        ("constants.pkl", constants.finish()),
        (
            &format!("extra/{METADATA_FILE}"),
            metadata.to_string().into_bytes(),
        ),
        ("version", format!("{FORMAT_VERSION}\n").into_bytes()),
        ("byteorder", b"little".to_vec()),
    ];
    for (name, bytes) in &records {
        zip.start_file(record(name), stored)?;
        write_record(&mut zip, bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

fn write_record(
    zip: &mut zip::ZipWriter<Cursor<Vec<u8>>>,
    bytes: &[u8],
) -> Result<(), TorchScriptError> {
    zip.write_all(bytes)
        .map_err(|e| TorchScriptError::Zip(e.into()))
}

/// Pickles a tensor over a new storage record holding `bytes`.
fn storage_tensor(
    data: &mut Pickler,
    storages: &mut Vec<Vec<u8>>,
    kind: StorageKind,
    shape: &[usize],
    bytes: Vec<u8>,
    requires_grad: bool,
) {
    data.tensor(&storages.len().to_string(), kind, shape, requires_grad);
    storages.push(bytes);
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The preprocessing split into the numeric and categorical views the module's `encode` uses.
#[derive(Debug, Default)]
struct Columns {
    numeric_names: Vec<String>,
    numeric_offsets: Vec<i64>,
    mean: Vec<f64>,
    std: Vec<f64>,
    categorical_names: Vec<String>,
    categorical_offsets: Vec<i64>,
    categorical_modes: Vec<i64>,
    categorical_levels: Vec<Vec<String>>,
}

impl Columns {
    fn of(prep: &Preprocessing) -> Result<Self, TorchScriptError> {
        let mut c = Columns::default();
        let mut offset = 0usize;
        for column in &prep.columns {
            match column {
                ColumnTransform::Numeric { name, mean, std } => {
                    if !mean.is_finite() || !std.is_finite() || *std <= 0.0 {
                        return Err(TorchScriptError::Preprocessing(format!(
                            "column `{name}` has mean {mean} and standard deviation {std}"
                        )));
                    }
                    c.numeric_names.push(name.clone());
                    c.numeric_offsets.push(to_i64(offset));
                    c.mean.push(*mean);
                    c.std.push(*std);
                }
                ColumnTransform::Categorical { name, levels, mode } => {
                    if *mode as usize >= levels.len() {
                        return Err(TorchScriptError::Preprocessing(format!(
                            "column `{name}` has mode {mode} but {} levels",
                            levels.len()
                        )));
                    }
                    c.categorical_names.push(name.clone());
                    c.categorical_offsets.push(to_i64(offset));
                    c.categorical_modes.push(i64::from(*mode));
                    c.categorical_levels.push(levels.clone());
                }
            }
            offset += column.width();
        }
        Ok(c)
    }
}

/// `code/__torch__.py`: the two classes in the serialised TorchScript dialect (the form
/// `torch.jit.save` writes and its importer compiles), with `layers` linear layers.
fn module_source(layers: usize) -> String {
    let submodules: String = (0..layers)
        .map(|i| format!("  fc{i} : __torch__.{LINEAR_CLASS}\n"))
        .collect();
    let mut chain = String::from("    h = x\n");
    for i in 0..layers {
        chain.push_str(&format!(
            "    fc{i} = self.fc{i}\n    h = (fc{i}).forward(h, )\n"
        ));
        if i + 1 < layers {
            chain.push_str("    h = torch.relu(h)\n");
        }
    }
    MODULE_SOURCE
        .replace("{MODULE}", MODULE_CLASS)
        .replace("{LINEAR}", LINEAR_CLASS)
        .replace("{SUBMODULES}", &submodules)
        .replace("{LOGITS}", &chain)
}

const MODULE_SOURCE: &str = r#"class {MODULE}(Module):
  __parameters__ = []
  __buffers__ = ["numeric_mean", "numeric_std", ]
  numeric_mean : Tensor
  numeric_std : Tensor
  training : bool
  model_kind : str
  schema_fingerprint : str
  input_dim : int
  feature_names : List[str]
  numeric_columns : List[str]
  numeric_offsets : List[int]
  categorical_columns : List[str]
  categorical_offsets : List[int]
  categorical_modes : List[int]
  categorical_levels : List[List[str]]
{SUBMODULES}  def forward(self: __torch__.{MODULE},
    x: Tensor) -> Tensor:
    return torch.sigmoid((self).logits(x, ))
  def logits(self: __torch__.{MODULE},
    x: Tensor) -> Tensor:
{LOGITS}    return torch.squeeze(h, -1)
  def predict_raw(self: __torch__.{MODULE},
    numeric: Tensor,
    categorical: Tensor) -> Tensor:
    encoded = (self).encode(numeric, categorical, )
    return (self).forward(encoded, )
  def encode(self: __torch__.{MODULE},
    numeric: Tensor,
    categorical: Tensor) -> Tensor:
    numeric_offsets = self.numeric_offsets
    categorical_offsets = self.categorical_offsets
    if torch.ne(torch.dim(numeric), 2):
      ops.prim.RaiseException("numeric must be a [rows, numeric columns] tensor", "builtins.ValueError")
    if torch.ne(torch.dim(categorical), 2):
      ops.prim.RaiseException("categorical must be a [rows, categorical columns] tensor of level codes", "builtins.ValueError")
    rows = torch.size(numeric, 0)
    if torch.ne(torch.size(categorical, 0), rows):
      ops.prim.RaiseException("numeric and categorical have different numbers of rows", "builtins.ValueError")
    if torch.ne(torch.size(numeric, 1), torch.len(numeric_offsets)):
      ops.prim.RaiseException("numeric has the wrong number of columns (see numeric_columns)", "builtins.ValueError")
    if torch.ne(torch.size(categorical, 1), torch.len(categorical_offsets)):
      ops.prim.RaiseException("categorical has the wrong number of columns (see categorical_columns)", "builtins.ValueError")
    input_dim = self.input_dim
    device = ops.prim.device(numeric)
    out = torch.zeros([rows, input_dim], dtype=6, layout=None, device=device)
    numeric_mean = self.numeric_mean
    numeric_std = self.numeric_std
    centred = torch.sub(torch.to(numeric, 7), numeric_mean)
    z = torch.nan_to_num(torch.div(centred, numeric_std), 0.)
    for j in range(torch.len(numeric_offsets)):
      at = numeric_offsets[j]
      value = torch.to(torch.select(z, 1, j), 6)
      _0 = torch.copy_(torch.select(out, 1, at), value)
    codes = torch.to(categorical, device, 4)
    categorical_levels = self.categorical_levels
    categorical_modes = self.categorical_modes
    for j0 in range(torch.len(categorical_offsets)):
      at0 = categorical_offsets[j0]
      width = torch.len(categorical_levels[j0])
      given = torch.select(codes, 1, j0)
      mode = torch.full_like(given, categorical_modes[j0])
      code = torch.where(torch.lt(given, 0), mode, given)
      if bool(torch.any(torch.ge(code, width))):
        ops.prim.RaiseException("categorical level code out of range (see categorical_levels)", "builtins.ValueError")
      one_hot = torch.to(torch.one_hot(code, width), 6)
      _1 = torch.copy_(torch.slice(out, 1, at0, torch.add(at0, width)), one_hot)
    return out
  def categorical_codes(self: __torch__.{MODULE},
    rows: List[List[str]]) -> Tensor:
    categorical_levels = self.categorical_levels
    n = torch.len(categorical_levels)
    codes = annotate(List[int], [])
    for r in range(torch.len(rows)):
      row = rows[r]
      if torch.ne(torch.len(row), n):
        ops.prim.RaiseException("each row needs one value per categorical column (see categorical_columns)", "builtins.ValueError")
      for j in range(n):
        value = torch.strip(row[j])
        if torch.ne(value, ""):
          levels = categorical_levels[j]
          found = -1
          for k in range(torch.len(levels)):
            if torch.eq(levels[k], value):
              found0 = k
            else:
              found0 = found
            found = found0
          if torch.lt(found, 0):
            ops.prim.RaiseException(torch.add("unknown categorical level: ", value), "builtins.ValueError")
          code = found
        else:
          code = -1
        _2 = torch.append(codes, code)
    return torch.reshape(torch.tensor(codes, dtype=4), [torch.len(rows), n])
class {LINEAR}(Module):
  __parameters__ = ["weight", "bias", ]
  __buffers__ = []
  weight : Tensor
  bias : Tensor
  training : bool
  def forward(self: __torch__.{LINEAR},
    x: Tensor) -> Tensor:
    weight = self.weight
    bias = self.bias
    return torch.linear(x, weight, bias)
"#;

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn preprocessing() -> Preprocessing {
        Preprocessing {
            schema_fingerprint: "fp".into(),
            rows: 10,
            columns: vec![
                ColumnTransform::Numeric {
                    name: "tenure".into(),
                    mean: 30.0,
                    std: 20.0,
                },
                ColumnTransform::Categorical {
                    name: "Contract".into(),
                    levels: vec!["Monthly".into(), "Yearly".into()],
                    mode: 1,
                },
            ],
        }
    }

    fn archive(spec: &ModelSpec) -> zip::ZipArchive<Cursor<Vec<u8>>> {
        let params = ModelParams::init(spec.layout(3), 1);
        let bytes = torchscript_archive(spec, &params, &preprocessing()).expect("exports");
        zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip file")
    }

    #[test]
    fn archive_has_the_records_torch_jit_load_reads() {
        let zip = archive(&ModelSpec::Mlp { hidden: vec![4] });
        let names: Vec<String> = zip
            .file_names()
            .map(|n| n.expect("utf-8 name").into_owned())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for record in [
            "data.pkl",
            "constants.pkl",
            "code/__torch__.py",
            "version",
            "byteorder",
            "extra/confide.json",
        ] {
            assert!(
                names.contains(&format!("{ARCHIVE_ROOT}/{record}").as_str()),
                "{record} in {names:?}"
            );
        }
        // Storages: mean, std, then fc0.weight, fc0.bias, fc1.weight, fc1.bias.
        for key in 0..6 {
            assert!(
                names.contains(&format!("{ARCHIVE_ROOT}/data/{key}").as_str()),
                "storage {key}"
            );
        }
        assert!(!names.contains(&format!("{ARCHIVE_ROOT}/data/6").as_str()));
    }

    #[test]
    fn storages_hold_little_endian_values_at_aligned_offsets() {
        let spec = ModelSpec::LogisticRegression;
        let params = ModelParams::init(spec.layout(3), 1);
        let bytes = torchscript_archive(&spec, &params, &preprocessing()).expect("exports");
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip file");
        let mut weight = zip
            .by_name(&format!("{ARCHIVE_ROOT}/data/2"))
            .expect("fc0.weight storage");
        assert_eq!(
            weight.data_start().expect("offset") % u64::from(STORAGE_ALIGNMENT),
            0
        );
        let mut raw = Vec::new();
        weight.read_to_end(&mut raw).expect("reads");
        assert_eq!(raw, f32_bytes(params.tensor("fc0.weight").expect("weight")));
        drop(weight);
        let mut mean = zip
            .by_name(&format!("{ARCHIVE_ROOT}/data/0"))
            .expect("mean storage");
        let mut raw = Vec::new();
        mean.read_to_end(&mut raw).expect("reads");
        assert_eq!(raw, 30.0f64.to_le_bytes());
    }

    #[test]
    fn code_chains_every_layer_with_relu_between() {
        let code = module_source(3);
        assert!(code.contains("fc2 : __torch__.ConfideLinear"));
        assert_eq!(
            code.matches("torch.relu(h)").count(),
            2,
            "no ReLU after the output layer"
        );
        assert!(
            module_source(1).contains("h = (fc0).forward(h, )\n    return torch.squeeze(h, -1)")
        );
    }

    #[test]
    fn parameters_of_another_width_are_refused() {
        let spec = ModelSpec::LogisticRegression;
        let params = ModelParams::init(spec.layout(5), 1);
        let err = torchscript_archive(&spec, &params, &preprocessing()).expect_err("mismatch");
        let text = err.to_string();
        assert!(
            text.contains("fc0.weight") && text.contains("[1, 5]") && text.contains("[1, 3]"),
            "{text}"
        );
    }

    #[test]
    fn write_replaces_the_file_and_reports_unwritable_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("model.pt");
        let spec = ModelSpec::LogisticRegression;
        let params = ModelParams::init(spec.layout(3), 1);
        std::fs::write(&out, b"old").expect("seed file");
        write_torchscript(&spec, &params, &preprocessing(), &out).expect("writes");
        assert_eq!(std::fs::read(&out).expect("reads")[..2], *b"PK");
        let missing = dir.path().join("no/such/dir/model.pt");
        let err =
            write_torchscript(&spec, &params, &preprocessing(), &missing).expect_err("no dir");
        assert!(err.to_string().contains("no/such/dir/model.pt"), "{err}");
    }
}
