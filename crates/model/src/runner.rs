//! The model runner: a loaded model, its paged KV cache and reusable buffers behind one
//! `execute(step) -> logits` call. It owns no scheduling state; which blocks a sequence uses is
//! decided by its caller (the engine's block manager, or [`crate::generate`] for local runs).

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
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
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 2 << 30,
            dtype: None,
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
    pub fn new(model: Model, options: &RunnerOptions) -> Result<Self> {
        let kv = KvCache::with_budget(&model.config, options.block_size, options.kv_cache_bytes)?;
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
