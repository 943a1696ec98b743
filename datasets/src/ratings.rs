//! Ratings files for recommendation models: the shared item [`Catalogue`], strict loading of a
//! `user,item,rating[,timestamp]` CSV against a ratings schema into [`Ratings`], and the
//! additive statistics the federation derives its mean rating from.
//!
//! User ids are an institution's own customers: they are read here, indexed locally, and never
//! leave the worker. Item ids are public: each rating's item must be in the catalogue every
//! institution received with the job (an unknown item is a data error naming file and line:
//! silently skipping it would train on a different catalogue than the bank believes).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Location};
use crate::schema::{DatasetSchema, RecommendationSpec};
use crate::table::{cell, csv_reader};

/// Largest catalogue accepted (items); the item side of the model is sized by it.
pub const MAX_CATALOGUE_ITEMS: usize = 5_000_000;

/// Errors building a catalogue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    /// No items.
    #[error("the item catalogue is empty")]
    Empty,
    /// Too many items.
    #[error("the item catalogue has {0} items, more than {MAX_CATALOGUE_ITEMS}")]
    TooLarge(usize),
    /// An id is blank or has surrounding whitespace.
    #[error("catalogue item {index}: id {id:?} is blank or has surrounding whitespace")]
    BadId {
        /// 0-based position.
        index: usize,
        /// The id.
        id: String,
    },
    /// An id appears twice.
    #[error("catalogue item {index}: id {id:?} is listed twice")]
    Duplicate {
        /// 0-based position of the second occurrence.
        index: usize,
        /// The id.
        id: String,
    },
    /// The catalogue file could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The shared item catalogue: item ids in model row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl Catalogue {
    /// Validates ids (non-blank, trimmed, unique) and indexes them in the given order.
    pub fn new(ids: Vec<String>) -> Result<Self, CatalogueError> {
        if ids.is_empty() {
            return Err(CatalogueError::Empty);
        }
        if ids.len() > MAX_CATALOGUE_ITEMS {
            return Err(CatalogueError::TooLarge(ids.len()));
        }
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if id.trim().is_empty() || id.trim() != id {
                return Err(CatalogueError::BadId { index: i, id: id.clone() });
            }
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(CatalogueError::Duplicate { index: i, id: id.clone() });
            }
        }
        Ok(Self { ids, index })
    }

    /// Reads the ids in column `column` of a CSV file (e.g. `movieId` of MovieLens `movies.csv`).
    pub fn from_csv(path: impl AsRef<Path>, column: &str) -> Result<Self, CatalogueError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        Self::from_csv_reader(std::io::BufReader::new(file), &path.display().to_string(), column)
    }

    /// As [`Self::from_csv`], from any reader; `origin` names it in errors.
    pub fn from_csv_reader<R: Read>(reader: R, origin: &str, column: &str) -> Result<Self, CatalogueError> {
        let mut rdr = csv_reader(reader);
        let header = rdr.byte_headers().map_err(|e| DataError::csv(origin, &e))?.clone();
        let at = header
            .iter()
            .position(|h| std::str::from_utf8(h).is_ok_and(|h| h.trim_start_matches('\u{feff}') == column))
            .ok_or_else(|| DataError::MissingColumn { at: Location::line(origin, 1), column: column.into() })?;
        let mut ids = Vec::new();
        let mut record = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(origin, &e))? {
            let line = record.position().map_or(0, csv::Position::line);
            let id = cell(&record, at, origin, line, column)?.trim();
            if id.is_empty() {
                return Err(DataError::MissingCell { at: Location::line(origin, line), column: column.into() }.into());
            }
            ids.push(id.to_string());
        }
        Self::new(ids)
    }

    /// Item ids in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no items (never, for a validated catalogue).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row of an item id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
}

/// One institution's ratings, users indexed locally in first-seen order.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratings {
    /// File the ratings came from (for messages).
    pub source: String,
    /// Distinct user ids; `user[r]` indexes into it.
    pub user_ids: Vec<String>,
    /// Local user index of each rating.
    pub user: Vec<u32>,
    /// Raw item id of each rating.
    pub item: Vec<String>,
    /// Rating value.
    pub rating: Vec<f32>,
    /// Timestamp (0 when the schema names none).
    pub timestamp: Vec<i64>,
    /// 1-based CSV line of each rating.
    pub line: Vec<u64>,
}

