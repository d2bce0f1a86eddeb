//! `pagoda synth-model`: writes a random-weight model of a real shape, for benchmarks.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use pagoda_model::synth;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Shape name: tiny, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b.
    #[arg(long)]
    pub shape: String,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight precision: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let shape = synth::shape(&args.shape)?;
    let dtype: synth::DType = args.dtype.parse()?;
    let start = Instant::now();
    synth::write_model_dir(shape, dtype, args.seed, &args.out)?;
    eprintln!(
        "pagoda: wrote random-weight {} ({:?}) to {} in {:.1} s",
        shape.name,
        dtype,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
