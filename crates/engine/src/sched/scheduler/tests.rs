//! Exact schedules for chunked prefill, budget sharing, preemption and admission.

use std::time::Instant;

use pagoda_core::{SamplingParams, TokenId};

use super::*;

fn config(budget: usize, blocks: usize, block_size: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: 8,
        max_model_len: 1024,
        block_size,
        num_blocks: blocks,
        enable_prefix_caching: false,
    }
}

fn request(id: u64, prompt_len: usize, max_tokens: usize) -> Request {
    Request::new(
        RequestId(id),
        (0..prompt_len as u32).collect(),
        SamplingParams {
            max_tokens,
            ..SamplingParams::greedy(max_tokens)
        },
    )
}

/// Runs one step, "sampling" token 7 for every request that needs a token.
fn step(s: &mut Scheduler) -> Vec<(u64, usize)> {
    let out = s.schedule();
    for id in s.on_step_done(&out) {
        s.append_token(id, 7);
    }
    s.check_invariants().unwrap();
    out.scheduled
        .iter()
        .map(|r| (r.id.0, r.num_new_tokens))
        .collect()
}

#[test]
fn long_prompt_is_prefilled_in_chunks_then_decodes() {
    let mut s = Scheduler::new(config(8, 100, 4));
    s.add_request(request(1, 20, 4)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 8)]);
    assert_eq!(step(&mut s), vec![(1, 8)]);
    assert_eq!(step(&mut s), vec![(1, 4)]);
    assert_eq!(
        s.request(RequestId(1)).unwrap().output_ids,
        vec![7],
        "sampled after the last chunk"
    );
    assert_eq!(step(&mut s), vec![(1, 1)]);
}

#[test]
fn decodes_go_first_and_a_new_prompt_takes_the_rest_of_the_budget() {
    let mut s = Scheduler::new(config(6, 100, 4));
    s.add_request(request(1, 3, 10)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 3)]);
    s.add_request(request(2, 12, 4)).unwrap();
    s.add_request(request(3, 2, 4)).unwrap();
    // 1 decodes, 2 gets the remaining 5 tokens of budget, 3 waits (no budget left).
    assert_eq!(step(&mut s), vec![(1, 1), (2, 5)]);
    assert_eq!(step(&mut s), vec![(1, 1), (2, 5)]);
    // 2 finishes its prompt (2 left), 3 starts with its 2 tokens.
    assert_eq!(step(&mut s), vec![(1, 1), (2, 2), (3, 2)]);
    assert_eq!(step(&mut s), vec![(1, 1), (2, 1), (3, 1)]);
}

#[test]
fn the_most_recent_arrival_is_preempted_and_resumes_first_with_its_tokens() {
    // 4 blocks of 2 tokens. Requests 1 and 2 each start with a 3-token prompt (2 blocks each).
    let mut s = Scheduler::new(config(64, 4, 2));
    s.add_request(request(1, 3, 5)).unwrap();
    s.add_request(request(2, 3, 5)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 3), (2, 3)]);
    // Both now hold 4 tokens (3 + 1 sampled) in 2 blocks each: decoding fits without new blocks.
    assert_eq!(step(&mut s), vec![(1, 1), (2, 1)]);
    // Now 5 tokens each: request 1 needs a third block, none is free: 2 (later arrival) is
    // preempted, freeing its blocks for 1.
    let out = s.schedule();
    assert_eq!(out.preempted, vec![RequestId(2)]);
    assert_eq!(
        out.scheduled,
        vec![ScheduledRequest {
            id: RequestId(1),
            num_new_tokens: 1,
            num_spec_tokens: 0,
        }]
    );
    for id in s.on_step_done(&out) {
        s.append_token(id, 7);
    }
    s.check_invariants().unwrap();
    let r2 = s.request(RequestId(2)).unwrap();
    assert_eq!(
        (r2.num_computed_tokens, r2.output_ids.len()),
        (0, 2),
        "keeps its 2 tokens"
    );
    assert_eq!(s.num_preemptions, 1);
    // 1 finishes; 2 resumes by recomputing prompt + generated tokens in one chunk.
    s.finish(RequestId(1), FinishReason::Length);
    assert_eq!(step(&mut s), vec![(2, 5)]);
    assert_eq!(s.request(RequestId(2)).unwrap().output_ids.len(), 3);
}

