//! The Parquet loader against the CSV loader's rules, on files written here with the `parquet`
//! crate's own writer: same tables from the same data, typed columns, nulls and NaN through the
//! missing-value policy, type checks against the schema, and errors that name file, row and
//! column. Also: imputation uses federated statistics whichever format each bank uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use confide_datasets::output::{OutCell, OutColumn, OutKind, RowWriter};
use confide_datasets::{
    ColumnData, DataError, DataFormat, DatasetSchema, Location, Preprocessing, load_csv,
    load_parquet, load_table, local_stats,
};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One column of a test file: its values, `None` for null.
enum Col {
    Bool(Vec<Option<bool>>),
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    F64(Vec<Option<f64>>),
    Str(Vec<Option<&'static str>>),
    Fixed(Vec<Option<Vec<u8>>>),
}

fn split<T: Clone>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    (
        values.iter().flatten().cloned().collect(),
        values.iter().map(|v| i16::from(v.is_some())).collect(),
    )
}

/// Writes `cols` under the Parquet `message` schema (all fields optional), `group_rows` rows per
/// row group.
fn write_parquet(path: &Path, message: &str, cols: &[Col], group_rows: usize) {
    let schema = Arc::new(parse_message_type(message).expect("test schema parses"));
    let props = Arc::new(WriterProperties::builder().build());
    let file = std::fs::File::create(path).expect("create test file");
    let mut writer = SerializedFileWriter::new(file, schema, props).expect("writer");
    let rows = match &cols[0] {
        Col::Bool(v) => v.len(),
        Col::I32(v) => v.len(),
        Col::I64(v) => v.len(),
        Col::F64(v) => v.len(),
        Col::Str(v) => v.len(),
        Col::Fixed(v) => v.len(),
    };
    let mut start = 0;
    while start < rows {
        let end = (start + group_rows).min(rows);
        let mut group = writer.next_row_group().expect("row group");
        for col in cols {
            let mut w = group.next_column().expect("column").expect("column exists");
            match col {
                Col::Bool(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    w.typed::<BoolType>().write_batch(&vals, Some(&defs), None).expect("write");
                }
                Col::I32(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    w.typed::<Int32Type>().write_batch(&vals, Some(&defs), None).expect("write");
                }
                Col::I64(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    w.typed::<Int64Type>().write_batch(&vals, Some(&defs), None).expect("write");
                }
                Col::F64(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    w.typed::<DoubleType>().write_batch(&vals, Some(&defs), None).expect("write");
                }
                Col::Str(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    let vals: Vec<ByteArray> = vals.into_iter().map(ByteArray::from).collect();
                    w.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .expect("write");
                }
                Col::Fixed(v) => {
                    let (vals, defs) = split(&v[start..end]);
                    let vals: Vec<FixedLenByteArray> =
                        vals.into_iter().map(FixedLenByteArray::from).collect();
                    w.typed::<FixedLenByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .expect("write");
                }
            }
            w.close().expect("close column");
        }
        group.close().expect("close row group");
        start = end;
    }
    writer.close().expect("close file");
}

const SCHEMA: &str = r#"
name = "t"
missing = "fail"
[target]
column = "y"
positive = "1"
negative = "0"
[[columns]]
name = "id"
type = "id"
[[columns]]
name = "x"
type = "numeric"
[[columns]]
name = "c"
type = "categorical"
levels = ["a", "b"]
[[columns]]
name = "k"
type = "categorical"
levels = ["0", "1", "2"]
[[columns]]
name = "note"
type = "ignored"
"#;

fn schema_with(policy: &str) -> DatasetSchema {
    DatasetSchema::parse(
        &SCHEMA.replace("missing = \"fail\"", &format!("missing = \"{policy}\"")),
        "t.toml",
    )
    .expect("valid schema")
}

const MESSAGE: &str = "message m { optional int64 id; optional double x; optional binary c (STRING); \
                       optional int32 k; optional int64 y; }";