impl Ratings {
    /// Number of ratings.
    pub fn len(&self) -> usize {
        self.rating.len()
    }

    /// True without ratings.
    pub fn is_empty(&self) -> bool {
        self.rating.is_empty()
    }

    /// Catalogue row of each rating's item; an item missing from the catalogue is an error
    /// naming the file and line.
    pub fn item_rows(&self, catalogue: &Catalogue, spec: &RecommendationSpec) -> Result<Vec<u32>, DataError> {
        self.item
            .iter()
            .zip(&self.line)
            .map(|(id, &line)| {
                catalogue.index_of(id).ok_or_else(|| DataError::UnknownItem {
                    at: Location::line(&self.source, line),
                    column: spec.item.clone(),
                    item: id.clone(),
                })
            })
            .collect()
    }
}

/// The ratings section of a schema, or an error naming `path`.
pub fn recommendation_spec<'s>(schema: &'s DatasetSchema, path: &str) -> Result<&'s RecommendationSpec, DataError> {
    schema.recommendation.as_ref().ok_or_else(|| DataError::WrongKind {
        path: path.into(),
        message: format!("schema `{}` describes a tabular dataset, not ratings", schema.name),
    })
}

/// Loads and validates a ratings file.
pub fn load_ratings(path: impl AsRef<Path>, schema: &DatasetSchema) -> Result<Ratings, DataError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    load_ratings_from_reader(std::io::BufReader::new(file), &path.display().to_string(), schema)
}

/// Loads ratings from any reader; `origin` names it in errors. The header must hold the
/// schema's user, item and rating (and timestamp, when named) columns and otherwise only
/// columns the schema lists as ignored.
pub fn load_ratings_from_reader<R: Read>(reader: R, origin: &str, schema: &DatasetSchema) -> Result<Ratings, DataError> {
    let spec = recommendation_spec(schema, origin)?;
    let mut rdr = csv_reader(reader);
    let header = rdr.byte_headers().map_err(|e| DataError::csv(origin, &e))?.clone();
    let columns = RatingColumns::locate(origin, &header, schema, spec)?;
    let mut out = Ratings {
        source: origin.to_string(),
        user_ids: Vec::new(),
        user: Vec::new(),
        item: Vec::new(),
        rating: Vec::new(),
        timestamp: Vec::new(),
        line: Vec::new(),
    };
    let mut users: HashMap<String, u32> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut record).map_err(|e| DataError::csv(origin, &e))? {
        let line = record.position().map_or(0, csv::Position::line);
        let row = columns.parse(&record, origin, line, schema, spec)?;
        let next = users.len() as u32;
        let u = *users.entry(row.user.to_string()).or_insert_with(|| {
            out.user_ids.push(row.user.to_string());
            next
        });
        out.user.push(u);
        out.item.push(row.item.to_string());
        out.rating.push(row.rating as f32);
        out.timestamp.push(row.timestamp);
        out.line.push(line);
    }
    Ok(out)
}

/// One parsed ratings row.
pub(crate) struct RatingRow<'r> {
    pub user: &'r str,
    pub item: &'r str,
    pub rating: f64,
    pub timestamp: i64,
}

/// Where the ratings columns sit in a header.
pub(crate) struct RatingColumns {
    user: usize,
    item: usize,
    rating: usize,
    timestamp: Option<usize>,
}

