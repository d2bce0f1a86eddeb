//! Reports of a run: the terminal summary table (laid out like `vllm bench serve`'s) and the
//! result JSON, whose field names are `vllm bench serve`'s so that existing tooling reads it,
//! plus pagoda's own fields (client CPU use, interruption, SLOs).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::metrics::{BenchmarkMetrics, Slo, Summary};
use crate::run::RunOutput;

/// Settings of a run, recorded in its result.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub date: String,
    /// `openai` (completions) or `openai-chat`, as vLLM names them.
    pub backend: String,
    pub base_url: String,
    pub model_id: String,
    pub tokenizer_id: String,
    pub workload: String,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub slo: Slo,
}

/// A float as JSON, infinity as the string "inf" (as vLLM writes the request rate).
fn number_or_inf(x: f64) -> Value {
    if x.is_infinite() {
        json!("inf")
    } else {
        json!(x)
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, the shape of vLLM's `date` field.
pub fn timestamp_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const METRICS: [(&str, &str, &str); 4] = [
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
];

fn summary_of<'a>(metrics: &'a BenchmarkMetrics, key: &str) -> &'a Summary {
    match key {
        "ttft" => &metrics.ttft,
        "tpot" => &metrics.tpot,
        "itl" => &metrics.itl,
        _ => &metrics.e2el,
    }
}

/// The result JSON object.
pub fn result_json(info: &RunInfo, run: &RunOutput, m: &BenchmarkMetrics) -> Map<String, Value> {
    let o = &run.outcomes;
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("date", json!(info.date));
    put("endpoint_type", json!(info.backend));
    put("backend", json!(info.backend));
    put("label", Value::Null);
    put("base_url", json!(info.base_url));
    put("model_id", json!(info.model_id));
    put("tokenizer_id", json!(info.tokenizer_id));
    put("workload", json!(info.workload));
    put("num_prompts", json!(info.num_prompts));
    put("request_rate", number_or_inf(info.request_rate));
    put("burstiness", number_or_inf(info.burstiness));
    put("max_concurrency", json!(info.max_concurrency));
    put("duration", json!(m.duration));
    put("completed", json!(m.completed));
    put("failed", json!(m.failed));
    put("interrupted", json!(run.interrupted));
    put("not_completed", json!(run.not_completed));
    put("total_input_tokens", json!(m.total_input));
    put("total_output_tokens", json!(m.total_output));
    put("request_throughput", json!(m.request_throughput));
    put("request_goodput", json!(m.request_goodput));
    put(
        "goodput_slo_ms",
        json!({"ttft": info.slo.ttft_ms, "tpot": info.slo.tpot_ms, "e2el": info.slo.e2el_ms}),
    );
    put("output_throughput", json!(m.output_throughput));
    put("total_token_throughput", json!(m.total_token_throughput));
    put("max_output_tokens_per_s", json!(m.max_output_tokens_per_s));
    put("max_concurrent_requests", json!(m.max_concurrent_requests));
    put("peak_concurrency", json!(m.peak_concurrency));
    put("client_cpu_seconds", json!(run.cpu_seconds));
    put("client_cpu_cores", json!(run.client_cpu_cores()));
    put("input_lens", o.iter().map(|x| x.prompt_len).collect());
    put(
        "output_lens",
        o.iter()
            .map(|x| if x.success { x.output_tokens } else { 0 })
            .collect(),
    );
    put(
        "ttfts",
        o.iter()
            .map(|x| if x.success { x.ttft } else { 0.0 })
            .collect(),
    );
    put("itls", o.iter().map(|x| json!(x.itl)).collect());
    put(
        "generated_texts",
        o.iter().map(|x| json!(x.generated_text)).collect(),
    );
    put("errors", o.iter().map(|x| json!(x.error)).collect());
    for (key, _, _) in METRICS {
        let s = summary_of(m, key).scaled(1000.0);
        put(&format!("mean_{key}_ms"), json!(s.mean));
        put(&format!("median_{key}_ms"), json!(s.median));
        put(&format!("std_{key}_ms"), json!(s.std));
        for (name, _) in Summary::PERCENTILES {
            put(&format!("{name}_{key}_ms"), json!(s.percentile(name)));
        }
    }
    r
}

/// The fields of a result worth keeping per point of a sweep (no per-request arrays).
pub fn without_per_request_arrays(mut result: Map<String, Value>) -> Map<String, Value> {
    for key in [
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "generated_texts",
        "errors",
    ] {
        result.remove(key);
    }
    result
}

