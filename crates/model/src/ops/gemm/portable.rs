//! The portable micro-kernel: the same tiles as the AVX-512 ones in plain Rust over 16-lane arrays,
//! which the compiler vectorizes — for the baseline target, or for AVX2 + FMA when instantiated
//! inside `mod.rs`'s AVX2 wrapper. It serves CPUs without AVX-512 and is the reference the fast
//! kernels are tested against.

use half::bf16;

use super::{TileArgs, WeightKind};

/// One `MR × 16·NV` tile; see [`TileArgs`].
///
/// # Safety
/// `t` describes valid memory.
#[inline(always)]
pub(super) unsafe fn tile<const MR: usize, const NV: usize>(kind: WeightKind, t: &TileArgs) {
    match kind {
        WeightKind::Q8_0 => tile_q8::<MR, NV>(t),
        WeightKind::Q4K => tile_q4k::<MR, NV>(t),
        WeightKind::Q6K => tile_q6k::<MR, NV>(t),
        WeightKind::Bf16 => tile_float::<MR, NV, true>(t),
        WeightKind::F32 => tile_float::<MR, NV, false>(t),
    }
}

/// The f32 and bf16 tiles: each weight line is widened to f32 once (bf16: the even and odd `k` of
/// each row's pair) and used for every row, so the accumulators stay in registers.
///
/// # Safety
/// `t` describes valid memory.
#[inline(always)]
unsafe fn tile_float<const MR: usize, const NV: usize, const BF16: bool>(t: &TileArgs) {
    let mut acc = [[[0f32; 16]; NV]; MR];
    for s in 0..t.steps {
        for v in 0..NV {
            let line = t.w.add(v * t.block_stride + s * 64);
            if BF16 && MR == 1 {
                // One row: widen and multiply in one pass (no widened copy to keep).
                let raw = &*(line as *const [u32; 16]);
                let x = (t.x.add(s * 4) as *const u32).read_unaligned();
                let (xe, xo) = (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000));
                for (a, &w) in acc[0][v].iter_mut().zip(raw) {
                    *a += f32::from_bits(w << 16) * xe + f32::from_bits(w & 0xffff_0000) * xo;
                }
                continue;
            }
            let (mut even, mut odd) = ([0f32; 16], [0f32; 16]);
            if BF16 {
                // SAFETY (caller): a line is 64 aligned bytes of packed weights.
                let raw = &*(line as *const [u32; 16]);
                for l in 0..16 {
                    even[l] = f32::from_bits(raw[l] << 16);
                    odd[l] = f32::from_bits(raw[l] & 0xffff_0000);
                }
            } else {
                even = *(line as *const [f32; 16]);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let x = (t.x.add(i * t.x_stride + s * 4) as *const u32).read_unaligned();
                let lanes = &mut row[v];
                if BF16 {
                    let (xe, xo) = (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000));
                    for l in 0..16 {
                        lanes[l] += even[l] * xe + odd[l] * xo;
                    }
                } else {
                    let x = f32::from_bits(x);
                    for l in 0..16 {
                        lanes[l] += even[l] * x;
                    }
                }
            }
        }
    }
    store::<MR, NV>(&acc, t);
}

/// Writes a tile's results (only the first `t.cols` columns).
///
/// # Safety
/// `t.out` has room for the tile's rows and columns.
#[inline(always)]
unsafe fn store<const MR: usize, const NV: usize>(acc: &[[[f32; 16]; NV]; MR], t: &TileArgs) {
    for (i, row) in acc.iter().enumerate() {
        for (v, lanes) in row.iter().enumerate() {
            let cols = t.cols.saturating_sub(v * 16).min(16);
            let dst = t.out.add(i * t.out_stride + v * 16);
            for (c, &value) in lanes.iter().take(cols).enumerate() {
                *dst.add(c) = value;
            }
        }
    }
}

