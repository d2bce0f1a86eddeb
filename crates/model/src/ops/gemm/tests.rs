use half::bf16;

use super::packed::random_q6_k_blocks;
use super::*;
use crate::weights::{Linear, WeightData};

fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

fn pseudo(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn assert_close(got: &[f32], want: &[f32], k: usize, what: &str) {
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (k as f32).sqrt() * (1.0 + y.abs());
        assert!((x - y).abs() <= tol, "{what}: index {i}: {x} vs {y}");
    }
}

fn supported_isas() -> Vec<Isa> {
    let best = best_isa();
    let avx2 = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16]
        .into_iter()
        .filter(|&i| match i {
            Isa::Portable => true,
            Isa::Avx2 => avx2,
            Isa::Avx512 => best.has_avx512(),
            Isa::Avx512Bf16 => best == Isa::Avx512Bf16,
        })
        .collect()
}

/// Every regime (1–4 rows, 5–12, tiles split over row blocks), every tile tail (n not a multiple
/// of 16 or of a panel, odd k) and both storage types, on every kernel family this CPU has.
#[test]
fn every_kernel_matches_naive() {
    let shapes = [
        (1, 7, 5),
        (1, 64, 576),
        (1, 200, 576),
        (3, 300, 100),
        (2, 33, 33),
        (3, 9, 16),
        (4, 100, 172),
        (5, 33, 33),
        (12, 48, 64),
        (13, 70, 65),
        (16, 130, 100),
        (40, 300, 200),
        (250, 40, 24),
    ];
    for isa in supported_isas() {
        for &(m, n, k) in &shapes {
            let x = pseudo(m * k, 1);
            let w32 = pseudo(n * k, 2);
            let what = format!("{isa:?} f32 m={m} n={n} k={k}");
            let packed = PackedLinear::pack(&Linear {
                rows: n,
                cols: k,
                data: WeightData::F32(w32.clone()),
            });
            let mut out = vec![f32::NAN; m * n];
            matmul_with(isa, &x, m, &packed, &mut out);
            assert_close(&out, &naive(&x, m, &w32, n, k), k, &what);

            let bits: Vec<u16> = w32.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let packed = PackedLinear::pack(&Linear {
                rows: n,
                cols: k,
                data: WeightData::Bf16(bits),
            });
            let mut out = vec![f32::NAN; m * n];
            matmul_with(isa, &x, m, &packed, &mut out);
            let what = format!("{isa:?} bf16 m={m} n={n} k={k}");
            // bf16 weights meet activations rounded to bf16, products summed in f32.
            let want = naive(&round_bf16(&x), m, &round_bf16(&w32), n, k);
            assert_close(&out, &want, k, &what);
        }
    }
}

/// Q8_0 against a reference that quantizes the same way (weights and activations per 32-group,
/// f16 scales) and sums exactly in f64: the kernels may differ only by f32 rounding.
#[test]
fn q8_0_kernels_match_the_quantized_reference() {
    let shapes = [
        (1, 7, 32),
        (1, 200, 576),
        (2, 33, 64),
        (3, 300, 100),
        (4, 40, 172),
        (5, 33, 96),
        (13, 70, 64),
        (40, 300, 200),
    ];
    for isa in supported_isas() {
        for &(m, n, k) in &shapes {
            let x = pseudo(m * k, 5);
            let w = pseudo(n * k, 6);
            let packed = PackedLinear::quantize_q8_0(&Linear {
                rows: n,
                cols: k,
                data: WeightData::F32(w.clone()),
            });
            let mut out = vec![f32::NAN; m * n];
            matmul_with(isa, &x, m, &packed, &mut out);
            let want = quantized_reference(&packed, &x, m);
            let what = format!("{isa:?} q8_0 m={m} n={n} k={k}");
            assert_close(&out, &want, k, &what);
            // And the quantized product stays near the exact one.
            let exact = naive(&x, m, &w, n, k);
            for (g, e) in out.iter().zip(&exact) {
                assert!(
                    (g - e).abs() <= 0.02 * (k as f32).sqrt(),
                    "{what}: {g} vs exact {e}"
                );
            }
        }
    }
}

/// Dequantized weights (`row_to_f32`) times activations quantized as the kernels do it, summed
/// in f64.
fn quantized_reference(packed: &PackedLinear, x: &[f32], m: usize) -> Vec<f32> {
    let (n, k) = (packed.rows, packed.cols);
    let groups = k.div_ceil(32);
    let mut want = vec![0f32; m * n];
    let mut wrow = vec![0f32; k];
    for i in 0..m {
        let mut q = vec![0i8; groups * 32];
        let mut scales = vec![0f32; groups];
        let mut sums = vec![0i32; groups];
        quantize_row_q8(
            Isa::Portable,
            &x[i * k..(i + 1) * k],
            &mut q,
            &mut scales,
            &mut sums,
        );
        for j in 0..n {
            packed.row_to_f32(j, &mut wrow);
            want[i * n + j] = (0..k)
                .map(|t| wrow[t] as f64 * q[t] as f64 * scales[t / 32] as f64)
                .sum::<f64>() as f32;
        }
    }
    want
}

