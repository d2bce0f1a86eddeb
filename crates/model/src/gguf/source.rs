//! GGUF tensors served under the Hugging Face names [`crate::model::Model::load`] asks for:
//! name mapping, shape checks, dequantization to the runner's dtype, and undoing the q/k row
//! permutation llama.cpp's converter applies to `llama` models.
//!
//! Why the permutation: llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the
//! rows of each q and k head from Hugging Face's rotate-half layout (pair `(i, i + d/2)`) to
//! GGML's interleaved layout (pair `(2i, 2i + 1)`). pagoda's RoPE rotates halves, so the rows are
//! put back: GGUF row `h·d + 2i + s` is HF row `h·d + s·d/2 + i`. `qwen2` files are not permuted
//! (llama.cpp runs Qwen2 with NEOX-style, i.e. rotate-half, RoPE).

use std::borrow::Cow;

use rayon::prelude::*;

use super::quants::{dequantize, rows_to_q8_0};
use super::reader::{GgufFile, TensorInfo};
use super::types::{GgmlType, SUPPORTED_TYPES};
use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::hugepages::huge_vec;
use crate::ops::gemm::WeightKind;
use crate::weights::{Linear, QuantizedBlocks, WeightData, WeightDtype, WeightSource};

/// The GGUF (llama.cpp) name of a Hugging Face Llama/Qwen2 tensor name.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// Heads whose rows llama.cpp permuted in this (Hugging Face named) tensor of a `llama` model.
pub fn permuted_heads(hf: &str, config: &ModelConfig) -> Option<usize> {
    if config.architecture == Architecture::Qwen2 {
        return None;
    }
    let module = hf.rsplit_once('.')?.0;
    if module.ends_with("self_attn.q_proj") {
        Some(config.num_heads)
    } else if module.ends_with("self_attn.k_proj") {
        Some(config.num_kv_heads)
    } else {
        None
    }
}

/// Row `r` of the Hugging Face layout comes from this row of the GGUF layout.
pub fn gguf_row(r: usize, rows: usize, heads: usize) -> usize {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let (h, j) = (r / head_dim, r % head_dim);
    let (s, i) = (j / half, j % half);
    h * head_dim + 2 * i + s
}

/// A tensor's stored bytes, rows in Hugging Face order.
#[derive(Debug)]
pub struct RawTensor<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// `rows` rows of `ty.row_bytes(cols)` bytes each.
    pub bytes: Cow<'a, [u8]>,
}

/// A GGUF file as a [`WeightSource`].
pub struct GgufSource {
    file: GgufFile,
    config: ModelConfig,
    /// Serve quantized matrices as blocks for the quantized kernels ([`Self::serving_quantized`]).
    quantized: bool,
}

impl GgufSource {
    pub fn new(file: GgufFile, config: &ModelConfig) -> Self {
        Self {
            file,
            config: config.clone(),
            quantized: false,
        }
    }

    /// With `on`, quantized matrices load for the quantized kernels instead of dequantized to the
    /// runner's dtype: Q8_0, Q4_K and Q6_K as stored, the other quantized types (Q4_0, Q4_1,
    /// Q5_0, Q5_1) requantized to Q8_0 (within half a Q8_0 step of their values).
    pub fn serving_quantized(mut self, on: bool) -> Self {
        self.quantized = on;
        self
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info(&self, hf: &str) -> Result<&TensorInfo> {
        gguf_tensor_name(hf)
            .and_then(|n| self.file.tensor_info(&n))
            .ok_or_else(|| ModelError::MissingTensor {
                name: gguf_tensor_name(hf).map_or(hf.to_string(), |n| format!("{n} ({hf})")),
                searched: self.file.path().display().to_string(),
            })
    }

    /// The tensor `hf` with the expected `shape` (outermost first, as Hugging Face writes it).
    fn checked(&self, hf: &str, shape: &[usize]) -> Result<(&TensorInfo, &[u8])> {
        let info = self.info(hf)?;
        let want: Vec<usize> = shape.iter().rev().copied().collect();
        if info.dims != want {
            return Err(ModelError::ShapeMismatch {
                file: self.file.path().display().to_string(),
                name: info.name.clone(),
                expected: shape.to_vec(),
                found: info.dims.iter().rev().copied().collect(),
            });
        }
        if !info.ty.is_supported() {
            return Err(ModelError::UnsupportedGgmlType {
                path: self.file.path().to_path_buf(),
                tensor: info.name.clone(),
                ggml_type: info.ty.name().to_string(),
                supported: SUPPORTED_TYPES,
            });
        }
        Ok((info, self.file.tensor_bytes(info)?))
    }

    /// The row order to read: `order[r]` is the stored row holding output row `r`.
    fn row_order(&self, hf: &str, rows: usize) -> Result<Option<Vec<usize>>> {
        let Some(heads) = permuted_heads(hf, &self.config) else {
            return Ok(None);
        };
        if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
            return Err(self.file.error(format!(
                "{hf}: {rows} rows do not split into {heads} heads of even size"
            )));
        }
        Ok(Some((0..rows).map(|r| gguf_row(r, rows, heads)).collect()))
    }

