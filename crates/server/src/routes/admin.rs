//! Health, readiness, metrics, the model list and the tokenizer utilities.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::common::{
    DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList, TokenizeRequest, TokenizeResponse,
};
use crate::error::ApiError;
use crate::routes::chat::chat_prompt_ids;
use crate::routes::{check_model, parse_json};
use crate::state::AppState;

/// Liveness: the process answers and its engine thread runs.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_stopped() {
        ApiError::internal("The engine thread has stopped.").into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

/// Readiness: 200 once the model is loaded and warmed up, 503 while starting or draining.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        StatusCode::OK.into_response()
    } else if state.is_draining() {
        ApiError::unavailable("The server is draining.").into_response()
    } else {
        ApiError::unavailable("The server is starting.").into_response()
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.engine),
    )
        .into_response()
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let name = state.config.served_model_name.clone();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            root: name.clone(),
            id: name,
            object: "model",
            created: state.created,
            owned_by: "pagoda",
            max_model_len: state.engine.limits().max_model_len,
        }],
    })
}

pub async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<TokenizeResponse, ApiError> {
        let request: TokenizeRequest = parse_json(&body)?;
        check_model(&state, request.model.as_deref())?;
        let tokens = match (&request.prompt, &request.messages) {
            (Some(prompt), None) => state
                .tokenizer
                .encode(prompt, request.add_special_tokens.unwrap_or(true))
                .map_err(|e| ApiError::invalid_param("prompt", format!("cannot tokenize: {e}")))?,
            (None, Some(messages)) => chat_prompt_ids(
                &state,
                Some(messages),
                None,
                request.add_generation_prompt.unwrap_or(true),
            )?,
            _ => {
                return Err(ApiError::invalid(
                    "Give exactly one of `prompt` and `messages`.",
                ))
            }
        };
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: state.engine.limits().max_model_len,
            tokens,
        })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<DetokenizeResponse, ApiError> {
        let request: DetokenizeRequest = parse_json(&body)?;
        check_model(&state, request.model.as_deref())?;
        crate::validation::check_token_ids("tokens", &request.tokens, state.vocab_size)?;
        let prompt = state
            .tokenizer
            .decode(&request.tokens, false)
            .map_err(|e| ApiError::invalid_param("tokens", format!("cannot detokenize: {e}")))?;
        Ok(DetokenizeResponse { prompt })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
