//! End-to-end tests of the `pagoda` binary.

use std::process::{Command, Output};

use pagoda_model::test_support::{golden_json, shared_dir};

/// Runs `cmd`, asserting success (showing its stderr otherwise).
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("pagoda starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pagoda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pagoda"))
}

#[test]
fn generate_streams_only_the_completion_to_stdout() {
    let Some(shared) = shared_dir("generate_streams_only_the_completion_to_stdout") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let case = &golden["cases"][0];
    let out = run_ok(
        pagoda()
            .args(["generate", "--model"])
            .arg(shared.join("models/stories260k"))
            .args([
                "--prompt",
                case["prompt"].as_str().unwrap(),
                "--max-tokens",
                "64",
                "--ignore-eos",
            ]),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        case["completion_text"].as_str().unwrap()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("decode"), "timings go to stderr: {stderr}");
}

#[test]
fn builtin_default_runs_without_files_and_says_it_is_random() {
    let out = run_ok(pagoda().args(["generate", "--max-tokens", "8"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("random weights"), "{stderr}");
    assert!(!out.stdout.is_empty());
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let out = pagoda()
        .args(["generate", "--top-p", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("top-p"));
    let missing = pagoda()
        .args(["generate", "--model", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model"));
}

#[test]
fn synth_model_writes_a_loadable_model_and_bench_latency_reports_json() {
    let dir = std::env::temp_dir().join(format!("pagoda-synth-test-{}", std::process::id()));
    run_ok(
        pagoda()
            .args(["synth-model", "--shape", "tiny", "--dtype", "bf16", "--out"])
            .arg(&dir),
    );
    let out = run_ok(
        pagoda()
            .args([
                "bench",
                "latency",
                "--input-len",
                "32",
                "--output-len",
                "8",
                "--iterations",
                "1",
                "--timeline",
                "--aligned-segment",
                "3",
            ])
            .args(["--probe-mib", "64", "--json", "--model"])
            .arg(&dir),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    for key in ["prefill_tok_s", "decode_tok_s", "decode_bandwidth_fraction"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    assert_eq!(report["dtype"], "bf16");
    // The strict bound is the best probe of the invocation, the one before the first run included.
    let before = report["bandwidth_before_gb_s"]
        .as_f64()
        .expect("probe before the runs");
    let best = report["bandwidth_gb_s"].as_f64().expect("best probe");
    assert!(before > 0.0 && best >= before, "{report}");
    // Per memory state: only runs wholly in it, each state's bound from a probe no better than
    // the strict one.
    let states = report["memory_states"].as_array().expect("memory_states");
    let mut runs_in_states = 0;
    for state in states {
        let value = |key: &str| state[key].as_f64().unwrap_or(f64::NAN);
        runs_in_states += state["runs"].as_u64().expect("runs");
        assert!(
            value("bandwidth_gb_s") > 0.0 && value("bandwidth_gb_s") <= best,
            "{state}"
        );
        let fraction = value("decode_tok_s") / value("decode_bound_tok_s");
        assert!(
            (value("decode_bandwidth_fraction") - fraction).abs() < 1e-9,
            "{state}"
        );
    }
    assert!(runs_in_states <= report["iterations"].as_u64().expect("iterations"));
    // The aligned run: 8 decoded tokens in stretches of 3, 3 and 2, a probe before the first and
    // after each, and the whole fraction between the stretches' own.
    let aligned = &report["aligned"];
    assert_eq!(aligned["segment_tokens"], 3, "{aligned}");
    let probes = aligned["probe_gb_s"].as_array().expect("probe_gb_s");
    assert_eq!(probes.len(), 4, "{aligned}");
    assert!(probes.iter().all(|g| g.as_f64().is_some_and(|g| g > 0.0)));
    let per_stretch: Vec<f64> = aligned["decode_bandwidth_fraction_segments"]
        .as_array()
        .expect("per stretch")
        .iter()
        .filter_map(|f| f.as_f64())
        .collect();
    assert_eq!(per_stretch.len(), 3, "{aligned}");
    let whole = aligned["decode_bandwidth_fraction"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let (low, high) = per_stretch
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &f| (l.min(f), h.max(f)));
    assert!(
        whole > 0.0 && whole >= low - 1e-9 && whole <= high + 1e-9,
        "{aligned}"
    );
    // The timed run: the caller's time between jobs is a share of the two, and each worker idles
    // at most the whole of every job.
    let timeline = &report["timeline"];
    let value = |key: &str| timeline[key].as_f64().unwrap_or(f64::NAN);
    let threads = report["threads"].as_f64().expect("threads");
    assert!(value("jobs_per_token") >= 0.0, "{timeline}");
    if value("jobs_per_token") > 1.0 {
        assert!(value("outside_jobs_ms_per_token") > 0.0, "{timeline}");
    }
    assert!(
        (0.0..=1.0).contains(&value("outside_jobs_fraction")),
        "{timeline}"
    );
    assert!(
        value("workers_idle_ms_per_token")
            <= value("inside_jobs_ms_per_token") * (threads - 1.0) + 1e-9,
        "{timeline}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_throughput_reports_both_schedulers_as_json() {
    let out = run_ok(pagoda().args([
        "bench",
        "throughput",
        "--num-prompts",
        "6",
        "--input-len",
        "24",
        "--output-len",
        "6",
        "--range-ratio",
        "0.5",
        "--max-num-seqs",
        "2",
        "--scheduler",
        "static",
        "--single-seq",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["requests_per_s", "output_tok_s", "total_tok_s"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
        assert!(
            report["static"][key].as_f64().unwrap() > 0.0,
            "static {key}"
        );
    }
    assert_eq!(report["num_prompts"], 6);
    // Lengths in len × [0.5, 1.5]: every request's output was produced (checked by the bench).
    let outputs = report["total_output_tokens"].as_u64().unwrap();
    assert!((18..=54).contains(&outputs), "{outputs}");
    // Static batching of 2 at a time takes more steps than continuous batching.
    assert!(report["static"]["num_steps"].as_u64() >= report["num_steps"].as_u64());
    assert!(report["continuous_over_single_seq"].as_f64().unwrap() > 0.0);
}
