//! `logit_bias`, `min_tokens`, `allowed_token_ids` and completions' `echo` over real HTTP on the
//! built-in demo model, streamed and not, and fields that would change the output but are not
//! implemented (vLLM's guided decoding, `tool_choice` "auto", `best_of`, `suffix`) refused by
//! name instead of ignored.

mod common;

use common::{choice_texts, chunks, start, TestServer};
use pagoda_engine::engine::EngineConfig;
use pagoda_server::ServerConfig;
use serde_json::{json, Value};

async fn server() -> TestServer {
    start(ServerConfig::default(), EngineConfig::default()).await
}

/// `base` with the fields of `extra` set over it.
fn merged(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

async fn detokenize(s: &TestServer, ids: &[u32]) -> String {
    let (status, r) = s.post("/detokenize", &json!({ "tokens": ids })).await;
    assert_eq!(status, 200, "{r}");
    r["prompt"].as_str().unwrap().to_string()
}

/// A greedy completion with `extra` fields: its text, finish reason and token count.
async fn greedy_text(s: &TestServer, extra: Value) -> (String, String, u64) {
    let body = merged(
        json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}),
        extra,
    );
    let (status, r) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    (
        choice["text"].as_str().unwrap().to_string(),
        choice["finish_reason"].as_str().unwrap().to_string(),
        r["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_positive_bias_forces_a_token_in_completions_and_chat_streamed_or_not() {
    let s = server().await;
    let forced = 77u32;
    let want = detokenize(&s, &[forced; 5]).await;
    let bias = json!({ forced.to_string(): 100 });
    for stream in [false, true] {
        for chat in [false, true] {
            let (path, mut body) = if chat {
                (
                    "/v1/chat/completions",
                    json!({"messages": [{"role": "user", "content": "hi"}]}),
                )
            } else {
                ("/v1/completions", json!({"prompt": "Once upon a time"}))
            };
            body["max_tokens"] = json!(5);
            body["temperature"] = json!(1.0);
            body["logit_bias"] = bias.clone();
            body["ignore_eos"] = json!(true);
            body["stream"] = json!(stream);
            let text = if stream {
                let mut text = String::new();
                for c in chunks(&s.stream(path, &body).await) {
                    let choice = &c["choices"][0];
                    let piece = if chat {
                        &choice["delta"]["content"]
                    } else {
                        &choice["text"]
                    };
                    text.push_str(piece.as_str().unwrap_or(""));
                }
                text
            } else {
                let (status, r) = s.post(path, &body).await;
                assert_eq!(status, 200, "{r}");
                let choice = &r["choices"][0];
                let text = if chat {
                    &choice["message"]["content"]
                } else {
                    &choice["text"]
                };
                text.as_str().unwrap().to_string()
            };
            assert_eq!(text, want, "chat = {chat}, stream = {stream}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_tokens_holds_back_a_stop_token_that_a_bias_forces() {
    let s = server().await;
    let stop_id = 91u32;
    let forced = |min_tokens: u64| {
        json!({
            "logit_bias": { stop_id.to_string(): 100 },
            "stop_token_ids": [stop_id],
            "min_tokens": min_tokens,
            "max_tokens": 16,
        })
    };
    let (_, reason, n) = greedy_text(&s, forced(0)).await;
    assert_eq!((reason.as_str(), n), ("stop", 1));
    let (text, reason, n) = greedy_text(&s, forced(4)).await;
    assert_eq!((reason.as_str(), n), ("stop", 5));
    // The first four tokens are the unbiased greedy ones (the stop token could not be chosen).
    let (plain, _, _) = greedy_text(&s, json!({"max_tokens": 4, "ignore_eos": true})).await;
    assert!(text.starts_with(&plain), "{text:?} vs {plain:?}");
    // min_tokens above max_tokens is refused.
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 2, "min_tokens": 3}),
        )
        .await;
    assert_eq!(
        (status, r["error"]["param"].as_str()),
        (400, Some("min_tokens"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_tokens_come_out() {
    let s = server().await;
    let body = json!({
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 3,
        "ignore_eos": true,
        "allowed_token_ids": [42],
    });
    let (status, r) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["choices"][0]["text"].as_str().unwrap(),
        detokenize(&s, &[42; 8]).await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_output_changing_fields_are_refused_by_name() {
    let s = server().await;
    let chat = |extra: Value| {
        let base = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        ("/v1/chat/completions", merged(base, extra))
    };
    let completion = |extra: Value| {
        let base = json!({"prompt": "hi", "max_tokens": 2});
        ("/v1/completions", merged(base, extra))
    };
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let refused = [
        (
            chat(json!({"response_format": {"type": "json_schema", "json_schema": {}}})),
            "response_format",
        ),
        (
            chat(json!({"tools": tool, "tool_choice": "auto"})),
            "tool_choice",
        ),
        (
            chat(json!({"guided_json": {"type": "object"}})),
            "guided_json",
        ),
        (completion(json!({"best_of": 3})), "best_of"),
        (completion(json!({"suffix": "end"})), "suffix"),
        (
            completion(json!({"guided_regex": "[a-z]+"})),
            "guided_regex",
        ),
        (
            completion(json!({"logit_bias": {"999999": 5}})),
            "logit_bias",
        ),
        (
            completion(json!({"allowed_token_ids": [999999]})),
            "allowed_token_ids",
        ),
    ];
    for ((path, body), param) in refused {
        let (status, r) = s.post(path, &body).await;
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["param"].as_str(), Some(param), "{body}: {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error");
    }
    let accepted = [
        chat(json!({"response_format": {"type": "text"}, "tool_choice": "none", "tools": []})),
        completion(json!({"best_of": 2, "n": 2, "suffix": ""})),
    ];
    for (path, body) in accepted {
        let (status, r) = s.post(path, &body).await;
        assert_eq!(status, 200, "{body}: {r}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_puts_each_prompt_before_its_choices() {
    let s = server().await;
    let base = json!({"max_tokens": 5, "temperature": 0, "ignore_eos": true});
    let with = |extra: Value| merged(base.clone(), extra);
    let texts = choice_texts;
    let prompts = json!(["Once upon a time", "The cat"]);
    let (_, plain) = s
        .post("/v1/completions", &with(json!({"prompt": prompts, "n": 2})))
        .await;
    let (status, echoed) = s
        .post(
            "/v1/completions",
            &with(json!({"prompt": prompts, "n": 2, "echo": true})),
        )
        .await;
    assert_eq!(status, 200, "{echoed}");
    for field in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(echoed["usage"][field], plain["usage"][field], "{field}");
    }
    let (plain, echoed) = (texts(&plain), texts(&echoed));
    for (i, prefix) in ["Once upon a time", "Once upon a time", "The cat", "The cat"]
        .iter()
        .enumerate()
    {
        assert_eq!(echoed[i], format!("{prefix}{}", plain[i]), "choice {i}");
    }

    // Streamed: the prompt arrives with the first chunk, the whole text is the same.
    let mut streamed = String::new();
    let body = with(json!({"prompt": "Once upon a time", "echo": true, "stream": true}));
    let c = chunks(&s.stream("/v1/completions", &body).await);
    assert!(c[0]["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Once upon a time"));
    for chunk in &c {
        streamed.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(streamed, echoed[0]);

    // Token prompts echo their decoded text.
    let ids = [40u32, 41, 42];
    let (_, r) = s
        .post(
            "/v1/completions",
            &with(json!({"prompt": ids, "echo": true})),
        )
        .await;
    let (_, alone) = s
        .post("/v1/completions", &with(json!({"prompt": ids})))
        .await;
    let decoded = detokenize(&s, &ids).await;
    assert_eq!(texts(&r)[0], format!("{decoded}{}", texts(&alone)[0]));
    s.stop().await;
}

/// `echo` with `logprobs`: the prompt's tokens come first in the logprobs (the first with null),
/// each scored as the model scores it when it is the next token: extending a prompt by the token
/// it generated gives that token the same log-probability as a prompt token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_logprobs_scores_the_prompt_tokens() {
    let s = server().await;
    let prompt = [1u32, 40, 41, 42, 43, 44, 45];
    let body = json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true,
                      "logprobs": 2, "echo": true, "n": 2});
    let (status, r) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let n = prompt.len() + 3;
    for field in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[field].as_array().unwrap().len(), n, "{field}: {lp}");
    }
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    for i in 1..n {
        let x = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(x <= 0.0, "{x}");
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 2);
    }
    // Offsets count characters of the whole echoed text; the generated tokens' pieces make the
    // generated text.
    let text = r["choices"][0]["text"].as_str().unwrap();
    let decoded = detokenize(&s, &prompt).await;
    let generated: String = lp["tokens"].as_array().unwrap()[prompt.len()..]
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(text, format!("{decoded}{generated}"));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert_eq!(offsets[prompt.len()] as usize, decoded.chars().count());
    // Both choices carry the prompt's part.
    assert_eq!(
        r["choices"][1]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()[..prompt.len()],
        lp["token_logprobs"].as_array().unwrap()[..prompt.len()]
    );
    // A shorter prompt scores its tokens the same.
    let (_, short) = s
        .post(
            "/v1/completions",
            &json!({"prompt": prompt[..4], "max_tokens": 1, "temperature": 0, "logprobs": 0,
                    "echo": true}),
        )
        .await;
    let short = short["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .clone();
    for i in 1..4 {
        let (a, b) = (
            short[i].as_f64().unwrap(),
            lp["token_logprobs"][i].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "token {i}: {a} vs {b}");
    }

    // max_tokens 0 with echo: the prompt alone, scored the same.
    let (status, scored) = s
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 0, "logprobs": 2, "echo": true}),
        )
        .await;
    assert_eq!(status, 200, "{scored}");
    assert_eq!(scored["choices"][0]["text"], json!(decoded));
    assert_eq!(scored["usage"]["completion_tokens"], 0);
    let only = &scored["choices"][0]["logprobs"];
    assert_eq!(only["tokens"].as_array().unwrap().len(), prompt.len());
    for i in 1..prompt.len() {
        let (a, b) = (
            only["token_logprobs"][i].as_f64().unwrap(),
            lp["token_logprobs"][i].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "token {i}: {a} vs {b}");
    }
    for (body, param) in [
        (
            json!({"prompt": prompt, "max_tokens": 0, "echo": true, "stream": true}),
            "max_tokens",
        ),
        (json!({"prompt": prompt, "max_tokens": 0}), "max_tokens"),
    ] {
        let (status, r) = s.post("/v1/completions", &body).await;
        assert_eq!(
            (status, r["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }

    // Streamed: the same arrays, the prompt's with the first chunk.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["n"] = json!(1);
    let c = chunks(&s.stream("/v1/completions", &streamed).await);
    let first_lp = &c[0]["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(first_lp.as_array().unwrap().len(), prompt.len() + 1);
    let all: Vec<Value> = c
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["logprobs"]["token_logprobs"].as_array())
        .flatten()
        .cloned()
        .collect();
    let want = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(all.len(), want.len());
    for (a, b) in all.iter().zip(want) {
        match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-5, "{a} vs {b}"),
            _ => assert!(a.is_null() && b.is_null(), "{a} vs {b}"),
        }
    }
    s.stop().await;
}
