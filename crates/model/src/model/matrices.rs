//! Builds one packed matrix of the forward pass from a weight source: the fused projections
//! (q/k/v, gate/up) stack several tensors' rows, and a GGUF file's quantized tensors go to the
//! quantized kernels as they are stored (Q8_0, Q4_K, Q6_K) instead of through bf16.
//!
//! When the stacked tensors are stored differently (a Q4_K_M file keeps some `attn_v` in Q6_K
//! beside Q4_K `attn_q`/`attn_k`), the parts not in Q8_0 are requantized to it so the fused matrix
//! has one format: Q8_0 keeps them within half a Q8_0 step of their values.

use std::borrow::Cow;

use crate::error::{ModelError, Result};
use crate::gguf::{quants, GgmlType};
use crate::ops::gemm::{PackedLinear, WeightKind};
use crate::weights::{QuantizedBlocks, WeightDtype, WeightSource};

/// The matrix stacking the rows of `parts` (name, rows), each with `cols` columns.
pub(super) fn load_matrix(
    source: &dyn WeightSource,
    parts: &[(String, usize)],
    cols: usize,
    dtype: WeightDtype,
) -> Result<PackedLinear> {
    let rows: usize = parts.iter().map(|p| p.1).sum();
    let mut blocks = Vec::with_capacity(parts.len());
    for (name, r) in parts {
        match source.quantized_blocks(name, *r, cols)? {
            Some(b) => blocks.push((name, *r, b)),
            None => break,
        }
    }
    if blocks.len() < parts.len() {
        let linears = parts
            .iter()
            .map(|(name, r)| source.linear(name, *r, cols, dtype))
            .collect::<Result<Vec<_>>>()?;
        return Ok(PackedLinear::pack_parts(&linears));
    }
    let first = blocks.first().map_or(WeightKind::Q8_0, |b| b.2.kind);
    let kind = if blocks.iter().all(|b| b.2.kind == first) {
        first
    } else {
        WeightKind::Q8_0
    };
    // One part in its own format is packed straight from the source (the mapped file).
    let bytes: Cow<'_, [u8]> = match blocks.as_slice() {
        [(_, _, b)] if b.kind == kind => Cow::Borrowed(&b.bytes),
        _ => {
            let mut bytes = Vec::new();
            for (name, r, b) in &blocks {
                if b.kind == kind {
                    bytes.extend_from_slice(&b.bytes);
                } else {
                    bytes.extend(to_q8_0(name, *r, cols, b)?);
                }
            }
            Cow::Owned(bytes)
        }
    };
    let packed = match kind {
        WeightKind::Q4K => PackedLinear::from_q4_k_blocks(rows, cols, &bytes),
        WeightKind::Q6K => PackedLinear::from_q6_k_blocks(rows, cols, &bytes),
        _ => PackedLinear::from_q8_0_blocks(rows, cols, &bytes),
    };
    packed.ok_or_else(|| {
        ModelError::InvalidOption(format!(
            "{}: quantized blocks do not match a [{rows}, {cols}] matrix",
            parts[0].0
        ))
    })
}

