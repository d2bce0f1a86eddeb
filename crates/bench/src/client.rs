//! One OpenAI-compatible target: the HTTP client (keep-alive, no proxies, bounded time per
//! request), model discovery, and sending one benchmark request while timing its stream —
//! time to first token, every inter-token gap, end-to-end latency, token counts and errors.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{BenchError, Result};
use crate::sse::SseParser;

/// Which OpenAI endpoint the benchmark requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `/v1/completions` with a text prompt.
    Completions,
    /// `/v1/chat/completions` with the prompt as one user message.
    Chat,
}

impl EndpointKind {
    pub fn path(self) -> &'static str {
        match self {
            EndpointKind::Completions => "/v1/completions",
            EndpointKind::Chat => "/v1/chat/completions",
        }
    }

    /// The `backend` name `vllm bench serve` uses for this endpoint.
    pub fn backend_name(self) -> &'static str {
        match self {
            EndpointKind::Completions => "openai",
            EndpointKind::Chat => "openai-chat",
        }
    }
}

/// A request ready to send: its JSON body is serialized once, before the timed run.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub body: Bytes,
    /// Prompt tokens as the workload counted them (the server's usage wins when it reports it).
    pub prompt_len: usize,
    pub expected_output_len: usize,
}

/// What happened to one request. Times are in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    pub success: bool,
    /// When it was sent, from the start of the benchmark.
    pub start: f64,
    /// Time to the first chunk that carried generated text.
    pub ttft: f64,
    /// Gaps between successive text-carrying chunks.
    pub itl: Vec<f64>,
    /// Time to the end of the response.
    pub latency: f64,
    /// From the server's usage when reported, else the number of text-carrying chunks.
    pub output_tokens: usize,
    pub prompt_len: usize,
    pub generated_text: String,
    pub error: Option<String>,
}

impl RequestOutcome {
    /// Time per output token after the first: (latency − TTFT) / (tokens − 1).
    pub fn tpot(&self) -> Option<f64> {
        (self.output_tokens > 1)
            .then(|| (self.latency - self.ttft) / (self.output_tokens - 1) as f64)
    }
}

/// The server under test.
#[derive(Clone)]
pub struct Target {
    client: reqwest::Client,
    /// Scheme, host, port and any path prefix, without a trailing `/` or `/v1`.
    base: String,
    endpoint: reqwest::Url,
    pub kind: EndpointKind,
}

/// A reqwest error with its causes ("connection refused" hides two levels down).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a request failed because the server had closed its (reused) connection before any
/// response: not a refused connection, not a timeout, and the cause says the connection closed.
fn is_stale_connection(error: &reqwest::Error) -> bool {
    if error.is_connect() || error.is_timeout() || error.status().is_some() {
        return false;
    }
    let text = describe(error);
    text.contains("connection closed before message completed") || text.contains("reset by peer")
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => m.to_string(),
        None => body.chars().take(500).collect(),
    }
}

impl Target {
    /// A client for `base_url` (`http://host:port`, optionally ending in `/v1`). Only that host
    /// is contacted: proxies from the environment are ignored and redirects are not followed.
    pub fn new(base_url: &str, kind: EndpointKind, request_timeout: Duration) -> Result<Self> {
        Self::with_api_key(base_url, kind, request_timeout, None)
    }

    /// Like [`Target::new`], sending `Authorization: Bearer KEY` with every request.
    pub fn with_api_key(
        base_url: &str,
        kind: EndpointKind,
        request_timeout: Duration,
        api_key: Option<&str>,
    ) -> Result<Self> {
        let trimmed = base_url.trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        let parsed = reqwest::Url::parse(trimmed)
            .map_err(|e| BenchError::invalid(format!("--base-url {base_url:?}: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(BenchError::invalid(format!(
                "--base-url {base_url:?}: only http:// is supported (no TLS in this build)"
            )));
        }
        let endpoint = reqwest::Url::parse(&format!("{trimmed}{}", kind.path()))
            .map_err(|e| BenchError::invalid(format!("--base-url {base_url:?}: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                BenchError::invalid("--api-key has characters a header cannot carry")
            })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            // Only the given server is contacted: no proxies, no redirects elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(request_timeout)
            .build()
            .map_err(|source| BenchError::Http {
                url: trimmed.to_string(),
                source,
            })?;
        Ok(Self {
            client,
            base: trimmed.to_string(),
            endpoint,
            kind,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn http_error(&self, path: &str, source: reqwest::Error) -> BenchError {
        BenchError::Protocol {
            url: format!("{}{path}", self.base),
            message: describe(&source),
        }
    }

    async fn read_json(&self, path: &str, response: reqwest::Response) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.http_error(path, e))?;
        if !status.is_success() {
            return Err(BenchError::Status {
                url,
                status: status.as_u16(),
                message: error_message(&String::from_utf8_lossy(&body)),
            });
        }
        serde_json::from_slice(&body).map_err(|source| BenchError::Json {
            what: format!("the answer of {url}"),
            source,
        })
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.http_error(path, e))?;
        self.read_json(path, response).await
    }

