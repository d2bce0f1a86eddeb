//! AVX-512 micro-kernels over the packed layout: an `MR × (16·NV)` tile of outputs held in
//! `MR·NV` registers for the whole reduction. Each step loads one cache line per block (16 rows ×
//! one step) and broadcasts one 4-byte activation step per row: an f32 value, or a bf16 pair.
//!
//! For a few activation rows (decode) the `stream_*` kernels instead walk a task's consecutive
//! blocks as one sequential stream, one block at a time with four accumulators per row (so the
//! hardware sees one stream per thread, prefetched 4 KiB ahead): this reads weights faster than
//! several interleaved block streams.
//!
//! Three inner operations share the loops:
//! - f32 weights: `vfmadd` with the broadcast activation;
//! - bf16 weights on CPUs with AVX512_BF16: one `vdpbf16ps` per line (two multiply-adds per lane);
//! - bf16 weights without it: both halves of the pair widened with a shift / mask, then two `vfmadd`.
//!
//! The Q8_0 and Q4_K kernels (AVX512_VNNI) sum byte products per 32-weight group with `vpdpbusd`
//! (Q4_K: each line's low and high nibbles masked out as two operands) and apply the group's
//! scales in f32.

use std::arch::x86_64::*;

use super::{packed, TileArgs};

#[inline(always)]
unsafe fn store_tile<const MR: usize, const NV: usize>(acc: &[[__m512; NV]; MR], t: &TileArgs) {
    for (i, row) in acc.iter().enumerate() {
        let dst = t.out.add(i * t.out_stride);
        for (v, value) in row.iter().enumerate() {
            let cols = t.cols.saturating_sub(v * 16).min(16);
            if cols == 16 {
                _mm512_storeu_ps(dst.add(v * 16), *value);
            } else if cols > 0 {
                _mm512_mask_storeu_ps(dst.add(v * 16), ((1u32 << cols) - 1) as u16, *value);
            }
        }
    }
}

/// A stream kernel's first [`STREAM_PREFETCH_BYTES`] at once; its loop then keeps that far ahead.
#[inline(always)]
unsafe fn prefetch_stream_start(w: *const u8) {
    for offset in (0..STREAM_PREFETCH_BYTES).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(offset) as *const i8);
    }
}

/// A stream kernel's scale record two records ahead of `rec` (4 KiB of Q4_K weights, 6 KiB of
/// Q6_K), like the weights.
#[inline(always)]
unsafe fn prefetch_record_ahead(rec: *const u8, record_bytes: usize) {
    for line in 0..record_bytes / 64 {
        _mm_prefetch::<_MM_HINT_T0>(rec.wrapping_add(2 * record_bytes + line * 64) as *const i8);
    }
}

/// Stores a stream kernel's results for block `b` of its range (16 columns of each row).
#[inline(always)]
unsafe fn store_block<const MR: usize>(acc: &[[__m512; 1]; MR], t: &TileArgs, b: usize) {
    let block = TileArgs {
        out: t.out.add(b * 16),
        cols: t.cols.saturating_sub(b * 16),
        ..*t
    };
    store_tile(acc, &block);
}

macro_rules! tile_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, |$acc:ident, $w:ident, $x:ident| $op:expr) => {
        $(#[$doc])*
        /// # Safety
        /// The CPU has the enabled features; `t` describes valid memory (see [`TileArgs`]).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const MR: usize, const NV: usize>(t: &TileArgs) {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for s in 0..t.steps {
                let mut w = [_mm512_setzero_si512(); NV];
                for (v, wv) in w.iter_mut().enumerate() {
                    let line = t.w.add(v * t.block_stride + s * 64);
                    *wv = _mm512_load_si512(line as *const __m512i);
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let $x = _mm512_set1_epi32((t.x.add(i * t.x_stride + s * 4) as *const i32).read_unaligned());
                    for (a, &$w) in row.iter_mut().zip(w.iter()) {
                        let $acc = *a;
                        *a = $op;
                    }
                }
            }
            store_tile(&acc, t);
        }
    };
}

tile_kernel!(
    /// f32 weights, f32 activations.
    tile_f32,
    "avx512f",
    |acc, w, x| _mm512_fmadd_ps(_mm512_castsi512_ps(w), _mm512_castsi512_ps(x), acc)
);

