//! OpenAI-style server-sent events: `data: {json}\n\n` per chunk, an optional final usage chunk
//! (`choices: []`), then `data: [DONE]`. The stream owns the request streams and the in-flight
//! guard, so a client that disconnects drops them and aborts its requests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::Value;

use crate::api::common::Usage;
use crate::error::ApiError;
use crate::generation::{ChoiceEvent, Submission};
use crate::state::{AppState, InFlight};

/// Turns one event into zero or more chunk objects (without `usage`).
pub type ChunkFormatter = Box<dyn FnMut(&ChoiceEvent) -> Vec<Value> + Send>;

enum Phase {
    Body,
    Usage,
    Done,
    End,
}

struct SseState {
    state: Arc<AppState>,
    _guard: InFlight,
    submission: Submission,
    format: ChunkFormatter,
    /// Builds the final usage chunk from the totals.
    usage_chunk: Box<dyn Fn(Usage) -> Value + Send>,
    include_usage: bool,
    completion_tokens: usize,
    pending: VecDeque<Value>,
    phase: Phase,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// The SSE response for a submission.
pub fn respond(
    state: Arc<AppState>,
    guard: InFlight,
    submission: Submission,
    include_usage: bool,
    format: ChunkFormatter,
    usage_chunk: Box<dyn Fn(Usage) -> Value + Send>,
) -> Response {
    let start = SseState {
        state,
        _guard: guard,
        submission,
        format,
        usage_chunk,
        include_usage,
        completion_tokens: 0,
        pending: VecDeque::new(),
        phase: Phase::Body,
    };
    let events = stream::unfold(start, |mut st| async move {
        loop {
            if let Some(mut chunk) = st.pending.pop_front() {
                if st.include_usage {
                    chunk["usage"] = Value::Null;
                }
                return Some((data(&chunk), st));
            }
            match st.phase {
                Phase::Body => match st.submission.merged.next().await {
                    Some(event) => {
                        st.submission.observe(&st.state, &event);
                        match &event {
                            ChoiceEvent::Output { .. } => {
                                st.completion_tokens += 1;
                                let chunks = (st.format)(&event);
                                st.pending.extend(chunks);
                            }
                            ChoiceEvent::Lost { .. } => {
                                st.phase = Phase::Done;
                                let error = ApiError::internal("The engine dropped the request.");
                                return Some((data(&error.body()), st));
                            }
                        }
                    }
                    None => st.phase = Phase::Usage,
                },
                Phase::Usage => {
                    st.phase = Phase::Done;
                    if st.include_usage {
                        let usage = st.submission.usage(st.completion_tokens);
                        let mut chunk = (st.usage_chunk)(usage);
                        chunk["usage"] = serde_json::to_value(usage).unwrap_or(Value::Null);
                        return Some((data(&chunk), st));
                    }
                }
                Phase::Done => {
                    st.phase = Phase::End;
                    return Some((Event::default().data("[DONE]"), st));
                }
                Phase::End => return None,
            }
        }
    });
    Sse::new(events.map(Ok::<_, Infallible>)).into_response()
}
