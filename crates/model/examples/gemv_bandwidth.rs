//! Kernel-level measurement of the decode matmul: streams the weight matrices of the
//! `smollm2-135m` shape once per "token" with one activation row (M = 1) and reports the weight
//! bytes read per second, next to the bandwidth probe run in the same process, with the matrices
//! in one huge-page arena (as the runner keeps them) and, for comparison, allocated one by one.
//!
//! `cargo run --release -p pagoda-model --example gemv_bandwidth -- [bf16|f32|q8_0] [rows]`
//! (`SPLIT=N` in the environment: one large matrix cut into N instead of the model's shapes;
//! `ISA=portable|avx2|avx512` forces a kernel family this CPU has; `LAYERS=n` takes n layers and
//! no head, e.g. 2 to measure the kernels with the weights in cache)

use std::sync::Arc;
use std::time::Instant;

use pagoda_model::bandwidth::measure_read_bandwidth;
use pagoda_model::hugepages::HugeArena;
use pagoda_model::ops::gemm::{best_isa, matmul_with, Isa, PackedLinear};
use pagoda_model::weights::{Linear, WeightData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map_or("bf16", |a| a.as_str()).to_string();
    let bf16 = kind != "f32";
    let m: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
    // (rows, cols) of one layer's fused matrices, ×30 layers, plus the tied lm_head.
    let mut shapes = Vec::new();
    let layers: usize = std::env::var("LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for _ in 0..layers {
        shapes.extend([(960, 576), (576, 576), (3072, 576), (576, 1536)]);
    }
    if layers == 30 {
        shapes.push((49152, 576));
    }
    // SPLIT=N: the same bytes as N equal matrices instead (per-matrix overhead).
    if let Some(parts) = std::env::var("SPLIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        shapes = vec![(49152 * 4 / parts.max(1), 576); parts.max(1)];
    }
    let mats: Vec<PackedLinear> = shapes
        .iter()
        .map(|&(rows, cols)| {
            let data = if bf16 {
                WeightData::Bf16(
                    (0..rows * cols)
                        .map(|i| (0x3c00 + (i % 97)) as u16)
                        .collect(),
                )
            } else {
                WeightData::F32((0..rows * cols).map(|i| (i % 97) as f32 * 1e-3).collect())
            };
            let w = Linear { rows, cols, data };
            if kind == "q8_0" {
                PackedLinear::quantize_q8_0(&w)
            } else {
                PackedLinear::pack(&w)
            }
        })
        .collect();
    let bytes: usize = mats.iter().map(|w| w.size_bytes()).sum();
    let flops: usize = mats.iter().map(|w| 2 * m * w.rows * w.cols).sum();
    let x = vec![0.5f32; m * 1536];
    let mut out = vec![0f32; m * 49152 * 4];
    let isa = match std::env::var("ISA").as_deref() {
        Ok("portable") => Isa::Portable,
        Ok("avx2") => Isa::Avx2,
        Ok("avx512") => Isa::Avx512,
        _ => best_isa(),
    };
    let pass = |mats: &[PackedLinear], out: &mut [f32]| {
        let mut best = f64::INFINITY;
        for _ in 0..if m > 64 { 3 } else { 50 } {
            let start = Instant::now();
            for w in mats {
                matmul_with(isa, &x[..m * w.cols], m, w, &mut out[..m * w.rows]);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        best
    };
    // The matrices as allocated one by one, then moved into one huge-page arena (as the model
    // runner does), measured back to back.
    let separate = pass(&mats, &mut out);
    let mut mats = mats;
    let arena = Arc::new(HugeArena::new(mats.iter().map(|w| w.arena_bytes()).sum()));
    for w in &mut mats {
        assert!(w.move_into(&arena));
    }
    let best = pass(&mats, &mut out);
    let probe = measure_read_bandwidth(1 << 30, 5);
    println!(
        "{} {isa:?} M={m}: {:.1} MB per pass, best {:.2} ms = {:.1} GB/s ({:.1} GFLOP/s); probe {:.1} GB/s; ratio {:.2}; separately allocated: {:.1} GB/s",
        kind,
        bytes as f64 / 1e6,
        best * 1e3,
        bytes as f64 / best / 1e9,
        flops as f64 / best / 1e9,
        probe.best_gb_s,
        bytes as f64 / best / 1e9 / probe.best_gb_s,
        bytes as f64 / separate / 1e9,
    );
}
