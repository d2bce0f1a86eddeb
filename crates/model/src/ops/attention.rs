//! Paged attention on CPU: causal, grouped-query, variable length, one call per layer per step.
//!
//! One call serves a batch mixing prefill chunks (which may start mid-prompt, after earlier chunks'
//! K/V are cached) and single-token decodes. Every sequence's K/V — including the tokens of this
//! step, already written at their slots — is read through its block table.
//!
//! Work is split into items of (sequence, KV head, tile of ≤ 16 queries) run on the kernel pool. An
//! item processes all query heads that share the KV head together, so each K/V block is loaded once
//! per group, and keeps an online softmax (running max, running sum, rescaled accumulator) updated
//! block by block. Inner loops are plain slices over `head_dim`, compiled once per CPU feature
//! level so they vectorize.

use std::cell::RefCell;

use super::matmul::SyncPtr;
use super::pool;
use super::simd::{dot, reduce16};
use crate::kv_cache::KvGeometry;

/// Queries of one sequence in this step.
#[derive(Debug, Clone, Copy)]
pub struct SeqAttention<'a> {
    /// Row of this sequence's first query in the step's flattened tokens.
    pub query_start: usize,
    /// Number of query tokens in this step (a prefill chunk or 1 for a decode).
    pub num_queries: usize,
    /// Tokens in the KV cache after this step's writes; queries are its last `num_queries` positions.
    pub context_len: usize,
    /// Blocks holding positions `0..context_len`, in order.
    pub block_table: &'a [u32],
}

/// Shapes and strides of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub geometry: KvGeometry,
    /// Distance between consecutive query rows in `q` (q may sit inside a fused qkv buffer).
    pub q_row_stride: usize,
    pub scale: f32,
}

