//! `response_format: {"type": "json_object"}` over real HTTP on the built-in demo model (random
//! weights): completions and chat, streamed and not, always give a valid prefix of a JSON object;
//! a finished one parses and ends with `finish_reason` "stop" at its closing brace; a
//! `json_schema` gives an instance of the schema, and one pagoda cannot follow is refused.

mod common;

use common::{chunks, start, TestServer};
use pagoda_engine::engine::EngineConfig;
use pagoda_engine::structured::JsonState;
use pagoda_server::ServerConfig;
use serde_json::{json, Map, Value};

async fn server() -> TestServer {
    start(ServerConfig::default(), EngineConfig::default()).await
}

async fn token_id(s: &TestServer, text: &str) -> u32 {
    let (status, r) = s
        .post(
            "/tokenize",
            &json!({"prompt": text, "add_special_tokens": false}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let tokens = r["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{text:?} is one token: {r}");
    tokens[0].as_u64().unwrap() as u32
}

/// Each choice's text and finish reason, streamed or not, from completions or chat.
async fn choices(s: &TestServer, chat: bool, stream: bool, extra: Value) -> Vec<(String, String)> {
    let (path, mut body) = if chat {
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Give me a JSON object."}]}),
        )
    } else {
        ("/v1/completions", json!({"prompt": "A JSON object:"}))
    };
    body["response_format"] = json!({"type": "json_object"});
    body["stream"] = json!(stream);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let text_of = |choice: &Value| -> String {
        let text = if chat {
            if stream {
                &choice["delta"]["content"]
            } else {
                &choice["message"]["content"]
            }
        } else {
            &choice["text"]
        };
        text.as_str().unwrap_or("").to_string()
    };
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let mut out = vec![(String::new(), String::new()); n];
    if stream {
        for c in chunks(&s.stream(path, &body).await) {
            for choice in c["choices"].as_array().unwrap() {
                let i = choice["index"].as_u64().unwrap() as usize;
                out[i].0.push_str(&text_of(choice));
                if let Some(reason) = choice["finish_reason"].as_str() {
                    out[i].1 = reason.to_string();
                }
            }
        }
    } else {
        let (status, r) = s.post(path, &body).await;
        assert_eq!(status, 200, "{r}");
        for choice in r["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            out[i] = (
                text_of(choice),
                choice["finish_reason"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_closes_and_parses_in_completions_and_chat_streamed_or_not() {
    let s = server().await;
    // Only "{", "}" and " " may be sampled: the format's whitespace limit forces "{" then "}".
    let mut allowed = Vec::new();
    for text in ["{", "}", " "] {
        allowed.push(token_id(&s, text).await);
    }
    for chat in [false, true] {
        for stream in [false, true] {
            let extra = json!({
                "allowed_token_ids": allowed,
                "temperature": 1.0,
                "seed": 3,
                "n": 2,
                "max_tokens": 100,
            });
            for (text, reason) in choices(&s, chat, stream, extra).await {
                let what = format!("chat = {chat}, stream = {stream}: {text:?}");
                assert_eq!(reason, "stop", "{what}");
                assert_eq!(text.trim().replace(' ', ""), "{}", "{what}");
                serde_json::from_str::<Map<String, Value>>(&text).expect(&what);
            }
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_output_is_always_a_json_prefix() {
    let s = server().await;
    for chat in [false, true] {
        for stream in [false, true] {
            let extra = json!({"temperature": 1.0, "seed": 11, "n": 3, "max_tokens": 40});
            for (text, reason) in choices(&s, chat, stream, extra).await {
                let what = format!("chat = {chat}, stream = {stream}: {text:?}");
                assert!(
                    JsonState::object().after(text.as_bytes()).is_some(),
                    "{what}"
                );
                if reason == "stop" {
                    serde_json::from_str::<Map<String, Value>>(&text).expect(&what);
                } else {
                    assert_eq!(reason, "length", "{what}");
                }
            }
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_is_followed_to_a_complete_instance() {
    let s = server().await;
    // Bounded values (and bounded whitespace): every output must close within max_tokens.
    let schema = json!({"type": "object", "properties": {
        "color": {"enum": ["red", "green"]},
        "ok": {"type": ["boolean", "null"]},
        "sizes": {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 2}},
        "required": ["color", "sizes"]});
    for chat in [false, true] {
        for stream in [false, true] {
            let extra = json!({
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "shape", "schema": schema, "strict": true}},
                "temperature": 1.0, "seed": 5, "n": 2, "max_tokens": 600,
            });
            for (text, reason) in choices(&s, chat, stream, extra).await {
                let what = format!("chat = {chat}, stream = {stream}: {text:?}");
                assert_eq!(reason, "stop", "{what}");
                let value: Map<String, Value> = serde_json::from_str(&text).expect(&what);
                assert!(
                    ["red", "green"].contains(&value["color"].as_str().unwrap()),
                    "{what}"
                );
                assert!(value["sizes"].as_array().unwrap().len() <= 2, "{what}");
                let keys: Vec<&str> = value.keys().map(String::as_str).collect();
                assert!(
                    keys == ["color", "sizes"] || keys == ["color", "ok", "sizes"],
                    "{what}"
                );
            }
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_cannot_be_followed_is_refused_with_the_reason_and_place() {
    let s = server().await;
    for (schema, words) in [
        (
            json!({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}}),
            ["\"format\"", "/properties/when"],
        ),
        (
            json!({"type": "array"}),
            ["root must be an object", "\"/\""],
        ),
    ] {
        let body = json!({
            "prompt": "x",
            "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        });
        let (status, r) = s.post("/v1/completions", &body).await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], "response_format", "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        for w in words {
            assert!(message.contains(w), "{message}");
        }
    }
    s.stop().await;
}
