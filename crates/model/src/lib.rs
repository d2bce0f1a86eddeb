//! pagoda's model runner for CPU: loads Hugging Face Llama/Mistral/Qwen2 directories and GGUF files,
//! stores K/V in a paged cache, runs a batched forward over mixed prefill chunks and decodes, and
//! samples.
//!
//! Request flow inside this crate: [`runner::ModelRunner::execute`] takes one step's
//! [`model::StepBatch`] (flattened tokens + per-sequence block tables) and returns logits for the
//! rows to sample; [`sampler::Sampler`] turns each row into a token.

pub mod ab;
pub mod bandwidth;
pub mod builtin;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hugepages;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod runner;
pub mod sampler;
pub mod synth;
pub mod test_support;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use runner::{load_model_dir, LoadedModel, ModelRunner, Quantization, RunnerOptions};
pub use tokenizer::{IncrementalDecoder, Tokenizer};
