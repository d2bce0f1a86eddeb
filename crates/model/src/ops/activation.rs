//! SwiGLU: `silu(gate) * up`, reading the fused `[gate | up]` rows of the MLP's first projection.

/// For each row of `gate_up` (`2 * inter` wide: gate then up) writes `inter` values into `out`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (src, dst) in gate_up.chunks(2 * inter).zip(out.chunks_mut(inter)) {
        let (gate, up) = src.split_at(inter);
        for ((o, g), u) in dst.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
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
            assert!((out[i] as f64 - want).abs() < 1e-6);
        }
    }
}
