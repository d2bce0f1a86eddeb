//! `response_format: json_object` through the engine, on the built-in demo model (random weights,
//! byte-level vocabulary): whatever the model prefers, the output is always a valid prefix of a
//! JSON object, a finished one parses, and the request ends as soon as the object closes.

mod common;

use common::builtin_engine;
use pagoda_core::{FinishReason, RequestId, ResponseFormat, SamplingParams};
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_engine::sched::scheduler::AdmissionError;
use pagoda_engine::structured::JsonState;
use pagoda_model::builtin::load_builtin;
use pagoda_model::RunnerOptions;

const PROMPT: [u32; 6] = [5, 40, 77, 123, 9, 61];

fn json(params: SamplingParams) -> SamplingParams {
    SamplingParams {
        response_format: ResponseFormat::JsonObject,
        ..params
    }
}

/// Runs requests with these params side by side; each one's text and how it finished.
fn run(all: &[SamplingParams]) -> Vec<(String, Option<FinishReason>)> {
    let mut e = builtin_engine(1 << 22);
    for (i, params) in all.iter().enumerate() {
        e.add_request(RequestId(i as u64), PROMPT.to_vec(), params.clone())
            .unwrap();
    }
    let mut results = vec![(String::new(), None); all.len()];
    while e.has_unfinished() {
        for o in e.step() {
            let (text, finished) = &mut results[o.id.0 as usize];
            text.push_str(&o.text);
            *finished = o.finished.clone();
        }
    }
    results
}

fn token_id(text: &str) -> u32 {
    let tokenizer = load_builtin(&RunnerOptions::default()).unwrap().tokenizer;
    let ids = tokenizer.encode(text, false).unwrap();
    assert_eq!(ids.len(), 1, "{text:?} is one token");
    ids[0]
}

#[test]
fn the_object_closes_as_soon_as_it_can_and_the_request_stops_there() {
    // Only "{", "}" and " " may be sampled: the whitespace limit forces "{" and then "}".
    let allowed = ["{", "}", " "].map(token_id).to_vec();
    let params: Vec<SamplingParams> = (0..4)
        .map(|seed| {
            json(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                allowed_token_ids: Some(allowed.clone()),
                ignore_eos: true,
                ..SamplingParams::greedy(200)
            })
        })
        .collect();
    for (text, finished) in run(&params) {
        assert_eq!(finished, Some(FinishReason::StructuredComplete), "{text:?}");
        assert_eq!(text.trim().replace(' ', ""), "{}", "{text:?}");
        assert!(
            text.ends_with('}'),
            "nothing after the closing brace: {text:?}"
        );
        serde_json::from_str::<serde_json::Map<_, _>>(&text).unwrap();
    }
}

#[test]
fn free_generation_stays_a_valid_json_prefix() {
    let mut params = vec![json(SamplingParams::greedy(48))];
    params.extend((0..6).map(|seed| {
        json(SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::greedy(48)
        })
    }));
    let results = run(&params);
    for (text, finished) in &results {
        let state = JsonState::object().after(text.as_bytes());
        assert!(state.is_some(), "not a JSON prefix: {text:?}");
        match finished {
            Some(FinishReason::StructuredComplete) => {
                serde_json::from_str::<serde_json::Map<_, _>>(text).unwrap();
            }
            other => assert_eq!(*other, Some(FinishReason::Length), "{text:?}"),
        }
        assert!(text.trim_start().starts_with('{'), "{text:?}");
    }
    // The same requests without the format: the model's own text is not JSON at all.
    let plain: Vec<SamplingParams> = params
        .iter()
        .map(|p| SamplingParams {
            response_format: ResponseFormat::Text,
            ..p.clone()
        })
        .collect();
    assert!(run(&plain)
        .iter()
        .all(|(text, _)| JsonState::object().after(text.as_bytes()).is_none()));
}

#[test]
fn parallel_samples_each_keep_their_own_state() {
    let mut e = builtin_engine(1 << 22);
    let params: Vec<SamplingParams> = (0..3)
        .map(|seed| {
            json(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..SamplingParams::greedy(32)
            })
        })
        .collect();
    let ids = [RequestId(0), RequestId(1), RequestId(2)];
    e.add_request_group(
        &ids,
        PROMPT.to_vec(),
        params,
        std::time::Instant::now(),
        None,
    )
    .unwrap();
    let mut texts = vec![String::new(); 3];
    while e.has_unfinished() {
        for o in e.step() {
            texts[o.id.0 as usize].push_str(&o.text);
        }
    }
    for text in &texts {
        assert!(
            JsonState::object().after(text.as_bytes()).is_some(),
            "{text:?}"
        );
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");
}

#[test]
fn an_engine_without_a_tokenizer_refuses_json_requests() {
    let loaded = load_builtin(&RunnerOptions::default()).unwrap();
    let mut e = LlmEngine::new(loaded.runner, None, &EngineConfig::default());
    let refused = e.add_request(
        RequestId(0),
        PROMPT.to_vec(),
        json(SamplingParams::greedy(4)),
    );
    assert_eq!(refused, Err(AdmissionError::NoTokenizer));
    assert!(!e.has_unfinished());
    e.add_request(RequestId(1), PROMPT.to_vec(), SamplingParams::greedy(4))
        .unwrap();
}
