//! `bench sweep`: the same workload run at several request rates or concurrency limits, one
//! point each, giving the throughput-vs-latency curve that engines are compared by.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::arrivals::ArrivalProcess;
use crate::error::{BenchError, Result};
use crate::plot::{self, SweepPoint, SweepSeries};
use crate::report;
use crate::run::RunOptions;
use crate::serve::{self, Prepared, ServeConfig, ServeResult};

/// What varies between the points.
#[derive(Debug, Clone, PartialEq)]
pub enum SweepAxis {
    RequestRates(Vec<f64>),
    MaxConcurrencies(Vec<usize>),
}

impl SweepAxis {
    pub fn name(&self) -> &'static str {
        match self {
            SweepAxis::RequestRates(_) => "request_rate",
            SweepAxis::MaxConcurrencies(_) => "max_concurrency",
        }
    }

    fn len(&self) -> usize {
        match self {
            SweepAxis::RequestRates(v) => v.len(),
            SweepAxis::MaxConcurrencies(v) => v.len(),
        }
    }

    /// The run options and label of point `i`, starting from `base`.
    fn point(&self, i: usize, base: &RunOptions) -> Result<(RunOptions, String)> {
        let mut options = base.clone();
        let label = match self {
            SweepAxis::RequestRates(rates) => {
                options.arrivals = ArrivalProcess::new(rates[i], base.arrivals.burstiness)?;
                format!("rate {}", rates[i])
            }
            SweepAxis::MaxConcurrencies(limits) => {
                if limits[i] == 0 {
                    return Err(BenchError::invalid(
                        "--max-concurrencies must be at least 1",
                    ));
                }
                options.max_concurrency = Some(limits[i]);
                format!("conc {}", limits[i])
            }
        };
        Ok((options, label))
    }
}

/// Parses `1,2,4,inf` into request rates.
pub fn parse_rates(text: &str) -> Result<Vec<f64>> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let rate = if s.eq_ignore_ascii_case("inf") {
                Ok(f64::INFINITY)
            } else {
                s.parse::<f64>()
            };
            rate.ok().filter(|r| *r > 0.0).ok_or_else(|| {
                BenchError::invalid(format!(
                    "request rate {s:?}: expected a positive number or inf"
                ))
            })
        })
        .collect()
}

/// The points a sweep ran, and the error that stopped it early, if one did.
pub struct SweepRun {
    pub results: Vec<(String, ServeResult)>,
    /// A later point that could not run (its label and why); the earlier points are kept.
    pub stopped_by: Option<(String, BenchError)>,
}

/// Runs every point; stops early when one is interrupted by Ctrl-C (its partial result is
/// kept) or cannot run (the points before it are kept). `on_point` sees each result as it
/// finishes (for printing).
pub async fn sweep(
    prepared: &Prepared,
    config: &ServeConfig,
    base: &RunOptions,
    axis: &SweepAxis,
    mut on_point: impl FnMut(&str, &ServeResult),
) -> Result<SweepRun> {
    if axis.len() == 0 {
        return Err(BenchError::invalid("a sweep needs at least one point"));
    }
    let mut results = Vec::with_capacity(axis.len());
    for i in 0..axis.len() {
        let (options, label) = axis.point(i, base)?;
        let result = match serve::execute(prepared, config, &options).await {
            Ok(result) => result,
            Err(e) if !results.is_empty() => {
                return Ok(SweepRun {
                    results,
                    stopped_by: Some((label, e)),
                })
            }
            Err(e) => return Err(e),
        };
        on_point(&label, &result);
        let interrupted = result.run.interrupted;
        results.push((label, result));
        if interrupted {
            break;
        }
    }
    Ok(SweepRun {
        results,
        stopped_by: None,
    })
}

pub fn sweep_point(label: &str, result: &ServeResult) -> SweepPoint {
    let m = &result.metrics;
    SweepPoint {
        label: label.to_string(),
        output_throughput: m.output_throughput,
        mean_tpot_ms: m.tpot.mean * 1000.0,
        p99_tpot_ms: m.tpot.p99 * 1000.0,
        mean_ttft_ms: m.ttft.mean * 1000.0,
        p99_ttft_ms: m.ttft.p99 * 1000.0,
    }
}

