//! The model runner: a loaded model, its paged KV cache and reusable buffers behind one
//! `execute(step) -> logits` call. It owns no scheduling state; which blocks a sequence uses is
//! decided by its caller (the engine's block manager, or [`crate::generate`] for local runs).

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::{KvCache, KvCacheDtype};
use crate::model::{Model, StepBatch, Workspace};
use crate::tokenizer::Tokenizer;
use crate::weights::{TensorSource, WeightDtype};

/// Options for loading a model into a runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory budget of the KV cache in bytes.
    pub kv_cache_bytes: usize,
    /// Weight storage; `None` keeps the stored precision (f16 becomes f32).
    pub dtype: Option<WeightDtype>,
    /// KV cache storage; `None` (auto) follows the weights: bf16 for bf16, f32 for f32.
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Quantize the weights at load (`Some(Quantization::Q8_0)`), or keep them as loaded.
    pub quantization: Option<Quantization>,
}

/// Weight quantization applied at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// ggml's Q8_0: int8 with an f16 scale per 32 weights of a row.
    Q8_0,
    /// ggml's Q4_K: 4-bit weights with 6-bit scales and mins per 32 and f16 factors per 256
    /// (matrices whose input size is not a multiple of 256 get Q8_0).
    Q4K,
}

impl std::str::FromStr for Quantization {
    type Err = crate::error::ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Quantization::Q8_0),
            "q4_k" | "q4k" => Ok(Quantization::Q4K),
            other => Err(crate::error::ModelError::InvalidOption(format!(
                "quantization {other:?} is not supported (use q8_0 or q4_k, or leave it out)"
            ))),
        }
    }
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            dtype: None,
            kv_cache_dtype: None,
            quantization: None,
        }
    }
}

/// A model ready to run steps.
pub struct ModelRunner {
    pub model: Model,
    pub kv: KvCache,
    workspace: Workspace,
}

impl ModelRunner {
    pub fn new(mut model: Model, options: &RunnerOptions) -> Result<Self> {
        crate::hugepages::fresh_pages_for_large_allocations();
        match options.quantization {
            Some(Quantization::Q8_0) => model.quantize_q8_0(),
            Some(Quantization::Q4K) => model.quantize_q4_k(),
            None => {}
        }
        model.consolidate_weights();
        crate::hugepages::return_free_heap();
        // auto: the weights' precision; bf16 for quantized weights.
        let quantized = model.weight_kind().is_quantized();
        let dtype = options.kv_cache_dtype.unwrap_or(match model.dtype {
            WeightDtype::F32 if !quantized => KvCacheDtype::F32,
            _ => KvCacheDtype::Bf16,
        });
        let kv = KvCache::with_budget(
            &model.config,
            options.block_size,
            options.kv_cache_bytes,
            dtype,
        )?;
        Ok(Self {
            model,
            kv,
            workspace: Workspace::default(),
        })
    }

    /// Runs one step: writes the step's K/V into the cache and returns the requested logits.
    pub fn execute(&mut self, batch: &StepBatch<'_>) -> &[f32] {
        self.model.forward(batch, &mut self.kv, &mut self.workspace)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }
}

/// A model directory loaded in full: runner and tokenizer.
pub struct LoadedModel {
    pub runner: ModelRunner,
    pub tokenizer: Tokenizer,
    /// How the model is named to users (directory name, or the built-in demo's name).
    pub name: String,
}

/// Loads config, weights and tokenizer from a Hugging Face model directory, or from a GGUF file
/// when `dir` is one.
pub fn load_model_dir(dir: &Path, options: &RunnerOptions) -> Result<LoadedModel> {
    crate::hugepages::fresh_pages_for_large_allocations();
    if crate::gguf::is_gguf_file(dir) {
        return crate::gguf::load_gguf(dir, options);
    }
    let config = ModelConfig::from_dir(dir)?;
    let source = TensorSource::open_dir(dir)?;
    let model = Model::load(config, &source, options.dtype)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(LoadedModel {
        runner: ModelRunner::new(model, options)?,
        tokenizer,
        name,
    })
}