tile_kernel!(
    /// bf16 weights, bf16 activation pairs, `vdpbf16ps`.
    tile_bf16_dot,
    "avx512f,avx512bf16,avx512bw,avx512vl",
    |acc, w, x| _mm512_dpbf16_ps(
        acc,
        std::mem::transmute::<__m512i, __m512bh>(w),
        std::mem::transmute::<__m512i, __m512bh>(x)
    )
);

tile_kernel!(
    /// bf16 weights and activation pairs widened to f32 (no AVX512_BF16).
    tile_bf16_widen,
    "avx512f",
    |acc, w, x| {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let even = |v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
        let odd = |v| _mm512_castsi512_ps(_mm512_and_si512(v, high));
        _mm512_fmadd_ps(odd(w), odd(x), _mm512_fmadd_ps(even(w), even(x), acc))
    }
);

macro_rules! stream_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, |$acc:ident, $w:ident, $x:ident| $op:expr) => {
        $(#[$doc])*
        /// # Safety
        /// The CPU has the enabled features; `t.w` starts `blocks` consecutive packed blocks,
        /// `t.cols` counts the valid columns from the first, `t.x` holds `MR` rows.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const MR: usize>(t: &TileArgs, blocks: usize) {
            prefetch_stream_start(t.w);
            for b in 0..blocks {
                let w = t.w.add(b * t.block_stride);
                let mut acc = [[_mm512_setzero_ps(); STREAM_UNROLL]; MR];
                let step = |acc: &mut [[__m512; STREAM_UNROLL]; MR], s: usize, u: usize| {
                    let line = w.add(s * 64);
                    _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(STREAM_PREFETCH_BYTES) as *const i8);
                    let $w = _mm512_load_si512(line as *const __m512i);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let $x = _mm512_set1_epi32(
                            (t.x.add(i * t.x_stride + s * 4) as *const i32).read_unaligned(),
                        );
                        let $acc = a[u];
                        a[u] = $op;
                    }
                };
                let mut s = 0;
                while s + STREAM_UNROLL <= t.steps {
                    for u in 0..STREAM_UNROLL {
                        step(&mut acc, s + u, u);
                    }
                    s += STREAM_UNROLL;
                }
                for (u, s) in (s..t.steps).enumerate() {
                    step(&mut acc, s, u);
                }
                let sums: [[__m512; 1]; MR] = std::array::from_fn(|i| {
                    let a = &acc[i];
                    [_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))]
                });
                store_block(&sums, t, b);
            }
        }
    };
}

/// Steps in flight per row in the stream kernels (independent accumulators).
const STREAM_UNROLL: usize = 4;
/// How far ahead the stream kernels prefetch, in bytes (4 KiB measured ~10% faster than 1 KiB
/// on decode; 8–16 KiB the same as 4).
const STREAM_PREFETCH_BYTES: usize = 4096;

stream_kernel!(
    /// f32 weights, a few activation rows, one sequential stream.
    stream_f32,
    "avx512f",
    |acc, w, x| _mm512_fmadd_ps(_mm512_castsi512_ps(w), _mm512_castsi512_ps(x), acc)
);

stream_kernel!(
    /// bf16 weights with `vdpbf16ps`, a few activation rows, one sequential stream.
    stream_bf16_dot,
    "avx512f,avx512bf16,avx512bw,avx512vl",
    |acc, w, x| _mm512_dpbf16_ps(
        acc,
        std::mem::transmute::<__m512i, __m512bh>(w),
        std::mem::transmute::<__m512i, __m512bh>(x)
    )
);

stream_kernel!(
    /// bf16 weights widened to f32, a few activation rows, one sequential stream.
    stream_bf16_widen,
    "avx512f",
    |acc, w, x| {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let even = |v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
        let odd = |v| _mm512_castsi512_ps(_mm512_and_si512(v, high));
        _mm512_fmadd_ps(odd(w), odd(x), _mm512_fmadd_ps(even(w), even(x), acc))
    }
);

/// Steps (cache lines of weights) per Q8_0 group.
const Q8_STEPS: usize = 8;

