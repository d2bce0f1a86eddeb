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

/// Loads a GGUF file: config and tokenizer from its metadata, weights dequantized to
/// `options.dtype` (auto: f32 for F32 files, bf16 otherwise).
pub fn load_gguf(path: &Path, options: &RunnerOptions) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let config = config::model_config(&file)?;
    let tokenizer = tokenizer::load_tokenizer(&file)?;
    // A Q8_0 file runs on the Q8_0 kernels: its blocks go through f32 (exact: d·q) and are
    // quantized again, which gives back the same scales and values (ggml's quantizer maps each
    // group's largest value to ±127), so no precision is lost.
    let q8_0_file = file
        .tensor_info("blk.0.attn_q.weight")
        .is_some_and(|t| t.ty == types::GgmlType::Q8_0);
    let native_q8 = q8_0_file && options.dtype.is_none();
    let dtype = if native_q8 {
        Some(crate::weights::WeightDtype::F32)
    } else {
        options.dtype
    };
    let source = GgufSource::new(file, &config);
    let model = Model::load(config, &source, dtype)?;
    let options = &RunnerOptions {
        quantization: options
            .quantization
            .or(native_q8.then_some(crate::Quantization::Q8_0)),
        ..options.clone()
    };
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
