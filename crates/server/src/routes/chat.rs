//! `POST /v1/chat/completions`: messages rendered with the chat template, then generated like a
//! completion of the rendered prompt (tokenized without adding special tokens: the template
//! places them).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use pagoda_core::TokenId;
use pagoda_engine::output::RequestOutput;
use serde_json::json;

use crate::api::chat::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionRequest, ChatCompletionResponse,
    ChatLogprobs, Delta, TokenLogprob, TopLogprob,
};
use crate::api::common::Usage;
use crate::error::ApiError;
use crate::generation::{self, token_piece, ChoiceEvent, ChoiceProgress};
use crate::routes::{check_model, parse_json, random_id, sse};
use crate::state::{AppState, Tenant};
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

/// Renders and tokenizes chat messages (shared with `/tokenize`).
pub fn chat_prompt_ids(
    state: &AppState,
    messages: Option<&[crate::api::chat::ChatMessage]>,
    add_generation_prompt: bool,
) -> Result<Vec<TokenId>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid_param("messages", "messages is required"))?;
    let text = state
        .chat_template
        .render(messages, add_generation_prompt)?;
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
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid_param(
            "tools",
            "tool calling is not supported: send the request without tools",
        ));
    }
    if let Some(choice) = request
        .tool_choice
        .as_ref()
        .filter(|c| !c.is_null() && c.as_str() != Some("none"))
    {
        return Err(ApiError::invalid_param(
            "tool_choice",
            format!("tool_choice {choice} is not supported (tool calling is not implemented); only \"none\""),
        ));
    }
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
    let generation = validation::generation(
        &request.sampling,
        max_tokens,
        param,
        top_logprobs,
        "top_logprobs",
        state.vocab_size,
    )?;
    let ids = chat_prompt_ids(
        &state,
        request.messages.as_deref(),
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
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                }));
            }
            let lp = apply(&chunk_state, choice, output, want_logprobs);
            if !output.text.is_empty() || lp.is_some() {
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta: Delta {
                        role: None,
                        content: Some(output.text.clone()),
                    },
                    logprobs: lp.map(|lp| ChatLogprobs { content: vec![lp] }),
                    finish_reason: None,
                }));
            }
            if choice.finish_reason.is_some() {
                chunks.push(chunk(ChatChunkChoice {
                    index: *index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: choice.finish_reason,
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
            .map(|(index, c)| ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: c.text,
                },
                logprobs: c.logprobs,
                finish_reason: c.finish_reason,
            })
            .collect(),
        usage: submission.usage(completion_tokens),
    };
    Ok(axum::Json(response).into_response())
}