/// Q4_K or Q6_K rows requantized to Q8_0 rows (through f32).
fn to_q8_0(name: &str, rows: usize, cols: usize, b: &QuantizedBlocks) -> Result<Vec<u8>> {
    let ty = match b.kind {
        WeightKind::Q6K => GgmlType::Q6K,
        _ => GgmlType::Q4K,
    };
    let row_in = b.bytes.len() / rows.max(1);
    quants::rows_to_q8_0(ty, rows, cols, |r| &b.bytes[r * row_in..(r + 1) * row_in])
        .map_err(|e| ModelError::InvalidOption(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use crate::weights::Linear;

    /// Serves quantized tensors: `a` in Q4_K, `b` in Q8_0, `c` in Q6_K (as a Q4_K_M file's q and
    /// v).
    struct Mixed {
        a: Vec<u8>,
        b: Vec<u8>,
        c: Vec<u8>,
    }

    impl WeightSource for Mixed {
        fn contains(&self, _: &str) -> bool {
            true
        }
        fn stored_dtype(&self, _: &str) -> Result<WeightDtype> {
            Ok(WeightDtype::Bf16)
        }
        fn vector_f32(&self, _: &str, _: &[usize]) -> Result<Vec<f32>> {
            unreachable!("no vectors here")
        }
        fn linear(&self, _: &str, _: usize, _: usize, _: WeightDtype) -> Result<Linear> {
            unreachable!("every part is quantized")
        }
        fn quantized_blocks(
            &self,
            name: &str,
            _: usize,
            _: usize,
        ) -> Result<Option<QuantizedBlocks<'_>>> {
            Ok(Some(match name {
                "a" => QuantizedBlocks {
                    kind: WeightKind::Q4K,
                    bytes: Cow::Borrowed(&self.a),
                },
                "c" => QuantizedBlocks {
                    kind: WeightKind::Q6K,
                    bytes: Cow::Borrowed(&self.c),
                },
                _ => QuantizedBlocks {
                    kind: WeightKind::Q8_0,
                    bytes: Cow::Borrowed(&self.b),
                },
            }))
        }
    }

    /// `got` (a row requantized to Q8_0) is within half a Q8_0 step of `want` in every group
    /// of 32 (plus the f16 rounding of the scale).
    fn assert_within_half_a_q8_0_step(got: &[f32], want: &[f32]) {
        for (group_got, group_want) in got.chunks(32).zip(want.chunks(32)) {
            let amax = group_want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (g, w) in group_got.iter().zip(group_want) {
                assert!(
                    (g - w).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
                    "{g} vs {w}"
                );
            }
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Stacked parts of one format stay in it; mixed parts become Q8_0, the Q4_K rows within half
    /// a Q8_0 step of their Q4_K values and the Q8_0 rows exactly as stored.
    #[test]
    fn mixed_quantized_parts_stack_as_q8_0() {
        let (k, rows_a, rows_b) = (256, 20, 7);
        let (va, vb) = (values(rows_a * k, 1), values(rows_b * k, 2));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quants::quantize(GgmlType::Q4K, &va, &mut a).unwrap();
        quants::quantize(GgmlType::Q8_0, &vb, &mut b).unwrap();
        let source = Mixed {
            a,
            b,
            c: Vec::new(),
        };
        let parts = [("a".to_string(), rows_a), ("b".to_string(), rows_b)];
        let mixed = load_matrix(&source, &parts, k, WeightDtype::Bf16).unwrap();
        assert_eq!(
            (mixed.kind(), mixed.rows),
            (WeightKind::Q8_0, rows_a + rows_b)
        );
        let alone = load_matrix(&source, &parts[..1], k, WeightDtype::Bf16).unwrap();
        assert_eq!(alone.kind(), WeightKind::Q4K);

        let (mut got, mut want) = (vec![0f32; k], vec![0f32; k]);
        for r in 0..rows_a {
            mixed.row_to_f32(r, &mut got);
            alone.row_to_f32(r, &mut want);
            assert_within_half_a_q8_0_step(&got, &want);
        }
        for r in 0..rows_b {
            mixed.row_to_f32(rows_a + r, &mut got);
            quants::dequantize(GgmlType::Q8_0, &source.b[r * 272..(r + 1) * 272], &mut want)
                .unwrap();
            assert_eq!(got, want, "Q8_0 row {r}");
        }
    }

    /// Q6_K parts stay Q6_K (the file's numbers exactly); beside Q4_K parts they become Q8_0,
    /// within half a Q8_0 step of their values.
    #[test]
    fn q6_k_parts_stay_q6_k_and_mixed_with_q4_k_become_q8_0() {
        let (k, rows_a, rows_c) = (256, 5, 9);
        let (va, vc) = (values(rows_a * k, 3), values(rows_c * k, 4));
        let (mut a, mut c) = (Vec::new(), Vec::new());
        quants::quantize(GgmlType::Q4K, &va, &mut a).unwrap();
        quants::quantize(GgmlType::Q6K, &vc, &mut c).unwrap();
        let source = Mixed {
            a,
            b: Vec::new(),
            c,
        };
        let alone =
            load_matrix(&source, &[("c".to_string(), rows_c)], k, WeightDtype::Bf16).unwrap();
        assert_eq!(alone.kind(), WeightKind::Q6K);
        let parts = [("a".to_string(), rows_a), ("c".to_string(), rows_c)];
        let mixed = load_matrix(&source, &parts, k, WeightDtype::Bf16).unwrap();
        assert_eq!(mixed.kind(), WeightKind::Q8_0);
        let (mut got, mut want, mut file) = (vec![0f32; k], vec![0f32; k], vec![0f32; k]);
        for r in 0..rows_c {
            alone.row_to_f32(r, &mut want);
            quants::dequantize(GgmlType::Q6K, &source.c[r * 210..(r + 1) * 210], &mut file)
                .unwrap();
            assert_eq!(want, file, "Q6_K row {r} as stored");
            mixed.row_to_f32(rows_a + r, &mut got);
            assert_within_half_a_q8_0_step(&got, &want);
        }
    }
}
