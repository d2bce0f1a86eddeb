//! `pagoda bench prefix-cache`: what automatic prefix caching saves on a shared-prefix workload.
//!
//! Many requests share a few long prefixes (a system prompt, few-shot examples) and differ in a
//! short suffix. The same requests, arriving at the same (seeded Poisson, or all-at-once) times,
//! run through an engine with prefix caching and then through one without; the report gives each
//! run's TTFT statistics, throughput and prefix-cache hit rate (the counters behind
//! `pagoda:prefix_cache_hits_total` / `pagoda:prefix_cache_queries_total`), and the TTFT ratio.

use std::time::{Duration, Instant};

use clap::Args;
use pagoda_bench::metrics::Summary;
use pagoda_core::{RequestId, SamplingParams, TokenId};
use pagoda_engine::engine::LlmEngine;
use pagoda_model::LoadedModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::engine_args::EngineArgs;
use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct PrefixCacheArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 200)]
    pub num_prompts: usize,
    /// Tokens of each shared prefix.
    #[arg(long, default_value_t = 1024)]
    pub prefix_len: usize,
    /// Distinct prefixes; request i uses prefix i mod this.
    #[arg(long, default_value_t = 1)]
    pub num_prefixes: usize,
    /// Unique tokens after the prefix.
    #[arg(long, default_value_t = 32)]
    pub suffix_len: usize,
    #[arg(long, default_value_t = 32)]
    pub output_len: usize,
    /// Requests per second (Poisson arrivals); `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
struct RunReport {
    prefix_caching: bool,
    elapsed_s: f64,
    mean_ttft_ms: f64,
    median_ttft_ms: f64,
    p99_ttft_ms: f64,
    output_tok_s: f64,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
    prefix_cache_hit_rate: f64,
    prompt_tokens_cached: u64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    num_prompts: usize,
    prefix_len: usize,
    num_prefixes: usize,
    suffix_len: usize,
    output_len: usize,
    request_rate: f64,
    with_caching: RunReport,
    without_caching: RunReport,
    /// Mean TTFT with caching ÷ mean TTFT without.
    ttft_ratio: f64,
}

struct Workload {
    prompts: Vec<Vec<TokenId>>,
    /// Arrival offsets from the start of a run.
    arrivals: Vec<Duration>,
}

fn workload(args: &PrefixCacheArgs, vocab: usize) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let token = |rng: &mut ChaCha8Rng| rng.random_range(3..vocab as TokenId);
    let prefixes: Vec<Vec<TokenId>> = (0..args.num_prefixes.max(1))
        .map(|_| (0..args.prefix_len).map(|_| token(&mut rng)).collect())
        .collect();
    let prompts = (0..args.num_prompts)
        .map(|i| {
            let mut p = prefixes[i % prefixes.len()].clone();
            p.extend((0..args.suffix_len.max(1)).map(|_| token(&mut rng)));
            p
        })
        .collect();
    let mut at = 0.0f64;
    let arrivals = (0..args.num_prompts)
        .map(|_| {
            if args.request_rate.is_finite() {
                // Exponential gaps: -ln(U) / rate.
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                at += -u.ln() / args.request_rate;
            }
            Duration::from_secs_f64(at)
        })
        .collect();
    Workload { prompts, arrivals }
}

