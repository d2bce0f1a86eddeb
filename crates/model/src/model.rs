//! The Llama-family decoder (Llama, Mistral, Qwen2) with a batched, paged forward pass.
//!
//! One [`Model::forward`] call runs one engine step: embeddings, norms, projections, MLP run once over
//! the flattened tokens of every sequence in the step; attention reads each sequence's K/V through
//! its block table; the final norm and lm_head run only on the rows whose logits are sampled.
//! q/k/v and gate/up projections are fused at load time so each is one matmul; the runner then
//! moves every matrix a step reads into one huge-page arena ([`Model::consolidate_weights`]).

use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::hugepages::HugeArena;
use crate::kv_cache::KvCache;
use crate::ops::activation::silu_mul;
use crate::ops::attention::{paged_attention, AttentionShape, SeqAttention};
use crate::ops::gemm::{matmul, PackedLinear};
use crate::ops::norm::rms_norm;
use crate::ops::rope::Rope;
use crate::weights::{WeightDtype, WeightSource};

mod matrices;

struct Layer {
    input_norm: Vec<f32>,
    /// `[q; k; v]` stacked: `qkv_dim × hidden`.
    qkv: PackedLinear,
    qkv_bias: Option<Vec<f32>>,
    o_proj: PackedLinear,
    post_norm: Vec<f32>,
    /// `[gate; up]` stacked: `2·intermediate × hidden`.
    gate_up: PackedLinear,
    down: PackedLinear,
}

/// A loaded model: weights plus the rotary tables.
pub struct Model {
    pub config: ModelConfig,
    pub dtype: WeightDtype,
    embed: PackedLinear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when the embedding matrix doubles as the output head.
    lm_head: Option<PackedLinear>,
    rope: Rope,
}

/// One step's tokens and where they go.
pub struct StepBatch<'a> {
    /// Flattened tokens of every sequence, sequence by sequence.
    pub token_ids: &'a [u32],
    pub seqs: &'a [SeqAttention<'a>],
    /// Rows of `token_ids` whose next-token logits are wanted, in output order.
    pub logits_rows: &'a [usize],
}

/// Reusable activation buffers, so a step allocates nothing once warmed up.
#[derive(Default)]
pub struct Workspace {
    positions: Vec<usize>,
    slots: Vec<usize>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    selected: Vec<f32>,
    logits: Vec<f32>,
}

fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

