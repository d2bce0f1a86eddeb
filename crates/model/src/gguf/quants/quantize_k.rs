//! Q4_K quantization: encodes 256 f32 values as one ggml `block_q4_K` (144 bytes) that
//! [`super::dequantize`] decodes. Each 32-value sub-block gets a weighted least-squares fit
//! `x ≈ scale·q − offset` (q in 0..16, scale ≥ 0, offset ≥ 0) searched over a few candidate
//! scales around the min-max one, as ggml's `make_qkx2_quants` does; the eight scales and
//! offsets are then rounded to 6 bits against the super-block's f16 `d` and `dmin`, and every
//! value takes the nearest level of its sub-block's stored grid.

use half::f16;

use super::QK_K;

/// Values per sub-block.
const SUB: usize = 32;
/// The highest 4-bit level.
const NMAX: f64 = 15.0;
/// Candidate inverse scales: `(NMAX + RMIN + RDELTA·i) / (max − min)` for `i` in `0..=NSTEP`.
const RMIN: f64 = -1.0;
const RDELTA: f64 = 0.1;
const NSTEP: usize = 20;

/// A sub-block's fit `x ≈ scale·q − offset`.
#[derive(Clone, Copy, Debug)]
struct Fit {
    scale: f32,
    offset: f32,
}

/// Appends the 144-byte Q4_K encoding of `x` (256 values) to `out`. Non-finite inputs do not
/// panic but decode to unspecified values.
pub(crate) fn quantize_q4_k_block(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK_K, "a Q4_K block holds {QK_K} values");
    // ggml's importance weights: the block's RMS plus the value's magnitude.
    let sum_x2: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let av_x = (sum_x2 / QK_K as f64).sqrt();
    let fits = std::array::from_fn(|j| fit_sub_block(&x[SUB * j..SUB * (j + 1)], av_x));
    encode_block(x, &fits, out);
}

/// The best weighted fit of 32 values among the min-max grid and `NSTEP + 1` candidate scales
/// (levels by rounding, then (scale, min) by least squares with min ≤ 0). Works in f64 so that
/// tiny or huge finite inputs neither underflow nor overflow.
fn fit_sub_block(xs: &[f32], av_x: f64) -> Fit {
    let mut v = [0f64; SUB];
    let mut w = [0f64; SUB];
    for ((v, w), &x) in v.iter_mut().zip(&mut w).zip(xs) {
        *v = f64::from(x);
        *w = av_x + v.abs();
    }
    // f64::min/max skip NaN.
    let lo = v.iter().fold(f64::INFINITY, |m, &x| m.min(x)).min(0.0);
    let hi = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let range = hi - lo;
    if !range.is_finite() || range <= 0.0 {
        // Constant (non-positive) or unusable: every value at −offset.
        let offset = if lo.is_finite() { -lo } else { 0.0 };
        return Fit {
            scale: 0.0,
            offset: offset as f32,
        };
    }
    let error = |scale: f64, min: f64, l: &[u8; SUB]| -> f64 {
        (0..SUB)
            .map(|i| w[i] * (scale * f64::from(l[i]) + min - v[i]).powi(2))
            .sum()
    };
    let levels = |iscale: f64| -> [u8; SUB] {
        // NaN casts to 0.
        v.map(|x| (iscale * (x - lo)).round().clamp(0.0, NMAX) as u8)
    };
    // Start from the min-max grid itself.
    let (mut best_scale, mut best_min) = (range / NMAX, lo);
    let mut best_err = error(best_scale, best_min, &levels(NMAX / range));
    for step in 0..=NSTEP {
        let l = levels((NMAX + RMIN + RDELTA * step as f64) / range);
        let (mut sw, mut sl, mut sl2, mut sxl, mut sx) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for i in 0..SUB {
            let (li, wi) = (f64::from(l[i]), w[i]);
            sw += wi;
            sl += wi * li;
            sl2 += wi * li * li;
            sxl += wi * li * v[i];
            sx += wi * v[i];
        }
        // All levels equal (or rounding noise from them): no unique fit.
        let det = sw * sl2 - sl * sl;
        if det.is_nan() || det <= 1e-9 * sw * sl2 {
            continue;
        }
        let mut scale = (sw * sxl - sx * sl) / det;
        let mut min = (sl2 * sx - sl * sxl) / det;
        if min > 0.0 {
            // The offset may only lower the grid: refit through zero.
            min = 0.0;
            scale = sxl / sl2;
        }
        if !scale.is_finite() || !min.is_finite() || scale < 0.0 {
            continue;
        }
        let err = error(scale, min, &l);
        if err < best_err {
            (best_scale, best_min, best_err) = (scale, min, err);
        }
    }
    Fit {
        scale: best_scale as f32,
        offset: -best_min as f32,
    }
}

