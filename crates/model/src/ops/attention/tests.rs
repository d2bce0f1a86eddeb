//! Paged attention against a naive dense reference on random shapes.

use proptest::prelude::*;

use super::*;
use crate::kv_cache::{KvCache, KvCacheDtype};

#[derive(Debug)]
struct Case {
    num_kv_heads: usize,
    group: usize,
    head_dim: usize,
    block_size: usize,
    /// (context_len, num_queries) per sequence.
    seqs: Vec<(usize, usize)>,
    dtype: KvCacheDtype,
    seed: u64,
}

fn values(len: usize, state: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 33) as f64 / (1u64 << 31) as f64 * 4.0 - 2.0) as f32
        })
        .collect()
}

/// Dense causal attention in f64 over one sequence's full K/V.
fn naive(q: &[f32], k: &[f32], v: &[f32], c: &Case, ctx: usize, nq: usize, scale: f32) -> Vec<f32> {
    let (hd, kvh, heads) = (c.head_dim, c.num_kv_heads, c.num_kv_heads * c.group);
    let mut out = vec![0f32; nq * heads * hd];
    for qi in 0..nq {
        let pos = ctx - nq + qi;
        for h in 0..heads {
            let kh = h / c.group;
            let qv = &q[(qi * heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let kv = &k[(j * kvh + kh) * hd..][..hd];
                    qv.iter()
                        .zip(kv)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for d in 0..hd {
                let x: f64 = (0..=pos)
                    .map(|j| w[j] * v[(j * kvh + kh) * hd + d] as f64)
                    .sum();
                out[(qi * heads + h) * hd + d] = (x / total) as f32;
            }
        }
    }
    out
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let (hd, kvh, heads, bs) = (
        c.head_dim,
        c.num_kv_heads,
        c.num_kv_heads * c.group,
        c.block_size,
    );
    let mut state = c.seed;
    let blocks_per_seq: Vec<usize> = c.seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).collect();
    let num_blocks: usize = blocks_per_seq.iter().sum::<usize>() + 3;
    // Hand out block ids in a scrambled order so tables are not contiguous.
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        ids.swap(i, (state >> 33) as usize % (i + 1));
    }
    let geometry = KvGeometry {
        block_size: bs,
        num_blocks,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut cache = KvCache::with_geometry(geometry, 1, c.dtype);
    let mut tables = Vec::new();
    let mut dense = Vec::new();
    let mut next = 0;
    for (s, &(ctx, _)) in c.seqs.iter().enumerate() {
        let table: Vec<u32> = ids[next..next + blocks_per_seq[s]].to_vec();
        next += blocks_per_seq[s];
        let k = values(ctx * kvh * hd, &mut state);
        let v = values(ctx * kvh * hd, &mut state);
        let slots: Vec<usize> = (0..ctx)
            .map(|pos| table[pos / bs] as usize * bs + pos % bs)
            .collect();
        cache.write(0, &slots, (&k, &v), kvh * hd);
        // The reference sees what the cache holds (rounded or quantized), read back.
        let layer = &cache.layers[0];
        let read = |pos: usize, h: usize, d: usize, key: bool| {
            let (block, in_block) = (table[pos / bs] as usize, pos % bs);
            let scale_at = geometry.scale_tile(block, h) + in_block;
            if key {
                let scale = layer.k_scales.get(scale_at).copied().unwrap_or(1.0);
                layer.k.get(geometry.k_offset(block, h, in_block, d)) * scale
            } else {
                let scale = layer.v_scales.get(scale_at).copied().unwrap_or(1.0);
                layer.v.get(geometry.v_offset(block, h, in_block) + d) * scale
            }
        };
        let stored = |key: bool| -> Vec<f32> {
            (0..ctx * kvh * hd)
                .map(|i| read(i / (kvh * hd), (i / hd) % kvh, i % hd, key))
                .collect()
        };
        dense.push((stored(true), stored(false)));
        tables.push(table);
    }
    let total_q: usize = c.seqs.iter().map(|s| s.1).sum();
    // q sits in a wider row, as it does inside the fused qkv buffer.
    let q_row_stride = heads * hd + 2 * kvh * hd;
    let q = values(total_q * q_row_stride, &mut state);
    let mut metas = Vec::new();
    let mut start = 0;
    for (s, &(ctx, nq)) in c.seqs.iter().enumerate() {
        metas.push(SeqAttention {
            query_start: start,
            num_queries: nq,
            context_len: ctx,
            block_table: &tables[s],
        });
        start += nq;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let shape = AttentionShape {
        num_heads: heads,
        geometry,
        q_row_stride,
        scale,
    };
    let mut kernels = vec![Kernels::Portable];
    #[cfg(target_arch = "x86_64")]
    if avx512::supports(hd) {
        kernels.push(Kernels::Avx512);
    }
    // Unsplit, and as planned for 2 and 8 threads (fewer items than threads × 4 are cut into one
    // task per thread, items split across tasks).
    for (kernel, threads) in kernels.into_iter().flat_map(|k| [(k, 1), (k, 2), (k, 8)]) {
        let mut out = vec![f32::NAN; total_q * heads * hd];
        let layer = &cache.layers[0];
        paged_attention_with(kernel, threads, &q, &metas, layer, &shape, &mut out);
        compare(c, &q, q_row_stride, &metas, &dense, scale, &out)
            .map_err(|e| TestCaseError::fail(format!("{kernel:?}, {threads} threads: {e}")))?;
    }
    Ok(())
}

fn compare(
    c: &Case,
    q: &[f32],
    q_row_stride: usize,
    metas: &[SeqAttention<'_>],
    dense: &[(Vec<f32>, Vec<f32>)],
    scale: f32,
    out: &[f32],
) -> Result<(), String> {
    let (hd, heads) = (c.head_dim, c.num_kv_heads * c.group);
    for (s, m) in metas.iter().enumerate() {
        let qs: Vec<f32> = (0..m.num_queries)
            .flat_map(|i| q[(m.query_start + i) * q_row_stride..][..heads * hd].to_vec())
            .collect();
        let want = naive(
            &qs,
            &dense[s].0,
            &dense[s].1,
            c,
            m.context_len,
            m.num_queries,
            scale,
        );
        let got = &out[m.query_start * heads * hd..(m.query_start + m.num_queries) * heads * hd];
        let max_abs = want.iter().fold(1f32, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            if (a - b).abs() > 1e-5 * max_abs || a.is_nan() {
                return Err(format!("seq {s} index {i}: {a} vs {b}"));
            }
        }
    }
    Ok(())
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        1usize..5,
        prop::sample::select(vec![2usize, 4, 8, 16, 24, 32, 64, 80, 128]),
        prop::sample::select(vec![1usize, 2, 3, 4, 7, 16, 32]),
        prop::collection::vec(
            (prop_oneof![3 => 1usize..90, 1 => 90usize..700], 0.0f64..1.0),
            1..5,
        ),
        prop::sample::select(vec![
            KvCacheDtype::F32,
            KvCacheDtype::Bf16,
            KvCacheDtype::F16,
            KvCacheDtype::Int8,
        ]),
        any::<u64>(),
    )
        .prop_map(
            |(num_kv_heads, group, head_dim, block_size, lens, dtype, seed)| Case {
                num_kv_heads,
                group,
                head_dim,
                block_size,
                // Queries: a decode (1), a chunk starting mid-prompt, or a whole prompt.
                seqs: lens
                    .into_iter()
                    .map(|(ctx, f)| (ctx, ((ctx as f64 * f) as usize).max(1)))
                    .collect(),
                dtype,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn paged_matches_dense(c in case()) {
        check(&c)?;
    }
}

#[test]
fn long_prefill_runs_in_parallel_and_matches() {
    let c = Case {
        num_kv_heads: 2,
        group: 3,
        head_dim: 64,
        block_size: 16,
        seqs: vec![(300, 300), (200, 1), (150, 40)],
        dtype: KvCacheDtype::F32,
        seed: 7,
    };
    check(&c).unwrap();
}

#[test]
fn fast_exp_is_accurate_over_the_softmax_range() {
    let mut x = 0.0f32;
    while x > -87.0 {
        let want = (x as f64).exp();
        let got = exp_nonpositive(x) as f64;
        assert!(
            (got - want).abs() <= 3e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
        x -= 0.0137;
    }
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert!(exp_nonpositive(-1000.0) < 1e-37);
}
