//! AVX-512 VNNI kernels of the k-quants: Q4_K (nibbles unpacked into two `vpdpbusd` operands per
//! line, a scale and min per 32 weights) and Q6_K (nibble lines completed with two high bits
//! from a high-bit line, a scale per 16 weights; prefill tiles on a per-panel rebuilt byte copy).
//! Activations are Q8_0 per 32, as for the Q8_0 kernels in the parent module.

use std::arch::x86_64::*;

use super::super::{packed, TileArgs};
use super::{
    prefetch_record_ahead, prefetch_stream_start, store_block, store_tile, Q8_STEPS,
    STREAM_PREFETCH_BYTES,
};

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
pub(in crate::ops::gemm) unsafe fn tile_q4k<const MR: usize, const NV: usize>(t: &TileArgs) {
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
pub(in crate::ops::gemm) unsafe fn unpack_q6k(
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
pub(in crate::ops::gemm) unsafe fn tile_q6k_unpacked<const MR: usize, const NV: usize>(
    t: &TileArgs,
) {
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

/// What a k-quant stream kernel needs of its format: lines per 32-weight group, the scale record,
/// a line's two `vpdpbusd` operands (the group's first and second 16 weights of each row) and how
/// a group's two dot products become f32.
trait StreamFormat {
    /// Lines per 32-weight group (all prefetched ahead).
    const STEPS: usize;
    /// Bytes of one (block, super-block) scale record.
    const META_BYTES: usize;
    /// A super-block's record as read once for its 8 groups.
    type Super: Copy;
    /// One group's scales.
    type Group: Copy;
    unsafe fn super_scales(rec: *const u8) -> Self::Super;
    unsafe fn group_scales(rec: *const u8, j: usize, sup: Self::Super) -> Self::Group;
    /// Operands of nibble line `s` (0..4) of the group whose lines start at `lines`.
    unsafe fn unpack(lines: *const u8, s: usize) -> (__m512i, __m512i);
    unsafe fn finish(
        acc: __m512,
        dots: (__m512i, __m512i),
        scales: Self::Group,
        t: &TileArgs,
        row: usize,
        g: usize,
    ) -> __m512;
}

struct Q4K;

impl StreamFormat for Q4K {
    const STEPS: usize = Q4K_STEPS;
    const META_BYTES: usize = packed::Q4K_META_BYTES;
    type Super = (__m512, __m512);
    type Group = (__m512, __m512);
    #[inline(always)]
    unsafe fn super_scales(rec: *const u8) -> Self::Super {
        q4k_super(rec)
    }
    #[inline(always)]
    unsafe fn group_scales(rec: *const u8, j: usize, (d, dmin): Self::Super) -> Self::Group {
        q4k_group_scales(rec, j, d, dmin)
    }
    #[inline(always)]
    unsafe fn unpack(lines: *const u8, s: usize) -> (__m512i, __m512i) {
        q4k_unpack(lines.add(s * 64))
    }
    #[inline(always)]
    unsafe fn finish(
        acc: __m512,
        (lo, hi): (__m512i, __m512i),
        scales: Self::Group,
        t: &TileArgs,
        row: usize,
        g: usize,
    ) -> __m512 {
        // One scale and min per 32 weights: the halves add up before scaling.
        q4k_group_finish(acc, _mm512_add_epi32(lo, hi), scales, t, row, g)
    }
}

struct Q6K;

impl StreamFormat for Q6K {
    const STEPS: usize = packed::Q6K_STEPS;
    const META_BYTES: usize = packed::Q6K_META_BYTES;
    type Super = __m512;
    type Group = (__m512, __m512);
    #[inline(always)]
    unsafe fn super_scales(rec: *const u8) -> Self::Super {
        _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i))
    }
    #[inline(always)]
    unsafe fn group_scales(rec: *const u8, j: usize, d: Self::Super) -> Self::Group {
        q6k_group_scales(rec, j, d)
    }
    #[inline(always)]
    unsafe fn unpack(lines: *const u8, s: usize) -> (__m512i, __m512i) {
        q6k_unpack(lines, s)
    }
    #[inline(always)]
    unsafe fn finish(
        acc: __m512,
        dots: (__m512i, __m512i),
        scales: Self::Group,
        t: &TileArgs,
        row: usize,
        g: usize,
    ) -> __m512 {
        q6k_group_finish(acc, dots, scales, t, row, g)
    }
}

/// The k-quant stream kernel body (decode): consecutive blocks one at a time, one integer
/// accumulator per row for each half of a group, weights and scale records prefetched ahead.
#[inline(always)]
unsafe fn stream<F: StreamFormat, const MR: usize>(t: &TileArgs, blocks: usize) {
    prefetch_stream_start(t.w);
    let supers = t.groups / 8;
    for b in 0..blocks {
        let w = t.w.add(b * t.block_stride);
        let mut acc = [[_mm512_setzero_ps(); 1]; MR];
        for sb in 0..supers {
            let rec = t.scales.add(b * t.scale_stride + sb * F::META_BYTES);
            prefetch_record_ahead(rec, F::META_BYTES);
            let sup = F::super_scales(rec);
            for j in 0..8 {
                let g = sb * 8 + j;
                let lines = w.add(g * F::STEPS * 64);
                for line in 0..F::STEPS {
                    _mm_prefetch::<_MM_HINT_T0>(
                        lines.wrapping_add(STREAM_PREFETCH_BYTES + line * 64) as *const i8,
                    );
                }
                let mut lo_dot = [_mm512_setzero_si512(); MR];
                let mut hi_dot = [_mm512_setzero_si512(); MR];
                for s in 0..4 {
                    let (wl, wh) = F::unpack(lines, s);
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
                let scales = F::group_scales(rec, j, sup);
                for i in 0..MR {
                    acc[i][0] = F::finish(acc[i][0], (lo_dot[i], hi_dot[i]), scales, t, i, g);
                }
            }
        }
        store_block(&acc, t, b);
    }
}

/// The Q4_K stream kernel (decode), see [`stream`].
///
/// # Safety
/// As [`tile_q4k`]; `t.w` starts `blocks` consecutive blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(in crate::ops::gemm) unsafe fn stream_q4k<const MR: usize>(t: &TileArgs, blocks: usize) {
    stream::<Q4K, MR>(t, blocks)
}

/// The Q6_K stream kernel (decode), see [`stream`].
///
/// # Safety
/// As [`tile_q6k_unpacked`] for the scale records and activations; `t.w` starts `blocks`
/// consecutive packed (not unpacked) Q6_K blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(in crate::ops::gemm) unsafe fn stream_q6k<const MR: usize>(t: &TileArgs, blocks: usize) {
    stream::<Q6K, MR>(t, blocks)
}
