//! Paged KV cache storage: per layer, a pool of fixed-size blocks for K and for V.
//!
//! Layout of each layer's pool: one tile of `block_size × head_dim` values per (block, KV head),
//! tiles ordered `[num_blocks, num_kv_heads]`. V tiles are slot-major (`[block_size][head_dim]`:
//! one token's values contiguous, for the `p · V` accumulation); K tiles are dimension-major
//! (`[head_dim][block_size]`: one dimension of 16 consecutive keys in one vector, so `q · Kᵀ`
//! needs no horizontal sums). A token lives at
//! a *slot* `block_id * block_size + offset`; the forward writes new K/V at the slots of a slot
//! mapping and attention reads through block tables. Which blocks a sequence owns is the block
//! manager's business (engine crate); this module only stores values.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::hugepages::huge_zeroed_f32;

/// K and V pools of one layer.
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
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
    /// Offset of the (block, kv head) tile in a layer pool.
    #[inline]
    pub fn tile(&self, block: usize, head: usize) -> usize {
        (block * self.num_kv_heads + head) * self.block_size * self.head_dim
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
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    /// A cache of exactly `num_blocks` blocks. Memory is zero-filled lazily by the OS.
    pub fn new(config: &ModelConfig, block_size: usize, num_blocks: usize) -> Self {
        let geometry = KvGeometry {
            block_size,
            num_blocks,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        let layers = (0..config.num_layers)
            .map(|_| LayerKv {
                k: huge_zeroed_f32(geometry.layer_len()),
                v: huge_zeroed_f32(geometry.layer_len()),
            })
            .collect();
        Self { geometry, layers }
    }

    /// Bytes one block takes across all layers (K and V).
    pub fn block_bytes(config: &ModelConfig, block_size: usize) -> usize {
        config.kv_bytes_per_token(std::mem::size_of::<f32>()) * block_size
    }

    /// As many blocks as fit in `budget_bytes` (at least one is required).
    pub fn with_budget(
        config: &ModelConfig,
        block_size: usize,
        budget_bytes: usize,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(ModelError::InvalidOption(
                "block size must be at least 1".into(),
            ));
        }
        let num_blocks = budget_bytes / Self::block_bytes(config, block_size);
        if num_blocks == 0 {
            return Err(ModelError::KvCacheTooSmall {
                budget_bytes,
                num_blocks,
                needed: 1,
            });
        }
        Ok(Self::new(config, block_size, num_blocks))
    }

    /// Number of tokens the cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.geometry.num_blocks * self.geometry.block_size
    }

    /// Copies block `src`'s K and V, in every layer, over block `dst` (copy-on-write of a block
    /// shared by parallel samples).
    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let g = self.geometry;
        let len = g.num_kv_heads * g.block_size * g.head_dim;
        let (from, to) = (g.tile(src, 0), g.tile(dst, 0));
        for layer in &mut self.layers {
            layer.k.copy_within(from..from + len, to);
            layer.v.copy_within(from..from + len, to);
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
        let width = g.num_kv_heads * g.head_dim;
        let LayerKv { k, v } = &mut self.layers[layer];
        for (t, &slot) in slots.iter().enumerate() {
            let (block, in_block) = (slot / g.block_size, slot % g.block_size);
            let src_k = &kv_rows.0[t * row_stride..t * row_stride + width];
            let src_v = &kv_rows.1[t * row_stride..t * row_stride + width];
            for h in 0..g.num_kv_heads {
                let dst = g.v_offset(block, h, in_block);
                v[dst..dst + g.head_dim]
                    .copy_from_slice(&src_v[h * g.head_dim..(h + 1) * g.head_dim]);
                let key = &src_k[h * g.head_dim..(h + 1) * g.head_dim];
                let k0 = g.k_offset(block, h, in_block, 0);
                for (d, &x) in key.iter().enumerate() {
                    k[k0 + d * g.block_size] = x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_block_copies_every_layer_and_nothing_else() {
        let g = KvGeometry {
            block_size: 2,
            num_blocks: 3,
            num_kv_heads: 2,
            head_dim: 4,
        };
        let layer = || LayerKv {
            k: vec![0.0; g.layer_len()],
            v: vec![0.0; g.layer_len()],
        };
        let mut kv = KvCache {
            geometry: g,
            layers: vec![layer(), layer()],
        };
        let len = g.num_kv_heads * g.block_size * g.head_dim;
        for layer in &mut kv.layers {
            for (i, x) in layer.k.iter_mut().enumerate() {
                *x = i as f32;
            }
            for (i, x) in layer.v.iter_mut().enumerate() {
                *x = -(i as f32);
            }
        }
        kv.copy_block(0, 2);
        for layer in &kv.layers {
            assert_eq!(layer.k[2 * len..3 * len], layer.k[..len]);
            assert_eq!(layer.v[2 * len..3 * len], layer.v[..len]);
            assert_eq!(layer.k[len], len as f32, "block 1 untouched");
        }
    }
}
