//! SVG charts: latency CDFs, output tokens/s and concurrency over time for one run, and the
//! throughput-vs-latency curves of a sweep. plotters' SVG backend without its font features:
//! text is written as SVG `<text>` (the viewer renders it), so no system fonts are needed.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::client::RequestOutcome;
use crate::error::{BenchError, Result};
use crate::metrics::TimeSeries;

const SIZE: (u32, u32) = (1000, 700);
/// At most this many points per CDF line (quantiles), so files stay small for big runs.
const CDF_POINTS: usize = 400;
const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// (value, cumulative fraction) points of the empirical CDF, thinned to quantiles.
pub fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect();
    if points.last().map(|p| p.1) != Some(1.0) {
        points.push((sorted[n - 1], 1.0));
    }
    points
}

fn axis_max(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.05
    } else {
        1.0
    }
}

fn cdf_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    path: &Path,
    title: &str,
    values_ms: &[f64],
    color: RGBColor,
) -> Result<()> {
    let points = cdf_points(values_ms);
    let x_max = axis_max(points.iter().map(|p| p.0));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} CDF (n = {})", values_ms.len()), (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, 0f64..1f64)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("cumulative fraction")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(|e| plot_error(path, e))?;
    Ok(())
}

fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: Vec<(f64, f64)>,
) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let x_max = axis_max(points.iter().map(|p| p.0));
    let y_max = axis_max(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(points, COLORS[0].stroke_width(2)))
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}

fn plot_cdfs(path: &Path, panels: [(&str, &Vec<f64>); 4]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let areas = root.split_evenly((2, 2));
    for (i, ((title, values), area)) in panels.into_iter().zip(&areas).enumerate() {
        cdf_panel(area, path, title, values, COLORS[i])?;
    }
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}

/// Writes `latency_cdf.svg`, `output_tokens_per_s.svg` and `concurrency.svg` into `dir`;
/// returns their paths.
pub fn plot_run(dir: &Path, outcomes: &[RequestOutcome], duration: f64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.success).collect();
    let ms = |f: &dyn Fn(&RequestOutcome) -> Option<f64>| -> Vec<f64> {
        ok.iter().filter_map(|o| f(o)).map(|s| s * 1000.0).collect()
    };
    let ttft = ms(&|o| Some(o.ttft));
    let tpot = ms(&|o| o.tpot());
    let e2el = ms(&|o| Some(o.latency));
    let itl: Vec<f64> = ok
        .iter()
        .flat_map(|o| o.itl.iter().map(|s| s * 1000.0))
        .collect();

    let cdf_path = dir.join("latency_cdf.svg");
    plot_cdfs(
        &cdf_path,
        [
            ("TTFT", &ttft),
            ("TPOT", &tpot),
            ("ITL", &itl),
            ("E2E latency", &e2el),
        ],
    )?;

    // About 60 buckets whatever the run's length, within [50 ms, 10 s].
    let bucket = (duration / 60.0).clamp(0.05, 10.0);
    let series = TimeSeries::of(outcomes, bucket);
    let at = |i: usize| i as f64 * bucket;
    let tokens_path = dir.join("output_tokens_per_s.svg");
    line_chart(
        &tokens_path,
        &format!("Output tokens/s over time ({bucket:.2} s buckets)"),
        "seconds since the first request",
        "output tokens/s",
        series
            .output_tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| (at(i), t))
            .collect(),
    )?;
    let concurrency_path = dir.join("concurrency.svg");
    line_chart(
        &concurrency_path,
        &format!("Requests in flight over time ({bucket:.2} s buckets)"),
        "seconds since the first request",
        "requests in flight (time-averaged)",
        series
            .mean_concurrency
            .iter()
            .enumerate()
            .map(|(i, &c)| (at(i), c))
            .collect(),
    )?;
    Ok(vec![cdf_path, tokens_path, concurrency_path])
}

/// One point of a sweep, for plotting; the field names are those of the sweep JSON's points, so
/// a saved sweep can be read back (`bench compare`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SweepPoint {
    /// E.g. "rate 4" or "conc 16".
    pub label: String,
    pub output_throughput: f64,
    pub mean_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub mean_ttft_ms: f64,
    pub p99_ttft_ms: f64,
}

/// One named curve of a sweep chart (the name is empty for a single sweep).
#[derive(Debug, Clone, Copy)]
pub struct SweepSeries<'a> {
    pub name: &'a str,
    pub points: &'a [SweepPoint],
}

fn sweep_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    path: &Path,
    metric: &str,
    series: &[SweepSeries<'_>],
    pick: fn(&SweepPoint) -> (f64, f64),
) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = axis_max(all().map(|p| p.output_throughput));
    // Headroom above the highest point keeps the legend (upper left) clear of the curves.
    let y_max = axis_max(all().map(|p| pick(p).1.max(pick(p).0))) * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{metric} vs output throughput"), (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("output tokens/s")
        .y_desc(format!("{metric} (ms)"))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (s, curve) in series.iter().enumerate() {
        for (i, stat) in ["mean", "p99"].into_iter().enumerate() {
            // One sweep: a colour per statistic; several: a colour per sweep, p99 drawn thinner.
            let color = if series.len() == 1 {
                COLORS[i]
            } else {
                COLORS[s % COLORS.len()]
            };
            let width = if series.len() == 1 || i == 0 { 2 } else { 1 };
            let xy: Vec<(f64, f64)> = curve
                .points
                .iter()
                .map(|p| {
                    let (mean, p99) = pick(p);
                    (p.output_throughput, if i == 0 { mean } else { p99 })
                })
                .collect();
            let label = if curve.name.is_empty() {
                format!("{stat} {metric}")
            } else {
                format!("{} {stat} {metric}", curve.name)
            };
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(width)))
                .map_err(|e| plot_error(path, e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
            if i == 0 {
                chart
                    .draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| plot_error(path, e))?;
            } else {
                chart
                    .draw_series(
                        xy.iter()
                            .map(|&p| TriangleMarker::new(p, 5, color.filled())),
                    )
                    .map_err(|e| plot_error(path, e))?;
                chart
                    .draw_series(curve.points.iter().zip(&xy).map(|(p, &xy)| {
                        Text::new(p.label.clone(), xy, (FONT, 13).into_font().color(&BLACK))
                    }))
                    .map_err(|e| plot_error(path, e))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    Ok(())
}

/// Writes the sweep's throughput-vs-latency chart (TPOT and TTFT panels) to `path`.
pub fn plot_sweep(path: &Path, points: &[SweepPoint]) -> Result<()> {
    plot_sweeps(path, &[SweepSeries { name: "", points }])
}

/// Writes one throughput-vs-latency chart with a curve per sweep (engines compared).
pub fn plot_sweeps(path: &Path, series: &[SweepSeries<'_>]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| BenchError::io(parent, e))?;
    }
    let root = SVGBackend::new(path, (1300, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let panels = root.split_evenly((1, 2));
    sweep_panel(&panels[0], path, "TPOT", series, |p| {
        (p.mean_tpot_ms, p.p99_tpot_ms)
    })?;
    sweep_panel(&panels[1], path, "TTFT", series, |p| {
        (p.mean_ttft_ms, p.p99_ttft_ms)
    })?;
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_are_thinned_but_end_at_one() {
        let xs: Vec<f64> = (0..10_000).rev().map(f64::from).collect();
        let pts = cdf_points(&xs);
        assert!(pts.len() <= CDF_POINTS + 1);
        assert_eq!(pts.first().unwrap().0, 0.0);
        assert_eq!(*pts.last().unwrap(), (9999.0, 1.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert!(cdf_points(&[]).is_empty());
    }
}
