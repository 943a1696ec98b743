//! Result tables: one header row and rows of text cells, rendered as GitHub markdown, CSV
//! (RFC 4180 quoting by the `csv` crate) or column-aligned text for a terminal.

use std::fmt;
use std::path::Path;

use crate::ReportError;

/// A table of text cells. Build it with [`Table::new`] and [`Table::push_row`], which keeps every
/// row exactly as wide as the header; the renderers pad rows that were built by hand too short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row, refusing one whose cell count differs from the header's.
    pub fn push_row<S: Into<String>>(
        &mut self,
        cells: impl IntoIterator<Item = S>,
    ) -> Result<(), ReportError> {
        let row: Vec<String> = cells.into_iter().map(Into::into).collect();
        self.check_width(self.rows.len(), row.len())?;
        self.rows.push(row);
        Ok(())
    }

    fn check_width(&self, row: usize, found: usize) -> Result<(), ReportError> {
        if found == self.headers.len() {
            Ok(())
        } else {
            Err(ReportError::RaggedRow {
                row,
                expected: self.headers.len(),
                found,
            })
        }
    }

    /// Number of columns: the widest of the header and every row.
    fn columns(&self) -> usize {
        self.rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0)
    }

    /// `row` padded with empty cells to `columns` cells.
    fn padded(row: &[String], columns: usize) -> impl Iterator<Item = &str> {
        row.iter()
            .map(String::as_str)
            .chain(std::iter::repeat(""))
            .take(columns)
    }

    /// GitHub-flavoured markdown. `|` is escaped and line breaks become `<br>` so that a cell can
    /// never break the table's structure; numeric columns are right-aligned.
    pub fn to_markdown(&self) -> String {
        let columns = self.columns();
        let escape = |cell: &str| {
            cell.replace('\\', "\\\\")
                .replace('|', "\\|")
                .replace("\r\n", "<br>")
                .replace(['\n', '\r'], "<br>")
        };
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let mut out = line(Self::padded(&self.headers, columns).map(escape).collect());
        let separators = (0..columns)
            .map(|c| {
                if self.is_numeric_column(c) {
                    "---:"
                } else {
                    "---"
                }
                .to_owned()
            })
            .collect();
        out.push_str(&line(separators));
        for row in &self.rows {
            out.push_str(&line(Self::padded(row, columns).map(escape).collect()));
        }
        out
    }

    /// CSV with a header line; cells containing commas, quotes or line breaks are quoted.
    pub fn to_csv(&self) -> Result<String, ReportError> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        self.write_csv_records(&mut writer)?;
        let bytes = writer.into_inner().map_err(|e| ReportError::Io {
            path: "<memory>".into(),
            source: e.into_error(),
        })?;
        // Every cell is a Rust String, so the bytes are UTF-8.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn write_csv_records<W: std::io::Write>(
        &self,
        writer: &mut csv::Writer<W>,
    ) -> Result<(), ReportError> {
        let columns = self.columns();
        writer.write_record(Self::padded(&self.headers, columns))?;
        for row in &self.rows {
            writer.write_record(Self::padded(row, columns))?;
        }
        writer.flush().map_err(|source| ReportError::Io {
            path: "<csv>".into(),
            source,
        })
    }

    /// Writes [`Table::to_csv`] to `path`.
    pub fn write_csv(&self, path: &Path) -> Result<(), ReportError> {
        let text = self.to_csv()?;
        std::fs::write(path, text).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes [`Table::to_markdown`] to `path`.
    pub fn write_markdown(&self, path: &Path) -> Result<(), ReportError> {
        std::fs::write(path, self.to_markdown()).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// A column is numeric when it has at least one cell and every non-empty cell parses as a number.
    fn is_numeric_column(&self, column: usize) -> bool {
        let mut cells = self
            .rows
            .iter()
            .filter_map(|r| r.get(column))
            .filter(|c| !c.trim().is_empty())
            .peekable();
        cells.peek().is_some()
            && cells.all(|c| c.trim().trim_end_matches('%').parse::<f64>().is_ok())
    }

    /// Column-aligned text for a terminal: a header, a rule, then rows; numbers right-aligned.
    /// Line breaks inside a cell are shown as spaces so that rows stay on one line.
    pub fn to_terminal(&self) -> String {
        let columns = self.columns();
        let flat = |cell: &str| cell.replace(['\n', '\r'], " ");
        let header: Vec<String> = Self::padded(&self.headers, columns).map(flat).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| Self::padded(r, columns).map(flat).collect())
            .collect();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..columns).map(|c| self.is_numeric_column(c)).collect();
        let render = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if numeric[c] {
                        format!("{cell:>w$}", w = widths[c])
                    } else {
                        format!("{cell:<w$}", w = widths[c])
                    }
                })
                .collect();
            format!("{}\n", parts.join("  ").trim_end())
        };
        let mut out = render(&header);
        out.push_str(&format!(
            "{}\n",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        ));
        for row in &rows {
            out.push_str(&render(row));
        }
        out
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_terminal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Table {
        let mut table = Table::new(["setting", "AUC"]);
        table
            .push_row(["centralised", "0.8412"])
            .expect("two cells");
        table
            .push_row(["federated | IID", "0.8409"])
            .expect("two cells");
        table
    }

    #[test]
    fn markdown_has_a_header_an_alignment_row_and_one_line_per_row() {
        let md = results().to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| setting | AUC |");
        assert_eq!(
            lines[1], "| --- | ---: |",
            "the numeric column is right-aligned"
        );
        assert_eq!(lines[2], "| centralised | 0.8412 |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn markdown_escapes_pipes_and_line_breaks_inside_cells() {
        let mut table = Table::new(["a|b", "note"]);
        table.push_row(["x|y", "two\nlines"]).expect("two cells");
        table
            .push_row(["back\\slash", "crlf\r\nend"])
            .expect("two cells");
        let md = table.to_markdown();
        assert!(md.starts_with("| a\\|b | note |\n"), "{md}");
        assert!(md.contains("| x\\|y | two<br>lines |"), "{md}");
        assert!(md.contains("| back\\\\slash | crlf<br>end |"), "{md}");
        for line in md.lines() {
            let unescaped_pipes = line.replace("\\\\", "").matches('|').count()
                - line.replace("\\\\", "").matches("\\|").count();
            assert_eq!(
                unescaped_pipes, 3,
                "every line keeps exactly two columns: {line}"
            );
        }
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines_and_round_trips() {
        let mut table = Table::new(["name", "value"]);
        table.push_row(["plain", "1"]).expect("two cells");
        table
            .push_row(["with, comma", "say \"hi\""])
            .expect("two cells");
        table.push_row(["multi\nline", ""]).expect("two cells");
        let text = table.to_csv().expect("csv");
        assert_eq!(
            text,
            "name,value\nplain,1\n\"with, comma\",\"say \"\"hi\"\"\"\n\"multi\nline\",\n"
        );
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let read: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.expect("valid record").iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(read, table.rows);
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let mut table = Table::new(["a", "b"]);
        let err = table
            .push_row(["only one"])
            .expect_err("one cell for two columns");
        assert!(
            matches!(
                err,
                ReportError::RaggedRow {
                    row: 0,
                    expected: 2,
                    found: 1
                }
            ),
            "{err}"
        );
        assert!(table.rows.is_empty(), "the refused row is not kept");
    }

    #[test]
    fn rows_built_by_hand_too_short_are_padded_not_dropped() {
        let table = Table {
            headers: vec!["a".into(), "b".into()],
            rows: vec![vec!["1".into()]],
        };
        assert_eq!(table.to_csv().expect("csv"), "a,b\n1,\n");
        assert!(table.to_markdown().contains("| 1 |  |"));
    }

    #[test]
    fn terminal_output_aligns_columns_and_right_aligns_numbers() {
        let text = results().to_terminal();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "setting             AUC");
        assert_eq!(lines[1], "---------------  ------");
        assert_eq!(lines[2], "centralised      0.8412");
        assert_eq!(lines[3], "federated | IID  0.8409");
        assert_eq!(format!("{}", results()), text);
    }

    #[test]
    fn tables_are_written_to_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let table = results();
        table
            .write_csv(&dir.path().join("r.csv"))
            .expect("csv written");
        table
            .write_markdown(&dir.path().join("r.md"))
            .expect("md written");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("r.csv")).expect("read"),
            table.to_csv().expect("csv")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("r.md")).expect("read"),
            table.to_markdown()
        );
        let err = table
            .write_csv(&dir.path().join("no-dir").join("r.csv"))
            .expect_err("missing folder");
        assert!(err.to_string().contains("no-dir"), "{err}");
    }
}
