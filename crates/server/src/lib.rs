//! pagoda's OpenAI-compatible HTTP server (axum/tokio) in front of the engine thread.
//!
//! A request is parsed and validated here (errors are OpenAI-shaped), its prompt tokenized or
//! its messages rendered with the chat template, and each choice handed to the engine through
//! [`pagoda_engine::handle::EngineHandle`], which answers with a stream of token outputs. The
//! handlers turn those into JSON or SSE chunks. See docs/ARCHITECTURE.md for the whole flow.

pub mod api;
pub mod app;
pub mod chat_template;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod routes;
pub mod serve;
pub mod state;
pub mod tool_parser;
pub mod tools;
pub mod validation;

pub use app::app;
pub use serve::{serve, shutdown_signal, start, warm_up, ServeError, ServerOptions};
pub use state::{AppState, ServerConfig};