    /// A tensor's stored type and bytes, rows already in Hugging Face order (for kernels that
    /// compute on the quantized blocks directly).
    pub fn raw_tensor(&self, hf: &str) -> Result<RawTensor<'_>> {
        let info = self.info(hf)?;
        let bytes = self.file.tensor_bytes(info)?;
        let cols = info.dims[0];
        let rows = info.num_values() / cols.max(1);
        let bytes = match self.row_order(hf, rows)? {
            None => Cow::Borrowed(bytes),
            Some(order) => {
                let row_bytes = info.n_bytes / rows.max(1);
                let mut out = Vec::with_capacity(bytes.len());
                for &src in &order {
                    out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
                }
                Cow::Owned(out)
            }
        };
        Ok(RawTensor {
            ty: info.ty,
            rows,
            cols,
            bytes,
        })
    }

    fn convert_err(&self, info: &TensorInfo, e: super::quants::QuantError) -> ModelError {
        self.file.error(format!("tensor {}: {e}", info.name))
    }
}

impl WeightSource for GgufSource {
    fn quantized_blocks(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantizedBlocks<'_>>> {
        if !self.quantized {
            return Ok(None);
        }
        let (info, bytes) = self.checked(name, &[rows, cols])?;
        let kind = match info.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => return Ok(None),
            GgmlType::Q4K => WeightKind::Q4K,
            GgmlType::Q6K => WeightKind::Q6K,
            _ => WeightKind::Q8_0,
        };
        let order = self.row_order(name, rows)?;
        let row_bytes = info.n_bytes / rows.max(1);
        let row = |r: usize| {
            let src = order.as_ref().map_or(r, |o| o[r]);
            &bytes[src * row_bytes..(src + 1) * row_bytes]
        };
        let out = if !matches!(info.ty, GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q8_0) {
            Cow::Owned(
                rows_to_q8_0(info.ty, rows, cols, row).map_err(|e| self.convert_err(info, e))?,
            )
        } else if order.is_none() {
            Cow::Borrowed(&bytes[..rows * row_bytes])
        } else {
            let mut out = Vec::with_capacity(rows * row_bytes);
            (0..rows).for_each(|r| out.extend_from_slice(row(r)));
            Cow::Owned(out)
        };
        Ok(Some(QuantizedBlocks { kind, bytes: out }))
    }

    fn contains(&self, name: &str) -> bool {
        gguf_tensor_name(name).is_some_and(|n| self.file.tensor_info(&n).is_some())
    }

    fn stored_dtype(&self, name: &str) -> Result<WeightDtype> {
        Ok(match self.info(name)?.ty {
            GgmlType::F32 => WeightDtype::F32,
            _ => WeightDtype::Bf16,
        })
    }

    fn vector_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (info, bytes) = self.checked(name, shape)?;
        let mut values = vec![0f32; info.num_values()];
        dequantize(info.ty, bytes, &mut values).map_err(|e| self.convert_err(info, e))?;
        Ok(match self.row_order(name, values.len())? {
            None => values,
            Some(order) => order.iter().map(|&r| values[r]).collect(),
        })
    }

    fn linear(&self, name: &str, rows: usize, cols: usize, dtype: WeightDtype) -> Result<Linear> {
        let (info, bytes) = self.checked(name, &[rows, cols])?;
        let order = self.row_order(name, rows)?;
        let src_row = |r: usize| order.as_ref().map_or(r, |o| o[r]);
        let row_bytes = info.n_bytes / rows.max(1);
        let row = |r: usize| &bytes[src_row(r) * row_bytes..(src_row(r) + 1) * row_bytes];
        let data = match dtype {
            WeightDtype::F32 => {
                let mut out: Vec<f32> = huge_vec(rows * cols);
                out.resize(rows * cols, 0.0);
                out.par_chunks_mut(cols.max(1))
                    .enumerate()
                    .try_for_each(|(r, dst)| dequantize(info.ty, row(r), dst))
                    .map_err(|e| self.convert_err(info, e))?;
                WeightData::F32(out)
            }
            WeightDtype::Bf16 => {
                let mut out: Vec<u16> = huge_vec(rows * cols);
                out.resize(rows * cols, 0);
                out.par_chunks_mut(cols.max(1))
                    .enumerate()
                    .try_for_each_init(
                        || vec![0f32; cols],
                        |scratch, (r, dst)| {
                            dequantize(info.ty, row(r), scratch)?;
                            for (d, &x) in dst.iter_mut().zip(scratch.iter()) {
                                *d = half::bf16::from_f32(x).to_bits();
                            }
                            Ok(())
                        },
                    )
                    .map_err(|e| self.convert_err(info, e))?;
                WeightData::Bf16(out)
            }
        };
        Ok(Linear { rows, cols, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.3.input_layernorm.weight",
                "blk.3.attn_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            (
                "model.layers.12.self_attn.q_proj.weight",
                "blk.12.attn_q.weight",
            ),
            ("model.layers.1.self_attn.k_proj.bias", "blk.1.attn_k.bias"),
            (
                "model.layers.1.self_attn.o_proj.weight",
                "blk.1.attn_output.weight",
            ),
            (
                "model.layers.2.mlp.down_proj.weight",
                "blk.2.ffn_down.weight",
            ),
        ];
        for (hf, gguf) in cases {
            assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, ...).swapaxes(1, 2): stored row h·d + 2i + s
        // holds HF row h·d + s·d/2 + i.
        let (heads, d) = (3, 8);
        let rows = heads * d;
        let mut stored = vec![0; rows];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..d / 2 {
                    stored[h * d + 2 * i + s] = h * d + s * d / 2 + i;
                }
            }
        }
        let hf: Vec<usize> = (0..rows)
            .map(|r| stored[gguf_row(r, rows, heads)])
            .collect();
        assert_eq!(hf, (0..rows).collect::<Vec<_>>());
    }
}