/// Applies one group's integer dot products: `acc += (dot − 128·Σx) · w_scale · x_scale`.
#[inline(always)]
unsafe fn q8_group_finish(
    acc: __m512,
    dot: __m512i,
    w_scales: __m512,
    t: &TileArgs,
    row: usize,
    g: usize,
) -> __m512 {
    let at = row * t.groups + g;
    let corr = _mm512_set1_epi32(128 * *t.x_sums.add(at));
    let scale = _mm512_mul_ps(w_scales, _mm512_set1_ps(*t.x_scales.add(at)));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dot, corr)), scale, acc)
}

#[inline(always)]
unsafe fn q8_scales(t: &TileArgs, block: usize, g: usize) -> __m512 {
    let p = t.scales.add(block * t.scale_stride + g * 32);
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// Q8_0 weights (`q + 128`, unsigned) against Q8_0 activations (signed): `vpdpbusd` sums four
/// byte products per lane into int32 per group, then the group is scaled into f32 accumulators.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI; `t` describes valid memory, including the Q8_0 fields.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_q8<const MR: usize, const NV: usize>(t: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for g in 0..t.groups {
        let mut dot = [[_mm512_setzero_si512(); NV]; MR];
        for s in 0..Q8_STEPS {
            let w: [__m512i; NV] = std::array::from_fn(|v| {
                _mm512_load_si512(
                    t.w.add(v * t.block_stride + (g * Q8_STEPS + s) * 64) as *const __m512i
                )
            });
            for (i, row) in dot.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(
                    (t.x.add(i * t.x_stride + g * 32 + s * 4) as *const i32).read_unaligned(),
                );
                for (d, &wv) in row.iter_mut().zip(&w) {
                    *d = _mm512_dpbusd_epi32(*d, wv, x);
                }
            }
        }
        let scales: [__m512; NV] = std::array::from_fn(|v| q8_scales(t, v, g));
        for (i, (a, d)) in acc.iter_mut().zip(&dot).enumerate() {
            for v in 0..NV {
                a[v] = q8_group_finish(a[v], d[v], scales[v], t, i, g);
            }
        }
    }
    store_tile(&acc, t);
}

/// The Q8_0 stream kernel (decode): consecutive blocks one at a time, two integer accumulators
/// per row, weights and scales prefetched ahead.
///
/// # Safety
/// As [`tile_q8`]; `t.w` starts `blocks` consecutive blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn stream_q8<const MR: usize>(t: &TileArgs, blocks: usize) {
    prefetch_stream_start(t.w);
    for b in 0..blocks {
        let w = t.w.add(b * t.block_stride);
        let mut acc = [[_mm512_setzero_ps(); 1]; MR];
        for g in 0..t.groups {
            let mut even = [_mm512_setzero_si512(); MR];
            let mut odd = [_mm512_setzero_si512(); MR];
            for s in (0..Q8_STEPS).step_by(2) {
                let line = w.add((g * Q8_STEPS + s) * 64);
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(STREAM_PREFETCH_BYTES) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(
                    line.wrapping_add(STREAM_PREFETCH_BYTES + 64) as *const i8
                );
                let w0 = _mm512_load_si512(line as *const __m512i);
                let w1 = _mm512_load_si512(line.add(64) as *const __m512i);
                for i in 0..MR {
                    let x = t.x.add(i * t.x_stride + g * 32 + s * 4) as *const i32;
                    even[i] =
                        _mm512_dpbusd_epi32(even[i], w0, _mm512_set1_epi32(x.read_unaligned()));
                    odd[i] = _mm512_dpbusd_epi32(
                        odd[i],
                        w1,
                        _mm512_set1_epi32(x.add(1).read_unaligned()),
                    );
                }
            }
            if g % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(
                    t.scales.wrapping_add(b * t.scale_stride + g * 32 + 512) as *const i8,
                );
            }
            let scales = q8_scales(t, b, g);
            for i in 0..MR {
                let dot = _mm512_add_epi32(even[i], odd[i]);
                acc[i][0] = q8_group_finish(acc[i][0], dot, scales, t, i, g);
            }
        }
        store_block(&acc, t, b);
    }
}

/// Steps (cache lines of weights) per Q4_K group of 32.
const Q4K_STEPS: usize = 4;

