//! ggml block formats: dequantization of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and
//! Q6_K rows to f32,
//! and quantization of f32 rows to F16, BF16, Q8_0 and Q4_0 with ggml's reference rounding
//! (`quantize_row_*_ref` in ggml-quants.c), so files written here match what llama.cpp writes,
//! and to Q4_K with a least-squares search of our own (`quantize_k`), which llama.cpp decodes.
//!
//! Block layouts (little endian, `d`/`dmin` are IEEE half floats):
//! - Q8_0, 32 values in 34 bytes: `d`, then 32 `i8`; `x = d·q`.
//! - Q4_0, 32 values in 18 bytes: `d`, then 16 bytes; byte `j` holds value `j` in its low nibble
//!   and value `j + 16` in its high nibble; `x = d·(q − 8)`.
//! - Q4_1, 32 values in 20 bytes: `d`, `m`, 16 bytes of nibbles as Q4_0; `x = d·q + m`.
//! - Q5_0 (22 bytes) / Q5_1 (24 bytes), 32 values: `d` (and `m`), a `u32` of fifth bits (bit `j`
//!   for value `j`), nibbles as Q4_0; `x = d·(q − 16)` / `x = d·q + m`.
//! - Q4_K, 256 values in 144 bytes: `d`, `dmin`, 12 bytes of eight 6-bit (scale, min) pairs, 128
//!   bytes of nibbles; 32-byte chunk `c` holds sub-block `2c` in its low and `2c + 1` in its high
//!   nibbles; `x = d·scale·q − dmin·min`.
//! - Q6_K, 256 values in 210 bytes: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16
//!   `i8` scales (one per 16 values), `d`; `x = d·scale·(q − 32)`.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::types::{GgmlType, QK_K};

mod quantize_k;
mod quantize_q6k;

/// Why a row could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("type {0} is not supported")]
    Unsupported(GgmlType),
    #[error("{values} values of type {ty} do not fill whole blocks of {block}")]
    PartialBlock {
        ty: GgmlType,
        values: usize,
        block: usize,
    },
    #[error("{values} values of type {ty} need {expected} bytes, got {found}")]
    Length {
        ty: GgmlType,
        values: usize,
        expected: usize,
        found: usize,
    },
}

