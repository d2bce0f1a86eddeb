//! `pagoda bench serve`: load-tests any OpenAI-compatible server (like `vllm bench serve`).
//! Arguments are parsed here; the work is in the `pagoda-bench` crate.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pagoda_bench::arrivals::ArrivalProcess;
use pagoda_bench::client::EndpointKind;
use pagoda_bench::metrics::Slo;
use pagoda_bench::run::RunOptions;
use pagoda_bench::serve::{self, ServeConfig, ServeResult};
use pagoda_bench::workload::WorkloadSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions` (the prompt as one user message).
    Chat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Random real tokens of the target's tokenizer; fixed lengths, EOS ignored.
    Random,
    /// `--num-prefixes` prefixes of `--prefix-len` tokens, each request a unique suffix.
    SharedPrefix,
    /// First human turn of ShareGPT conversations (`--dataset`).
    Sharegpt,
}

/// What to load-test and how; shared by `bench serve` and `bench sweep`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine). Only it is contacted.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Model name to request (default: the server's first /v1/models entry).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "completions")]
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// tokenizer.json or a model directory (default: the server's /tokenize and /detokenize).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "random")]
    pub workload: Workload,
    /// Prompt tokens (random), or suffix tokens after the prefix (shared-prefix).
    #[arg(long, default_value_t = 1024)]
    pub input_len: usize,
    /// Output tokens (default 128; sharegpt: the reply's length unless given).
    #[arg(long)]
    pub output_len: Option<usize>,
    /// Lengths uniform in len × [1 − r, 1 + r].
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Tokens of each shared prefix (shared-prefix).
    #[arg(long, default_value_t = 512)]
    pub prefix_len: usize,
    /// Distinct prefixes (shared-prefix).
    #[arg(long, default_value_t = 4)]
    pub num_prefixes: usize,
    /// ShareGPT JSON file (sharegpt).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Ask the server to ignore EOS (always on for random and shared-prefix).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Requests in the run.
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Mean requests per second (Poisson / gamma arrivals); inf sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Gamma shape of the intervals: 1 Poisson, < 1 burstier, > 1 more regular.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// At most this many requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Unmeasured requests sent before the run.
    #[arg(long, default_value_t = 0)]
    pub num_warmups: usize,
    /// Stop sending after this many seconds (requests in flight still finish).
    #[arg(long)]
    pub duration: Option<f64>,
    /// SLOs in ms for goodput, e.g. `--goodput ttft:500 tpot:50 e2el:10000`.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Seed of the workload and the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// A JSON object merged into every request body, e.g. `'{"logit_bias": {"2": -100}}'` for a
    /// server that ignores `ignore_eos`.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Write the result JSON (vLLM `bench serve` field names) here.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// Write SVG charts (latency CDFs, output tokens/s and concurrency over time) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a non-negative number of seconds"))
}

impl LoadArgs {
    pub fn serve_config(&self) -> anyhow::Result<ServeConfig> {
        let output_len = self.output_len.unwrap_or(128);
        let workload = match self.workload {
            Workload::Random => WorkloadSpec::Random {
                input_len: self.input_len,
                output_len,
                range_ratio: self.range_ratio,
            },
            Workload::SharedPrefix => WorkloadSpec::SharedPrefix {
                prefix_len: self.prefix_len,
                num_prefixes: self.num_prefixes,
                input_len: self.input_len,
                output_len,
                range_ratio: self.range_ratio,
            },
            Workload::Sharegpt => WorkloadSpec::ShareGpt {
                path: self
                    .dataset
                    .clone()
                    .context("--workload sharegpt needs --dataset PATH")?,
                output_len: self.output_len,
                ignore_eos: self.ignore_eos,
            },
        };
        anyhow::ensure!(self.num_prompts >= 1, "--num-prompts must be at least 1");
        Ok(ServeConfig {
            base_url: self.base_url.clone(),
            api_key: self.api_key.clone(),
            model: self.model.clone(),
            endpoint: match self.endpoint {
                Endpoint::Completions => EndpointKind::Completions,
                Endpoint::Chat => EndpointKind::Chat,
            },
            tokenizer: self.tokenizer.clone(),
            workload,
            num_prompts: self.num_prompts,
            seed: self.seed,
            temperature: self.temperature,
            extra_body: match &self.extra_body {
                None => Default::default(),
                Some(text) => match serde_json::from_str(text)
                    .context("--extra-body must be a JSON object")?
                {
                    serde_json::Value::Object(map) => map,
                    other => anyhow::bail!("--extra-body must be a JSON object, got {other}"),
                },
            },
            request_timeout: seconds("--request-timeout", self.request_timeout)?,
            slo: Slo::parse(&self.goodput)?,
        })
    }

    pub fn run_options(&self) -> anyhow::Result<RunOptions> {
        anyhow::ensure!(
            self.max_concurrency != Some(0),
            "--max-concurrency must be at least 1"
        );
        Ok(RunOptions {
            arrivals: ArrivalProcess::new(self.request_rate, self.burstiness)?,
            max_concurrency: self.max_concurrency,
            num_warmups: self.num_warmups,
            duration: self
                .duration
                .map(|d| seconds("--duration", d))
                .transpose()?,
            seed: self.seed,
            progress: !self.no_progress,
            handle_ctrl_c: true,
        })
    }
}

/// The client runs on one thread: it needs well under a core, and a single thread keeps its
/// own CPU use (reported) honest and away from the server's cores.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    pagoda_bench::fd_limit::raise_open_file_limit(65_536);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")
}

pub fn describe_load(options: &RunOptions) -> String {
    format!(
        "request rate {} ({}, burstiness {}), max concurrency {}",
        options.arrivals.rate,
        options.arrivals.describe(),
        options.arrivals.burstiness,
        options
            .max_concurrency
            .map_or("unlimited".to_string(), |c| c.to_string())
    )
}

fn write_outputs(args: &ServeBenchArgs, result: &ServeResult) -> anyhow::Result<()> {
    if let Some(path) = &args.result_file {
        let text = serde_json::to_string(&result.json())?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("result written to {}", path.display());
    }
    if let Some(dir) = &args.plot {
        let files = pagoda_bench::plot::plot_run(dir, &result.run.outcomes, result.run.duration)?;
        for f in files {
            eprintln!("plot written to {}", f.display());
        }
    }
    Ok(())
}

pub fn run(args: ServeBenchArgs) -> anyhow::Result<()> {
    let config = args.load.serve_config()?;
    let options = args.load.run_options()?;
    let runtime = client_runtime()?;
    let result = runtime.block_on(async {
        eprintln!(
            "preparing {} prompts against {}",
            config.num_prompts, config.base_url
        );
        let prepared = serve::prepare(&config).await?;
        eprintln!(
            "model {}, tokens from {}; {}",
            prepared.model,
            prepared.tokenizer_id,
            describe_load(&options)
        );
        serve::execute(&prepared, &config, &options).await
    })?;
    result.print_table(&mut std::io::stdout().lock())?;
    std::io::stdout().flush()?;
    write_outputs(&args, &result)
}
