//! Splitting one CSV or Parquet file into per-institution `train`/`test` files (CSV or Parquet),
//! for simulations and tests of federated training on public data.
//!
//! Three schemes decide which institution gets each row:
//! - [`Scheme::Iid`]: a seeded shuffle cut into near-equal parts;
//! - [`Scheme::Dirichlet`]: label skew; each class is spread over institutions with proportions
//!   drawn from Dirichlet(α) (small α → strongly skewed, large α → close to IID);
//! - [`Scheme::ByColumn`]: one institution per value of a natural column (e.g. `Geography`).
//!
//! Within each institution a fraction of rows, stratified by label, becomes the test set. CSV to
//! CSV copies rows byte for byte (quoting and all) under the input's header; other format pairs
//! re-encode cells through [`crate::output`] (see [`grid`]). Within each output file rows keep
//! their input order. The input is checked against the schema's header and target, so a
//! partition never silently produces files the loader would refuse for those reasons. Everything
//! is deterministic given the seed.

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Location};
use crate::schema::DatasetSchema;
use crate::table::{DataFormat, cell, csv_reader, map_header, parse_label};

mod grid;
use grid::Grid;

/// How rows are assigned to institutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scheme {
    /// Uniformly at random, near-equal sizes.
    Iid,
    /// Label skew with Dirichlet(`alpha`) class proportions.
    Dirichlet {
        /// Concentration (> 0).
        alpha: f64,
    },
    /// One institution per distinct value of `column`, named after the value.
    ByColumn {
        /// Column whose values define the institutions.
        column: String,
    },
    /// Ratings: users dealt at random to institutions (near-equal user counts); all of a
    /// user's ratings go to one institution.
    Users,
    /// Ratings, non-IID: users sorted by number of ratings and cut into contiguous blocks, so
    /// `bank1` holds the most active users and the last bank the least active.
    UsersByActivity,
}

/// Which of each user's ratings are held out (ratings partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Holdout {
    /// A seeded random fraction of each user's ratings.
    #[default]
    Random,
    /// Each user's latest ratings by timestamp (ties by file order).
    Latest,
}

/// A partitioning request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionConfig {
    /// Number of institutions; required for IID and Dirichlet. For `ByColumn` it is optional and,
    /// when given, must equal the number of distinct values.
    pub institutions: Option<usize>,
    /// Assignment scheme.
    pub scheme: Scheme,
    /// Fraction of each institution's rows (per class) held out as `test.csv`, in `[0, 1)`.
    pub test_fraction: f64,
    /// Seed for every random choice.
    pub seed: u64,
    /// Smallest acceptable institution (Dirichlet draws are repeated until all reach it).
    pub min_rows: usize,
    /// Ratings partitions: which ratings of each user are held out (`test_fraction` of them;
    /// every user keeps at least one training rating).
    #[serde(default)]
    pub holdout: Holdout,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            institutions: Some(3),
            scheme: Scheme::Iid,
            test_fraction: 0.2,
            seed: 42,
            min_rows: 10,
            holdout: Holdout::Random,
        }
    }
}

/// Row indices (0-based, data rows only) of one institution.
#[derive(Debug, Clone, PartialEq)]
pub struct InstitutionRows {
    /// Folder name (`bank1`, ... or the column value).
    pub name: String,
    /// Training rows, ascending.
    pub train: Vec<usize>,
    /// Test rows, ascending.
    pub test: Vec<usize>,
}

/// What was written for one institution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstitutionSummary {
    /// Folder name.
    pub name: String,
    /// Rows in `train.csv`.
    pub train_rows: usize,
    /// Positives in `train.csv`.
    pub train_positives: usize,
    /// Rows in `test.csv`.
    pub test_rows: usize,
    /// Positives in `test.csv`.
    pub test_positives: usize,
}

/// The manifest written as `partition.json` beside the institution folders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSummary {
    /// Input file as given.
    pub input: String,
    /// SHA-256 of the input file.
    pub input_sha256: String,
    /// Schema name.
    pub schema: String,
    /// Schema fingerprint.
    pub schema_fingerprint: String,
    /// The request.
    pub config: PartitionConfig,
    /// Output file format (`csv` or `parquet`).
    #[serde(default = "default_format")]
    pub format: String,
    /// Per-institution counts.
    pub institutions: Vec<InstitutionSummary>,
}

