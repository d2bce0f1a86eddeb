//! Speculative decoding (n-gram drafts) changes no output: the same requests, greedy and seeded
//! sampling with penalties, stop strings and short limits, batched together, give the same tokens,
//! text and finish reasons with drafts as without, in fewer steps; also when the KV pool is so
//! small that requests are preempted, when drafts are turned off above a batch size, and on
//! stories260k, whose greedy outputs stay the transformers goldens.

mod common;

use std::collections::HashMap;

use common::{builtin_engine_with, engine_with_blocks};
use pagoda_core::{FinishReason, RequestId, SamplingParams, TokenId};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_engine::speculative::SpeculativeConfig;
use pagoda_model::test_support::{golden_json, shared_dir, token_ids as ids};

type Outputs = HashMap<RequestId, Vec<(TokenId, String, Option<FinishReason>)>>;

fn speculative(k: usize) -> EngineConfig {
    EngineConfig {
        speculative: Some(SpeculativeConfig {
            num_speculative_tokens: k,
            prompt_lookup_max: 4,
            prompt_lookup_min: 1,
            disable_by_batch_size: None,
        }),
        ..EngineConfig::default()
    }
}

/// Runs every request to completion (invariants checked after each step); returns each one's
/// outputs and the number of steps.
fn run(engine: &mut LlmEngine, requests: &[(RequestId, Vec<TokenId>, SamplingParams)]) -> Outputs {
    for (id, prompt, params) in requests {
        engine
            .add_request(*id, prompt.clone(), params.clone())
            .unwrap();
    }
    let mut outputs = Outputs::new();
    while engine.has_unfinished() {
        for out in engine.step() {
            outputs
                .entry(out.id)
                .or_default()
                .push((out.token.token, out.text, out.finished));
        }
        engine.scheduler().check_invariants().unwrap();
    }
    outputs
}

fn builtin_requests() -> Vec<(RequestId, Vec<TokenId>, SamplingParams)> {
    let prompt =
        |i: u32| -> Vec<TokenId> { (0..12 + 3 * i).map(|t| 5 + (t * 7 + i) % 40).collect() };
    let mut requests = Vec::new();
    for i in 0..6u32 {
        requests.push((
            RequestId(i as u64),
            prompt(i),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(48 + 8 * i as usize)
            },
        ));
    }
    for i in 0..6u32 {
        requests.push((
            RequestId(100 + i as u64),
            prompt(i),
            SamplingParams {
                temperature: 0.7,
                top_k: Some(8),
                seed: Some(i as u64),
                repetition_penalty: 1.1,
                frequency_penalty: 0.2,
                logprobs: Some(2),
                ignore_eos: true,
                ..SamplingParams::greedy(40)
            },
        ));
    }
    // Limits that cut a run of accepted drafts short: one token, a stop string, min_tokens.
    requests.push((RequestId(200), prompt(1), SamplingParams::greedy(1)));
    requests.push((
        RequestId(201),
        prompt(2),
        SamplingParams {
            stop: vec!["e".into()],
            ..SamplingParams::greedy(64)
        },
    ));
    requests.push((
        RequestId(202),
        prompt(3),
        SamplingParams {
            min_tokens: 20,
            ..SamplingParams::greedy(30)
        },
    ));
    requests
}

#[test]
fn drafts_change_no_output_and_save_steps() {
    let requests = builtin_requests();
    let mut plain = builtin_engine_with(64 << 20, &EngineConfig::default());
    let expected = run(&mut plain, &requests);
    for k in [1, 3, 5] {
        let mut engine = builtin_engine_with(64 << 20, &speculative(k));
        let got = run(&mut engine, &requests);
        for (id, _, _) in &requests {
            assert_eq!(got[id], expected[id], "request {id}, {k} drafts");
        }
        let stats = engine.snapshot();
        assert!(
            stats.num_accepted_tokens > 0 && stats.num_draft_tokens >= stats.num_accepted_tokens,
            "{k} drafts: {} accepted of {}",
            stats.num_accepted_tokens,
            stats.num_draft_tokens
        );
        assert!(
            stats.num_steps < plain.stats.num_steps,
            "{k} drafts: {} steps, {} without",
            stats.num_steps,
            plain.stats.num_steps
        );
        assert_eq!(stats.num_generated_tokens, plain.stats.num_generated_tokens);
    }
}

/// Parallel samples of one prompt fork from their leader after the prompt, then each decodes
/// with its own drafts.
#[test]
fn parallel_samples_with_drafts_change_no_output() {
    let prompt: Vec<TokenId> = (0..20).map(|t| 5 + (t * 11) % 37).collect();
    let ids: Vec<RequestId> = (0..4).map(|i| RequestId(300 + i)).collect();
    let params: Vec<SamplingParams> = (0..4)
        .map(|i| SamplingParams {
            temperature: if i == 0 { 0.0 } else { 0.9 },
            seed: Some(i),
            ignore_eos: true,
            ..SamplingParams::greedy(60)
        })
        .collect();
    let mut outputs = Vec::new();
    for config in [EngineConfig::default(), speculative(3)] {
        let mut engine = builtin_engine_with(64 << 20, &config);
        engine
            .add_request_group(
                &ids,
                prompt.clone(),
                params.clone(),
                std::time::Instant::now(),
                None,
            )
            .unwrap();
        outputs.push(run(&mut engine, &[]));
        if config.speculative.is_some() {
            assert!(engine.snapshot().num_accepted_tokens > 0);
        }
    }
    for id in &ids {
        assert_eq!(outputs[1][id], outputs[0][id], "sample {id}");
        assert_eq!(outputs[0][id].len(), 60);
    }
}