const QUERY_TILE: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t, h*head_dim..]` = softmax(q·Kᵀ·scale, causal) · V for every query row of every sequence.
///
/// `k_pool`/`v_pool` are one layer's pools; `out` has `num_heads * head_dim` values per query row.
pub fn paged_attention(
    q: &[f32],
    seqs: &[SeqAttention<'_>],
    k_pool: &[f32],
    v_pool: &[f32],
    shape: &AttentionShape,
    out: &mut [f32],
) {
    let g = shape.geometry;
    let mut items = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        assert!(
            seq.num_queries <= seq.context_len,
            "invariant: queries are part of the context"
        );
        assert!(
            seq.block_table.len() * g.block_size >= seq.context_len,
            "invariant: block table covers the context"
        );
        for kv_head in 0..g.num_kv_heads {
            for tile in (0..seq.num_queries).step_by(QUERY_TILE) {
                items.push((s, kv_head, tile));
            }
        }
    }
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let out_stride = shape.num_heads * g.head_dim;
    let run = |&(s, kv_head, tile): &(usize, usize, usize)| {
        let seq = &seqs[s];
        let end = (tile + QUERY_TILE).min(seq.num_queries);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // SAFETY: item (s, kv_head, tile) alone writes the rows of its queries at the columns
            // of the heads in kv_head's group.
            unsafe {
                dispatch(
                    q,
                    seq,
                    kv_head,
                    tile..end,
                    k_pool,
                    v_pool,
                    shape,
                    &mut scratch,
                    out_ptr,
                    out_stride,
                )
            }
        });
    };
    // Small batches (tiny models, single decodes) are cheaper without a fork.
    let work: usize = seqs
        .iter()
        .map(|s| s.num_queries * s.context_len)
        .sum::<usize>()
        * out_stride;
    if work < 200_000 || items.len() == 1 {
        items.iter().for_each(run);
    } else {
        pool::global().parallel_for(items.len(), &|i| run(&items[i]));
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    q: &[f32],
    seq: &SeqAttention<'_>,
    kv_head: usize,
    queries: std::ops::Range<usize>,
    k_pool: &[f32],
    v_pool: &[f32],
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    out: SyncPtr<f32>,
    out_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return attend_avx512(
                q, seq, kv_head, queries, k_pool, v_pool, shape, scratch, out, out_stride,
            );
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return attend_avx2(
                q, seq, kv_head, queries, k_pool, v_pool, shape, scratch, out, out_stride,
            );
        }
    }
    attend::<PortableDot>(
        q, seq, kv_head, queries, k_pool, v_pool, shape, scratch, out, out_stride,
    )
}

/// The two inner loops of a kernel instantiation, over `head_dim`.
trait Dot {
    /// `a · b`.
    ///
    /// # Safety
    /// The CPU supports the implementation's target features.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;

    /// `acc += Σ_j p[j] · rows[j]` for `p.len()` consecutive rows of `acc.len()` values.
    ///
    /// # Safety
    /// As [`Dot::dot`].
    unsafe fn axpy_rows(p: &[f32], rows: &[f32], acc: &mut [f32]) {
        for (&w, row) in p.iter().zip(rows.chunks_exact(acc.len())) {
            for (x, v) in acc.iter_mut().zip(row) {
                *x += w * v;
            }
        }
    }
}

struct PortableDot;

impl Dot for PortableDot {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
}

/// Explicit AVX-512: the compiler splits the portable 16-lane version into 2-lane pieces here.
#[cfg(target_arch = "x86_64")]
struct Avx512Dot;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx512Dot {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc);
            i += 16;
        }
        if i < n {
            let mask: u16 = (1u16 << (n - i)) - 1;
            let x = _mm512_maskz_loadu_ps(mask, pa.add(i));
            let y = _mm512_maskz_loadu_ps(mask, pb.add(i));
            acc = _mm512_fmadd_ps(x, y, acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn axpy_rows(p: &[f32], rows: &[f32], acc: &mut [f32]) {
        match acc.len() {
            16 => axpy_rows_avx512::<1>(p, rows, acc),
            32 => axpy_rows_avx512::<2>(p, rows, acc),
            64 => axpy_rows_avx512::<4>(p, rows, acc),
            80 => axpy_rows_avx512::<5>(p, rows, acc),
            96 => axpy_rows_avx512::<6>(p, rows, acc),
            128 => axpy_rows_avx512::<8>(p, rows, acc),
            _ => {
                for (&w, row) in p.iter().zip(rows.chunks_exact(acc.len())) {
                    for (x, v) in acc.iter_mut().zip(row) {
                        *x += w * v;
                    }
                }
            }
        }
    }
}

/// [`Dot::axpy_rows`] for rows of `16 * N` values, the accumulator held in `N` registers while
/// the rows stream by in memory order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_rows_avx512<const N: usize>(p: &[f32], rows: &[f32], acc: &mut [f32]) {
    use std::arch::x86_64::*;
    let width = 16 * N;
    assert!(acc.len() == width && rows.len() >= p.len() * width);
    let mut a: [__m512; N] = std::array::from_fn(|i| _mm512_loadu_ps(acc.as_ptr().add(16 * i)));
    for (j, &w) in p.iter().enumerate() {
        let b = _mm512_set1_ps(w);
        let row = rows.as_ptr().add(j * width);
        for (i, ai) in a.iter_mut().enumerate() {
            *ai = _mm512_fmadd_ps(b, _mm512_loadu_ps(row.add(16 * i)), *ai);
        }
    }
    for (i, ai) in a.iter().enumerate() {
        _mm512_storeu_ps(acc.as_mut_ptr().add(16 * i), *ai);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx512(
    q: &[f32],
    seq: &SeqAttention<'_>,
    kv_head: usize,
    queries: std::ops::Range<usize>,
    k_pool: &[f32],
    v_pool: &[f32],
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    out: SyncPtr<f32>,
    out_stride: usize,
) {
    attend::<Avx512Dot>(
        q, seq, kv_head, queries, k_pool, v_pool, shape, scratch, out, out_stride,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    q: &[f32],
    seq: &SeqAttention<'_>,
    kv_head: usize,
    queries: std::ops::Range<usize>,
    k_pool: &[f32],
    v_pool: &[f32],
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    out: SyncPtr<f32>,
    out_stride: usize,
) {
    attend::<PortableDot>(
        q, seq, kv_head, queries, k_pool, v_pool, shape, scratch, out, out_stride,
    )
}

/// The kernel body, inlined into each feature-specific wrapper.
///
/// # Safety
/// `out` points to the step's output rows and this call owns the rows/columns it writes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend<D: Dot>(
    q: &[f32],
    seq: &SeqAttention<'_>,
    kv_head: usize,
    queries: std::ops::Range<usize>,
    k_pool: &[f32],
    v_pool: &[f32],
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    out: SyncPtr<f32>,
    out_stride: usize,
) {
    let g = shape.geometry;
    let hd = g.head_dim;
    let group = shape.num_heads / g.num_kv_heads;
    let bs = g.block_size;
    // Keys are scored a chunk of whole blocks at a time; the online-softmax rescale then happens
    // once per chunk instead of once per block, and exp runs vectorized over the chunk.
    let chunk_blocks = (KEY_CHUNK / bs).max(1);
    let chunk_keys = chunk_blocks * bs;
    // Scratch: scaled queries [group, hd], accumulators [group, hd], scores [group, chunk_keys],
    // running max [group], running sum [group].
    let need = 2 * group * hd + group * chunk_keys + 2 * group;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qs, rest) = scratch.split_at_mut(group * hd);
    let (acc, rest) = rest.split_at_mut(group * hd);
    let (scores, rest) = rest.split_at_mut(group * chunk_keys);
    let (maxes, sums) = rest.split_at_mut(group);
    let first_pos = seq.context_len - seq.num_queries;

    for qi in queries {
        let row = seq.query_start + qi;
        let n_keys = first_pos + qi + 1;
        for gi in 0..group {
            let h = kv_head * group + gi;
            let src = &q[row * shape.q_row_stride + h * hd..][..hd];
            for (d, s) in qs[gi * hd..(gi + 1) * hd].iter_mut().zip(src) {
                *d = s * shape.scale;
            }
        }
        acc.fill(0.0);
        maxes.fill(f32::NEG_INFINITY);
        sums.fill(0.0);
        let table = &seq.block_table[..n_keys.div_ceil(bs)];
        for (c, blocks) in table.chunks(chunk_blocks).enumerate() {
            let chunk_start = c * chunk_keys;
            let keys_here = chunk_keys.min(n_keys - chunk_start);
            // (block id, slots used) for each block of the chunk.
            let slots_of = |b: usize| bs.min(keys_here - b * bs);
            for gi in 0..group {
                let qv = &qs[gi * hd..(gi + 1) * hd];
                let sc = &mut scores[gi * chunk_keys..gi * chunk_keys + keys_here];
                for (b, &block) in blocks.iter().enumerate() {
                    let base = g.offset(block as usize, kv_head, 0);
                    let keys = &k_pool[base..base + slots_of(b) * hd];
                    for (s, key) in sc[b * bs..].iter_mut().zip(keys.chunks_exact(hd)) {
                        *s = D::dot(qv, key);
                    }
                }
                let chunk_max = max(sc);
                let new_max = maxes[gi].max(chunk_max);
                let a = &mut acc[gi * hd..(gi + 1) * hd];
                if maxes[gi] != new_max && sums[gi] != 0.0 {
                    let correction = (maxes[gi] - new_max).exp();
                    sums[gi] *= correction;
                    a.iter_mut().for_each(|x| *x *= correction);
                }
                maxes[gi] = new_max;
                sums[gi] += exp_shifted_sum(sc, new_max);
                for (b, &block) in blocks.iter().enumerate() {
                    let base = g.offset(block as usize, kv_head, 0);
                    let slots = slots_of(b);
                    D::axpy_rows(
                        &sc[b * bs..b * bs + slots],
                        &v_pool[base..base + slots * hd],
                        a,
                    );
                }
            }
        }
        for gi in 0..group {
            let h = kv_head * group + gi;
            let inv = 1.0 / sums[gi];
            let dst = out.get().add(row * out_stride + h * hd);
            for (d, x) in acc[gi * hd..(gi + 1) * hd].iter().enumerate() {
                *dst.add(d) = x * inv;
            }
        }
    }
}

/// Keys scored per online-softmax update.
const KEY_CHUNK: usize = 256;

#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Replaces each value `s` by `exp(s - shift)` and returns their sum.
#[inline(always)]
fn exp_shifted_sum(values: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact_mut(16);
    for c in &mut chunks {
        for l in 0..16 {
            c[l] = exp_nonpositive(c[l] - shift);
            lanes[l] += c[l];
        }
    }
    let mut total = reduce16(lanes);
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - shift);
        total += *v;
    }
    total
}

/// `eᵡ` for `x ≤ 0` (softmax after max subtraction), within ~2 ulp: range reduction
/// `x = n·ln2 + r` and Cephes' degree-6 polynomial for `eʳ`. Branch-free so it vectorizes.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests;
