//! `POST /v1/chat/completions`: messages (and tools) rendered with the chat template, then
//! generated like a completion of the rendered prompt (tokenized without adding special tokens:
//! the template places them). A forced tool call (see [`crate::tools`]) is generated under its
//! parameters schema and answered as `tool_calls`; with `tool_choice` "auto" the text is parsed
//! for tool calls in the model's format ([`crate::tool_parser`]), streamed or not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use pagoda_core::{ResponseFormat, TokenId};
use pagoda_engine::output::RequestOutput;
use serde_json::json;

use crate::api::chat::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionRequest, ChatCompletionResponse,
    ChatLogprobs, Delta, FunctionCall, TokenLogprob, ToolCall, TopLogprob,
};
use crate::api::common::Usage;
use crate::error::ApiError;
use crate::generation::{self, token_piece, ChoiceEvent, ChoiceProgress};
use crate::routes::{check_model, parse_json, random_id, sse};
use crate::state::{AppState, Tenant};
use crate::tool_parser::{self, Piece, StreamingToolParser, ToolCallParser};
use crate::tools::{self, ForcedCall, ToolMode};
use crate::validation;

type ChoiceText = ChoiceProgress<ChatLogprobs>;

fn token_logprob(state: &AppState, choice: &ChoiceText, output: &RequestOutput) -> TokenLogprob {
    let token = token_piece(&state.tokenizer, &choice.context, output.token.token);
    TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: output.token.logprob,
        top_logprobs: output
            .token
            .top_logprobs
            .iter()
            .map(|&(id, logprob)| {
                let token = token_piece(&state.tokenizer, &choice.context, id);
                TopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                }
            })
            .collect(),
    }
}

fn apply(
    state: &AppState,
    choice: &mut ChoiceText,
    output: &RequestOutput,
    want_logprobs: bool,
) -> Option<TokenLogprob> {
    let lp = want_logprobs.then(|| token_logprob(state, choice, output));
    if let (Some(all), Some(lp)) = (choice.logprobs.as_mut(), &lp) {
        all.content.push(lp.clone());
    }
    choice.advance(output);
    lp
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    tenant: Option<Extension<Tenant>>,
    body: Bytes,
) -> Response {
    match run(state, tenant.map(|Extension(t)| t), body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Renders and tokenizes chat messages and tools (shared with `/tokenize`).
pub fn chat_prompt_ids(
    state: &AppState,
    messages: Option<&[crate::api::chat::ChatMessage]>,
    tools: Option<&[serde_json::Value]>,
    add_generation_prompt: bool,
) -> Result<Vec<TokenId>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid_param("messages", "messages is required"))?;
    let text = state
        .chat_template
        .render(messages, tools, add_generation_prompt)?;
    state
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid_param("messages", format!("cannot tokenize: {e}")))
}

