//! Prompt log-probabilities (`prompt_logprobs`): each prompt token's score equals the
//! log-probability the model gives it when that token is the next one to sample (a separate
//! request per prefix, all alternatives asked for), whether the prompt is computed in one step or
//! in chunks, recomputed after a preemption, shared by parallel samples, or already in the prefix
//! cache.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::builtin_engine_with;
use pagoda_core::{RequestId, SampledToken, SamplingParams, TokenId};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_engine::output::RequestOutput;

fn prompt(n: usize, salt: u32) -> Vec<TokenId> {
    (0..n as u32).map(|t| 5 + (t * 13 + salt) % 200).collect()
}

fn params(top: usize) -> SamplingParams {
    SamplingParams {
        prompt_logprobs: Some(top),
        ignore_eos: true,
        ..SamplingParams::greedy(3)
    }
}

/// Runs until nothing is left; returns every request's outputs.
fn run(engine: &mut LlmEngine) -> HashMap<RequestId, Vec<RequestOutput>> {
    let mut outputs: HashMap<RequestId, Vec<RequestOutput>> = HashMap::new();
    while engine.has_unfinished() {
        for out in engine.step() {
            outputs.entry(out.id).or_default().push(out);
        }
        engine.scheduler().check_invariants().unwrap();
    }
    outputs
}

/// The reference: for each position, a request whose prompt ends just before it reports the
/// log-probability of every token as it samples its first one.
fn reference(prompt: &[TokenId]) -> Vec<Vec<f32>> {
    let config = EngineConfig {
        enable_prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut engine = builtin_engine_with(64 << 20, &config);
    for q in 1..prompt.len() {
        let params = SamplingParams {
            // More than the vocabulary: every token's.
            logprobs: Some(1 << 20),
            ..SamplingParams::greedy(1)
        };
        engine
            .add_request(RequestId(q as u64), prompt[..q].to_vec(), params)
            .unwrap();
    }
    let outputs = run(&mut engine);
    (1..prompt.len())
        .map(|q| {
            let every = &outputs[&RequestId(q as u64)][0].token.top_logprobs;
            let mut all = vec![f32::NEG_INFINITY; every.len()];
            for &(t, lp) in every {
                all[t as usize] = lp;
            }
            all
        })
        .collect()
}

fn check(scores: &[SampledToken], prompt: &[TokenId], want: &[Vec<f32>], top: usize) {
    assert_eq!(scores.len(), prompt.len() - 1);
    for (i, s) in scores.iter().enumerate() {
        let all = &want[i];
        assert_eq!(s.token, prompt[i + 1]);
        assert!(
            (s.logprob - all[s.token as usize]).abs() < 1e-4,
            "prompt token {}: {} against {}",
            i + 1,
            s.logprob,
            all[s.token as usize]
        );
        assert_eq!(s.top_logprobs.len(), top);
        for &(t, lp) in &s.top_logprobs {
            assert!((lp - all[t as usize]).abs() < 1e-4, "alternative {t}");
        }
        // The alternatives are the most likely tokens, most likely first.
        let mut order: Vec<f32> = all.clone();
        order.sort_by(|a, b| b.total_cmp(a));
        for (k, &(_, lp)) in s.top_logprobs.iter().enumerate() {
            assert!((lp - order[k]).abs() < 1e-4, "rank {k}");
        }
    }
}

#[test]
fn prompt_scores_match_the_model_in_one_step_or_in_chunks() {
    let p = prompt(40, 1);
    let want = reference(&p);
    // One step; then chunks of 8 tokens (budget) shared with another request.
    for budget in [2048, 8] {
        let config = EngineConfig {
            max_num_batched_tokens: budget,
            ..EngineConfig::default()
        };
        let mut engine = builtin_engine_with(64 << 20, &config);
        engine
            .add_request(RequestId(1), p.clone(), params(3))
            .unwrap();
        engine
            .add_request(RequestId(2), prompt(30, 9), SamplingParams::greedy(5))
            .unwrap();
        let outputs = run(&mut engine);
        let first = &outputs[&RequestId(1)][0];
        check(first.prompt_logprobs.as_ref().unwrap(), &p, &want, 3);
        // Only with the first token; not for requests that did not ask.
        assert!(outputs[&RequestId(1)][1..]
            .iter()
            .all(|o| o.prompt_logprobs.is_none()));
        assert!(outputs[&RequestId(2)]
            .iter()
            .all(|o| o.prompt_logprobs.is_none()));
    }
}

#[test]
fn cached_prefixes_preemption_and_parallel_samples_keep_every_score() {
    let p = prompt(48, 3);
    let want = reference(&p);
    // The prompt is in the prefix cache already: computed again, every position scored.
    let mut engine = builtin_engine_with(64 << 20, &EngineConfig::default());
    engine
        .add_request(RequestId(1), p.clone(), SamplingParams::greedy(2))
        .unwrap();
    run(&mut engine);
    engine
        .add_request(RequestId(2), p.clone(), params(2))
        .unwrap();
    let outputs = run(&mut engine);
    check(
        outputs[&RequestId(2)][0].prompt_logprobs.as_ref().unwrap(),
        &p,
        &want,
        2,
    );

    // Parallel samples: each choice gets the scores.
    let ids = [RequestId(10), RequestId(11), RequestId(12)];
    engine
        .add_request_group(&ids, p.clone(), vec![params(1); 3], Instant::now(), None)
        .unwrap();
    let outputs = run(&mut engine);
    for id in &ids {
        check(
            outputs[id][0].prompt_logprobs.as_ref().unwrap(),
            &p,
            &want,
            1,
        );
    }

    // A pool so small that the requests preempt each other mid-prompt: recomputed positions
    // are not scored twice.
    let probe = builtin_engine_with(1 << 20, &EngineConfig::default());
    let block_bytes = (1 << 20) / probe.scheduler().config().num_blocks;
    let tight = EngineConfig {
        max_num_batched_tokens: 16,
        ..EngineConfig::default()
    };
    let mut engine = builtin_engine_with(20 * block_bytes, &tight);
    for i in 0..4 {
        engine
            .add_request(RequestId(i), p.clone(), params(1))
            .unwrap();
    }
    let outputs = run(&mut engine);
    assert!(engine.snapshot().num_preemptions > 0, "no preemption");
    for i in 0..4 {
        check(
            outputs[&RequestId(i)][0].prompt_logprobs.as_ref().unwrap(),
            &p,
            &want,
            1,
        );
    }
}
