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

/// Asks for every cache line of `values` to be loaded into L1 (a hint: never faults, no effect on
/// results; a no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch<E>(values: &[E]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }, E>(values);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// As [`prefetch`], into the L2 cache.
#[inline(always)]
pub(crate) fn prefetch_l2<E>(values: &[E]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T1 }, E>(values);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<const HINT: i32, E>(values: &[E]) {
    let start = values.as_ptr() as *const i8;
    for offset in (0..std::mem::size_of_val(values)).step_by(64) {
        // SAFETY: prefetching is a hint and never faults; the addresses lie inside `values`
        // (SSE is baseline on x86-64).
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(start.add(offset)) };
    }
}