async fn run(
    state: Arc<AppState>,
    tenant: Option<Tenant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = parse_json(&body)?;
    check_model(&state, request.model.as_deref())?;
    let mode = tools::tool_mode(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        state.config.tool_call_parser,
    )?;
    // A forced call's arguments follow its schema; several forced functions are generated as
    // `{"name": {arguments}}` and parsed like an "auto" answer.
    // `forced`: the name of the function a request must call.
    let (forced, auto, forced_schema) = match mode {
        ToolMode::Text => (None, None, None),
        ToolMode::Forced(ForcedCall { name, parameters }) => (Some(name), None, Some(parameters)),
        ToolMode::ForcedAny(schema) => (None, Some(ToolCallParser::NamedObject), Some(schema)),
        ToolMode::Auto(parser) => (None, Some(parser), None),
    };
    let (max_tokens, param) = match request.max_completion_tokens {
        Some(m) => (Some(m), "max_completion_tokens"),
        None => (request.sampling.max_tokens, "max_tokens"),
    };
    let top_logprobs = match (request.logprobs, request.top_logprobs) {
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ))
        }
        (false, _) => None,
        (true, n) => Some(n.unwrap_or(0)),
    };
    let mut generation = validation::generation(
        &request.sampling,
        max_tokens,
        param,
        top_logprobs,
        "top_logprobs",
        state.vocab_size,
    )?;
    if let Some(schema) = forced_schema {
        if generation.params.response_format != ResponseFormat::Text {
            return Err(ApiError::invalid_param(
                "response_format",
                "response_format cannot be combined with a forced tool call (its arguments follow the function's parameters schema)",
            ));
        }
        generation.params.response_format = ResponseFormat::JsonSchema(schema);
    }
    let ids = chat_prompt_ids(
        &state,
        request.messages.as_deref(),
        request.tools.as_deref(),
        request.add_generation_prompt.unwrap_or(true),
    )?;
    let prepared = generation::prepare(&state, vec![ids], &generation, param)?;
    let guard = state.in_flight_guard();
    let mut submission = generation::submit(&state, prepared, &generation, tenant.as_ref())?;
    let id = random_id("chatcmpl");
    let created = crate::state::unix_now();
    let model = state.config.served_model_name.clone();
    let want_logprobs = generation.params.logprobs.is_some();
    let mut choices = ChoiceText::for_choices(&submission, want_logprobs);
    // Streaming: whether a choice's opening `role` chunk was sent.
    let mut started = vec![false; choices.len()];
    // A forced call's id per choice.
    let call_ids: Vec<String> = (0..choices.len()).map(|_| random_id("call")).collect();
    // "auto": each choice's text parser and the calls it has sent.
    let mut parsers: Vec<Option<StreamingToolParser>> = (0..choices.len())
        .map(|_| auto.map(StreamingToolParser::new))
        .collect();
    let mut calls_sent = vec![0usize; choices.len()];

    if generation.stream {
        let (chunk_state, chunk_id, chunk_model) = (Arc::clone(&state), id.clone(), model.clone());
        let format = Box::new(move |event: &ChoiceEvent| {
            let ChoiceEvent::Output { index, output, .. } = event else {
                return Vec::new();
            };
            let chunk = |choice: ChatChunkChoice| {
                json!({
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": chunk_model,
                    "choices": [choice],
                })
            };
            let choice = &mut choices[*index];
            let mut chunks = Vec::new();
            if !started[*index] {
                started[*index] = true;
                let delta = match &forced {
                    None => Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    Some(name) => Delta {
                        role: Some("assistant"),
                        content: None,
                        tool_calls: Some(vec![json!({
                            "index": 0, "id": call_ids[*index], "type": "function",
                            "function": {"name": name, "arguments": ""},
                        })]),
                    },
                };
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                }));
            }
            let lp = apply(&chunk_state, choice, output, want_logprobs);
            if let Some(parser) = parsers[*index].as_mut() {
                let finishing = choice.finish_reason.is_some();
                let mut deltas =
                    auto_deltas(parser, &output.text, finishing, &mut calls_sent[*index]);
                // Logprobs of text held back (a possible tag) still go out with their token.
                if deltas.is_empty() && lp.is_some() {
                    deltas.push(Delta {
                        content: Some(String::new()),
                        ..Delta::default()
                    });
                }
                let mut lp = lp;
                for delta in deltas {
                    chunks.push(chunk(ChatChunkChoice {
                        index: *index,
                        delta,
                        logprobs: lp.take().map(|lp| ChatLogprobs { content: vec![lp] }),
                        finish_reason: None,
                    }));
                }
            } else if !output.text.is_empty() || lp.is_some() {
                let delta = match &forced {
                    None => Delta {
                        content: Some(output.text.clone()),
                        ..Delta::default()
                    },
                    Some(_) => Delta {
                        tool_calls: Some(vec![json!({
                            "index": 0, "function": {"arguments": output.text},
                        })]),
                        ..Delta::default()
                    },
                };
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta,
                    logprobs: lp.map(|lp| ChatLogprobs { content: vec![lp] }),
                    finish_reason: None,
                }));
            }
            if choice.finish_reason.is_some() {
                let reason = if calls_sent[*index] > 0 {
                    Some("tool_calls")
                } else {
                    finish_reason(choice.finish_reason, forced.is_some())
                };
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: reason,
                }));
            }
            chunks
        });
        let usage_chunk = Box::new(
            move |_usage: Usage| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}),
        );
        return Ok(sse::respond(
            state,
            guard,
            submission,
            generation.include_usage,
            format,
            usage_chunk,
        ));
    }

    let completion_tokens = submission
        .collect(&state, |index, output| {
            apply(&state, &mut choices[index], output, want_logprobs);
        })
        .await?;
    drop(guard);
    let response = ChatCompletionResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let message = match (&forced, auto) {
                    (None, None) => AssistantMessage {
                        role: "assistant",
                        content: Some(c.text),
                        tool_calls: None,
                    },
                    (None, Some(parser)) => auto_message(parser, c.text),
                    (Some(name), _) => AssistantMessage {
                        role: "assistant",
                        content: None,
                        tool_calls: Some(vec![ToolCall {
                            id: call_ids[index].clone(),
                            kind: "function",
                            function: FunctionCall {
                                name: name.clone(),
                                arguments: c.text,
                            },
                        }]),
                    },
                };
                // A message that calls tools in its text finishes with "tool_calls".
                let called = auto.is_some() && message.tool_calls.is_some();
                ChatChoice {
                    index,
                    finish_reason: if called {
                        Some("tool_calls")
                    } else {
                        finish_reason(c.finish_reason, forced.is_some())
                    },
                    message,
                    logprobs: c.logprobs,
                }
            })
            .collect(),
        usage: submission.usage(completion_tokens),
    };
    Ok(axum::Json(response).into_response())
}