#[test]
fn drafts_under_preemption_change_no_output() {
    let requests = builtin_requests();
    let mut plain = builtin_engine_with(64 << 20, &EngineConfig::default());
    let expected = run(&mut plain, &requests);
    // A pool of a few dozen blocks of 4 tokens for 15 requests of up to 100 tokens, and a
    // budget that leaves drafts out of some steps.
    let tight = EngineConfig {
        max_num_batched_tokens: 24,
        ..speculative(4)
    };
    let probe = builtin_engine_with(1 << 20, &EngineConfig::default());
    let block_bytes = (1 << 20) / probe.scheduler().config().num_blocks;
    let mut engine = builtin_engine_with(48 * block_bytes, &tight);
    let got = run(&mut engine, &requests);
    for (id, _, _) in &requests {
        assert_eq!(got[id], expected[id], "request {id}");
    }
    let stats = engine.snapshot();
    assert!(stats.num_preemptions > 0, "the pool was not tight enough");
    assert!(stats.num_accepted_tokens > 0);
}

#[test]
fn stories260k_greedy_with_drafts_equals_the_goldens() {
    let Some(shared) = shared_dir("stories260k_greedy_with_drafts_equals_the_goldens") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let requests: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let want = ids(&case["greedy_token_ids"]);
            let params = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(want.len())
            };
            (RequestId(i as u64), ids(&case["prompt_token_ids"]), params)
        })
        .collect();
    let mut engine =
        engine_with_blocks(&shared.join("models/stories260k"), 4, 512, &speculative(4));
    let got = run(&mut engine, &requests);
    for (i, case) in cases.iter().enumerate() {
        let tokens: Vec<TokenId> = got[&RequestId(i as u64)].iter().map(|o| o.0).collect();
        assert_eq!(tokens, ids(&case["greedy_token_ids"]), "golden case {i}");
    }
    assert!(engine.snapshot().num_accepted_tokens > 0);
}

#[test]
fn no_drafts_while_more_requests_run_than_the_limit() {
    let requests = builtin_requests();
    let mut plain = builtin_engine_with(64 << 20, &EngineConfig::default());
    let expected = run(&mut plain, &requests);
    let limited = |n| {
        let mut config = speculative(3);
        if let Some(spec) = config.speculative.as_mut() {
            spec.disable_by_batch_size = Some(n);
        }
        config
    };
    // With every request running, never.
    let mut engine = builtin_engine_with(64 << 20, &limited(0));
    let got = run(&mut engine, &requests);
    assert_eq!(engine.snapshot().num_draft_tokens, 0);
    for (id, _, _) in &requests {
        assert_eq!(got[id], expected[id], "request {id}");
    }
    // Only once few are left: fewer drafts than without the limit, the same outputs.
    let mut free = builtin_engine_with(64 << 20, &speculative(3));
    run(&mut free, &requests);
    let mut engine = builtin_engine_with(64 << 20, &limited(3));
    let got = run(&mut engine, &requests);
    let drafts = engine.snapshot().num_draft_tokens;
    assert!(
        drafts > 0 && drafts < free.snapshot().num_draft_tokens,
        "{drafts} drafts with the limit, {} without",
        free.snapshot().num_draft_tokens
    );
    for (id, _, _) in &requests {
        assert_eq!(got[id], expected[id], "request {id}");
    }
}

/// Aborting requests that carry drafts frees everything; the others' outputs do not change.
#[test]
fn aborts_with_drafts_in_flight_leave_the_pool_whole() {
    let requests = builtin_requests();
    let mut plain = builtin_engine_with(64 << 20, &EngineConfig::default());
    let expected = run(&mut plain, &requests);
    let mut engine = builtin_engine_with(64 << 20, &speculative(3));
    for (id, prompt, params) in &requests {
        engine
            .add_request(*id, prompt.clone(), params.clone())
            .unwrap();
    }
    let aborted = [RequestId(0), RequestId(3), RequestId(101)];
    let mut got = Outputs::new();
    let mut steps = 0;
    while engine.has_unfinished() {
        for out in engine.step() {
            got.entry(out.id)
                .or_default()
                .push((out.token.token, out.text, out.finished));
        }
        steps += 1;
        if steps == 6 {
            for id in aborted {
                assert!(engine.abort(id), "{id} had finished");
            }
        }
        engine.scheduler().check_invariants().unwrap();
    }
    assert!(engine.snapshot().num_accepted_tokens > 0);
    assert_eq!(engine.snapshot().kv_blocks_used, 0);
    for (id, _, _) in &requests {
        if aborted.contains(id) {
            assert_eq!(got[id][..], expected[id][..got[id].len()], "request {id}");
        } else {
            assert_eq!(got[id], expected[id], "request {id}");
        }
    }
}
