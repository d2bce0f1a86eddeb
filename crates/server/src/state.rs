//! The server's shared state: engine handle, tokenizer, chat template, limits, metrics, and the
//! lifecycle flags (ready, draining) with the in-flight count that draining waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagoda_engine::handle::EngineHandle;
use pagoda_model::Tokenizer;
use tokio::sync::Notify;

use crate::chat_template::ChatTemplate;
use crate::metrics::Metrics;

/// The tenant of a request authenticated by an API key: the key's position in the configured
/// list (never the key itself). Its prefix-cache blocks are salted with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant(pub usize);

/// Server options (the engine's come with its handle).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients use in `model` (and `/v1/models` lists).
    pub served_model_name: String,
    /// Sequences (prompts × n) that may wait for the engine before new ones get 429.
    pub max_waiting_requests: usize,
    /// Prompt tokens that may wait for the engine before new requests get 429.
    pub max_waiting_tokens: usize,
    /// Accepted `Authorization: Bearer` keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// How long a drain waits for in-flight requests before exiting anyway.
    pub drain_timeout: Duration,
    /// The model's tool-call format, which enables `tool_choice` `"auto"` (and makes it the
    /// default when a request has tools).
    pub tool_call_parser: Option<crate::tool_parser::ToolCallParser>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_name: "pagoda".into(),
            max_waiting_requests: 256,
            max_waiting_tokens: 256 * 1024,
            api_keys: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            tool_call_parser: None,
        }
    }
}

/// Everything a handler needs.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    /// The model's vocabulary (token ids in prompts must be below it).
    pub vocab_size: usize,
    pub created: u64,
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate,
        config: ServerConfig,
        metrics: Arc<Metrics>,
        vocab_size: usize,
    ) -> Self {
        Self {
            vocab_size,
            engine,
            tokenizer,
            chat_template,
            config,
            metrics,
            created: unix_now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining() && !self.engine.is_stopped()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting work: readiness and new requests answer 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Counts a generation request as in flight until the guard is dropped.
    pub fn in_flight_guard(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    pub fn num_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once no generation request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.num_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a generation request (and by its response stream) while it runs.
pub struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
