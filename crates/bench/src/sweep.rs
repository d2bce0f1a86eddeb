//! `bench sweep`: the same workload run at several request rates or concurrency limits, one
//! point each, giving the throughput-vs-latency curve that engines are compared by.

use std::path::Path;

use serde_json::{json, Value};

use crate::arrivals::ArrivalProcess;
use crate::error::{BenchError, Result};
use crate::plot::{self, SweepPoint};
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

/// Runs every point; stops early when one is interrupted by Ctrl-C (its partial result is
/// kept). `on_point` sees each result as it finishes (for printing).
pub async fn sweep(
    prepared: &Prepared,
    config: &ServeConfig,
    base: &RunOptions,
    axis: &SweepAxis,
    mut on_point: impl FnMut(&str, &ServeResult),
) -> Result<Vec<(String, ServeResult)>> {
    if axis.len() == 0 {
        return Err(BenchError::invalid("a sweep needs at least one point"));
    }
    let mut results = Vec::with_capacity(axis.len());
    for i in 0..axis.len() {
        let (options, label) = axis.point(i, base)?;
        let result = serve::execute(prepared, config, &options).await?;
        on_point(&label, &result);
        let interrupted = result.run.interrupted;
        results.push((label, result));
        if interrupted {
            break;
        }
    }
    Ok(results)
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
}