/// The sweep JSON: the axis, and each point's result without per-request arrays.
pub fn sweep_json(axis: &SweepAxis, results: &[(String, ServeResult)]) -> Value {
    let points: Vec<Value> = results
        .iter()
        .map(|(label, r)| {
            let mut point = report::without_per_request_arrays(r.json());
            point.insert("label".into(), json!(label));
            Value::Object(point)
        })
        .collect();
    json!({"sweep": axis.name(), "points": points})
}

/// Writes the sweep's JSON and its throughput-vs-latency chart.
pub fn write_outputs(
    json_path: &Path,
    plot_path: Option<&Path>,
    axis: &SweepAxis,
    results: &[(String, ServeResult)],
) -> Result<()> {
    let text = serde_json::to_string_pretty(&sweep_json(axis, results)).map_err(|source| {
        BenchError::Json {
            what: "the sweep result".into(),
            source,
        }
    })?;
    std::fs::write(json_path, text).map_err(|e| BenchError::io(json_path, e))?;
    if let Some(path) = plot_path {
        let points: Vec<SweepPoint> = results.iter().map(|(l, r)| sweep_point(l, r)).collect();
        plot::plot_sweep(path, &points)?;
    }
    Ok(())
}

/// A sweep read back from its JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SavedSweep {
    /// "request_rate" or "max_concurrency".
    pub sweep: String,
    pub points: Vec<SweepPoint>,
}

/// Reads a sweep JSON written by `bench sweep`.
pub fn read_sweep(path: &Path) -> Result<SavedSweep> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| BenchError::Json {
        what: format!("the sweep {}", path.display()),
        source,
    })
}

/// One chart comparing saved sweeps (one curve per name) — engines on the same workload.
pub fn plot_comparison(path: &Path, sweeps: &[(String, SavedSweep)]) -> Result<()> {
    let series: Vec<SweepSeries<'_>> = sweeps
        .iter()
        .map(|(name, s)| SweepSeries {
            name,
            points: &s.points,
        })
        .collect();
    plot::plot_sweeps(path, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_inf_and_reject_nonsense() {
        assert_eq!(
            parse_rates("1, 2.5,inf").unwrap(),
            vec![1.0, 2.5, f64::INFINITY]
        );
        assert!(parse_rates("1,0").is_err());
        assert!(parse_rates("fast").is_err());
        assert!(parse_rates("").is_err());
    }

    #[test]
    fn a_written_sweep_reads_back_and_plots_next_to_another() {
        let dir = std::env::temp_dir().join(format!("pagoda-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = json!({"sweep": "request_rate", "points": [
            {"label": "rate 1", "output_throughput": 10.0, "mean_tpot_ms": 20.0,
             "p99_tpot_ms": 30.0, "mean_ttft_ms": 100.0, "p99_ttft_ms": 150.0, "completed": 4},
            {"label": "rate inf", "output_throughput": 40.0, "mean_tpot_ms": 50.0,
             "p99_tpot_ms": 60.0, "mean_ttft_ms": 900.0, "p99_ttft_ms": 1500.0, "completed": 4},
        ]});
        let path = dir.join("a.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let saved = read_sweep(&path).unwrap();
        assert_eq!(saved.sweep, "request_rate");
        assert_eq!(saved.points.len(), 2);
        assert_eq!(saved.points[1].label, "rate inf");
        assert_eq!(saved.points[1].p99_ttft_ms, 1500.0);
        let svg = dir.join("compare.svg");
        plot_comparison(
            &svg,
            &[("one".into(), saved.clone()), ("two".into(), saved)],
        )
        .unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("one mean TPOT") && text.contains("two p99 TTFT"));
        std::fs::write(&path, "{\"points\": 3}").unwrap();
        assert!(read_sweep(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
