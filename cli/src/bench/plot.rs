//! `--plot FILE.svg|FILE.png`: the latency distribution of each chain (the share of requests
//! at or below each latency, log scale), drawn with plotters. Labels use a small DejaVu Sans
//! cut embedded in the binary, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Error;
use super::report::{Latency, Report};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                unreachable!("the embedded font is a TrueType font");
            }
        }
    });
}

/// One line of the plot: (latency in µs, percent of requests at or below it).
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn series(label: String, color: RGBColor, l: &Latency) -> Option<Series> {
    if l.histogram.is_empty() {
        return None;
    }
    let mut points = Vec::with_capacity(260);
    let mut quantiles: Vec<f64> = (0..=250).map(|k| k as f64 / 250.0 * 0.99).collect();
    quantiles.extend([0.995, 0.999, 0.9995, 0.9999, 1.0]);
    for q in quantiles {
        let v = l.histogram.value_at_quantile(q).max(1) as f64 / 1e3;
        points.push((v, q * 100.0));
    }
    Some(Series {
        label,
        color,
        points,
    })
}

/// Writes the plot; the format follows the extension (`.svg` or `.png`).
pub fn draw(report: &Report, path: &Path) -> Result<(), Error> {
    let file = path.display().to_string();
    let fail = |reason: String| Error::Plot {
        file: file.clone(),
        reason,
    };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "svg" && ext != "png" {
        return Err(fail("the file name must end in .svg or .png".into()));
    }
    register_font();
    let mut lines: Vec<Series> = Vec::new();
    let ip = &report.in_process;
    lines.extend(series(
        format!("{} (in-process)", report.chain.label),
        RGBColor(31, 119, 180),
        &ip.chain,
    ));
    lines.extend(series(
        format!("baseline: {} (in-process)", report.baseline.label),
        RGBColor(127, 127, 127),
        &ip.baseline,
    ));
    if let Some(p) = &report.through_proxy {
        lines.extend(series(
            format!("{} (through the proxy)", report.chain.label),
            RGBColor(214, 39, 40),
            &p.chain,
        ));
        lines.extend(series(
            format!("baseline: {} (through the proxy)", report.baseline.label),
            RGBColor(255, 127, 14),
            &p.baseline,
        ));
    }
    if lines.is_empty() {
        return Err(fail("no latency was measured".into()));
    }
    let title = format!(
        "wasmesh bench: {} vs {}",
        report.chain.label, report.baseline.label
    );
    let size = (1000, 560);
    let result = if ext == "svg" {
        chart(
            SVGBackend::new(path, size).into_drawing_area(),
            &title,
            &lines,
        )
    } else {
        chart(
            BitMapBackend::new(path, size).into_drawing_area(),
            &title,
            &lines,
        )
    };
    result.map_err(fail)?;
    // The backends report some write errors only on drop: check the file is there.
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err(fail("the file is empty".into())),
        Err(e) => Err(fail(e.to_string())),
    }
}

fn chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    lines: &[Series],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let lo = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let hi = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let (lo, hi) = (lo / 1.25, (hi * 1.25).max(lo * 2.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("latency per request (us, log scale)")
        .y_desc("requests at or below (%)")
        .x_label_formatter(&|v| {
            if *v >= 100.0 {
                format!("{v:.0}")
            } else if *v >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for s in lines {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
