//! A scripted OpenAI-compatible server for testing and calibrating the benchmark itself:
//! `/v1/models`, streaming and non-streaming `/v1/completions` and `/v1/chat/completions`
//! (with the usage chunk), `/tokenize` and `/detokenize` (pagoda's shape).
//!
//! Every answer follows the script: the first token `ttft` after the request arrived, then one
//! every `itl`, on an absolute schedule so that timer lateness does not accumulate. The
//! "tokenizer" maps words to ids (`t17` ↔ 17, other words hashed), so prompt token counts are
//! word counts. With zero delays a streamed answer is written as one buffer, so the server
//! costs little next to the client it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures::stream;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{BenchError, Result};

/// The script.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub model: String,
    pub ttft: Duration,
    pub itl: Duration,
    /// Tokens per answer; `None` answers with the request's `max_tokens` (16 when absent).
    pub output_tokens: Option<usize>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model: "mock-model".into(),
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            output_tokens: None,
        }
    }
}

/// Pre-rendered SSE events, so that streaming costs a copy per token rather than a JSON
/// serialization.
struct Rendered {
    config: MockConfig,
    completion_token: Bytes,
    completion_last: Bytes,
    chat_role: Bytes,
    chat_token: Bytes,
    chat_last: Bytes,
}

const TOKEN_TEXT: &str = " tok";
const DONE: &[u8] = b"data: [DONE]\n\n";

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Rendered {
    fn new(config: MockConfig) -> Self {
        let m = &config.model;
        let completion = |finish: Value| {
            event(
                &json!({"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": m,
                "choices": [{"index": 0, "text": TOKEN_TEXT, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        let chat = |delta: Value, finish: Value| {
            event(
                &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                "model": m, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        Self {
            completion_token: completion(Value::Null),
            completion_last: completion(json!("length")),
            chat_role: chat(json!({"role": "assistant", "content": ""}), Value::Null),
            chat_token: chat(json!({"content": TOKEN_TEXT}), Value::Null),
            chat_last: chat(json!({"content": TOKEN_TEXT}), json!("length")),
            config,
        }
    }
}

/// Word-level ids: `t17` is 17, any other word a stable hash below 50 000.
fn word_id(word: &str) -> u32 {
    if let Some(id) = word.strip_prefix('t').and_then(|n| n.parse().ok()) {
        return id;
    }
    word.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    }) % 50_000
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn error(status: StatusCode, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Completions,
    Chat,
}

struct Job {
    tokens: usize,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
}

/// The job a request describes, or the status and message of why it is refused.
fn parse_job(api: Api, config: &MockConfig, body: &[u8]) -> Result<Job, (StatusCode, String)> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    if let Some(model) = request.get("model").and_then(Value::as_str) {
        if model != config.model {
            return Err((
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist."),
            ));
        }
    }
    let prompt_tokens = match api {
        Api::Completions => request.get("prompt").and_then(Value::as_str).map(words),
        Api::Chat => request.get("messages").and_then(Value::as_array).map(|m| {
            m.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(words)
                .sum()
        }),
    }
    .ok_or_else(|| (StatusCode::BAD_REQUEST, "missing prompt or messages".into()))?;
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|m| m as usize);
    Ok(Job {
        tokens: config.output_tokens.or(max_tokens).unwrap_or(16),
        prompt_tokens,
        stream: request.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: request.pointer("/stream_options/include_usage") == Some(&json!(true)),
    })
}

fn usage(job: &Job) -> Value {
    json!({"prompt_tokens": job.prompt_tokens, "completion_tokens": job.tokens,
        "total_tokens": job.prompt_tokens + job.tokens})
}

async fn generate(api: Api, script: Arc<Rendered>, body: Bytes) -> Response {
    let arrived = Instant::now();
    let job = match parse_job(api, &script.config, &body) {
        Ok(job) => job,
        Err((status, message)) => return error(status, message),
    };
    let config = &script.config;
    if !job.stream {
        let last = config.ttft + config.itl * job.tokens.saturating_sub(1) as u32;
        tokio::time::sleep_until(arrived + last).await;
        let text = TOKEN_TEXT.repeat(job.tokens);
        let choice = match api {
            Api::Completions => json!({"index": 0, "text": text, "finish_reason": "length"}),
            Api::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "length"}),
        };
        return Json(
            json!({"id": "mock", "object": "mock", "created": 0, "model": config.model,
            "choices": [choice], "usage": usage(&job)}),
        )
        .into_response();
    }
    let (token, last) = match api {
        Api::Completions => (&script.completion_token, &script.completion_last),
        Api::Chat => (&script.chat_token, &script.chat_last),
    };
    let mut tail = Vec::new();
    if job.tokens > 0 {
        tail.extend_from_slice(last);
    }
    if job.include_usage {
        let model = &config.model;
        tail.extend_from_slice(&event(
            &json!({"id": "mock", "object": "mock", "created": 0,
            "model": model, "choices": [], "usage": usage(&job)}),
        ));
    }
    tail.extend_from_slice(DONE);
    let head = (api == Api::Chat).then(|| script.chat_role.clone());
    let body = if config.ttft.is_zero() && config.itl.is_zero() {
        let mut all = Vec::with_capacity(token.len() * job.tokens + tail.len() + 256);
        if let Some(h) = &head {
            all.extend_from_slice(h);
        }
        for _ in 1..job.tokens {
            all.extend_from_slice(token);
        }
        all.extend_from_slice(&tail);
        Body::from(all)
    } else {
        Body::from_stream(scripted_stream(
            arrived,
            config.ttft,
            config.itl,
            job.tokens,
            head,
            token.clone(),
            Bytes::from(tail),
        ))
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Events on the script's schedule: the role chunk (chat) at once, token k at
/// `arrived + ttft + k·itl`, the last token together with usage and `[DONE]`.
fn scripted_stream(
    arrived: Instant,
    ttft: Duration,
    itl: Duration,
    tokens: usize,
    head: Option<Bytes>,
    token: Bytes,
    tail: Bytes,
) -> impl futures::Stream<Item = std::result::Result<Bytes, std::convert::Infallible>> {
    // Step 0 is the head; step k in 1..=tokens is token k - 1; tokens == 0 sends the tail at once.
    stream::unfold(0usize, move |step| {
        let (head, token, tail) = (head.clone(), token.clone(), tail.clone());
        async move {
            if step == 0 {
                if let Some(h) = head {
                    return Some((Ok(h), 1));
                }
            }
            let step = step.max(1);
            if step > tokens.max(1) {
                return None;
            }
            let index = (step - 1) as u32;
            tokio::time::sleep_until(arrived + ttft + itl * index).await;
            let bytes = if step >= tokens { tail } else { token };
            Some((Ok(bytes), step + 1))
        }
    })
}

async fn models(State(script): State<Arc<Rendered>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": script.config.model, "object": "model",
        "created": 0, "owned_by": "pagoda-mock", "root": script.config.model}]}),
    )
}