/// ggml `block_q4_K` rows of random content: every nibble, scale and min pattern, with `d` and
/// `dmin` of a trained model's magnitude.
fn random_q4_k_blocks(n: usize, k: usize, seed: u32) -> Vec<u8> {
    let bytes = pseudo(n * k / 256 * 144, seed);
    let mut out: Vec<u8> = bytes.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    for (b, block) in out.chunks_exact_mut(144).enumerate() {
        let d = half::f16::from_f32(0.001 + 0.0005 * (b % 7) as f32);
        let dmin = half::f16::from_f32(0.002 + 0.0003 * (b % 5) as f32);
        block[0..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
    }
    out
}

/// Matrices of whole 256-weight super-blocks (`pack(n, k)`) against the quantized reference on
/// every kernel family, over decode (stream) and prefill (tile) row counts and odd row counts.
fn k_quant_kernels_match_the_quantized_reference(
    name: &str,
    pack: impl Fn(usize, usize) -> PackedLinear,
) {
    let shapes = [
        (1, 7, 256),
        (1, 200, 512),
        (2, 33, 256),
        (3, 300, 768),
        (4, 40, 256),
        (5, 33, 512),
        (13, 70, 256),
        (40, 100, 512),
    ];
    for isa in supported_isas() {
        for &(m, n, k) in &shapes {
            let x = pseudo(m * k, 15);
            let packed = pack(n, k);
            let mut out = vec![f32::NAN; m * n];
            matmul_with(isa, &x, m, &packed, &mut out);
            let want = quantized_reference(&packed, &x, m);
            assert_close(&out, &want, k, &format!("{isa:?} {name} m={m} n={n} k={k}"));
        }
    }
}

/// Q4_K (packed from the file format): the nibble unpacking, the per-group scales and mins and
/// the super-block records.
#[test]
fn q4_k_kernels_match_the_quantized_reference() {
    k_quant_kernels_match_the_quantized_reference("q4_k", |n, k| {
        PackedLinear::from_q4_k_blocks(n, k, &random_q4_k_blocks(n, k, 16))
            .expect("whole super-blocks")
    });
}

/// Q6_K (packed from the file format): the 6-bit values rebuilt from nibble and high-bit lines
/// (in the stream kernel, and once per panel for the tiles), the per-16 scales and the `−32`
/// offset.
#[test]
fn q6_k_kernels_match_the_quantized_reference() {
    k_quant_kernels_match_the_quantized_reference("q6_k", |n, k| {
        PackedLinear::from_q6_k_blocks(n, k, &random_q6_k_blocks(n, k, 18))
            .expect("whole super-blocks")
    });
}

/// `--quantization q4_k`: the product stays near the exact one (4-bit weights), and matrices
/// whose `k` is not a multiple of 256 fall back to Q8_0.
#[test]
fn q4_k_quantized_products_stay_near_exact() {
    for &(m, n, k) in &[(1, 64, 256), (3, 48, 512), (20, 40, 768)] {
        let (x, w) = (pseudo(m * k, 21), pseudo(n * k, 22));
        let linear = Linear {
            rows: n,
            cols: k,
            data: WeightData::F32(w.clone()),
        };
        let packed = PackedLinear::quantize_q4_k(&linear);
        assert_eq!(packed.kind(), WeightKind::Q4K);
        let mut out = vec![f32::NAN; m * n];
        matmul(&x, m, &packed, &mut out);
        let exact = naive(&x, m, &w, n, k);
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (sum, count) = v.fold((0f64, 0usize), |(s, c), e| (s + (e * e) as f64, c + 1));
            (sum / count as f64).sqrt()
        };
        let err = rms(&mut out.iter().zip(&exact).map(|(g, e)| g - e));
        let scale = rms(&mut exact.iter().copied());
        // Uniform weights in [-1, 1] on 16 levels per sub-block: about 4% relative error.
        assert!(
            err <= 0.08 * scale,
            "m={m} n={n} k={k}: rms error {err} vs {scale}"
        );
    }
    let odd = Linear {
        rows: 16,
        cols: 576,
        data: WeightData::F32(pseudo(16 * 576, 23)),
    };
    assert_eq!(PackedLinear::quantize_q4_k(&odd).kind(), WeightKind::Q8_0);
}

