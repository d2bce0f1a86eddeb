//! The portable micro-kernel: the same tiles as the AVX-512 ones in plain Rust over 16-lane arrays,
//! which the compiler vectorizes. It serves CPUs without AVX-512 and is the reference the fast
//! kernels are tested against.

use half::bf16;

use super::{TileArgs, WeightKind};

/// One `MR × 16·NV` tile; see [`TileArgs`].
///
/// # Safety
/// `t` describes valid memory.
pub(super) unsafe fn tile<const MR: usize, const NV: usize>(kind: WeightKind, t: &TileArgs) {
    if kind == WeightKind::Q8_0 {
        return tile_q8::<MR, NV>(t);
    }
    let mut acc = [[[0f32; 16]; NV]; MR];
    for s in 0..t.steps {
        for v in 0..NV {
            let line = t.w.add(v * t.block_stride + s * 64);
            for (i, row) in acc.iter_mut().enumerate() {
                let x = (t.x.add(i * t.x_stride + s * 4) as *const u32).read_unaligned();
                let lanes = &mut row[v];
                match kind {
                    WeightKind::F32 => {
                        let w = std::slice::from_raw_parts(line as *const f32, 16);
                        let x = f32::from_bits(x);
                        for (a, &wl) in lanes.iter_mut().zip(w) {
                            *a += wl * x;
                        }
                    }
                    WeightKind::Q8_0 => unreachable!("Q8_0 has its own tile"),
                    WeightKind::Bf16 => {
                        let w = std::slice::from_raw_parts(line as *const u32, 16);
                        let (xe, xo) = (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000));
                        for (a, &wl) in lanes.iter_mut().zip(w) {
                            let (we, wo) =
                                (f32::from_bits(wl << 16), f32::from_bits(wl & 0xffff_0000));
                            *a += we * xe + wo * xo;
                        }
                    }
                }
            }
        }
    }
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
                    let line = std::slice::from_raw_parts(
                        t.w.add(v * t.block_stride + (g * 8 + s) * 64),
                        64,
                    );
                    let x = std::slice::from_raw_parts(
                        t.x.add(i * t.x_stride + g * 32 + s * 4) as *const i8,
                        4,
                    );
                    for (lane, d) in dot.iter_mut().enumerate() {
                        for j in 0..4 {
                            *d += line[lane * 4 + j] as i32 * x[j] as i32;
                        }
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

/// Rounds f32 values to bf16 bits (nearest even; NaN stays NaN).
pub(super) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s).to_bits();
    }
}
