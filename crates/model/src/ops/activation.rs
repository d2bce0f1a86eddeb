//! SwiGLU: `silu(gate) * up`, reading the fused `[gate | up]` rows of the MLP's first projection.
//!
//! `silu(g) = g · σ(g)` with σ from the same branch-free `exp` as the softmax (`exp(-|g|)` is
//! always in its range), so rows vectorize; large batches are split over the kernel pool.

use super::attention::exp_nonpositive;
use super::pool::{self, SyncPtr};

/// For each row of `gate_up` (`2 * inter` wide: gate then up) writes `inter` values into `out`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    let rows = out.len() / inter.max(1);
    let threads = pool::global().threads();
    if threads == 1 || out.len() < 64 * 1024 {
        return rows_silu_mul(gate_up, inter, out);
    }
    let per_task = rows.div_ceil(threads * 2);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    pool::global().parallel_for(rows.div_ceil(per_task), &|t| {
        let range = t * per_task..((t + 1) * per_task).min(rows);
        // SAFETY: task t alone writes the output rows of its range.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                out_ptr.get().add(range.start * inter),
                range.len() * inter,
            )
        };
        rows_silu_mul(
            &gate_up[range.start * 2 * inter..range.end * 2 * inter],
            inter,
            dst,
        );
    });
}

fn rows_silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(gate_up: &[f32], inter: usize, out: &mut [f32]) {
            rows_body(gate_up, inter, out)
        }
        // SAFETY: the CPU has AVX-512F.
        return unsafe { avx512(gate_up, inter, out) };
    }
    rows_body(gate_up, inter, out)
}

#[inline(always)]
fn rows_body(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (src, dst) in gate_up.chunks(2 * inter).zip(out.chunks_mut(inter)) {
        let (gate, up) = src.split_at(inter);
        for ((o, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
            // σ(g) = 1 / (1 + e^-g) for g ≥ 0, e^g / (1 + e^g) otherwise; e = exp(-|g|) ≤ 1.
            let e = exp_nonpositive(-g.abs());
            let sigmoid = if g >= 0.0 { 1.0 } else { e } / (1.0 + e);
            *o = g * sigmoid * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_definition() {
        let gate_up = [1.0f32, -2.0, 0.5, 3.0, 4.0, -1.0];
        let mut out = [0f32; 3];
        silu_mul(&gate_up, 3, &mut out);
        for i in 0..3 {
            let g = gate_up[i] as f64;
            let want = g / (1.0 + (-g).exp()) * gate_up[3 + i] as f64;
            assert!((out[i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()));
        }
    }

    #[test]
    fn large_batches_and_extreme_gates_match_the_definition() {
        let (rows, inter) = (200, 400);
        let gate_up: Vec<f32> = (0..rows * 2 * inter)
            .map(|i| ((i * 7919) % 4001) as f32 / 20.0 - 100.0)
            .collect();
        let mut out = vec![f32::NAN; rows * inter];
        silu_mul(&gate_up, inter, &mut out);
        for r in 0..rows {
            for i in 0..inter {
                let g = gate_up[r * 2 * inter + i] as f64;
                let u = gate_up[r * 2 * inter + inter + i] as f64;
                let want = g / (1.0 + (-g).exp()) * u;
                let got = out[r * inter + i] as f64;
                assert!(
                    (got - want).abs() <= 2e-6 * want.abs() + 1e-30,
                    "g={g} u={u}: {got} vs {want}"
                );
            }
        }
    }
}
