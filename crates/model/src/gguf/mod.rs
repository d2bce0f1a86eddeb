//! GGUF model files (llama.cpp's format): reading, dequantizing, and loading as a runner.
//!
//! - [`reader`]: the container (header, metadata, tensor infos), memory-mapped and bounds-checked.
//! - [`types`] / [`quants`]: ggml tensor types and their block formats.
//! - [`config`]: [`crate::ModelConfig`] from `llama` / `qwen2` metadata.
//! - [`source`]: tensors under Hugging Face names for [`crate::model::Model::load`], dequantized to
//!   the runner's dtype, q/k rows un-permuted for `llama` files; raw bytes for native kernels.
//! - [`tokenizer`]: the tokenizer and chat template stored in the metadata.
//! - [`writer`], [`convert`], [`export_tokenizer`]: writing GGUF files (`pagoda convert-gguf`).

pub mod config;
pub mod convert;
pub mod export_tokenizer;
pub mod quants;
pub mod reader;
pub mod source;
pub mod tokenizer;
pub mod types;
pub mod writer;

use std::io::Read;
use std::path::Path;

pub use reader::{GgufFile, MetaValue, TensorInfo};
pub use source::{GgufSource, RawTensor};
pub use types::GgmlType;

use crate::error::Result;
use crate::model::Model;
use crate::runner::{LoadedModel, ModelRunner, RunnerOptions};

/// Whether `path` is a GGUF file (by its first four bytes) rather than a model directory.
pub fn is_gguf_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// Loads a GGUF file: config and tokenizer from its metadata; with `options.dtype` auto, Q8_0
/// and Q4_K matrices as stored, other quantized ones as Q8_0, F16/BF16 ones as bf16 (F32 files
/// as f32); with a dtype, every weight dequantized to it.
pub fn load_gguf(path: &Path, options: &RunnerOptions) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let config = config::model_config(&file)?;
    let tokenizer = tokenizer::load_tokenizer(&file)?;
    // Quantized tensors run on the quantized kernels unless a dtype was asked for (then every
    // tensor is dequantized to it).
    let source = GgufSource::new(file, &config).serving_quantized(options.dtype.is_none());
    let model = Model::load(config, &source, options.dtype)?;
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(LoadedModel {
        runner: ModelRunner::new(model, options)?,
        tokenizer,
        name,
    })
}

#[cfg(test)]
mod tests;
