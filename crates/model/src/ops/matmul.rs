//! `out = x · Wᵀ` for row-major activations `x [m, k]` and weights `W [n, k]` in f32 or bf16.
//!
//! Two regimes, chosen by `m` (measured in docs/BENCHMARKS.md):
//! - small `m` (decode steps): our own register-tiled kernel (4 weight rows × 4 activation rows per
//!   tile) that streams each weight row once for the whole batch; bf16 weights are widened to f32 in
//!   registers, so accuracy is that of f32 and memory traffic that of bf16. AVX-512 when the CPU has
//!   it, otherwise a portable version the compiler vectorizes.
//! - large `m` (prefill): the `gemm` crate's packed GEMM over panels of weight rows; bf16 panels are
//!   widened into a per-thread f32 scratch first, a cost amortized over the `m` rows.
//!
//! Both are split over weight rows across the kernel pool, so every thread writes its own columns.

use std::cell::RefCell;

use half::bf16;

use super::pool;
use super::simd::dot;
use crate::weights::{Linear, WeightData};

/// Up to this many activation rows use the streaming small-batch kernel.
pub const SMALL_M_MAX: usize = 16;

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
// SAFETY: users guarantee disjoint writes (each task owns distinct output columns/rows).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer; a method so closures capture the whole (Sync) wrapper, not the raw field.
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// A borrowed view of weight rows in one of the supported storage types.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

fn rows_of(w: &Linear) -> Rows<'_> {
    match &w.data {
        WeightData::F32(d) => Rows::F32(d),
        WeightData::Bf16(d) => Rows::Bf16(d),
    }
}

/// `out[i*n + j] = Σ_k x[i*k + k'] · w[j*k + k']` with `n = w.rows`, `k = w.cols`.
pub fn matmul(x: &[f32], m: usize, w: &Linear, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        m * k,
        "matmul: x has {} values, expected {m}×{k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        m * n,
        "matmul: out has {} values, expected {m}×{n}",
        out.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if m <= SMALL_M_MAX {
        small_m(x, m, k, rows_of(w), n, out);
    } else {
        large_m(x, m, k, rows_of(w), n, out);
    }
}

/// Splits `n` weight rows into chunks for the pool: multiples of `align`, enough chunks for balance.
fn row_chunks(n: usize, work_per_row: usize, align: usize) -> usize {
    let threads = pool::global().threads();
    // Below ~64k multiply-adds a fork costs more than it saves.
    if threads == 1 || n * work_per_row < 65_536 {
        return n.div_ceil(align) * align;
    }
    let tasks = threads * 4;
    n.div_ceil(tasks).div_ceil(align) * align
}

fn small_m(x: &[f32], m: usize, k: usize, w: Rows<'_>, n: usize, out: &mut [f32]) {
    let chunk = row_chunks(n, m * k, 4);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if let Rows::Bf16(d) = w {
        if k.is_multiple_of(2) && has_avx512() {
            return SPLIT_SCRATCH.with(|scratch| {
                // Split each activation row into its even and odd elements once per call.
                let mut split = scratch.borrow_mut();
                split.resize(m * k, 0.0);
                for (src, dst) in x.chunks_exact(k).zip(split.chunks_exact_mut(k)) {
                    let (even, odd) = dst.split_at_mut(k / 2);
                    for (t, pair) in src.chunks_exact(2).enumerate() {
                        even[t] = pair[0];
                        odd[t] = pair[1];
                    }
                }
                let split = &split[..m * k];
                for_each_chunk(n, chunk, &|start| {
                    let end = (start + chunk).min(n);
                    // SAFETY: AVX-512 checked; this task writes only columns start..end.
                    unsafe { avx512::rows_bf16_even_odd(split, m, k, d, n, start..end, out_ptr) }
                });
            });
        }
    }
    for_each_chunk(n, chunk, &|start| {
        let end = (start + chunk).min(n);
        // SAFETY: this task writes only columns start..end of each output row.
        unsafe { small_m_rows(x, m, k, w, n, start..end, out_ptr) }
    });
}

