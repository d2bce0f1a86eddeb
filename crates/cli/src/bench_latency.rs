//! `pagoda bench latency`: single-sequence prefill and decode speed, and decode as a fraction of
//! the memory-bandwidth bound measured in the same invocation.
//!
//! Decode of one sequence reads every weight once per token plus the KV cache so far, so
//! `bound tok/s = read GB/s ÷ bytes read per token`; the fraction says how close the forward pass
//! gets to the machine's limit.

mod aligned;

use std::time::Instant;

use clap::Args;
use pagoda_core::SamplingParams;
use pagoda_model::bandwidth::{measure_core_round_trip_ns, MemoryState, ReadProbe};
use pagoda_model::generate::{generate, GenerateOptions, GenerationRequest};
use pagoda_model::ops::pool::JobTimeline;
use pagoda_model::synth::random_prompt;
use pagoda_model::ModelRunner;
use serde::Serialize;

use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens prefilled in one step.
    #[arg(long, default_value_t = 512)]
    pub input_len: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Measured runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub iterations: usize,
    /// Bandwidth probe buffer, MiB.
    #[arg(long, default_value_t = 1024)]
    pub probe_mib: usize,
    /// After the measured runs, one more that pauses for a bandwidth probe every this many decoded
    /// tokens and sets each stretch against the probes beside it (0, or `--output-len 0`: no such
    /// run). The headline fraction stays the strict one.
    #[arg(long, default_value_t = 16)]
    pub aligned_segment: usize,
    /// After the measured runs, one more with the kernel pool's jobs timed: per decoded token,
    /// the parallel jobs, the time inside them, the time between them (the calling thread alone:
    /// norms, RoPE, activation quantization, sampling) and the workers' idle time inside jobs.
    #[arg(long)]
    pub timeline: bool,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The kernel pool's jobs per decoded token, from the `--timeline` run.
#[derive(Serialize)]
struct TimelineReport {
    jobs_per_token: f64,
    inside_jobs_ms_per_token: f64,
    /// From a job's join to the next job's publication: the calling thread alone.
    outside_jobs_ms_per_token: f64,
    /// Outside ÷ (inside + outside).
    outside_jobs_fraction: f64,
    /// Summed over the workers.
    workers_idle_ms_per_token: f64,
}

impl TimelineReport {
    fn new(t: &JobTimeline, tokens: usize) -> Self {
        let per_token = |d: std::time::Duration| d.as_secs_f64() * 1e3 / tokens.max(1) as f64;
        let (inside, outside) = (per_token(t.inside_jobs), per_token(t.between_jobs));
        Self {
            jobs_per_token: t.jobs as f64 / tokens.max(1) as f64,
            inside_jobs_ms_per_token: inside,
            outside_jobs_ms_per_token: outside,
            outside_jobs_fraction: outside / (inside + outside).max(1e-12),
            workers_idle_ms_per_token: per_token(t.workers_idle),
        }
    }
}

/// Decode against the bandwidth of the same memory state (see [`MemoryState`]): the runs with a
/// round trip in that state just before and just after them, and the best probe followed by one.
#[derive(Serialize)]
struct MemoryStateReport {
    state: &'static str,
    runs: usize,
    /// Median of those runs.
    decode_tok_s: f64,
    bandwidth_gb_s: f64,
    decode_bound_tok_s: f64,
    decode_bandwidth_fraction: f64,
}

/// A probe's best GB/s and the round trip measured just after it (see [`run`]).
type Probe = (f64, Option<f64>);