/// Writes the summary table.
pub fn print_table(
    out: &mut impl Write,
    info: &RunInfo,
    run: &RunOutput,
    m: &BenchmarkMetrics,
) -> std::io::Result<()> {
    let line =
        |out: &mut dyn Write, label: &str, value: String| writeln!(out, "{label:<40} {value:<10}");
    writeln!(out, "{:=^50}", " Serving Benchmark Result ")?;
    if run.interrupted {
        writeln!(out, "{:<40} {:<10}", "Interrupted (partial report):", "yes")?;
    }
    line(out, "Successful requests:", m.completed.to_string())?;
    line(out, "Failed requests:", m.failed.to_string())?;
    if run.not_completed > 0 {
        line(
            out,
            "Requests not completed:",
            run.not_completed.to_string(),
        )?;
    }
    if let Some(c) = info.max_concurrency {
        line(out, "Maximum request concurrency:", c.to_string())?;
    }
    if info.request_rate.is_finite() {
        line(
            out,
            "Request rate configured (RPS):",
            format!("{:.2}", info.request_rate),
        )?;
    }
    line(out, "Benchmark duration (s):", format!("{:.2}", m.duration))?;
    line(out, "Total input tokens:", m.total_input.to_string())?;
    line(out, "Total generated tokens:", m.total_output.to_string())?;
    line(
        out,
        "Request throughput (req/s):",
        format!("{:.2}", m.request_throughput),
    )?;
    if let Some(g) = m.request_goodput {
        line(out, "Request goodput (req/s):", format!("{g:.2}"))?;
    }
    line(
        out,
        "Output token throughput (tok/s):",
        format!("{:.2}", m.output_throughput),
    )?;
    line(
        out,
        "Peak output token throughput (tok/s):",
        format!("{:.2}", m.max_output_tokens_per_s),
    )?;
    line(
        out,
        "Peak concurrent requests:",
        m.peak_concurrency.to_string(),
    )?;
    line(
        out,
        "Total Token throughput (tok/s):",
        format!("{:.2}", m.total_token_throughput),
    )?;
    line(
        out,
        "Client CPU (cores):",
        format!("{:.3}", run.client_cpu_cores()),
    )?;
    for (key, name, header) in METRICS {
        let s = summary_of(m, key).scaled(1000.0);
        writeln!(out, "{:-^50}", header)?;
        line(out, &format!("Mean {name} (ms):"), format!("{:.2}", s.mean))?;
        line(
            out,
            &format!("Median {name} (ms):"),
            format!("{:.2}", s.median),
        )?;
        line(out, &format!("Std {name} (ms):"), format!("{:.2}", s.std))?;
        for (p, _) in Summary::PERCENTILES {
            let label = format!("P{} {name} (ms):", &p[1..]);
            line(out, &label, format!("{:.2}", s.percentile(p)))?;
        }
    }
    writeln!(out, "{}", "=".repeat(50))?;
    if let Some(first) = run.outcomes.iter().find_map(|o| o.error.as_deref()) {
        writeln!(out, "First error: {first}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RequestOutcome;

    fn sample() -> (RunInfo, RunOutput, BenchmarkMetrics) {
        let info = RunInfo {
            date: timestamp_now(),
            backend: "openai".into(),
            base_url: "http://127.0.0.1:1".into(),
            model_id: "m".into(),
            tokenizer_id: "server".into(),
            workload: "random".into(),
            num_prompts: 2,
            request_rate: f64::INFINITY,
            burstiness: 1.0,
            max_concurrency: Some(4),
            slo: Slo::default(),
        };
        let ok = RequestOutcome {
            success: true,
            ttft: 0.1,
            itl: vec![0.02, 0.02],
            latency: 0.14,
            output_tokens: 3,
            prompt_len: 7,
            ..RequestOutcome::default()
        };
        let bad = RequestOutcome {
            error: Some("HTTP 500: boom".into()),
            prompt_len: 7,
            ..RequestOutcome::default()
        };
        let run = RunOutput {
            outcomes: vec![ok, bad],
            duration: 1.0,
            cpu_seconds: 0.25,
            ..RunOutput::default()
        };
        let m = crate::metrics::compute(&run.outcomes, run.duration, &info.slo);
        (info, run, m)
    }

    #[test]
    fn json_uses_vllm_field_names_and_units() {
        let (info, run, m) = sample();
        let r = result_json(&info, &run, &m);
        for key in [
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "mean_ttft_ms",
            "median_ttft_ms",
            "std_ttft_ms",
            "p99_tpot_ms",
            "p90_itl_ms",
            "p95_e2el_ms",
            "request_goodput",
            "completed",
            "failed",
            "total_input_tokens",
            "total_output_tokens",
            "max_output_tokens_per_s",
            "max_concurrent_requests",
            "duration",
            "input_lens",
            "output_lens",
            "ttfts",
            "itls",
            "errors",
            "client_cpu_cores",
        ] {
            assert!(r.contains_key(key), "missing {key}");
        }
        assert_eq!(r["request_rate"], json!("inf"));
        assert!((r["mean_ttft_ms"].as_f64().unwrap() - 100.0).abs() < 1e-9);
        assert!((r["mean_tpot_ms"].as_f64().unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(r["output_lens"], json!([3, 0]));
        assert_eq!(r["errors"], json!([null, "HTTP 500: boom"]));
        assert_eq!(r["client_cpu_cores"], json!(0.25));
        assert_eq!(r["request_goodput"], Value::Null);
        assert!(!without_per_request_arrays(r).contains_key("itls"));
    }

    #[test]
    fn table_has_the_headline_numbers_and_the_first_error() {
        let (info, run, m) = sample();
        let mut out = Vec::new();
        print_table(&mut out, &info, &run, &m).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Successful requests:                     1"),
            "{text}"
        );
        assert!(text.contains("Mean TTFT (ms):                          100.00"));
        assert!(text.contains("P99 TPOT (ms):"));
        assert!(text.contains("Client CPU (cores):                      0.250"));
        assert!(text.contains("First error: HTTP 500: boom"));
    }

    #[test]
    fn timestamps_look_like_vllm_dates() {
        let t = timestamp_now();
        assert_eq!(t.len(), 15);
        assert_eq!(&t[8..9], "-");
        assert!(t.starts_with("20"));
    }
}