/// The Q8_0 tile: per group, integer dot products of `q + 128` weights with signed activations,
/// corrected by `128 · Σx` and scaled by both scales.
///
/// # Safety
/// `t` describes valid memory, including the Q8_0 fields.
#[inline(always)]
unsafe fn tile_q8<const MR: usize, const NV: usize>(t: &TileArgs) {
    let mut acc = [[[0f32; 16]; NV]; MR];
    for g in 0..t.groups {
        for v in 0..NV {
            let scales = std::slice::from_raw_parts(
                t.scales.add(v * t.scale_stride + g * 32) as *const half::f16,
                16,
            );
            for (i, row) in acc.iter_mut().enumerate() {
                let mut dot = [0i32; 16];
                for s in 0..8 {
                    // A line is 16 little-endian u32, one per row: its 4 bytes are 4 `k`.
                    let line =
                        &*(t.w.add(v * t.block_stride + (g * 8 + s) * 64) as *const [u32; 16]);
                    let x = (t.x.add(i * t.x_stride + g * 32 + s * 4) as *const [i8; 4])
                        .read_unaligned()
                        .map(|v| v as i32);
                    for (d, &w) in dot.iter_mut().zip(line) {
                        let w = u32::from_le(w);
                        *d += (w & 0xff) as i32 * x[0]
                            + ((w >> 8) & 0xff) as i32 * x[1]
                            + ((w >> 16) & 0xff) as i32 * x[2]
                            + (w >> 24) as i32 * x[3];
                    }
                }
                let at = i * t.groups + g;
                let (corr, x_scale) = (128 * *t.x_sums.add(at), *t.x_scales.add(at));
                for (lane, a) in row[v].iter_mut().enumerate() {
                    *a += (dot[lane] - corr) as f32 * (scales[lane].to_f32() * x_scale);
                }
            }
        }
    }
    store::<MR, NV>(&acc, t);
}

