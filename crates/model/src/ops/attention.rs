//! Paged attention on CPU: causal, grouped-query, variable length, one call per layer per step.
//!
//! One call serves a batch mixing prefill chunks (which may start mid-prompt, after earlier chunks'
//! K/V are cached) and single-token decodes. Every sequence's K/V — including the tokens of this
//! step, already written at their slots — is read through its block table.
//!
//! Work is split into items of (sequence, KV head, tile of ≤ 16 queries, key range) run on the
//! kernel pool. An item treats the query heads sharing its KV head × its queries as one set of
//! rows, so every K/V block is loaded once per item, and works through its keys a chunk at a time:
//! scores for the chunk (`q · Kᵀ`, dimension-major K tiles, no horizontal sums), causal mask and
//! online softmax per row (running max, running sum, rescaled accumulator), then `p · V`. When a
//! call is decodes only (or has too few items for the threads), the items' keys are cut into one
//! task per thread and the partial softmax states of an item cut in two are merged afterwards
//! (flash-decoding).
//!
//! The inner tiles are AVX-512 register tiles where the CPU has it and `head_dim` is a multiple of
//! 16, and portable loops otherwise; both read K/V as stored (f32, bf16, f16, int8) and widen in
//! registers. int8 keys' scales multiply the scores; values' scales fold into the probabilities.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod element;
mod plan;
mod portable;

use std::cell::RefCell;

use element::KvElement;
use plan::{combine, partial_len, plan_items, Item, Plan, QUERY_TILE};

use super::pool;
use super::pool::SyncPtr;
use super::simd::{prefetch_l2, reduce16};
use crate::kv_cache::{KvGeometry, KvValues, LayerKv};

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

/// Keys scored per online-softmax update.
const KEY_CHUNK: usize = 256;
/// How many blocks ahead the K and V passes prefetch tiles (covers the memory latency).
const PREFETCH_BLOCKS: usize = 4;

/// A tile to prefetch while a tile kernel runs: the AVX-512 kernels ask for a few of its lines
/// per loop step (all prefetches of a whole tile issued at once stalled the thread on its miss
/// buffers: spread, the 135M Q8_0 decode step took 0.96–0.97× the time, two CCDs 0.94×), the
/// portable ones for all of it first.
#[derive(Clone, Copy)]
pub(super) struct Spread {
    base: *const i8,
    lines: usize,
}

impl Spread {
    const NONE: Spread = Spread {
        base: std::ptr::null(),
        lines: 0,
    };

    fn of<E>(tile: &[E]) -> Self {
        Spread {
            base: tile.as_ptr() as *const i8,
            lines: std::mem::size_of_val(tile).div_ceil(64),
        }
    }

