//! The engine thread behind `EngineHandle`, on the built-in demo model (no files needed):
//! concurrent streams get exactly the tokens of a synchronous run, timings are ordered, dropped
//! streams free their blocks, refusals are immediate and queue depth is visible at once.

use std::time::{Duration, Instant};

mod common;

use common::builtin_engine as engine;
use pagoda_core::{FinishReason, SamplingParams};
use pagoda_engine::handle::{EngineHandle, SubmitError};
use pagoda_engine::sched::scheduler::AdmissionError;

fn prompt(i: usize) -> Vec<u32> {
    (0..5 + i % 7)
        .map(|t| (t * 31 + i * 17) as u32 % 200 + 3)
        .collect()
}

fn params(i: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        seed: Some(i as u64),
        ignore_eos: true,
        ..SamplingParams::greedy(8 + i % 5)
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn streams_match_a_synchronous_run_and_carry_ordered_timings() {
    let mut solo = Vec::new();
    for i in 0..12 {
        let mut e = engine(1 << 20);
        let id = pagoda_core::RequestId(0);
        e.add_request(id, prompt(i), params(i)).unwrap();
        let mut tokens = Vec::new();
        while e.has_unfinished() {
            tokens.extend(e.step().into_iter().map(|o| o.token.token));
        }
        solo.push(tokens);
    }

    let handle = EngineHandle::spawn(engine(1 << 20), None).unwrap();
    let streams: Vec<_> = (0..12)
        .map(|i| handle.add_request(prompt(i), params(i)).unwrap())
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let mut outputs = Vec::new();
                while let Some(o) = stream.blocking_next() {
                    outputs.push(o);
                }
                outputs
            })
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let outputs = reader.join().unwrap();
        let tokens: Vec<u32> = outputs.iter().map(|o| o.token.token).collect();
        assert_eq!(tokens, solo[i], "request {i}");
        let last = outputs.last().unwrap();
        assert_eq!(last.finished, Some(FinishReason::Length));
        assert_eq!(last.num_output_tokens, tokens.len());
        assert_eq!(last.num_prompt_tokens, prompt(i).len());
        let t = last.timings;
        let scheduled = t.first_scheduled.unwrap();
        let first = t.first_token.unwrap();
        let finished = t.finished.unwrap();
        assert!(t.arrival <= scheduled && scheduled <= first && first <= finished);
        assert!(outputs.iter().all(|o| o.timings.first_token == Some(first)));
    }
    let stats = handle.stats();
    assert_eq!(
        stats.num_generated_tokens as usize,
        solo.iter().map(Vec::len).sum::<usize>()
    );
    assert_eq!(
        (stats.num_running, stats.num_waiting, stats.kv_blocks_used),
        (0, 0, 0)
    );
    assert!(stats.num_steps > 0 && stats.mean_tokens_per_step() > 1.0);
}

#[test]
fn dropped_streams_free_their_blocks() {
    let handle = EngineHandle::spawn(engine(1 << 20), None).unwrap();
    let mut streams: Vec<_> = (0..20)
        .map(|i| {
            let p = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(200)
            };
            handle.add_request(prompt(i), p).unwrap()
        })
        .collect();
    for stream in &mut streams {
        assert!(stream.blocking_next().is_some());
    }
    assert!(handle.stats().kv_blocks_used > 0);
    drop(streams);
    wait_until("blocks to be freed", || {
        let s = handle.stats();
        s.kv_blocks_used == 0 && s.num_running == 0 && s.num_waiting == 0
    });
}

#[test]
fn refusals_are_immediate_and_queue_depth_is_visible() {
    let handle = EngineHandle::spawn(engine(1 << 20), None).unwrap();
    let limit = handle.limits().max_model_len;
    let too_long = SamplingParams::greedy(limit);
    assert!(matches!(
        handle.add_request(vec![1, 2, 3], too_long),
        Err(SubmitError::Admission(
            AdmissionError::ExceedsContext { .. }
        ))
    ));
    assert!(matches!(
        handle.add_request(vec![], SamplingParams::greedy(4)),
        Err(SubmitError::Admission(AdmissionError::EmptyPrompt))
    ));
    // Queue depth counts requests the moment they are submitted.
    let streams: Vec<_> = (0..50)
        .map(|i| handle.add_request(prompt(i), params(i)).unwrap())
        .collect();
    let depth = handle.queue_depth();
    assert!(depth.requests > 0 && depth.tokens >= depth.requests);
    drop(streams);
    wait_until("the queue to drain", || handle.queue_depth().requests == 0);
}

#[test]
fn the_thread_ends_when_nothing_can_reach_it() {
    let handle = EngineHandle::spawn(engine(1 << 20), None).unwrap();
    let probe = handle.clone();
    let stream = handle.add_request(prompt(0), params(0)).unwrap();
    drop(stream);
    drop(handle);
    assert!(!probe.is_stopped());
    probe.join();
}
