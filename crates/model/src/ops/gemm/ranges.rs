//! Work split of the decode (stream) kernels: one contiguous range of weight blocks per thread,
//! which its owner streams from the front a chunk at a time, while a thread that has finished its
//! own range takes chunks from the back of the others'. A chunk is half of what is left of the
//! range (rounded up), so an owner makes about log2(blocks) kernel calls, most of the range in the
//! first, and the last chunks are small enough for the threads to finish close together.
//!
//! Every kernel call costs more than its arithmetic (likely the stream restarting: its first
//! 4 KiB prefetched at once, the 4 KiB past its end for nothing when the next chunk is
//! elsewhere). The chunks of at most 64 KiB used before (a quarter of what was left) made the
//! decode step slower than these halving chunks: 135M 3.9%, TinyLlama 7.7% at Q8_0, 1.8% and
//! 3.0% at bf16 (step-interleaved in both orders, see `docs/BENCHMARKS.md`), and 1–11% per window
//! slower than one fixed half per thread, which the halving chunks match. Halving keeps the
//! stealing that one fixed half would lose: a thread the OS deschedules mid-matrix leaves at
//! most half its range to the other.
//!
//! Fixed tasks (two per thread before this) left a thread idle at the end of a matrix whenever the
//! other read slower for a while (the cores share the memory and rarely get equal shares): traced
//! on the 135M shape, the thread that finished first waited 9–18% of each decode matmul. With
//! these ranges the threads finish within ≈ 0.5 µs of each other. Because the memory bus, not the
//! cores, bounds these products, most of that idle time was not lost work: step-interleaved (12
//! windows), the decode matmuls took a median 1.9% less time (TinyLlama's larger matrices: no
//! change).

use std::sync::atomic::{AtomicU64, Ordering};

/// One thread's remaining blocks, `front << 32 | back`, alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
struct Range(AtomicU64);

const HALF: u32 = 32;
const LOW: u64 = (1 << HALF) - 1;

fn unpack(v: u64) -> (usize, usize) {
    ((v >> HALF) as usize, (v & LOW) as usize)
}

fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << HALF) | back as u64
}

/// The ranges of one product; see the module docs.
#[derive(Default)]
pub(crate) struct Ranges {
    ranges: Vec<Range>,
}

impl Ranges {
    /// Splits `blocks` into `parts` near-equal contiguous ranges.
    pub fn reset(&mut self, blocks: usize, parts: usize) {
        assert!(
            blocks as u64 <= LOW,
            "invariant: a matrix has < 2^32 blocks"
        );
        let parts = parts.max(1);
        self.ranges.resize_with(parts, Range::default);
        for (i, r) in self.ranges.iter().enumerate() {
            r.0.store(
                pack(blocks * i / parts, blocks * (i + 1) / parts),
                Ordering::Relaxed,
            );
        }
    }

    /// Chunk size for `remaining` (> 0) blocks: half of them, rounded up.
    fn chunk(remaining: usize) -> usize {
        remaining.div_ceil(2)
    }

    /// Takes the next chunk of range `r` from the front (`back == false`) or the back.
    fn take(&self, r: usize, back: bool) -> Option<(usize, usize)> {
        let cell = &self.ranges[r].0;
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let (front, end) = unpack(cur);
            if front >= end {
                return None;
            }
            let n = Self::chunk(end - front);
            let (next, taken) = if back {
                (pack(front, end - n), (end - n, n))
            } else {
                (pack(front + n, end), (front, n))
            };
            match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(taken),
                Err(now) => cur = now,
            }
        }
    }

    /// Runs `f(first_block, count)` over range `me` from the front, then over the others' leftovers
    /// from their backs, until nothing is left that this thread can take.
    pub fn run(&self, me: usize, mut f: impl FnMut(usize, usize)) {
        while let Some((first, count)) = self.take(me, false) {
            f(first, count);
        }
        let n = self.ranges.len();
        for other in (1..n).map(|i| (me + i) % n) {
            while let Some((first, count)) = self.take(other, true) {
                f(first, count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_block_is_taken_exactly_once_whoever_takes_it() {
        for (blocks, parts) in [(1, 2), (7, 2), (100, 3), (3072, 2), (5, 8)] {
            let mut ranges = Ranges::default();
            ranges.reset(blocks, parts);
            let hits: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
            std::thread::scope(|s| {
                for me in 0..parts {
                    let (ranges, hits) = (&ranges, &hits);
                    s.spawn(move || {
                        ranges.run(me, |first, count| {
                            assert!(count >= 1 && count <= blocks.div_ceil(parts).div_ceil(2));
                            for h in &hits[first..first + count] {
                                h.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    });
                }
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{blocks} blocks in {parts} ranges"
            );
        }
    }

    #[test]
    fn a_lone_thread_finishes_every_range() {
        let mut ranges = Ranges::default();
        ranges.reset(50, 4);
        let mut seen = [0; 50];
        ranges.run(2, |first, count| {
            seen[first..first + count].iter_mut().for_each(|s| *s += 1)
        });
        assert!(seen.iter().all(|&s| s == 1));
    }

    #[test]
    fn owners_take_their_range_in_order_and_chunks_shrink_towards_the_end() {
        let mut ranges = Ranges::default();
        ranges.reset(64, 2);
        let mut taken = Vec::new();
        while let Some(c) = ranges.take(0, false) {
            taken.push(c);
        }
        // Halves of what is left: 16, 8, 4, 2, 1, 1 of the first range's 32 blocks.
        assert_eq!(
            taken,
            [(0, 16), (16, 8), (24, 4), (28, 2), (30, 1), (31, 1)]
        );
        // A thief takes half of what another owner has left, from its back.
        ranges.reset(64, 2);
        assert_eq!(ranges.take(0, false), Some((0, 16)));
        assert_eq!(ranges.take(0, true), Some((24, 8)));
        assert_eq!(ranges.take(0, false), Some((16, 4)));
    }
}
