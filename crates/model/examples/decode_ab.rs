//! Step-interleaved A/B of two decode implementations in one process (see `pagoda_model::ab`).
//!
//! ```sh
//! cargo run --release -p pagoda-model --example decode_ab -- MODEL [WINDOWS] [OUTPUT_LEN] [A] [B]
//! ```
//!
//! `MODEL` is a Hugging Face directory or a GGUF file. Each window is one generation of
//! `OUTPUT_LEN` tokens (default 128) after a random prompt of `PLEN` tokens (default 512) by
//! `NREQ` sequences decoding together (default 1); the switch is `A` (default 0) on even decode
//! steps and `B` (default 1) on odd ones, and a window's result is B's summed step time over A's.
//! `WINDOW=1` alternates whole windows instead (for effects that carry from one step to the next
//! through the caches). After each window the threads' cache-line round trip tells the VM's
//! state (> 200 ns: the two vCPUs on two CCDs); the summary gives the median ratio per state.
//! Before the windows, both variants decode 64 greedy tokens, and the count of equal leading
//! tokens is printed: a variant that changes results shows there.

use std::time::Instant;

use pagoda_core::SamplingParams;
use pagoda_model::ab::set_variant;
use pagoda_model::bandwidth::{measure_core_round_trip_ns, MemoryState};
use pagoda_model::generate::{generate, GenerateOptions, GenerationRequest};
use pagoda_model::synth::random_prompt;
use pagoda_model::{load_model_dir, ModelRunner, RunnerOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg_or<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Decode step times summed over even steps (A) and odd steps (B) of one generation.
fn interleaved(
    runner: &mut ModelRunner,
    request: &GenerationRequest,
    seqs: usize,
    (a, b): (u32, u32),
) -> (f64, f64) {
    let requests = vec![request.clone(); seqs];
    let options = GenerateOptions {
        prefill_chunk: request.prompt_ids.len() * seqs,
    };
    let (mut stamps, mut tokens) = (Vec::new(), 0usize);
    set_variant(a);
    generate(runner, &requests, &options, |_| {
        tokens += 1;
        if tokens.is_multiple_of(seqs) {
            stamps.push(Instant::now());
            set_variant(if stamps.len() % 2 == 1 { b } else { a });
        }
    })
    .expect("generation runs");
    set_variant(0);
    let (mut ta, mut tb) = (0.0, 0.0);
    for (i, pair) in stamps.windows(2).enumerate() {
        let dt = (pair[1] - pair[0]).as_secs_f64();
        // The step between stamps i and i + 1 ran with the variant set after stamp i, when
        // i + 1 stamps had been taken: B when that count was odd.
        if i % 2 == 0 {
            tb += dt
        } else {
            ta += dt
        }
    }
    (ta, tb)
}

/// One whole generation per variant, in the order given; half of each one's decode time (as the
/// interleaved mode gives each variant half of the steps).
fn whole(runner: &mut ModelRunner, request: &GenerationRequest, order: [u32; 2]) -> [f64; 2] {
    let options = GenerateOptions {
        prefill_chunk: request.prompt_ids.len(),
    };
    order.map(|v| {
        set_variant(v);
        let mut stamps = Vec::new();
        generate(runner, std::slice::from_ref(request), &options, |_| {
            stamps.push(Instant::now())
        })
        .expect("generation runs");
        set_variant(0);
        match (stamps.first(), stamps.last()) {
            (Some(first), Some(last)) => (*last - *first).as_secs_f64() / 2.0,
            _ => 0.0,
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: decode_ab MODEL [WINDOWS] [OUTPUT_LEN] [A] [B]");
        std::process::exit(2);
    };
    let windows: usize = arg_or(&args, 2, 10);
    let output_len: usize = arg_or(&args, 3, 128);
    let variants: (u32, u32) = (arg_or(&args, 4, 0), arg_or(&args, 5, 1));
    let (seqs, prompt_len) = (env_or("NREQ", 1).max(1), env_or("PLEN", 512));
    let whole_windows = std::env::var_os("WINDOW").is_some();

    let mut loaded =
        load_model_dir(std::path::Path::new(path), &RunnerOptions::default()).expect("model loads");
    let runner = &mut loaded.runner;
    let prompt_ids = random_prompt(prompt_len, runner.config().vocab_size);
    let request = |tokens: usize| GenerationRequest {
        prompt_ids: prompt_ids.clone(),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(tokens)
        },
    };

    let greedy = |runner: &mut ModelRunner, v: u32| {
        set_variant(v);
        let out = generate(runner, &[request(64)], &GenerateOptions::default(), |_| {})
            .expect("generation runs");
        set_variant(0);
        out.into_iter()
            .next()
            .map(|o| o.output_ids)
            .unwrap_or_default()
    };
    let (ga, gb) = (greedy(runner, variants.0), greedy(runner, variants.1));
    let same = ga.iter().zip(&gb).take_while(|(a, b)| a == b).count();
    println!(
        "greedy 64 tokens: A and B agree on the first {same} of {}",
        ga.len()
    );

    interleaved(runner, &request(9), 1, variants); // warm-up
    let (mut two_ccd, mut one_ccd) = (Vec::new(), Vec::new());
    let (mut sum_a, mut sum_b) = (0.0, 0.0);
    for w in 0..windows {
        let (ta, tb) = if whole_windows {
            let order = if w % 2 == 0 {
                [variants.0, variants.1]
            } else {
                [variants.1, variants.0]
            };
            let t = whole(runner, &request(output_len + 1), order);
            if w % 2 == 0 {
                (t[0], t[1])
            } else {
                (t[1], t[0])
            }
        } else {
            interleaved(runner, &request(output_len + 1), seqs, variants)
        };
        sum_a += ta;
        sum_b += tb;
        let round_trip = measure_core_round_trip_ns().unwrap_or(0.0);
        let half = (output_len / 2) as f64;
        println!(
            "window {w:2}: A {:6.1} tok/s, B {:6.1} tok/s, B/A time {:.3}, round trip {round_trip:.0} ns",
            half / ta,
            half / tb,
            tb / ta
        );
        match MemoryState::from_round_trip_ns(round_trip) {
            MemoryState::TwoCcd => two_ccd.push(tb / ta),
            MemoryState::OneCcd => one_ccd.push(tb / ta),
        }
    }
    println!("all windows: B/A time {:.4}", sum_b / sum_a);
    for (state, mut ratios) in [("two-CCD", two_ccd), ("one-CCD", one_ccd)] {
        ratios.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (ratios.first(), ratios.last()) {
            println!(
                "{state}: {} windows, median B/A time {:.3}, range {lo:.3}..{hi:.3}",
                ratios.len(),
                ratios[ratios.len() / 2]
            );
        }
    }
}