fn run_once(
    args: &PrefixCacheArgs,
    caching: bool,
    workload: &Workload,
) -> anyhow::Result<RunReport> {
    let LoadedModel {
        runner, tokenizer, ..
    } = args.model.load()?;
    let mut config = args.engine.config()?;
    config.enable_prefix_caching = caching;
    let mut engine = LlmEngine::new(runner, Some(tokenizer), &config);
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(args.output_len.max(1))
    };
    // Warm-up on unrelated tokens (it must not seed the cache with the workload's prefix).
    engine.add_request(RequestId(u64::MAX), vec![1; 64], params.clone())?;
    while engine.has_unfinished() {
        engine.step();
    }
    let before = engine.snapshot();
    let start = Instant::now();
    let mut next = 0;
    let mut ttfts = Vec::with_capacity(workload.prompts.len());
    let mut output_tokens = 0usize;
    while next < workload.prompts.len() || engine.has_unfinished() {
        let now = start.elapsed();
        while next < workload.prompts.len() && workload.arrivals[next] <= now {
            let arrival = start + workload.arrivals[next];
            engine.add_request_at(
                RequestId(next as u64),
                workload.prompts[next].clone(),
                params.clone(),
                arrival,
                None,
            )?;
            next += 1;
        }
        if !engine.has_unfinished() {
            if let Some(&at) = workload.arrivals.get(next) {
                std::thread::sleep(at.saturating_sub(start.elapsed()));
            }
            continue;
        }
        for out in engine.step() {
            output_tokens += 1;
            if out.num_output_tokens == 1 {
                if let Some(t) = out.timings.time_to_first_token() {
                    ttfts.push(t.as_secs_f64() * 1e3);
                }
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        ttfts.len() == workload.prompts.len(),
        "{} of {} requests produced a first token",
        ttfts.len(),
        workload.prompts.len()
    );
    let ttft = Summary::of(&ttfts);
    let after = engine.snapshot();
    let queries = after.prefix_cache_queries - before.prefix_cache_queries;
    let hits = after.prefix_cache_hits - before.prefix_cache_hits;
    Ok(RunReport {
        prefix_caching: caching,
        elapsed_s,
        mean_ttft_ms: ttft.mean,
        median_ttft_ms: ttft.median,
        p99_ttft_ms: ttft.p99,
        output_tok_s: output_tokens as f64 / elapsed_s,
        prefix_cache_queries: queries,
        prefix_cache_hits: hits,
        prefix_cache_hit_rate: hits as f64 / queries.max(1) as f64,
        prompt_tokens_cached: after.prompt_tokens_cached - before.prompt_tokens_cached,
    })
}

pub fn run(args: PrefixCacheArgs) -> anyhow::Result<()> {
    let probe = args.model.load()?;
    let name = probe.name.clone();
    let vocab = probe.runner.config().vocab_size;
    drop(probe);
    let workload = workload(&args, vocab);
    let with_caching = run_once(&args, true, &workload)?;
    eprintln!(
        "with caching: mean TTFT {:.0} ms, hit rate {:.3}",
        with_caching.mean_ttft_ms, with_caching.prefix_cache_hit_rate
    );
    let without_caching = run_once(&args, false, &workload)?;
    let report = Report {
        model: name,
        num_prompts: args.num_prompts,
        prefix_len: args.prefix_len,
        num_prefixes: args.num_prefixes,
        suffix_len: args.suffix_len,
        output_len: args.output_len,
        request_rate: args.request_rate,
        ttft_ratio: with_caching.mean_ttft_ms / without_caching.mean_ttft_ms.max(1e-9),
        with_caching,
        without_caching,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "model {}: {} requests, prefix {} × {}, suffix {}, output {}, rate {}",
        report.model,
        report.num_prompts,
        report.num_prefixes,
        report.prefix_len,
        report.suffix_len,
        report.output_len,
        report.request_rate
    );
    for r in [&report.with_caching, &report.without_caching] {
        println!(
            "caching {:<5} TTFT mean {:.0} ms, median {:.0} ms, p99 {:.0} ms; {:.1} output tok/s; hit rate {:.3} ({} of {} tokens); {:.1} s",
            r.prefix_caching,
            r.mean_ttft_ms,
            r.median_ttft_ms,
            r.p99_ttft_ms,
            r.output_tok_s,
            r.prefix_cache_hit_rate,
            r.prefix_cache_hits,
            r.prefix_cache_queries,
            r.elapsed_s
        );
    }
    println!("mean TTFT with / without caching: {:.3}", report.ttft_ratio);
    Ok(())
}