/// One Q4_K super-block's `d` and `dmin` of the 16 rows, as f32.
#[inline(always)]
unsafe fn q4k_super(rec: *const u8) -> (__m512, __m512) {
    (
        _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
        _mm512_cvtph_ps(_mm256_loadu_si256(
            rec.add(packed::Q4K_DMIN_AT) as *const __m256i
        )),
    )
}

/// Group `j` of a super-block: the 16 rows' effective scale `d·sc` and min `dmin·m`.
#[inline(always)]
unsafe fn q4k_group_scales(rec: *const u8, j: usize, d: __m512, dmin: __m512) -> (__m512, __m512) {
    let byte_lanes = |at: usize| {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
            rec.add(at) as *const __m128i
        )))
    };
    (
        _mm512_mul_ps(d, byte_lanes(packed::Q4K_SCALES_AT + j * 16)),
        _mm512_mul_ps(dmin, byte_lanes(packed::Q4K_MINS_AT + j * 16)),
    )
}

/// Applies one Q4_K group's integer dot product: `acc += x_scale · (scale·dot − min·Σx)`.
#[inline(always)]
unsafe fn q4k_group_finish(
    acc: __m512,
    dot: __m512i,
    (scale, min): (__m512, __m512),
    t: &TileArgs,
    row: usize,
    g: usize,
) -> __m512 {
    let at = row * t.groups + g;
    let x_sum = _mm512_set1_ps(*t.x_sums.add(at) as f32);
    let v = _mm512_fmsub_ps(scale, _mm512_cvtepi32_ps(dot), _mm512_mul_ps(min, x_sum));
    _mm512_fmadd_ps(v, _mm512_set1_ps(*t.x_scales.add(at)), acc)
}

/// A Q4_K line's two `vpdpbusd` operands: low nibbles (`k = 4s..4s+4` of each row) and high
/// nibbles (`k = 16 + 4s..`).
#[inline(always)]
unsafe fn q4k_unpack(line: *const u8) -> (__m512i, __m512i) {
    let w = _mm512_load_si512(line as *const __m512i);
    let low = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(w, low),
        _mm512_and_si512(_mm512_srli_epi16::<4>(w), low),
    )
}

/// Q4_K weights (unsigned nibbles) against Q8_0 activations (signed): `vpdpbusd` per group of 32,
/// then the group's scale and min applied in f32.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI; `t` describes valid memory, including the Q4_K fields.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_q4k<const MR: usize, const NV: usize>(t: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for sb in 0..t.groups / 8 {
        let records: [*const u8; NV] = std::array::from_fn(|v| {
            t.scales
                .add(v * t.scale_stride + sb * packed::Q4K_META_BYTES)
        });
        let supers: [(__m512, __m512); NV] = std::array::from_fn(|v| q4k_super(records[v]));
        for j in 0..8 {
            let g = sb * 8 + j;
            let mut dot = [[_mm512_setzero_si512(); NV]; MR];
            for s in 0..Q4K_STEPS {
                let w: [(__m512i, __m512i); NV] = std::array::from_fn(|v| {
                    q4k_unpack(t.w.add(v * t.block_stride + (g * Q4K_STEPS + s) * 64))
                });
                for (i, row) in dot.iter_mut().enumerate() {
                    let x = t.x.add(i * t.x_stride + g * 32 + s * 4);
                    let lo = _mm512_set1_epi32((x as *const i32).read_unaligned());
                    let hi = _mm512_set1_epi32((x.add(16) as *const i32).read_unaligned());
                    for (d, &(wl, wh)) in row.iter_mut().zip(&w) {
                        *d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*d, wl, lo), wh, hi);
                    }
                }
            }
            let scales: [(__m512, __m512); NV] =
                std::array::from_fn(|v| q4k_group_scales(records[v], j, supers[v].0, supers[v].1));
            for (i, (a, d)) in acc.iter_mut().zip(&dot).enumerate() {
                for v in 0..NV {
                    a[v] = q4k_group_finish(a[v], d[v], scales[v], t, i, g);
                }
            }
        }
    }
    store_tile(&acc, t);
}

