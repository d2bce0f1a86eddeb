//! AVX-512 micro-kernels over the packed layout: an `MR × (16·NV)` tile of outputs held in
//! `MR·NV` registers for the whole reduction. Each step loads one cache line per block (16 rows ×
//! one step) and broadcasts one 4-byte activation step per row: an f32 value, or a bf16 pair.
//!
//! For a few activation rows (decode) the `stream_*` kernels instead walk a task's consecutive
//! blocks as one sequential stream, one block at a time with four accumulators per row (so the
//! hardware sees one stream per thread): this reads weights faster than several interleaved block
//! streams. The f32/bf16 and k-quant streams also prefetch 4 KiB ahead; so does the Q8_0 stream
//! (weights and scales), except on AMD family 0x19, where the hardware prefetchers alone read its
//! two streams faster (see [`stream_q8`]). The f32/bf16 and Q8_0 tiles prefetch the next panel a
//! task will read, if any, into L2 (`TileArgs::next_panel`).
//!
//! Three inner operations share the loops:
//! - f32 weights: `vfmadd` with the broadcast activation;
//! - bf16 weights on CPUs with AVX512_BF16: one `vdpbf16ps` per line (two multiply-adds per lane);
//! - bf16 weights without it: both halves of the pair widened with a shift / mask, then two `vfmadd`.
//!
//! The Q8_0 kernels (AVX512_VNNI) sum byte products per 32-weight group with `vpdpbusd` and
//! apply the group's scales in f32; the Q4_K and Q6_K ones, in [`kquants`], do the same on
//! unpacked nibbles.

mod kquants;

use std::arch::x86_64::*;

use super::TileArgs;

pub(super) use kquants::{stream_q4k, stream_q6k, tile_q4k, tile_q6k_unpacked, unpack_q6k};

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

/// The line at `offset` in each of the next panel's blocks, into L2 (see [`TileArgs::next_panel`]).
#[inline(always)]
unsafe fn prefetch_next_panel<const NV: usize>(t: &TileArgs, offset: usize) {
    if !t.next_panel.is_null() {
        for v in 0..NV.min(t.next_blocks) {
            let line = t.next_panel.wrapping_add(v * t.block_stride + offset);
            _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
        }
    }
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
                prefetch_next_panel::<NV>(t, s * 64);
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
            prefetch_next_panel::<NV>(t, (g * Q8_STEPS + s) * 64);
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

/// Whether the Q8_0 stream kernel prefetches (see [`stream_q8`]): everywhere but on AMD CPU
/// family 0x19 (Zen 3 and 4).
fn q8_stream_prefetch() -> bool {
    static PREFETCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFETCH.get_or_init(|| {
        // SAFETY: CPUID exists on every x86_64 CPU; leaves 0 and 1 are always valid.
        #[allow(unused_unsafe)]
        let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
        let amd = [vendor.ebx, vendor.edx, vendor.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        q8_stream_prefetch_on(amd, signature)
    })
}

/// [`q8_stream_prefetch`] for a CPU of this vendor and CPUID leaf 1 signature (`eax`).
fn q8_stream_prefetch_on(amd: bool, signature: u32) -> bool {
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    !(amd && family == 0x19)
}

#[cfg(test)]
#[test]
fn the_q8_stream_prefetches_except_on_amd_family_0x19() {
    assert!(!q8_stream_prefetch_on(true, 0x00a1_0f11)); // Zen 4 (family 0xF + 0x0A)
    assert!(!q8_stream_prefetch_on(true, 0x00a2_0f10)); // Zen 3
    assert!(q8_stream_prefetch_on(true, 0x00b0_0f21)); // Zen 5 (0xF + 0x0B = 0x1A)
    assert!(q8_stream_prefetch_on(true, 0x0083_0f10)); // Zen 2 (0x17)
    assert!(q8_stream_prefetch_on(false, 0x00a1_0f11)); // not AMD
}

/// The Q8_0 stream kernel (decode): consecutive blocks one at a time, two integer accumulators
/// per row.
///
/// Software prefetch 4 KiB ahead (and the scale line of the groups there) depends on the CPU.
/// On the Zen 4 host this project was first measured on, the weights' prefetch cost the 135M
/// decode 11% of its matmul time (a median 8% of its tok/s) whenever the two threads sat on
/// different CCDs (`docs/BENCHMARKS.md`, "the Q8_0 stream without prefetch"), so AMD family 0x19
/// leaves both streams to the hardware prefetchers. On the Zen 5 host (family 0x1A) weights and
/// scales prefetched took 0.83× (two CCDs) / 0.91× (one) the decode step time on TinyLlama Q8_0
/// and 0.94× on 135M Q8_0 (decode windows alternating in one process; "2026-12-07").
///
/// # Safety
/// As [`tile_q8`]; `t.w` starts `blocks` consecutive blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn stream_q8<const MR: usize>(t: &TileArgs, blocks: usize) {
    let prefetch = q8_stream_prefetch();
    for b in 0..blocks {
        let w = t.w.add(b * t.block_stride);
        let mut acc = [[_mm512_setzero_ps(); 1]; MR];
        for g in 0..t.groups {
            let mut even = [_mm512_setzero_si512(); MR];
            let mut odd = [_mm512_setzero_si512(); MR];
            for s in (0..Q8_STEPS).step_by(2) {
                let line = w.add((g * Q8_STEPS + s) * 64);
                if prefetch {
                    let ahead = line.wrapping_add(STREAM_PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
                    if s == 0 && g % 2 == 0 {
                        // The scale line of the groups whose weights that reaches (8 ahead).
                        let scales = t.scales.wrapping_add(b * t.scale_stride + (g + 8) * 32);
                        _mm_prefetch::<_MM_HINT_T0>(scales as *const i8);
                    }
                }
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
            let scales = q8_scales(t, b, g);
            for i in 0..MR {
                let dot = _mm512_add_epi32(even[i], odd[i]);
                acc[i][0] = q8_group_finish(acc[i][0], dot, scales, t, i, g);
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