fn half(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Converts `bytes` holding `out.len()` values of type `ty` into f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let (block, _) = ty.block_geometry();
    let expected = ty.row_bytes(out.len()).ok_or(QuantError::PartialBlock {
        ty,
        values: out.len(),
        block,
    })?;
    if bytes.len() != expected {
        return Err(QuantError::Length {
            ty,
            values: out.len(),
            expected,
            found: bytes.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            // Through an aligned buffer, so the slice conversion can use F16C vectors (one value
            // at a time, this was most of an F16 file's load time).
            let mut buf = [f16::ZERO; 256];
            for (o, b) in out.chunks_mut(buf.len()).zip(bytes.chunks(2 * buf.len())) {
                let buf = &mut buf[..o.len()];
                for (h, c) in buf.iter_mut().zip(b.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
                buf.convert_to_f32_slice(o);
            }
        }
        GgmlType::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = half(&b[..2]);
                for (o, &q) in y.iter_mut().zip(&b[2..]) {
                    *o = q as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = half(&b[..2]);
                let (lo, hi) = y.split_at_mut(16);
                for (j, &q) in b[2..].iter().enumerate() {
                    lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (half(&b[..2]), half(&b[2..4]));
                let (lo, hi) = y.split_at_mut(16);
                for (j, &q) in b[4..].iter().enumerate() {
                    lo[j] = (q & 0x0F) as f32 * d + m;
                    hi[j] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(22)) {
                let d = half(&b[..2]);
                dequantize_q5_block(
                    u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                    &b[6..],
                    y,
                    |q| (q as i32 - 16) as f32 * d,
                );
            }
        }
        GgmlType::Q5_1 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(24)) {
                let (d, m) = (half(&b[..2]), half(&b[2..4]));
                dequantize_q5_block(
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    &b[8..],
                    y,
                    |q| q as f32 * d + m,
                );
            }
        }
        GgmlType::Q4K => {
            for (y, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(144)) {
                dequantize_q4_k_block(b, y);
            }
        }
        GgmlType::Q6K => {
            for (y, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(210)) {
                dequantize_q6_k_block(b, y);
            }
        }
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Q5_0/Q5_1: value `j` (< 16) is the low nibble of `qs[j]` plus bit `j` of `qh` as its fifth
/// bit; value `j + 16` the high nibble plus bit `j + 16`.
fn dequantize_q5_block(qh: u32, qs: &[u8], y: &mut [f32], value: impl Fn(u8) -> f32) {
    let (lo, hi) = y.split_at_mut(16);
    for (j, &q) in qs.iter().enumerate() {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        lo[j] = value((q & 0x0F) | h0);
        hi[j] = value((q >> 4) | h1);
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from Q4_K's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 256 4-bit levels of a Q4_K block's 128 `qs` bytes, in value order: 32-byte chunk `c`
/// holds values `64c..64c+32` in its low nibbles and `64c+32..64c+64` in its high nibbles.
pub(crate) fn q4_k_levels(qs: &[u8], out: &mut [u8; QK_K]) {
    for (c, chunk) in qs.chunks_exact(32).enumerate() {
        for (l, &byte) in chunk.iter().enumerate() {
            out[64 * c + l] = byte & 0x0F;
            out[64 * c + 32 + l] = byte >> 4;
        }
    }
}

fn dequantize_q4_k_block(b: &[u8], y: &mut [f32]) {
    let d = half(&b[0..2]);
    let dmin = half(&b[2..4]);
    let scales = &b[4..16];
    let mut levels = [0u8; QK_K];
    q4_k_levels(&b[16..144], &mut levels);
    for (j, (sub, out)) in levels
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, scales);
        let (dj, min) = (d * sc as f32, dmin * m as f32);
        for (o, &q) in out.iter_mut().zip(sub) {
            *o = dj * q as f32 - min;
        }
    }
}

/// The 256 6-bit levels (0..63, the value is `d · scale · (level − 32)`) of a Q6_K block's 128
/// `ql` and 64 `qh` bytes, in value order (ggml's `dequantize_row_q6_K` layout: each half of 128
/// values takes 64 `ql` bytes, low then high nibbles, and 32 `qh` bytes, two bits per value).
pub(crate) fn q6_k_levels(b: &[u8], out: &mut [u8; QK_K]) {
    let (ql_all, qh_all) = (&b[..128], &b[128..192]);
    for (n, out) in out.chunks_exact_mut(128).enumerate() {
        let ql = &ql_all[64 * n..64 * (n + 1)];
        let qh = &qh_all[32 * n..32 * (n + 1)];
        for l in 0..32 {
            out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}

fn dequantize_q6_k_block(b: &[u8], y: &mut [f32]) {
    let scales = &b[192..208];
    let d = half(&b[208..210]);
    let mut levels = [0u8; QK_K];
    q6_k_levels(b, &mut levels);
    for (i, (o, &q)) in y.iter_mut().zip(&levels).enumerate() {
        *o = d * scales[i / 16] as i8 as f32 * (q as i32 - 32) as f32;
    }
}

/// `rows` rows of `cols` values encoded as type `ty`, in parallel; `values(r, buf)` fills `buf`
/// with row `r`.
pub fn encode_rows(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    values: impl Fn(usize, &mut [f32]) -> Result<(), QuantError> + Sync,
) -> Result<Vec<u8>, QuantError> {
    let out_row = ty.row_bytes(cols).ok_or(QuantError::PartialBlock {
        ty,
        values: cols,
        block: ty.block_geometry().0,
    })?;
    let mut out = vec![0u8; rows * out_row];
    out.par_chunks_mut(out_row.max(1))
        .enumerate()
        .try_for_each_init(
            || (vec![0f32; cols], Vec::with_capacity(out_row)),
            |(row, encoded), (r, dst)| {
                values(r, row)?;
                encoded.clear();
                quantize(ty, row, encoded)?;
                dst.copy_from_slice(encoded);
                Ok(())
            },
        )?;
    Ok(out)
}

/// `rows` rows of type `ty` (`row(r)`: row `r`'s bytes, `cols` values) requantized to Q8_0 rows
/// through f32: ggml's Q8_0 rounding of the dequantized values.
pub fn rows_to_q8_0<'a>(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row: impl Fn(usize) -> &'a [u8] + Sync,
) -> Result<Vec<u8>, QuantError> {
    encode_rows(GgmlType::Q8_0, rows, cols, |r, values| {
        dequantize(ty, row(r), values)
    })
}

/// Encodes f32 `values` as type `ty` (F32, F16, BF16, Q8_0, Q4_0, Q4_K or Q6_K), appending to
/// `out`.
pub fn quantize(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    let (block, _) = ty.block_geometry();
    if !values.len().is_multiple_of(block) {
        return Err(QuantError::PartialBlock {
            ty,
            values: values.len(),
            block,
        });
    }
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|&x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
        GgmlType::Bf16 => values
            .iter()
            .for_each(|&x| out.extend_from_slice(&bf16::from_f32(x).to_le_bytes())),
        GgmlType::Q8_0 => {
            for x in values.chunks_exact(32) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                // `f32::round` rounds half away from zero, as C's roundf.
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for x in values.chunks_exact(32) {
                // The value of largest magnitude, sign kept (the first one on ties).
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                // `as i8` truncates toward zero like C's `(int8_t)` cast.
                let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
        }
        GgmlType::Q4K => values
            .chunks_exact(QK_K)
            .for_each(|x| quantize_k::quantize_q4_k_block(x, out)),
        GgmlType::Q6K => values
            .chunks_exact(QK_K)
            .for_each(|x| quantize_q6k::quantize_q6_k_block(x, out)),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        dequantize(ty, bytes, &mut out).unwrap();
        out
    }

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn plain_floats_decode_bit_exactly() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let mut bytes = Vec::new();
        quantize(GgmlType::F32, &vals, &mut bytes).unwrap();
        assert_eq!(deq(GgmlType::F32, &bytes, 4), vals);
        bytes.clear();
        quantize(GgmlType::F16, &vals, &mut bytes).unwrap();
        assert_eq!(
            &bytes[..2],
            &[0x00, 0x3E],
            "1.5 in half precision is 0x3E00"
        );
        assert_eq!(deq(GgmlType::F16, &bytes, 4), vals);
        bytes.clear();
        quantize(GgmlType::Bf16, &vals[..3], &mut bytes).unwrap();
        assert_eq!(&bytes[..2], &[0xC0, 0x3F], "1.5 in bfloat16 is 0x3FC0");
        assert_eq!(deq(GgmlType::Bf16, &bytes, 3), &vals[..3]);
    }

    #[test]
    fn q8_0_block_by_hand() {
        // d = 0.5; q = 0, 1, -1, 2, -2, ... → x = d·q.
        let mut block = h(0.5).to_vec();
        let qs: Vec<i8> = (0..32)
            .map(|i| if i % 2 == 0 { i / 2 } else { -(i / 2) - 1 })
            .collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let out = deq(GgmlType::Q8_0, &block, 32);
        for (o, &q) in out.iter().zip(&qs) {
            assert_eq!(*o, q as f32 * 0.5);
        }
    }

    #[test]
    fn q8_0_quantizes_like_ggml_reference() {
        // amax 127 → d = 1, q = round half away from zero.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49;
        x[4] = -126.6;
        let mut bytes = Vec::new();
        quantize(GgmlType::Q8_0, &x, &mut bytes).unwrap();
        assert_eq!(bytes.len(), 34);
        assert_eq!(&bytes[..2], &h(1.0));
        let q: Vec<i8> = bytes[2..7].iter().map(|&b| b as i8).collect();
        assert_eq!(q, [127, 3, -3, 0, -127]);
        // An all-zero block has d = 0 and decodes to zeros.
        bytes.clear();
        quantize(GgmlType::Q8_0, &[0.0; 32], &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 2; byte j = (lo j, hi j+16): lo = j % 16, hi = 15 - j % 16.
        let mut block = h(2.0).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = deq(GgmlType::Q4_0, &block, 32);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 2.0);
        }
    }

    #[test]
    fn q4_0_quantizes_like_ggml_reference() {
        // max magnitude -8 (sign kept) → d = 1, q = trunc(x + 8.5) clamped to 15.
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 7.9;
        x[2] = 0.5;
        x[16] = 3.0;
        let mut bytes = Vec::new();
        quantize(GgmlType::Q4_0, &x, &mut bytes).unwrap();
        assert_eq!(&bytes[..2], &h(1.0));
        assert_eq!(bytes[2] & 0x0F, 0);
        assert_eq!(
            bytes[3] & 0x0F,
            15,
            "8 + 7.9 + 0.5 truncates to 16, clamped to 15"
        );
        assert_eq!(bytes[4] & 0x0F, 9);
        assert_eq!(bytes[2] >> 4, 11);
        let out = deq(GgmlType::Q4_0, &bytes, 32);
        assert_eq!(&out[..3], &[-8.0, 7.0, 1.0]);
        assert_eq!(out[16], 3.0);
    }

    #[test]
    fn q4_1_and_q5_blocks_by_hand() {
        // Q4_1: d = 2, m = -1; byte j = (j, 15 - j).
        let mut b = h(2.0).to_vec();
        b.extend_from_slice(&h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = deq(GgmlType::Q4_1, &b, 32);
        assert_eq!((out[3], out[16 + 3]), (3.0 * 2.0 - 1.0, 12.0 * 2.0 - 1.0));
        // Q5_0: d = 1; fifth bits set for values 0 and 16 only; nibbles 1 and 2 in byte 0.
        let mut b = h(1.0).to_vec();
        b.extend_from_slice(&(1u32 | (1 << 16)).to_le_bytes());
        b.push(0x21);
        b.extend([0u8; 15]);
        let out = deq(GgmlType::Q5_0, &b, 32);
        assert_eq!((out[0], out[16], out[1], out[17]), (1.0, 2.0, -16.0, -16.0));
        // Q5_1: the same codes, d = 0.5, m = 3: x = d·q + m.
        let mut b1 = h(0.5).to_vec();
        b1.extend_from_slice(&h(3.0));
        b1.extend_from_slice(&b[2..]);
        let out = deq(GgmlType::Q5_1, &b1, 32);
        assert_eq!(
            (out[0], out[16], out[1]),
            (17.0 * 0.5 + 3.0, 18.0 * 0.5 + 3.0, 3.0)
        );
    }

    /// Deterministic pseudo-random bytes (a 64-bit LCG), shared with the gguf-py cross-check.
    fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn q4_k_block_by_hand() {
        // d = 1, dmin = 0.5. Sub-blocks 0..4: scale j + 1, min j; sub-blocks 4..8: scale and min
        // split over the 6-bit fields (scale 33 + j: low 4 bits in byte 8 + j, high 2 bits in the
        // top of byte j; min 40 + j: low 4 bits in the high nibble of byte 8 + j, high 2 bits in
        // the top of byte 4 + j).
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        for j in 0..4 {
            let (sc_hi, m_hi) = (33 + j as u8, 40 + j as u8);
            b[4 + j] = (j as u8 + 1) | ((sc_hi >> 4) << 6);
            b[8 + j] = j as u8 | ((m_hi >> 4) << 6);
            b[12 + j] = (sc_hi & 0x0F) | ((m_hi & 0x0F) << 4);
        }
        // Nibbles: value l of sub-block s is (l + s) % 16.
        for c in 0..4 {
            for l in 0..32 {
                let lo = ((l + 2 * c) % 16) as u8;
                let hi = ((l + 2 * c + 1) % 16) as u8;
                b[16 + 32 * c + l] = lo | (hi << 4);
            }
        }
        let out = deq(GgmlType::Q4K, &b, 256);
        for s in 0..8 {
            let (scale, min) = if s < 4 {
                (s as f32 + 1.0, s as f32)
            } else {
                (33.0 + (s - 4) as f32, 40.0 + (s - 4) as f32)
            };
            for l in 0..32 {
                let q = ((l + s) % 16) as f32;
                assert_eq!(
                    out[32 * s + l],
                    scale * q - 0.5 * min,
                    "sub-block {s} value {l}"
                );
            }
        }
    }

    #[test]
    fn q6_k_block_by_hand() {
        // d = 0.25, scale of 16-value group g = g - 8. Value i has 6-bit code (i * 7) % 64.
        let code = |i: usize| ((i * 7) % 64) as u8;
        let mut b = vec![0u8; 210];
        for n in 0..2 {
            for l in 0..32 {
                let base = 128 * n;
                let (c1, c2, c3, c4) = (
                    code(base + l),
                    code(base + l + 32),
                    code(base + l + 64),
                    code(base + l + 96),
                );
                b[64 * n + l] = (c1 & 0x0F) | ((c3 & 0x0F) << 4);
                b[64 * n + l + 32] = (c2 & 0x0F) | ((c4 & 0x0F) << 4);
                b[128 + 32 * n + l] =
                    (c1 >> 4) | ((c2 >> 4) << 2) | ((c3 >> 4) << 4) | ((c4 >> 4) << 6);
            }
        }
        for g in 0..16 {
            b[192 + g] = (g as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&h(0.25));
        let out = deq(GgmlType::Q6K, &b, 256);
        for (i, &o) in out.iter().enumerate() {
            let want = 0.25 * ((i / 16) as f32 - 8.0) * (code(i) as f32 - 32.0);
            assert_eq!(o, want, "value {i}");
        }
    }

    /// Values gguf-py 0.19 (`gguf.quants.dequantize`) gives for the same LCG blocks (one block each): elements 0,
    /// 37, 100, 255 and the sum. Regenerate with `bench/peers/kquant_check.py`.
    #[test]
    fn k_quants_match_gguf_py_on_random_blocks() {
        let mut q4k = lcg_bytes(144, 7);
        q4k[0..2].copy_from_slice(&h(0.5));
        q4k[2..4].copy_from_slice(&h(0.25));
        let out = deq(GgmlType::Q4K, &q4k, 256);
        let picks = [out[0], out[37], out[100], out[255], out.iter().sum::<f32>()];
        assert_eq!(picks, Q4K_GGUF_PY, "Q4_K");
        let mut q6k = lcg_bytes(210, 11);
        q6k[208..210].copy_from_slice(&h(0.5));
        let out = deq(GgmlType::Q6K, &q6k, 256);
        let picks = [out[0], out[37], out[100], out[255], out.iter().sum::<f32>()];
        assert_eq!(picks, Q6K_GGUF_PY, "Q6_K");
    }

    /// Q4_1, Q5_0, Q5_1 against gguf-py on LCG blocks (d = 0.5, m = -1.25; two blocks each).
    #[test]
    fn legacy_quants_match_gguf_py_on_random_blocks() {
        for (ty, seed, want) in [
            (GgmlType::Q4_1, 3, Q4_1_GGUF_PY),
            (GgmlType::Q5_0, 5, Q5_0_GGUF_PY),
            (GgmlType::Q5_1, 9, Q5_1_GGUF_PY),
        ] {
            let (_, size) = ty.block_geometry();
            let mut bytes = lcg_bytes(2 * size, seed);
            for block in bytes.chunks_mut(size) {
                block[0..2].copy_from_slice(&h(0.5));
                if ty != GgmlType::Q5_0 {
                    block[2..4].copy_from_slice(&h(-1.25));
                }
            }
            let out = deq(ty, &bytes, 64);
            let picks = [out[0], out[17], out[40], out[63], out.iter().sum::<f32>()];
            assert_eq!(picks, want, "{ty}");
        }
    }

    const Q4_1_GGUF_PY: [f32; 5] = [5.75, 1.75, 0.75, 3.75, 144.5];
    const Q5_0_GGUF_PY: [f32; 5] = [-6.0, -1.0, -3.0, 2.0, -50.5];
    const Q5_1_GGUF_PY: [f32; 5] = [7.25, 8.25, 7.25, -1.25, 394.5];
    const Q4K_GGUF_PY: [f32; 5] = [-6.75, 74.25, 86.25, 79.75, 15145.5];
    const Q6K_GGUF_PY: [f32; 5] = [19.5, 1038.5, -49.5, -8.0, 6315.0];

    #[test]
    fn q8_0_and_q4_0_round_trip_within_a_quantization_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        // Q8_0 rounds to the nearest of ±127 steps: half a step. Q4_0 has 8 steps below zero and
        // 7 above (d takes the sign of the extreme value), so the opposite extreme clips to 7·|d|:
        // up to one step.
        for (ty, levels, tolerance) in [(GgmlType::Q8_0, 127.0f32, 0.5), (GgmlType::Q4_0, 8.0, 1.0)]
        {
            let mut bytes = Vec::new();
            quantize(ty, &x, &mut bytes).unwrap();
            assert_eq!(bytes.len(), ty.row_bytes(256).unwrap());
            let y = deq(ty, &bytes, 256);
            let mut worst = 0f32;
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / levels;
                for (a, b) in bx.iter().zip(by) {
                    // Plus the half-precision rounding of d.
                    assert!(
                        (a - b).abs() <= tolerance * step + 1e-3 * amax,
                        "{ty}: {a} vs {b}"
                    );
                    worst = worst.max((a - b).abs() / step);
                }
            }
            assert!(worst > 0.25 * tolerance, "{ty}: the bound is not vacuous");
        }
    }

    #[test]
    fn wrong_lengths_and_types_are_errors() {
        let mut out = vec![0f32; 30];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut out),
            Err(QuantError::PartialBlock { .. })
        ));
        let mut out = vec![0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(QuantError::Length { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::Iq2Xxs, &[], &mut []),
            Err(QuantError::Unsupported(GgmlType::Iq2Xxs))
        );
        assert!(quantize(GgmlType::Q5K, &[0.0; 256], &mut Vec::new()).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 31], &mut Vec::new()).is_err());
    }
}
