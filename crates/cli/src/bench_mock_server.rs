//! `pagoda bench mock-server`: a scripted OpenAI-compatible server (fixed TTFT, inter-token
//! latency and output length) for testing and calibrating `bench serve` itself.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pagoda_bench::mock_server::{MockConfig, MockServer};

#[derive(Args, Debug)]
pub struct MockServerArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Milliseconds from a request's arrival to its first token.
    #[arg(long, default_value_t = 0.0)]
    pub ttft_ms: f64,
    /// Milliseconds between tokens.
    #[arg(long, default_value_t = 0.0)]
    pub itl_ms: f64,
    /// Tokens per answer (default: the request's max_tokens, else 16).
    #[arg(long)]
    pub output_tokens: Option<usize>,
    /// The model name it serves.
    #[arg(long, default_value = "mock-model")]
    pub model: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

fn millis(what: &str, ms: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .with_context(|| format!("{what} must be a non-negative number of milliseconds"))
}

pub fn run(args: MockServerArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("bad address {}:{}", args.host, args.port))?;
    let config = MockConfig {
        model: args.model,
        ttft: millis("--ttft-ms", args.ttft_ms)?,
        itl: millis("--itl-ms", args.itl_ms)?,
        output_tokens: args.output_tokens,
    };
    let server = MockServer::start(config, addr, args.threads)?;
    eprintln!("mock OpenAI server listening on {}", server.base_url());
    server.wait();
    Ok(())
}
