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

/// A hint to bring the cache line holding `p` into L1; never faults, a no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint and never faults, whatever the address (SSE is baseline).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
