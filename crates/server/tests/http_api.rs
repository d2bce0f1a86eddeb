//! The OpenAI API over real HTTP on the built-in demo model: completions and chat, streamed
//! and not, n = 1 and 3, stop strings, logprobs, seeds; and every class of bad input answered
//! with its status and an OpenAI-shaped error.

mod common;

use std::collections::BTreeMap;

use common::{choice_texts, chunks, start, TestServer};
use pagoda_engine::engine::EngineConfig;
use pagoda_server::ServerConfig;
use serde_json::{json, Value};

async fn server() -> TestServer {
    start(ServerConfig::default(), EngineConfig::default()).await
}

fn model(s: &TestServer) -> String {
    s.state.config.served_model_name.clone()
}

/// Stream text per choice index, and finish reasons.
fn collect_stream(chunks: &[Value], chat: bool) -> BTreeMap<u64, (String, Option<String>)> {
    let mut out: BTreeMap<u64, (String, Option<String>)> = BTreeMap::new();
    for c in chunks {
        for choice in c["choices"].as_array().unwrap() {
            let entry = out.entry(choice["index"].as_u64().unwrap()).or_default();
            let text = if chat {
                choice["delta"]["content"].as_str()
            } else {
                choice["text"].as_str()
            };
            entry.0.push_str(text.unwrap_or(""));
            if let Some(r) = choice["finish_reason"].as_str() {
                entry.1 = Some(r.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_streamed_and_not_agree_with_usage() {
    let s = server().await;
    let body = json!({"model": model(&s), "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0});
    let (status, r) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], model(&s));
    assert!(r["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    let text = choice["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let prompt_tokens = s
        .state
        .tokenizer
        .encode("Once upon a time", true)
        .unwrap()
        .len();
    assert_eq!(
        r["usage"],
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 12,
            "total_tokens": prompt_tokens + 12,
            // Shorter than one KV block: nothing to reuse.
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let payloads = s.stream("/v1/completions", &stream_body).await;
    let chunks = chunks(&payloads);
    let (last, body_chunks) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert_eq!(last["usage"]["prompt_tokens"], prompt_tokens);
    assert!(body_chunks
        .iter()
        .all(|c| c["usage"].is_null() && c["object"] == "text_completion"));
    let streamed = collect_stream(body_chunks, false);
    assert_eq!(streamed[&0], (text, Some("length".to_string())));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_with_a_seed_are_reproducible_and_stream_interleaved() {
    let s = server().await;
    let body =
        json!({"prompt": "The cat", "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 7});
    let (status, a) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/completions", &body).await;
    let texts = choice_texts;
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b), "same seed, same texts");
    assert!(
        texts(&a)[0] != texts(&a)[1] || texts(&a)[1] != texts(&a)[2],
        "choices use distinct seeds"
    );
    assert_eq!(a["usage"]["completion_tokens"], 30);
    let mut other = body.clone();
    other["seed"] = json!(8);
    let (_, c) = s.post("/v1/completions", &other).await;
    assert_ne!(texts(&a), texts(&c), "another seed, other texts");

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let chunks = chunks(&s.stream("/v1/completions", &stream_body).await);
    let streamed = collect_stream(&chunks, false);
    for (i, text) in texts(&a).into_iter().enumerate() {
        assert_eq!(streamed[&(i as u64)].0, text);
    }
    // Interleaved: choice indices alternate rather than arriving one choice after another.
    let order: Vec<u64> = chunks
        .iter()
        .map(|c| c["choices"][0]["index"].as_u64().unwrap())
        .collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches > 2, "{order:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_end_the_text_before_the_stop() {
    let s = server().await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0});
    let (_, r) = s.post("/v1/completions", &body).await;
    let full = r["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the greedy text.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut b = body.clone();
        b["stop"] = json!([stop.clone(), "never-appears"]);
        b["stream"] = json!(stream);
        let (text, reason) = if stream {
            let c = chunks(&s.stream("/v1/completions", &b).await);
            collect_stream(&c, false)[&0].clone()
        } else {
            let (status, r) = s.post("/v1/completions", &b).await;
            assert_eq!(status, 200);
            let c = &r["choices"][0];
            (
                c["text"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().map(str::to_string),
            )
        };
        assert_eq!(text, cut, "stream = {stream}, stop = {stop:?}");
        assert_eq!(reason.as_deref(), Some("stop"));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_have_the_openai_shapes() {
    let s = server().await;
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "logprobs": 3}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        r["choices"][0]["text"].as_str().unwrap()
    );
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        // Greedy: the chosen token is the most likely one.
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!((lp["token_logprobs"][i].as_f64().unwrap() - best).abs() < 1e-5);
        assert!(best <= 0.0);
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));

    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0,
        "logprobs": true, "top_logprobs": 2});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for entry in content {
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 2);
        let token = entry["token"].as_str().unwrap();
        assert_eq!(entry["bytes"], json!(token.as_bytes()));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streamed_and_not_agree_and_match_a_completion_of_the_template() {
    let s = server().await;
    let messages = json!([{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "A cat"}]);
    let body = json!({"messages": messages, "max_completion_tokens": 10, "temperature": 0, "n": 3});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["object"], "chat.completion");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let text = choices[0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(
        choices
            .iter()
            .all(|c| c["message"]["content"] == text.as_str()),
        "greedy n=3"
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let chunks = chunks(&s.stream("/v1/chat/completions", &stream_body).await);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let first_of_0 = chunks
        .iter()
        .find(|c| c["choices"][0]["index"] == 0)
        .unwrap();
    assert_eq!(first_of_0["choices"][0]["delta"]["role"], "assistant");
    let streamed = collect_stream(&chunks, true);
    assert_eq!(streamed.len(), 3);
    assert!(streamed
        .values()
        .all(|(t, r)| *t == text && r.as_deref() == Some("length")));

    // The same text as a completion of the rendered template.
    let (_, tokens) = s.post("/tokenize", &json!({"messages": messages})).await;
    let (_, completion) = s
        .post(
            "/v1/completions",
            &json!({"prompt": tokens["tokens"], "max_tokens": 10, "temperature": 0}),
        )
        .await;
    assert_eq!(completion["choices"][0]["text"], text.as_str());
    let (_, detok) = s
        .post("/detokenize", &json!({"tokens": tokens["tokens"]}))
        .await;
    // The demo model's tokenizer_config.json carries a chat template, which is what renders.
    assert!(!s.state.chat_template.is_fallback);
    let rendered = detok["prompt"].as_str().unwrap();
    assert!(
        rendered.contains("Tell a story.") && rendered.contains("A cat"),
        "{detok}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_an_openai_error() {
    let s = server().await;
    let limit = s.state.engine.limits().max_model_len;
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "/v1/completions",
            json!({"model": "gpt-4", "prompt": "x"}),
            404,
            Some("model"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": 5}),
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "top_p": 1.5}),
            400,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 0}),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 1000}),
            400,
            Some("n"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 50}),
            400,
            Some("logprobs"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": limit}),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 2, 99999999]}),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": []}),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"max_tokens": 3}),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": "hot"}),
            400,
            None,
        ),
        (
            "/v1/completions",
            json!({"prompt": {"text": "x"}}),
            400,
            Some("prompt"),
        ),
        ("/v1/completions", json!(["not", "an", "object"]), 400, None),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hello"}),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            400,
            Some("top_logprobs"),
        ),
        ("/v1/chat/completions", json!({}), 400, Some("messages")),
    ];
    for (path, body, status, param) in cases {
        let (got, r) = s.post(path, &body).await;
        assert_eq!(got, status, "{path} {body} → {r}");
        let e = &r["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
        assert!(e["type"].is_string() && e.get("code").is_some(), "{r}");
        assert_eq!(e["param"].as_str(), param, "{path} {body} → {r}");
    }
    // The context error says the numbers.
    let (_, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": limit}),
        )
        .await;
    let m = r["error"]["message"].as_str().unwrap();
    assert!(
        m.contains(&limit.to_string()) && m.contains(&(limit + 2).to_string()),
        "{m}"
    );
    for raw in ["{bad json", "", "null"] {
        let (status, r) = s.post_raw("/v1/completions", raw).await;
        assert_eq!(status, 400, "{raw:?} → {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error");
    }
    let r = s
        .client
        .get(format!("{}/v1/nothing", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The server still serves after all that.
    let (status, _) = s
        .post("/v1/completions", &json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_configured() {
    let config = ServerConfig {
        api_keys: vec!["sk-one".into(), "sk-two".into()],
        ..ServerConfig::default()
    };
    let s = start(config, EngineConfig::default()).await;
    let url = format!("{}/v1/models", s.base);
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let r = s
        .client
        .get(&url)
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for key in ["sk-one", "sk-two"] {
        let r = s.client.get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Probes and metrics stay open for the orchestrator.
    for path in ["/health", "/ready", "/metrics"] {
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    s.stop().await;
}
