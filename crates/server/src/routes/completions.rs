//! `POST /v1/completions`. With `echo`, the prompt's text goes before each choice's, and with
//! `echo` and `logprobs` its tokens' log-probabilities before the choice's (the first prompt
//! token's null), as OpenAI's legacy completions and vLLM do; `max_tokens` 0 with `echo` scores
//! the prompt alone (one token is generated and left out).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use pagoda_core::{SampledToken, TokenId};
use serde_json::{json, Map};

use crate::api::common::Usage;
use crate::api::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
};
use crate::error::ApiError;
use crate::generation::{self, token_piece, ChoiceEvent, ChoiceProgress};
use crate::routes::{check_model, parse_json, random_id, sse};
use crate::state::{AppState, Tenant};
use crate::validation::{self, PromptInput};

type ChoiceText = ChoiceProgress<CompletionLogprobs>;

fn record_logprobs(
    state: &AppState,
    choice: &mut ChoiceText,
    output: &pagoda_engine::output::RequestOutput,
    offset: usize,
) -> CompletionLogprobs {
    let piece = token_piece(&state.tokenizer, &choice.context, output.token.token);
    let mut top = Map::new();
    for &(id, lp) in &output.token.top_logprobs {
        top.insert(
            token_piece(&state.tokenizer, &choice.context, id),
            json!(lp),
        );
    }
    CompletionLogprobs {
        tokens: vec![piece],
        token_logprobs: vec![Some(output.token.logprob)],
        top_logprobs: vec![Some(top)],
        text_offset: vec![offset],
    }
}

/// The echoed prompt's part of the logprobs: each token's piece and character offset, its
/// log-probability from `scores` (entry `i` scores token `i + 1`; the first token has none).
fn prompt_logprobs(
    state: &AppState,
    prompt: &[TokenId],
    scores: &[SampledToken],
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut offset = 0;
    for (i, &id) in prompt.iter().enumerate() {
        let context = &prompt[..i];
        let piece = token_piece(&state.tokenizer, context, id);
        let score = i.checked_sub(1).and_then(|s| scores.get(s));
        lp.token_logprobs.push(score.map(|s| s.logprob));
        lp.top_logprobs.push(score.map(|s| {
            s.top_logprobs
                .iter()
                .map(|&(t, l)| (token_piece(&state.tokenizer, context, t), json!(l)))
                .collect()
        }));
        lp.text_offset.push(offset);
        offset += piece.chars().count();
        lp.tokens.push(piece);
    }
    lp
}