/// The Q4_K stream kernel (decode): consecutive blocks one at a time, separate integer
/// accumulators for the low and high nibbles, weights and scale records prefetched ahead.
///
/// # Safety
/// As [`tile_q4k`]; `t.w` starts `blocks` consecutive blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn stream_q4k<const MR: usize>(t: &TileArgs, blocks: usize) {
    prefetch_stream_start(t.w);
    let supers = t.groups / 8;
    for b in 0..blocks {
        let w = t.w.add(b * t.block_stride);
        let mut acc = [[_mm512_setzero_ps(); 1]; MR];
        for sb in 0..supers {
            let rec = t
                .scales
                .add(b * t.scale_stride + sb * packed::Q4K_META_BYTES);
            prefetch_record_ahead(rec, packed::Q4K_META_BYTES);
            let (d, dmin) = q4k_super(rec);
            for j in 0..8 {
                let g = sb * 8 + j;
                let mut lo_dot = [_mm512_setzero_si512(); MR];
                let mut hi_dot = [_mm512_setzero_si512(); MR];
                for s in 0..Q4K_STEPS {
                    let line = w.add((g * Q4K_STEPS + s) * 64);
                    _mm_prefetch::<_MM_HINT_T0>(
                        line.wrapping_add(STREAM_PREFETCH_BYTES) as *const i8
                    );
                    let (wl, wh) = q4k_unpack(line);
                    for i in 0..MR {
                        let x = t.x.add(i * t.x_stride + g * 32 + s * 4);
                        lo_dot[i] = _mm512_dpbusd_epi32(
                            lo_dot[i],
                            wl,
                            _mm512_set1_epi32((x as *const i32).read_unaligned()),
                        );
                        hi_dot[i] = _mm512_dpbusd_epi32(
                            hi_dot[i],
                            wh,
                            _mm512_set1_epi32((x.add(16) as *const i32).read_unaligned()),
                        );
                    }
                }
                let scales = q4k_group_scales(rec, j, d, dmin);
                for i in 0..MR {
                    let dot = _mm512_add_epi32(lo_dot[i], hi_dot[i]);
                    acc[i][0] = q4k_group_finish(acc[i][0], dot, scales, t, i, g);
                }
            }
        }
        store_block(&acc, t, b);
    }
}

/// A Q6_K group's nibble line `s` (0..4) rebuilt into two `vpdpbusd` operands of 6-bit values:
/// the group's first 16 weights (`k = 4s..4s+4` of each row) and its second 16 (`k = 16 + 4s..`),
/// their top two bits taken from high-bit line `s / 2` (see `packed::q6k`).
#[inline(always)]
unsafe fn q6k_unpack(lines: *const u8, s: usize) -> (__m512i, __m512i) {
    let w = _mm512_load_si512(lines.add(s * 64) as *const __m512i);
    let h = _mm512_load_si512(lines.add((4 + s / 2) * 64) as *const __m512i);
    let (low, top) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    // The two bits of each value move to bits 4–5 of its byte; 16-bit shifts carry bits across
    // bytes, which the mask drops.
    let (h_lo, h_hi) = if s.is_multiple_of(2) {
        (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<2>(h))
    } else {
        (h, _mm512_srli_epi16::<2>(h))
    };
    (
        _mm512_or_si512(_mm512_and_si512(w, low), _mm512_and_si512(h_lo, top)),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(w), low),
            _mm512_and_si512(h_hi, top),
        ),
    )
}

/// Group `j` of a Q6_K super-block record: the 16 rows' `d·sc` for its two 16-weight sub-blocks.
#[inline(always)]
unsafe fn q6k_group_scales(rec: *const u8, j: usize, d: __m512) -> (__m512, __m512) {
    let sub = |i: usize| {
        _mm512_mul_ps(
            d,
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                rec.add(packed::Q6K_SCALES_AT + i * 16) as *const __m128i,
            ))),
        )
    };
    (sub(2 * j), sub(2 * j + 1))
}