#[test]
fn a_waiting_request_waits_until_blocks_are_free() {
    let mut s = Scheduler::new(config(64, 2, 2));
    s.add_request(request(1, 3, 1)).unwrap();
    s.add_request(request(2, 1, 1)).unwrap();
    // 1 takes 2 blocks; 2 cannot get one and waits.
    assert_eq!(step(&mut s), vec![(1, 3)]);
    s.finish(RequestId(1), FinishReason::Length);
    assert_eq!(step(&mut s), vec![(2, 1)]);
}

#[test]
fn requests_that_can_never_fit_are_refused_with_the_numbers() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_model_len: 16,
        ..config(8, 3, 4)
    });
    let err = s.add_request(request(1, 10, 7)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "prompt (10 tokens) + max_tokens (7) = 17 exceeds the model's context length of 16 tokens"
    );
    let err = s.add_request(request(2, 10, 4)).unwrap_err();
    assert_eq!(
        err,
        AdmissionError::ExceedsCache {
            needed_blocks: 4,
            total_blocks: 3
        }
    );
    assert_eq!(
        s.add_request(request(3, 0, 4)).unwrap_err(),
        AdmissionError::EmptyPrompt
    );
    assert!(!s.has_unfinished());
}

#[test]
fn aborting_frees_blocks_at_once() {
    let mut s = Scheduler::new(config(64, 10, 4));
    s.add_request(request(1, 9, 4)).unwrap();
    step(&mut s);
    assert_eq!(s.kv().pool().num_free(), 7);
    s.finish(RequestId(1), FinishReason::Abort);
    assert_eq!(s.kv().pool().num_free(), 10);
    s.check_invariants().unwrap();
}

#[test]
fn a_cached_prefix_is_skipped_and_only_the_rest_is_computed() {
    let mut s = Scheduler::new(SchedulerConfig {
        enable_prefix_caching: true,
        ..config(64, 20, 4)
    });
    s.add_request(request(1, 10, 4)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 10)]);
    // Request 2's first 8 tokens are request 1's: two cached blocks, 4 tokens to compute.
    let mut r2 = request(2, 12, 4);
    r2.prompt_ids[8..].copy_from_slice(&[100, 101, 102, 103]);
    s.add_request(r2).unwrap();
    assert_eq!(step(&mut s), vec![(1, 1), (2, 4)]);
    assert_eq!(s.request(RequestId(2)).unwrap().num_cached_tokens, Some(8));
    assert_eq!(
        s.kv().block_table(RequestId(2)).unwrap()[..2],
        s.kv().block_table(RequestId(1)).unwrap()[..2]
    );
    assert_eq!((s.kv().stats.queries, s.kv().stats.hits), (22, 8));
    assert_eq!(s.num_prompt_tokens_cached, 8);
}

#[test]
fn a_preempted_request_resumes_from_its_own_cached_blocks() {
    // 5 blocks of 2 tokens; both requests need 3 blocks to reach their 6th token.
    let mut s = Scheduler::new(SchedulerConfig {
        enable_prefix_caching: true,
        ..config(64, 5, 2)
    });
    let mut r2 = request(2, 3, 4);
    r2.prompt_ids = vec![10, 11, 12];
    s.add_request(request(1, 3, 4)).unwrap();
    s.add_request(r2).unwrap();
    assert_eq!(step(&mut s), vec![(1, 3), (2, 3)]);
    assert_eq!(step(&mut s), vec![(1, 1), (2, 1)]);
    // 5 tokens each: 1 takes the last free block, 2 finds none and is preempted.
    let out = s.schedule();
    assert_eq!(out.preempted, vec![RequestId(2)]);
    for id in s.on_step_done(&out) {
        s.append_token(id, 7);
    }
    s.finish(RequestId(1), FinishReason::Length);
    // 2 holds 5 tokens (3 + 2 sampled); its two full blocks are still cached: only 1 recomputed.
    assert_eq!(step(&mut s), vec![(2, 1)]);
    let r2 = s.request(RequestId(2)).unwrap();
    assert_eq!((r2.num_computed_tokens, r2.output_ids.len()), (5, 3));
    assert_eq!(
        r2.num_cached_tokens,
        Some(0),
        "counted at its first scheduling only"
    );
}

/// Steps like an engine with parallel samples: the samples of a leader that just got its first
/// token fork from it (token 7 for everyone).
fn step_with_forks(s: &mut Scheduler) -> SchedulerOutput {
    let out = s.schedule();
    for id in s.on_step_done(&out) {
        for child in s.take_forks(id) {
            s.fork(id, child, Instant::now());
            s.append_token(child, 7);
        }
        s.append_token(id, 7);
    }
    s.check_invariants().unwrap();
    out
}

