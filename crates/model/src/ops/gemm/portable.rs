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

/// Rounds f32 values to bf16 bits (nearest even; NaN stays NaN).
pub(super) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(s).to_bits();
    }
}