impl RatingColumns {
    pub(crate) fn locate(
        origin: &str,
        header: &csv::ByteRecord,
        schema: &DatasetSchema,
        spec: &RecommendationSpec,
    ) -> Result<Self, DataError> {
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(DataError::NoHeader { path: origin.into() });
        }
        let named = spec.column_names();
        let mut by_name = HashMap::new();
        for (i, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| DataError::InvalidUtf8 { at: Location::line(origin, 1), column: format!("#{}", i + 1) })?;
            let name = if i == 0 { name.trim_start_matches('\u{feff}') } else { name };
            if by_name.insert(name.to_string(), i).is_some() {
                return Err(DataError::DuplicateColumn { at: Location::line(origin, 1), column: name.into() });
            }
            if !named.contains(&name) && schema.column(name).is_none() {
                return Err(DataError::UnknownColumn { at: Location::line(origin, 1), column: name.into() });
            }
        }
        let require = |c: &str| {
            by_name.get(c).copied().ok_or_else(|| DataError::MissingColumn { at: Location::line(origin, 1), column: c.into() })
        };
        Ok(Self {
            user: require(&spec.user)?,
            item: require(&spec.item)?,
            rating: require(&spec.rating)?,
            timestamp: spec.timestamp.as_deref().map(require).transpose()?,
        })
    }

    pub(crate) fn parse<'r>(
        &self,
        record: &'r csv::ByteRecord,
        origin: &str,
        line: u64,
        schema: &DatasetSchema,
        spec: &RecommendationSpec,
    ) -> Result<RatingRow<'r>, DataError> {
        let required = |index: usize, column: &str| -> Result<&'r str, DataError> {
            let v = cell(record, index, origin, line, column)?;
            if schema.is_missing(v) {
                return Err(DataError::MissingCell { at: Location::line(origin, line), column: column.into() });
            }
            Ok(v.trim())
        };
        let user = required(self.user, &spec.user)?;
        let item = required(self.item, &spec.item)?;
        let raw = required(self.rating, &spec.rating)?;
        let rating: f64 = raw.parse().map_err(|_| DataError::NotNumeric {
            at: Location::line(origin, line),
            column: spec.rating.clone(),
            value: raw.into(),
        })?;
        if !rating.is_finite() {
            return Err(DataError::NotFinite { at: Location::line(origin, line), column: spec.rating.clone(), value: raw.into() });
        }
        if rating < spec.min_rating || rating > spec.max_rating {
            return Err(DataError::RatingOutOfRange {
                at: Location::line(origin, line),
                column: spec.rating.clone(),
                value: rating,
                min: spec.min_rating,
                max: spec.max_rating,
            });
        }
        let timestamp = match (self.timestamp, &spec.timestamp) {
            (Some(i), Some(column)) => {
                let raw = required(i, column)?;
                raw.parse::<i64>().map_err(|_| DataError::NotNumeric {
                    at: Location::line(origin, line),
                    column: column.clone(),
                    value: raw.into(),
                })?
            }
            _ => 0,
        };
        Ok(RatingRow { user, item, rating, timestamp })
    }
}

/// Length of a ratings statistics vector: `[ratings, Σ rating, Σ rating², users]`.
pub const RATINGS_STATS_LEN: usize = 4;