/// A typed Parquet file: ids, a double with a null and a NaN, strings, small integers for a
/// categorical column, an integer target; 5 rows in row groups of 2 (so row numbers cross groups).
fn typed_file(dir: &Path) -> PathBuf {
    let path = dir.join("bank.parquet");
    write_parquet(
        &path,
        MESSAGE,
        &[
            Col::I64(vec![Some(10), Some(11), Some(12), Some(13), Some(14)]),
            Col::F64(vec![Some(1.5), None, Some(3.0), Some(f64::NAN), Some(5.0)]),
            Col::Str(vec![Some("a"), Some("b"), Some(" b "), Some("a"), Some("NA")]),
            Col::I32(vec![Some(0), Some(1), Some(2), Some(1), Some(0)]),
            Col::I64(vec![Some(1), Some(0), Some(0), Some(1), Some(0)]),
        ],
        2,
    );
    path
}

fn err(result: Result<confide_datasets::RawTable, DataError>) -> String {
    result.expect_err("load must fail").to_string()
}

#[test]
fn parquet_nulls_nan_and_na_markers_follow_the_missing_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = typed_file(dir.path());

    // fail: the first missing cell is row 2 (null x), named with file, row and column.
    let e = err(load_parquet(&path, &schema_with("fail")));
    assert!(e.ends_with("bank.parquet: row 2: column `x`: missing value (policy `fail`; use `impute` or `drop` to accept it)"), "{e}");

    // impute: null and NaN become None, "NA" in a string column is missing too.
    let t = load_parquet(&path, &schema_with("impute")).expect("impute keeps every row");
    assert_eq!((t.rows, t.dropped_rows), (5, 0));
    assert_eq!(t.labels, [1.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(
        t.columns[0].data,
        ColumnData::Numeric(vec![Some(1.5), None, Some(3.0), None, Some(5.0)])
    );
    assert_eq!(
        t.columns[1].data,
        ColumnData::Categorical(vec![Some(0), Some(1), Some(1), Some(0), None])
    );
    assert_eq!(
        t.columns[2].data,
        ColumnData::Categorical(vec![Some(0), Some(1), Some(2), Some(1), Some(0)])
    );

    // drop: rows 2, 4 and 5 go.
    let t = load_parquet(&path, &schema_with("drop")).expect("drop removes rows");
    assert_eq!((t.rows, t.dropped_rows), (2, 3));
    assert_eq!(t.columns[0].data, ColumnData::Numeric(vec![Some(1.5), Some(3.0)]));
}

#[test]
fn parquet_and_csv_of_the_same_rows_load_to_the_same_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parquet = typed_file(dir.path());
    let csv = dir.path().join("bank.csv");
    std::fs::write(
        &csv,
        "id,x,c,k,y\n10,1.5,a,0,1\n11,,b,1,0\n12,3, b ,2,0\n13,,a,1,1\n14,5,NA,0,0\n",
    )
    .expect("write csv");
    for policy in ["impute", "drop"] {
        let s = schema_with(policy);
        let (mut a, b) =
            (load_parquet(&parquet, &s).expect("parquet"), load_csv(&csv, &s).expect("csv"));
        a.source = b.source.clone();
        assert_eq!(a, b, "policy {policy}");
    }
    // The dispatcher picks the loader by extension.
    let s = schema_with("impute");
    assert_eq!(load_table(&parquet, &s).expect("by extension").rows, 5);
    assert_eq!(DataFormat::of_path(Path::new("x.PQ")), DataFormat::Parquet);
    assert_eq!(DataFormat::of_path(Path::new("x.txt")), DataFormat::Csv);
}