/// Applies one Q6_K group's integer dot products of its two sub-blocks:
/// `acc += x_scale · Σ d·sc · (dot − 32·Σx)`.
#[inline(always)]
unsafe fn q6k_group_finish(
    acc: __m512,
    (lo, hi): (__m512i, __m512i),
    (s_lo, s_hi): (__m512, __m512),
    t: &TileArgs,
    row: usize,
    g: usize,
) -> __m512 {
    let at = row * t.groups + g;
    let centered = |dot: __m512i, half: usize| {
        let sum = *t.x_sums16.add(2 * at + half);
        _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, _mm512_set1_epi32(32 * sum)))
    };
    let v = _mm512_fmadd_ps(s_lo, centered(lo, 0), _mm512_mul_ps(s_hi, centered(hi, 1)));
    _mm512_fmadd_ps(v, _mm512_set1_ps(*t.x_scales.add(at)), acc)
}

/// Rebuilds the 6-bit values of `blocks` consecutive Q6_K blocks (from `w`, `block_stride` apart)
/// into `dst` as plain bytes in Q8_0's line order (8 lines per group: the first 16 weights in lines
/// 0–3, the second 16 in lines 4–7), so that many row tiles can use them without unpacking each
/// line again ([`tile_q6k_unpacked`]).
///
/// # Safety
/// The CPU has AVX-512 F/BW; `w` holds the blocks, `dst` has room for
/// `blocks * groups * 8` lines.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn unpack_q6k(
    w: *const u8,
    block_stride: usize,
    blocks: usize,
    groups: usize,
    dst: *mut u8,
) {
    for b in 0..blocks {
        for g in 0..groups {
            let lines = w.add(b * block_stride + g * packed::Q6K_STEPS * 64);
            let out = dst.add((b * groups + g) * Q8_STEPS * 64);
            for s in 0..4 {
                let (lo, hi) = q6k_unpack(lines, s);
                _mm512_storeu_si512(out.add(s * 64) as *mut __m512i, lo);
                _mm512_storeu_si512(out.add((4 + s) * 64) as *mut __m512i, hi);
            }
        }
    }
}

/// Q6_K weights rebuilt by [`unpack_q6k`] (`t.w`, `t.block_stride`; scale records as stored)
/// against Q8_0 activations: per group and 16-weight half one `vpdpbusd` chain per (row, block),
/// scaled by the half's `d·sc` — the Q8_0 tile's work, with its 6 × 2 shape.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI; `t` describes valid memory, `t.w` unpacked lines.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_q6k_unpacked<const MR: usize, const NV: usize>(t: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for sb in 0..t.groups / 8 {
        let records: [*const u8; NV] = std::array::from_fn(|v| {
            t.scales
                .add(v * t.scale_stride + sb * packed::Q6K_META_BYTES)
        });
        let d: [__m512; NV] = std::array::from_fn(|v| {
            _mm512_cvtph_ps(_mm256_loadu_si256(records[v] as *const __m256i))
        });
        for j in 0..8 {
            let g = sb * 8 + j;
            let scales: [(__m512, __m512); NV] =
                std::array::from_fn(|v| q6k_group_scales(records[v], j, d[v]));
            for half in 0..2 {
                let mut dot = [[_mm512_setzero_si512(); NV]; MR];
                for s in half * 4..half * 4 + 4 {
                    let w: [__m512i; NV] = std::array::from_fn(|v| {
                        _mm512_loadu_si512(
                            t.w.add(v * t.block_stride + (g * Q8_STEPS + s) * 64) as *const __m512i
                        )
                    });
                    for (i, row) in dot.iter_mut().enumerate() {
                        let x = _mm512_set1_epi32(
                            (t.x.add(i * t.x_stride + g * 32 + s * 4) as *const i32)
                                .read_unaligned(),
                        );
                        for (d, &wv) in row.iter_mut().zip(&w) {
                            *d = _mm512_dpbusd_epi32(*d, wv, x);
                        }
                    }
                }
                for (i, (a, dot)) in acc.iter_mut().zip(&dot).enumerate() {
                    let at = 2 * (i * t.groups + g) + half;
                    let centered = _mm512_set1_epi32(32 * *t.x_sums16.add(at));
                    let x_scale = _mm512_set1_ps(*t.x_scales.add(i * t.groups + g));
                    for v in 0..NV {
                        let scale = if half == 0 { scales[v].0 } else { scales[v].1 };
                        let value = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[v], centered));
                        a[v] = _mm512_fmadd_ps(value, _mm512_mul_ps(scale, x_scale), a[v]);
                    }
                }
            }
        }
    }
    store_tile(&acc, t);
}

