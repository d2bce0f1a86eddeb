//! AVX-512 register tiles of paged attention: `q · Kᵀ` for up to 8 rows × 16 keys per pass (one
//! K vector per dimension, queries broadcast), and `p · V` for up to 4 rows × `head_dim` outputs
//! held in registers while the tile's V rows stream by.

use std::arch::x86_64::*;

use super::element::KvElement;
use super::Spread;

/// Whether these tiles serve `head_dim` on this CPU.
pub(super) fn supports(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16)
        && head_dim <= 128
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn scores_tile<E: KvElement, const RT: usize>(
    qs: *const f32,
    hd: usize,
    k: *const E,
    block_size: usize,
    mask: u16,
    dst: *mut f32,
    dst_stride: usize,
    ahead: Spread,
) {
    // Even and odd dimensions in separate accumulators: twice the independent FMA chains, so a
    // decode's few rows (a GQA group) are not bound by the FMA latency.
    let mut even = [_mm512_setzero_ps(); RT];
    let mut odd = [_mm512_setzero_ps(); RT];
    for d in (0..hd).step_by(2) {
        ahead.step(d / 2, hd / 2);
        let keys_even = E::load16(k.add(d * block_size), mask);
        let keys_odd = E::load16(k.add((d + 1) * block_size), mask);
        for r in 0..RT {
            let q = qs.add(r * hd + d);
            even[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q), keys_even, even[r]);
            odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(1)), keys_odd, odd[r]);
        }
    }
    for r in 0..RT {
        let sum = _mm512_add_ps(even[r], odd[r]);
        _mm512_mask_storeu_ps(dst.add(r * dst_stride), mask, sum);
    }
}

/// As `portable::scores`.
///
/// # Safety
/// As `portable::scores`; the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn scores<E: KvElement>(
    qs: &[f32],
    rows: usize,
    hd: usize,
    k_tile: &[E],
    block_size: usize,
    slots: usize,
    dst: *mut f32,
    dst_stride: usize,
    ahead: Spread,
) {
    debug_assert!(qs.len() >= rows * hd && k_tile.len() >= hd * block_size);
    // The first tile call spreads the prefetches of `ahead`.
    let mut pf = ahead;
    for j0 in (0..slots).step_by(16) {
        let mask = (((1u32 << 16.min(slots - j0)) - 1) & 0xffff) as u16;
        let k = k_tile.as_ptr().add(j0);
        let mut r = 0;
        while r < rows {
            let rt = 8.min(rows - r);
            let (q, out) = (qs.as_ptr().add(r * hd), dst.add(r * dst_stride + j0));
            match rt {
                1 => scores_tile::<E, 1>(q, hd, k, block_size, mask, out, dst_stride, pf),
                2 => scores_tile::<E, 2>(q, hd, k, block_size, mask, out, dst_stride, pf),
                3 => scores_tile::<E, 3>(q, hd, k, block_size, mask, out, dst_stride, pf),
                4 => scores_tile::<E, 4>(q, hd, k, block_size, mask, out, dst_stride, pf),
                5 => scores_tile::<E, 5>(q, hd, k, block_size, mask, out, dst_stride, pf),
                6 => scores_tile::<E, 6>(q, hd, k, block_size, mask, out, dst_stride, pf),
                7 => scores_tile::<E, 7>(q, hd, k, block_size, mask, out, dst_stride, pf),
                _ => scores_tile::<E, 8>(q, hd, k, block_size, mask, out, dst_stride, pf),
            }
            pf = Spread::NONE;
            r += rt;
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn accumulate_tile<E: KvElement, const NW: usize, const RT: usize>(
    p: *const f32,
    p_stride: usize,
    v: *const E,
    slots: usize,
    acc: *mut f32,
    ahead: Spread,
) {
    let hd = NW * 16;
    let mut a = [[_mm512_setzero_ps(); NW]; RT];
    for (r, row) in a.iter_mut().enumerate() {
        for (w, x) in row.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(acc.add(r * hd + w * 16));
        }
    }
    for j in 0..slots {
        ahead.step(j, slots);
        let vr: [__m512; NW] = std::array::from_fn(|w| E::load16(v.add(j * hd + w * 16), 0xffff));
        for (r, row) in a.iter_mut().enumerate() {
            let pb = _mm512_set1_ps(*p.add(r * p_stride + j));
            for (x, &vw) in row.iter_mut().zip(&vr) {
                *x = _mm512_fmadd_ps(pb, vw, *x);
            }
        }
    }
    for (r, row) in a.iter().enumerate() {
        for (w, x) in row.iter().enumerate() {
            _mm512_storeu_ps(acc.add(r * hd + w * 16), *x);
        }
    }
}

/// As `portable::accumulate`.
///
/// # Safety
/// As `portable::accumulate`; the CPU has AVX-512F and `supports(hd)`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn accumulate<E: KvElement>(
    p: *const f32,
    p_stride: usize,
    rows: usize,
    v_tile: &[E],
    slots: usize,
    hd: usize,
    acc: &mut [f32],
    ahead: Spread,
) {
    debug_assert!(acc.len() >= rows * hd && v_tile.len() >= slots * hd);
    // The first tile call spreads the prefetches of `ahead`.
    let mut pf = ahead;
    let nw = hd / 16;
    let max_rt = if nw <= 4 { 4 } else { 2 };
    let v = v_tile.as_ptr();
    let mut r = 0;
    while r < rows {
        let rt = max_rt.min(rows - r);
        let (pr, ar) = (p.add(r * p_stride), acc.as_mut_ptr().add(r * hd));
        macro_rules! tile {
            ($nw:literal, $rt:literal) => {
                accumulate_tile::<E, $nw, $rt>(pr, p_stride, v, slots, ar, pf)
            };
        }
        match (nw, rt) {
            (1, 1) => tile!(1, 1),
            (1, 2) => tile!(1, 2),
            (1, 3) => tile!(1, 3),
            (1, _) => tile!(1, 4),
            (2, 1) => tile!(2, 1),
            (2, 2) => tile!(2, 2),
            (2, 3) => tile!(2, 3),
            (2, _) => tile!(2, 4),
            (3, 1) => tile!(3, 1),
            (3, 2) => tile!(3, 2),
            (3, 3) => tile!(3, 3),
            (3, _) => tile!(3, 4),
            (4, 1) => tile!(4, 1),
            (4, 2) => tile!(4, 2),
            (4, 3) => tile!(4, 3),
            (4, _) => tile!(4, 4),
            (5, 1) => tile!(5, 1),
            (5, _) => tile!(5, 2),
            (6, 1) => tile!(6, 1),
            (6, _) => tile!(6, 2),
            (7, 1) => tile!(7, 1),
            (7, _) => tile!(7, 2),
            (8, 1) => tile!(8, 1),
            (8, _) => tile!(8, 2),
            _ => unreachable!("head_dim {hd} is not served by these tiles"),
        }
        pf = Spread::NONE;
        r += rt;
    }
}
