//! Chat tool calling over real HTTP on the built-in demo model: a named function (or
//! `"required"` with one tool) comes back as `tool_calls` whose arguments are an instance of the
//! function's parameters schema, streamed or not; `"none"` keeps plain text; with a tool-call
//! parser, `"auto"` is the default and text without calls stays content; `"required"` with
//! several tools calls one of them; what pagoda cannot serve (`"auto"` without a parser, tools
//! with the same name, bad tools) is refused by parameter.

mod common;

use common::{chunks, start, TestServer};
use pagoda_engine::engine::EngineConfig;
use pagoda_server::tool_parser::ToolCallParser;
use pagoda_server::ServerConfig;
use serde_json::{json, Map, Value};

async fn server() -> TestServer {
    start(ServerConfig::default(), EngineConfig::default()).await
}

/// Parameters whose every value has a bounded length, so the call must complete.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "set_light", "description": "Set a light.",
            "parameters": {"type": "object", "properties": {
                "room": {"enum": ["kitchen", "hall"]},
                "on": {"type": "boolean"}},
                "required": ["room", "on"]}}},
        {"type": "function", "function": {"name": "ping"}},
    ])
}

fn request(tool_choice: Value, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Turn on the kitchen light."}],
        "tools": tools(),
        "tool_choice": tool_choice,
        "stream": stream,
        "temperature": 1.0,
        "seed": 9,
        "n": 2,
        "max_tokens": 400,
    })
}

fn check_arguments(arguments: &str) {
    let args: Map<String, Value> = serde_json::from_str(arguments).expect(arguments);
    assert_eq!(
        args.keys().collect::<Vec<_>>(),
        ["room", "on"],
        "{arguments}"
    );
    assert!(["kitchen", "hall"].contains(&args["room"].as_str().unwrap()));
    assert!(args["on"].is_boolean());
}

/// One streamed choice (by index), seen through its chunks: its tool-call deltas, its content,
/// and its finish reasons.
struct Streamed<'a> {
    calls: Vec<&'a Value>,
    content: String,
    reasons: Vec<&'a Value>,
}

