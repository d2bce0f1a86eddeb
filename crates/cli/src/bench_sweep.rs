//! `pagoda bench sweep`: `bench serve` at several request rates or concurrency limits, written
//! as one JSON (a point per run) and a throughput-vs-latency chart.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pagoda_bench::serve;
use pagoda_bench::sweep::{self, SweepAxis};

use crate::bench_serve::{client_runtime, describe_load, LoadArgs};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("axis").required(true).args(["request_rates", "max_concurrencies"])))]
pub struct SweepArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Request rates to run at, e.g. 1,2,4,inf.
    #[arg(long)]
    pub request_rates: Option<String>,
    /// Concurrency limits to run at, e.g. 1,4,16.
    #[arg(long, value_delimiter = ',')]
    pub max_concurrencies: Option<Vec<usize>>,
    /// The sweep's JSON: {"sweep": axis, "points": [result per point, vLLM field names]}.
    #[arg(long, default_value = "sweep.json")]
    pub result_file: PathBuf,
    /// The throughput-vs-latency SVG (output tok/s against mean / p99 TPOT and TTFT).
    #[arg(long, default_value = "sweep.svg")]
    pub plot: PathBuf,
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let axis = match (&args.request_rates, &args.max_concurrencies) {
        (Some(rates), _) => SweepAxis::RequestRates(sweep::parse_rates(rates)?),
        (None, Some(limits)) => SweepAxis::MaxConcurrencies(limits.clone()),
        (None, None) => anyhow::bail!("give --request-rates or --max-concurrencies"),
    };
    let config = args.load.serve_config()?;
    let base = args.load.run_options()?;
    let runtime = client_runtime()?;
    let run = runtime.block_on(async {
        eprintln!("preparing {} prompts against {}", config.num_prompts, config.base_url);
        let prepared = serve::prepare(&config).await?;
        eprintln!("model {}, tokens from {}", prepared.model, prepared.tokenizer_id);
        sweep::sweep(&prepared, &config, &base, &axis, |label, result| {
            let m = &result.metrics;
            println!(
                "{label:>12}: {:>9.2} req/s {:>10.1} output tok/s | TTFT mean {:>8.1} p99 {:>8.1} ms | TPOT mean {:>7.2} p99 {:>7.2} ms | {} ok, {} failed | client {:.2} cores",
                m.request_throughput,
                m.output_throughput,
                m.ttft.mean * 1e3,
                m.ttft.p99 * 1e3,
                m.tpot.mean * 1e3,
                m.tpot.p99 * 1e3,
                m.completed,
                m.failed,
                result.run.client_cpu_cores(),
            );
            if result.run.interrupted {
                eprintln!("interrupted: stopping the sweep after {label} ({})", describe_load(&base));
            }
        })
        .await
    })?;
    sweep::write_outputs(&args.result_file, Some(&args.plot), &axis, &run.results)
        .context("cannot write the sweep's outputs")?;
    eprintln!(
        "sweep written to {} and {}",
        args.result_file.display(),
        args.plot.display()
    );
    match run.stopped_by {
        Some((label, e)) => Err(anyhow::Error::new(e).context(format!(
            "the sweep stopped at {label}; the {} points before it are in the outputs",
            run.results.len()
        ))),
        None => Ok(()),
    }
}
