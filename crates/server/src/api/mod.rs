//! OpenAI (and vLLM-extension) wire types: what clients send and what they get back.

pub mod chat;
pub mod common;
pub mod completions;