fn default_format() -> String {
    "csv".into()
}

/// Assigns rows to institutions and splits each into train/test.
///
/// `labels` has one entry per data row (1.0 positive); `keys` (one per row) is required for
/// [`Scheme::ByColumn`] and ignored otherwise. Errors are plain messages for the caller to wrap.
pub fn plan_partition(
    labels: &[f32],
    keys: Option<&[String]>,
    cfg: &PartitionConfig,
) -> Result<Vec<InstitutionRows>, String> {
    if !(0.0..1.0).contains(&cfg.test_fraction) {
        return Err(format!("test fraction {} must be in [0, 1)", cfg.test_fraction));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let groups: Vec<(String, Vec<usize>)> = match &cfg.scheme {
        Scheme::Iid => {
            let k = institution_count(cfg, labels.len())?;
            let mut rows: Vec<usize> = (0..labels.len()).collect();
            rows.shuffle(&mut rng);
            let cuts: Vec<usize> = (0..=k).map(|i| i * rows.len() / k).collect();
            (0..k)
                .map(|i| (format!("bank{}", i + 1), rows[cuts[i]..cuts[i + 1]].to_vec()))
                .collect()
        }
        Scheme::Dirichlet { alpha } => {
            if !(alpha.is_finite() && *alpha > 0.0) {
                return Err(format!("Dirichlet alpha {alpha} must be a positive number"));
            }
            let k = institution_count(cfg, labels.len())?;
            dirichlet_groups(labels, k, *alpha, cfg.min_rows, &mut rng)?
                .into_iter()
                .enumerate()
                .map(|(i, rows)| (format!("bank{}", i + 1), rows))
                .collect()
        }
        Scheme::ByColumn { column } => {
            let keys = keys.ok_or_else(|| format!("no values given for column `{column}`"))?;
            let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (row, key) in keys.iter().enumerate() {
                by_value.entry(key.as_str()).or_default().push(row);
            }
            if let Some(k) = cfg.institutions
                && k != by_value.len()
            {
                return Err(format!(
                    "{k} institutions requested, but column `{column}` has {} distinct values",
                    by_value.len()
                ));
            }
            let mut groups = Vec::new();
            let mut names = std::collections::HashSet::new();
            for (value, rows) in by_value {
                let name = folder_name(value)
                    .ok_or_else(|| format!("value {value:?} of `{column}` cannot name a folder"))?;
                if !names.insert(name.clone()) {
                    return Err(format!(
                        "two values of `{column}` map to the same folder name `{name}`"
                    ));
                }
                groups.push((name, rows));
            }
            groups
        }
        Scheme::Users | Scheme::UsersByActivity => {
            return Err("user schemes need a ratings schema (`[recommendation]`)".into());
        }
    };
    Ok(groups
        .into_iter()
        .map(|(name, rows)| {
            let (train, test) = stratified_split(&rows, labels, cfg.test_fraction, &mut rng);
            InstitutionRows { name, train, test }
        })
        .collect())
}

fn institution_count(cfg: &PartitionConfig, rows: usize) -> Result<usize, String> {
    match cfg.institutions {
        None | Some(0) => Err("the number of institutions must be at least 1".into()),
        Some(k) if k.saturating_mul(cfg.min_rows.max(1)) > rows => Err(format!(
            "{rows} rows cannot give {k} institutions of at least {} rows",
            cfg.min_rows.max(1)
        )),
        Some(k) => Ok(k),
    }
}

/// A value usable as a folder name: letters, digits, `.`, `-`, `_`; other characters become `_`.
fn folder_name(value: &str) -> Option<String> {
    let name: String = value
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// Spreads each class over `k` institutions with Dirichlet(α) proportions, redrawing until every
/// institution has at least `min_rows` rows.
fn dirichlet_groups(
    labels: &[f32],
    k: usize,
    alpha: f64,
    min_rows: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, String> {
    const ATTEMPTS: usize = 1000;
    let classes: [Vec<usize>; 2] = [
        (0..labels.len()).filter(|&r| labels[r] <= 0.5).collect(),
        (0..labels.len()).filter(|&r| labels[r] > 0.5).collect(),
    ];
    for _ in 0..ATTEMPTS {
        let mut groups = vec![Vec::new(); k];
        for class in &classes {
            let mut rows = class.clone();
            rows.shuffle(rng);
            let weights: Vec<f64> = (0..k).map(|_| gamma(rng, alpha)).collect();
            let total: f64 = weights.iter().sum();
            if !(total > 0.0 && total.is_finite()) {
                continue;
            }
            let mut cumulative = 0.0;
            let mut start = 0usize;
            for (i, w) in weights.iter().enumerate() {
                cumulative += w / total;
                let end = if i + 1 == k {
                    rows.len()
                } else {
                    ((cumulative * rows.len() as f64).round() as usize).min(rows.len())
                };
                groups[i].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if groups.iter().map(Vec::len).sum::<usize>() == labels.len()
            && groups.iter().all(|g| g.len() >= min_rows.max(1))
        {
            return Ok(groups);
        }
    }
    Err(format!(
        "no Dirichlet(α={alpha}) draw in {ATTEMPTS} attempts gave all {k} institutions at least {} rows; \
         raise alpha or lower the number of institutions",
        min_rows.max(1)
    ))
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; shape < 1 boosted by U^(1/shape)).
fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = crate::synth::standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Splits `rows` into (train, test), taking `round(n_c × fraction)` test rows from each class.
fn stratified_split(
    rows: &[usize],
    labels: &[f32],
    fraction: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for positive in [false, true] {
        let mut class: Vec<usize> =
            rows.iter().copied().filter(|&r| (labels[r] > 0.5) == positive).collect();
        class.shuffle(rng);
        let n_test = (class.len() as f64 * fraction).round() as usize;
        test.extend_from_slice(&class[..n_test]);
        train.extend_from_slice(&class[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// An input file split into its header line and its data records, each as raw bytes without the
/// line terminator.
struct RawLines<'a> {
    header: &'a [u8],
    records: Vec<&'a [u8]>,
    newline: &'static [u8],
}

fn trim_newlines(mut bytes: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b'\r' | b'\n'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Reads a CSV `input` against `schema`, plans the partition, and writes
/// `out/<name>/{train,test}.csv` (rows copied byte for byte) plus `out/partition.json`. Existing
/// output files are refused unless `overwrite`.
pub fn partition_csv(
    input: &Path,
    schema: &DatasetSchema,
    out: &Path,
    cfg: &PartitionConfig,
    overwrite: bool,
) -> Result<PartitionSummary, DataError> {
    partition_file(input, schema, out, cfg, Some(DataFormat::Csv), overwrite)
}

/// Reads `input` (CSV or Parquet, by extension) against `schema`, plans the partition, and
/// writes `out/<name>/{train,test}.<csv|parquet>` in `format` (default: the input's) plus
/// `out/partition.json`. CSV to CSV copies rows byte for byte; any other combination re-encodes
/// the cells (numeric features as numbers, every other column as text, missing cells empty or
/// null) and holds the input in memory. Existing output files are refused unless `overwrite`.
pub fn partition_file(
    input: &Path,
    schema: &DatasetSchema,
    out: &Path,
    cfg: &PartitionConfig,
    format: Option<DataFormat>,
    overwrite: bool,
) -> Result<PartitionSummary, DataError> {
    let input_format = DataFormat::of_path(input);
    let format = format.unwrap_or(input_format);
    if let Some(spec) = &schema.recommendation {
        if (input_format, format) != (DataFormat::Csv, DataFormat::Csv) {
            return Err(DataError::Partition {
                path: input.display().to_string(),
                message: "ratings files are partitioned from CSV to CSV".into(),
            });
        }
        return partition_ratings_csv(input, schema, spec, out, cfg, overwrite);
    }
    if (input_format, format) == (DataFormat::Csv, DataFormat::Csv) {
        return partition_csv_verbatim(input, schema, out, cfg, overwrite);
    }
    let origin = input.display().to_string();
    let (grid, input_sha256) = match input_format {
        DataFormat::Csv => {
            let bytes = std::fs::read(input).map_err(|e| DataError::io(input, e))?;
            (Grid::from_csv(&bytes, &origin, schema)?, confide_core::sha256_hex(&bytes))
        }
        DataFormat::Parquet => (Grid::from_parquet(input, &origin, schema)?, file_sha256(input)?),
    };
    let (labels, keys) = grid.labels_and_keys(schema, &cfg.scheme)?;
    let write = |path: &Path, rows: &[usize]| grid.write(path, format, rows, overwrite);
    let plan = plan_partition(&labels, keys.as_deref(), cfg)
        .map_err(|message| DataError::Partition { path: origin.clone(), message })?;
    let positive = |r: usize| labels[r] > 0.5;
    write_partition(&origin, input_sha256, schema, out, cfg, &plan, &positive, format, write)
}

fn file_sha256(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    Ok(confide_core::sha256_hex(&bytes))
}

/// Has `write` write each institution's planned train and test rows, and writes the manifest;
/// `positive(row)` says which rows the summary counts as positives.
#[allow(clippy::too_many_arguments)]
fn write_partition(
    origin: &str,
    input_sha256: String,
    schema: &DatasetSchema,
    out: &Path,
    cfg: &PartitionConfig,
    plan: &[InstitutionRows],
    positive: &dyn Fn(usize) -> bool,
    format: DataFormat,
    mut write: impl FnMut(&Path, &[usize]) -> Result<(), DataError>,
) -> Result<PartitionSummary, DataError> {
    let mut institutions = Vec::with_capacity(plan.len());
    for inst in plan {
        let dir = out.join(&inst.name);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        for (split, rows) in [("train", &inst.train), ("test", &inst.test)] {
            write(&dir.join(format!("{split}.{}", format.extension())), rows)?;
        }
        let positives = |rows: &[usize]| rows.iter().filter(|&&r| positive(r)).count();
        institutions.push(InstitutionSummary {
            name: inst.name.clone(),
            train_rows: inst.train.len(),
            train_positives: positives(&inst.train),
            test_rows: inst.test.len(),
            test_positives: positives(&inst.test),
        });
    }
    let summary = PartitionSummary {
        input: origin.to_string(),
        input_sha256,
        schema: schema.name.clone(),
        schema_fingerprint: schema.fingerprint(),
        config: cfg.clone(),
        format: format.extension().to_string(),
        institutions,
    };
    let manifest = out.join("partition.json");
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    write_file(&manifest, format!("{json}\n").as_bytes(), true)?;
    Ok(summary)
}

/// CSV to CSV: rows are copied byte for byte (quoting, line endings and all).
fn partition_csv_verbatim(
    input: &Path,
    schema: &DatasetSchema,
    out: &Path,
    cfg: &PartitionConfig,
    overwrite: bool,
) -> Result<PartitionSummary, DataError> {
    let origin = input.display().to_string();
    let bytes = std::fs::read(input).map_err(|e| DataError::io(input, e))?;
    let mut rdr = csv_reader(bytes.as_slice());
    let header = rdr.byte_headers().map_err(|e| DataError::csv(&origin, &e))?.clone();
    let map = map_header(&origin, &header, schema)?;
    let key_index = match &cfg.scheme {
        Scheme::ByColumn { column } => Some(*map.by_name.get(column).ok_or_else(|| {
            DataError::MissingColumn { at: Location::line(&origin, 1), column: column.clone() }
        })?),
        _ => None,
    };

    let (mut labels, mut keys, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    let mut record = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(&origin, &e))? {
        let pos = record.position().cloned().unwrap_or_else(csv::Position::new);
        let line = pos.line();
        labels.push(parse_label(&record, map.target, schema, &origin, line)?);
        if let (Some(i), Scheme::ByColumn { column }) = (key_index, &cfg.scheme) {
            let value = cell(&record, i, &origin, line, column)?;
            if schema.is_missing(value) {
                return Err(DataError::MissingValue {
                    at: Location::line(&origin, line),
                    column: column.clone(),
                });
            }
            keys.push(value.trim().to_string());
        }
        starts.push(usize::try_from(pos.byte()).unwrap_or(bytes.len()).min(bytes.len()));
    }
    let lines = raw_lines(&bytes, &starts);
    let plan = plan_partition(&labels, key_index.map(|_| keys.as_slice()), cfg)
        .map_err(|message| DataError::Partition { path: origin.clone(), message })?;
    let positive = |r: usize| labels[r] > 0.5;
    let write = |path: &Path, rows: &[usize]| write_rows(path, &lines, rows, overwrite);
    let sha = confide_core::sha256_hex(&bytes);
    write_partition(&origin, sha, schema, out, cfg, &plan, &positive, DataFormat::Csv, write)
}

/// Splits the byte buffer into the header and one slice per record (`starts` = byte offsets).
fn raw_lines<'b>(bytes: &'b [u8], starts: &[usize]) -> RawLines<'b> {
    let header_bytes = trim_newlines(&bytes[..starts.first().copied().unwrap_or(bytes.len())]);
    // Output files use the input's line ending, read from the end of the header line.
    let newline: &'static [u8] =
        if bytes.get(header_bytes.len()..header_bytes.len() + 2) == Some(b"\r\n") {
            b"\r\n"
        } else {
            b"\n"
        };
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(bytes.len()));
    RawLines {
        header: header_bytes,
        records: starts
            .iter()
            .zip(ends)
            .map(|(&s, e)| trim_newlines(&bytes[s..e.max(s)]))
            .collect(),
        newline,
    }
}

/// Partitions a ratings file by user (see [`Scheme::Users`], [`Scheme::UsersByActivity`]) and
/// holds out part of each user's ratings; `positives` in the summary count relevant ratings.
fn partition_ratings_csv(
    input: &Path,
    schema: &DatasetSchema,
    spec: &crate::schema::RecommendationSpec,
    out: &Path,
    cfg: &PartitionConfig,
    overwrite: bool,
) -> Result<PartitionSummary, DataError> {
    let origin = input.display().to_string();
    let bytes = std::fs::read(input).map_err(|e| DataError::io(input, e))?;
    let mut rdr = csv_reader(bytes.as_slice());
    let header = rdr.byte_headers().map_err(|e| DataError::csv(&origin, &e))?.clone();
    let columns = crate::ratings::RatingColumns::locate(&origin, &header, schema, spec)?;
    let (mut user_of, mut times, mut relevant, mut starts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut users: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut record = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(&origin, &e))? {
        let pos = record.position().cloned().unwrap_or_else(csv::Position::new);
        let row = columns.parse(&record, &origin, pos.line(), schema, spec)?;
        let next = users.len();
        user_of.push(*users.entry(row.user.to_string()).or_insert(next));
        times.push(row.timestamp);
        relevant.push(row.rating >= spec.relevant_from);
        starts.push(usize::try_from(pos.byte()).unwrap_or(bytes.len()).min(bytes.len()));
    }
    let lines = raw_lines(&bytes, &starts);
    let plan = plan_ratings_partition(&user_of, &times, cfg)
        .map_err(|message| DataError::Partition { path: origin.clone(), message })?;
    let positive = |r: usize| relevant[r];
    let write = |path: &Path, rows: &[usize]| write_rows(path, &lines, rows, overwrite);
    let sha = confide_core::sha256_hex(&bytes);
    write_partition(&origin, sha, schema, out, cfg, &plan, &positive, DataFormat::Csv, write)
}

/// Assigns users (`user_of[row]`, dense indices in first-seen order) to institutions and holds
/// out `test_fraction` of each user's ratings (at least one stays in training).
pub fn plan_ratings_partition(user_of: &[usize], times: &[i64], cfg: &PartitionConfig) -> Result<Vec<InstitutionRows>, String> {
    let k = cfg.institutions.ok_or("ratings partitions need --institutions")?;
    if !(0.0..1.0).contains(&cfg.test_fraction) {
        return Err(format!("test fraction {} must be in [0, 1)", cfg.test_fraction));
    }
    let n_users = user_of.iter().max().map_or(0, |m| m + 1);
    if k == 0 || k > n_users {
        return Err(format!("cannot split {n_users} users into {k} institutions"));
    }
    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); n_users];
    for (r, &u) in user_of.iter().enumerate() {
        rows_of[u].push(r);
    }
    // The hold-out is drawn first, per user in first-seen order, from its own stream, so the
    // same seed gives the same train/test ratings whatever the scheme and institution count:
    // centralised, federated and local-only runs then see exactly the same split.
    let mut holdout_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let split: Vec<(Vec<usize>, Vec<usize>)> = rows_of
        .iter()
        .map(|rows| {
            let mut rows = rows.clone();
            match cfg.holdout {
                Holdout::Random => rows.shuffle(&mut holdout_rng),
                Holdout::Latest => rows.sort_by_key(|&r| (times[r], r)),
            }
            let held = ((rows.len() as f64 * cfg.test_fraction).round() as usize).min(rows.len().saturating_sub(1));
            let test = rows.split_off(rows.len() - held);
            (rows, test)
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5555_AAAA_5555_AAAA);
    let mut order: Vec<usize> = (0..n_users).collect();
    let bank_of_rank: Vec<usize> = match cfg.scheme {
        Scheme::Iid | Scheme::Users => {
            order.shuffle(&mut rng);
            (0..n_users).map(|i| i % k).collect()
        }
        Scheme::UsersByActivity => {
            order.sort_by_key(|&u| std::cmp::Reverse(rows_of[u].len()));
            (0..n_users).map(|i| i * k / n_users).collect()
        }
        ref other => return Err(format!("scheme {other:?} does not apply to ratings; use users or users_by_activity")),
    };
    let mut plan: Vec<InstitutionRows> =
        (0..k).map(|i| InstitutionRows { name: format!("bank{}", i + 1), train: Vec::new(), test: Vec::new() }).collect();
    for (rank, &u) in order.iter().enumerate() {
        let inst = &mut plan[bank_of_rank[rank]];
        inst.train.extend_from_slice(&split[u].0);
        inst.test.extend_from_slice(&split[u].1);
    }
    for inst in &mut plan {
        inst.train.sort_unstable();
        inst.test.sort_unstable();
        if inst.train.len() + inst.test.len() < cfg.min_rows {
            return Err(format!("{} would hold {} ratings, fewer than --min-rows {}", inst.name, inst.train.len() + inst.test.len(), cfg.min_rows));
        }
    }
    Ok(plan)
}

fn write_rows(
    path: &Path,
    lines: &RawLines<'_>,
    rows: &[usize],
    overwrite: bool,
) -> Result<(), DataError> {
    let mut buf = Vec::with_capacity(lines.header.len() + rows.len() * 128);
    for line in std::iter::once(lines.header).chain(rows.iter().map(|&r| lines.records[r])) {
        buf.extend_from_slice(line);
        buf.extend_from_slice(lines.newline);
    }
    write_file(path, &buf, overwrite)
}

fn write_file(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), DataError> {
    crate::output::refuse_existing(path, overwrite)?;
    std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, every: usize) -> Vec<f32> {
        (0..n).map(|i| if i % every == 0 { 1.0 } else { 0.0 }).collect()
    }

    fn cfg(institutions: usize, scheme: Scheme, seed: u64) -> PartitionConfig {
        PartitionConfig {
            institutions: Some(institutions),
            scheme,
            seed,
            ..PartitionConfig::default()
        }
    }

    fn all_rows(plan: &[InstitutionRows]) -> Vec<usize> {
        let mut rows: Vec<usize> =
            plan.iter().flat_map(|i| i.train.iter().chain(&i.test).copied()).collect();
        rows.sort_unstable();
        rows
    }

    #[test]
    fn ratings_partitions_keep_each_user_at_one_bank_and_hold_out_per_user() {
        // 30 users with 1..=30 ratings each.
        let user_of: Vec<usize> = (0..30).flat_map(|u| std::iter::repeat_n(u, u + 1)).collect();
        let times: Vec<i64> = (0..user_of.len() as i64).rev().collect();
        for scheme in [Scheme::Users, Scheme::UsersByActivity] {
            for holdout in [Holdout::Random, Holdout::Latest] {
                let c = PartitionConfig { holdout, min_rows: 1, ..cfg(3, scheme.clone(), 5) };
                let plan = plan_ratings_partition(&user_of, &times, &c).expect("plans");
                assert_eq!(all_rows(&plan), (0..user_of.len()).collect::<Vec<_>>());
                let bank_of = |u: usize| plan.iter().position(|i| i.train.iter().chain(&i.test).any(|&r| user_of[r] == u));
                for u in 0..30 {
                    let b = bank_of(u).expect("user placed");
                    let inst = &plan[b];
                    let (tr, te) = (
                        inst.train.iter().filter(|&&r| user_of[r] == u).count(),
                        inst.test.iter().filter(|&&r| user_of[r] == u).count(),
                    );
                    assert_eq!(tr + te, u + 1, "all of user {u}'s ratings at one bank");
                    assert!(tr >= 1, "user {u} keeps a training rating");
                    assert_eq!(te, (((u + 1) as f64 * 0.2).round() as usize).min(u));
                    if holdout == Holdout::Latest && te > 0 {
                        let newest_train = inst.train.iter().filter(|&&r| user_of[r] == u).map(|&r| times[r]).max();
                        let oldest_test = inst.test.iter().filter(|&&r| user_of[r] == u).map(|&r| times[r]).min();
                        assert!(newest_train <= oldest_test, "latest ratings are held out");
                    }
                }
                if scheme == Scheme::UsersByActivity {
                    let sizes: Vec<usize> = plan.iter().map(|i| i.train.len() + i.test.len()).collect();
                    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
                }
            }
        }
        assert!(plan_ratings_partition(&user_of, &times, &cfg(3, Scheme::Dirichlet { alpha: 1.0 }, 1)).is_err());
        // The same seed holds out the same ratings whatever the scheme or institution count.
        let test_rows = |scheme: Scheme, k: usize| {
            let plan = plan_ratings_partition(&user_of, &times, &PartitionConfig { min_rows: 1, ..cfg(k, scheme, 9) }).expect("plans");
            let mut t: Vec<usize> = plan.iter().flat_map(|i| i.test.clone()).collect();
            t.sort_unstable();
            t
        };
        assert_eq!(test_rows(Scheme::Users, 3), test_rows(Scheme::UsersByActivity, 5));
        assert_eq!(test_rows(Scheme::Users, 3), test_rows(Scheme::Users, 1));
    }

    #[test]
    fn iid_conserves_rows_and_is_deterministic() {
        let y = labels(1003, 4);
        let plan = plan_partition(&y, None, &cfg(4, Scheme::Iid, 7)).expect("plans");
        assert_eq!(all_rows(&plan), (0..1003).collect::<Vec<_>>());
        assert_eq!(
            plan.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["bank1", "bank2", "bank3", "bank4"]
        );
        for inst in &plan {
            let n = inst.train.len() + inst.test.len();
            assert!((250..=251).contains(&n));
            let ratio = inst.test.len() as f64 / n as f64;
            assert!((ratio - 0.2).abs() < 0.01, "{ratio}");
        }
        assert_eq!(plan, plan_partition(&y, None, &cfg(4, Scheme::Iid, 7)).expect("plans"));
        assert_ne!(plan, plan_partition(&y, None, &cfg(4, Scheme::Iid, 8)).expect("plans"));
    }

    #[test]
    fn test_split_is_stratified() {
        let y = labels(1000, 5);
        let plan = plan_partition(&y, None, &cfg(2, Scheme::Iid, 1)).expect("plans");
        for inst in &plan {
            let pos = |rows: &[usize]| {
                rows.iter().filter(|&&r| y[r] > 0.5).count() as f64 / rows.len() as f64
            };
            assert!((pos(&inst.train) - pos(&inst.test)).abs() < 0.02);
        }
    }

    #[test]
    fn dirichlet_skews_labels_and_small_alpha_skews_more() {
        let y = labels(4000, 3);
        let spread = |alpha: f64| {
            let plan =
                plan_partition(&y, None, &cfg(5, Scheme::Dirichlet { alpha }, 3)).expect("plans");
            assert_eq!(all_rows(&plan).len(), 4000);
            let rates: Vec<f64> = plan
                .iter()
                .map(|i| {
                    let rows: Vec<usize> = i.train.iter().chain(&i.test).copied().collect();
                    rows.iter().filter(|&&r| y[r] > 0.5).count() as f64 / rows.len() as f64
                })
                .collect();
            rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(1.0, f64::min)
        };
        let (skewed, near_iid) = (spread(0.3), spread(1000.0));
        assert!(skewed > 0.3, "alpha 0.3 gave positive-rate spread {skewed}");
        assert!(near_iid < 0.05, "alpha 1000 gave positive-rate spread {near_iid}");
    }

    #[test]
    fn by_column_names_institutions_after_values() {
        let y = labels(9, 2);
        let keys: Vec<String> =
            ["France", "Spain", "Germany"].iter().cycle().take(9).map(|s| s.to_string()).collect();
        let mut c = cfg(3, Scheme::ByColumn { column: "Geography".into() }, 1);
        c.test_fraction = 0.0;
        let plan = plan_partition(&y, Some(&keys), &c).expect("plans");
        assert_eq!(
            plan.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["France", "Germany", "Spain"]
        );
        assert_eq!(plan[0].train, [0, 3, 6]);
        c.institutions = Some(4);
        assert!(plan_partition(&y, Some(&keys), &c).expect_err("count").contains("3 distinct"));
    }

    #[test]
    fn bad_requests_are_refused() {
        let y = labels(100, 2);
        assert!(plan_partition(&y, None, &cfg(0, Scheme::Iid, 1)).is_err());
        assert!(plan_partition(&y, None, &cfg(20, Scheme::Iid, 1)).is_err());
        assert!(plan_partition(&y, None, &cfg(2, Scheme::Dirichlet { alpha: 0.0 }, 1)).is_err());
        let mut c = cfg(2, Scheme::Iid, 1);
        c.test_fraction = 1.0;
        assert!(plan_partition(&y, None, &c).is_err());
        assert_eq!(folder_name("Costa Rica/North"), Some("Costa_Rica_North".into()));
        assert_eq!(folder_name(".."), None);
    }

    #[test]
    fn files_keep_bytes_quoting_and_line_endings() {
        let schema = DatasetSchema::parse(
            "name = \"q\"\n[target]\ncolumn = \"y\"\npositive = \"1\"\n[[columns]]\nname = \"note\"\ntype = \"ignored\"\n\
             [[columns]]\nname = \"x\"\ntype = \"numeric\"\n",
            "q.toml",
        )
        .expect("schema");
        let mut input = b"\"note\",x,y\r\n".to_vec();
        let mut expected_rows = Vec::new();
        for i in 0..40 {
            let row = if i % 7 == 0 {
                format!("\"multi\r\nline, {i}\",{i},{}", i % 2)
            } else {
                format!("plain{i},{i},{}", i % 2)
            };
            input.extend_from_slice(row.as_bytes());
            input.extend_from_slice(b"\r\n");
            expected_rows.push(row);
        }
        input.extend_from_slice(b"\r\n"); // a trailing blank line is not a row
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.csv");
        std::fs::write(&path, &input).expect("write");
        let out = dir.path().join("out");
        let summary = partition_csv(&path, &schema, &out, &cfg(2, Scheme::Iid, 3), false)
            .expect("partitions");
        assert_eq!(
            summary.institutions.iter().map(|i| i.train_rows + i.test_rows).sum::<usize>(),
            40
        );
        let header = "\"note\",x,y\r\n";
        let (mut records, mut body_bytes) = (Vec::new(), 0usize);
        for inst in ["bank1", "bank2"] {
            for file in ["train.csv", "test.csv"] {
                let text = std::fs::read_to_string(out.join(inst).join(file)).expect("read");
                let body = text.strip_prefix(header).expect("header copied verbatim");
                assert!(body.is_empty() || body.ends_with("\r\n"));
                body_bytes += body.len();
                let mut rdr = csv::Reader::from_reader(text.as_bytes());
                records.extend(
                    rdr.records()
                        .map(|r| r.expect("valid CSV").iter().collect::<Vec<_>>().join(",")),
                );
            }
        }
        // Same bytes (less the header and the trailing blank line), same records.
        assert_eq!(body_bytes, input.len() - header.len() - 2);
        records.sort();
        let mut expected: Vec<String> = expected_rows.iter().map(|r| r.replace('"', "")).collect();
        expected.sort();
        assert_eq!(records, expected);
    }

    #[test]
    fn gamma_has_the_right_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for shape in [0.3, 1.0, 4.0] {
            let mean = (0..20_000).map(|_| gamma(&mut rng, shape)).sum::<f64>() / 20_000.0;
            assert!((mean - shape).abs() < 0.05 * shape.max(1.0), "shape {shape}: mean {mean}");
        }
    }
}
