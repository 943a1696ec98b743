//! Line charts of a metric against rounds or epochs, rendered to PNG with an embedded font.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::ReportError;

/// Width in pixels of every chart this crate draws.
pub const CHART_WIDTH: u32 = 1000;
/// Height in pixels of every chart this crate draws.
pub const CHART_HEIGHT: u32 = 600;

/// Font family name under which the embedded DejaVu Sans is registered with plotters.
const FONT_FAMILY: &str = "sans-serif";

/// Line colours in series order: high-contrast and distinguishable in greyscale print.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One named line of a chart: `(x, y)` points drawn in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// The colour of the `index`-th series (cycles after eight series).
pub(crate) fn series_colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Registers the embedded font once per process; plotters keeps a global font table.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let regular =
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .is_ok();
        let bold =
            plotters::style::register_font(FONT_FAMILY, FontStyle::Bold, dejavu::sans::bold())
                .is_ok();
        regular && bold
    });
    if ok { Ok(()) } else { Err(ReportError::Font) }
}

/// The range spanned by `values`, padded so that lines do not sit on the frame and a constant
/// series still gets a visible, non-empty axis.
fn padded_range(values: impl Iterator<Item = f64>, pad_fraction: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(1.0) {
        let half = (lo.abs() * 0.01).max(0.5);
        return (lo - half)..(hi + half);
    }
    (lo - span * pad_fraction)..(hi + span * pad_fraction)
}

/// An axis tick: at most four decimals, without trailing zeros (`2`, not `2.0`; `0.845`).
fn tick_label(value: &f64) -> String {
    let text = format!("{value:.4}");
    let trimmed = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    if trimmed == "-0" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Draws `series` as lines with markers on one pair of axes and writes a
/// [`CHART_WIDTH`]×[`CHART_HEIGHT`] PNG to `path`, with a title, axis labels and a legend.
///
/// Axes are scaled to the data. Series with no points are listed in the legend only; a chart
/// with no points at all, or with a NaN or infinite coordinate, is refused.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ReportError> {
    for s in series {
        if let Some((index, &(x, y))) = s
            .points
            .iter()
            .enumerate()
            .find(|(_, (x, y))| !x.is_finite() || !y.is_finite())
        {
            return Err(ReportError::NonFinitePoint {
                series: s.name.clone(),
                index,
                x,
                y,
            });
        }
    }
    let all_points = || series.iter().flat_map(|s| s.points.iter().copied());
    if all_points().next().is_none() {
        return Err(ReportError::NoPoints {
            title: title.to_owned(),
        });
    }
    ensure_font()?;
    let x_range = padded_range(all_points().map(|(x, _)| x), 0.02);
    let y_range = padded_range(all_points().map(|(_, y)| y), 0.08);
    draw(path, title, x_label, y_label, series, x_range, y_range).map_err(|message| {
        ReportError::Draw {
            path: path.to_owned(),
            message,
        }
    })
}

fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 22).into_font().style(FontStyle::Bold))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT_FAMILY, 16))
        .axis_desc_style((FONT_FAMILY, 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, s) in series.iter().enumerate() {
        let colour = series_colour(index);
        let line_style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), line_style))
            .map_err(|e| e.to_string())?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG into (width, height, RGB bytes), normalising any colour type to RGB8.
    fn decode_rgb(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let file = std::fs::File::open(path).expect("chart file exists");
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("valid PNG header");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("valid PNG frame");
        let channels = info.color_type.samples();
        let pixels = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|c| match channels {
                1 | 2 => [c[0], c[0], c[0]],
                _ => [c[0], c[1], c[2]],
            })
            .collect();
        (info.width, info.height, pixels)
    }

    fn two_series() -> Vec<Series> {
        vec![
            Series::new(
                "federated",
                (1..=10)
                    .map(|r| (r as f64, 0.7 + 0.01 * r as f64))
                    .collect(),
            ),
            Series::new(
                "centralised",
                (1..=10)
                    .map(|r| (r as f64, 0.72 + 0.012 * r as f64))
                    .collect(),
            ),
        ]
    }

    #[test]
    fn chart_is_a_png_of_the_documented_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("auc.png");
        line_chart_png(&path, "AUC per round", "round", "AUC", &two_series()).expect("chart draws");
        let (width, height, pixels) = decode_rgb(&path);
        assert_eq!((width, height), (CHART_WIDTH, CHART_HEIGHT));
        assert_eq!(pixels.len(), (CHART_WIDTH * CHART_HEIGHT) as usize);
    }

    #[test]
    fn every_series_is_drawn_in_its_own_colour() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("auc.png");
        line_chart_png(&path, "AUC", "round", "AUC", &two_series()).expect("chart draws");
        let (_, _, pixels) = decode_rgb(&path);
        for index in 0..2 {
            let RGBColor(r, g, b) = series_colour(index);
            let count = pixels.iter().filter(|p| **p == [r, g, b]).count();
            assert!(
                count > 200,
                "series {index} has only {count} pixels of its colour"
            );
        }
        let RGBColor(r, g, b) = series_colour(2);
        assert_eq!(
            pixels.iter().filter(|p| **p == [r, g, b]).count(),
            0,
            "no third series was drawn"
        );
    }

    #[test]
    fn title_text_is_rendered_with_the_embedded_font() {
        let dir = tempfile::tempdir().expect("temp dir");
        let with_title = dir.path().join("titled.png");
        let without_title = dir.path().join("untitled.png");
        line_chart_png(
            &with_title,
            "A long title that must appear",
            "round",
            "AUC",
            &two_series(),
        )
        .expect("draws");
        line_chart_png(&without_title, "", "round", "AUC", &two_series()).expect("draws");
        let dark_in_title_band = |path: &Path| {
            let (width, _, pixels) = decode_rgb(path);
            pixels[..(width * 45) as usize]
                .iter()
                .filter(|p| p.iter().all(|&c| c < 100))
                .count()
        };
        assert!(
            dark_in_title_band(&with_title) > 300,
            "title glyphs were drawn"
        );
        assert_eq!(dark_in_title_band(&without_title), 0);
    }

    #[test]
    fn a_constant_series_still_draws() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("flat.png");
        let flat = [Series::new("flat", vec![(1.0, 0.5), (2.0, 0.5)])];
        line_chart_png(&path, "flat", "x", "y", &flat).expect("a flat line still gets an axis");
        let single = [Series::new("one point", vec![(3.0, 0.25)])];
        line_chart_png(&path, "single", "x", "y", &single).expect("a single point still gets axes");
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        assert_eq!(tick_label(&2.0), "2");
        assert_eq!(tick_label(&0.845), "0.845");
        assert_eq!(tick_label(&-0.00001), "0");
        assert_eq!(tick_label(&1250000.0), "1250000");
    }

    #[test]
    fn a_chart_without_points_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty.png");
        let err = line_chart_png(&path, "empty", "x", "y", &[Series::new("none", vec![])])
            .expect_err("no points");
        assert!(matches!(err, ReportError::NoPoints { .. }), "{err}");
        assert!(!path.exists(), "no file is written for a refused chart");
    }

    #[test]
    fn a_non_finite_point_is_refused_and_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nan.png");
        let bad = [Series::new("loss", vec![(1.0, 0.3), (2.0, f64::NAN)])];
        let err = line_chart_png(&path, "loss", "x", "y", &bad).expect_err("NaN refused");
        assert!(
            matches!(err, ReportError::NonFinitePoint { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("loss"), "{err}");
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing-dir").join("auc.png");
        let err = line_chart_png(&path, "AUC", "round", "AUC", &two_series())
            .expect_err("no such folder");
        assert!(matches!(err, ReportError::Draw { .. }), "{err}");
    }
}
