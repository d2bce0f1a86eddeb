//! `response_format: json_object` through the engine, on the built-in demo model (random weights,
//! byte-level vocabulary): whatever the model prefers, the output is always a valid prefix of a
//! JSON object, a finished one parses, and the request ends as soon as the object closes; with a
//! `json_schema`, the output is an instance of the schema.

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

/// Every value of this schema has a bounded length, so an output must close within
/// `max_tokens`: the whitespace between tokens is bounded too.
const BOUNDED_SCHEMA: &str = r#"{"type": "object", "properties": {
    "color": {"enum": ["red", "green", "blue"]},
    "ok": {"type": "boolean"},
    "note": {"type": "null"},
    "sizes": {"type": "array", "items": {"enum": [1, 2, 30]}, "minItems": 1, "maxItems": 3}},
    "required": ["color", "ok", "sizes"]}"#;

fn check_bounded_instance(text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let object = value.as_object().unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert!(
        keys == ["color", "ok", "sizes"] || keys == ["color", "ok", "note", "sizes"],
        "{text}"
    );
    assert!(["red", "green", "blue"].contains(&object["color"].as_str().unwrap()));
    assert!(object["ok"].is_boolean());
    let sizes = object["sizes"].as_array().unwrap();
    assert!((1..=3).contains(&sizes.len()), "{text}");
    assert!(sizes
        .iter()
        .all(|s| [1, 2, 30].contains(&s.as_u64().unwrap())));
}

#[test]
fn a_schema_is_followed_to_a_complete_instance() {
    let schema = |seed: u64| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        response_format: ResponseFormat::JsonSchema(BOUNDED_SCHEMA.into()),
        ..SamplingParams::greedy(1000)
    };
    let mut params: Vec<SamplingParams> = (0..6).map(schema).collect();
    params.push(SamplingParams {
        temperature: 0.0,
        ..schema(0)
    });
    for (text, finished) in run(&params) {
        assert_eq!(finished, Some(FinishReason::StructuredComplete), "{text:?}");
        check_bounded_instance(&text);
    }
}

#[test]
fn a_schema_the_engine_cannot_follow_is_refused_at_admission() {
    let mut e = builtin_engine(1 << 20);
    let params = SamplingParams {
        response_format: ResponseFormat::JsonSchema(
            r#"{"type": "object", "minProperties": 1}"#.into(),
        ),
        ..SamplingParams::greedy(4)
    };
    match e.add_request(RequestId(0), PROMPT.to_vec(), params) {
        Err(AdmissionError::InvalidSchema(message)) => {
            assert!(message.contains("minProperties"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.has_unfinished());
}
