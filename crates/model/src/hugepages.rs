//! Large buffers (weights, KV pools, the bandwidth probe) backed by transparent huge pages.
//!
//! Decode streams every weight once per token; with 4 KiB pages that is a TLB miss every 4 KiB.
//! On Linux with THP in `madvise` mode, advising a fresh, not yet touched allocation before it is
//! filled makes the kernel back it with 2 MiB pages. Elsewhere this is a no-op.

/// An empty vector with room for `len` values, advised for huge pages before any page is touched.
pub fn huge_vec<T>(len: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(len);
    advise(v.as_ptr() as *const u8, len * std::mem::size_of::<T>());
    v
}

/// Types whose all-zero bit pattern is the value zero.
pub trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for i8 {}
impl Zeroable for u16 {}
impl Zeroable for half::bf16 {}
impl Zeroable for half::f16 {}

/// A zero-filled vector advised for huge pages. Large zeroed allocations come straight from the
/// OS untouched, so pages (and their memory) appear only when first written.
pub fn huge_zeroed<T: Zeroable>(len: usize) -> Vec<T> {
    if len == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<T>(len).expect("invariant: buffer size fits memory");
    // SAFETY: the layout is non-zero-sized; all-zero bits are a valid T (`Zeroable`); the vector
    // takes ownership of an allocation made with T's layout for exactly `len` values.
    let v = unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, len, len)
    };
    advise(v.as_ptr() as *const u8, len * std::mem::size_of::<T>());
    v
}

#[cfg(target_os = "linux")]
fn advise(ptr: *const u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < 2 * HUGE {
        return;
    }
    let start = (ptr as usize).div_ceil(HUGE) * HUGE;
    let end = (ptr as usize + bytes) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside our own allocation; MADV_HUGEPAGE only changes how the
        // kernel backs it. Failure (THP disabled) is harmless, so the result is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_ptr: *const u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_have_the_requested_size_and_contents() {
        let v: Vec<f32> = huge_zeroed(3 << 20);
        assert_eq!(v.len(), 3 << 20);
        assert!(v.iter().all(|&x| x == 0.0));
        let w: Vec<u16> = huge_vec(10);
        assert!(w.capacity() >= 10 && w.is_empty());
    }
}
