//! The PNG plot: throughput against chunk size, one colour per scenario,
//! Quiver solid, the TCP ceiling of the same flows dashed, and TCP copies of
//! a chunk's worth of memory dotted.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::scenarios::Row;

/// Where a sans-serif TrueType font usually is; `QUIVER_FONT` overrides.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font for the plot's text, once per process.
fn load_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<String> = std::env::var("QUIVER_FONT")
            .into_iter()
            .chain(FONTS.iter().map(|s| s.to_string()))
            .collect();
        let bytes = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no TrueType font found (looked at {}; set QUIVER_FONT)",
                    candidates.join(", ")
                )
            })?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    })
    .clone()
}

/// Draws `rows` to a PNG at `path`.
pub fn draw(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    load_font()?;
    if rows.is_empty() {
        return Err("nothing measured".into());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mb = |r: &Row| r.chunk_bytes as f64 / (1 << 20) as f64;
    let gbs = |v: f64| v / 1e9;
    let x_max = rows.iter().map(mb).fold(1.0, f64::max) * 1.5;
    let x_min = rows.iter().map(mb).fold(f64::MAX, f64::min) / 1.5;
    let y_max = rows
        .iter()
        .map(|r| {
            gbs(r
                .bytes_per_sec
                .max(r.ceiling_bytes_per_sec)
                .max(r.tcp_chunk_bytes_per_sec.unwrap_or(0.0)))
        })
        .fold(0.0, f64::max)
        * 1.15;
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max.max(0.01))?;
        chart
            .configure_mesh()
            .x_desc("chunk size (MiB)")
            .y_desc("throughput (GB/s, all flows)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let colours = [
            RGBColor(200, 40, 40),
            RGBColor(30, 90, 200),
            RGBColor(20, 150, 60),
            RGBColor(150, 60, 170),
        ];
        let mut scenarios: Vec<&str> = Vec::new();
        for r in rows {
            if !scenarios.contains(&r.scenario) {
                scenarios.push(r.scenario);
            }
        }
        for (i, scenario) in scenarios.iter().enumerate() {
            let colour: RGBColor = colours[i % colours.len()];
            let mine: Vec<&Row> = rows.iter().filter(|r| r.scenario == *scenario).collect();
            let ours: Vec<(f64, f64)> =
                mine.iter().map(|r| (mb(r), gbs(r.bytes_per_sec))).collect();
            let tcp: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (mb(r), gbs(r.ceiling_bytes_per_sec)))
                .collect();
            let tcp_chunk: Vec<(f64, f64)> = mine
                .iter()
                .filter_map(|r| Some((mb(r), gbs(r.tcp_chunk_bytes_per_sec?))))
                .collect();
            chart
                .draw_series(LineSeries::new(ours.clone(), colour.stroke_width(3)))?
                .label(format!("{scenario} (Quiver)"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            chart.draw_series(ours.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
            chart
                .draw_series(DashedLineSeries::new(tcp, 8, 6, colour.stroke_width(1)))?
                .label(format!("{scenario} TCP ceiling"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(1))
                });
            if !tcp_chunk.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        tcp_chunk,
                        2,
                        4,
                        colour.stroke_width(2),
                    ))?
                    .label(format!("{scenario} TCP, a chunk's memory"))
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("drawing {}: {e}", path.display()))
}
