//! Q6_K quantization: encodes 256 f32 values as one ggml `block_q6_K` (210 bytes) that
//! [`super::dequantize`] decodes. As ggml's reference without its error search: each 16-value
//! sub-block gets the scale that maps its largest-magnitude value to level −32, the sixteen
//! scales are rounded to signed 8 bits against the block's f16 `d` (the largest scale maps to
//! −128), and every value takes the nearest level in −32..=31 of its stored scale.

use half::f16;

use super::QK_K;

/// Values per sub-block (one 8-bit scale each).
const SUB: usize = 16;

/// The value of largest magnitude, sign kept (the first one on ties).
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Appends the 210-byte Q6_K encoding of `x` (256 values) to `out`. Non-finite inputs do not
/// panic but decode to unspecified values.
pub(crate) fn quantize_q6_k_block(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK_K, "a Q6_K block holds {QK_K} values");
    let sub_scales: [f32; QK_K / SUB] =
        std::array::from_fn(|j| signed_max(&x[SUB * j..SUB * (j + 1)]) / -32.0);
    let max_scale = signed_max(&sub_scales);
    let (d, inv) = if max_scale == 0.0 {
        (0.0, 0.0)
    } else {
        (max_scale / -128.0, -128.0 / max_scale)
    };
    let d = f16::from_f32(d);
    let scales: [i8; QK_K / SUB] =
        std::array::from_fn(|j| (inv * sub_scales[j]).round().clamp(-128.0, 127.0) as i8);
    let mut levels = [0u8; QK_K];
    for (i, (level, &v)) in levels.iter_mut().zip(x).enumerate() {
        let step = d.to_f32() * scales[i / SUB] as f32;
        let q = if step == 0.0 { 0.0 } else { (v / step).round() };
        *level = (q.clamp(-32.0, 31.0) as i32 + 32) as u8;
    }
    // ggml's layout: per half of 128 values, `ql` holds values l and l + 64 (low and high nibble)
    // and l + 32, l + 96; `qh` the top two bits of l, l + 32, l + 64, l + 96.
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for n in 0..2 {
        let v = &levels[128 * n..128 * (n + 1)];
        for l in 0..32 {
            ql[64 * n + l] = (v[l] & 0x0F) | ((v[l + 64] & 0x0F) << 4);
            ql[64 * n + l + 32] = (v[l + 32] & 0x0F) | ((v[l + 96] & 0x0F) << 4);
            qh[32 * n + l] = (v[l] >> 4)
                | ((v[l + 32] >> 4) << 2)
                | ((v[l + 64] >> 4) << 4)
                | ((v[l + 96] >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(scales.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{quants::dequantize, GgmlType};

    /// Every value decodes within a step of its sub-block's scale (levels run −32..=31 with the
    /// scale's sign set by the largest-magnitude value, so the opposite extreme can clip to 31
    /// steps, as in ggml), plus the rounding of the 8-bit scales against `d` (at most 1/256 of
    /// the block's largest value); zeros stay zero.
    #[test]
    fn round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..2 * QK_K)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 * (1.0 + (i / 16 % 5) as f32))
            .collect();
        let mut bytes = Vec::new();
        for block in x.chunks_exact(QK_K) {
            quantize_q6_k_block(block, &mut bytes);
        }
        assert_eq!(bytes.len(), 2 * 210);
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q6K, &bytes, &mut y).unwrap();
        let mut worst = 0f32;
        for (block_x, block_y) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
            let block_max = block_x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (sub_x, sub_y) in block_x.chunks(SUB).zip(block_y.chunks(SUB)) {
                let amax = sub_x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / 32.0;
                for (a, b) in sub_x.iter().zip(sub_y) {
                    assert!(
                        (a - b).abs() <= step + block_max / 256.0 + 1e-3,
                        "{a} vs {b} (step {step})"
                    );
                    worst = worst.max((a - b).abs() / step);
                }
            }
        }
        assert!(worst > 0.25, "the bound is not vacuous");
        let mut zeros = Vec::new();
        quantize_q6_k_block(&[0.0; QK_K], &mut zeros);
        dequantize(GgmlType::Q6K, &zeros, &mut y[..QK_K]).unwrap();
        assert!(y[..QK_K].iter().all(|&v| v == 0.0));
    }
}
