//! `pagoda generate`: one prompt, text streamed to stdout as it decodes; everything else to stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pagoda_core::SamplingParams;
use pagoda_model::generate::{generate, GenerateOptions, GenerationRequest};
use pagoda_model::IncrementalDecoder;

use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, default_value = "Once upon a time")]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let mut loaded = args.model.load()?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}: {}", e.param.replace('_', "-"), e.message))?;
    let prompt_ids = loaded.tokenizer.encode(&args.prompt, true)?;
    let mut decoder = IncrementalDecoder::new(&loaded.tokenizer, &prompt_ids, true);
    let tokenizer = &loaded.tokenizer;
    let request = GenerationRequest {
        prompt_ids: prompt_ids.clone(),
        params,
    };
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token_at = None;
    let mut write_error = None;
    let result = generate(
        &mut loaded.runner,
        &[request],
        &GenerateOptions::default(),
        |ev| {
            first_token_at.get_or_insert_with(Instant::now);
            match decoder.step(tokenizer, ev.sampled.token) {
                Ok(text) => {
                    if let Err(e) = stdout
                        .write_all(text.as_bytes())
                        .and_then(|_| stdout.flush())
                    {
                        write_error.get_or_insert(e);
                    }
                }
                Err(e) => eprintln!("pagoda: detokenization failed: {e}"),
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    writeln!(stdout)?;
    let end = Instant::now();
    let generation = &result[0];
    let n = generation.output_ids.len();
    let ttft = first_token_at.map(|t| t - start).unwrap_or_default();
    let decode = end - first_token_at.unwrap_or(end);
    eprintln!(
        "pagoda: prompt {} tokens, prefill {:.1} ms ({:.1} tok/s); generated {n} tokens ({:?}), decode {:.1} tok/s",
        prompt_ids.len(),
        ttft.as_secs_f64() * 1e3,
        prompt_ids.len() as f64 / ttft.as_secs_f64().max(1e-9),
        generation.stop,
        (n.saturating_sub(1)) as f64 / decode.as_secs_f64().max(1e-9),
    );
    Ok(())
}
