//! Prefix caching and parallel sampling change no token. Every stories260k golden prompt is sent
//! 8 times, plus once with n = 4 (greedy) and once with n = 4 sampled (seeds s..s+3), interleaved
//! with sampled traffic on the other prompts, with a pool small enough that cached blocks are
//! evicted and requests preempted (resuming from their own cached blocks). Run once with caching
//! off and every request submitted alone, and once with caching on and the n = 4 requests
//! submitted as parallel-sample groups (prompt computed once, blocks shared, the partial last
//! block copied on write): both runs give the same tokens, and the greedy ones are the goldens.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{engine_with_blocks, run_to_completion};
use pagoda_core::{RequestId, SamplingParams};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_model::test_support::{golden_json, shared_dir, token_ids as ids};

fn engine(
    model: &std::path::Path,
    block_size: usize,
    num_blocks: usize,
    caching: bool,
) -> LlmEngine {
    let config = EngineConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 24,
        enable_prefix_caching: caching,
        ..EngineConfig::default()
    };
    engine_with_blocks(model, block_size, num_blocks, &config)
}

/// One submission: a lone request, or n parallel samples of one prompt.
struct Submission {
    ids: Vec<RequestId>,
    prompt: Vec<u32>,
    params: Vec<SamplingParams>,
}

/// Golden case i's greedy requests have ids `1000 * (i + 1) + k`; sampled ones have ids < 1000.
fn traffic(cases: &[serde_json::Value]) -> Vec<Submission> {
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(64)
    };
    let sampled = |seed: u64| SamplingParams {
        temperature: 0.8,
        seed: Some(seed),
        max_tokens: 48,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let mut subs = Vec::new();
    let mut next_sampled = 0u64;
    for round in 0..8u64 {
        for (i, case) in cases.iter().enumerate() {
            let prompt = ids(&case["prompt_token_ids"]);
            let id = 1000 * (i as u64 + 1) + round * 10;
            subs.push(Submission {
                ids: vec![RequestId(id)],
                prompt: prompt.clone(),
                params: vec![greedy.clone()],
            });
            if round == 0 {
                subs.push(Submission {
                    ids: (1..=4).map(|k| RequestId(id + k)).collect(),
                    prompt: prompt.clone(),
                    params: vec![greedy.clone(); 4],
                });
                subs.push(Submission {
                    ids: (0..4).map(|k| RequestId(next_sampled + k)).collect(),
                    prompt: prompt.clone(),
                    params: (0..4).map(|k| sampled(next_sampled + k)).collect(),
                });
                next_sampled += 4;
            }
            // Other traffic: a sampled request on the next prompt.
            let other = ids(&cases[(i + 1) % cases.len()]["prompt_token_ids"]);
            subs.push(Submission {
                ids: vec![RequestId(next_sampled)],
                prompt: other,
                params: vec![sampled(next_sampled)],
            });
            next_sampled += 1;
        }
    }
    subs
}

fn run(engine: &mut LlmEngine, subs: &[Submission], grouped: bool) -> HashMap<RequestId, Vec<u32>> {
    for s in subs {
        if grouped && s.ids.len() > 1 {
            engine
                .add_request_group(
                    &s.ids,
                    s.prompt.clone(),
                    s.params.clone(),
                    Instant::now(),
                    None,
                )
                .unwrap();
        } else {
            for (id, params) in s.ids.iter().zip(&s.params) {
                engine
                    .add_request(*id, s.prompt.clone(), params.clone())
                    .unwrap();
            }
        }
    }
    run_to_completion(engine)
}

#[test]
fn caching_and_parallel_sampling_give_the_solo_and_golden_tokens() {
    let Some(shared) = shared_dir("prefix_cache_exactness") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let model = shared.join("models/stories260k");
    let subs = traffic(cases);
    let prompt_len = ids(&cases[0]["prompt_token_ids"]).len();

    for block_size in [1, 4] {
        // 12 golden-prompt requests per case + 28 sampled, each up to 69 tokens; ~10 fit at once.
        let num_blocks = 700 / block_size;
        let mut off = engine(&model, block_size, num_blocks, false);
        let alone = run(&mut off, &subs, false);
        let mut on = engine(&model, block_size, num_blocks, true);
        let grouped = run(&mut on, &subs, true);

        let stats = on.snapshot();
        assert!(
            stats.prefix_cache_hits > 0,
            "block size {block_size}: no hits"
        );
        assert!(
            on.stats.num_preemptions > 0,
            "block size {block_size}: no pressure"
        );
        assert_eq!(off.snapshot().prefix_cache_hits, 0);
        let copies = on.scheduler().kv().num_cow_copies;
        if !prompt_len.is_multiple_of(block_size) {
            assert!(copies > 0, "block size {block_size}: no copy on write");
        }
        for s in &subs {
            for id in &s.ids {
                assert_eq!(
                    grouped[id], alone[id],
                    "{id} differs (block size {block_size})"
                );
                if id.0 >= 1000 {
                    let case = cases
                        .iter()
                        .find(|c| ids(&c["prompt_token_ids"]) == s.prompt)
                        .unwrap();
                    assert_eq!(
                        grouped[id],
                        ids(&case["greedy_token_ids"]),
                        "{id} vs golden"
                    );
                }
            }
        }
        assert_eq!(on.scheduler().kv().pool().num_free(), num_blocks);
        eprintln!(
            "block size {block_size}: hits {} of {} queried tokens, {} preemptions, {copies} copies on write",
            stats.prefix_cache_hits, stats.prefix_cache_queries, on.stats.num_preemptions
        );
    }
}
