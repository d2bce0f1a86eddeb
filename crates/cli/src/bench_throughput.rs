//! `pagoda bench throughput`: offline throughput of the engine (like `vllm bench throughput`).
//!
//! All requests (random prompt ids, lengths uniform in `len × [1 − r, 1 + r]`, EOS ignored) are
//! handed to the engine at once and it runs until every one finished. `--scheduler static` also
//! runs the same requests with static batching (up to max-num-seqs admitted together, the next
//! batch only when the whole batch finished), and `--single-seq` measures one sequence's decode
//! speed alone, so the ratios come from one invocation on one build.

use std::time::Instant;

use clap::{Args, ValueEnum};
use pagoda_core::{RequestId, SamplingParams, TokenId};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_model::LoadedModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::engine_args::EngineArgs;
use crate::model_args::ModelArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulerKind {
    /// Continuous batching only.
    Continuous,
    /// Continuous batching and, on the same requests, static batching.
    Static,
}

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 256)]
    pub num_prompts: usize,
    /// Mean prompt length in tokens.
    #[arg(long, default_value_t = 272)]
    pub input_len: usize,
    /// Mean output length in tokens.
    #[arg(long, default_value_t = 136)]
    pub output_len: usize,
    /// Lengths are uniform in len × [1 − r, 1 + r].
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// `static` also measures static batching on the same requests.
    #[arg(long, value_enum, default_value = "continuous")]
    pub scheduler: SchedulerKind,
    /// Also measure single-sequence decode tok/s (input-len prompt, output-len tokens).
    #[arg(long)]
    pub single_seq: bool,
    /// Seed of the random prompts and lengths.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured run over all requests.
#[derive(Serialize, Debug, Clone)]
struct RunReport {
    elapsed_s: f64,
    requests_per_s: f64,
    output_tok_s: f64,
    total_tok_s: f64,
    num_steps: u64,
    mean_tokens_per_step: f64,
    num_preemptions: usize,
    /// Speculative decoding: draft tokens verified, and of those accepted.
    num_draft_tokens: u64,
    num_accepted_tokens: u64,
    /// Shares of the engine's step time: the forward pass (kernels), the sampler, and the rest
    /// (scheduling, batch metadata, detokenization): the per-step overhead.
    forward_time_fraction: f64,
    sample_time_fraction: f64,
    step_overhead_fraction: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    dtype: &'static str,
    threads: usize,
    num_prompts: usize,
    total_prompt_tokens: usize,
    total_output_tokens: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    /// The continuous-batching run, at the top level.
    #[serde(flatten)]
    continuous: RunReport,
    #[serde(rename = "static")]
    static_batching: Option<RunReport>,
    continuous_over_static: Option<f64>,
    single_seq_decode_tok_s: Option<f64>,
    continuous_over_single_seq: Option<f64>,
}

struct BenchRequest {
    prompt_ids: Vec<TokenId>,
    output_len: usize,
}

fn uniform_len(rng: &mut ChaCha8Rng, mean: usize, ratio: f64) -> usize {
    let low = ((mean as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let high = ((mean as f64) * (1.0 + ratio)).round().max(low as f64) as usize;
    rng.random_range(low..=high)
}

fn make_requests(args: &ThroughputArgs, vocab: usize) -> Vec<BenchRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    (0..args.num_prompts)
        .map(|_| {
            let input_len = uniform_len(&mut rng, args.input_len, args.range_ratio);
            let output_len = uniform_len(&mut rng, args.output_len, args.range_ratio);
            // Random ids past the first few (specials); speed does not depend on them.
            let prompt_ids = (0..input_len)
                .map(|_| rng.random_range(3..vocab as TokenId))
                .collect();
            BenchRequest {
                prompt_ids,
                output_len,
            }
        })
        .collect()
}

fn params(output_len: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(output_len)
    }
}

