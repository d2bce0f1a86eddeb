//! A memory read-bandwidth probe: the denominator of "decode as a fraction of the bandwidth bound".
//!
//! It reads a buffer far larger than the last-level cache with every pool thread, using wide SIMD
//! loads and several independent accumulators (so the loop is bound by memory, not by adds), and
//! reports the best of several passes. Each thread streams two long contiguous ranges with
//! software prefetch, the access pattern the decode kernels use, so the probe measures what the
//! memory system can deliver to them rather than a weaker pattern.

use std::time::Instant;

use crate::ops::pool;

/// Result of a probe.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    /// Best read bandwidth over the passes, in GB/s (10⁹ bytes per second).
    pub best_gb_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
}

/// Reads `buffer_bytes` (≥ 8× L3 is sensible; 512 MiB by default) `passes` times.
pub fn measure_read_bandwidth(buffer_bytes: usize, passes: usize) -> Bandwidth {
    let len = buffer_bytes / 4;
    // Backed like the weights (huge pages where available) and written with non-zero values so
    // every page is really there.
    let mut buf = crate::hugepages::huge_vec(len);
    buf.extend((0..len).map(|i| (i & 7) as f32));
    let threads = pool::global().threads();
    // Two long contiguous ranges per thread: one sequential stream each, as the decode kernels
    // read weights (more, shorter ranges read measurably slower here).
    let chunk = len.div_ceil(threads * 2).div_ceil(64) * 64;
    let mut best = f64::INFINITY;
    let mut sink = 0f32;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        let tasks = len.div_ceil(chunk);
        let sums: Vec<std::sync::atomic::AtomicU32> =
            (0..tasks).map(|_| Default::default()).collect();
        pool::global().parallel_for(tasks, &|t| {
            let part = &buf[t * chunk..((t + 1) * chunk).min(len)];
            sums[t].store(
                sum_chunk(part).to_bits(),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        sink += sums
            .iter()
            .map(|s| f32::from_bits(s.load(std::sync::atomic::Ordering::Relaxed)))
            .sum::<f32>();
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    Bandwidth {
        best_gb_s: (len * 4) as f64 / best / 1e9,
        buffer_bytes: len * 4,
        threads,
    }
}

fn sum_chunk(data: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { sum_avx512(data) };
        }
    }
    let mut acc = [0f32; 16];
    for c in data.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(data: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 8];
    let blocks = data.len() / 128;
    let p = data.as_ptr();
    for b in 0..blocks {
        // 512 bytes per iteration; ask for the lines 2 KiB ahead (a hint, never faults).
        for l in 0..8 {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(b * 128 + 512 + l * 16) as *const i8);
        }
        for (l, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, _mm512_loadu_ps(p.add(b * 128 + l * 16)));
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += _mm512_reduce_add_ps(a);
    }
    total + data[blocks * 128..].iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exact_and_probe_reports_positive_bandwidth() {
        let data: Vec<f32> = (0..1000).map(|i| (i % 3) as f32).collect();
        assert_eq!(sum_chunk(&data), data.iter().sum::<f32>());
        let bw = measure_read_bandwidth(8 << 20, 2);
        assert!(bw.best_gb_s > 0.1 && bw.best_gb_s.is_finite());
    }
}