/// Per memory state with at least one run wholly in it: see [`MemoryStateReport`].
/// Run `i` (decode tok/s `decodes[i]`) lies between `probes[i]` and `probes[i + 1]`.
fn by_memory_state(
    decodes: &[f64],
    probes: &[Probe],
    bytes_per_token: f64,
) -> Vec<MemoryStateReport> {
    let in_state = |ns: Option<f64>, state| ns.map(MemoryState::from_round_trip_ns) == Some(state);
    MemoryState::ALL
        .iter()
        .filter_map(|&state| {
            let decodes: Vec<f64> = decodes
                .iter()
                .zip(probes.windows(2))
                .filter(|(_, around)| around.iter().all(|p| in_state(p.1, state)))
                .map(|(&decode, _)| decode)
                .collect();
            if decodes.is_empty() {
                return None;
            }
            // A run wholly in the state has probes in it on both sides.
            let bandwidth = probes
                .iter()
                .filter(|(_, ns)| in_state(*ns, state))
                .map(|(gb_s, _)| *gb_s)
                .reduce(f64::max)?;
            let (decode, bound) = (median(&decodes), bandwidth * 1e9 / bytes_per_token);
            Some(MemoryStateReport {
                state: state.name(),
                runs: decodes.len(),
                decode_tok_s: decode,
                bandwidth_gb_s: bandwidth,
                decode_bound_tok_s: bound,
                decode_bandwidth_fraction: decode / bound,
            })
        })
        .collect()
}

#[derive(Serialize)]
struct Report {
    model: String,
    dtype: &'static str,
    threads: usize,
    input_len: usize,
    output_len: usize,
    iterations: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    prefill_tok_s_runs: Vec<f64>,
    decode_tok_s_runs: Vec<f64>,
    /// The best read bandwidth any probe of this invocation measured (the bound's basis).
    bandwidth_gb_s: f64,
    /// The probe before the first run; `bandwidth_gb_s_runs` are the probes after each run.
    bandwidth_before_gb_s: f64,
    bandwidth_gb_s_runs: Vec<f64>,
    weight_bytes_per_token: usize,
    kv_bytes_per_token: usize,
    decode_bound_tok_s: f64,
    /// Median decode tok/s ÷ the bound at `bandwidth_gb_s`.
    decode_bandwidth_fraction: f64,
    /// Each run against the better of the two probes around it, the one before and the one
    /// after (diagnostic: the machine's bandwidth drifts, and a run is not flattered by a probe
    /// that landed in a slow moment on one side of it).
    decode_bandwidth_fraction_runs: Vec<f64>,
    /// After each run: a cache line's round trip between two pinned threads, ns (which CPUs the
    /// VM's threads share: see `measure_core_round_trip_ns`); null where it cannot be measured.
    /// Each follows that run's probe; `core_round_trip_before_ns` follows the first probe.
    core_round_trip_ns_runs: Vec<Option<f64>>,
    core_round_trip_before_ns: Option<f64>,
    /// The fraction per memory state (diagnostic; the headline fraction stays the strict one).
    memory_states: Vec<MemoryStateReport>,
    /// With `--aligned-segment N` (N > 0): one more run with a probe every N decoded tokens.
    aligned: Option<aligned::AlignedReport>,
    /// With `--timeline`: the pool's jobs in one more run (null otherwise).
    timeline: Option<TimelineReport>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The measured runs' request: the whole prompt in one prefill step, then `output_len` greedy
/// tokens whatever they are (the first generated token is the prefill's).
fn measured_request(prompt: &[u32], output_len: usize) -> (GenerationRequest, GenerateOptions) {
    let request = GenerationRequest {
        prompt_ids: prompt.to_vec(),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(output_len + 1)
        },
    };
    let options = GenerateOptions {
        prefill_chunk: prompt.len(),
    };
    (request, options)
}

/// One run: (prefill tok/s, decode tok/s, and with `timeline` the pool's jobs over the decode
/// steps with the number of tokens they decoded).
fn run_once(
    runner: &mut ModelRunner,
    prompt: &[u32],
    output_len: usize,
    timeline: bool,
) -> anyhow::Result<(f64, f64, Option<TimelineReport>)> {
    let (request, options) = measured_request(prompt, output_len);
    let start = Instant::now();
    let mut stamps = Vec::with_capacity(output_len + 1);
    let pool = pagoda_model::ops::pool::global();
    generate(runner, &[request], &options, |_| {
        stamps.push(Instant::now());
        if timeline && stamps.len() == 1 {
            pool.timeline_start(); // the prompt is in: decode steps from here
        }
    })?;
    let jobs = timeline.then(|| pool.timeline_stop());
    let (first, last) = match (stamps.first(), stamps.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => anyhow::bail!("no tokens were generated"),
    };
    let prefill = prompt.len() as f64 / (first - start).as_secs_f64();
    let decode = (stamps.len() - 1) as f64 / (last - first).as_secs_f64().max(1e-9);
    let jobs = jobs.map(|t| TimelineReport::new(&t, stamps.len() - 1));
    Ok((prefill, decode, jobs))
}

