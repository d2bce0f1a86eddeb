//! Kernel-level speed of paged attention on the `smollm2-135m` shape (9 heads, 3 KV heads,
//! head_dim 64, blocks of 16): a 512-token prefill of one sequence, and one decode step of 64
//! sequences at 340 tokens of context. Reports GFLOP/s (QKᵀ and PV multiply-adds ×2).
//!
//! `cargo run --release -p pagoda-model --example attention_speed -- [f32|bf16|f16|int8]`
//!
//! `IN_ORDER=1`: blocks handed out in order (one sequence alone, as in a single-stream benchmark)
//! instead of scrambled. `COLD=1`: before every call both threads read 96 MiB, so K/V come from
//! memory as in a decode step (where the weights stream through the caches between layers); the
//! median of 60 cold calls is reported instead of the best of 20.

use std::time::Instant;

use pagoda_model::kv_cache::{KvCache, KvCacheDtype, KvGeometry};
use pagoda_model::ops::attention::{paged_attention, AttentionShape, SeqAttention};

fn main() {
    let (heads, kv_heads, hd, bs) = (9, 3, 64, 16);
    let dtype = KvCacheDtype::parse(
        &std::env::args().nth(1).unwrap_or_else(|| "f32".into()),
        pagoda_model::weights::WeightDtype::F32,
    )
    .expect("KV dtype: f32, bf16, f16 or int8");
    println!("KV cache {}", dtype.name());
    let in_order = std::env::var_os("IN_ORDER").is_some();
    let cold = std::env::var_os("COLD").is_some();
    let flush = if cold {
        vec![1u64; 12 << 20]
    } else {
        Vec::new()
    };
    let pool = pagoda_model::ops::pool::global();
    let evict_caches = || {
        let part = flush.len().div_ceil(pool.threads());
        let sum = std::sync::atomic::AtomicU64::new(0);
        pool.parallel_for(pool.threads(), &|i| {
            let s: u64 = flush.iter().skip(i * part).take(part).sum();
            sum.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(sum.into_inner());
    };
    let run = |name: &str, seqs_spec: &[(usize, usize)]| {
        let blocks: usize = seqs_spec.iter().map(|s| s.0.div_ceil(bs)).sum();
        let g = KvGeometry {
            block_size: bs,
            // At least 4096 blocks: a pool the size of the engine's, on huge pages like it.
            num_blocks: blocks.max(4096),
            num_kv_heads: kv_heads,
            head_dim: hd,
        };
        let mut cache = KvCache::with_geometry(g, 1, dtype);
        let width = kv_heads * hd;
        let tokens = blocks * bs;
        let k: Vec<f32> = (0..tokens * width)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let v: Vec<f32> = (0..tokens * width)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
            .collect();
        let slots: Vec<usize> = (0..tokens).collect();
        cache.write(0, &slots, (&k, &v), width);
        // Blocks handed out in a scrambled order, as a pool shared by many sequences does.
        let mut order: Vec<u32> = (0..blocks as u32).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let scrambled = if in_order { 0 } else { order.len() };
        for i in (1..scrambled).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        let mut tables = Vec::new();
        let mut next = 0usize;
        for &(ctx, _) in seqs_spec {
            let n = ctx.div_ceil(bs);
            tables.push(order[next..next + n].to_vec());
            next += n;
        }
        let mut start = 0;
        let seqs: Vec<SeqAttention> = seqs_spec
            .iter()
            .zip(&tables)
            .map(|(&(ctx, nq), t)| {
                let s = SeqAttention {
                    query_start: start,
                    num_queries: nq,
                    context_len: ctx,
                    block_table: t,
                };
                start += nq;
                s
            })
            .collect();
        let stride = (heads + 2 * kv_heads) * hd;
        let q: Vec<f32> = (0..start * stride)
            .map(|i| ((i % 11) as f32 - 5.0) * 0.05)
            .collect();
        let shape = AttentionShape {
            num_heads: heads,
            geometry: g,
            q_row_stride: stride,
            scale: 0.125,
        };
        let mut out = vec![0f32; start * heads * hd];
        let flops: f64 = seqs_spec
            .iter()
            .map(|&(ctx, nq)| {
                (0..nq)
                    .map(|i| (ctx - nq + i + 1) as f64 * heads as f64 * hd as f64 * 4.0)
                    .sum::<f64>()
            })
            .sum();
        let mut times = Vec::new();
        for _ in 0..if cold { 60 } else { 20 } {
            if cold {
                evict_caches();
            }
            let t = Instant::now();
            paged_attention(&q, &seqs, &cache.layers[0], &shape, &mut out);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let (what, time) = if cold {
            ("median (cold)", times[times.len() / 2])
        } else {
            ("best", times[0])
        };
        println!(
            "{name}: {what} {:.4} ms, {:.1} GFLOP/s",
            time * 1e3,
            flops / time / 1e9
        );
    };
    run("prefill 512", &[(512, 512)]);
    run("decode 64 x 340", &vec![(340, 1); 64]);
    run("decode 1 x 600", &[(600, 1)]);
    run("decode 1 x 300", &[(300, 1)]);
    run("decode 1 x 150", &[(150, 1)]);
}
