//! Paged KV cache storage: per layer, a pool of fixed-size blocks for K and for V.
//!
//! Layout of each layer's pool: one tile of `block_size × head_dim` values per (block, KV head),
//! tiles ordered `[num_kv_heads, num_blocks]` (head-major, see [`KvGeometry::tile`]). V tiles are
//! slot-major (`[block_size][head_dim]`: one token's values contiguous, for the `p · V`
//! accumulation); K tiles are dimension-major (`[head_dim][block_size]`: one dimension of 16
//! consecutive keys in one vector, so `q · Kᵀ` needs no horizontal sums). A token lives at a
//! *slot* `block_id * block_size + offset`; the forward writes new K/V at the slots of a slot
//! mapping and attention reads through block tables. Which blocks a sequence owns is the block
//! manager's business (engine crate); this module only stores values.
//!
//! Values are stored as f32, bf16, f16 or int8 ([`KvCacheDtype`]). int8 keeps one f32 scale per
//! token and KV head for K and for V (symmetric, `absmax / 127`): finer than a scale per block,
//! and a block that fills token by token never needs requantizing.

use half::{bf16, f16};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::hugepages::huge_zeroed;
use crate::weights::WeightDtype;

/// How K/V values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheDtype {
    F32,
    Bf16,
    F16,
    /// Symmetric int8 with an f32 scale per token and KV head.
    Int8,
}

impl KvCacheDtype {
    /// `auto` follows the weights (vLLM's rule): bf16 weights keep a bf16 cache, f32 an f32 one.
    pub fn parse(text: &str, weights: WeightDtype) -> Result<Self> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "auto" => match weights {
                WeightDtype::F32 => KvCacheDtype::F32,
                WeightDtype::Bf16 => KvCacheDtype::Bf16,
            },
            "f32" | "float32" | "fp32" => KvCacheDtype::F32,
            "bf16" | "bfloat16" => KvCacheDtype::Bf16,
            "f16" | "fp16" | "float16" | "half" => KvCacheDtype::F16,
            "int8" | "i8" => KvCacheDtype::Int8,
            other => {
                return Err(ModelError::InvalidOption(format!(
                    "KV cache dtype {other:?} is not supported (use auto, f32, bf16, f16 or int8)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KvCacheDtype::F32 => "f32",
            KvCacheDtype::Bf16 => "bf16",
            KvCacheDtype::F16 => "f16",
            KvCacheDtype::Int8 => "int8",
        }
    }

    /// Bytes one token of one KV head takes for K (or for V), scales included.
    pub fn bytes_per_head_token(self, head_dim: usize) -> usize {
        match self {
            KvCacheDtype::F32 => 4 * head_dim,
            KvCacheDtype::Bf16 | KvCacheDtype::F16 => 2 * head_dim,
            KvCacheDtype::Int8 => head_dim + 4,
        }
    }
}

/// One layer's K or V values in the cache's storage type.
pub enum KvValues {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    Int8(Vec<i8>),
}

impl KvValues {
    fn zeroed(dtype: KvCacheDtype, len: usize) -> Self {
        match dtype {
            KvCacheDtype::F32 => KvValues::F32(huge_zeroed(len)),
            KvCacheDtype::Bf16 => KvValues::Bf16(huge_zeroed(len)),
            KvCacheDtype::F16 => KvValues::F16(huge_zeroed(len)),
            KvCacheDtype::Int8 => KvValues::Int8(huge_zeroed(len)),
        }
    }

    fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        match self {
            KvValues::F32(v) => v.copy_within(from..from + len, to),
            KvValues::Bf16(v) => v.copy_within(from..from + len, to),
            KvValues::F16(v) => v.copy_within(from..from + len, to),
            KvValues::Int8(v) => v.copy_within(from..from + len, to),
        }
    }

    /// Asks the CPU to bring `len` values from `offset` on into cache (a hint: never faults).
    fn prefetch(&self, offset: usize, len: usize) {
        use crate::ops::simd::prefetch;
        let range = offset..offset + len;
        match self {
            KvValues::F32(v) => prefetch(&v[range]),
            KvValues::Bf16(v) => prefetch(&v[range]),
            KvValues::F16(v) => prefetch(&v[range]),
            KvValues::Int8(v) => prefetch(&v[range]),
        }
    }

    /// Stores `values` (already scaled for int8) at `offset + i * stride`.
    fn store(&mut self, values: &[f32], offset: usize, stride: usize) {
        let at = |i: usize| offset + i * stride;
        match self {
            KvValues::F32(v) => values.iter().enumerate().for_each(|(i, &x)| v[at(i)] = x),
            KvValues::Bf16(v) => values
                .iter()
                .enumerate()
                .for_each(|(i, &x)| v[at(i)] = bf16::from_f32(x)),
            KvValues::F16(v) => values
                .iter()
                .enumerate()
                .for_each(|(i, &x)| v[at(i)] = f16::from_f32(x)),
            KvValues::Int8(v) => values
                .iter()
                .enumerate()
                .for_each(|(i, &x)| v[at(i)] = x.round().clamp(-127.0, 127.0) as i8),
        }
    }

    /// The value at `index` as f32 (unscaled for int8).
    pub fn get(&self, index: usize) -> f32 {
        match self {
            KvValues::F32(v) => v[index],
            KvValues::Bf16(v) => v[index].to_f32(),
            KvValues::F16(v) => v[index].to_f32(),
            KvValues::Int8(v) => v[index] as f32,
        }
    }
}

/// K and V pools of one layer; the scales (one per token and KV head) are used by int8 only.
pub struct LayerKv {
    pub k: KvValues,
    pub v: KvValues,
    pub k_scales: Vec<f32>,
    pub v_scales: Vec<f32>,
}

/// The geometry of a KV pool, shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub block_size: usize,
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Offset of the (block, kv head) tile in a layer pool. Pools are head-major: one KV head's
    /// tiles of consecutive blocks are adjacent, so an attention item (one KV head) over a
    /// sequence whose blocks were allocated in order reads one sequential stream.
    #[inline]
    pub fn tile(&self, block: usize, head: usize) -> usize {
        (head * self.num_blocks + block) * self.block_size * self.head_dim
    }