/// Runs `run(start)` for each `chunk`-row slice of `n` rows, on the pool when there are several.
fn for_each_chunk(n: usize, chunk: usize, run: &(dyn Fn(usize) + Sync)) {
    if chunk >= n {
        run(0);
    } else {
        pool::global().parallel_for(n.div_ceil(chunk), &|c| run(c * chunk));
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Computes output columns `start..end` for all `m` rows.
///
/// # Safety
/// `out` must point to `m * n` floats and no other thread may write these columns.
unsafe fn small_m_rows(
    x: &[f32],
    m: usize,
    k: usize,
    w: Rows<'_>,
    n: usize,
    cols: std::ops::Range<usize>,
    out: SyncPtr<f32>,
) {
    let (start, end) = (cols.start, cols.end);
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return match w {
                Rows::F32(d) => avx512::rows_f32(x, m, k, d, n, start..end, out),
                Rows::Bf16(d) => avx512::rows_bf16(x, m, k, d, n, start..end, out),
            };
        }
    }
    portable_rows(x, m, k, w, n, start..end, out)
}

/// The reference-quality portable kernel: one dot product per output, 16 lanes of partial sums.
///
/// # Safety
/// As [`small_m_rows`].
pub(crate) unsafe fn portable_rows(
    x: &[f32],
    m: usize,
    k: usize,
    w: Rows<'_>,
    n: usize,
    cols: std::ops::Range<usize>,
    out: SyncPtr<f32>,
) {
    let (start, end) = (cols.start, cols.end);
    let mut row = vec![0f32; k];
    for j in start..end {
        let wrow: &[f32] = match w {
            Rows::F32(d) => &d[j * k..(j + 1) * k],
            Rows::Bf16(d) => {
                for (r, &b) in row.iter_mut().zip(&d[j * k..(j + 1) * k]) {
                    *r = bf16::from_bits(b).to_f32();
                }
                &row
            }
        };
        for i in 0..m {
            let v = dot(&x[i * k..(i + 1) * k], wrow);
            *out.0.add(i * n + j) = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::SyncPtr;

    /// How far ahead of the current position weights are prefetched, in bytes.
    const PREFETCH_BYTES: usize = 1024;

    /// Generates a kernel for one weight storage type: `$load(ptr, offset)` and
    /// `$load_tail(ptr, offset, mask)` return 16 weights widened to f32.
    ///
    /// Each weight row is streamed once per tile of ≤ 4 activation rows (so the whole matrix is one
    /// sequential stream per thread, which the prefetchers follow), with two independent
    /// accumulator chains per activation row.
    macro_rules! row_kernel {
        ($name:ident, $tile:ident, $wty:ty, $load:expr, $load_tail:expr) => {
            /// Dot products of one weight row with `MR` activation rows.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            #[inline]
            unsafe fn $tile<const MR: usize>(
                w: *const $wty,
                xs: [*const f32; MR],
                k: usize,
            ) -> [f32; MR] {
                let load = $load;
                let load_tail = $load_tail;
                let ahead = PREFETCH_BYTES / std::mem::size_of::<$wty>();
                let mut acc0 = [_mm512_setzero_ps(); MR];
                let mut acc1 = [_mm512_setzero_ps(); MR];
                let mut kk = 0;
                while kk + 32 <= k {
                    // 32 weights span one (bf16) or two (f32) cache lines: prefetch each.
                    let line = w.wrapping_add(kk + ahead) as *const i8;
                    if std::mem::size_of::<$wty>() == 4 {
                        _mm_prefetch::<_MM_HINT_T0>(line);
                        _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64));
                    }
                    let w0 = load(w, kk);
                    let w1 = load(w, kk + 16);
                    for c in 0..MR {
                        acc0[c] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[c].add(kk)), acc0[c]);
                        acc1[c] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[c].add(kk + 16)), acc1[c]);
                    }
                    kk += 32;
                }
                if kk + 16 <= k {
                    let w0 = load(w, kk);
                    for c in 0..MR {
                        acc0[c] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[c].add(kk)), acc0[c]);
                    }
                    kk += 16;
                }
                if kk < k {
                    let mask: u16 = (1u16 << (k - kk)) - 1;
                    let w0 = load_tail(w, kk, mask);
                    for c in 0..MR {
                        acc1[c] = _mm512_fmadd_ps(
                            w0,
                            _mm512_maskz_loadu_ps(mask, xs[c].add(kk)),
                            acc1[c],
                        );
                    }
                }
                std::array::from_fn(|c| _mm512_reduce_add_ps(_mm512_add_ps(acc0[c], acc1[c])))
            }

            /// # Safety
            /// CPU has AVX-512 F/BW/VL; `out` points to `m*n` floats; columns `start..end` are ours.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            pub(super) unsafe fn $name(
                x: &[f32],
                m: usize,
                k: usize,
                w: &[$wty],
                n: usize,
                cols: std::ops::Range<usize>,
                out: SyncPtr<f32>,
            ) {
                let (start, end) = (cols.start, cols.end);
                let xp = |i: usize| x.as_ptr().add(i * k);
                for j in start..end {
                    let wp = w.as_ptr().add(j * k);
                    let mut i = 0;
                    while i < m {
                        let dst = out.get().add(i * n + j);
                        let rows = match m - i {
                            1 => {
                                let r = $tile::<1>(wp, [xp(i)], k);
                                *dst = r[0];
                                1
                            }
                            2 => {
                                let r = $tile::<2>(wp, [xp(i), xp(i + 1)], k);
                                for (c, v) in r.into_iter().enumerate() {
                                    *dst.add(c * n) = v;
                                }
                                2
                            }
                            3 => {
                                let r = $tile::<3>(wp, [xp(i), xp(i + 1), xp(i + 2)], k);
                                for (c, v) in r.into_iter().enumerate() {
                                    *dst.add(c * n) = v;
                                }
                                3
                            }
                            _ => {
                                let r = $tile::<4>(wp, [xp(i), xp(i + 1), xp(i + 2), xp(i + 3)], k);
                                for (c, v) in r.into_iter().enumerate() {
                                    *dst.add(c * n) = v;
                                }
                                4
                            }
                        };
                        i += rows;
                    }
                }
            }
        };
    }

    #[inline(always)]
    unsafe fn widen_bf16(v: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    }

    row_kernel!(
        rows_f32,
        tile_f32,
        f32,
        |p: *const f32, o: usize| _mm512_loadu_ps(p.add(o)),
        |p: *const f32, o: usize, mask: u16| _mm512_maskz_loadu_ps(mask, p.add(o))
    );
    /// Dot products of one bf16 weight row with `MR` activation rows given as their even and odd
    /// elements. A 512-bit load holds 32 weights; as 16 u32 lanes, `<< 16` yields the even
    /// weights and `& 0xffff0000` the odd ones as f32 — two cheap ops per 32 weights instead of
    /// two widening shuffles and two shifts.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn tile_bf16_even_odd<const MR: usize>(
        w: *const u16,
        xe: [*const f32; MR],
        xo: [*const f32; MR],
        k: usize,
    ) -> [f32; MR] {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc0 = [_mm512_setzero_ps(); MR];
        let mut acc1 = [_mm512_setzero_ps(); MR];
        let mut kk = 0;
        while kk + 32 <= k {
            let v = _mm512_loadu_si512(w.add(kk) as *const __m512i);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
            let h = kk / 2;
            for c in 0..MR {
                acc0[c] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xe[c].add(h)), acc0[c]);
                acc1[c] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xo[c].add(h)), acc1[c]);
            }
            kk += 32;
        }
        if kk < k {
            // k is even: the tail holds (k - kk) / 2 < 16 weight pairs.
            let pairs = (k - kk) / 2;
            let mask16: u16 = (1u16 << pairs) - 1;
            let mask32: u32 = (1u32 << (2 * pairs)) - 1;
            let v = _mm512_maskz_loadu_epi16(mask32, w.add(kk) as *const i16);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
            let h = kk / 2;
            for c in 0..MR {
                acc0[c] =
                    _mm512_fmadd_ps(even, _mm512_maskz_loadu_ps(mask16, xe[c].add(h)), acc0[c]);
                acc1[c] =
                    _mm512_fmadd_ps(odd, _mm512_maskz_loadu_ps(mask16, xo[c].add(h)), acc1[c]);
            }
        }
        std::array::from_fn(|c| _mm512_reduce_add_ps(_mm512_add_ps(acc0[c], acc1[c])))
    }

    /// bf16 rows for an even `k`, activations pre-split into even/odd halves:
    /// `split[i*k .. i*k + k/2]` = even elements of row i, then its odd elements.
    ///
    /// # Safety
    /// As `rows_bf16`; `k` is even.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows_bf16_even_odd(
        split: &[f32],
        m: usize,
        k: usize,
        w: &[u16],
        n: usize,
        cols: std::ops::Range<usize>,
        out: SyncPtr<f32>,
    ) {
        let half = k / 2;
        let xe = |i: usize| split.as_ptr().add(i * k);
        let xo = |i: usize| split.as_ptr().add(i * k + half);
        for j in cols {
            let wp = w.as_ptr().add(j * k);
            let mut i = 0;
            while i < m {
                let dst = out.get().add(i * n + j);
                let rows = (m - i).min(4);
                let r: [f32; 4] = match rows {
                    1 => {
                        let r = tile_bf16_even_odd::<1>(wp, [xe(i)], [xo(i)], k);
                        [r[0], 0.0, 0.0, 0.0]
                    }
                    2 => {
                        let r =
                            tile_bf16_even_odd::<2>(wp, [xe(i), xe(i + 1)], [xo(i), xo(i + 1)], k);
                        [r[0], r[1], 0.0, 0.0]
                    }
                    3 => {
                        let r = tile_bf16_even_odd::<3>(
                            wp,
                            [xe(i), xe(i + 1), xe(i + 2)],
                            [xo(i), xo(i + 1), xo(i + 2)],
                            k,
                        );
                        [r[0], r[1], r[2], 0.0]
                    }
                    _ => tile_bf16_even_odd::<4>(
                        wp,
                        [xe(i), xe(i + 1), xe(i + 2), xe(i + 3)],
                        [xo(i), xo(i + 1), xo(i + 2), xo(i + 3)],
                        k,
                    ),
                };
                for (c, v) in r.iter().take(rows).enumerate() {
                    *dst.add(c * n) = *v;
                }
                i += rows;
            }
        }
    }

    row_kernel!(
        rows_bf16,
        tile_bf16,
        u16,
        |p: *const u16, o: usize| widen_bf16(_mm256_loadu_si256(p.add(o) as *const __m256i)),
        |p: *const u16, o: usize, mask: u16| widen_bf16(_mm256_maskz_loadu_epi16(
            mask,
            p.add(o) as *const i16
        ))
    );
}