    /// Step `i` of `n`: the lines of the `i`-th of `n` equal parts (a hint: never faults).
    #[inline(always)]
    pub(super) fn step(self, i: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        for line in i * self.lines / n..(i + 1) * self.lines / n {
            // SAFETY: prefetching is a hint and never faults (SSE is baseline on x86-64).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.base.wrapping_add(line * 64),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (self.base, self.lines, i, n);
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's items, split groups and partials, reused from call to call.
    static PLAN: RefCell<Plan> = RefCell::new(Plan::default());
}

/// Which inner tiles run (tests force each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn best_kernels(head_dim: usize) -> Kernels {
    #[cfg(target_arch = "x86_64")]
    if avx512::supports(head_dim) {
        return Kernels::Avx512;
    }
    let _ = head_dim;
    Kernels::Portable
}

/// `out[t, h*head_dim..]` = softmax(q·Kᵀ·scale, causal) · V for every query row of every sequence.
///
/// `layer` holds one layer's K/V pools; `out` has `num_heads * head_dim` values per query row.
pub fn paged_attention(
    q: &[f32],
    seqs: &[SeqAttention<'_>],
    layer: &LayerKv,
    shape: &AttentionShape,
    out: &mut [f32],
) {
    let kernels = best_kernels(shape.geometry.head_dim);
    let threads = pool::global().threads();
    paged_attention_with(kernels, threads, q, seqs, layer, shape, out)
}

/// One layer's pools in their storage type, with the int8 scales (empty otherwise).
#[derive(Clone, Copy)]
struct Pools<'a, E> {
    k: &'a [E],
    v: &'a [E],
    k_scales: &'a [f32],
    v_scales: &'a [f32],
}

/// [`paged_attention`] with chosen tiles, planning key splits for `threads` threads.
pub(crate) fn paged_attention_with(
    kernels: Kernels,
    threads: usize,
    q: &[f32],
    seqs: &[SeqAttention<'_>],
    layer: &LayerKv,
    shape: &AttentionShape,
    out: &mut [f32],
) {
    let (k_scales, v_scales) = (&layer.k_scales[..], &layer.v_scales[..]);
    macro_rules! typed {
        ($k:expr, $v:expr) => {
            run(
                kernels,
                threads,
                q,
                seqs,
                Pools {
                    k: $k,
                    v: $v,
                    k_scales,
                    v_scales,
                },
                shape,
                out,
            )
        };
    }
    match (&layer.k, &layer.v) {
        (KvValues::F32(k), KvValues::F32(v)) => typed!(k, v),
        (KvValues::Bf16(k), KvValues::Bf16(v)) => typed!(k, v),
        (KvValues::F16(k), KvValues::F16(v)) => typed!(k, v),
        (KvValues::Int8(k), KvValues::Int8(v)) => typed!(k, v),
        _ => unreachable!("invariant: K and V pools share one dtype"),
    }
}

fn run<E: KvElement>(
    kernels: Kernels,
    threads: usize,
    q: &[f32],
    seqs: &[SeqAttention<'_>],
    pools: Pools<'_, E>,
    shape: &AttentionShape,
    out: &mut [f32],
) {
    let g = shape.geometry;
    let group = shape.num_heads / g.num_kv_heads;
    let out_stride = shape.num_heads * g.head_dim;
    PLAN.with(|plan| {
        let plan = &mut *plan.borrow_mut();
        plan_items(plan, seqs, g, threads);
        let width = partial_len(QUERY_TILE * group, g.head_dim);
        let num_parts = plan.items.iter().filter(|it| it.split.is_some()).count();
        plan.partials.resize(num_parts * width, 0.0);

        let out_ptr = SyncPtr(out.as_mut_ptr());
        let partials = SyncPtr(plan.partials.as_mut_ptr());
        let items = &plan.items;
        let run = |i: usize| {
            let item = items[i];
            let sink = match item.split {
                None => Sink::Output(out_ptr, out_stride),
                Some(slot) => Sink::Partial(SyncPtr(partials.get().wrapping_add(slot * width))),
            };
            SCRATCH.with(|scratch| {
                // SAFETY: an item alone writes its queries' rows at its KV head's columns, or its
                // own slot of the partials buffer.
                unsafe {
                    attend_with(
                        kernels,
                        q,
                        &seqs[item.seq],
                        &item,
                        pools,
                        shape,
                        &mut scratch.borrow_mut(),
                        sink,
                    )
                }
            });
        };
        let work: usize = seqs
            .iter()
            .map(|s| s.num_queries * s.context_len)
            .sum::<usize>()
            * out_stride;
        // Small batches (tiny models, very short decodes) are cheaper without a fork. Measured on
        // the 135M shape (`attention_speed`, one sequence): at 150 and 300 tokens of context the
        // split items take 5 and 8–10 µs against 7 and 14 µs serial (the old bound, 200_000,
        // kept contexts up to 347 tokens serial).
        if work < 50_000 || items.len() == 1 || pool::global().threads() == 1 {
            (0..items.len()).for_each(run);
        } else if plan.tasks.is_empty() {
            pool::global().parallel_for(items.len(), &run);
        } else {
            let tasks = &plan.tasks;
            pool::global().parallel_for(tasks.len(), &|t| tasks[t].clone().for_each(run));
        }
        for (item, parts) in &plan.splits {
            let seq = &seqs[item.seq];
            combine(
                item,
                seq,
                &items[parts.clone()],
                &plan.partials,
                width,
                shape,
                out,
            );
        }
    });
}

/// Where an item's results go.
#[derive(Clone, Copy)]
enum Sink {
    /// Final, normalized rows of the step's output (row stride in floats).
    Output(SyncPtr<f32>, usize),
    /// A partial state, see [`partial_len`].
    Partial(SyncPtr<f32>),
}

/// The two tile operations of an item; see `portable` for their contracts.
trait Tiles {
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores<E: KvElement>(
        qs: &[f32],
        rows: usize,
        hd: usize,
        k_tile: &[E],
        block_size: usize,
        slots: usize,
        dst: *mut f32,
        dst_stride: usize,
        ahead: Spread,
    );
    #[allow(clippy::too_many_arguments)]
    unsafe fn accumulate<E: KvElement>(
        p: *const f32,
        p_stride: usize,
        rows: usize,
        v_tile: &[E],
        slots: usize,
        hd: usize,
        acc: &mut [f32],
        ahead: Spread,
    );
}

struct PortableTiles;

impl Tiles for PortableTiles {
    #[inline(always)]
    unsafe fn scores<E: KvElement>(
        qs: &[f32],
        rows: usize,
        hd: usize,
        k_tile: &[E],
        block_size: usize,
        slots: usize,
        dst: *mut f32,
        dst_stride: usize,
        ahead: Spread,
    ) {
        ahead.step(0, 1);
        portable::scores(qs, rows, hd, k_tile, block_size, slots, dst, dst_stride)
    }
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn accumulate<E: KvElement>(
        p: *const f32,
        p_stride: usize,
        rows: usize,
        v_tile: &[E],
        slots: usize,
        hd: usize,
        acc: &mut [f32],
        ahead: Spread,
    ) {
        ahead.step(0, 1);
        portable::accumulate(p, p_stride, rows, v_tile, slots, hd, acc)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512Tiles;

#[cfg(target_arch = "x86_64")]
impl Tiles for Avx512Tiles {
    #[inline(always)]
    unsafe fn scores<E: KvElement>(
        qs: &[f32],
        rows: usize,
        hd: usize,
        k_tile: &[E],
        block_size: usize,
        slots: usize,
        dst: *mut f32,
        dst_stride: usize,
        ahead: Spread,
    ) {
        avx512::scores(
            qs, rows, hd, k_tile, block_size, slots, dst, dst_stride, ahead,
        )
    }
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn accumulate<E: KvElement>(
        p: *const f32,
        p_stride: usize,
        rows: usize,
        v_tile: &[E],
        slots: usize,
        hd: usize,
        acc: &mut [f32],
        ahead: Spread,
    ) {
        avx512::accumulate(p, p_stride, rows, v_tile, slots, hd, acc, ahead)
    }
}

/// Runs one item with the chosen tiles. The item's own loops (softmax, masking, rescaling) are
/// compiled for the same feature level as the tiles, so they vectorize too.
///
/// # Safety
/// As [`attend`]; the CPU supports `kernels`.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_with<E: KvElement>(
    kernels: Kernels,
    q: &[f32],
    seq: &SeqAttention<'_>,
    item: &Item,
    pools: Pools<'_, E>,
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    sink: Sink,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx512_item<E: KvElement>(
            q: &[f32],
            seq: &SeqAttention<'_>,
            item: &Item,
            pools: Pools<'_, E>,
            shape: &AttentionShape,
            scratch: &mut Vec<f32>,
            sink: Sink,
        ) {
            attend::<Avx512Tiles, E>(q, seq, item, pools, shape, scratch, sink)
        }
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2_item<E: KvElement>(
            q: &[f32],
            seq: &SeqAttention<'_>,
            item: &Item,
            pools: Pools<'_, E>,
            shape: &AttentionShape,
            scratch: &mut Vec<f32>,
            sink: Sink,
        ) {
            attend::<PortableTiles, E>(q, seq, item, pools, shape, scratch, sink)
        }
        if kernels == Kernels::Avx512 {
            return avx512_item(q, seq, item, pools, shape, scratch, sink);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return avx2_item(q, seq, item, pools, shape, scratch, sink);
        }
    }
    let _ = kernels;
    attend::<PortableTiles, E>(q, seq, item, pools, shape, scratch, sink)
}

/// Runs one item: scores, causal mask and online softmax, `p · V`, written to its sink.
///
/// # Safety
/// The sink's memory is valid and written by this item alone.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend<T: Tiles, E: KvElement>(
    q: &[f32],
    seq: &SeqAttention<'_>,
    item: &Item,
    pools: Pools<'_, E>,
    shape: &AttentionShape,
    scratch: &mut Vec<f32>,
    sink: Sink,
) {
    let g = shape.geometry;
    let (hd, bs) = (g.head_dim, g.block_size);
    let group = shape.num_heads / g.num_kv_heads;
    let (t0, t1) = item.queries;
    let rows = (t1 - t0) * group;
    let chunk_keys = (KEY_CHUNK / bs).max(1) * bs;
    // Scratch: scaled queries [rows, hd], accumulators [rows, hd], scores [rows, chunk_keys],
    // running max [rows], running sum [rows].
    let need = 2 * rows * hd + rows * chunk_keys + 2 * rows;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qs, rest) = scratch.split_at_mut(rows * hd);
    let (acc, rest) = rest.split_at_mut(rows * hd);
    let (scores, rest) = rest.split_at_mut(rows * chunk_keys);
    let (maxes, rest) = rest.split_at_mut(rows);
    let sums = &mut rest[..rows];
    let first_pos = seq.context_len - seq.num_queries;
    // Row r is query t0 + r / group of head kv_head * group + r % group.
    let keys_of_row = |r: usize| first_pos + t0 + r / group + 1;
    for r in 0..rows {
        let h = item.kv_head * group + r % group;
        let src = &q[(seq.query_start + t0 + r / group) * shape.q_row_stride + h * hd..][..hd];
        for (d, s) in qs[r * hd..(r + 1) * hd].iter_mut().zip(src) {
            *d = s * shape.scale;
        }
    }
    acc.fill(0.0);
    maxes.fill(f32::NEG_INFINITY);
    sums.fill(0.0);

    let (k_lo, k_hi) = item.keys;
    let mut c0 = k_lo;
    while c0 < k_hi {
        let keys_here = chunk_keys.min(k_hi - c0);
        let blocks = &seq.block_table[c0 / bs..(c0 + keys_here).div_ceil(bs)];
        // Every tile is prefetched PREFETCH_BLOCKS tiles ahead of its pass, in the order the
        // passes read them: K tiles, then (near the K pass's end) the chunk's first V tiles, then
        // (near the V pass's end) the next chunk's first K tiles. The hardware prefetchers alone,
        // even over a sequence's adjacent tiles, left the K/V reads bound by memory latency.
        let tile_of = |block: u32| g.tile(block as usize, item.kv_head);
        let tile_len = bs * hd;
        let ahead = PREFETCH_BLOCKS.min(blocks.len());
        if c0 == k_lo {
            // The item's first tiles into L2 at once (many misses in flight).
            for &block in &blocks[..ahead] {
                prefetch_l2(&pools.k[tile_of(block)..][..tile_len]);
                prefetch_l2(&pools.v[tile_of(block)..][..tile_len]);
            }
        }
        for (b, &block) in blocks.iter().enumerate() {
            let next = match blocks.get(b + ahead) {
                Some(&next) => Spread::of(&pools.k[tile_of(next)..][..tile_len]),
                None => {
                    Spread::of(&pools.v[tile_of(blocks[b + ahead - blocks.len()])..][..tile_len])
                }
            };
            let slots = bs.min(keys_here - b * bs);
            let tile = g.tile(block as usize, item.kv_head);
            let dst = scores.as_mut_ptr().add(b * bs);
            T::scores(
                qs,
                rows,
                hd,
                &pools.k[tile..],
                bs,
                slots,
                dst,
                chunk_keys,
                next,
            );
            if E::SCALED {
                let key_scales = &pools.k_scales[g.scale_tile(block as usize, item.kv_head)..];
                for r in 0..rows {
                    let row = &mut scores[r * chunk_keys + b * bs..][..slots];
                    row.iter_mut().zip(key_scales).for_each(|(s, k)| *s *= k);
                }
            }
        }
        for r in 0..rows {
            let row = &mut scores[r * chunk_keys..r * chunk_keys + keys_here];
            let valid = keys_of_row(r).saturating_sub(c0).min(keys_here);
            let (live, masked) = row.split_at_mut(valid);
            masked.fill(0.0);
            if valid == 0 {
                continue;
            }
            let new_max = maxes[r].max(max(live));
            if maxes[r] != new_max && sums[r] != 0.0 {
                let correction = exp_nonpositive(maxes[r] - new_max);
                sums[r] *= correction;
                acc[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= correction);
            }
            maxes[r] = new_max;
            sums[r] += exp_shifted_sum(live, new_max);
        }
        // The next chunk's first K tiles are fetched during this chunk's last V tiles.
        let next_chunk = &seq.block_table[((c0 + keys_here) / bs).min(seq.block_table.len())..];
        let next_chunk = &next_chunk[..next_chunk
            .len()
            .min(k_hi.saturating_sub(c0 + keys_here).div_ceil(bs))];
        for (b, &block) in blocks.iter().enumerate() {
            let next = match blocks.get(b + ahead) {
                Some(&next) => Spread::of(&pools.v[tile_of(next)..][..tile_len]),
                None => match next_chunk.get(b + ahead - blocks.len()) {
                    Some(&next) => Spread::of(&pools.k[tile_of(next)..][..tile_len]),
                    None => Spread::NONE,
                },
            };
            let slots = bs.min(keys_here - b * bs);
            let tile = g.tile(block as usize, item.kv_head);
            if E::SCALED {
                // The sums are taken: fold each value row's scale into its probability.
                let value_scales = &pools.v_scales[g.scale_tile(block as usize, item.kv_head)..];
                for r in 0..rows {
                    let row = &mut scores[r * chunk_keys + b * bs..][..slots];
                    row.iter_mut().zip(value_scales).for_each(|(p, v)| *p *= v);
                }
            }
            let p = scores.as_ptr().add(b * bs);
            T::accumulate(p, chunk_keys, rows, &pools.v[tile..], slots, hd, acc, next);
        }
        c0 += keys_here;
    }

    match sink {
        Sink::Output(out, out_stride) => {
            for r in 0..rows {
                let h = item.kv_head * group + r % group;
                let inv = 1.0 / sums[r];
                let dst = out
                    .get()
                    .add((seq.query_start + t0 + r / group) * out_stride + h * hd);
                for (d, x) in acc[r * hd..(r + 1) * hd].iter().enumerate() {
                    *dst.add(d) = x * inv;
                }
            }
        }
        Sink::Partial(buf) => {
            let buf = std::slice::from_raw_parts_mut(buf.get(), partial_len(rows, hd));
            buf[..rows * hd].copy_from_slice(acc);
            buf[rows * hd..rows * hd + rows].copy_from_slice(maxes);
            buf[rows * hd + rows..].copy_from_slice(sums);
        }
    }
}

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
///
/// `2ⁿ` is built from `n`'s bits without a float-to-int cast: Rust's `as i32` saturates, which
/// LLVM turned into 16 scalar conversions per vector (traced: most of decode attention's softmax).
/// Adding `1.5·2²³` puts the integer `n` (here −126..=0) in the low mantissa bits.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// `1.5·2²³`: its bits are `0x4B40_0000`, and adding a small integer adds it to them.
    const MAGIC: f32 = 12_582_912.0;
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
    let exponent = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits() - 127);
    e * f32::from_bits(exponent << 23)
}

#[cfg(test)]
mod tests;
