//! `curves.png`: loss (left) and accuracy (right) against epochs, from the rows of `metrics.csv`.
//!
//! Drawn with `plotters`' bitmap backend into an RGB buffer, encoded with `png`. Text is rendered with `ab_glyph` from a TrueType font
//! read at run time (DejaVu Sans from Debian's `fonts-dejavu-core`, or `$NETGEN_FONT`), so no
//! fontconfig or FreeType is needed; without a font the curves are drawn without text.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::checkpoint::write_atomic;
use super::metrics::Row;
use super::{Result, io_err};

/// Font files tried in order (after `$NETGEN_FONT`).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font with plotters once per process; true when one was found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let mut paths: Vec<PathBuf> = std::env::var_os("NETGEN_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        paths.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps the font for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the curves of `rows` into `path` (PNG, 1200×480), atomically. Returns false when no font
/// was found (the curves are then drawn without labels).
pub fn draw(path: &Path, rows: &[Row], title: &str) -> Result<bool> {
    let text = font_ready();
    write_atomic(path, |tmp| {
        draw_to(tmp, rows, title, text).map_err(|e| e.to_string())
    })?;
    Ok(text)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

const W: u32 = 1200;
const H: u32 = 480;

fn draw_to(path: &Path, rows: &[Row], title: &str, text: bool) -> DrawResult {
    let mut pixels = vec![255u8; (W * H * 3) as usize];
    draw_into(&mut pixels, rows, title, text)?;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&pixels)?;
    w.finish()?;
    Ok(())
}

fn draw_into(pixels: &mut [u8], rows: &[Row], title: &str, text: bool) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if text {
        root.titled(title, ("sans-serif", 20))?
    } else {
        root
    };
    let (left, right) = root.split_horizontally(W / 2);
    let max_epoch = rows.iter().map(|r| r.epoch).fold(0.0f64, f64::max).max(1e-3);
    let x_range = 0.0..max_epoch * 1.02;

    // Losses.
    let max_loss = rows
        .iter()
        .flat_map(|r| [r.train_loss, r.test_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3);
    panel(
        &left,
        "loss",
        x_range.clone(),
        0.0..max_loss * 1.05,
        &[
            (
                "train loss",
                RED,
                rows.iter().map(|r| (r.epoch, r.train_loss)).collect(),
            ),
            (
                "test loss",
                BLUE,
                rows.iter().map(|r| (r.epoch, r.test_loss)).collect(),
            ),
        ],
        text,
    )?;
    // Accuracies.
    let min_acc = rows
        .iter()
        .flat_map(|r| [r.train_acc, r.test_top1])
        .filter(|v| v.is_finite())
        .fold(100.0f64, f64::min);
    let lo = (min_acc - 5.0).clamp(0.0, 95.0).floor();
    panel(
        &right,
        "accuracy (%)",
        x_range,
        lo..100.0,
        &[
            (
                "train top-1",
                RED,
                rows.iter().map(|r| (r.epoch, r.train_acc)).collect(),
            ),
            (
                "test top-1",
                BLUE,
                rows.iter().map(|r| (r.epoch, r.test_top1)).collect(),
            ),
        ],
        text,
    )?;
    root.present()?;
    Ok(())
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    y_label: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    series: &[Series],
    text: bool,
) -> DrawResult {
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.x_label_area_size(40).y_label_area_size(56);
    } else {
        b.x_label_area_size(8).y_label_area_size(8);
    }
    let mut chart = b.build_cartesian_2d(x, y)?;
    if text {
        chart.configure_mesh().x_desc("epoch").y_desc(y_label).draw()?;
    } else {
        chart.configure_mesh().disable_x_mesh().disable_y_mesh().draw()?;
    }
    for (name, color, pts) in series {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        let color = *color;
        let line = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if text {
            line.label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// Reads `metrics.csv` and draws `curves.png` next to it (a helper for `netgen` and tests).
pub fn redraw(run_dir: &Path, title: &str) -> Result<bool> {
    let rows = super::metrics::read(&run_dir.join("metrics.csv"))?;
    if rows.is_empty() {
        return Err(io_err(&run_dir.join("metrics.csv"), "no rows to plot"));
    }
    draw(&run_dir.join("curves.png"), &rows, title)
}
