//! Kernel-level comparison of the quantized weight kinds on the same shapes, interleaved in one
//! process (this machine's memory bandwidth drifts faster than separate runs can resolve): per
//! repetition one pass of each kind over TinyLlama-1.1B's per-layer matrices (fused q/k/v, o,
//! fused gate/up, down) × `LAYERS` (default 22), with `M` activation rows (1: decode, the stream
//! kernels; larger: prefill tiles). Reports each kind's median pass time, bytes read per second
//! and, for `M` > 4, GFLOP/s. Q4_K and Q6_K weights are random file blocks (speed does not depend
//! on the values), Q8_0 is quantized from random values.
//!
//! `cargo run --release -p pagoda-model --example quant_kernels -- [M] [REPS]`

use std::time::Instant;

use pagoda_model::ops::gemm::{matmul, PackedLinear, WeightKind};
use pagoda_model::test_support::random_bytes;
use pagoda_model::weights::{Linear, WeightData};

/// ggml blocks of `block_bytes` per 256 weights with a small f16 `d` at `d_at` (and `dmin` after
/// it for Q4_K), so the products stay finite.
fn random_k_blocks(n: usize, k: usize, block_bytes: usize, d_at: &[usize]) -> Vec<u8> {
    let mut bytes = random_bytes(n * k / 256 * block_bytes, (n * k) as u32);
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &at in d_at {
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(1e-4).to_le_bytes());
        }
    }
    bytes
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let reps: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(15);
    let layers: usize = std::env::var("LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(22);
    let shapes = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632)];
    let mut kinds: Vec<(WeightKind, Vec<PackedLinear>)> = Vec::new();
    for kind in [WeightKind::Q8_0, WeightKind::Q6K, WeightKind::Q4K] {
        let mats = (0..layers)
            .flat_map(|_| shapes)
            .map(|(n, k)| match kind {
                WeightKind::Q6K => {
                    PackedLinear::from_q6_k_blocks(n, k, &random_k_blocks(n, k, 210, &[208]))
                        .expect("whole super-blocks")
                }
                WeightKind::Q4K => {
                    PackedLinear::from_q4_k_blocks(n, k, &random_k_blocks(n, k, 144, &[0, 2]))
                        .expect("whole super-blocks")
                }
                _ => PackedLinear::quantize_q8_0(&Linear {
                    rows: n,
                    cols: k,
                    data: WeightData::F32(
                        random_bytes(n * k, 7)
                            .iter()
                            .map(|&b| b as f32 / 255.0 - 0.5)
                            .collect(),
                    ),
                }),
            })
            .collect();
        kinds.push((kind, mats));
    }
    let x: Vec<f32> = random_bytes(m * 5632, 3)
        .iter()
        .map(|&b| b as f32 / 255.0 - 0.5)
        .collect();
    let mut out = vec![0f32; m * 11264];
    let mut times = vec![Vec::new(); kinds.len()];
    for _ in 0..reps {
        for (t, (_, mats)) in times.iter_mut().zip(&kinds) {
            let start = Instant::now();
            for w in mats {
                matmul(&x[..m * w.cols], m, w, &mut out[..m * w.rows]);
            }
            t.push(start.elapsed().as_secs_f64());
        }
    }
    for (t, (kind, mats)) in times.iter_mut().zip(&kinds) {
        t.sort_by(f64::total_cmp);
        let median = t[t.len() / 2];
        let bytes: usize = mats.iter().map(|w| w.size_bytes()).sum();
        let flops: usize = mats.iter().map(|w| 2 * m * w.rows * w.cols).sum();
        println!(
            "{} M={m}: {:.1} MB per pass, median {:.2} ms = {:.1} GB/s, {:.1} GFLOP/s",
            kind.name(),
            bytes as f64 / 1e6,
            median * 1e3,
            bytes as f64 / median / 1e9,
            flops as f64 / median / 1e9
        );
    }
}