async fn tokenize(body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            let text = v.get("prompt").and_then(Value::as_str).unwrap_or_default();
            let tokens: Vec<u32> = text.split_whitespace().map(word_id).collect();
            Json(json!({"count": tokens.len(), "max_model_len": 1_000_000, "tokens": tokens}))
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    }
}

async fn detokenize(body: Bytes) -> Response {
    let ids = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("tokens")?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
    });
    match ids {
        Some(ids) => {
            let prompt: String = ids.iter().map(|id| format!(" t{id}")).collect();
            Json(json!({"prompt": prompt})).into_response()
        }
        None => error(
            StatusCode::BAD_REQUEST,
            "expected {\"tokens\": [ids]}".into(),
        ),
    }
}

/// The mock's routes.
pub fn router(config: MockConfig) -> Router {
    let script = Arc::new(Rendered::new(config));
    Router::new()
        .route("/v1/models", get(models))
        .route(
            "/v1/completions",
            post(|State(s): State<Arc<Rendered>>, body: Bytes| generate(Api::Completions, s, body)),
        )
        .route(
            "/v1/chat/completions",
            post(|State(s): State<Arc<Rendered>>, body: Bytes| generate(Api::Chat, s, body)),
        )
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(script)
}

/// A mock server running on its own threads (its own runtime), stopped when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    /// Binds `addr` (port 0 picks a free one) and serves on `threads` worker threads.
    pub fn start(config: MockConfig, addr: SocketAddr, threads: usize) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| BenchError::io(format!("mock server address {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::io("mock server socket", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BenchError::io("mock server socket", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mock-server")
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("mock server runtime", e))?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-server-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // Without TCP_NODELAY a token written right after the headers waits for
                    // the client's delayed ACK (up to 40 ms on Linux): TTFT would be wrong.
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let _ = axum::serve(listener, router(config))
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
                // Streams still open (a client that went away mid-answer) must not hold us.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| BenchError::io("mock server thread", e))?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blocks until the server stops (it does not on its own: for the CLI).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_ids_round_trip_through_detokenized_text() {
        assert_eq!(word_id("t17"), 17);
        assert_eq!(word_id("hello"), word_id("hello"));
        assert!(word_id("hello") < 50_000);
        let text: String = [5u32, 9, 400].iter().map(|id| format!(" t{id}")).collect();
        let ids: Vec<u32> = text.split_whitespace().map(word_id).collect();
        assert_eq!(ids, vec![5, 9, 400]);
    }
}