/// An f16 that saturates at the largest finite half instead of overflowing.
fn to_f16(x: f32) -> f16 {
    f16::from_f32(x.min(f16::MAX.to_f32()))
}

/// `x` over `unit`, rounded to a 6-bit code; 0 when the unit is 0.
fn six_bits(x: f32, unit: f32) -> u8 {
    if unit > 0.0 {
        (x / unit).round().clamp(0.0, 63.0) as u8
    } else {
        0
    }
}

/// Rounds the eight fits to 6 bits against f16 `d = max scale / 63` and
/// `dmin = max offset / 63`, then writes the block with every value at the nearest level of its
/// sub-block's stored grid `d·sc·q − dmin·m`.
fn encode_block(x: &[f32], fits: &[Fit; QK_K / SUB], out: &mut Vec<u8>) {
    let max_scale = fits.iter().fold(0f32, |m, f| m.max(f.scale));
    let max_offset = fits.iter().fold(0f32, |m, f| m.max(f.offset));
    let (d, dmin) = (to_f16(max_scale / 63.0), to_f16(max_offset / 63.0));
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let sc = fits.map(|f| six_bits(f.scale, df));
    // A sub-block whose step rounds to 0 (d underflowed, or its scale is under d/2) decodes to
    // the single value −dmin·m: make that the nearest to its mean, not to its fitted bottom.
    let m: [u8; QK_K / SUB] = std::array::from_fn(|j| {
        let offset = if df * sc[j] as f32 > 0.0 {
            fits[j].offset
        } else {
            let xs = &x[SUB * j..SUB * (j + 1)];
            (-xs.iter().sum::<f32>() / SUB as f32).max(0.0)
        };
        six_bits(offset, dminf)
    });

    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    // The inverse of `scale_min_k4`: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales)
    // and 4..8 (mins); sub-blocks 4..8 as low nibbles in bytes 8..12 (scale low, min high)
    // with their top 2 bits in the top of bytes 0..4 (scales) and 4..8 (mins).
    let mut packed = [0u8; 12];
    for j in 0..4 {
        let (sh, mh) = (sc[j + 4], m[j + 4]);
        packed[j] = sc[j] | ((sh >> 4) << 6);
        packed[j + 4] = m[j] | ((mh >> 4) << 6);
        packed[j + 8] = (sh & 0x0F) | ((mh & 0x0F) << 4);
    }
    out.extend_from_slice(&packed);

    let mut q = [0u8; QK_K];
    for (j, (qs, xs)) in q.chunks_exact_mut(SUB).zip(x.chunks_exact(SUB)).enumerate() {
        // The same products the decoder forms.
        let (step, offset) = (df * sc[j] as f32, dminf * m[j] as f32);
        if step > 0.0 {
            for (q, &x) in qs.iter_mut().zip(xs) {
                *q = ((x + offset) / step).round().clamp(0.0, 15.0) as u8;
            }
        }
    }
    // 32-byte chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high nibbles.
    for pair in q.chunks_exact(2 * SUB) {
        let (lo, hi) = pair.split_at(SUB);
        out.extend(lo.iter().zip(hi).map(|(&a, &b)| a | (b << 4)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, quantize, scale_min_k4, GgmlType, QuantError};
    use super::*;

    /// A 64-bit LCG giving uniforms in [0, 1).
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }

        /// Roughly N(0, 1): the sum of four uniforms, centred and scaled (Irwin–Hall).
        fn gaussian(&mut self) -> f32 {
            ((0..4).map(|_| self.uniform()).sum::<f32>() - 2.0) * 3f32.sqrt()
        }
    }

    fn round_trip(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::new();
        quantize(GgmlType::Q4K, x, &mut bytes).unwrap();
        assert_eq!(bytes.len(), x.len() / QK_K * 144);
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q4K, &bytes, &mut y).unwrap();
        (bytes, y)
    }

    /// Sub-block `j`'s stored step `d·sc` and offset `dmin·m`, as the decoder forms them.
    fn grid(block: &[u8], j: usize) -> (f32, f32) {
        let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (sc, m) = scale_min_k4(j, &block[4..16]);
        (h(&block[0..2]) * sc as f32, h(&block[2..4]) * m as f32)
    }

    fn sq_err(x: &[f32], y: &[f32]) -> f64 {
        x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum()
    }

    /// Uniform blocks over random (possibly all-positive or all-negative) ranges, and gaussian
    /// blocks whose sub-blocks have different spreads.
    fn random_block(rng: &mut Lcg, n: usize) -> Vec<f32> {
        match n % 4 {
            0 => (0..QK_K)
                .map(|i| rng.gaussian() * (1 + i / SUB) as f32)
                .collect(),
            kind => {
                let (a, b) = (rng.uniform() * 8.0 - 4.0, rng.uniform() * 8.0 - 4.0);
                let (lo, hi) = match kind {
                    1 => (a.min(b), a.max(b)),
                    2 => (a.abs().min(b.abs()), a.abs().max(b.abs()) + 0.1),
                    _ => (-a.abs().max(b.abs()) - 0.1, -a.abs().min(b.abs())),
                };
                (0..QK_K).map(|_| lo + (hi - lo) * rng.uniform()).collect()
            }
        }
    }

    /// What the encoder guarantees: every value decodes to the level of its sub-block's stored
    /// grid `{step·q − offset : q in 0..16}` nearest to it. So a value within half a step of the
    /// grid's span is off by at most `step / 2`; a value beyond it (clamped) decodes to the
    /// nearer end of the span. `tol` covers f32 rounding in `(x + offset) / step`.
    /// Returns the number of clamped values and the largest error of the others in half steps.
    fn assert_nearest_level(x: &[f32], bytes: &[u8], y: &[f32]) -> (usize, f32) {
        let (mut clamped, mut worst) = (0, 0f32);
        for (b, (xb, yb)) in bytes.chunks(144).zip(x.chunks(QK_K).zip(y.chunks(QK_K))) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = 1e-5 * amax + f32::MIN_POSITIVE;
            for (j, (xs, ys)) in xb.chunks(SUB).zip(yb.chunks(SUB)).enumerate() {
                let (step, offset) = grid(b, j);
                let (bottom, top) = (-offset, step * 15.0 - offset);
                for (&a, &r) in xs.iter().zip(ys) {
                    let err = (a - r).abs();
                    if a >= bottom - step / 2.0 && a <= top + step / 2.0 {
                        assert!(err <= step / 2.0 + tol, "{a} → {r}: step {step}");
                        if step > 0.0 {
                            worst = worst.max(err / (step / 2.0));
                        }
                    } else {
                        clamped += 1;
                        let end = if a < bottom { bottom } else { top };
                        assert!((r - end).abs() <= tol, "{a} → {r}: end {end}");
                    }
                }
            }
        }
        (clamped, worst)
    }

    #[test]
    fn random_blocks_decode_to_the_nearest_level_within_a_rmse_bound() {
        let mut rng = Lcg(17);
        let (mut clamped, mut half_steps) = (0, 0f32);
        for n in 0..200 {
            let x = random_block(&mut rng, n);
            let (bytes, y) = round_trip(&x);
            let (c, h) = assert_nearest_level(&x, &bytes, &y);
            (clamped, half_steps) = (clamped + c, half_steps.max(h));
            // The grid's bottom −dmin·m is never above 0, so it must span 0 as well as the values.
            let (lo, hi) = x
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let rmse = (sq_err(&x, &y) / QK_K as f64).sqrt();
            // A uniform grid of 15 steps over the span gives span / 15 / √12 ≈ 0.019·span.
            assert!(rmse < 0.02 * f64::from(hi - lo), "block {n}: rmse {rmse}");
        }
        // The fits trade a few clamped tails for finer steps, but only a few; and the half-step
        // bound is reached (it is not vacuous).
        assert!(clamped > 0 && clamped < 200 * QK_K / 50);
        assert!(half_steps > 0.95, "{half_steps}");
    }

    #[test]
    fn least_squares_fits_beat_naive_min_max() {
        let mut rng = Lcg(5);
        let (mut ours, mut naive, mut worse) = (0f64, 0f64, 0);
        for _ in 0..200 {
            let x: Vec<f32> = (0..QK_K).map(|_| rng.gaussian()).collect();
            let (bytes, y) = round_trip(&x);
            // Naive: the sub-block's min-max grid (min clamped to ≤ 0), same 6-bit encoding.
            let fits: [Fit; QK_K / SUB] = std::array::from_fn(|j| {
                let xs = &x[SUB * j..SUB * (j + 1)];
                let lo = xs.iter().fold(0f32, |m, &v| m.min(v));
                let hi = xs.iter().fold(f32::MIN, |m, &v| m.max(v));
                Fit {
                    scale: (hi - lo) / 15.0,
                    offset: -lo,
                }
            });
            let mut naive_bytes = Vec::new();
            encode_block(&x, &fits, &mut naive_bytes);
            let mut naive_y = vec![0f32; QK_K];
            dequantize(GgmlType::Q4K, &naive_bytes, &mut naive_y).unwrap();
            assert_nearest_level(&x, &naive_bytes, &naive_y);
            assert_nearest_level(&x, &bytes, &y);
            let (a, b) = (sq_err(&x, &y), sq_err(&x, &naive_y));
            worse += usize::from(a > b);
            ours += a;
            naive += b;
        }
        let ratio = (ours / naive).sqrt();
        eprintln!("rmse ours / naive {ratio:.4}; worse on {worse} of 200 blocks");
        assert!(ratio < 0.95, "rmse ratio {ratio}");
        assert!(worse < 10, "worse on {worse} blocks");
    }

    #[test]
    fn zero_constant_and_tiny_blocks() {
        let (bytes, y) = round_trip(&[0.0; QK_K]);
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(y.iter().all(|&v| v == 0.0));
        // A constant decodes to d·63·15 (c > 0) or −dmin·63 (c < 0): off by f16 rounding only.
        for c in [0.37f32, -0.37, 1234.5, -1234.5, 3.0e4] {
            let (bytes, y) = round_trip(&[c; QK_K]);
            let stored = if c > 0.0 { &bytes[2..4] } else { &bytes[0..2] };
            assert_eq!(stored, [0, 0], "{c}: the unused one of d and dmin is 0");
            assert_nearest_level(&[c; QK_K], &bytes, &y);
            for &v in &y {
                assert!((v - c).abs() <= 1e-3 * c.abs(), "{c} → {v}");
            }
        }
        // Tiny values (below f16's range for d) and huge ones (d saturates): finite, no worse
        // than all zeros, or clamped to the largest grid.
        let mut rng = Lcg(3);
        for amp in [1e-40f32, 1e-30, 1e-6, 1e-3, 1e9] {
            let x: Vec<f32> = (0..QK_K).map(|_| amp * rng.gaussian()).collect();
            let (bytes, y) = round_trip(&x);
            assert!(y.iter().all(|v| v.is_finite()), "{amp}");
            assert_nearest_level(&x, &bytes, &y);
            if amp < 1.0 {
                assert!(sq_err(&x, &y) <= sq_err(&x, &[0.0; QK_K]), "{amp}");
            }
        }
    }

    #[test]
    fn partial_blocks_are_errors_and_non_finite_values_do_not_panic() {
        let mut out = Vec::new();
        assert_eq!(
            quantize(GgmlType::Q4K, &[0.5; 300], &mut out),
            Err(QuantError::PartialBlock {
                ty: GgmlType::Q4K,
                values: 300,
                block: QK_K
            })
        );
        assert!(out.is_empty());
        let mut x = [0.5f32; 2 * QK_K];
        (x[3], x[40], x[100]) = (f32::NAN, f32::INFINITY, f32::NEG_INFINITY);
        x[300..332].fill(f32::NAN);
        quantize(GgmlType::Q4K, &x, &mut out).unwrap();
        assert_eq!(out.len(), 288);
    }
}