impl Model {
    /// Loads weights by their Hugging Face names (safetensors or GGUF). `dtype: None` (auto) takes
    /// the source's choice: for safetensors bf16 stays bf16 and f32/f16 become f32; for GGUF, F32
    /// files load as f32 and every other type as bf16.
    pub fn load(
        config: ModelConfig,
        source: &dyn WeightSource,
        dtype: Option<WeightDtype>,
    ) -> Result<Self> {
        let c = &config;
        let dtype = match dtype {
            Some(d) => d,
            None => source.stored_dtype("model.embed_tokens.weight")?,
        };
        let d = c.hidden_size;
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let matrix = |parts: &[(String, usize)], cols: usize| {
            matrices::load_matrix(source, parts, cols, dtype)
        };
        let one = |name: &str, rows: usize| vec![(name.to_string(), rows)];
        let embed = matrix(&one("model.embed_tokens.weight", c.vocab_size), d)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = |name: &str, rows: usize| (format!("{p}.self_attn.{name}.weight"), rows);
            let qkv = matrix(
                &[
                    attn("q_proj", q_dim),
                    attn("k_proj", kv_dim),
                    attn("v_proj", kv_dim),
                ],
                d,
            )?;
            let qkv_bias = if c.qkv_bias {
                let bias = |name: &str, n: usize| {
                    source.vector_f32(&format!("{p}.self_attn.{name}.bias"), &[n])
                };
                Some(
                    [
                        bias("q_proj", q_dim)?,
                        bias("k_proj", kv_dim)?,
                        bias("v_proj", kv_dim)?,
                    ]
                    .concat(),
                )
            } else {
                None
            };
            let mlp = |name: &str, rows: usize| (format!("{p}.mlp.{name}.weight"), rows);
            let inter = c.intermediate_size;
            layers.push(Layer {
                input_norm: source.vector_f32(&format!("{p}.input_layernorm.weight"), &[d])?,
                qkv,
                qkv_bias,
                o_proj: matrix(&[attn("o_proj", d)], q_dim)?,
                post_norm: source
                    .vector_f32(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                gate_up: matrix(&[mlp("gate_proj", inter), mlp("up_proj", inter)], d)?,
                down: matrix(&[mlp("down_proj", d)], inter)?,
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(matrix(&one("lm_head.weight", c.vocab_size), d)?)
        };
        Ok(Self {
            norm: source.vector_f32("model.norm.weight", &[d])?,
            rope: Rope::new(c.head_dim, c.rope_theta, c.rope_scaling.as_ref()),
            embed,
            layers,
            lm_head,
            dtype,
            config,
        })
    }

    /// Quantizes every projection, the output head and (when tied to it) the embedding to Q8_0
    /// (`--quantization q8_0`); norms stay f32.
    pub fn quantize_q8_0(&mut self) {
        self.map_matrices(PackedLinear::to_q8_0);
    }

    /// As [`Self::quantize_q8_0`] to Q4_K (`--quantization q4_k`); matrices whose input size is
    /// not a multiple of 256 become Q8_0.
    pub fn quantize_q4_k(&mut self) {
        self.map_matrices(PackedLinear::to_q4_k);
    }

    /// Replaces every projection and the output head (the embedding, when tied to it) by `f` of
    /// itself.
    pub fn map_matrices(&mut self, f: impl Fn(&PackedLinear) -> PackedLinear) {
        for w in self.step_matrices_mut() {
            *w = f(w);
        }
    }

    /// Moves every matrix a step reads (each layer's projections, then the output head) into one
    /// huge-page-backed arena, in the order a step reads them: a small model's matrices are each
    /// too small to get 2 MiB pages of their own, and on 4 KiB pages decode streams them at a
    /// fraction of the memory bandwidth (measured on the 135M shape, all matrices, one row:
    /// 31–40 GB/s allocated one by one, 35–57 GB/s in the arena, depending on the machine's state).
    /// Matrices move one at a time, so the weights are never held twice.
    pub fn consolidate_weights(&mut self) {
        let matrices = self.step_matrices_mut();
        let total: usize = matrices.iter().map(|w| w.arena_bytes()).sum();
        let arena = Arc::new(HugeArena::new(total));
        for w in matrices {
            let moved = w.move_into(&arena);
            debug_assert!(moved, "invariant: the arena was sized for every matrix");
        }
    }

    /// The matrices one step reads, in reading order: each layer's projections, then the output
    /// head (the embedding when tied to it).
    fn step_matrices_mut(&mut self) -> Vec<&mut PackedLinear> {
        let mut matrices = Vec::with_capacity(4 * self.layers.len() + 1);
        for layer in &mut self.layers {
            matrices.extend([
                &mut layer.qkv,
                &mut layer.o_proj,
                &mut layer.gate_up,
                &mut layer.down,
            ]);
        }
        matrices.push(self.lm_head.as_mut().unwrap_or(&mut self.embed));
        matrices
    }

    /// As [`Self::step_matrices_mut`], shared.
    fn step_matrices(&self) -> impl Iterator<Item = &PackedLinear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o_proj, &l.gate_up, &l.down])
            .chain(std::iter::once(
                self.lm_head.as_ref().unwrap_or(&self.embed),
            ))
    }

    /// How the weights a step reads are stored (f32, bf16, q8_0, q4_k, q6_k): the kind holding most
    /// of their bytes (a Q4_K file keeps some tensors in other types).
    pub fn weight_kind(&self) -> crate::ops::gemm::WeightKind {
        use crate::ops::gemm::WeightKind;
        let bytes = |k: WeightKind| -> usize {
            self.step_matrices()
                .filter(|w| w.kind() == k)
                .map(|w| w.size_bytes())
                .sum()
        };
        WeightKind::ALL
            .into_iter()
            .max_by_key(|&k| bytes(k))
            .unwrap_or(WeightKind::F32)
    }

    /// Bytes of weights one decode step reads (every matrix once; the embedding only for lookups).
    pub fn weight_bytes_per_step(&self) -> usize {
        self.step_matrices().map(|w| w.size_bytes()).sum()
    }

    /// Runs one step and returns logits, `logits_rows.len() × vocab_size`, row-major.
    pub fn forward<'w>(
        &self,
        batch: &StepBatch<'_>,
        kv: &mut KvCache,
        ws: &'w mut Workspace,
    ) -> &'w [f32] {
        let c = &self.config;
        let t = batch.token_ids.len();
        let d = c.hidden_size;
        let (heads, kv_heads, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let qkv_dim = c.qkv_dim();
        let inter = c.intermediate_size;
        let bs = kv.geometry.block_size;

        // Attention metadata, built once per step and shared by every layer.
        ws.positions.clear();
        ws.slots.clear();
        for s in batch.seqs {
            let first = s.context_len - s.num_queries;
            for pos in first..s.context_len {
                ws.positions.push(pos);
                ws.slots
                    .push(s.block_table[pos / bs] as usize * bs + pos % bs);
            }
        }
        assert_eq!(
            ws.positions.len(),
            t,
            "invariant: sequences cover the step's tokens"
        );
        self.rope.tables(&ws.positions, &mut ws.cos, &mut ws.sin);

        let x = sized(&mut ws.x, t * d);
        for (row, &tok) in x.chunks_mut(d).zip(batch.token_ids) {
            self.embed.row_to_f32(tok as usize, row);
        }
        let h = sized(&mut ws.h, t * d);
        let qkv = sized(&mut ws.qkv, t * qkv_dim);
        let attn = sized(&mut ws.attn, t * heads * hd);
        let gate_up = sized(&mut ws.gate_up, t * 2 * inter);
        let act = sized(&mut ws.act, t * inter);
        let shape = AttentionShape {
            num_heads: heads,
            geometry: kv.geometry,
            q_row_stride: qkv_dim,
            scale: 1.0 / (hd as f32).sqrt(),
        };

        for (li, layer) in self.layers.iter().enumerate() {
            kv.prefetch_writes(li, &ws.slots);
            rms_norm(x, &layer.input_norm, c.rms_norm_eps, h);
            matmul(h, t, &layer.qkv, qkv);
            if let Some(bias) = &layer.qkv_bias {
                for row in qkv.chunks_mut(qkv_dim) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
            self.rope.apply(qkv, qkv_dim, 0, heads, &ws.cos, &ws.sin);
            self.rope
                .apply(qkv, qkv_dim, heads * hd, kv_heads, &ws.cos, &ws.sin);
            kv.write(
                li,
                &ws.slots,
                (&qkv[heads * hd..], &qkv[(heads + kv_heads) * hd..]),
                qkv_dim,
            );
            paged_attention(qkv, batch.seqs, &kv.layers[li], &shape, attn);
            matmul(attn, t, &layer.o_proj, h);
            x.iter_mut().zip(h.iter()).for_each(|(a, b)| *a += b);

            rms_norm(x, &layer.post_norm, c.rms_norm_eps, h);
            matmul(h, t, &layer.gate_up, gate_up);
            silu_mul(gate_up, inter, act);
            matmul(act, t, &layer.down, h);
            x.iter_mut().zip(h.iter()).for_each(|(a, b)| *a += b);
        }

        let n = batch.logits_rows.len();
        let selected = sized(&mut ws.selected, n * d);
        for (dst, &row) in selected.chunks_mut(d).zip(batch.logits_rows) {
            dst.copy_from_slice(&x[row * d..(row + 1) * d]);
        }
        let normed = &mut h[..n * d];
        rms_norm(selected, &self.norm, c.rms_norm_eps, normed);
        let logits = sized(&mut ws.logits, n * c.vocab_size);
        matmul(
            normed,
            n,
            self.lm_head.as_ref().unwrap_or(&self.embed),
            logits,
        );
        logits
    }
}