/// The message of an "auto" choice: its tool calls, and the text around them as content (none
/// when only whitespace is left); all text when it calls nothing.
fn auto_message(parser: ToolCallParser, text: String) -> AssistantMessage {
    let mut content = String::new();
    let mut calls = Vec::new();
    for piece in tool_parser::parse_all(parser, &text) {
        match piece {
            Piece::Content(t) => content.push_str(&t),
            Piece::Call(call) => calls.push(ToolCall {
                id: random_id("call"),
                kind: "function",
                function: FunctionCall {
                    name: call.name,
                    arguments: call.arguments,
                },
            }),
        }
    }
    if calls.is_empty() {
        return AssistantMessage {
            role: "assistant",
            content: Some(text),
            tool_calls: None,
        };
    }
    AssistantMessage {
        role: "assistant",
        content: (!content.trim().is_empty()).then_some(content),
        tool_calls: Some(calls),
    }
}

/// A forced call that completed its arguments finishes with `"tool_calls"` (OpenAI's reason for
/// a message that calls tools); anything else as generated.
fn finish_reason(reason: Option<&'static str>, forced: bool) -> Option<&'static str> {
    match (reason, forced) {
        (Some("stop"), true) => Some("tool_calls"),
        _ => reason,
    }
}

/// The deltas of an "auto" choice's new text: content as the parser passes it on, then each
/// call once complete, numbered from `calls_sent` (which it advances).
fn auto_deltas(
    parser: &mut StreamingToolParser,
    text: &str,
    finishing: bool,
    calls_sent: &mut usize,
) -> Vec<Delta> {
    let mut pieces = Vec::new();
    parser.push(text, &mut pieces);
    if finishing {
        parser.finish(&mut pieces);
    }
    pieces
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Content(text) if text.is_empty() => None,
            Piece::Content(text) => Some(Delta {
                content: Some(text),
                ..Delta::default()
            }),
            Piece::Call(call) => {
                *calls_sent += 1;
                Some(Delta {
                    tool_calls: Some(vec![json!({
                        "index": *calls_sent - 1, "id": random_id("call"), "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })]),
                    ..Delta::default()
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_messages_carry_the_calls_and_the_text_around_them() {
        let text = "Checking.\n<tool_call>{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>";
        let m = auto_message(ToolCallParser::Hermes, text.to_string());
        assert_eq!(m.content.as_deref(), Some("Checking.\n"));
        let calls = m.tool_calls.unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "weather");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Oslo"}"#);
        assert!(calls[0].id.starts_with("call"));

        // Only whitespace around the calls: no content.
        let m = auto_message(
            ToolCallParser::Hermes,
            " <tool_call>{\"name\": \"a\"}</tool_call>\n".to_string(),
        );
        assert_eq!(m.content, None);
        assert_eq!(m.tool_calls.unwrap()[0].function.arguments, "{}");

        // No call: all text, untouched.
        let plain = "  just <tool_call>{broken</tool_call> text ".to_string();
        let m = auto_message(ToolCallParser::Hermes, plain.clone());
        assert_eq!(
            (m.content, m.tool_calls.is_none()),
            (Some(plain.clone()), true)
        );
    }
}
