//! Speculative decoding through the HTTP API: the same completions (streamed and not, greedy
//! and seeded) as a server without it, and the `pagoda:spec_decode_*` counters.

mod common;

use common::{chunks, metric, start};
use pagoda_engine::engine::EngineConfig;
use pagoda_engine::speculative::SpeculativeConfig;
use pagoda_server::ServerConfig;
use serde_json::{json, Value};

fn bodies() -> Vec<Value> {
    let prompt: Vec<u32> = (0..40).map(|i| 40 + (i * 7) % 30).collect();
    vec![
        json!({"prompt": prompt, "max_tokens": 80, "temperature": 0, "ignore_eos": true}),
        json!({"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0.8, "seed": 5,
               "ignore_eos": true, "logprobs": 1}),
        json!({"prompt": prompt, "max_tokens": 50, "temperature": 0, "stop": ["ab"]}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_the_same_with_drafts_and_the_counters_show_them() {
    let plain = start(ServerConfig::default(), EngineConfig::default()).await;
    let drafting = EngineConfig {
        speculative: Some(SpeculativeConfig {
            num_speculative_tokens: 3,
            prompt_lookup_max: 4,
            prompt_lookup_min: 1,
            disable_by_batch_size: None,
        }),
        ..EngineConfig::default()
    };
    let spec = start(ServerConfig::default(), drafting).await;
    for body in bodies() {
        let (status, want) = plain.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{want}");
        let (status, got) = spec.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["choices"], want["choices"], "{body}");
        assert_eq!(got["usage"], want["usage"], "{body}");

        // Streamed: the same text, whatever number of tokens each step delivers.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let text: String = chunks(&spec.stream("/v1/completions", &streamed).await)
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(text, want["choices"][0]["text"].as_str().unwrap(), "{body}");
    }
    let text = spec.metrics().await;
    let drafts = metric(&text, "pagoda:spec_decode_num_draft_tokens_total");
    let accepted = metric(&text, "pagoda:spec_decode_num_accepted_tokens_total");
    assert!(
        accepted > 0.0 && drafts >= accepted,
        "{accepted} of {drafts}"
    );
    let none = metric(
        &plain.metrics().await,
        "pagoda:spec_decode_num_draft_tokens_total",
    );
    assert_eq!(none, 0.0);
    plain.stop().await;
    spec.stop().await;
}
