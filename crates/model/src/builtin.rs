//! The built-in demo model: a tiny random-weight Llama generated in memory at start-up, so
//! `pagoda generate` and `pagoda serve` run on a fresh machine with no files and no network.
//! Its output is meaningless text; every caller reports it as a random-weight demo model.

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::runner::{LoadedModel, ModelRunner, RunnerOptions};
use crate::synth;
use crate::tokenizer::Tokenizer;
use crate::weights::TensorSource;

/// The name under which the demo model is reported and served.
pub const BUILTIN_MODEL_NAME: &str = "pagoda-demo-tiny-random";

/// Seed of the demo's weights, fixed so every start gives the same model.
const SEED: u64 = 0x5eed;

/// Builds the demo model (shape `tiny`, f32) in memory.
pub fn load_builtin(options: &RunnerOptions) -> Result<LoadedModel> {
    load_synthesized("tiny", synth::DType::F32, SEED, options, BUILTIN_MODEL_NAME)
}

/// Builds a random-weight model of a named shape (see [`synth::shape`]) in memory, with its
/// synthetic tokenizer, without touching the disk.
pub fn load_synthesized(
    shape_name: &str,
    dtype: synth::DType,
    seed: u64,
    options: &RunnerOptions,
    name: &str,
) -> Result<LoadedModel> {
    let shape = synth::shape(shape_name).map_err(|e| ModelError::InvalidOption(e.to_string()))?;
    let (files, weights) = synth::build_in_memory(shape, dtype, seed)
        .map_err(|e| ModelError::InvalidOption(e.to_string()))?;
    let origin = Path::new("<built-in>");
    let config = ModelConfig::from_json(
        &files.config_json,
        Some(&files.generation_config_json),
        origin,
    )?;
    let source = TensorSource::from_bytes("<built-in>/model.safetensors", weights)?;
    let model = Model::load(config, &source, options.dtype)?;
    let tokenizer = Tokenizer::from_json(
        &files.tokenizer_json,
        Some(&files.tokenizer_config_json),
        origin,
    )?;
    Ok(LoadedModel {
        runner: ModelRunner::new(model, options)?,
        tokenizer,
        name: name.to_string(),
    })
}
