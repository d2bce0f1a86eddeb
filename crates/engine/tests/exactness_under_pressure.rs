//! Exactness under memory pressure: every stories260k golden prompt, plus 64 sampled copies
//! (temperature 0.8, distinct seeds), submitted at once to an engine whose KV pool is so small
//! that requests are preempted and recomputed, give exactly the tokens each gives when run alone;
//! the greedy ones also equal the transformers goldens.

mod common;

use std::collections::HashMap;

use common::{engine_with_blocks, run_to_completion as run};
use pagoda_core::{RequestId, SamplingParams};
use pagoda_engine::engine::EngineConfig;
use pagoda_model::test_support::{golden_json, shared_dir, token_ids as ids};

#[test]
fn preempted_and_batched_requests_give_their_solo_tokens() {
    let Some(shared) = shared_dir("exactness_under_pressure") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let model = shared.join("models/stories260k");

    let mut requests = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(64)
        };
        requests.push((RequestId(i as u64), ids(&case["prompt_token_ids"]), params));
    }
    for k in 0..64u64 {
        let params = SamplingParams {
            temperature: 0.8,
            seed: Some(k),
            max_tokens: 64,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let prompt = ids(&cases[k as usize % cases.len()]["prompt_token_ids"]);
        requests.push((RequestId(100 + k), prompt, params));
    }

    // Alone: one request at a time in a roomy cache.
    let roomy = EngineConfig::default();
    let mut solo_engine = engine_with_blocks(&model, 4, 512, &roomy);
    let mut solo = HashMap::new();
    for (id, prompt, params) in &requests {
        solo_engine
            .add_request(*id, prompt.clone(), params.clone())
            .unwrap();
        solo.extend(run(&mut solo_engine));
    }
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            solo[&RequestId(i as u64)],
            ids(&case["greedy_token_ids"]),
            "golden case {i}"
        );
    }

    // Together, with 48 blocks of 4 tokens (a request needs up to 19) and a small token budget.
    let tight = EngineConfig {
        max_num_batched_tokens: 48,
        max_num_seqs: 16,
        ..EngineConfig::default()
    };
    let mut pressed = engine_with_blocks(&model, 4, 48, &tight);
    for (id, prompt, params) in &requests {
        pressed
            .add_request(*id, prompt.clone(), params.clone())
            .unwrap();
    }
    let together = run(&mut pressed);
    assert!(
        pressed.stats.num_preemptions > 0,
        "the pool must be small enough to preempt"
    );
    for (id, _, _) in &requests {
        assert_eq!(together[id], solo[id], "{id} differs under pressure");
    }
    assert_eq!(
        pressed.scheduler().kv().pool().num_free(),
        48,
        "every block back in the pool"
    );
    eprintln!("preemptions: {}", pressed.stats.num_preemptions);
}
