//! Q6_K in pagoda's 16-row blocks (see the parent module for the blocks and the Q4_K layout it
//! extends).
//!
//! ggml's `block_q6_K`: super-blocks of 256 weights with an f16 `d` and, per 16 weights, a signed
//! 8-bit scale; weight = `d·sc·(q − 32)` with `q` in 0..64. Per 32-weight group six steps: four
//! *nibble lines* laid out as Q4_K's (byte `i` of row `r` in line `s` holds the low four bits of
//! `k = 4s + i` and, in its high nibble, those of `k = 16 + 4s + i`), then two *high-bit lines*:
//! byte `i` of row `r` in high-bit line `h` holds the top two bits of the four values of nibble
//! lines `2h` (bits 0–1: low nibble's value, 2–3: high nibble's) and `2h + 1` (bits 4–5, 6–7). A
//! kernel rebuilds each value with a shift and a mask per line (16-bit lane shifts do: the bits
//! that cross a byte are masked away). The low nibbles of a group are its first 16-weight
//! sub-block, the high nibbles its second, so each `vpdpbusd` chain has one scale. Per (block,
//! super-block) a 320-byte record holds the 16 rows' `d` (f16) and, from [`Q6K_SCALES_AT`], the
//! 16 sub-blocks' scales (one signed byte per row): exactly the file's numbers, unpacked.

use super::{PackedData, PackedLinear, BLOCK_ROWS, Q8_GROUP};

/// Weights per Q6_K super-block (one `d` each).
pub const Q6K_SUPER: usize = 256;
/// Bytes of one ggml `block_q6_K`: 128 `ql`, 64 `qh`, 16 scales, an f16 `d`.
pub const Q6K_BLOCK_BYTES: usize = 210;
/// Bytes of one (block, super-block) record: 16 `d` (f16), then 16 × 16 scales (i8).
pub const Q6K_META_BYTES: usize = 320;
pub const Q6K_SCALES_AT: usize = 64;
/// Steps (lines) per 32-weight group: four nibble lines, two high-bit lines.
pub const Q6K_STEPS: usize = 6;

impl PackedLinear {
    /// Packs ggml `block_q6_K` rows (`cols / 256` blocks of 210 bytes per row, row-major), as a
    /// GGUF file stores them. `None` when `cols` is not a multiple of 256 or the bytes do not match.
    pub fn from_q6_k_blocks(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let mut levels = [0u8; Q6K_SUPER];
        let (q, meta) = super::pack_k_quant_blocks(
            (rows, cols, bytes),
            (Q6K_BLOCK_BYTES, Q6K_META_BYTES, Q6K_STEPS * 64),
            |src, rec, lines, lane| {
                rec[lane * 2..lane * 2 + 2].copy_from_slice(&src[208..210]);
                for (j, &sc) in src[192..208].iter().enumerate() {
                    rec[Q6K_SCALES_AT + j * BLOCK_ROWS + lane] = sc;
                }
                crate::gguf::quants::q6_k_levels(src, &mut levels);
                for (v, group) in levels
                    .chunks_exact(Q8_GROUP)
                    .zip(lines.chunks_exact_mut(Q6K_STEPS * 64))
                {
                    for i in 0..4 {
                        for s in 0..4 {
                            let (lo, hi) = (v[4 * s + i], v[16 + 4 * s + i]);
                            let at = s * 64 + lane * 4 + i;
                            group[at] = (lo & 0x0F) | ((hi & 0x0F) << 4);
                            let bits = ((lo >> 4) | ((hi >> 4) << 2)) << (4 * (s % 2));
                            group[(4 + s / 2) * 64 + lane * 4 + i] |= bits;
                        }
                    }
                }
            },
        )?;
        Some(Self {
            rows,
            cols,
            data: PackedData::Q6K { q, meta },
        })
    }
}

/// Weight `i` of the row in lane `lane` of block `b` (`groups` and `supers` per row).
pub(super) fn weight(
    q: &[u8],
    meta: &[u8],
    (b, lane): (usize, usize),
    (groups, supers): (usize, usize),
    i: usize,
) -> f32 {
    let (g, within) = (i / Q8_GROUP, i % Q8_GROUP);
    let (sb, j) = (g / 8, g % 8);
    let rec = (b * supers + sb) * Q6K_META_BYTES;
    let d = half::f16::from_le_bytes([meta[rec + lane * 2], meta[rec + lane * 2 + 1]]).to_f32();
    let sc = meta[rec + Q6K_SCALES_AT + (2 * j + within / 16) * BLOCK_ROWS + lane] as i8;
    let (s, c, high) = (within % 16 / 4, within % 4, within >= 16);
    let base = (b * groups + g) * Q6K_STEPS * 64 + lane * 4 + c;
    let nibble = if high {
        q[base + s * 64] >> 4
    } else {
        q[base + s * 64] & 0x0F
    };
    let bits = q[base + (4 + s / 2) * 64] >> (4 * (s % 2) + 2 * high as usize) & 3;
    d * sc as f32 * ((nibble | bits << 4) as i32 - 32) as f32
}

/// ggml `block_q6_K` rows of random content (every level and scale pattern) with `d` of a
/// trained model's magnitude, for tests.
#[cfg(test)]
pub(crate) fn random_q6_k_blocks(n: usize, k: usize, seed: u32) -> Vec<u8> {
    let mut bytes = crate::test_support::random_bytes(n * k / Q6K_SUPER * Q6K_BLOCK_BYTES, seed);
    for (b, block) in bytes.chunks_exact_mut(Q6K_BLOCK_BYTES).enumerate() {
        let d = half::f16::from_f32(1e-4 + 2e-5 * (b % 7) as f32);
        block[208..210].copy_from_slice(&d.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::ops::gemm::WeightKind;

    /// Packed Q6_K rows decode to exactly what the file format's dequantizer gives, including a
    /// partial last block of rows.
    #[test]
    fn q6_k_rows_dequantize_like_the_file_format() {
        let (n, k) = (19, 512);
        let bytes = random_q6_k_blocks(n, k, 0x1234_5678);
        let p = PackedLinear::from_q6_k_blocks(n, k, &bytes).expect("whole super-blocks");
        assert_eq!(
            (p.kind(), p.steps(), p.groups()),
            (WeightKind::Q6K, k / 32 * Q6K_STEPS, k / 32)
        );
        super::super::assert_rows_decode_like_the_file(&p, &bytes, GgmlType::Q6K);
        assert!(PackedLinear::from_q6_k_blocks(2, 320, &[0; 2 * 262]).is_none());
        assert!(PackedLinear::from_q6_k_blocks(2, 256, &[0; 419]).is_none());
    }
}
