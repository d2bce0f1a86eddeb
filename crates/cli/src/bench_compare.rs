//! `pagoda bench compare`: sweeps saved by `bench sweep` (e.g. pagoda and another server on the
//! same workload) drawn as one throughput-vs-latency chart, and printed side by side.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pagoda_bench::sweep::{self, SavedSweep};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Sweep JSON files written by `bench sweep`, e.g. pagoda.json,llama-server.json.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sweeps: Vec<PathBuf>,
    /// A name per sweep for the legend (default: each file's stem).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The comparison SVG.
    #[arg(long, default_value = "compare.svg")]
    pub plot: PathBuf,
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.labels.is_empty() || args.labels.len() == args.sweeps.len(),
        "--labels has {} names for {} sweeps",
        args.labels.len(),
        args.sweeps.len()
    );
    let mut sweeps: Vec<(String, SavedSweep)> = Vec::new();
    for (i, path) in args.sweeps.iter().enumerate() {
        let saved = sweep::read_sweep(path)?;
        let name = match args.labels.get(i) {
            Some(label) => label.clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
        };
        sweeps.push((name, saved));
    }
    for (name, saved) in &sweeps {
        println!(
            "{name} ({} points, by {}):",
            saved.points.len(),
            saved.sweep
        );
        for p in &saved.points {
            println!(
                "  {:>12}: {:>8.1} output tok/s | TTFT mean {:>9.1} p99 {:>9.1} ms | TPOT mean {:>7.2} p99 {:>7.2} ms",
                p.label, p.output_throughput, p.mean_ttft_ms, p.p99_ttft_ms, p.mean_tpot_ms, p.p99_tpot_ms
            );
        }
    }
    sweep::plot_comparison(&args.plot, &sweeps).context("cannot draw the comparison")?;
    eprintln!("comparison written to {}", args.plot.display());
    Ok(())
}