/// The Q6_K stream kernel (decode): consecutive blocks one at a time, one integer accumulator
/// per sub-block and row, weights and scale records prefetched ahead.
///
/// # Safety
/// As [`tile_q6k`]; `t.w` starts `blocks` consecutive blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn stream_q6k<const MR: usize>(t: &TileArgs, blocks: usize) {
    prefetch_stream_start(t.w);
    let supers = t.groups / 8;
    for b in 0..blocks {
        let w = t.w.add(b * t.block_stride);
        let mut acc = [[_mm512_setzero_ps(); 1]; MR];
        for sb in 0..supers {
            let rec = t
                .scales
                .add(b * t.scale_stride + sb * packed::Q6K_META_BYTES);
            prefetch_record_ahead(rec, packed::Q6K_META_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i));
            for j in 0..8 {
                let g = sb * 8 + j;
                let lines = w.add(g * packed::Q6K_STEPS * 64);
                for line in 0..packed::Q6K_STEPS {
                    _mm_prefetch::<_MM_HINT_T0>(
                        lines.wrapping_add(STREAM_PREFETCH_BYTES + line * 64) as *const i8,
                    );
                }
                let mut lo_dot = [_mm512_setzero_si512(); MR];
                let mut hi_dot = [_mm512_setzero_si512(); MR];
                for s in 0..4 {
                    let (wl, wh) = q6k_unpack(lines, s);
                    for i in 0..MR {
                        let x = t.x.add(i * t.x_stride + g * 32 + s * 4);
                        lo_dot[i] = _mm512_dpbusd_epi32(
                            lo_dot[i],
                            wl,
                            _mm512_set1_epi32((x as *const i32).read_unaligned()),
                        );
                        hi_dot[i] = _mm512_dpbusd_epi32(
                            hi_dot[i],
                            wh,
                            _mm512_set1_epi32((x.add(16) as *const i32).read_unaligned()),
                        );
                    }
                }
                let scales = q6k_group_scales(rec, j, d);
                for i in 0..MR {
                    acc[i][0] =
                        q6k_group_finish(acc[i][0], (lo_dot[i], hi_dot[i]), scales, t, i, g);
                }
            }
        }
        store_block(&acc, t, b);
    }
}

/// Quantizes the whole 32-value groups of `src` to Q8_0 (scale `max|x| / 127` rounded through
/// f16, values rounded to nearest-even and clamped to ±127), recording each group's scale and sum
/// of values; returns how many groups it did (the caller does a partial last group).
///
/// # Safety
/// The CPU has AVX-512 F and BW; `q`, `scales` and `sums` have room for the groups.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_groups_q8(
    src: &[f32],
    q: &mut [i8],
    scales: &mut [f32],
    sums: &mut [i32],
) -> usize {
    let groups = (src.len() / 32).min(scales.len());
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for g in 0..groups {
        let a = _mm512_loadu_ps(src.as_ptr().add(g * 32));
        let b = _mm512_loadu_ps(src.as_ptr().add(g * 32 + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let qa = _mm512_max_epi32(
            lo,
            _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(a, inv))),
        );
        let qb = _mm512_max_epi32(
            lo,
            _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(b, inv))),
        );
        let dst = q.as_mut_ptr().add(g * 32);
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(qb));
        scales[g] = d;
        sums[g] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    }
    groups
}

/// Rounds f32 values to bf16 (nearest even), 16 at a time.
///
/// # Safety
/// The CPU has AVX-512 F and BW; `src` and `dst` have the same length.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    let n16 = src.len() / 16 * 16;
    let one = _mm512_set1_epi32(1);
    let bias = _mm512_set1_epi32(0x7fff);
    let quiet = _mm512_set1_epi32(0x0040_0000);
    for i in (0..n16).step_by(16) {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(bias, lsb));
        // NaN stays NaN (quieted) instead of rounding into infinity.
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let r = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, quiet));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(r)),
        );
    }
    super::portable::round_to_bf16(&src[n16..], &mut dst[n16..]);
}