#[test]
fn parquet_types_are_checked_against_the_schema_before_any_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let path = dir.path().join("wrong.parquet");
    let ids = Col::I64(vec![Some(1)]);
    // A numeric column stored as strings.
    write_parquet(
        &path,
        "message m { optional int64 id; optional binary x (STRING); optional binary c (STRING); optional int32 k; optional int64 y; }",
        &[
            ids,
            Col::Str(vec![Some("1.5")]),
            Col::Str(vec![Some("a")]),
            Col::I32(vec![Some(0)]),
            Col::I64(vec![Some(1)]),
        ],
        10,
    );
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("wrong.parquet: Parquet schema: column `x` is stored as BYTE_ARRAY"), "{e}");
    assert!(e.contains("numeric"), "{e}");
    // A date where a number is expected.
    write_parquet(
        &path,
        "message m { optional int64 id; optional int32 x (DATE); optional binary c (STRING); optional int32 k; optional int64 y; }",
        &[
            Col::I64(vec![Some(1)]),
            Col::I32(vec![Some(19000)]),
            Col::Str(vec![Some("a")]),
            Col::I32(vec![Some(0)]),
            Col::I64(vec![Some(1)]),
        ],
        10,
    );
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("column `x` is stored as INT32") && e.contains("Date"), "{e}");
    // Typed variants that are accepted: boolean and decimal numerics, boolean categorical text.
    let bool_schema = DatasetSchema::parse(
        "name = \"b\"\n[target]\ncolumn = \"y\"\npositive = \"true\"\n[[columns]]\nname = \"flag\"\ntype = \"numeric\"\n\
         [[columns]]\nname = \"amount\"\ntype = \"numeric\"\n[[columns]]\nname = \"member\"\ntype = \"categorical\"\nlevels = [\"false\", \"true\"]\n",
        "b.toml",
    )
    .expect("schema");
    write_parquet(
        &path,
        "message m { optional boolean flag; optional fixed_len_byte_array(4) amount (DECIMAL(9,2)); optional boolean member; optional boolean y; }",
        &[
            Col::Bool(vec![Some(true), Some(false)]),
            Col::Fixed(vec![
                Some(12345i32.to_be_bytes().to_vec()),
                Some((-250i32).to_be_bytes().to_vec()),
            ]),
            Col::Bool(vec![Some(false), Some(true)]),
            Col::Bool(vec![Some(true), Some(false)]),
        ],
        10,
    );
    let t = load_parquet(&path, &bool_schema).expect("boolean and decimal columns load");
    assert_eq!(t.columns[0].data, ColumnData::Numeric(vec![Some(1.0), Some(0.0)]));
    assert_eq!(t.columns[1].data, ColumnData::Numeric(vec![Some(123.45), Some(-2.5)]));
    assert_eq!(t.columns[2].data, ColumnData::Categorical(vec![Some(0), Some(1)]));
    assert_eq!(t.labels, [1.0, 0.0]);
}

#[test]
fn parquet_columns_must_match_the_schema_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let path = dir.path().join("cols.parquet");
    write_parquet(
        &path,
        "message m { optional int64 id; optional binary c (STRING); optional int32 k; optional int64 y; }",
        &[
            Col::I64(vec![Some(1)]),
            Col::Str(vec![Some("a")]),
            Col::I32(vec![Some(0)]),
            Col::I64(vec![Some(1)]),
        ],
        10,
    );
    let e = load_parquet(&path, &s).expect_err("x is missing");
    assert!(
        matches!(&e, DataError::MissingColumn { at: Location::ParquetSchema { .. }, column } if column == "x"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("cols.parquet: Parquet schema: column `x` required by the schema is missing"),
        "{e}"
    );
    write_parquet(
        &path,
        "message m { optional int64 id; optional double x; optional binary c (STRING); optional int32 k; optional int64 y; optional double extra; }",
        &[
            Col::I64(vec![Some(1)]),
            Col::F64(vec![Some(1.0)]),
            Col::Str(vec![Some("a")]),
            Col::I32(vec![Some(0)]),
            Col::I64(vec![Some(1)]),
            Col::F64(vec![Some(0.0)]),
        ],
        10,
    );
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("column `extra` is not in the schema"), "{e}");
}

