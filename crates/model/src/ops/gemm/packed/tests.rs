//! Packing tests: packed rows read back as their source (f32, bf16, stacked parts) or as the file
//! format decodes them (Q8_0, Q4_K), on line-aligned data.

use super::*;

fn matrix(n: usize, k: usize, bf: bool) -> Linear {
    let vals: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.25 - 7.0).collect();
    let data = if bf {
        WeightData::Bf16(vals.iter().map(|&v| bf16::from_f32(v).to_bits()).collect())
    } else {
        WeightData::F32(vals)
    };
    Linear {
        rows: n,
        cols: k,
        data,
    }
}

#[test]
fn q8_0_rows_dequantize_within_half_a_step() {
    for &(n, k) in &[(1, 32), (17, 64), (33, 100)] {
        let w = matrix(n, k, false);
        let p = PackedLinear::quantize_q8_0(&w);
        assert_eq!(p.base() as usize % STEP_BYTES, 0);
        let mut row = vec![0f32; p.cols];
        let mut want = vec![0f32; k];
        for r in 0..n {
            p.row_to_f32(r, &mut row);
            w.row_to_f32(r, &mut want);
            for (g, group) in want.chunks(Q8_GROUP).enumerate() {
                let amax = group.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, &x) in group.iter().enumerate() {
                    let got = row[g * Q8_GROUP + i];
                    assert!(
                        (got - x).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
                        "{got} vs {x}"
                    );
                }
            }
        }
    }
    assert!(PackedLinear::from_q8_0_blocks(2, 33, &[0; 68]).is_none());
    assert!(PackedLinear::from_q8_0_blocks(2, 32, &[0; 67]).is_none());
}

/// Packed Q4_K rows decode to exactly what the file format's dequantizer gives, for every
/// nibble, scale and min pattern (random bytes), including a partial last block of rows.
#[test]
fn q4_k_rows_dequantize_like_the_file_format() {
    let (n, k) = (19, 512);
    let mut bytes =
        crate::test_support::random_bytes(n * k / Q4K_SUPER * Q4K_BLOCK_BYTES, 0x1234_5678);
    for (b, block) in bytes.chunks_exact_mut(Q4K_BLOCK_BYTES).enumerate() {
        block[0..2].copy_from_slice(&f16::from_f32(0.01 + b as f32 * 1e-3).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(0.02 - b as f32 * 1e-4).to_le_bytes());
    }
    let p = PackedLinear::from_q4_k_blocks(n, k, &bytes).expect("whole super-blocks");
    assert_eq!(
        (p.kind(), p.steps(), p.groups()),
        (WeightKind::Q4K, k / 8, k / 32)
    );
    assert_rows_decode_like_the_file(&p, &bytes, crate::gguf::GgmlType::Q4K);
    assert!(PackedLinear::from_q4_k_blocks(2, 320, &[0; 2 * 180]).is_none());
    assert!(PackedLinear::from_q4_k_blocks(2, 256, &[0; 287]).is_none());
}

#[test]
fn rows_round_trip_and_data_is_line_aligned() {
    for bf in [false, true] {
        for &(n, k) in &[(1, 1), (17, 5), (33, 64), (16, 3)] {
            let w = matrix(n, k, bf);
            let p = PackedLinear::pack(&w);
            assert_eq!(p.base() as usize % STEP_BYTES, 0);
            assert_eq!(p.blocks(), n.div_ceil(16));
            let mut row = vec![0f32; k];
            let mut want = vec![0f32; k];
            for r in 0..n {
                p.row_to_f32(r, &mut row);
                w.row_to_f32(r, &mut want);
                assert_eq!(row, want, "n={n} k={k} bf16={bf} row={r}");
            }
        }
    }
}

/// Stacked parts (a fused q/k/v) pack like their concatenation, rows crossing 16-row blocks
/// and parts stored in the other type converted to the first part's.
#[test]
fn stacked_parts_pack_like_their_concatenation() {
    for first_bf16 in [false, true] {
        // Distinct values in every part (matrix() alone repeats them from part to part).
        let part = |n: usize, bf: bool, offset: f32| {
            let mut m = matrix(n, 7, bf);
            match &mut m.data {
                WeightData::F32(v) => v.iter_mut().for_each(|x| *x += offset),
                WeightData::Bf16(v) => v.iter_mut().for_each(|x| {
                    *x = bf16::from_f32(bf16::from_bits(*x).to_f32() + offset).to_bits()
                }),
            }
            m
        };
        let parts = [
            part(5, first_bf16, 100.0),
            part(20, !first_bf16, 200.0),
            part(9, first_bf16, 300.0),
        ];
        let p = PackedLinear::pack_parts(&parts);
        assert_eq!((p.rows, p.cols), (34, 7));
        assert_eq!(p.kind() == WeightKind::Bf16, first_bf16);
        let mut got = vec![0f32; 7];
        let mut want = vec![0f32; 7];
        let mut r = 0;
        for part in &parts {
            for pr in 0..part.rows {
                p.row_to_f32(r, &mut got);
                part.row_to_f32(pr, &mut want);
                if first_bf16 {
                    // The f32 part was rounded to bf16.
                    want.iter_mut()
                        .for_each(|v| *v = bf16::from_f32(*v).to_f32());
                }
                assert_eq!(got, want, "row {r}, first part bf16: {first_bf16}");
                r += 1;
            }
        }
    }
}