/// This institution's additive ratings statistics `[ratings, Σ rating, Σ rating², users]`.
pub fn ratings_stats(ratings: &Ratings) -> Vec<f64> {
    let (sum, sq) = ratings.rating.iter().fold((0.0f64, 0.0f64), |(s, q), &r| (s + f64::from(r), q + f64::from(r).powi(2)));
    vec![ratings.len() as f64, sum, sq, ratings.user_ids.len() as f64]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
name = "r"
[recommendation]
user = "userId"
item = "movieId"
rating = "rating"
timestamp = "timestamp"
min_rating = 0.5
max_rating = 5.0
relevant_from = 4.0
"#;

    fn schema() -> DatasetSchema {
        DatasetSchema::parse(SCHEMA, "r.toml").expect("valid schema")
    }

    fn load(text: &str) -> Result<Ratings, DataError> {
        load_ratings_from_reader(text.as_bytes(), "bank.csv", &schema())
    }

    #[test]
    fn loads_ratings_and_indexes_users_locally() {
        let r = load("userId,movieId,rating,timestamp\n7,10,4.5,100\n3,20,3,200\n7,20,1,300\n").expect("valid");
        assert_eq!(r.user_ids, ["7", "3"]);
        assert_eq!(r.user, [0, 1, 0]);
        assert_eq!(r.item, ["10", "20", "20"]);
        assert_eq!(r.rating, [4.5, 3.0, 1.0]);
        assert_eq!(r.timestamp, [100, 200, 300]);
        assert_eq!(r.line, [2, 3, 4]);
        assert_eq!(ratings_stats(&r), [3.0, 8.5, 20.25 + 9.0 + 1.0, 2.0]);
        let cat = Catalogue::new(vec!["20".into(), "10".into()]).expect("catalogue");
        let spec = schema().recommendation.expect("ratings");
        assert_eq!(r.item_rows(&cat, &spec).expect("known items"), [1, 0, 0]);
    }

    #[test]
    fn bad_rows_name_file_line_and_column() {
        let head = "userId,movieId,rating,timestamp\n";
        let e = load(&format!("{head}1,10,4,1\n1,10,abc,2\n")).expect_err("text rating").to_string();
        assert!(e.starts_with("bank.csv:3: column `rating`") && e.contains("abc"), "{e}");
        let e = load(&format!("{head}1,10,7,1\n")).expect_err("range").to_string();
        assert!(e.starts_with("bank.csv:2: column `rating`: rating 7 is outside [0.5, 5]"), "{e}");
        let e = load(&format!("{head}1,,4,1\n")).expect_err("blank item").to_string();
        assert!(e.starts_with("bank.csv:2: column `movieId`: missing value"), "{e}");
        let e = load(&format!("{head}1,10,NaN,1\n")).expect_err("NaN").to_string();
        assert!(e.contains("not a finite number"), "{e}");
        let e = load(&format!("{head}1,10,4,yesterday\n")).expect_err("timestamp").to_string();
        assert!(e.contains("`timestamp`") && e.contains("yesterday"), "{e}");
        let e = load("userId,movieId,timestamp\n1,10,4\n").expect_err("no rating column").to_string();
        assert!(e.contains("`rating`") && e.contains("is missing"), "{e}");
        let e = load("userId,movieId,rating,timestamp,title\n1,10,4,1,x\n").expect_err("unknown column").to_string();
        assert!(e.contains("`title`"), "{e}");
        let e = load(&format!("{head}1,10,4\n")).expect_err("short row").to_string();
        assert!(e.contains("bank.csv:2"), "{e}");

        let r = load(&format!("{head}1,99,4,1\n")).expect("loads");
        let cat = Catalogue::new(vec!["10".into()]).expect("catalogue");
        let spec = schema().recommendation.expect("ratings");
        let e = r.item_rows(&cat, &spec).expect_err("unknown item").to_string();
        assert_eq!(e, "bank.csv:2: column `movieId`: item \"99\" is not in the shared item catalogue");
    }

    #[test]
    fn tabular_schemas_are_refused_and_catalogues_are_validated() {
        let tabular = DatasetSchema::parse(
            "name = \"t\"\n[target]\ncolumn = \"y\"\npositive = \"1\"\n[[columns]]\nname = \"x\"\ntype = \"numeric\"\n",
            "t.toml",
        )
        .expect("tabular");
        let e = load_ratings_from_reader("y,x\n1,2\n".as_bytes(), "t.csv", &tabular).expect_err("wrong kind").to_string();
        assert!(e.contains("not ratings"), "{e}");
        assert!(matches!(Catalogue::new(vec![]), Err(CatalogueError::Empty)));
        assert!(matches!(Catalogue::new(vec!["a".into(), "a".into()]), Err(CatalogueError::Duplicate { index: 1, .. })));
        assert!(matches!(Catalogue::new(vec![" a".into()]), Err(CatalogueError::BadId { .. })));
        let c = Catalogue::from_csv_reader("movieId,title\n1,\"A, film\"\n5,B\n".as_bytes(), "movies.csv", "movieId")
            .expect("catalogue csv");
        assert_eq!(c.ids(), ["1", "5"]);
        let e = Catalogue::from_csv_reader("id,title\n1,A\n".as_bytes(), "movies.csv", "movieId").expect_err("column");
        assert!(e.to_string().contains("movieId"), "{e}");
    }
}