    /// Index of the (block, kv head) tile's first token in the per-token scale arrays.
    #[inline]
    pub fn scale_tile(&self, block: usize, head: usize) -> usize {
        (head * self.num_blocks + block) * self.block_size
    }

    /// Offset of one token's V row (`head_dim` contiguous values).
    #[inline]
    pub fn v_offset(&self, block: usize, head: usize, in_block: usize) -> usize {
        self.tile(block, head) + in_block * self.head_dim
    }

    /// Offset of dimension `d` of one token's key (keys of a tile are `block_size` apart per `d`).
    #[inline]
    pub fn k_offset(&self, block: usize, head: usize, in_block: usize, d: usize) -> usize {
        self.tile(block, head) + d * self.block_size + in_block
    }

    fn layer_len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }
}

/// The whole paged KV cache.
pub struct KvCache {
    pub geometry: KvGeometry,
    pub dtype: KvCacheDtype,
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    /// A cache of exactly `num_blocks` blocks. Memory is zero-filled lazily by the OS.
    pub fn new(
        config: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: KvCacheDtype,
    ) -> Self {
        let geometry = KvGeometry {
            block_size,
            num_blocks,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        Self::with_geometry(geometry, config.num_layers, dtype)
    }

    /// A cache of `num_layers` layers of the given geometry.
    pub fn with_geometry(geometry: KvGeometry, num_layers: usize, dtype: KvCacheDtype) -> Self {
        let g = geometry;
        let scales = if dtype == KvCacheDtype::Int8 {
            g.num_blocks * g.num_kv_heads * g.block_size
        } else {
            0
        };
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: KvValues::zeroed(dtype, g.layer_len()),
                v: KvValues::zeroed(dtype, g.layer_len()),
                k_scales: huge_zeroed(scales),
                v_scales: huge_zeroed(scales),
            })
            .collect();
        Self {
            geometry,
            dtype,
            layers,
        }
    }

    /// Bytes one block takes across all layers (K and V).
    pub fn block_bytes(config: &ModelConfig, block_size: usize, dtype: KvCacheDtype) -> usize {
        let per_token = dtype.bytes_per_head_token(config.head_dim);
        2 * config.num_layers * config.num_kv_heads * per_token * block_size
    }

    /// Bytes of K and V one token occupies across all layers.
    pub fn bytes_per_token(&self, config: &ModelConfig) -> usize {
        Self::block_bytes(config, 1, self.dtype)
    }

    /// As many blocks as fit in `budget_bytes` (at least one is required).
    pub fn with_budget(
        config: &ModelConfig,
        block_size: usize,
        budget_bytes: usize,
        dtype: KvCacheDtype,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(ModelError::InvalidOption(
                "block size must be at least 1".into(),
            ));
        }
        let num_blocks = budget_bytes / Self::block_bytes(config, block_size, dtype);
        if num_blocks == 0 {
            return Err(ModelError::KvCacheTooSmall {
                budget_bytes,
                num_blocks,
                needed: 1,
            });
        }
        Ok(Self::new(config, block_size, num_blocks, dtype))
    }

    /// Number of tokens the cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.geometry.num_blocks * self.geometry.block_size
    }

    /// Copies block `src`'s K and V, in every layer, over block `dst` (copy-on-write of a block
    /// shared by parallel samples).
    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let g = self.geometry;
        let len = g.block_size * g.head_dim;
        for layer in &mut self.layers {
            for h in 0..g.num_kv_heads {
                let (from, to) = (g.tile(src, h), g.tile(dst, h));
                layer.k.copy_within(from, len, to);
                layer.v.copy_within(from, len, to);
                let (scale_from, scale_to) = (g.scale_tile(src, h), g.scale_tile(dst, h));
                for scales in [&mut layer.k_scales, &mut layer.v_scales] {
                    if !scales.is_empty() {
                        scales.copy_within(scale_from..scale_from + g.block_size, scale_to);
                    }
                }
            }
        }
    }

    /// Brings the cache lines [`Self::write`] will store the tokens of `slots` into, for the
    /// given layer, toward the cache ahead of time: a decode step's K tile lines were evicted
    /// by the weights streamed since the previous step, and a store that misses waits for its
    /// line. Called before the layer's q/k/v projection, the lines arrive while it runs. Large
    /// steps (prefill) are not worth it and skip.
    pub fn prefetch_writes(&self, layer: usize, slots: &[usize]) {
        const MAX_TOKENS: usize = 16;
        if slots.len() > MAX_TOKENS {
            return;
        }
        let g = self.geometry;
        let l = &self.layers[layer];
        for &slot in slots {
            let (block, in_block) = (slot / g.block_size, slot % g.block_size);
            for h in 0..g.num_kv_heads {
                l.k.prefetch(g.tile(block, h), g.block_size * g.head_dim);
                l.v.prefetch(g.v_offset(block, h, in_block), g.head_dim);
            }
        }
    }

    /// Stores K and V of each token at its slot. `k_rows`/`v_rows` hold `[num_kv_heads * head_dim]`
    /// values per token, `row_stride` apart.
    pub fn write(
        &mut self,
        layer: usize,
        slots: &[usize],
        kv_rows: (&[f32], &[f32]),
        row_stride: usize,
    ) {
        let g = self.geometry;
        let (hd, width) = (g.head_dim, g.num_kv_heads * g.head_dim);
        let int8 = self.dtype == KvCacheDtype::Int8;
        let LayerKv {
            k,
            v,
            k_scales,
            v_scales,
        } = &mut self.layers[layer];
        // int8 rows are divided by their scale (absmax / 127) first; the scale is recorded.
        let (mut k_scaled, mut v_scaled) = if int8 {
            (vec![0f32; hd], vec![0f32; hd])
        } else {
            (Vec::new(), Vec::new())
        };
        for (t, &slot) in slots.iter().enumerate() {
            let (block, in_block) = (slot / g.block_size, slot % g.block_size);
            let src_k = &kv_rows.0[t * row_stride..t * row_stride + width];
            let src_v = &kv_rows.1[t * row_stride..t * row_stride + width];
            for h in 0..g.num_kv_heads {
                let mut key = &src_k[h * hd..(h + 1) * hd];
                let mut value = &src_v[h * hd..(h + 1) * hd];
                if int8 {
                    let at = g.scale_tile(block, h) + in_block;
                    k_scales[at] = scale_row(key, &mut k_scaled);
                    v_scales[at] = scale_row(value, &mut v_scaled);
                    key = &k_scaled;
                    value = &v_scaled;
                }
                v.store(value, g.v_offset(block, h, in_block), 1);
                k.store(key, g.k_offset(block, h, in_block, 0), g.block_size);
            }
        }
    }
}