#[test]
fn parallel_samples_share_the_prompt_and_copy_its_partial_block_on_write() {
    let mut s = Scheduler::new(config(64, 10, 4));
    let group: Vec<Request> = (1..=3).map(|id| request(id, 5, 4)).collect();
    s.add_request_group(group).unwrap();
    assert_eq!(s.num_waiting(), 3);
    // The prompt is computed once, by the leader.
    let out = step_with_forks(&mut s);
    assert_eq!(
        out.scheduled,
        vec![ScheduledRequest {
            id: RequestId(1),
            num_new_tokens: 5,
            num_spec_tokens: 0,
        }]
    );
    let table = |s: &Scheduler, id| s.block_table(RequestId(id)).unwrap().to_vec();
    assert_eq!(table(&s, 1), vec![BlockId(0), BlockId(1)]);
    assert_eq!(
        table(&s, 2),
        table(&s, 1),
        "forked samples share every block"
    );
    assert_eq!(table(&s, 3), table(&s, 1));
    assert_eq!(s.kv().pool().ref_count(BlockId(1)), 3);
    assert_eq!(s.request(RequestId(3)).unwrap().output_ids, vec![7]);
    // Each writes its first token at position 5, inside shared block 1: the first two writers
    // get copies (blocks 2 and 3), the last one keeps block 1.
    let out = step_with_forks(&mut s);
    assert_eq!(out.scheduled.len(), 3);
    assert_eq!(
        out.copies,
        vec![(BlockId(1), BlockId(2)), (BlockId(1), BlockId(3))]
    );
    assert_eq!(table(&s, 1), vec![BlockId(0), BlockId(2)]);
    assert_eq!(table(&s, 2), vec![BlockId(0), BlockId(3)]);
    assert_eq!(table(&s, 3), vec![BlockId(0), BlockId(1)]);
    assert_eq!(
        s.kv().pool().ref_count(BlockId(0)),
        3,
        "full block stays shared"
    );
    assert_eq!(s.kv().num_cow_copies, 2);
    // Decoding on within private blocks copies nothing more.
    assert!(step_with_forks(&mut s).copies.is_empty());
}

