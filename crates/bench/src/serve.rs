//! `bench serve` end to end, as a library: resolve the model and tokenizer, build and
//! serialize the workload once, run the load, and turn the outcomes into metrics and reports.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::client::{EndpointKind, PreparedRequest, Target};
use crate::error::Result;
use crate::metrics::{self, BenchmarkMetrics, Slo};
use crate::report::{self, RunInfo};
use crate::run::{self, RunOptions, RunOutput};
use crate::tokens::TokenSource;
use crate::workload::{self, RequestSettings, WorkloadSpec};

/// Everything `bench serve` needs besides the load shape.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Defaults to the server's first `/v1/models` entry.
    pub model: Option<String>,
    pub endpoint: EndpointKind,
    /// A local `tokenizer.json` or model directory; else the server's `/tokenize`.
    pub tokenizer: Option<PathBuf>,
    pub workload: WorkloadSpec,
    pub num_prompts: usize,
    pub seed: u64,
    pub temperature: f64,
    /// Keys merged into every request body (`--extra-body`).
    pub extra_body: Map<String, Value>,
    pub request_timeout: Duration,
    pub slo: Slo,
}

/// The target and its serialized requests, ready to be run (several times, for a sweep).
pub struct Prepared {
    pub target: Target,
    pub model: String,
    pub tokenizer_id: String,
    pub requests: Vec<PreparedRequest>,
}

fn workload_name(spec: &WorkloadSpec) -> &'static str {
    match spec {
        WorkloadSpec::Random { .. } => "random",
        WorkloadSpec::SharedPrefix { .. } => "shared-prefix",
        WorkloadSpec::ShareGpt { .. } => "sharegpt",
    }
}

/// Resolves the model and tokenizer and builds the requests.
pub async fn prepare(config: &ServeConfig) -> Result<Prepared> {
    let target = Target::with_api_key(
        &config.base_url,
        config.endpoint,
        config.request_timeout,
        config.api_key.as_deref(),
    )?;
    let model = match &config.model {
        Some(m) => m.clone(),
        None => target.first_model().await?,
    };
    let (tokens, tokenizer_id) = match &config.tokenizer {
        Some(path) => (TokenSource::local(path)?, path.display().to_string()),
        None => {
            let source = TokenSource::remote(&target, &model).await?;
            let id = source.describe();
            (source, id)
        }
    };
    let prompts =
        workload::build(&config.workload, config.num_prompts, config.seed, &tokens).await?;
    let settings = RequestSettings {
        model: model.clone(),
        endpoint: config.endpoint,
        temperature: config.temperature,
        extra_body: config.extra_body.clone(),
    };
    let requests = workload::prepare(&prompts, &settings)?;
    Ok(Prepared {
        target,
        model,
        tokenizer_id,
        requests,
    })
}

/// One finished run with its metrics.
#[derive(Debug, Clone)]
pub struct ServeResult {
    pub info: RunInfo,
    pub run: RunOutput,
    pub metrics: BenchmarkMetrics,
}

impl ServeResult {
    /// The vLLM-named result JSON.
    pub fn json(&self) -> Map<String, Value> {
        report::result_json(&self.info, &self.run, &self.metrics)
    }

    pub fn print_table(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        report::print_table(out, &self.info, &self.run, &self.metrics)
    }
}

/// Runs the prepared requests under `options`.
pub async fn execute(
    prepared: &Prepared,
    config: &ServeConfig,
    options: &RunOptions,
) -> Result<ServeResult> {
    let run = run::run(&prepared.target, &prepared.requests, options).await?;
    let metrics = metrics::compute(&run.outcomes, run.duration, &config.slo);
    let info = RunInfo {
        date: report::timestamp_now(),
        backend: config.endpoint.backend_name().into(),
        base_url: prepared.target.base_url().into(),
        model_id: prepared.model.clone(),
        tokenizer_id: prepared.tokenizer_id.clone(),
        workload: workload_name(&config.workload).into(),
        num_prompts: prepared.requests.len(),
        request_rate: options.arrivals.rate,
        burstiness: options.arrivals.burstiness,
        max_concurrency: options.max_concurrency,
        slo: config.slo,
    };
    Ok(ServeResult { info, run, metrics })
}
