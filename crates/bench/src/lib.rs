//! pagoda-bench: load testing for any OpenAI-compatible server (`pagoda bench serve`,
//! `pagoda bench sweep`) and a scripted mock server to test and calibrate it.
//!
//! Flow: [`serve::prepare`] resolves the model and tokenizer ([`tokens`]) and builds the
//! requests ([`workload`]); [`run::run`] sends them on an [`arrivals`] schedule through a
//! [`client::Target`], timing each SSE stream ([`sse`]); [`metrics`] turns the outcomes into
//! statistics, [`report`] into a table and vLLM-compatible JSON, [`plot`] into SVG charts;
//! [`sweep`] repeats runs over rates or concurrencies.

pub mod arrivals;
pub mod client;
pub mod cpu;
pub mod error;
pub mod fd_limit;
pub mod metrics;
pub mod mock_server;
pub mod plot;
pub mod report;
pub mod run;
pub mod serve;
pub mod sse;
pub mod sweep;
pub mod tokens;
pub mod workload;

pub use error::{BenchError, Result};
