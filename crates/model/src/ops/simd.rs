//! Portable vector helpers written so the compiler vectorizes them (16 independent lanes, tree
//! reductions); inlined into each kernel's feature-specific instantiation.

/// Pairwise (tree) sum of 16 lanes: vectorizes into halving adds, unlike a sequential sum.
#[inline(always)]
pub(crate) fn reduce16(acc: [f32; 16]) -> f32 {
    let mut a8 = [0f32; 8];
    for l in 0..8 {
        a8[l] = acc[l] + acc[l + 8];
    }
    let mut a4 = [0f32; 4];
    for l in 0..4 {
        a4[l] = a8[l] + a8[l + 4];
    }
    (a4[0] + a4[2]) + (a4[1] + a4[3])
}

/// Dot product with 16 partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        // Fixed-size views: no bounds checks, so the body is one vector multiply-add.
        let x: &[f32; 16] = x.try_into().expect("chunk of 16");
        let y: &[f32; 16] = y.try_into().expect("chunk of 16");
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = reduce16(acc);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}