/// The vector activation quantizer gives exactly the portable one's values, scales and sums.
#[test]
fn q8_0_activation_quantizers_agree() {
    for k in [32, 64, 100, 576] {
        let mut x = pseudo(k, 9);
        x[3] = 0.0;
        if k >= 64 {
            // A group of zeros and a group with exact ties (x · inv = n + 0.5).
            x[32..64].fill(0.0);
        }
        let groups = k.div_ceil(32);
        let reference = {
            let (mut q, mut sc, mut su) =
                (vec![0i8; groups * 32], vec![0f32; groups], vec![0; groups]);
            quantize_row_q8(Isa::Portable, &x, &mut q, &mut sc, &mut su);
            (q, sc, su)
        };
        for isa in supported_isas() {
            let (mut q, mut sc, mut su) =
                (vec![0i8; groups * 32], vec![0f32; groups], vec![0; groups]);
            quantize_row_q8(isa, &x, &mut q, &mut sc, &mut su);
            assert_eq!((q, sc, su), reference.clone(), "{isa:?} k={k}");
        }
    }
}

#[test]
fn bf16_rounding_matches_half_including_ties_and_nan() {
    let mut src = pseudo(100, 7);
    src.extend([
        f32::NAN,
        f32::INFINITY,
        -0.0,
        f32::from_bits(0x3f80_8000), // a tie: rounds to even
        f32::from_bits(0x3f81_8000),
        f32::MAX,
    ]);
    for isa in supported_isas() {
        let mut dst = vec![0u16; src.len()];
        round_to_bf16(isa, &src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            let want = bf16::from_f32(*s);
            if s.is_nan() {
                assert!(bf16::from_bits(*d).is_nan(), "{isa:?}");
            } else {
                assert_eq!(*d, want.to_bits(), "{isa:?}: {s}");
            }
        }
    }
}

/// Matrices moved into a shared arena give bit-identical products (f32, bf16, Q8_0, Q4_K, Q6_K,
/// with odd shapes so ranges end mid-line); one that does not fit is refused and stays usable.
#[test]
fn matrices_moved_into_an_arena_give_identical_products() {
    use crate::hugepages::HugeArena;
    use std::sync::Arc;

    let shapes = [(37, 70), (64, 576), (200, 33), (21, 512)];
    let mut mats = Vec::new();
    for (i, &(n, k)) in shapes.iter().enumerate() {
        let values = pseudo(n * k, 40 + i as u32);
        let f32_linear = Linear {
            rows: n,
            cols: k,
            data: WeightData::F32(values.clone()),
        };
        let bf16_linear = Linear {
            rows: n,
            cols: k,
            data: WeightData::Bf16(
                values
                    .iter()
                    .map(|&v| bf16::from_f32(v).to_bits())
                    .collect(),
            ),
        };
        mats.push(PackedLinear::pack(&f32_linear));
        mats.push(PackedLinear::pack(&bf16_linear));
        mats.push(PackedLinear::quantize_q8_0(&f32_linear));
        if k.is_multiple_of(256) {
            mats.push(PackedLinear::from_q4_k_blocks(n, k, &random_q4_k_blocks(n, k, 3)).unwrap());
            mats.push(PackedLinear::from_q6_k_blocks(n, k, &random_q6_k_blocks(n, k, 4)).unwrap());
        }
    }
    let products = |mats: &[PackedLinear]| -> Vec<Vec<f32>> {
        mats.iter()
            .flat_map(|w| {
                [1usize, 9].map(|m| {
                    let x = pseudo(m * w.cols, 7);
                    let mut out = vec![0f32; m * w.rows];
                    matmul(&x, m, w, &mut out);
                    out
                })
            })
            .collect()
    };
    let before = products(&mats);
    let arena = Arc::new(HugeArena::new(mats.iter().map(|w| w.arena_bytes()).sum()));
    for w in &mut mats {
        assert!(w.move_into(&arena), "the arena was sized for all of them");
    }
    assert_eq!(products(&mats), before);

    let mut extra = PackedLinear::pack(&Linear {
        rows: 16,
        cols: 1 << 17,
        data: WeightData::F32(pseudo(16 << 17, 3)),
    });
    let full = Arc::new(HugeArena::new(1));
    assert!(!extra.move_into(&full), "8 MiB do not fit a 2 MiB arena");
    let x = pseudo(1 << 17, 5);
    let mut out = vec![0f32; 16];
    matmul(&x, 1, &extra, &mut out);
    assert!(out.iter().all(|v| v.is_finite()));
}
