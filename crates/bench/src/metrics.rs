//! Statistics over per-request outcomes: numpy-compatible percentiles, mean / median / std
//! summaries of TTFT, TPOT, ITL and E2E latency, throughputs, goodput against SLOs, and the
//! per-second output-token and concurrency series (for the peak numbers and the plots).

use crate::client::RequestOutcome;
use crate::error::{BenchError, Result};

/// The p-th percentile (0..=100) of sorted values, by linear interpolation between closest
/// ranks (numpy's default method); 0 for an empty slice, as `vllm bench serve` reports.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let low = rank.floor() as usize;
            let high = rank.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        }
    }
}

/// Mean, median, population standard deviation (numpy's `std`) and tail percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Summary {
    /// The percentiles that reports carry, with the names used in field names (`p99_…`).
    pub const PERCENTILES: [(&'static str, f64); 3] = [("p90", 90.0), ("p95", 95.0), ("p99", 99.0)];

    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            median: percentile_sorted(&sorted, 50.0),
            std: var.sqrt(),
            p90: percentile_sorted(&sorted, 90.0),
            p95: percentile_sorted(&sorted, 95.0),
            p99: percentile_sorted(&sorted, 99.0),
        }
    }

    pub fn percentile(&self, name: &str) -> f64 {
        match name {
            "p90" => self.p90,
            "p95" => self.p95,
            _ => self.p99,
        }
    }

    /// The same summary with every value multiplied (seconds to milliseconds).
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            mean: self.mean * factor,
            median: self.median * factor,
            std: self.std * factor,
            p90: self.p90 * factor,
            p95: self.p95 * factor,
            p99: self.p99 * factor,
        }
    }
}

/// Service-level objectives in milliseconds; a request is good when it meets every one given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft:MS`, `tpot:MS`, `e2el:MS` items (any subset, any order).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self> {
        let mut slo = Slo::default();
        for item in items {
            let item = item.as_ref();
            let (name, value) = item.split_once(':').ok_or_else(|| {
                BenchError::invalid(format!("--goodput items are NAME:MS, got {item:?}"))
            })?;
            let ms: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    BenchError::invalid(format!(
                        "--goodput {name}: expected a non-negative number of ms, got {value:?}"
                    ))
                })?;
            let slot = match name.trim() {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2el" => &mut slo.e2el_ms,
                other => {
                    return Err(BenchError::invalid(format!(
                        "--goodput metric must be ttft, tpot or e2el, got {other:?}"
                    )))
                }
            };
            *slot = Some(ms);
        }
        Ok(slo)
    }

    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Whether a successful request meets every objective (TPOT of a one-token answer is 0).
    pub fn is_met_by(&self, outcome: &RequestOutcome) -> bool {
        let ok = |slo: Option<f64>, seconds: f64| slo.is_none_or(|ms| seconds * 1000.0 <= ms);
        ok(self.ttft_ms, outcome.ttft)
            && ok(self.tpot_ms, outcome.tpot().unwrap_or(0.0))
            && ok(self.e2el_ms, outcome.latency)
    }
}

/// Everything the reports say about one run.
#[derive(Debug, Clone, Default)]
pub struct BenchmarkMetrics {
    pub completed: usize,
    pub failed: usize,
    pub total_input: usize,
    pub total_output: usize,
    pub duration: f64,
    pub request_throughput: f64,
    /// Good requests per second; `None` without SLOs.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// In seconds (reports convert to ms).
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2el: Summary,
    /// Output tokens in the busiest whole second of the run.
    pub max_output_tokens_per_s: f64,
    /// Requests active at some point of the busiest whole second (`vllm bench serve`'s
    /// `max_concurrent_requests`; can exceed the concurrency limit as requests come and go).
    pub max_concurrent_requests: usize,
    /// Most requests in flight at one instant.
    pub peak_concurrency: usize,
}

/// Most successful requests in flight at one instant.
pub fn peak_concurrency(outcomes: &[RequestOutcome]) -> usize {
    let mut events: Vec<(f64, i32)> = outcomes
        .iter()
        .filter(|o| o.success)
        .flat_map(|o| [(o.start, 1), (o.start + o.latency, -1)])
        .collect();
    // Ends before starts at the same instant: back-to-back requests do not overlap.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut current = 0i32;
    let mut peak = 0i32;
    for (_, delta) in events {
        current += delta;
        peak = peak.max(current);
    }
    peak.max(0) as usize
}