    /// POST `body` to `path` and parse the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.http_error(path, e))?;
        self.read_json(path, response).await
    }

    /// The id of the first model the server lists at `/v1/models`.
    pub async fn first_model(&self) -> Result<String> {
        let models = self.get_json("/v1/models").await?;
        models
            .pointer("/data/0/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BenchError::Protocol {
                url: format!("{}/v1/models", self.base),
                message: "no model listed (expected data[0].id)".into(),
            })
    }

    /// Sends one request and times its answer; never fails, errors land in the outcome.
    pub async fn send(&self, request: &PreparedRequest, bench_start: Instant) -> RequestOutcome {
        let sent = Instant::now();
        let mut timing = StreamTiming::new(sent, request.expected_output_len);
        let result = self.exchange(request, &mut timing).await;
        let end = Instant::now();
        let error = result.err().or(timing.error.take());
        RequestOutcome {
            success: error.is_none(),
            start: sent.duration_since(bench_start).as_secs_f64(),
            ttft: timing
                .ttft
                .unwrap_or_else(|| end.duration_since(sent).as_secs_f64()),
            latency: end.duration_since(sent).as_secs_f64(),
            output_tokens: timing.completion_tokens.unwrap_or(timing.text_chunks),
            prompt_len: timing.prompt_tokens.unwrap_or(request.prompt_len),
            itl: timing.itl,
            generated_text: timing.text,
            error,
        }
    }

    async fn start(&self, request: &PreparedRequest) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(request.body.clone())
            .send()
            .await
    }

    async fn exchange(
        &self,
        request: &PreparedRequest,
        timing: &mut StreamTiming,
    ) -> Result<(), String> {
        let mut response = match self.start(request).await {
            Ok(response) => response,
            // The pooled keep-alive connection was closed by the server before it answered
            // (llama-server does this): re-send once on a fresh connection, still timed from
            // the first send.
            Err(e) if is_stale_connection(&e) => {
                self.start(request).await.map_err(|e| describe(&e))?
            }
            Err(e) => return Err(describe(&e)),
        };
        let status = response.status();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                error_message(&body)
            ));
        }
        if is_json {
            // A server that ignored `stream`: the whole answer is one "chunk".
            let body = response.bytes().await.map_err(|e| describe(&e))?;
            timing.on_event(&body, Instant::now());
            return Ok(());
        }
        let mut parser = SseParser::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            let now = Instant::now();
            parser.feed(&chunk, |data| timing.on_event(data, now));
        }
        Ok(())
    }
}

/// Timing state of one streamed answer.
struct StreamTiming {
    sent: Instant,
    last: Instant,
    ttft: Option<f64>,
    itl: Vec<f64>,
    text: String,
    text_chunks: usize,
    completion_tokens: Option<usize>,
    prompt_tokens: Option<usize>,
    error: Option<String>,
}

impl StreamTiming {
    fn new(sent: Instant, expected_tokens: usize) -> Self {
        Self {
            sent,
            last: sent,
            ttft: None,
            itl: Vec::with_capacity(expected_tokens),
            text: String::new(),
            text_chunks: 0,
            completion_tokens: None,
            prompt_tokens: None,
            error: None,
        }
    }

