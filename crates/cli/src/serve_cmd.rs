//! `pagoda serve`: the OpenAI-compatible server on a model directory or the built-in demo.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pagoda_server::tool_parser::ToolCallParser;
use pagoda_server::{ServerConfig, ServerOptions};

use crate::engine_args::EngineArgs;
use crate::model_args::{parse_bytes, ModelArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Sequences (prompts × n) allowed to wait for the engine; more get 429 at once.
    #[arg(long, default_value_t = 256)]
    pub max_waiting_requests: usize,
    /// Prompt tokens allowed to wait for the engine (e.g. 262144, 1M); more get 429 at once.
    #[arg(long, default_value = "262144")]
    pub max_waiting_tokens: String,
    /// Accepted API key (repeatable): requests to /v1/* and the tokenizer endpoints must send
    /// `Authorization: Bearer KEY`.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Jinja chat template (a file path, or the template itself) replacing the model's.
    #[arg(long)]
    pub chat_template: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Let chat requests with tools use `tool_choice` "auto" (the default when tools are given):
    /// the model may answer in text or call tools in its own format, parsed by
    /// `--tool-call-parser` into `tool_calls`.
    #[arg(long, requires = "tool_call_parser")]
    pub enable_auto_tool_choice: bool,
    /// The model's tool-call format (vLLM's names): hermes (`<tool_call>{...}</tool_call>`:
    /// Qwen2.5, Hermes), llama3_json (a JSON object message: Llama 3.1/3.2) or mistral (a JSON
    /// array of calls, after `[TOOL_CALLS]`).
    #[arg(long, value_parser = ToolCallParser::NAMES, requires = "enable_auto_tool_choice")]
    pub tool_call_parser: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    anyhow::ensure!(
        args.drain_timeout.is_finite() && args.drain_timeout >= 0.0,
        "--drain-timeout must be a non-negative number of seconds"
    );
    let chat_template = match &args.chat_template {
        Some(t) if std::path::Path::new(t).is_file() => Some(
            std::fs::read_to_string(t).with_context(|| format!("reading --chat-template {t}"))?,
        ),
        other => other.clone(),
    };
    let engine = args.engine.config()?;
    let loaded = args.model.load()?;
    let served_model_name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| loaded.name.clone());
    let options = ServerOptions {
        server: ServerConfig {
            served_model_name,
            max_waiting_requests: args.max_waiting_requests,
            max_waiting_tokens: parse_bytes(&args.max_waiting_tokens)
                .context("--max-waiting-tokens")?,
            api_keys: args.api_keys.clone(),
            drain_timeout: Duration::from_secs_f64(args.drain_timeout),
            tool_call_parser: args
                .tool_call_parser
                .as_deref()
                .and_then(ToolCallParser::from_name),
        },
        engine,
        chat_template,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let state = pagoda_server::start(loaded, options)?;
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .with_context(|| format!("invalid --host/--port {}:{}", args.host, args.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let warm_state = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            match pagoda_server::warm_up(&warm_state).await {
                Ok(()) => tracing::info!("ready: warm-up done"),
                Err(e) => tracing::error!("{e}"),
            }
        });
        tracing::info!(
            model = %state.config.served_model_name,
            "listening on http://{local} (OpenAI API under /v1)"
        );
        pagoda_server::serve(listener, state, pagoda_server::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
