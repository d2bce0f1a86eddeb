//! Prefix caching changes no token: every stories260k golden prompt sent 8 times plus once with
//! n = 4 (four requests of one prompt, as the server submits them), interleaved with sampled
//! traffic on the other prompts, gives exactly the golden greedy ids, and the whole run gives the
//! same tokens with caching on and off — with a pool small enough that cached blocks are evicted
//! and requests are preempted (and resume from their own cached blocks).

use std::collections::HashMap;

use pagoda_core::{RequestId, SamplingParams};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_model::kv_cache::KvCache;
use pagoda_model::test_support::{golden_json, shared_dir, token_ids as ids};
use pagoda_model::{load_model_dir, RunnerOptions};

fn engine(model: &std::path::Path, block_size: usize, num_blocks: usize, caching: bool) -> LlmEngine {
    let probe = load_model_dir(
        model,
        &RunnerOptions {
            block_size,
            kv_cache_bytes: 1 << 20,
            dtype: None,
        },
    )
    .unwrap();
    let block_bytes = KvCache::block_bytes(probe.runner.config(), block_size);
    let options = RunnerOptions {
        block_size,
        kv_cache_bytes: num_blocks * block_bytes,
        dtype: None,
    };
    let loaded = load_model_dir(model, &options).unwrap();
    let config = EngineConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 24,
        enable_prefix_caching: caching,
    };
    LlmEngine::new(loaded.runner, Some(loaded.tokenizer), &config)
}

type Traffic = Vec<(RequestId, Vec<u32>, SamplingParams)>;

/// Golden case i's greedy copies have ids `1000 * (i + 1) + k`; sampled traffic has ids < 1000.
fn traffic(cases: &[serde_json::Value]) -> Traffic {
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(64)
    };
    let mut requests = Vec::new();
    let mut next_sampled = 0u64;
    for round in 0..8u64 {
        for (i, case) in cases.iter().enumerate() {
            let prompt = ids(&case["prompt_token_ids"]);
            let copies = if round == 0 { 5 } else { 1 };
            for c in 0..copies {
                let id = 1000 * (i as u64 + 1) + round * 10 + c;
                requests.push((RequestId(id), prompt.clone(), greedy.clone()));
            }
            // Other traffic: a sampled request on the next prompt.
            let other = ids(&cases[(i + 1) % cases.len()]["prompt_token_ids"]);
            let sampled = SamplingParams {
                temperature: 0.8,
                seed: Some(next_sampled),
                max_tokens: 48,
                ignore_eos: true,
                ..SamplingParams::default()
            };
            requests.push((RequestId(next_sampled), other, sampled));
            next_sampled += 1;
        }
    }
    requests
}

fn run(engine: &mut LlmEngine, requests: &Traffic) -> HashMap<RequestId, Vec<u32>> {
    for (id, prompt, params) in requests {
        engine.add_request(*id, prompt.clone(), params.clone()).unwrap();
    }
    let mut tokens: HashMap<RequestId, Vec<u32>> = HashMap::new();
    while engine.has_unfinished() {
        for out in engine.step() {
            tokens.entry(out.id).or_default().push(out.token.token);
        }
        engine.scheduler().check_invariants().unwrap();
    }
    tokens
}

#[test]
fn caching_on_and_off_give_the_golden_tokens() {
    let Some(shared) = shared_dir("prefix_cache_exactness") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let model = shared.join("models/stories260k");
    let requests = traffic(cases);

    for block_size in [1, 4] {
        // 8 × 5 golden-prompt requests + 24 sampled, each up to 69 tokens; the pool holds ~10.
        let num_blocks = 700 / block_size;
        let mut off = engine(&model, block_size, num_blocks, false);
        let without = run(&mut off, &requests);
        let mut on = engine(&model, block_size, num_blocks, true);
        let with = run(&mut on, &requests);

        let stats = on.snapshot();
        assert!(stats.prefix_cache_hits > 0, "block size {block_size}: no hits");
        assert!(on.stats.num_preemptions > 0, "block size {block_size}: no pressure");
        assert_eq!(off.snapshot().prefix_cache_hits, 0);
        for (id, prompt, _) in &requests {
            assert_eq!(with[id], without[id], "{id} differs with caching (block size {block_size})");
            if id.0 >= 1000 {
                let case = cases
                    .iter()
                    .find(|c| ids(&c["prompt_token_ids"]) == *prompt)
                    .unwrap();
                assert_eq!(with[id], ids(&case["greedy_token_ids"]), "{id} vs golden");
            }
        }
        assert_eq!(on.scheduler().kv().pool().num_free(), num_blocks);
        eprintln!(
            "block size {block_size}: hits {} of {} queried tokens, {} preemptions",
            stats.prefix_cache_hits, stats.prefix_cache_queries, on.stats.num_preemptions
        );
    }
}
