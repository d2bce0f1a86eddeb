//! Rotary position embeddings in Hugging Face's "rotate half" form, with `linear` and `llama3`
//! frequency scaling.
//!
//! Angles are formed exactly as transformers does (an f32 product of position and f32 inverse
//! frequency) so that long positions round the same way; cos/sin of that angle are then exact.

use crate::config::RopeScaling;

/// Inverse frequencies for one head dimension.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Self {
        let half = head_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (theta.powf(exponent as f64) as f32)
            })
            .collect();
        match scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in &mut inv_freq {
                    *f = (*f as f64 / factor) as f32;
                }
            }
            Some(RopeScaling::FreqFactors(factors)) => {
                for (f, factor) in inv_freq.iter_mut().zip(factors) {
                    *f = (*f as f64 / factor) as f32;
                }
            }
            Some(&RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            }) => {
                let low_wavelen = old_len / low_freq_factor;
                let high_wavelen = old_len / high_freq_factor;
                for f in &mut inv_freq {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        freq
                    };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    *f = if medium {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    };
                }
            }
        }
        Self { inv_freq }
    }

    /// The (scaled) inverse frequency of each rotated pair.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Fills `cos`/`sin` (`positions.len() × head_dim/2`) for the step's positions.
    pub fn tables(&self, positions: &[usize], cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        cos.clear();
        sin.clear();
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }

    /// Rotates `num_heads` heads of `head_dim` starting at `offset` in each row of `x`.
    pub fn apply(
        &self,
        x: &mut [f32],
        row_stride: usize,
        offset: usize,
        num_heads: usize,
        cos: &[f32],
        sin: &[f32],
    ) {
        let half = self.inv_freq.len();
        let head_dim = 2 * half;
        for (t, row) in x.chunks_mut(row_stride).enumerate() {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for h in 0..num_heads {
                let head = &mut row[offset + h * head_dim..offset + (h + 1) * head_dim];
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * c[i] - x2 * s[i];
                    b[i] = x2 * c[i] + x1 * s[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let rope = Rope::new(8, 10000.0, None);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope.tables(&[0, 5], &mut cos, &mut sin);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 - 3.0).collect();
        let mut x = orig.clone();
        rope.apply(&mut x, 8, 0, 1, &cos, &sin);
        assert_eq!(&x[..8], &orig[..8]);
        let n0: f32 = orig[8..].iter().map(|v| v * v).sum();
        let n1: f32 = x[8..].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Pair (i, i + half) rotates by angle 5 * inv_freq[i].
        let angle = 5.0f64;
        let want = orig[8] as f64 * angle.cos() - orig[12] as f64 * angle.sin();
        assert!((x[8] as f64 - want).abs() < 1e-5);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 256.0,
        };
        let plain = Rope::new(16, 5e5, None);
        let scaled = Rope::new(16, 5e5, Some(&scaling));
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - plain.inv_freq[last] / 8.0).abs() < 1e-12);
    }
}