#[test]
fn a_leader_aborted_before_its_samples_forked_hands_over_the_group() {
    let mut s = Scheduler::new(config(4, 10, 4));
    s.add_request(request(9, 2, 4)).unwrap();
    let group: Vec<Request> = (1..=3).map(|id| request(id, 6, 4)).collect();
    s.add_request_group(group).unwrap();
    // 9 takes 2 tokens of budget, leader 1 starts its prompt with the other 2.
    step_with_forks(&mut s);
    s.finish(RequestId(1), FinishReason::Abort);
    s.check_invariants().unwrap();
    // Sample 2 now leads: it computes the prompt itself and 3 forks from it.
    let out = step_with_forks(&mut s);
    assert_eq!(
        out.scheduled,
        vec![
            ScheduledRequest {
                id: RequestId(9),
                num_new_tokens: 1,
                num_spec_tokens: 0,
            },
            ScheduledRequest {
                id: RequestId(2),
                num_new_tokens: 3,
                num_spec_tokens: 0,
            }
        ]
    );
    step_with_forks(&mut s);
    assert_eq!(s.request(RequestId(3)).unwrap().output_ids, vec![7]);
    assert_eq!(s.block_table(RequestId(3)), s.block_table(RequestId(2)));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// `n` requests with one prompt: one of three shared prefixes, then a unique suffix;
        /// `grouped`: as parallel samples of one request (forked, copy-on-write).
        Add {
            prefix: usize,
            prefix_len: usize,
            suffix_len: usize,
            max_tokens: usize,
            n: usize,
            grouped: bool,
        },
        Step,
        Abort {
            pick: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0usize..3, 0usize..10, 0usize..6, 1usize..8, 1usize..4, any::<bool>()).prop_map(
                |(prefix, prefix_len, suffix_len, max_tokens, n, grouped)| Op::Add {
                    prefix, prefix_len, suffix_len, max_tokens, n, grouped
                }
            ),
            5 => Just(Op::Step),
            1 => any::<usize>().prop_map(|pick| Op::Abort { pick }),
        ]
    }

    fn prompt(id: u64, prefix: usize, prefix_len: usize, suffix_len: usize) -> Vec<TokenId> {
        let shared = (0..prefix_len as u32).map(|i| prefix as u32 * 100 + i);
        let unique = (0..suffix_len.max(1) as u32).map(|i| 1000 + id as u32 * 10 + i);
        shared.chain(unique).collect()
    }

    /// Steps like an engine: samples token 7 for each request needing one, finishes at max_tokens.
    fn engine_step(s: &mut Scheduler) {
        let out = s.schedule();
        for id in s.on_step_done(&out) {
            let children = s.take_forks(id);
            for &child in &children {
                s.fork(id, child, Instant::now());
            }
            for id in std::iter::once(id).chain(children) {
                s.append_token(id, 7);
                let r = s.request(id).unwrap();
                if r.output_ids.len() >= r.params.max_tokens {
                    s.finish(id, FinishReason::Length);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn invariants_hold_after_every_step_and_everything_drains(
            num_blocks in 3usize..12,
            block_size in 1usize..5,
            budget in 1usize..24,
            caching in any::<bool>(),
            ops in prop::collection::vec(op(), 1..150),
        ) {
            let mut s = Scheduler::new(SchedulerConfig {
                max_num_batched_tokens: budget,
                max_num_seqs: 4,
                max_model_len: 64,
                block_size,
                num_blocks,
                enable_prefix_caching: caching,
            });
            let mut next = 0u64;
            let mut live: Vec<RequestId> = Vec::new();
            for op in ops {
                match op {
                    Op::Add { prefix, prefix_len, suffix_len, max_tokens, n, grouped } => {
                        let ids = prompt(next, prefix, prefix_len, suffix_len);
                        let requests: Vec<Request> = (0..n as u64)
                            .map(|i| {
                                let mut r = request(next + i, 1, max_tokens);
                                r.prompt_ids = ids.clone();
                                r
                            })
                            .collect();
                        let added: Vec<RequestId> = requests.iter().map(|r| r.id).collect();
                        next += n as u64;
                        if grouped {
                            if s.add_request_group(requests).is_ok() {
                                live.extend(added);
                            }
                        } else {
                            for r in requests {
                                let id = r.id;
                                if s.add_request(r).is_ok() {
                                    live.push(id);
                                }
                            }
                        }
                    }
                    Op::Step => engine_step(&mut s),
                    Op::Abort { pick } => {
                        if !live.is_empty() {
                            let id = live.swap_remove(pick % live.len());
                            s.finish(id, FinishReason::Abort);
                        }
                    }
                }
                s.check_invariants().map_err(TestCaseError::fail)?;
            }
            // Whatever is left runs to completion: no request may wait forever.
            let mut steps = 0;
            while s.has_unfinished() {
                engine_step(&mut s);
                s.check_invariants().map_err(TestCaseError::fail)?;
                steps += 1;
                prop_assert!(steps < 10_000, "livelock");
            }
            prop_assert_eq!(s.kv().pool().num_free(), num_blocks);
        }
    }

    #[test]
    fn ten_thousand_requests_with_random_aborts_leave_the_pool_full() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: 32,
            max_num_seqs: 8,
            max_model_len: 64,
            block_size: 4,
            num_blocks: 24,
            enable_prefix_caching: true,
        });
        let mut state = 12345u64;
        let mut rand = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut live = Vec::new();
        for id in 0..10_000u64 {
            let (prompt_len, max_tokens) = (1 + rand(20) as usize, 1 + rand(16) as usize);
            // Prompts share prefixes (of 0..20) in one case out of two, so blocks are reused.
            let mut r = request(id, prompt_len, max_tokens);
            if rand(2) == 0 {
                r.prompt_ids.iter_mut().for_each(|t| *t += 1000 + id as u32);
            }
            s.add_request(r).unwrap();
            live.push(RequestId(id));
            if rand(3) == 0 {
                let victim = live.swap_remove(rand(live.len() as u64) as usize);
                s.finish(victim, FinishReason::Abort);
            }
            if id % 4 == 0 {
                engine_step(&mut s);
                s.check_invariants().unwrap();
            }
            live.retain(|r| s.request(*r).is_some());
        }
        while s.has_unfinished() {
            engine_step(&mut s);
        }
        s.check_invariants().unwrap();
        assert_eq!(s.kv().pool().num_free(), 24);
        assert!(s.num_preemptions > 0);
        assert!(s.kv().stats.hits > 0, "shared prefixes were reused");
    }
}

/// Gives request `id` these drafts, as the engine does before a step (only a decoding request
/// takes them; every other running request's are cleared).
fn set_drafts(s: &mut Scheduler, id: u64, drafts: &[TokenId]) {
    s.propose_drafts(|r, d| {
        if r.id == RequestId(id) {
            d.extend_from_slice(drafts)
        }
    });
}

fn scheduled(id: u64, num_new_tokens: usize, num_spec_tokens: usize) -> ScheduledRequest {
    ScheduledRequest {
        id: RequestId(id),
        num_new_tokens,
        num_spec_tokens,
    }
}