/// Computes the metrics of a run that took `duration` seconds.
pub fn compute(outcomes: &[RequestOutcome], duration: f64, slo: &Slo) -> BenchmarkMetrics {
    let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.success).collect();
    let ttfts: Vec<f64> = ok.iter().map(|o| o.ttft).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|o| o.tpot()).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|o| o.itl.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|o| o.latency).collect();
    let total_input: usize = ok.iter().map(|o| o.prompt_len).sum();
    let total_output: usize = ok.iter().map(|o| o.output_tokens).sum();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let good = ok.iter().filter(|o| slo.is_met_by(o)).count();
    let series = TimeSeries::of(outcomes, 1.0);
    BenchmarkMetrics {
        completed: ok.len(),
        failed: outcomes.len() - ok.len(),
        total_input,
        total_output,
        duration,
        request_throughput: per_s(ok.len() as f64),
        request_goodput: (!slo.is_empty()).then(|| per_s(good as f64)),
        output_throughput: per_s(total_output as f64),
        total_token_throughput: per_s((total_input + total_output) as f64),
        ttft: Summary::of(&ttfts),
        tpot: Summary::of(&tpots),
        itl: Summary::of(&itls),
        e2el: Summary::of(&e2els),
        max_output_tokens_per_s: series.output_tokens.iter().copied().fold(0.0, f64::max),
        max_concurrent_requests: series.active_requests.iter().copied().max().unwrap_or(0),
        peak_concurrency: peak_concurrency(outcomes),
    }
}

/// Successful requests' output tokens and concurrency in fixed-width time buckets from the
/// first request's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeSeries {
    pub bucket_s: f64,
    /// Output tokens per second in each bucket.
    pub output_tokens: Vec<f64>,
    /// Requests in flight at any point of each bucket.
    pub active_requests: Vec<usize>,
    /// Time-averaged requests in flight in each bucket.
    pub mean_concurrency: Vec<f64>,
}

