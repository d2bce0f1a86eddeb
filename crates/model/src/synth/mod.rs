//! Synthetic models: random-weight checkpoints of real Llama/Qwen2 shapes in Hugging Face
//! format (config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
//! model.safetensors) with a synthetic byte-level BPE tokenizer of the exact vocabulary size.
//! This file holds the public API, the error type and the config JSON files.

mod corpus;
mod shapes;
mod tokenizer;
mod weights;

use std::fmt;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

pub use shapes::{shape, Family, Shape, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, SHAPES};
pub use tokenizer::{build_tokenizer, special_tokens, SpecialTokens, TokenizerFiles};
pub use weights::{tensor_specs, Init, TensorSpec, INIT_STD};

/// Errors of the synthetic-model generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown model shape {name:?}; known shapes: {known}")]
    UnknownShape { name: String, known: String },
    #[error("invalid model shape {name:?}: {reason}")]
    InvalidShape { name: String, reason: String },
    #[error("unknown dtype {0:?}; expected \"f32\" or \"bf16\"")]
    UnknownDType(String),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Element type of the generated weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }

    /// The safetensors dtype string (`"F32"` / `"BF16"`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::Bf16 => "BF16",
        }
    }

    /// The `torch_dtype` of config.json (`"float32"` / `"bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::Bf16 => "bfloat16",
        }
    }
}

impl FromStr for DType {
    type Err = SynthError;

    /// Accepts `f32`/`float32` and `bf16`/`bfloat16`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            _ => Err(SynthError::UnknownDType(s.to_string())),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        })
    }
}

/// The JSON files of a synthetic model directory.
#[derive(Debug, Clone)]
pub struct SynthModel {
    pub config_json: String,
    pub generation_config_json: String,
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
}

impl SynthModel {
    /// Builds the four JSON files for `shape` (no weights).
    pub fn new(shape: &Shape, dtype: DType) -> Result<Self, SynthError> {
        shape.validate()?;
        let tok = build_tokenizer(shape)?;
        let s = &tok.special;
        let family = shape.family()?;
        let (model_type, llama, qwen2) = match family {
            Family::Llama => ("llama", Some(false), None),
            Family::Qwen2 => ("qwen2", None, Some(shape.max_position_embeddings)),
        };
        let config = ConfigJson {
            architectures: [shape.architecture],
            model_type,
            hidden_size: shape.hidden_size,
            intermediate_size: shape.intermediate_size,
            num_hidden_layers: shape.num_hidden_layers,
            num_attention_heads: shape.num_attention_heads,
            num_key_value_heads: shape.num_key_value_heads,
            head_dim: shape.head_dim(),
            hidden_act: "silu",
            max_position_embeddings: shape.max_position_embeddings,
            rms_norm_eps: shape.rms_norm_eps,
            rope_theta: shape.rope_theta,
            rope_scaling: None,
            tie_word_embeddings: shape.tie_word_embeddings,
            attention_bias: llama.map(|_| shape.attention_bias),
            mlp_bias: llama,
            use_sliding_window: qwen2.map(|_| false),
            sliding_window: qwen2,
            max_window_layers: qwen2.map(|_| shape.num_hidden_layers),
            bos_token_id: s.bos_token_id,
            eos_token_id: s.eos_token_id,
            vocab_size: shape.vocab_size,
            initializer_range: INIT_STD,
            use_cache: true,
            torch_dtype: dtype.torch_name(),
        };
        let generation = serde_json::json!({
            "bos_token_id": s.bos_token_id,
            "eos_token_id": s.eos_token_id,
        });
        Ok(Self {
            config_json: serde_json::to_string_pretty(&config)?,
            generation_config_json: serde_json::to_string_pretty(&generation)?,
            tokenizer_json: tok.tokenizer_json,
            tokenizer_config_json: tok.tokenizer_config_json,
        })
    }

    /// Writes the four JSON files into `dir` (which must exist).
    pub fn write_json(&self, dir: &Path) -> Result<(), SynthError> {
        for (name, text) in [
            ("config.json", &self.config_json),
            ("generation_config.json", &self.generation_config_json),
            ("tokenizer.json", &self.tokenizer_json),
            ("tokenizer_config.json", &self.tokenizer_config_json),
        ] {
            let path = dir.join(name);
            fs::write(&path, text).map_err(|source| SynthError::Io { path, source })?;
        }
        Ok(())
    }
}

/// `config.json` in the common Hub form (field order as written).
#[derive(Serialize)]
struct ConfigJson {
    architectures: [&'static str; 1],
    model_type: &'static str,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    hidden_act: &'static str,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<()>,
    tie_word_embeddings: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    attention_bias: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mlp_bias: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_sliding_window: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sliding_window: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_window_layers: Option<usize>,
    bos_token_id: u32,
    eos_token_id: u32,
    vocab_size: usize,
    initializer_range: f64,
    use_cache: bool,
    torch_dtype: &'static str,
}

/// Writes config.json, generation_config.json, tokenizer.json, tokenizer_config.json and
/// model.safetensors into `dir` (created if missing). The weights are generated in parallel
/// batches and streamed to `model.safetensors.tmp`, then renamed, so memory use stays bounded.
pub fn write_model_dir(
    shape: &Shape,
    dtype: DType,
    seed: u64,
    dir: &Path,
) -> Result<(), SynthError> {
    let model = SynthModel::new(shape, dtype)?;
    let layout = weights::layout(shape, dtype)?;
    fs::create_dir_all(dir).map_err(|source| SynthError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    model.write_json(dir)?;

    let tmp = dir.join("model.safetensors.tmp");
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&layout.prefix).map_err(io_err(&tmp))?;
    weights::stream_data(&layout, dtype, seed, &mut out, weights::BATCH_BYTES)
        .map_err(io_err(&tmp))?;
    out.flush().map_err(io_err(&tmp))?;
    drop(out);
    let dest = dir.join("model.safetensors");
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(())
}

/// The same model fully in memory (for small models such as a built-in demo): the JSON files
/// and the bytes of `model.safetensors`, identical to what [`write_model_dir`] writes.
pub fn build_in_memory(
    shape: &Shape,
    dtype: DType,
    seed: u64,
) -> Result<(SynthModel, Vec<u8>), SynthError> {
    let model = SynthModel::new(shape, dtype)?;
    let layout = weights::layout(shape, dtype)?;
    let total = layout.prefix.len() + layout.data_len;
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&layout.prefix);
    bytes.resize(total, 0);
    weights::fill_data(&layout, dtype, seed, &mut bytes[layout.prefix.len()..]);
    Ok((model, bytes))
}

#[cfg(test)]
mod tests;

/// `len` pseudo-random prompt token ids below `vocab_size`, skipping ids 0–2 (the specials of
/// the synthetic tokenizers), the same for every call: speed measurements need a prompt of a
/// given length, not a meaningful one.
pub fn random_prompt(len: usize, vocab_size: usize) -> Vec<u32> {
    let vocab = vocab_size as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (3 + (state >> 33) % vocab.saturating_sub(3).max(1)) as u32
        })
        .collect()
}