thread_local! {
    /// Per-thread f32 copy of a bf16 weight panel (large-m path).
    static PANEL_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's even/odd split of the activations (small-m bf16 path).
    static SPLIT_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn large_m(x: &[f32], m: usize, k: usize, w: Rows<'_>, n: usize, out: &mut [f32]) {
    let threads = pool::global().threads();
    // Panels of ~256 weight rows, a multiple of the thread count for balance.
    let tasks = n.div_ceil(256).div_ceil(threads) * threads;
    let panel = n.div_ceil(tasks).div_ceil(16) * 16;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    pool::global().parallel_for(n.div_ceil(panel), &|p| {
        let start = p * panel;
        let rows = panel.min(n - start);
        let run = |wp: &[f32]| {
            // SAFETY: dst columns start..start+rows are written by this task only; strides
            // describe x [m,k] row-major, the panel as a k×rows column-major matrix, out [m,n].
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    out_ptr.get().add(start),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wp.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        match w {
            Rows::F32(d) => run(&d[start * k..(start + rows) * k]),
            Rows::Bf16(d) => PANEL_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.clear();
                s.extend(
                    d[start * k..(start + rows) * k]
                        .iter()
                        .map(|&b| f32::from_bits((b as u32) << 16)),
                );
                run(&s)
            }),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightData;

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

    fn assert_close(a: &[f32], b: &[f32], k: usize) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let tol = 1e-5 * (k as f32).sqrt() * (1.0 + y.abs());
            assert!((x - y).abs() <= tol, "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn matches_naive_for_all_regimes_and_dtypes() {
        for &(m, n, k) in &[
            (1, 7, 5),
            (3, 9, 16),
            (4, 64, 172),
            (5, 33, 33),
            (16, 130, 100),
            (17, 70, 64),
            (40, 300, 200),
        ] {
            let x = pseudo(m * k, 1);
            let w32 = pseudo(n * k, 2);
            let f32w = Linear {
                rows: n,
                cols: k,
                data: WeightData::F32(w32.clone()),
            };
            let mut out = vec![0f32; m * n];
            matmul(&x, m, &f32w, &mut out);
            assert_close(&out, &naive(&x, m, &w32, n, k), k);

            let bits: Vec<u16> = w32.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let rounded: Vec<f32> = bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
            let bw = Linear {
                rows: n,
                cols: k,
                data: WeightData::Bf16(bits),
            };
            matmul(&x, m, &bw, &mut out);
            assert_close(&out, &naive(&x, m, &rounded, n, k), k);
        }
    }

    #[test]
    fn portable_kernel_matches_naive() {
        let (m, n, k) = (3, 11, 37);
        let x = pseudo(m * k, 3);
        let w = pseudo(n * k, 4);
        let mut out = vec![0f32; m * n];
        unsafe { portable_rows(&x, m, k, Rows::F32(&w), n, 0..n, SyncPtr(out.as_mut_ptr())) };
        assert_close(&out, &naive(&x, m, &w, n, k), k);
    }
}
