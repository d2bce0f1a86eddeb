//! The `pagoda` binary: one entry point with a subcommand per job.

mod bench_compare;
mod bench_latency;
mod bench_mock_server;
mod bench_prefix;
mod bench_serve;
mod bench_sweep;
mod bench_throughput;
mod convert_cmd;
mod engine_args;
mod generate_cmd;
mod model_args;
mod serve_cmd;
mod synth_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pagoda",
    version,
    about = "pagoda: an LLM inference serving engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (completions, chat, models, metrics) over HTTP.
    Serve(serve_cmd::ServeArgs),
    /// Generate a completion for one prompt, streaming the text to stdout.
    Generate(generate_cmd::GenerateArgs),
    /// Write a random-weight model of a real shape (for benchmarks) in Hugging Face format.
    SynthModel(synth_cmd::SynthArgs),
    /// Write a Hugging Face model directory as a GGUF file (llama.cpp's conventions).
    ConvertGguf(convert_cmd::ConvertArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Single-sequence prefill and decode speed, against this machine's memory bandwidth.
    Latency(bench_latency::LatencyArgs),
    /// Offline throughput of the engine over many requests (continuous vs static batching).
    Throughput(bench_throughput::ThroughputArgs),
    /// TTFT and hit rate of automatic prefix caching on a shared-prefix workload (on vs off).
    PrefixCache(bench_prefix::PrefixCacheArgs),
    /// Load-test an OpenAI-compatible server over HTTP (like `vllm bench serve`).
    Serve(bench_serve::ServeBenchArgs),
    /// `bench serve` over several request rates or concurrencies: throughput vs latency.
    Sweep(bench_sweep::SweepArgs),
    /// One throughput-vs-latency chart of several saved sweeps (engines compared).
    Compare(bench_compare::CompareArgs),
    /// A scripted OpenAI-compatible server (fixed TTFT / ITL / length) to test the benchmark.
    MockServer(bench_mock_server::MockServerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Generate(a) => a.model.threads,
        Command::Serve(a) => a.model.threads,
        Command::Bench(BenchCommand::Latency(a)) => a.model.threads,
        Command::Bench(BenchCommand::Throughput(a)) => a.model.threads,
        Command::Bench(BenchCommand::PrefixCache(a)) => a.model.threads,
        Command::Bench(
            BenchCommand::Serve(_)
            | BenchCommand::Sweep(_)
            | BenchCommand::Compare(_)
            | BenchCommand::MockServer(_),
        ) => None,
        Command::SynthModel(_) | Command::ConvertGguf(_) => None,
    };
    if let Some(n) = threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        pagoda_model::ops::pool::init_global(n);
    }
    match cli.command {
        Command::Generate(args) => generate_cmd::run(args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::SynthModel(args) => synth_cmd::run(args),
        Command::ConvertGguf(args) => convert_cmd::run(args),
        Command::Bench(BenchCommand::Latency(args)) => bench_latency::run(args),
        Command::Bench(BenchCommand::Throughput(args)) => bench_throughput::run(args),
        Command::Bench(BenchCommand::PrefixCache(args)) => bench_prefix::run(args),
        Command::Bench(BenchCommand::Serve(args)) => bench_serve::run(args),
        Command::Bench(BenchCommand::Sweep(args)) => bench_sweep::run(args),
        Command::Bench(BenchCommand::Compare(args)) => bench_compare::run(args),
        Command::Bench(BenchCommand::MockServer(args)) => bench_mock_server::run(args),
    }
}
