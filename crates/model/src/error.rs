//! The model crate's error type: every failure names the file, tensor or value involved.

use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "unsupported architecture {found:?} in {path}; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{file}: cannot parse safetensors: {message}")]
    Safetensors { file: String, message: String },
    #[error("tensor {name} not found in {searched}")]
    MissingTensor { name: String, searched: String },
    #[error("{file}: tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor {name} has unsupported dtype {dtype} (supported: F32, BF16, F16)")]
    UnsupportedDtype {
        file: String,
        name: String,
        dtype: String,
    },
    #[error("{path}: invalid GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error(
        "{path}: tensor {tensor} has type {ggml_type}, which pagoda does not support (supported: {supported})"
    )]
    UnsupportedGgmlType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
        supported: &'static str,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("KV cache budget of {budget_bytes} bytes holds {num_blocks} blocks; at least {needed} are needed")]
    KvCacheTooSmall {
        budget_bytes: usize,
        num_blocks: usize,
        needed: usize,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
