//! The throughput-against-concurrency plot, as SVG (plotters' SVG backend:
//! text is left to the viewer's fonts, so no font files are needed here).

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;

/// An axis label: the integer with thousands separators.
fn fmt_int(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let grouped = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|chunk| std::str::from_utf8(chunk).expect("ASCII digits"))
        .collect::<Vec<_>>()
        .join(",");
    if value < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// Plot size in pixels.
const PLOT_SIZE: (u32, u32) = (960, 600);

/// One line of the plot: a system's records/s at each writer count.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (writers, records/s), writers ascending.
    pub points: Vec<(f64, f64)>,
    /// Drawn thin with hollow points: the device limit, not a system.
    pub reference: bool,
}

/// Draws durable records/s against concurrent writers, both axes log-scaled.
pub fn throughput_svg(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .collect();
    ensure!(!values.is_empty(), "nothing to plot");
    let y_min = values.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let y_max = values.iter().copied().fold(0.0, f64::max) * 3.0;
    // Writer counts are powers of two: plot them at log2 on a linear axis,
    // so every tick is a writer count (1, 2, 4, ... 256).
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0.log2()))
        .fold(0.0, f64::max)
        + 0.5;
    let x_ticks = x_max.floor() as usize + 1;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(90)
            .build_cartesian_2d(-0.3f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent writers (threads; tasks on one reactor for ringstore)")
            .y_desc("durable 256 B records/s")
            .x_labels(x_ticks)
            .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
            .y_label_formatter(&|v| fmt_int(*v))
            .draw()?;
        for (index, line) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let width = if line.reference { 1 } else { 2 };
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().map(|&(x, y)| (x.log2(), y)),
                    color.stroke_width(width),
                ))?
                .label(line.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
            let filled = !line.reference;
            chart.draw_series(line.points.iter().map(move |&(x, y)| {
                let style = if filled { color.filled() } else { color.into() };
                Circle::new((x.log2(), y), 4, style)
            }))?;
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
    draw().map_err(|error| anyhow!("draw {}: {error}", path.display()))
}
