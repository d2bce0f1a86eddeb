//! Model configuration: reads Hugging Face `config.json` (Llama, Mistral, Qwen2) and
//! `generation_config.json` into one validated [`ModelConfig`].

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The architectures the runner implements. All three share the Llama decoder layout; they
/// differ in biases (Qwen2 has q/k/v biases) and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (Hugging Face `rope_type: linear`).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent rescaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Inverse frequency `i` divided by `factors[i]` (llama.cpp's `rope_freqs.weight`, which is how
    /// GGUF files carry Llama 3 scaling).
    FreqFactors(Vec<f64>),
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// The longest sequence (prompt + output) the model serves.
    pub max_context_len: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases.
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (generation_config.json wins over config.json).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawGenerationConfig {
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

/// A token id field that may be a number, a list of numbers, or null.
fn token_ids(value: &Option<serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `config.json` and, when present, `generation_config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let gen_path = dir.join("generation_config.json");
        let gen_text = match std::fs::read_to_string(&gen_path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(&gen_path, e)),
        };
        Self::from_json(&text, gen_text.as_deref(), &config_path)
    }

    /// Parses the two JSON documents; `origin` names the config file in errors.
    pub fn from_json(config: &str, generation: Option<&str>, origin: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(config).map_err(|source| ModelError::Json {
            path: origin.to_path_buf(),
            source,
        })?;
        let generation: RawGenerationConfig = match generation {
            Some(text) => serde_json::from_str(text).map_err(|source| ModelError::Json {
                path: origin.with_file_name("generation_config.json"),
                source,
            })?,
            None => RawGenerationConfig::default(),
        };
        let bad = |message: String| ModelError::Config {
            path: origin.to_path_buf(),
            message,
        };

        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MistralForCausalLM" | "mistral" => Architecture::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: origin.to_path_buf(),
                    found: arch_name,
                })
            }
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(bad(format!(
                    "hidden_act {act:?} is not supported (only silu)"
                )));
            }
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads == 0
            || num_kv_heads == 0
            || !raw.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return Err(bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(raw.num_attention_heads) => {
                raw.hidden_size / raw.num_attention_heads
            }
            None => {
                return Err(bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {} and head_dim is absent",
                raw.hidden_size, raw.num_attention_heads
            )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            )));
        }
        let rope_scaling = match &raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(parse_rope_scaling(value).map_err(bad)?),
        };
        let mut max_context_len = raw.max_position_embeddings.unwrap_or(2048);
        // Sliding-window attention is not implemented; capping the context at the window keeps
        // every served token exact instead of silently attending too far.
        let sliding = match architecture {
            Architecture::Mistral => raw.sliding_window,
            Architecture::Qwen2 if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        if let Some(window) = sliding {
            max_context_len = max_context_len.min(window);
        }
        let mut eos_token_ids = token_ids(&generation.eos_token_id);
        if eos_token_ids.is_empty() {
            eos_token_ids = token_ids(&raw.eos_token_id);
        }
        let bos_token_id = token_ids(&generation.bos_token_id)
            .first()
            .or(token_ids(&raw.bos_token_id).first())
            .copied();
        let qkv_bias = match architecture {
            Architecture::Qwen2 => raw.attention_bias.unwrap_or(true),
            _ => raw.attention_bias.unwrap_or(false),
        };
        let config = ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            max_context_len,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            bos_token_id,
            eos_token_ids,
        };
        if config.hidden_size == 0 || config.num_layers == 0 || config.vocab_size == 0 {
            return Err(bad(
                "hidden_size, num_hidden_layers and vocab_size must be positive".into(),
            ));
        }
        Ok(config)
    }

    /// Width of the fused q/k/v projection output.
    pub fn qkv_dim(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Bytes of K and V one token occupies across all layers at `bytes_per_value`.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value
    }

    /// Number of weight parameters (embedding and lm_head counted once each when untied).
    pub fn num_parameters(&self) -> usize {
        let d = self.hidden_size;
        let attn = d * self.qkv_dim() + self.num_heads * self.head_dim * d;
        let bias = if self.qkv_bias { self.qkv_dim() } else { 0 };
        let mlp = 3 * d * self.intermediate_size;
        let per_layer = attn + bias + mlp + 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * per_layer + d
    }
}

fn parse_rope_scaling(value: &serde_json::Value) -> std::result::Result<RopeScaling, String> {
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let num = |key: &str| -> std::result::Result<f64, String> {
        value
            .get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope_scaling of type {kind} needs a numeric {key}"))
    };
    match kind {
        "default" => Ok(RopeScaling::Linear { factor: 1.0 }),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(format!(
            "rope_scaling type {other:?} is not supported (supported: linear, llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama3_scaling_and_generation_eos_list() {
        let cfg = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":128,"intermediate_size":352,
            "num_hidden_layers":3,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":16,
            "vocab_size":512,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":256},"eos_token_id":2}"#;
        let c = ModelConfig::from_json(cfg, Some(r#"{"eos_token_id":[2,7]}"#), Path::new("c.json"))
            .unwrap();
        assert_eq!(c.eos_token_ids, vec![2, 7]);
        assert_eq!(c.head_dim, 16);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert!(!c.qkv_bias);
    }

    #[test]
    fn qwen2_has_biases_and_unknown_architecture_is_named() {
        let cfg = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":128,"intermediate_size":352,
            "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":512}"#;
        let c = ModelConfig::from_json(cfg, None, Path::new("c.json")).unwrap();
        assert!(c.qkv_bias);
        assert_eq!(c.head_dim, 32);
        let bad = cfg.replace("Qwen2ForCausalLM", "GPT2LMHeadModel");
        let err = ModelConfig::from_json(&bad, None, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
        assert!(err.to_string().contains("Qwen2ForCausalLM"), "{err}");
    }
}
