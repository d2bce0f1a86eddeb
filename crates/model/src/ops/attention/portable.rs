//! Portable inner loops of paged attention over one K/V tile; the reference for the AVX-512 ones.

use super::element::KvElement;

/// `dst[r * dst_stride + j] = qs[r] · key j` for the first `slots` keys of a dimension-major K tile
/// (`k_tile[d * block_size + j]`).
///
/// # Safety
/// `dst` has room for `rows` rows of `dst_stride` floats; `k_tile` holds a whole tile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores<E: KvElement>(
    qs: &[f32],
    rows: usize,
    hd: usize,
    k_tile: &[E],
    block_size: usize,
    slots: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    for r in 0..rows {
        let q = &qs[r * hd..(r + 1) * hd];
        for j0 in (0..slots).step_by(16) {
            let lanes = 16.min(slots - j0);
            let mut acc = [0f32; 16];
            for (d, &qd) in q.iter().enumerate() {
                let keys = &k_tile[d * block_size + j0..][..lanes];
                for (a, &k) in acc.iter_mut().zip(keys) {
                    *a += qd * k.to_f32();
                }
            }
            for (l, &a) in acc.iter().take(lanes).enumerate() {
                *dst.add(r * dst_stride + j0 + l) = a;
            }
        }
    }
}

/// `acc[r] += Σ_j p[r * p_stride + j] · V[j]` over the first `slots` rows of a slot-major V tile.
///
/// # Safety
/// `p` has `rows` rows of `p_stride` floats with at least `slots` each.
pub(super) unsafe fn accumulate<E: KvElement>(
    p: *const f32,
    p_stride: usize,
    rows: usize,
    v_tile: &[E],
    slots: usize,
    hd: usize,
    acc: &mut [f32],
) {
    for r in 0..rows {
        let a = &mut acc[r * hd..(r + 1) * hd];
        for (j, v) in v_tile.chunks_exact(hd).take(slots).enumerate() {
            let w = *p.add(r * p_stride + j);
            for (x, &y) in a.iter_mut().zip(v) {
                *x += w * y.to_f32();
            }
        }
    }
}
