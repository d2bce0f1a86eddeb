//! RMSNorm, as Hugging Face computes it in f32: `x / sqrt(mean(x²) + eps) * weight`.

use super::pool;

/// Normalizes each `weight.len()`-wide row of `x` into the same row of `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    let one = |(src, dst): (&[f32], &mut [f32])| {
        let mut acc = [0f32; 16];
        let mut chunks = src.chunks_exact(16);
        for c in &mut chunks {
            for l in 0..16 {
                acc[l] += c[l] * c[l];
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let mean = (acc.iter().sum::<f32>() + tail) / d as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in dst.iter_mut().zip(src).zip(weight) {
            *o = v * inv * w;
        }
    };
    let rows = x.len() / d;
    if x.len() >= 64 * 1024 {
        let out_ptr = super::pool::SyncPtr(out.as_mut_ptr());
        let per_task = rows.div_ceil(pool::global().threads() * 2);
        pool::global().parallel_for(rows.div_ceil(per_task), &|t| {
            let range = t * per_task..((t + 1) * per_task).min(rows);
            // SAFETY: task t alone writes rows of its range.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(range.start * d), range.len() * d)
            };
            x[range.start * d..range.end * d]
                .chunks(d)
                .zip(dst.chunks_mut(d))
                .for_each(one);
        });
    } else {
        x.chunks(d).zip(out.chunks_mut(d)).for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let d = 37;
        let x: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 7919) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 / 100.0).collect();
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out);
        for r in 0..3 {
            let row = &x[r * d..(r + 1) * d];
            let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = row[i] as f64 / (ms + 1e-5).sqrt() * w[i] as f64;
                assert!((out[r * d + i] as f64 - want).abs() < 1e-5, "{r} {i}");
            }
        }
    }
}
