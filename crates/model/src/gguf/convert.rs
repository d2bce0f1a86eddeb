//! Hugging Face model directory → GGUF file, with llama.cpp's conventions (`pagoda convert-gguf`):
//! architecture `llama` (Llama, Mistral) with q/k rows permuted for GGML's RoPE, or `qwen2`
//! unpermuted; llama.cpp's tensor names; norms and biases in F32 and matrices in the requested
//! type (a matrix whose rows do not fill whole blocks falls back to F16, as in llama.cpp's
//! converter); Llama 3 rope scaling as the `rope_freqs.weight` tensor; the tokenizer as described
//! in [`super::export_tokenizer`].

use std::path::Path;

use rayon::prelude::*;

use super::config::ROPE_FREQS;
use super::export_tokenizer::tokenizer_metadata;
use super::quants::quantize;
use super::reader::MetaValue;
use super::source::{gguf_row, gguf_tensor_name, permuted_heads};
use super::types::GgmlType;
use super::writer::GgufWriter;
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::ops::rope::Rope;
use crate::weights::{TensorSource, WeightData, WeightDtype};

/// The tensor types `convert-gguf` writes.
pub const OUTPUT_TYPES: &str = "f32, f16, bf16, q8_0, q4_0, q4_k, q6_k";

/// Parses an output type name (`f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_k`, `q6_k`).
pub fn parse_output_type(name: &str) -> Result<GgmlType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::Bf16,
        "q8_0" => GgmlType::Q8_0,
        "q4_0" => GgmlType::Q4_0,
        "q4_k" => GgmlType::Q4K,
        "q6_k" => GgmlType::Q6K,
        other => {
            return Err(ModelError::InvalidOption(format!(
                "output type {other:?} is not supported (supported: {OUTPUT_TYPES})"
            )))
        }
    })
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file of mostly `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4K => 14,
        GgmlType::Q6K => 18,
        GgmlType::Bf16 => 32,
        _ => 0,
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    pub num_tensors: usize,
    /// Matrices written in another type because their rows do not fill whole blocks of the
    /// requested one (Q8_0 for a Q4_K file where rows fill Q8_0 blocks, else F16), with that type.
    pub fallbacks: Vec<(String, GgmlType)>,
}

/// Llama 3 scaling as llama.cpp's converter stores it: one divisor per rotary frequency.
fn rope_freq_factors(config: &ModelConfig) -> Option<Vec<f32>> {
    let scaling = config.rope_scaling.as_ref()?;
    let base = Rope::new(config.head_dim, config.rope_theta, None);
    let scaled = Rope::new(config.head_dim, config.rope_theta, Some(scaling));
    match scaling {
        RopeScaling::Linear { .. } => None,
        RopeScaling::Llama3 { .. } | RopeScaling::FreqFactors(_) => Some(
            base.inv_freq()
                .iter()
                .zip(scaled.inv_freq())
                .map(|(&b, &s)| (b as f64 / s as f64) as f32)
                .collect(),
        ),
    }
}

fn model_metadata(
    config: &ModelConfig,
    arch: &str,
    name: &str,
    ty: GgmlType,
) -> Vec<(String, MetaValue)> {
    let u32v = |v: usize| MetaValue::U32(v as u32);
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.into()),
        ),
        ("general.name".to_string(), MetaValue::String(name.into())),
        (
            "general.file_type".to_string(),
            MetaValue::U32(file_type(ty)),
        ),
        (
            "general.quantization_version".to_string(),
            MetaValue::U32(2),
        ),
    ];
    let fields = [
        ("context_length", u32v(config.max_context_len)),
        ("embedding_length", u32v(config.hidden_size)),
        ("block_count", u32v(config.num_layers)),
        ("feed_forward_length", u32v(config.intermediate_size)),
        ("attention.head_count", u32v(config.num_heads)),
        ("attention.head_count_kv", u32v(config.num_kv_heads)),
        ("attention.key_length", u32v(config.head_dim)),
        ("attention.value_length", u32v(config.head_dim)),
        ("rope.dimension_count", u32v(config.head_dim)),
        ("rope.freq_base", MetaValue::F32(config.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            MetaValue::F32(config.rms_norm_eps),
        ),
        ("vocab_size", u32v(config.vocab_size)),
    ];
    meta.extend(fields.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    if let Some(RopeScaling::Linear { factor }) = config.rope_scaling {
        meta.push((
            format!("{arch}.rope.scaling.type"),
            MetaValue::String("linear".into()),
        ));
        meta.push((
            format!("{arch}.rope.scaling.factor"),
            MetaValue::F32(factor as f32),
        ));
    }
    meta
}

/// Encodes f32 rows as `ty`, in parallel over groups of rows.
fn encode(values: &[f32], cols: usize, ty: GgmlType) -> Result<Vec<u8>> {
    let chunks: Vec<Vec<u8>> = values
        .par_chunks(cols.max(1) * 64)
        .map(|rows| {
            let mut out = Vec::new();
            quantize(ty, rows, &mut out).map(|_| out)
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ModelError::InvalidOption(e.to_string()))?;
    Ok(chunks.concat())
}

/// Converts the Hugging Face model in `dir` to a GGUF file at `out` with matrices of type `ty`.
pub fn convert_to_gguf(dir: &Path, out: &Path, ty: GgmlType) -> Result<ConvertSummary> {
    let config = ModelConfig::from_dir(dir)?;
    let source = TensorSource::open_dir(dir)?;
    let arch = match config.architecture {
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen2 => "qwen2",
    };
    let name = dir
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let mut writer = GgufWriter::new();
    for (k, v) in model_metadata(&config, arch, &name, ty) {
        writer.add(&k, v);
    }
    for (k, v) in tokenizer_metadata(dir, &config)? {
        writer.add(&k, v);
    }

    let c = &config;
    let (d, inter) = (c.hidden_size, c.intermediate_size);
    let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut matrices: Vec<(String, usize, usize)> =
        vec![("model.embed_tokens.weight".into(), c.vocab_size, d)];
    let mut vectors: Vec<(String, usize)> = vec![("model.norm.weight".into(), d)];
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        vectors.push((format!("{p}.input_layernorm.weight"), d));
        vectors.push((format!("{p}.post_attention_layernorm.weight"), d));
        for (m, rows, cols) in [
            ("self_attn.q_proj", q_dim, d),
            ("self_attn.k_proj", kv_dim, d),
            ("self_attn.v_proj", kv_dim, d),
            ("self_attn.o_proj", d, q_dim),
            ("mlp.gate_proj", inter, d),
            ("mlp.up_proj", inter, d),
            ("mlp.down_proj", d, inter),
        ] {
            matrices.push((format!("{p}.{m}.weight"), rows, cols));
            if c.qkv_bias && m.starts_with("self_attn.") && m != "self_attn.o_proj" {
                vectors.push((format!("{p}.{m}.bias"), rows));
            }
        }
    }
    if !c.tie_word_embeddings {
        matrices.push(("lm_head.weight".into(), c.vocab_size, d));
    }

    let gguf_name = |hf: &str| {
        gguf_tensor_name(hf)
            .ok_or_else(|| ModelError::InvalidOption(format!("tensor {hf} has no GGUF name")))
    };
    // Stored row `gguf_row(r)` holds HF row `r` for llama q/k (see `source`).
    let permute = move |hf: &str, values: Vec<f32>, rows: usize| -> Vec<f32> {
        let Some(heads) = permuted_heads(hf, c) else {
            return values;
        };
        let cols = values.len() / rows.max(1);
        let mut out = vec![0f32; values.len()];
        for r in 0..rows {
            let dst = gguf_row(r, rows, heads);
            out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[r * cols..(r + 1) * cols]);
        }
        out
    };
    let source = &source;
    let mut num_tensors = 0;
    if let Some(factors) = rope_freq_factors(c) {
        writer.add_tensor(ROPE_FREQS, vec![factors.len()], GgmlType::F32, move || {
            encode(&factors, factors.len(), GgmlType::F32)
        })?;
        num_tensors += 1;
    }
    for (hf, n) in vectors {
        writer.add_tensor(&gguf_name(&hf)?, vec![n], GgmlType::F32, move || {
            let v = permute(&hf, source.vector_f32(&hf, &[n])?, n);
            encode(&v, n, GgmlType::F32)
        })?;
        num_tensors += 1;
    }
    let mut fallbacks = Vec::new();
    for (hf, rows, cols) in matrices {
        let name = gguf_name(&hf)?;
        let tensor_ty = if ty.row_bytes(cols).is_some() {
            ty
        } else {
            let k_quant = matches!(ty, GgmlType::Q4K | GgmlType::Q6K);
            let other = if k_quant && GgmlType::Q8_0.row_bytes(cols).is_some() {
                GgmlType::Q8_0
            } else {
                GgmlType::F16
            };
            fallbacks.push((name.clone(), other));
            other
        };
        writer.add_tensor(&name, vec![cols, rows], tensor_ty, move || {
            let values = match source.linear(&hf, rows, cols, WeightDtype::F32)?.data {
                WeightData::F32(v) => v,
                WeightData::Bf16(b) => b
                    .iter()
                    .map(|&x| half::bf16::from_bits(x).to_f32())
                    .collect(),
            };
            encode(&permute(&hf, values, rows), cols, tensor_ty)
        })?;
        num_tensors += 1;
    }
    writer.write_file(out)?;
    Ok(ConvertSummary {
        num_tensors,
        fallbacks,
    })
}