    fn on_event(&mut self, data: &[u8], now: Instant) {
        if data == b"[DONE]" {
            return;
        }
        let chunk: StreamChunk = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(e) => {
                self.error.get_or_insert_with(|| {
                    let shown: String = String::from_utf8_lossy(data).chars().take(200).collect();
                    format!("unparsable stream chunk ({e}): {shown}")
                });
                return;
            }
        };
        if let Some(error) = chunk.error {
            self.error.get_or_insert_with(|| match error.as_str() {
                Some(s) => s.to_string(),
                None => error_message(&error.to_string()),
            });
        }
        if let Some(usage) = chunk.usage {
            self.completion_tokens = usage.completion_tokens.or(self.completion_tokens);
            self.prompt_tokens = usage.prompt_tokens.or(self.prompt_tokens);
        }
        let Some(text) = chunk.choices.0.and_then(Choice::into_text) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        match self.ttft {
            None => self.ttft = Some(now.duration_since(self.sent).as_secs_f64()),
            Some(_) => self.itl.push(now.duration_since(self.last).as_secs_f64()),
        }
        self.last = now;
        self.text_chunks += 1;
        self.text.push_str(&text);
    }
}

/// The parts of a completion / chat chunk (or whole non-streamed answer) the timing needs.
/// Text borrows from the network buffer unless it has escapes.
#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(default, borrow)]
    choices: FirstChoice<'a>,
    #[serde(default)]
    usage: Option<UsageCounts>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct UsageCounts {
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
}

impl<'a> Choice<'a> {
    fn into_text(self) -> Option<Cow<'a, str>> {
        if self.text.is_some() {
            return self.text;
        }
        let message = self.delta.or(self.message)?;
        match (message.content, message.reasoning_content) {
            (Some(c), _) if !c.is_empty() => Some(c),
            (_, Some(r)) => Some(r),
            (c, None) => c,
        }
    }
}

/// `choices[0]`, skipping the rest without collecting them (no allocation per chunk).
#[derive(Default)]
struct FirstChoice<'a>(Option<Choice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor;
        impl<'de> Visitor<'de> for FirstVisitor {
            type Value = FirstChoice<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Choice<'de>>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(FirstChoice(None))
            }
        }
        deserializer.deserialize_any(FirstVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing_of(events: &[&str]) -> StreamTiming {
        let start = Instant::now();
        let mut t = StreamTiming::new(start, 4);
        for (i, e) in events.iter().enumerate() {
            t.on_event(
                e.as_bytes(),
                start + Duration::from_millis(100 * (i as u64 + 1)),
            );
        }
        t
    }

    #[test]
    fn completion_chunks_time_only_text_and_take_usage() {
        let t = timing_of(&[
            r#"{"choices":[{"index":0,"text":"Hel","finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":"lo \"x\"","finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#,
            "[DONE]",
        ]);
        assert_eq!(t.ttft, Some(0.1));
        assert_eq!(t.itl.len(), 1);
        assert!((t.itl[0] - 0.1).abs() < 1e-9);
        assert_eq!(t.text, "Hello \"x\"");
        assert_eq!((t.completion_tokens, t.prompt_tokens), (Some(3), Some(5)));
        assert!(t.error.is_none());
    }

    #[test]
    fn chat_role_chunk_is_not_the_first_token() {
        let t = timing_of(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}},{"index":1,"delta":{"content":"x"}}]}"#,
        ]);
        assert!((t.ttft.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!((t.text.as_str(), t.text_chunks), ("Hi", 1));
    }

    #[test]
    fn error_events_and_garbage_are_recorded() {
        let t = timing_of(&[r#"{"error":{"message":"engine died","type":"internal"}}"#]);
        assert_eq!(t.error.as_deref(), Some("engine died"));
        let t = timing_of(&["not json"]);
        assert!(t.error.unwrap().contains("unparsable"));
    }

    #[test]
    fn base_urls_may_end_in_v1_and_must_be_http() {
        let t = Target::new(
            "http://127.0.0.1:9/v1/",
            EndpointKind::Chat,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.base_url(), "http://127.0.0.1:9");
        assert_eq!(
            t.endpoint.as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert!(Target::new("https://x", EndpointKind::Chat, Duration::from_secs(1)).is_err());
        assert!(Target::new("nonsense", EndpointKind::Chat, Duration::from_secs(1)).is_err());
    }
}
