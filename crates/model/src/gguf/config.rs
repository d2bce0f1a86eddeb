//! [`ModelConfig`] from GGUF metadata (`general.architecture` = `llama` or `qwen2`), following the
//! keys llama.cpp reads: `{arch}.block_count`, `.embedding_length`, `.feed_forward_length`,
//! `.attention.head_count`, `.attention.head_count_kv`, `.attention.key_length`,
//! `.attention.layer_norm_rms_epsilon`, `.context_length`, `.rope.freq_base`, `.rope.scaling.*`,
//! plus the `rope_freqs.weight` tensor by which llama.cpp's converter stores Llama 3 rope scaling.

use super::quants::dequantize;
use super::reader::GgufFile;
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::error::Result;

/// The architectures pagoda reads from GGUF, as named in `general.architecture`.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, qwen2";

/// The tensor holding per-frequency rope divisors (llama.cpp's `LLM_TENSOR_ROPE_FREQS`).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// Reads the model's shape from `file`'s metadata.
pub fn model_config(file: &GgufFile) -> Result<ModelConfig> {
    let arch_name = file
        .get_str("general.architecture")?
        .ok_or_else(|| file.error("missing metadata key general.architecture"))?;
    let architecture = match arch_name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(file.error(format!(
                "architecture {other:?} is not supported (supported: {SUPPORTED_ARCHITECTURES})"
            )))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let usize_key = |k: &str| -> Result<Option<usize>> {
        let k = key(k);
        match file.get_u64(&k)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| file.error(format!("{k} = {v} is too large"))),
        }
    };
    let required = |k: &str| -> Result<usize> {
        usize_key(k)?.ok_or_else(|| file.error(format!("missing metadata key {}", key(k))))
    };
    let num_layers = required("block_count")?;
    let hidden_size = required("embedding_length")?;
    let intermediate_size = required("feed_forward_length")?;
    let num_heads = required("attention.head_count")?;
    let num_kv_heads = usize_key("attention.head_count_kv")?.unwrap_or(num_heads);
    let max_context_len = required("context_length")?;
    if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(file.error(format!(
            "attention.head_count ({num_heads}) must be a positive multiple of attention.head_count_kv ({num_kv_heads})"
        )));
    }
    let head_dim = match usize_key("attention.key_length")? {
        Some(d) => d,
        None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
        None => {
            return Err(file.error(format!(
                "embedding_length {hidden_size} is not divisible by head_count {num_heads} and attention.key_length is absent"
            )))
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(file.error(format!(
            "head dimension {head_dim} must be even and positive for rotary embeddings"
        )));
    }
    for (k, what) in [
        ("attention.value_length", "value heads"),
        ("rope.dimension_count", "rotary dimensions"),
    ] {
        if let Some(n) = usize_key(k)? {
            if n != head_dim {
                return Err(file.error(format!(
                    "{} = {n}: {what} other than the head dimension ({head_dim}) are not supported",
                    key(k)
                )));
            }
        }
    }
    let rms_norm_eps = file
        .get_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            file.error(format!(
                "missing metadata key {} (only RMSNorm models are supported)",
                key("attention.layer_norm_rms_epsilon")
            ))
        })? as f32;
    let rope_theta = file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = rope_scaling(file, arch_name, head_dim)?;

    let vocab_size = match file.get_array("tokenizer.ggml.tokens")? {
        Some(tokens) => tokens.len(),
        None => match usize_key("vocab_size")? {
            Some(n) => n,
            None => file
                .tensor_info("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| file.error("no token list, vocab_size or token_embd.weight"))?,
        },
    };
    let id = |k: &str| -> Result<Option<u32>> {
        Ok(file.get_u64(k)?.and_then(|v| u32::try_from(v).ok()))
    };
    let bos_token_id = id("tokenizer.ggml.bos_token_id")?;
    // llama.cpp stops on every end-of-generation token: EOS, end-of-turn, end-of-message.
    let mut eos_token_ids = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(t) = id(k)? {
            if !eos_token_ids.contains(&t) {
                eos_token_ids.push(t);
            }
        }
    }
    let config = ModelConfig {
        architecture,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        max_context_len,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        qkv_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        bos_token_id,
        eos_token_ids,
    };
    if hidden_size == 0 || num_layers == 0 || vocab_size == 0 || intermediate_size == 0 {
        return Err(file.error(
            "embedding_length, block_count, feed_forward_length and the vocabulary must be positive",
        ));
    }
    Ok(config)
}

/// `{arch}.rope.scaling.type` (`none` or `linear`), the older `{arch}.rope.scale_linear`, or the
/// `rope_freqs.weight` divisors.
fn rope_scaling(file: &GgufFile, arch: &str, head_dim: usize) -> Result<Option<RopeScaling>> {
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let mut linear = match file.get_str(&type_key)? {
        None | Some("none") => None,
        Some("linear") => Some(
            file.get_f64(&factor_key)?
                .ok_or_else(|| file.error(format!("{type_key} is linear but {factor_key} is missing")))?,
        ),
        Some(other) => {
            return Err(file.error(format!(
                "{type_key} {other:?} is not supported (supported: none, linear, and Llama 3 scaling as {ROPE_FREQS})"
            )))
        }
    };
    if linear.is_none() {
        linear = file.get_f64(&format!("{arch}.rope.scale_linear"))?;
    }
    let linear = linear.filter(|&f| f != 1.0);
    let factors = match file.tensor_info(ROPE_FREQS) {
        None => None,
        Some(info) => {
            if info.dims != [head_dim / 2] {
                return Err(file.error(format!(
                    "{ROPE_FREQS} has shape {:?}, expected [{}]",
                    info.dims,
                    head_dim / 2
                )));
            }
            let mut values = vec![0f32; head_dim / 2];
            dequantize(info.ty, file.tensor_bytes(info)?, &mut values)
                .map_err(|e| file.error(format!("{ROPE_FREQS}: {e}")))?;
            if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(file.error(format!("{ROPE_FREQS} holds values that are not positive")));
            }
            Some(values.into_iter().map(f64::from).collect::<Vec<f64>>())
        }
    };
    match (linear, factors) {
        (Some(_), Some(_)) => Err(file.error(format!(
            "both linear rope scaling and {ROPE_FREQS} are set; pagoda supports one at a time"
        ))),
        (Some(factor), None) => Ok(Some(RopeScaling::Linear { factor })),
        (None, Some(factors)) => Ok(Some(RopeScaling::FreqFactors(factors))),
        (None, None) => Ok(None),
    }
}