pub fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let mut loaded = args.model.load()?;
    let runner = &mut loaded.runner;
    let config = runner.config().clone();
    if args.input_len + args.output_len + 1 > config.max_context_len {
        anyhow::bail!(
            "--input-len {} + --output-len {} exceeds the model's context of {} tokens",
            args.input_len,
            args.output_len,
            config.max_context_len
        );
    }
    // Random prompt tokens: speed does not depend on them.
    let prompt = random_prompt(args.input_len, config.vocab_size);
    // Warm-up: touches the weights, the thread pool and the KV pages this run uses.
    run_once(runner, &prompt, 8, false)?;
    let mut prefill_runs = Vec::new();
    let mut decode_runs = Vec::new();
    let weight_bytes = runner.model.weight_bytes_per_step();
    // The average decode step attends over the prompt plus half the output.
    let kv_per_position = runner.kv.bytes_per_token(&config);
    let kv_bytes = kv_per_position * (args.input_len + args.output_len / 2);
    // This machine's bandwidth drifts by 2× within a minute: a probe precedes the first run and
    // follows every run, and the bound uses the best any probe of the invocation read (the
    // strict choice: the fraction is never flattered by a probe that happened to land in a slow
    // moment). Per-run fractions against the better of each run's two probes are reported too.
    let bytes_per_token = (weight_bytes + kv_bytes) as f64;
    // Each probe is followed by the round trip that tells the memory state it saw.
    let buffer = ReadProbe::new(args.probe_mib << 20);
    let probe = || -> Probe {
        let bandwidth = buffer.measure(5).best_gb_s;
        (bandwidth, measure_core_round_trip_ns())
    };
    let mut probes = vec![probe()];
    for _ in 0..args.iterations.max(1) {
        let (p, d, _) = run_once(runner, &prompt, args.output_len, false)?;
        probes.push(probe());
        prefill_runs.push(p);
        decode_runs.push(d);
    }
    let (before, after_runs) = (probes[0], &probes[1..]);
    let fraction_runs = decode_runs
        .iter()
        .zip(probes.windows(2))
        .map(|(d, around)| d / (around[0].0.max(around[1].0) * 1e9 / bytes_per_token))
        .collect();
    // (Nothing to align without decoded tokens.)
    let aligned = (args.aligned_segment > 0 && args.output_len > 0)
        .then(|| {
            aligned::run(
                runner,
                &prompt,
                args.output_len,
                args.aligned_segment,
                &buffer,
                |context| (weight_bytes + kv_per_position * context) as f64,
            )
        })
        .transpose()?;
    let timeline = if args.timeline {
        run_once(runner, &prompt, args.output_len, true)?.2
    } else {
        None
    };
    let bandwidth_gb_s = probes.iter().map(|p| p.0).fold(0.0, f64::max);
    let decode = median(&decode_runs);
    let bound = bandwidth_gb_s * 1e9 / bytes_per_token;
    let memory_states = by_memory_state(&decode_runs, &probes, bytes_per_token);
    let report = Report {
        model: loaded.name.clone(),
        dtype: runner.model.weight_kind().name(),
        threads: pagoda_model::ops::pool::global().threads(),
        input_len: args.input_len,
        output_len: args.output_len,
        iterations: args.iterations.max(1),
        prefill_tok_s: median(&prefill_runs),
        decode_tok_s: decode,
        prefill_tok_s_runs: prefill_runs,
        decode_tok_s_runs: decode_runs,
        bandwidth_gb_s,
        bandwidth_before_gb_s: before.0,
        bandwidth_gb_s_runs: after_runs.iter().map(|p| p.0).collect(),
        weight_bytes_per_token: weight_bytes,
        kv_bytes_per_token: kv_bytes,
        decode_bound_tok_s: bound,
        decode_bandwidth_fraction: decode / bound,
        decode_bandwidth_fraction_runs: fraction_runs,
        core_round_trip_ns_runs: after_runs.iter().map(|p| p.1).collect(),
        core_round_trip_before_ns: before.1,
        memory_states,
        aligned,
        timeline,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "model                 {} ({}, {} threads)",
            report.model, report.dtype, report.threads
        );
        println!(
            "prefill ({} tokens)    {:.1} tok/s (median of {})",
            report.input_len, report.prefill_tok_s, report.iterations
        );
        println!(
            "decode ({} tokens)     {:.1} tok/s (median of {})",
            report.output_len, report.decode_tok_s, report.iterations
        );
        println!(
            "memory read bandwidth {:.1} GB/s (best of the probes before the first run and after each, each best of 5, {} MiB, {} threads)",
            report.bandwidth_gb_s, args.probe_mib, report.threads
        );
        println!(
            "bytes read per token  {:.1} MB weights + {:.1} MB KV",
            weight_bytes as f64 / 1e6,
            kv_bytes as f64 / 1e6
        );
        println!(
            "decode bound          {:.1} tok/s",
            report.decode_bound_tok_s
        );
        println!(
            "decode / bound        {:.1} % (median decode; per run against the better of the probes before and after it: {})",
            report.decode_bandwidth_fraction * 100.0,
            report
                .decode_bandwidth_fraction_runs
                .iter()
                .map(|f| format!("{:.0} %", f * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "core round trip       {} (after each run; ≈ 60–170 ns: threads on one CCD, ≈ 300–630 ns: on two, the faster memory state here)",
            report
                .core_round_trip_ns_runs
                .iter()
                .map(|t| t.map_or("n/a".to_string(), |ns| format!("{ns:.0} ns")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for m in &report.memory_states {
            println!(
                "in state {:<12} {} run(s): decode {:.1} tok/s = {:.1} % of the best probe in that state ({:.1} GB/s)",
                m.state,
                m.runs,
                m.decode_tok_s,
                m.decode_bandwidth_fraction * 100.0,
                m.bandwidth_gb_s
            );
        }
        if let Some(a) = &report.aligned {
            println!(
                "aligned decode        {:.1} tok/s, {:.1} % of the probes beside each stretch of {} tokens (probes {} GB/s; one more run)",
                a.decode_tok_s,
                a.decode_bandwidth_fraction * 100.0,
                a.segment_tokens,
                a.probe_gb_s
                    .iter()
                    .map(|g| format!("{g:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(t) = &report.timeline {
            println!(
                "pool timeline         {:.1} parallel jobs per token: {:.3} ms inside them, {:.3} ms between them ({:.1} %: the calling thread alone), workers idle {:.3} ms inside jobs (one more run, timed)",
                t.jobs_per_token,
                t.inside_jobs_ms_per_token,
                t.outside_jobs_ms_per_token,
                t.outside_jobs_fraction * 100.0,
                t.workers_idle_ms_per_token
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_sets_its_own_runs_against_its_own_best_probe() {
        let (one, two) = (Some(100.0), Some(450.0));
        // Run i lies between probes i and i + 1.
        let runs = [
            40.0, // one CCD before and after
            44.0, // one CCD before and after
            60.0, // straddles the states: in neither
            50.0, // two CCDs before and after
            30.0, // no round trip after it
        ];
        let probes = [
            (45.0, one),
            (48.0, one),
            (46.0, one),
            (80.0, two),
            (70.0, two),
            (90.0, None),
        ];
        let states = by_memory_state(&runs, &probes, 1e9);
        assert_eq!(states.len(), 2);
        let (a, b) = (&states[0], &states[1]);
        assert_eq!((a.state, a.runs, a.decode_tok_s), ("one_ccd", 2, 42.0));
        assert_eq!((a.bandwidth_gb_s, a.decode_bound_tok_s), (48.0, 48.0));
        assert!((a.decode_bandwidth_fraction - 42.0 / 48.0).abs() < 1e-12);
        assert_eq!(
            (b.state, b.runs, b.decode_tok_s, b.bandwidth_gb_s),
            ("two_ccd", 1, 50.0, 80.0)
        );
        // No run wholly in a state (across a change, or without a round trip): no entry.
        assert!(by_memory_state(&runs[2..3], &probes[2..4], 1e9).is_empty());
        assert!(by_memory_state(&runs[4..], &probes[4..], 1e9).is_empty());
    }
}
