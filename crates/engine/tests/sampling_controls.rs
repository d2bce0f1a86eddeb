//! `logit_bias`, `min_tokens` and `allowed_token_ids` through the engine, on the built-in demo
//! model (no files needed): a bias forces or bans tokens, `min_tokens` holds back the
//! end-of-sequence id and stop strings, and only allowed tokens come out.

mod common;

use common::builtin_engine;
use pagoda_core::{FinishReason, RequestId, SamplingParams};
use pagoda_engine::output::RequestOutput;

const PROMPT: [u32; 6] = [5, 40, 77, 123, 9, 61];

/// Runs one request alone to the end and returns its outputs.
fn run(params: SamplingParams) -> Vec<RequestOutput> {
    let mut e = builtin_engine(1 << 20);
    e.add_request(RequestId(0), PROMPT.to_vec(), params)
        .unwrap();
    let mut outputs = Vec::new();
    while e.has_unfinished() {
        outputs.extend(e.step());
    }
    outputs
}

fn tokens(outputs: &[RequestOutput]) -> Vec<u32> {
    outputs.iter().map(|o| o.token.token).collect()
}

#[test]
fn a_forced_end_of_sequence_waits_for_min_tokens() {
    let eos = builtin_engine(1 << 20).eos_token_ids()[0];
    let forced = |min_tokens| SamplingParams {
        logit_bias: vec![(eos, 100.0)],
        min_tokens,
        ..SamplingParams::greedy(16)
    };
    let alone = run(forced(0));
    assert_eq!(tokens(&alone), vec![eos]);
    assert_eq!(
        alone[0].finished,
        Some(FinishReason::StopToken(eos)),
        "+100 forces the end-of-sequence token"
    );

    let held = run(forced(5));
    let ids = tokens(&held);
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(ids[..5].iter().all(|&t| t != eos), "{ids:?}");
    assert_eq!(
        held.last().unwrap().finished,
        Some(FinishReason::StopToken(eos))
    );
    // Until min_tokens the bias cannot win, so those tokens are the unbiased greedy ones.
    let plain = run(SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(5)
    });
    assert_eq!(ids[..5], tokens(&plain)[..]);
}

#[test]
fn a_negative_bias_bans_the_greedy_choice() {
    let plain = tokens(&run(SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    }));
    let banned = run(SamplingParams {
        logit_bias: vec![(plain[0], -100.0)],
        ignore_eos: true,
        ..SamplingParams::greedy(12)
    });
    assert!(tokens(&banned).iter().all(|&t| t != plain[0]));
}

#[test]
fn only_allowed_tokens_are_sampled() {
    let allowed = vec![11, 12, 13, 200];
    let outputs = run(SamplingParams {
        temperature: 1.0,
        seed: Some(4),
        allowed_token_ids: Some(allowed.clone()),
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    });
    let ids = tokens(&outputs);
    assert_eq!(ids.len(), 40);
    assert!(ids.iter().all(|t| allowed.contains(t)), "{ids:?}");
}

#[test]
fn stop_strings_are_not_matched_before_min_tokens() {
    let greedy = |min_tokens, stop: Vec<String>| SamplingParams {
        ignore_eos: true,
        min_tokens,
        stop,
        ..SamplingParams::greedy(3)
    };
    let plain = run(greedy(0, Vec::new()));
    let first = plain[0].text.clone();
    assert!(!first.is_empty());
    // The first token's text as a stop string ends the request at once...
    let stopped = run(greedy(0, vec![first.clone()]));
    assert_eq!(stopped.len(), 1);
    assert_eq!(
        stopped[0].finished,
        Some(FinishReason::StopString(first.clone()))
    );
    // ...but not when min_tokens asks for more: the first tokens' text goes out unsearched.
    let held = run(greedy(3, vec![first.clone()]));
    assert_eq!(tokens(&held), tokens(&plain));
    let third_has_it = plain[2].text.contains(&first);
    let want = if third_has_it {
        FinishReason::StopString(first)
    } else {
        FinishReason::Length
    };
    assert_eq!(held.last().unwrap().finished, Some(want));
}