/// The Q4_K tile: per group, integer dot products of the nibbles (low: `k = 4s..4s+4`, high:
/// `k = 16 + 4s..`) with signed activations, then `x_scale · (d·sc·dot − dmin·m·Σx)`.
///
/// # Safety
/// `t` describes valid memory, including the Q4_K fields.
#[inline(always)]
unsafe fn tile_q4k<const MR: usize, const NV: usize>(t: &TileArgs) {
    use super::packed::{Q4K_DMIN_AT, Q4K_META_BYTES, Q4K_MINS_AT, Q4K_SCALES_AT};
    let mut acc = [[[0f32; 16]; NV]; MR];
    for g in 0..t.groups {
        let (sb, j) = (g / 8, g % 8);
        for v in 0..NV {
            let rec = std::slice::from_raw_parts(
                t.scales.add(v * t.scale_stride + sb * Q4K_META_BYTES),
                Q4K_META_BYTES,
            );
            let half = |at: usize| half::f16::from_le_bytes([rec[at], rec[at + 1]]).to_f32();
            let scale: [f32; 16] =
                std::array::from_fn(|l| half(l * 2) * rec[Q4K_SCALES_AT + j * 16 + l] as f32);
            let min: [f32; 16] = std::array::from_fn(|l| {
                half(Q4K_DMIN_AT + l * 2) * rec[Q4K_MINS_AT + j * 16 + l] as f32
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let mut dot = [0i32; 16];
                for s in 0..4 {
                    let line =
                        &*(t.w.add(v * t.block_stride + (g * 4 + s) * 64) as *const [u32; 16]);
                    let x = t.x.add(i * t.x_stride + g * 32 + s * 4);
                    let lo = (x as *const [i8; 4]).read_unaligned().map(|v| v as i32);
                    let hi = (x.add(16) as *const [i8; 4])
                        .read_unaligned()
                        .map(|v| v as i32);
                    for (d, &w) in dot.iter_mut().zip(line) {
                        let w = u32::from_le(w);
                        let nib = |shift: u32| ((w >> shift) & 0x0F) as i32;
                        *d += nib(0) * lo[0] + nib(8) * lo[1] + nib(16) * lo[2] + nib(24) * lo[3];
                        *d += nib(4) * hi[0] + nib(12) * hi[1] + nib(20) * hi[2] + nib(28) * hi[3];
                    }
                }
                let at = i * t.groups + g;
                let (x_sum, x_scale) = (*t.x_sums.add(at) as f32, *t.x_scales.add(at));
                for (lane, a) in row[v].iter_mut().enumerate() {
                    *a += (scale[lane] * dot[lane] as f32 - min[lane] * x_sum) * x_scale;
                }
            }
        }
    }
    store::<MR, NV>(&acc, t);
}

/// The Q6_K tile: per group, integer dot products of the 6-bit values (rebuilt from a nibble line
/// and two bits of a high-bit line, see `packed::q6k`) of each 16-weight sub-block with signed
/// activations, then `x_scale · Σ d·sc·(dot − 32·Σx)`.
///
/// # Safety
/// `t` describes valid memory, including the Q6_K fields.
#[inline(always)]
unsafe fn tile_q6k<const MR: usize, const NV: usize>(t: &TileArgs) {
    use super::packed::{Q6K_META_BYTES, Q6K_SCALES_AT, Q6K_STEPS};
    let mut acc = [[[0f32; 16]; NV]; MR];
    for g in 0..t.groups {
        let (sb, j) = (g / 8, g % 8);
        for v in 0..NV {
            let rec = std::slice::from_raw_parts(
                t.scales.add(v * t.scale_stride + sb * Q6K_META_BYTES),
                Q6K_META_BYTES,
            );
            let d = |l: usize| half::f16::from_le_bytes([rec[2 * l], rec[2 * l + 1]]).to_f32();
            let scale = |sub: usize| -> [f32; 16] {
                std::array::from_fn(|l| d(l) * rec[Q6K_SCALES_AT + sub * 16 + l] as i8 as f32)
            };
            let (scale_lo, scale_hi) = (scale(2 * j), scale(2 * j + 1));
            let lines = t.w.add(v * t.block_stride + g * Q6K_STEPS * 64);
            for (i, row) in acc.iter_mut().enumerate() {
                let (mut lo_dot, mut hi_dot) = ([0i32; 16], [0i32; 16]);
                for s in 0..4 {
                    let line = &*(lines.add(s * 64) as *const [u32; 16]);
                    let high = &*(lines.add((4 + s / 2) * 64) as *const [u32; 16]);
                    let x = t.x.add(i * t.x_stride + g * 32 + s * 4);
                    let lo = (x as *const [i8; 4]).read_unaligned().map(|v| v as i32);
                    let hi = (x.add(16) as *const [i8; 4])
                        .read_unaligned()
                        .map(|v| v as i32);
                    for lane in 0..16 {
                        let (w, h) = (u32::from_le(line[lane]), u32::from_le(high[lane]));
                        for c in 0..4 {
                            let byte = (w >> (8 * c)) & 0xFF;
                            let bits = ((h >> (8 * c)) & 0xFF) >> (4 * (s % 2));
                            let q_lo = (byte & 0x0F) | ((bits & 3) << 4);
                            let q_hi = (byte >> 4) | (((bits >> 2) & 3) << 4);
                            lo_dot[lane] += q_lo as i32 * lo[c];
                            hi_dot[lane] += q_hi as i32 * hi[c];
                        }
                    }
                }
                let at = i * t.groups + g;
                let (sum_lo, sum_hi) = (*t.x_sums16.add(2 * at), *t.x_sums16.add(2 * at + 1));
                let x_scale = *t.x_scales.add(at);
                for (lane, a) in row[v].iter_mut().enumerate() {
                    *a += (scale_lo[lane] * (lo_dot[lane] - 32 * sum_lo) as f32
                        + scale_hi[lane] * (hi_dot[lane] - 32 * sum_hi) as f32)
                        * x_scale;
                }
            }
        }
    }
    store::<MR, NV>(&acc, t);
}

/// Rounds f32 values to bf16 bits (nearest even; NaN stays NaN).
pub(super) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s).to_bits();
    }
}