/// Runs `requests` through the engine, `batch` at a time (all at once for continuous batching:
/// the engine's own limits then decide what runs together).
fn run_engine(
    engine: &mut LlmEngine,
    requests: &[BenchRequest],
    batch: usize,
) -> anyhow::Result<RunReport> {
    let steps_before = engine.stats.num_steps;
    let tokens_before = engine.stats.num_scheduled_tokens;
    let preemptions_before = engine.stats.num_preemptions;
    let (drafts_before, accepted_before) = (
        engine.stats.num_draft_tokens,
        engine.stats.num_accepted_tokens,
    );
    let (step_before, forward_before, sample_before) = (
        engine.stats.step_time_total,
        engine.stats.forward_time_total,
        engine.stats.sample_time_total,
    );
    let start = Instant::now();
    let mut output_tokens = 0usize;
    let mut next_id = 0u64;
    for chunk in requests.chunks(batch.max(1)) {
        for r in chunk {
            engine.add_request(
                RequestId(next_id),
                r.prompt_ids.clone(),
                params(r.output_len),
            )?;
            next_id += 1;
        }
        while engine.has_unfinished() {
            output_tokens += engine.step().len();
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let prompt_tokens: usize = requests.iter().map(|r| r.prompt_ids.len()).sum();
    let expected: usize = requests.iter().map(|r| r.output_len).sum();
    anyhow::ensure!(
        output_tokens == expected,
        "generated {output_tokens} tokens, expected {expected}"
    );
    let num_steps = engine.stats.num_steps - steps_before;
    let step_s = (engine.stats.step_time_total - step_before)
        .as_secs_f64()
        .max(f64::MIN_POSITIVE);
    let forward_s = (engine.stats.forward_time_total - forward_before).as_secs_f64();
    let sample_s = (engine.stats.sample_time_total - sample_before).as_secs_f64();
    Ok(RunReport {
        elapsed_s,
        requests_per_s: requests.len() as f64 / elapsed_s,
        output_tok_s: output_tokens as f64 / elapsed_s,
        total_tok_s: (prompt_tokens + output_tokens) as f64 / elapsed_s,
        num_steps,
        mean_tokens_per_step: (engine.stats.num_scheduled_tokens - tokens_before) as f64
            / num_steps.max(1) as f64,
        num_preemptions: engine.stats.num_preemptions - preemptions_before,
        num_draft_tokens: engine.stats.num_draft_tokens - drafts_before,
        num_accepted_tokens: engine.stats.num_accepted_tokens - accepted_before,
        forward_time_fraction: forward_s / step_s,
        sample_time_fraction: sample_s / step_s,
        step_overhead_fraction: ((step_s - forward_s - sample_s) / step_s).max(0.0),
    })
}

/// Decode tok/s of one sequence alone: output tokens after the first over the time they took.
fn single_seq_decode(engine: &mut LlmEngine, request: &BenchRequest) -> anyhow::Result<f64> {
    engine.add_request(
        RequestId(u64::MAX),
        request.prompt_ids.clone(),
        params(request.output_len.max(2)),
    )?;
    let mut last = None;
    while engine.has_unfinished() {
        for out in engine.step() {
            if out.finished.is_some() {
                last = Some(out);
            }
        }
    }
    let out = last.ok_or_else(|| anyhow::anyhow!("the single sequence did not finish"))?;
    let decode = out
        .timings
        .decode_time()
        .ok_or_else(|| anyhow::anyhow!("the single sequence has no decode timing"))?;
    Ok((out.num_output_tokens - 1) as f64 / decode.as_secs_f64().max(1e-9))
}

pub fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    let LoadedModel {
        runner,
        tokenizer,
        name,
    } = args.model.load()?;
    let mut config: EngineConfig = args.engine.config()?;
    // The runs replay the same prompts on one engine: with prefix caching a later run would reuse
    // the blocks an earlier one computed and measure that cache, not the scheduler.
    config.enable_prefix_caching = false;
    let vocab = runner.config().vocab_size;
    let dtype = runner.model.weight_kind().name();
    let requests = make_requests(&args, vocab);
    let mut engine = LlmEngine::new(runner, Some(tokenizer), &config);
    for r in &requests {
        engine
            .scheduler()
            .config()
            .check_admission(r.prompt_ids.len(), r.output_len)?;
    }
    // Warm-up: weights, thread pool, KV pages.
    if let Some(first) = requests.first() {
        let warm = BenchRequest {
            prompt_ids: first.prompt_ids.clone(),
            output_len: 4,
        };
        run_engine(&mut engine, std::slice::from_ref(&warm), 1)?;
    }
    let single_seq = if args.single_seq {
        let r = BenchRequest {
            prompt_ids: requests
                .first()
                .map(|r| r.prompt_ids.clone())
                .unwrap_or_default(),
            output_len: args.output_len,
        };
        Some(single_seq_decode(&mut engine, &r)?)
    } else {
        None
    };
    let static_batching = match args.scheduler {
        SchedulerKind::Static => Some(run_engine(&mut engine, &requests, config.max_num_seqs)?),
        SchedulerKind::Continuous => None,
    };
    let continuous = run_engine(&mut engine, &requests, requests.len())?;
    let report = Report {
        model: name,
        dtype,
        threads: pagoda_model::ops::pool::global().threads(),
        num_prompts: requests.len(),
        total_prompt_tokens: requests.iter().map(|r| r.prompt_ids.len()).sum(),
        total_output_tokens: requests.iter().map(|r| r.output_len).sum(),
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        continuous_over_static: static_batching
            .as_ref()
            .map(|s| continuous.output_tok_s / s.output_tok_s),
        static_batching,
        continuous_over_single_seq: single_seq.map(|s| continuous.output_tok_s / s),
        single_seq_decode_tok_s: single_seq,
        continuous,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "model            {} ({}, {} threads)",
        report.model, report.dtype, report.threads
    );
    println!(
        "requests         {} ({} prompt + {} output tokens)",
        report.num_prompts, report.total_prompt_tokens, report.total_output_tokens
    );
    let line = |label: &str, r: &RunReport| {
        println!(
            "{label:<16} {:.2} req/s, {:.1} output tok/s, {:.1} total tok/s ({:.1} s, {} steps, {:.0} tokens/step, {} preemptions)",
            r.requests_per_s,
            r.output_tok_s,
            r.total_tok_s,
            r.elapsed_s,
            r.num_steps,
            r.mean_tokens_per_step,
            r.num_preemptions
        );
        println!(
            "{:<16} step time: {:.1}% forward (kernels), {:.1}% sampling, {:.2}% overhead",
            "",
            100.0 * r.forward_time_fraction,
            100.0 * r.sample_time_fraction,
            100.0 * r.step_overhead_fraction
        );
        if r.num_draft_tokens > 0 {
            println!(
                "{:<16} speculative: {} of {} draft tokens accepted ({:.1}%)",
                "",
                r.num_accepted_tokens,
                r.num_draft_tokens,
                100.0 * r.num_accepted_tokens as f64 / r.num_draft_tokens as f64
            );
        }
    };
    line("continuous", &report.continuous);
    if let (Some(s), Some(ratio)) = (&report.static_batching, report.continuous_over_static) {
        line("static", s);
        println!("continuous/static {ratio:.2}× output tok/s");
    }
    if let (Some(s), Some(ratio)) = (single_seq, report.continuous_over_single_seq) {
        println!("single-seq decode {s:.1} tok/s; continuous/single {ratio:.2}×");
    }
    Ok(())
}