#[test]
fn drafts_ride_along_a_decode_within_the_budget_and_count_once_accepted() {
    let mut s = Scheduler::new(config(6, 100, 4));
    s.add_request(request(1, 3, 20)).unwrap();
    // Still prefilling: no drafts.
    set_drafts(&mut s, 1, &[9, 9]);
    assert!(s.request(RequestId(1)).unwrap().spec_token_ids.is_empty());
    assert_eq!(step(&mut s), vec![(1, 3)]);

    set_drafts(&mut s, 1, &[8, 8, 8]);
    let out = s.schedule();
    assert_eq!(out.scheduled, vec![scheduled(1, 4, 3)]);
    assert_eq!(s.on_step_done(&out), vec![RequestId(1)]);
    // The last token's K/V counts; the drafts' only once accepted.
    assert_eq!(s.request(RequestId(1)).unwrap().num_computed_tokens, 4);
    // The engine kept two drafts, then sampled a token of its own.
    for t in [8, 8, 5] {
        s.append_token(RequestId(1), t);
    }
    s.accept_drafts(RequestId(1), 2);
    let r = s.request(RequestId(1)).unwrap();
    assert_eq!((r.num_tokens(), r.num_computed_tokens), (7, 6));
    assert!(r.spec_token_ids.is_empty());
    s.check_invariants().unwrap();

    // More drafts than the budget leaves: cut to it; a waiting prompt gets what is left.
    s.add_request(request(2, 12, 4)).unwrap();
    set_drafts(&mut s, 1, &[1, 2, 3, 4, 5, 6, 7]);
    let out = s.schedule();
    assert_eq!(out.scheduled, vec![scheduled(1, 6, 5)]);
    s.on_step_done(&out);
    s.append_token(RequestId(1), 4);
    s.accept_drafts(RequestId(1), 0);
    set_drafts(&mut s, 1, &[1, 2]);
    let out = s.schedule();
    assert_eq!(out.scheduled, vec![scheduled(1, 3, 2), scheduled(2, 3, 0)]);
}

#[test]
fn a_decode_drops_its_drafts_before_anything_is_preempted() {
    // 4 blocks of 2 tokens; two 3-token prompts take 2 blocks each.
    let mut s = Scheduler::new(config(64, 4, 2));
    s.add_request(request(1, 3, 5)).unwrap();
    s.add_request(request(2, 3, 5)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 3), (2, 3)]);
    // With a draft, 2 would need a third block: it decodes without it, nobody is preempted.
    set_drafts(&mut s, 2, &[8]);
    let out = s.schedule();
    assert_eq!(out.scheduled, vec![scheduled(1, 1, 0), scheduled(2, 1, 0)]);
    assert!(out.preempted.is_empty());
    for id in s.on_step_done(&out) {
        s.append_token(id, 7);
    }
    // Now 1 needs a third block: 2 is preempted, and its drafts go with its K/V.
    set_drafts(&mut s, 2, &[8]);
    let out = s.schedule();
    assert_eq!(out.preempted, vec![RequestId(2)]);
    assert!(s.request(RequestId(2)).unwrap().spec_token_ids.is_empty());
    s.on_step_done(&out);
    s.check_invariants().unwrap();
}

#[test]
fn prompts_whose_logprobs_are_wanted_share_a_row_cap_per_step() {
    let mut s = Scheduler::new(config(2048, 400, 4));
    let scored = |id, len| {
        let mut r = request(id, len, 4);
        r.params.prompt_logprobs = Some(0);
        r
    };
    s.add_request(scored(1, 200)).unwrap();
    s.add_request(scored(2, 200)).unwrap();
    s.add_request(request(3, 300, 4)).unwrap();
    // 256 scored rows a step between 1 and 2; 3's prompt is not limited.
    assert_eq!(step(&mut s), vec![(1, 200), (2, 56), (3, 300)]);
    // 1 decodes (not a prompt token), 2 finishes its prompt.
    assert_eq!(step(&mut s), vec![(1, 1), (2, 144), (3, 1)]);
    // A scored prompt that finds the cap spent waits for the next step, and the requests
    // behind it too (FCFS).
    s.add_request(scored(4, 300)).unwrap();
    s.add_request(scored(5, 20)).unwrap();
    s.add_request(request(6, 10, 4)).unwrap();
    assert_eq!(step(&mut s), vec![(1, 1), (2, 1), (3, 1), (4, 256)]);
    assert_eq!(
        step(&mut s),
        vec![(1, 1), (2, 1), (3, 1), (4, 44), (5, 20), (6, 10)]
    );
}
