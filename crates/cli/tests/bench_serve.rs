//! `pagoda bench serve`, `bench sweep` and `bench mock-server` as a user runs them: against the
//! scripted mock server and against a real `pagoda serve` (built-in model), over 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pagoda_bench::mock_server::{MockConfig, MockServer};
use serde_json::Value;
use support::ServerProcess;

fn pagoda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pagoda"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("pagoda starts");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh scratch directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pagoda-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn serve_writes_vllm_json_and_svg_plots() {
    let mock = MockServer::start(
        MockConfig {
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(2),
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        2,
    )
    .unwrap();
    let dir = scratch("serve");
    let result = dir.join("result.json");
    let out = run_ok(
        pagoda()
            .args(["bench", "serve", "--base-url", &mock.base_url()])
            .args([
                "--endpoint",
                "chat",
                "--num-prompts",
                "24",
                "--input-len",
                "12",
            ])
            .args([
                "--output-len",
                "5",
                "--request-rate",
                "200",
                "--max-concurrency",
                "6",
            ])
            .args(["--num-warmups", "2", "--goodput", "ttft:1000", "tpot:1000"])
            .arg("--result-file")
            .arg(&result)
            .arg("--plot")
            .arg(dir.join("plots")),
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("Serving Benchmark Result"), "{table}");
    assert!(
        table.contains("Successful requests:                     24"),
        "{table}"
    );
    assert!(table.contains("Client CPU (cores):"), "{table}");
    let r = read_json(&result);
    assert_eq!(r["completed"], 24);
    assert_eq!(r["total_output_tokens"], 24 * 5);
    assert_eq!(r["total_input_tokens"], 24 * 12);
    assert_eq!(r["backend"], "openai-chat");
    assert_eq!(r["max_concurrency"], 6);
    assert_eq!(r["ttfts"].as_array().unwrap().len(), 24);
    assert_eq!(r["itls"][0].as_array().unwrap().len(), 4);
    assert!(r["peak_concurrency"].as_u64().unwrap() <= 6);
    assert_eq!(r["request_goodput"], r["request_throughput"]);
    assert!(r["mean_ttft_ms"].as_f64().unwrap() >= 19.0);
    assert!(r["client_cpu_cores"].as_f64().unwrap() > 0.0);
    for svg in [
        "latency_cdf.svg",
        "output_tokens_per_s.svg",
        "concurrency.svg",
    ] {
        let text = std::fs::read_to_string(dir.join("plots").join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<text"), "{svg}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sweep_writes_one_point_per_concurrency_and_a_chart() {
    let mock = MockServer::start(MockConfig::default(), "127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let dir = scratch("sweep");
    let (json, svg) = (dir.join("sweep.json"), dir.join("sweep.svg"));
    let out = run_ok(
        pagoda()
            .args(["bench", "sweep", "--base-url", &mock.base_url()])
            .args(["--max-concurrencies", "1,4", "--num-prompts", "12"])
            .args([
                "--input-len",
                "8",
                "--output-len",
                "4",
                "--workload",
                "shared-prefix",
            ])
            .args(["--prefix-len", "16", "--num-prefixes", "2"])
            .arg("--result-file")
            .arg(&json)
            .arg("--plot")
            .arg(&svg),
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 2, "{printed}");
    let r = read_json(&json);
    assert_eq!(r["sweep"], "max_concurrency");
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["max_concurrency"], 1);
    assert_eq!(points[1]["max_concurrency"], 4);
    assert!(points
        .iter()
        .all(|p| p["completed"] == 12 && p.get("itls").is_none()));
    assert_eq!(points[0]["total_input_tokens"], 12 * 24);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("TPOT vs output throughput") && chart.contains("conc 4"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mock_server_subcommand_answers_models() {
    // Port 0: the server picks a free port and logs it. (Probing a port chosen beforehand raced:
    // on loopback a connect to a port nobody listens on yet can connect to itself.)
    let mut child = pagoda()
        .args([
            "bench",
            "mock-server",
            "--port",
            "0",
            "--output-tokens",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().expect("piped stderr");
    let mut stderr = BufReader::new(stderr); // kept open until the child is killed
    let mut first_line = String::new();
    stderr.read_line(&mut first_line).unwrap();
    let addr: std::net::SocketAddr = first_line
        .split("listening on http://")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no listen address in {first_line:?}"))
        .parse()
        .unwrap();
    let models = support::request(addr, "GET", "/v1/models", "");
    let (status, body) = support::request(
        addr,
        "POST",
        "/v1/completions",
        r#"{"prompt": "a b", "max_tokens": 50}"#,
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(models.0, 200);
    assert!(models.1.contains("mock-model"), "{}", models.1);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
}

#[test]
fn serve_benchmarks_a_real_pagoda_server() {
    let server = ServerProcess::start(&[]);
    let out = run_ok(
        pagoda()
            .args(["bench", "serve", "--base-url"])
            .arg(format!("http://{}/v1", server.addr))
            .args([
                "--num-prompts",
                "6",
                "--input-len",
                "16",
                "--output-len",
                "4",
            ])
            .args(["--max-concurrency", "3", "--result-file"])
            .arg(
                std::env::temp_dir().join(format!("pagoda-bench-real-{}.json", std::process::id())),
            ),
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("Successful requests:                     6"),
        "{table}"
    );
    assert!(
        table.contains("Total generated tokens:                  24"),
        "{table}"
    );
}
