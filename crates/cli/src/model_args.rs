//! Model and runner options shared by every subcommand that loads a model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use pagoda_model::builtin::{load_builtin, load_synthesized, BUILTIN_MODEL_NAME};
use pagoda_model::kv_cache::KvCacheDtype;
use pagoda_model::synth;
use pagoda_model::weights::WeightDtype;
use pagoda_model::{load_model_dir, LoadedModel, RunnerOptions};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF file
    /// (llama/qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K). Without it, a small built-in
    /// random-weight demo model is used.
    #[arg(long, conflicts_with = "synth")]
    pub model: Option<PathBuf>,
    /// Instead of --model: a random-weight model of this shape built in memory (e.g.
    /// smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b; bf16 unless --dtype f32). For benchmarks.
    #[arg(long, value_name = "SHAPE")]
    pub synth: Option<String>,
    /// Weight precision in memory: auto (as stored; f16 becomes f32; GGUF: Q8_0 and Q4_K matrices
    /// as stored, other quantized types as Q8_0, F16/BF16 as bf16, F32 files as f32), f32 or bf16
    /// (every weight dequantized to it).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Memory for the KV cache, e.g. 2GiB, 512MiB.
    #[arg(long, default_value = "2GiB")]
    pub kv_cache_memory: String,
    /// Quantize the weights at load: q8_0 (int8 with a scale per 32 weights, as llama.cpp's Q8_0)
    /// or q4_k (llama.cpp's Q4_K: 4-bit, scales and mins per 32; matrices whose input size is not
    /// a multiple of 256 get q8_0).
    #[arg(long)]
    pub quantization: Option<String>,
    /// KV cache storage: auto (bf16 for bf16 weights, f32 for f32), f32, bf16, f16 or int8
    /// (one scale per token and KV head).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Parses sizes such as `2GiB`, `512MiB`, `1G`, `4096`.
pub fn parse_bytes(text: &str) -> anyhow::Result<usize> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("invalid size {text:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            bail!("unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)")
        }
    };
    Ok((value * mult) as usize)
}

impl ModelArgs {
    pub fn runner_options(&self) -> anyhow::Result<RunnerOptions> {
        let dtype = match self.dtype.as_str() {
            "auto" => None,
            other => Some(other.parse::<WeightDtype>()?),
        };
        let kv_cache_dtype = match self.kv_cache_dtype.as_str() {
            "auto" => None,
            // The weights' dtype only matters for auto.
            other => Some(KvCacheDtype::parse(other, WeightDtype::F32)?),
        };
        Ok(RunnerOptions {
            block_size: self.block_size,
            kv_cache_bytes: parse_bytes(&self.kv_cache_memory)?,
            dtype,
            kv_cache_dtype,
            quantization: self.quantization.as_deref().map(str::parse).transpose()?,
        })
    }

    /// Loads the model (or the built-in demo), reporting on stderr.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let options = self.runner_options()?;
        let start = std::time::Instant::now();
        let loaded = match (&self.model, &self.synth) {
            (Some(dir), _) => load_model_dir(dir, &options)
                .with_context(|| format!("loading {}", dir.display()))?,
            (None, Some(shape)) => {
                let dtype = match options.dtype {
                    Some(WeightDtype::F32) => synth::DType::F32,
                    _ => synth::DType::Bf16,
                };
                load_synthesized(shape, dtype, 0, &options, &format!("synth-{shape}"))?
            }
            (None, None) => {
                eprintln!(
                    "pagoda: no --model given: using the built-in demo model {BUILTIN_MODEL_NAME} \
                     (random weights: its output is meaningless text)"
                );
                load_builtin(&options)?
            }
        };
        let c = loaded.runner.config();
        eprintln!(
            "pagoda: loaded {} ({:?}, {} layers, hidden {}, {:.1} M parameters, {}) in {:.2} s; KV cache {} blocks × {} tokens ({}); {} threads",
            loaded.name,
            c.architecture,
            c.num_layers,
            c.hidden_size,
            c.num_parameters() as f64 / 1e6,
            loaded.runner.model.weight_kind().name(),
            start.elapsed().as_secs_f64(),
            loaded.runner.kv.geometry.num_blocks,
            loaded.runner.kv.geometry.block_size,
            loaded.runner.kv.dtype.name(),
            pagoda_model::ops::pool::global().threads(),
        );
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("2 parsecs").is_err());
    }
}
