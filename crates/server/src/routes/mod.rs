//! HTTP handlers: OpenAI endpoints, tokenizer utilities, health, readiness and metrics.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod sse;

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// Parses a JSON body whatever its content type; errors say what is wrong and where.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "The request body is empty; expected a JSON object.",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "The request body is not valid JSON"
        } else {
            "The request body has a field of the wrong type or is missing a required field"
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

/// Checks the `model` field against the served model (absent means the served one).
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None => Ok(()),
        Some(m) if m == state.config.served_model_name => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m)),
    }
}

/// A random id with a prefix, e.g. `cmpl-3f9a…`.
pub fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}-{n:032x}")
}
