//! Random weights in safetensors layout: the Hugging Face tensor list of a shape, the
//! safetensors header, and deterministic chunked generation (each fixed-size chunk has its own
//! RNG derived from seed, tensor index and chunk index, so output is independent of threading),
//! written either into one in-memory buffer or streamed to a file batch by batch.

use std::io::Write;

use half::bf16;
use rayon::prelude::*;

use super::shapes::Shape;
use super::{DType, SynthError};

/// Standard deviation of random weights and biases.
pub const INIT_STD: f64 = 0.02;
/// Elements per generation chunk (fixed: part of the deterministic output definition).
const CHUNK_ELEMS: usize = 1 << 18;
/// Bytes generated in parallel before being written out by [`stream_data`].
pub(crate) const BATCH_BYTES: usize = 64 << 20;

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Approximately N(0, std²).
    Normal { std: f32 },
    /// All ones (RMSNorm weights).
    Ones,
}

/// One tensor of the checkpoint, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The Hugging Face Llama/Qwen2 tensors of `shape`, in the order they are written.
pub fn tensor_specs(shape: &Shape) -> Vec<TensorSpec> {
    let (h, i, v) = (shape.hidden_size, shape.intermediate_size, shape.vocab_size);
    let q_out = shape.num_attention_heads * shape.head_dim();
    let kv_out = shape.num_key_value_heads * shape.head_dim();
    let normal = Init::Normal {
        std: INIT_STD as f32,
    };
    let spec = |name: String, dims: &[usize], init: Init| TensorSpec {
        name,
        shape: dims.to_vec(),
        init,
    };
    let mut out = vec![spec("model.embed_tokens.weight".into(), &[v, h], normal)];
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push(spec(
            format!("{p}.input_layernorm.weight"),
            &[h],
            Init::Ones,
        ));
        for (proj, rows) in [("q", q_out), ("k", kv_out), ("v", kv_out)] {
            let w = format!("{p}.self_attn.{proj}_proj.weight");
            out.push(spec(w, &[rows, h], normal));
            if shape.attention_bias {
                out.push(spec(
                    format!("{p}.self_attn.{proj}_proj.bias"),
                    &[rows],
                    normal,
                ));
            }
        }
        out.push(spec(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, q_out],
            normal,
        ));
        out.push(spec(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            Init::Ones,
        ));
        out.push(spec(format!("{p}.mlp.gate_proj.weight"), &[i, h], normal));
        out.push(spec(format!("{p}.mlp.up_proj.weight"), &[i, h], normal));
        out.push(spec(format!("{p}.mlp.down_proj.weight"), &[h, i], normal));
    }
    out.push(spec("model.norm.weight".into(), &[h], Init::Ones));
    if !shape.tie_word_embeddings {
        out.push(spec("lm_head.weight".into(), &[v, h], normal));
    }
    out
}

/// A safetensors file's layout: the prefix (8-byte length + padded JSON header) and tensors.
pub(crate) struct Layout {
    /// Length prefix and JSON header, ready to write.
    pub prefix: Vec<u8>,
    pub specs: Vec<TensorSpec>,
    /// Size in bytes of the tensor data after the prefix.
    pub data_len: usize,
}

/// One chunk of generated data: which tensor, which chunk of it, and where its bytes go.
struct Chunk {
    tensor: usize,
    index: usize,
    init: Init,
    /// Length in bytes; chunks are contiguous in file order.
    len: usize,
}

pub(crate) fn layout(shape: &Shape, dtype: DType) -> Result<Layout, SynthError> {
    let specs = tensor_specs(shape);
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for spec in &specs {
        let bytes = spec
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| SynthError::InvalidShape {
                name: shape.name.to_string(),
                reason: format!("tensor {} is too large", spec.name),
            })?;
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| SynthError::InvalidShape {
                name: shape.name.to_string(),
                reason: "model is too large".into(),
            })?;
        let dims: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(&spec.name)?,
            dtype.safetensors_name(),
            dims.join(","),
        ));
        offset = end;
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut prefix = Vec::with_capacity(8 + header.len());
    prefix.extend_from_slice(&(header.len() as u64).to_le_bytes());
    prefix.extend_from_slice(header.as_bytes());
    Ok(Layout {
        prefix,
        specs,
        data_len: offset,
    })
}

fn chunks(layout: &Layout, dtype: DType) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (tensor, spec) in layout.specs.iter().enumerate() {
        let numel = spec.numel();
        for index in 0..numel.div_ceil(CHUNK_ELEMS) {
            let elems = CHUNK_ELEMS.min(numel - index * CHUNK_ELEMS);
            let len = elems * dtype.size();
            out.push(Chunk {
                tensor,
                index,
                init: spec.init,
                len,
            });
        }
    }
    out
}

/// Fills `data` (exactly `layout.data_len` bytes) in parallel.
pub(crate) fn fill_data(layout: &Layout, dtype: DType, seed: u64, data: &mut [u8]) {
    let chunks = chunks(layout, dtype);
    let mut rest = data;
    let mut jobs = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let (head, tail) = rest.split_at_mut(chunk.len);
        jobs.push((chunk, head));
        rest = tail;
    }
    jobs.into_par_iter()
        .for_each(|(chunk, out)| fill_chunk(chunk, dtype, seed, out));
}

/// Generates the data section batch by batch (in parallel) and writes it to `out` in order.
pub(crate) fn stream_data(
    layout: &Layout,
    dtype: DType,
    seed: u64,
    out: &mut impl Write,
    batch_bytes: usize,
) -> std::io::Result<()> {
    let chunks = chunks(layout, dtype);
    let mut rest = &chunks[..];
    while !rest.is_empty() {
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len() && (n == 0 || bytes + rest[n].len <= batch_bytes) {
            bytes += rest[n].len;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        let buffers: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|chunk| {
                let mut buf = vec![0u8; chunk.len];
                fill_chunk(chunk, dtype, seed, &mut buf);
                buf
            })
            .collect();
        for buf in &buffers {
            out.write_all(buf)?;
        }
        rest = tail;
    }
    Ok(())
}

fn fill_chunk(chunk: &Chunk, dtype: DType, seed: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), chunk.len);
    match chunk.init {
        Init::Ones => match dtype {
            DType::F32 => fill_with(out, || 1.0f32.to_le_bytes()),
            DType::Bf16 => fill_with(out, || bf16::ONE.to_le_bytes()),
        },
        Init::Normal { std } => {
            let mut rng = WyRand::new(chunk_seed(seed, chunk.tensor, chunk.index));
            // Irwin–Hall: the sum of four centred 16-bit uniforms has variance 1/3.
            let scale = std * 3f32.sqrt() / 65536.0;
            let mut sample = move || {
                let r = rng.next();
                let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
                (sum as f32 + 2.0 - 131072.0) * scale
            };
            match dtype {
                DType::F32 => fill_with(out, || sample().to_le_bytes()),
                DType::Bf16 => fill_with(out, || bf16::from_f32(sample()).to_le_bytes()),
            }
        }
    }
}

fn fill_with<const N: usize>(out: &mut [u8], mut next: impl FnMut() -> [u8; N]) {
    for slot in out.chunks_exact_mut(N) {
        slot.copy_from_slice(&next());
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chunk_seed(seed: u64, tensor: usize, index: usize) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ tensor as u64) ^ index as u64)
}

/// wyrand: a tiny, fast, statistically decent 64-bit generator (fixed here so that output never
/// changes with a dependency upgrade).
struct WyRand(u64);

impl WyRand {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}
