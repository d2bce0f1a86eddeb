//! The router: endpoints, API-key check, per-request ids and logs, HTTP status counts.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use crate::error::ApiError;
use crate::routes::{admin, chat, completions, random_id};
use crate::state::{AppState, Tenant};

/// The whole HTTP application over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(admin::models))
        .route("/tokenize", post(admin::tokenize))
        .route("/detokenize", post(admin::detokenize))
        .route_layer(from_fn_with_state(Arc::clone(&state), require_api_key));
    Router::new()
        .merge(api)
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics))
        .fallback(not_found)
        .layer(from_fn_with_state(Arc::clone(&state), observe_http))
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    ApiError::not_found(request.uri().path()).into_response()
}

/// 401 unless a configured key is sent as `Authorization: Bearer <key>` (when keys are set).
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.config.api_keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Every key is compared (no early exit), so timing reveals neither which key matched nor
    // how much of one.
    let matched = presented.and_then(|key| {
        state
            .config
            .api_keys
            .iter()
            .enumerate()
            .fold(None, |found, (i, k)| {
                if constant_time_eq(k, key) {
                    Some(i)
                } else {
                    found
                }
            })
    });
    match matched {
        Some(index) => {
            request.extensions_mut().insert(Tenant(index));
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Gives each request an id (the client's `x-request-id` or a new one), logs it in a span,
/// echoes it in the response and counts the response status.
async fn observe_http(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| random_id("req"));
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %request_id, %method, %path);
    let start = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[status.as_str()])
        .inc();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = start.elapsed().as_secs_f64() * 1e3,
            "response"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_is_exact() {
        assert!(constant_time_eq("sk-abc", "sk-abc"));
        assert!(!constant_time_eq("sk-abc", "sk-abd"));
        assert!(!constant_time_eq("sk-abc", "sk-ab"));
    }
}