fn streamed(chunks: &[Value], index: u64) -> Streamed<'_> {
    let of_choice = || {
        chunks
            .iter()
            .map(|c| &c["choices"][0])
            .filter(move |c| c["index"] == index)
    };
    Streamed {
        calls: of_choice()
            .filter_map(|c| c["delta"].get("tool_calls"))
            .collect(),
        content: of_choice()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect(),
        reasons: of_choice()
            .map(|c| &c["finish_reason"])
            .filter(|r| !r.is_null())
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_function_comes_back_as_a_tool_call() {
    let s = server().await;
    let named = json!({"type": "function", "function": {"name": "set_light"}});
    let (status, r) = s
        .post("/v1/chat/completions", &request(named.clone(), false))
        .await;
    assert_eq!(status, 200, "{r}");
    let mut ids = Vec::new();
    for choice in r["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
        let message = &choice["message"];
        assert_eq!(message["content"], Value::Null, "{message}");
        let calls = message["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "set_light");
        check_arguments(calls[0]["function"]["arguments"].as_str().unwrap());
        ids.push(calls[0]["id"].as_str().unwrap().to_string());
    }
    assert!(ids[0].starts_with("call") && ids[0] != ids[1], "{ids:?}");

    // Streamed: the first delta names the call, the next ones carry the arguments' text.
    let mut arguments = [String::new(), String::new()];
    let mut finish = [None, None];
    let mut names = [None, None];
    for c in chunks(
        &s.stream("/v1/chat/completions", &request(named, true))
            .await,
    ) {
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            let delta = &choice["delta"];
            assert!(delta.get("content").is_none_or(Value::is_null), "{delta}");
            if let Some(call) = delta["tool_calls"].get(0) {
                if let Some(name) = call["function"]["name"].as_str() {
                    assert!(names[i].is_none() && call["id"].is_string(), "{call}");
                    names[i] = Some(name.to_string());
                }
                arguments[i].push_str(call["function"]["arguments"].as_str().unwrap());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish[i] = Some(reason.to_string());
            }
        }
    }
    for i in 0..2 {
        assert_eq!(names[i].as_deref(), Some("set_light"));
        assert_eq!(finish[i].as_deref(), Some("tool_calls"));
        check_arguments(&arguments[i]);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_with_one_tool_calls_it_and_none_answers_in_text() {
    let s = server().await;
    let mut body = request(json!("required"), false);
    body["tools"] = json!([tools()[0]]);
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let call = &r["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "set_light");
    check_arguments(call["arguments"].as_str().unwrap());

    let mut body = request(json!("none"), false);
    body["max_tokens"] = json!(5);
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let message = &r["choices"][0]["message"];
    assert!(
        message["content"].is_string() && message.get("tool_calls").is_none(),
        "{message}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_requests_pagoda_cannot_serve_are_refused_by_parameter() {
    let s = server().await;
    let cases = [
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (
            json!({"tool_choice": "required",
                   "tools": [{"type": "function", "function": {"name": "a"}},
                             {"type": "function", "function": {"name": "a"}}]}),
            "tools",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "retrieval"}], "tool_choice": "none"}),
            "tools",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "ping"}},
                   "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ];
    for (extra, param) in cases {
        let mut body = request(json!("none"), false);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, r) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{extra}: {r}");
        assert_eq!(r["error"]["param"], param, "{extra}: {r}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_parser_auto_is_the_default_and_plain_text_stays_content() {
    let config = ServerConfig {
        tool_call_parser: Some(ToolCallParser::Hermes),
        ..ServerConfig::default()
    };
    let s = start(config, EngineConfig::default()).await;
    for choice in [Value::Null, json!("auto")] {
        let mut body = request(choice.clone(), false);
        body["n"] = json!(1);
        body["max_tokens"] = json!(40);
        if choice.is_null() {
            body.as_object_mut().unwrap().remove("tool_choice");
        }
        let (status, r) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        // The demo model writes no <tool_call> block: its text is the content.
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!text.contains("<tool_call>"), "{text}");
        assert!(
            r["choices"][0]["message"].get("tool_calls").is_none(),
            "{r}"
        );
        assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");

        body["stream"] = json!(true);
        let all = chunks(&s.stream("/v1/chat/completions", &body).await);
        let one = streamed(&all, 0);
        assert_eq!(one.content, text, "{choice}");
        assert!(one.calls.is_empty());
        assert_eq!(one.reasons, [&json!("length")]);
    }
    // "none" and a named function behave as without a parser.
    let (status, r) = s
        .post(
            "/v1/chat/completions",
            &request(
                json!({"type": "function", "function": {"name": "set_light"}}),
                false,
            ),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    check_arguments(
        r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    );
    s.stop().await;
}

/// A message that is a JSON call (here made so by a json_schema on the demo model) comes back
/// as `tool_calls` under the `llama3_json` parser, streamed (one delta with the whole call) or
/// not, with `finish_reason` "tool_calls".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_the_text_comes_back_as_tool_calls() {
    let config = ServerConfig {
        tool_call_parser: Some(ToolCallParser::Llama3Json),
        ..ServerConfig::default()
    };
    let s = start(config, EngineConfig::default()).await;
    let schema = json!({"type": "object", "properties": {
        "name": {"const": "set_light"},
        "parameters": {"type": "object", "properties": {
            "room": {"enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
            "required": ["room", "on"]}},
        "required": ["name", "parameters"]});
    let mut body = request(Value::Null, false);
    body.as_object_mut().unwrap().remove("tool_choice");
    body["n"] = json!(1);
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "call", "schema": schema}});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert!(choice["message"]["content"].is_null(), "{r}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "set_light");
    check_arguments(call["function"]["arguments"].as_str().unwrap());

    body["stream"] = json!(true);
    let all = chunks(&s.stream("/v1/chat/completions", &body).await);
    let one = streamed(&all, 0);
    assert_eq!(one.calls.len(), 1, "{all:?}");
    let call = &one.calls[0][0];
    assert_eq!(
        (&call["index"], &call["function"]["name"]),
        (&json!(0), &json!("set_light"))
    );
    assert!(call["id"].as_str().unwrap().starts_with("call"));
    check_arguments(call["function"]["arguments"].as_str().unwrap());
    assert_eq!(one.content, "");
    assert_eq!(one.reasons, [&json!("tool_calls")]);
    s.stop().await;
}

/// `"required"` with several tools: one of them is called, with arguments for its own schema,
/// streamed (one delta with the whole call) or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_with_several_tools_calls_one_of_them() {
    let s = server().await;
    let (status, r) = s
        .post("/v1/chat/completions", &request(json!("required"), false))
        .await;
    assert_eq!(status, 200, "{r}");
    let mut names = Vec::new();
    for choice in r["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
        assert!(choice["message"]["content"].is_null(), "{r}");
        let call = &choice["message"]["tool_calls"][0];
        let name = call["function"]["name"].as_str().unwrap().to_string();
        let arguments = call["function"]["arguments"].as_str().unwrap();
        match name.as_str() {
            "set_light" => check_arguments(arguments),
            "ping" => assert_eq!(arguments, "{}"),
            other => panic!("called {other}"),
        }
        names.push(name);
    }
    assert_eq!(names.len(), 2);

    let all = chunks(
        &s.stream("/v1/chat/completions", &request(json!("required"), true))
            .await,
    );
    for index in 0..2 {
        let one = streamed(&all, index);
        assert_eq!(one.calls.len(), 1, "{all:?}");
        let name = one.calls[0][0]["function"]["name"].as_str().unwrap();
        assert!(["set_light", "ping"].contains(&name), "{name}");
        assert_eq!(one.reasons, [&json!("tool_calls")]);
    }
    s.stop().await;
}