#[test]
fn parquet_bad_cells_name_file_row_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let path = dir.path().join("cells.parquet");
    let write = |x: Col, c: Col, k: Col, y: Col| {
        write_parquet(&path, MESSAGE, &[Col::I64(vec![Some(1), Some(2), Some(3)]), x, c, k, y], 2);
    };
    let ones = || Col::F64(vec![Some(1.0), Some(1.0), Some(1.0)]);
    let strs = || Col::Str(vec![Some("a"), Some("a"), Some("a")]);
    let ks = || Col::I32(vec![Some(0), Some(0), Some(0)]);
    let ys = || Col::I64(vec![Some(0), Some(1), Some(0)]);

    write(Col::F64(vec![Some(1.0), Some(1.0), Some(f64::INFINITY)]), strs(), ks(), ys());
    let e = err(load_parquet(&path, &s));
    assert!(e.ends_with("cells.parquet: row 3: column `x`: \"inf\" is not a finite number"), "{e}");

    write(ones(), Col::Str(vec![Some("a"), Some("z"), Some("a")]), ks(), ys());
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("cells.parquet: row 2: column `c`: unknown level \"z\""), "{e}");

    write(ones(), strs(), Col::I32(vec![Some(0), Some(0), Some(7)]), ys());
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("row 3: column `k`: unknown level \"7\""), "{e}");

    write(ones(), strs(), ks(), Col::I64(vec![Some(0), None, Some(0)]));
    let e = err(load_parquet(&path, &s));
    assert!(e.ends_with("cells.parquet: row 2: target column `y` is missing"), "{e}");

    write(ones(), strs(), ks(), Col::I64(vec![Some(0), Some(1), Some(2)]));
    let e = err(load_parquet(&path, &s));
    assert!(e.contains("row 3: target column `y`: \"2\" is not one of \"1\", \"0\""), "{e}");
}

#[test]
fn empty_truncated_and_foreign_files_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let empty = dir.path().join("empty.parquet");
    std::fs::write(&empty, b"").expect("write");
    let e = err(load_parquet(&empty, &s));
    assert!(e.contains("empty.parquet") && e.contains("empty"), "{e}");

    let csv_named_parquet = dir.path().join("really_csv.parquet");
    std::fs::write(&csv_named_parquet, "id,x,c,k,y\n1,1,a,0,1\n").expect("write");
    let e = err(load_table(&csv_named_parquet, &s));
    assert!(e.contains("really_csv.parquet: invalid Parquet file"), "{e}");

    let good = typed_file(dir.path());
    let bytes = std::fs::read(&good).expect("read");
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let e = err(load_parquet(&truncated, &s));
    assert!(e.contains("truncated.parquet: invalid Parquet file"), "{e}");

    let e = err(load_parquet(dir.path().join("absent.parquet"), &s));
    assert!(e.contains("absent.parquet"), "{e}");

    // A CSV file with only a header is valid and empty; an empty CSV file has no header.
    let header_only = dir.path().join("header.csv");
    std::fs::write(&header_only, "id,x,c,k,y\n").expect("write");
    assert_eq!(load_csv(&header_only, &s).expect("header only").rows, 0);
    let empty_csv = dir.path().join("empty.csv");
    std::fs::write(&empty_csv, "").expect("write");
    assert!(err(load_csv(&empty_csv, &s)).contains("empty.csv: the file is empty"));
}

#[test]
fn corrupted_parquet_bytes_give_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let good = std::fs::read(typed_file(dir.path())).expect("read");
    let path = dir.path().join("corrupt.parquet");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut errors = 0;
    for _ in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % bytes.len() as u64) as usize;
            bytes[at] ^= (state >> 32) as u8 | 1;
        }
        std::fs::write(&path, &bytes).expect("write");
        // Either the damage is harmless or it is reported against the file; never a panic.
        if let Err(e) = load_parquet(&path, &s) {
            errors += 1;
            assert!(e.to_string().contains("corrupt.parquet"), "{e}");
        }
    }
    assert!(errors > 0, "no corruption was detected at all");
}