impl TimeSeries {
    pub fn of(outcomes: &[RequestOutcome], bucket_s: f64) -> Self {
        let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.success).collect();
        let Some(first) = ok.iter().map(|o| o.start).reduce(f64::min) else {
            return Self {
                bucket_s,
                ..Self::default()
            };
        };
        let last = ok.iter().map(|o| o.start + o.latency).fold(first, f64::max);
        let bucket = |t: f64| ((t - first) / bucket_s).max(0.0) as usize;
        let n = bucket(last) + 1;
        let mut tokens = vec![0.0; n];
        let mut active = vec![0usize; n];
        let mut busy = vec![0.0f64; n];
        for o in ok {
            // Token times: the first at TTFT, then each inter-token gap; usage may report more
            // tokens than chunks (several tokens per chunk), those land with the last chunk.
            let mut t = o.start + o.ttft;
            let chunks = o.itl.len() + 1;
            let mut add = |t: f64, count: f64| tokens[bucket(t).min(n - 1)] += count;
            add(t, 1.0);
            for gap in &o.itl {
                t += gap;
                add(t, 1.0);
            }
            if o.output_tokens > chunks {
                add(t, (o.output_tokens - chunks) as f64);
            }
            let end = o.start + o.latency;
            for b in bucket(o.start)..=bucket(end).min(n - 1) {
                active[b] += 1;
                let (lo, hi) = (
                    first + b as f64 * bucket_s,
                    first + (b + 1) as f64 * bucket_s,
                );
                busy[b] += (end.min(hi) - o.start.max(lo)).max(0.0);
            }
        }
        tokens.iter_mut().for_each(|t| *t /= bucket_s);
        Self {
            bucket_s,
            output_tokens: tokens,
            active_requests: active,
            mean_concurrency: busy.iter().map(|b| b / bucket_s).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // np.percentile([1, 2, 3, 4], [50, 90, 95, 99]) = [2.5, 3.7, 3.85, 3.97]
        let xs = [1.0, 2.0, 3.0, 4.0];
        for (p, want) in [(50.0, 2.5), (90.0, 3.7), (95.0, 3.85), (99.0, 3.97)] {
            assert!((percentile_sorted(&xs, p) - want).abs() < 1e-12, "p{p}");
        }
        // np.percentile([10, 20, 40, 80, 160], [0, 25, 90, 100]) = [10, 20, 128, 160]
        let ys = [10.0, 20.0, 40.0, 80.0, 160.0];
        for (p, want) in [(0.0, 10.0), (25.0, 20.0), (90.0, 128.0), (100.0, 160.0)] {
            assert!((percentile_sorted(&ys, p) - want).abs() < 1e-12, "p{p}");
        }
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
        assert_eq!(percentile_sorted(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_sorts_and_uses_population_std() {
        // np.std([2, 4, 4, 4, 5, 5, 7, 9]) = 2.0; median 4.5; p90 = 7.6 (unsorted input).
        let s = Summary::of(&[9.0, 4.0, 2.0, 5.0, 4.0, 7.0, 4.0, 5.0]);
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.std - 2.0).abs() < 1e-12);
        assert!((s.median - 4.5).abs() < 1e-12);
        assert!((s.p90 - 7.6).abs() < 1e-12, "{}", s.p90);
        assert!((s.p99 - 8.86).abs() < 1e-12, "{}", s.p99);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    fn outcome(start: f64, ttft: f64, itl: Vec<f64>, output_tokens: usize) -> RequestOutcome {
        let latency = ttft + itl.iter().sum::<f64>();
        RequestOutcome {
            success: true,
            start,
            ttft,
            latency,
            itl,
            output_tokens,
            prompt_len: 10,
            ..RequestOutcome::default()
        }
    }

    #[test]
    fn goodput_needs_every_slo_and_bad_items_are_rejected() {
        let slo = Slo::parse(&["ttft:100", "tpot:20"]).unwrap();
        assert_eq!(slo.ttft_ms, Some(100.0));
        let fast = outcome(0.0, 0.05, vec![0.01; 4], 5);
        let slow_first = outcome(0.0, 0.2, vec![0.01; 4], 5);
        let slow_decode = outcome(0.0, 0.05, vec![0.03; 4], 5);
        assert!(slo.is_met_by(&fast));
        assert!(!slo.is_met_by(&slow_first));
        assert!(!slo.is_met_by(&slow_decode));
        let m = compute(&[fast, slow_first, slow_decode], 2.0, &slo);
        assert_eq!(m.request_goodput, Some(0.5));
        assert!(Slo::parse(&["ttft"]).is_err());
        assert!(Slo::parse(&["latency:5"]).is_err());
        assert!(Slo::parse(&["ttft:-1"]).is_err());
    }

    #[test]
    fn metrics_skip_failures_and_count_tokens_and_peaks() {
        let failed = RequestOutcome {
            error: Some("boom".into()),
            ..RequestOutcome::default()
        };
        let a = outcome(0.0, 0.5, vec![0.25, 0.25], 3);
        let b = outcome(0.2, 0.5, vec![0.5], 2);
        let m = compute(&[a, failed, b], 2.0, &Slo::default());
        assert_eq!((m.completed, m.failed), (2, 1));
        assert_eq!((m.total_input, m.total_output), (20, 5));
        assert!((m.request_throughput - 1.0).abs() < 1e-12);
        assert!((m.output_throughput - 2.5).abs() < 1e-12);
        assert!((m.total_token_throughput - 12.5).abs() < 1e-12);
        // TPOT = (latency - ttft) / (tokens - 1): 0.25 for a, 0.5 for b.
        assert!((m.tpot.mean - 0.375).abs() < 1e-12);
        assert!((m.itl.mean - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.request_goodput, None);
        // Tokens at 0.5, 0.75, 1.0 (a) and 0.7, 1.2 (b): 3 in [0, 1) s, 2 in [1, 2) s.
        assert_eq!(m.max_output_tokens_per_s, 3.0);
        assert_eq!(m.max_concurrent_requests, 2);
        assert_eq!(m.peak_concurrency, 2);
        // a: [0, 1.0], b: [0.2, 1.2]: 1.8 request-seconds in [0, 1), 0.2 in [1, 2).
        let series = TimeSeries::of(&[a_copy(), b_copy()], 1.0);
        assert!((series.mean_concurrency[0] - 1.8).abs() < 1e-9);
        assert!((series.mean_concurrency[1] - 0.2).abs() < 1e-9);
    }

    fn a_copy() -> RequestOutcome {
        outcome(0.0, 0.5, vec![0.25, 0.25], 3)
    }

    fn b_copy() -> RequestOutcome {
        outcome(0.2, 0.5, vec![0.5], 2)
    }

    #[test]
    fn peak_concurrency_is_instantaneous() {
        // Three back-to-back requests in one second: active in the same second, never together.
        let seq: Vec<RequestOutcome> = (0..3)
            .map(|i| outcome(i as f64 * 0.3, 0.1, vec![0.15], 2))
            .collect();
        assert_eq!(peak_concurrency(&seq), 1);
        assert_eq!(
            compute(&seq, 1.0, &Slo::default()).max_concurrent_requests,
            3
        );
    }
}
