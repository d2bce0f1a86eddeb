//! Large buffers (weights, KV pools, the bandwidth probe) backed by transparent huge pages.
//!
//! Decode streams every weight once per token; with 4 KiB pages that is a TLB miss every 4 KiB.
//! On Linux with THP in `madvise` mode, advising a fresh, not yet touched allocation before it is
//! filled makes the kernel back it with 2 MiB pages. Elsewhere this is a no-op.
//!
//! Only whole, aligned 2 MiB ranges of an allocation can be huge pages, so a small model's
//! matrices (0.3–4 MB each) allocated one by one would stay on 4 KiB pages; [`HugeArena`] holds
//! them all in one aligned mapping instead.
//!
//! Also the allocator policy around loading: large blocks straight from the OS
//! ([`fresh_pages_for_large_allocations`]) and free memory handed back ([`return_free_heap`]).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Size and alignment of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

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

/// A fixed-capacity byte arena on huge pages, filled by appending: bytes once appended are never
/// written again, so shared readers of earlier ranges and the appender never touch the same bytes.
/// Pages are faulted in as ranges are appended, so moving matrices in one at a time (dropping each
/// old copy) never holds two copies of the weights.
pub struct HugeArena {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Bytes appended so far (the end of the last range, padding included).
    filled: AtomicUsize,
}

// SAFETY: the arena owns its allocation; appends write only bytes past `filled`, which no reader
// can reach (see `bytes`), and readers only read.
unsafe impl Send for HugeArena {}
unsafe impl Sync for HugeArena {}

impl HugeArena {
    /// An arena with room for `capacity` bytes, aligned to a huge page.
    pub fn new(capacity: usize) -> Self {
        let size = capacity.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let layout = Layout::from_size_align(size, HUGE_PAGE)
            .expect("invariant: arena size fits the address space");
        // SAFETY: the layout is non-zero-sized. The memory stays untouched (uninitialized) until
        // `append` writes it; nothing reads a byte before it was written.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        advise(ptr.as_ptr(), size);
        Self {
            ptr,
            layout,
            filled: AtomicUsize::new(0),
        }
    }

    /// Copies `data` to the next `align`-aligned offset (a power of two) and returns that offset,
    /// or `None` when it does not fit. The padding before it is zeroed.
    pub fn append(&self, data: &[u8], align: usize) -> Option<usize> {
        let mut filled = self.filled.load(Ordering::Acquire);
        loop {
            let start = filled.checked_next_multiple_of(align)?;
            let end = start.checked_add(data.len())?;
            if end > self.layout.size() {
                return None;
            }
            match self
                .filled
                .compare_exchange(filled, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // SAFETY: `filled..end` lies inside the allocation and was just reserved by
                    // this call alone; no reader reaches bytes past the previous `filled`.
                    unsafe {
                        let base = self.ptr.as_ptr();
                        std::ptr::write_bytes(base.add(filled), 0, start - filled);
                        std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(start), data.len());
                    }
                    return Some(start);
                }
                Err(now) => filled = now,
            }
        }
    }

    /// The appended bytes `offset..offset + len`.
    ///
    /// # Panics
    /// When the range reaches past what was appended.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let end = offset.checked_add(len).expect("arena range overflows");
        assert!(
            end <= self.filled.load(Ordering::Acquire),
            "arena range {offset}..{end} was never appended"
        );
        // SAFETY: the range was written by `append` and is never written again.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// Bytes the arena can hold (the requested capacity rounded up to whole huge pages).
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Bytes appended so far, padding included.
    pub fn len(&self) -> usize {
        self.filled.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for HugeArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for HugeArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeArena")
            .field("capacity", &self.layout.size())
            .field("filled", &self.len())
            .finish()
    }
}

/// Makes the allocator serve every allocation of 1 MiB or more with fresh pages from the OS
/// (and unmap them when freed). glibc otherwise raises that threshold as large blocks are
/// freed, up to 32 MiB: loading frees one packed matrix after another, so later blocks came from
/// its heap, which keeps freed memory resident, and the KV pools allocated next were carved out of
/// that freed heap and zeroed by writing (every page resident) instead of arriving as untouched
/// zero pages. Called before loading; idempotent.
pub fn fresh_pages_for_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes the allocator's policy for later allocations.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        });
    }
}

/// Hands the allocator's free memory (small blocks freed while loading) back to the OS.
pub fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(target_os = "linux")]
fn advise(ptr: *const u8, bytes: usize) {
    let start = (ptr as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let end = (ptr as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
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

    #[test]
    fn arena_appends_aligned_ranges_and_refuses_what_does_not_fit() {
        let arena = HugeArena::new(1000);
        let a = arena.append(&[1, 2, 3], 64).unwrap();
        let b = arena.append(&[4; 100], 64).unwrap();
        assert_eq!((a, b), (0, 64));
        assert_eq!(arena.bytes(a, 3), &[1, 2, 3]);
        assert_eq!(arena.bytes(3, 61), &[0; 61], "padding is zeroed");
        assert_eq!(arena.bytes(b, 100), &[4; 100]);
        assert_eq!(arena.len(), 164);
        assert_eq!((arena.ptr.as_ptr() as usize) % HUGE_PAGE, 0);
        // Capacity is rounded up to whole huge pages; past it, nothing is written.
        assert!(arena.append(&vec![0; HUGE_PAGE], 64).is_none());
        assert_eq!(arena.len(), 164);
    }

    #[test]
    #[should_panic(expected = "never appended")]
    fn reading_past_the_appended_bytes_panics() {
        let arena = HugeArena::new(100);
        arena.append(&[1; 10], 1).unwrap();
        let _ = arena.bytes(5, 10);
    }
}