#[test]
fn written_parquet_round_trips_through_the_loader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let columns = vec![
        OutColumn::new("id", OutKind::Text),
        OutColumn::new("x", OutKind::Number),
        OutColumn::new("c", OutKind::Text),
        OutColumn::new("k", OutKind::Text),
        OutColumn::new("y", OutKind::Text),
    ];
    for format in [DataFormat::Csv, DataFormat::Parquet] {
        let path = dir.path().join(format!("out.{}", format.extension()));
        let mut w = RowWriter::create(&path, format, columns.clone(), false).expect("create");
        for i in 0..100_000u32 {
            let x = if i % 7 == 0 { OutCell::Null } else { OutCell::Number(f64::from(i) / 4.0) };
            let id = i.to_string();
            let c = if i % 2 == 0 { "a" } else { "b" };
            let y = if i % 3 == 0 { "1" } else { "0" };
            w.write_row(&[
                OutCell::Text(&id),
                x,
                OutCell::Text(c),
                OutCell::Text("2"),
                OutCell::Text(y),
            ])
            .expect("row");
        }
        assert!(!path.exists(), "the file appears only when finished");
        assert_eq!(w.finish().expect("finish"), 100_000);
        let t = load_table(&path, &s).expect("loads back");
        assert_eq!((t.rows, t.positives()), (100_000, 33_334));
        let ColumnData::Numeric(x) = &t.columns[0].data else { panic!("numeric") };
        assert_eq!(x[1], Some(0.25));
        assert_eq!(x.iter().filter(|v| v.is_none()).count(), 14_286);
        let e = RowWriter::create(&path, format, columns.clone(), false).expect_err("exists");
        assert!(e.to_string().contains("already exists"), "{e}");
    }
}

#[test]
fn imputation_uses_federated_statistics_whatever_the_format() {
    // Bank A (Parquet) has a missing x; bank B (CSV) holds the large values. The federation
    // mean, not A's local mean, fills A's gap: A's encoded cell is exactly 0 (the mean).
    let dir = tempfile::tempdir().expect("tempdir");
    let s = schema_with("impute");
    let a_path = typed_file(dir.path());
    let b_path = dir.path().join("b.csv");
    std::fs::write(&b_path, "id,x,c,k,y\n1,100,a,0,1\n2,200,b,1,0\n").expect("write");
    let (a, b) = (load_table(&a_path, &s).expect("a"), load_table(&b_path, &s).expect("b"));
    let summed: Vec<f64> =
        local_stats(&a, &s).iter().zip(local_stats(&b, &s)).map(|(x, y)| x + y).collect();
    let prep = Preprocessing::from_aggregate(&s, &summed).expect("preprocessing");
    let enc = prep.encode(&a).expect("encode");
    // x values across the federation: 1.5, 3, 5, 100, 200 → mean 61.9.
    let (mean, std) = match &prep.columns[0] {
        confide_datasets::ColumnTransform::Numeric { mean, std, .. } => (*mean, *std),
        other => panic!("numeric expected, got {other:?}"),
    };
    assert!((mean - 61.9).abs() < 1e-9, "{mean}");
    assert_eq!(enc.features[enc.dim], 0.0, "row 2's missing x takes the federated mean");
    let local_mean = (1.5 + 3.0 + 5.0) / 3.0;
    assert!(
        ((local_mean - mean) / std).abs() > 0.5,
        "local and federated means differ enough to tell"
    );
    // Missing categorical ("NA" in row 5) takes the federation's mode.
    let c_offset = 1;
    let mode = match &prep.columns[1] {
        confide_datasets::ColumnTransform::Categorical { mode, .. } => *mode as usize,
        other => panic!("categorical expected, got {other:?}"),
    };
    assert_eq!(enc.features[4 * enc.dim + c_offset + mode], 1.0);
}