/// Applies one output to its choice; returns this token's logprobs when asked for (after the
/// echoed prompt's, with the first token of a choice that echoes it). `echo_chars` is the length
/// of the echoed text, which the offsets count from.
fn apply(
    state: &AppState,
    choice: &mut ChoiceText,
    output: &pagoda_engine::output::RequestOutput,
    want_logprobs: bool,
    echo: Option<(&[TokenId], usize)>,
) -> Option<CompletionLogprobs> {
    let delta = if want_logprobs {
        let (prompt, echo_chars) = echo.unwrap_or((&[], 0));
        let mut lp = match &output.prompt_logprobs {
            Some(scores) if !prompt.is_empty() => prompt_logprobs(state, prompt, scores),
            _ => CompletionLogprobs::default(),
        };
        let offset = echo_chars + choice.text.chars().count();
        lp.extend(&record_logprobs(state, choice, output, offset));
        if let Some(all) = choice.logprobs.as_mut() {
            all.extend(&lp);
        }
        Some(lp)
    } else {
        None
    };
    choice.advance(output);
    delta
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    tenant: Option<Extension<Tenant>>,
    body: Bytes,
) -> Response {
    match run(state, tenant.map(|Extension(t)| t), body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: Arc<AppState>,
    tenant: Option<Tenant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_json(&body)?;
    check_model(&state, request.model.as_deref())?;
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param("suffix", "suffix is not supported"));
    }
    // `max_tokens` 0 with `echo`: the prompt alone (its logprobs, the usual way to score a text).
    let score_only = request.echo && request.sampling.max_tokens == Some(0);
    if score_only && request.sampling.stream {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens 0 (echo: the prompt alone) is not supported when streaming",
        ));
    }
    let max_tokens = if score_only {
        Some(1)
    } else {
        request.sampling.max_tokens.or(Some(16))
    };
    let mut generation = validation::generation(
        &request.sampling,
        max_tokens,
        "max_tokens",
        request.logprobs,
        "logprobs",
        state.vocab_size,
    )?;
    if request.echo {
        generation.params.prompt_logprobs = generation.params.logprobs;
    }
    let vocab = state.vocab_size;
    // With `echo`, each prompt's text as given (token prompts: decoded) goes before its choices'.
    let mut echoes = Vec::new();
    let prompts = validation::prompts(request.prompt.as_ref(), vocab)?
        .into_iter()
        .map(|p| {
            let (ids, text) = match p {
                PromptInput::Tokens(ids) => {
                    let text = if request.echo {
                        state.tokenizer.decode(&ids, false).map_err(|e| {
                            ApiError::invalid_param("prompt", format!("cannot detokenize: {e}"))
                        })?
                    } else {
                        String::new()
                    };
                    (ids, text)
                }
                PromptInput::Text(text) => {
                    let ids = state.tokenizer.encode(&text, true).map_err(|e| {
                        ApiError::invalid_param("prompt", format!("cannot tokenize: {e}"))
                    })?;
                    (ids, text)
                }
            };
            if request.echo {
                echoes.extend(std::iter::repeat_n(text, generation.n));
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prepared = generation::prepare(&state, prompts, &generation, "max_tokens")?;
    let guard = state.in_flight_guard();
    let mut submission = generation::submit(&state, prepared, &generation, tenant.as_ref())?;
    let id = random_id("cmpl");
    let created = crate::state::unix_now();
    let model = state.config.served_model_name.clone();
    let want_logprobs = generation.params.logprobs.is_some();
    let mut choices = ChoiceText::for_choices(&submission, want_logprobs);
    // With echo: each choice's prompt and the length of its echoed text, for the logprobs.
    let echo_of: Vec<(Vec<TokenId>, usize)> = echoes
        .iter()
        .enumerate()
        .map(|(i, text)| (submission.prompt_of(i).to_vec(), text.chars().count()))
        .collect();

    if generation.stream {
        let (chunk_state, chunk_id, chunk_model) = (Arc::clone(&state), id.clone(), model.clone());
        let format = Box::new(move |event: &ChoiceEvent| {
            let ChoiceEvent::Output { index, output, .. } = event else {
                return Vec::new();
            };
            let choice = &mut choices[*index];
            let echo = echo_of.get(*index).map(|(p, n)| (&p[..], *n));
            let logprobs = apply(&chunk_state, choice, output, want_logprobs, echo);
            // The echoed prompt goes out with the choice's first chunk.
            let echo = echoes
                .get_mut(*index)
                .map(std::mem::take)
                .unwrap_or_default();
            if output.text.is_empty()
                && echo.is_empty()
                && output.finished.is_none()
                && logprobs.is_none()
            {
                return Vec::new();
            }
            vec![json!({
                "id": chunk_id,
                "object": "text_completion",
                "created": created,
                "model": chunk_model,
                "choices": [{
                    "index": index,
                    "text": echo + &output.text,
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                }],
            })]
        });
        let usage_chunk = Box::new(
            move |_usage: Usage| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": []}),
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
            let echo = echo_of.get(index).map(|(p, n)| (&p[..], *n));
            apply(&state, &mut choices[index], output, want_logprobs, echo);
            if score_only {
                // Keep the prompt's part only.
                let choice = &mut choices[index];
                choice.text.clear();
                if let Some(lp) = choice.logprobs.as_mut() {
                    lp.truncate(echo.map_or(0, |(p, _)| p.len()));
                }
            }
        })
        .await?;
    let completion_tokens = if score_only { 0 } else { completion_tokens };
    drop(guard);
    let response = CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index,
                text: match echoes.get_mut(index) {
                    Some(echo) => std::mem::take(echo) + &c.text,
                    None => c.text,
                },
                logprobs: c.logprobs,
                finish_reason: c.finish_reason,
            })
            .collect(),
        usage: Some(submission.usage(completion_tokens)),
    };
    Ok(axum::Json(response).into_response())
}
