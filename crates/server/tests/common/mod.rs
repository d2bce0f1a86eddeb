//! Test servers on 127.0.0.1:0 over the built-in demo model (or a given model), and small HTTP
//! and SSE helpers.
#![allow(dead_code)]

use std::sync::Arc;

use pagoda_engine::engine::EngineConfig;
use pagoda_model::builtin::load_builtin;
use pagoda_model::{LoadedModel, RunnerOptions};
use pagoda_server::{AppState, ServerConfig, ServerOptions};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn builtin() -> LoadedModel {
    load_builtin(&RunnerOptions {
        kv_cache_bytes: 64 << 20,
        ..RunnerOptions::default()
    })
    .unwrap()
}

pub async fn start(server: ServerConfig, engine: EngineConfig) -> TestServer {
    start_with(builtin(), server, engine).await
}

pub async fn start_with(
    loaded: LoadedModel,
    server: ServerConfig,
    engine: EngineConfig,
) -> TestServer {
    let options = ServerOptions {
        server,
        engine,
        chat_template: None,
    };
    let state = pagoda_server::start(loaded, options).unwrap();
    pagoda_server::warm_up(&state).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let serve_state = Arc::clone(&state);
    let task = tokio::spawn(async move {
        pagoda_server::serve(listener, serve_state, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        base,
        state,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A streamed request's `data:` payloads, in order (the last is `[DONE]`).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        sse_payloads(&r.text().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Splits an SSE body into its `data:` payloads, checking OpenAI's framing.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "unterminated event stream: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// The JSON chunks of a stream (everything before `[DONE]`, which must come last).
pub fn chunks(payloads: &[String]) -> Vec<Value> {
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format strictly (names, label syntax, values,
/// `# HELP` / `# TYPE` lines), panicking on anything malformed. The Python test checks the
/// same output with the reference parser (`prometheus_client`).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_default();
            assert!(["HELP", "TYPE"].contains(&kind), "bad comment: {line}");
            assert!(valid_name(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in: {line}"));
                        assert!(
                            valid_name(k) && !k.contains(':'),
                            "bad label name in: {line}"
                        );
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad metric name in: {line}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// Sum of a metric's series.
pub fn metric(text: &str, name: &str) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Value of a metric's series whose `label` equals `value`.
pub fn metric_with(text: &str, name: &str, label: &str, value: &str) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| k == label && v == value))
        .map(|s| s.value)
        .sum()
}

/// Count of a histogram (all series).
pub fn histogram_count(text: &str, name: &str) -> u64 {
    metric(text, &format!("{name}_count")) as u64
}

/// This process's resident set size in bytes (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `text` of each choice of a (non-streamed) completion response, in order.
pub fn choice_texts(r: &Value) -> Vec<String> {
    r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}