/// Writes `row / scale` into `out` with `scale = absmax / 127` (0 for an all-zero row); returns it.
fn scale_row(row: &[f32], out: &mut [f32]) -> f32 {
    let absmax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = absmax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, x) in out.iter_mut().zip(row) {
        *o = x * inv;
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dtype: KvCacheDtype) -> KvCache {
        let g = KvGeometry {
            block_size: 2,
            num_blocks: 3,
            num_kv_heads: 2,
            head_dim: 4,
        };
        KvCache::with_geometry(g, 2, dtype)
    }

    #[test]
    fn write_then_read_back_each_dtype() {
        for (dtype, tol) in [
            (KvCacheDtype::F32, 0.0),
            (KvCacheDtype::Bf16, 1.0 / 128.0),
            (KvCacheDtype::F16, 1.0 / 1024.0),
            (KvCacheDtype::Int8, 1.0 / 127.0),
        ] {
            let mut kv = cache(dtype);
            let g = kv.geometry;
            // Two tokens, rows of [k(2 heads × 4) | v(2 heads × 4)].
            let rows: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) / 7.0).collect();
            kv.write(1, &[5, 0], (&rows[..], &rows[8..]), 16);
            for (t, &slot) in [5usize, 0].iter().enumerate() {
                let (block, in_block) = (slot / 2, slot % 2);
                for h in 0..2 {
                    let (ks, vs) = if dtype == KvCacheDtype::Int8 {
                        let at = g.scale_tile(block, h) + in_block;
                        (kv.layers[1].k_scales[at], kv.layers[1].v_scales[at])
                    } else {
                        (1.0, 1.0)
                    };
                    for d in 0..4 {
                        let want_k = rows[t * 16 + h * 4 + d];
                        let want_v = rows[t * 16 + 8 + h * 4 + d];
                        let got_k = kv.layers[1].k.get(g.k_offset(block, h, in_block, d)) * ks;
                        let got_v = kv.layers[1].v.get(g.v_offset(block, h, in_block) + d) * vs;
                        let max = rows.iter().fold(0f32, |m, x| m.max(x.abs()));
                        assert!((got_k - want_k).abs() <= tol * max, "{dtype:?} k");
                        assert!((got_v - want_v).abs() <= tol * max, "{dtype:?} v");
                    }
                }
            }
            assert_eq!(kv.layers[0].k.get(0), 0.0, "other layers untouched");
        }
    }

    #[test]
    fn copy_block_copies_every_layer_and_nothing_else() {
        for dtype in [KvCacheDtype::F32, KvCacheDtype::Int8] {
            let mut kv = cache(dtype);
            let rows: Vec<f32> = (1..=16).map(|i| i as f32).collect();
            for layer in 0..2 {
                kv.write(layer, &[0, 1], (&rows[..], &rows[..]), 8);
            }
            kv.copy_block(0, 2);
            let g = kv.geometry;
            let len = g.block_size * g.head_dim;
            for layer in &kv.layers {
                for h in 0..g.num_kv_heads {
                    let (src, dst, other) = (g.tile(0, h), g.tile(2, h), g.tile(1, h));
                    for i in 0..len {
                        assert_eq!(layer.k.get(dst + i), layer.k.get(src + i));
                        assert_eq!(layer.v.get(dst + i), layer.v.get(src + i));
                        assert_eq!(layer.k.get(other + i), 0.0, "block 1 untouched");
                    }
                    if dtype == KvCacheDtype::Int8 {
                        let (src, dst) = (g.scale_tile(0, h), g.scale_tile(2, h));
                        let bs = g.block_size;
                        assert_eq!(layer.k_scales[dst..dst + bs], layer.k_scales[src..src + bs]);
                        assert_eq!(layer.v_scales[dst..dst + bs], layer.v_scales[src..src + bs]);
                        assert!(layer.k_scales[src..src + bs].iter().all(|&s| s > 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn dtypes_parse_and_auto_follows_the_weights() {
        assert_eq!(
            KvCacheDtype::parse("auto", WeightDtype::Bf16).unwrap(),
            KvCacheDtype::Bf16
        );
        assert_eq!(
            KvCacheDtype::parse("auto", WeightDtype::F32).unwrap(),
            KvCacheDtype::F32
        );
        assert_eq!(
            KvCacheDtype::parse("INT8", WeightDtype::F32).unwrap(),
            KvCacheDtype::Int8
        );
        assert!(KvCacheDtype::parse("fp4", WeightDtype::F32).is_err());
    }
}
