//! A pool of fixed-size KV blocks with reference counts and an O(1) free list.
//!
//! Running out of blocks is a value (`None`), never a panic. `check_invariants` is what the
//! property tests call after every step.

use std::collections::VecDeque;

/// A physical KV-cache block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Owns every block's reference count and the queue of free blocks.
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// Free blocks, taken from the front and returned to the back.
    free: VecDeque<BlockId>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as u32).map(BlockId).collect(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block.0 as usize]
    }

    /// Takes `n` free blocks (each with one reference), or none at all when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let blocks: Vec<BlockId> = self.free.drain(..n).collect();
        for b in &blocks {
            self.ref_counts[b.0 as usize] = 1;
        }
        Some(blocks)
    }

    /// Adds a reference to an allocated block (a second table sharing it).
    pub fn share(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block.0 as usize];
        assert!(*rc > 0, "invariant: only allocated blocks are shared");
        *rc += 1;
    }

    /// Drops one reference to each block; blocks reaching zero go back to the free list.
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            let rc = &mut self.ref_counts[b.0 as usize];
            assert!(*rc > 0, "invariant: released block {b:?} was allocated");
            *rc -= 1;
            if *rc == 0 {
                self.free.push_back(b);
            }
        }
    }

    /// Checks the pool against the block tables that reference it: each block's ref count
    /// equals the number of tables holding it, free and used are disjoint and cover the pool.
    pub fn check_invariants<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a [BlockId]>,
    ) -> Result<(), String> {
        let mut holders = vec![0u32; self.num_blocks()];
        for table in tables {
            for b in table {
                holders[b.0 as usize] += 1;
            }
        }
        let mut is_free = vec![false; self.num_blocks()];
        for b in &self.free {
            if std::mem::replace(&mut is_free[b.0 as usize], true) {
                return Err(format!("{b:?} is on the free list twice"));
            }
        }
        for (i, (&rc, &held)) in self.ref_counts.iter().zip(&holders).enumerate() {
            if rc != held {
                return Err(format!(
                    "block {i}: ref count {rc} but held by {held} tables"
                ));
            }
            if (rc == 0) != is_free[i] {
                return Err(format!(
                    "block {i}: ref count {rc} but free = {}",
                    is_free[i]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_in_order_and_reuses_released_blocks_last() {
        let mut pool = BlockPool::new(4);
        let a = pool.allocate(2).unwrap();
        assert_eq!(a, vec![BlockId(0), BlockId(1)]);
        assert!(pool.allocate(3).is_none(), "only 2 free");
        assert_eq!(pool.num_free(), 2, "a failed allocation takes nothing");
        pool.release(&a[..1]);
        assert_eq!(
            pool.allocate(3).unwrap(),
            vec![BlockId(2), BlockId(3), BlockId(0)]
        );
        pool.check_invariants([&a[1..], &[BlockId(2), BlockId(3), BlockId(0)][..]])
            .unwrap();
    }

    #[test]
    fn shared_blocks_are_freed_by_the_last_holder() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate(1).unwrap();
        pool.share(a[0]);
        pool.release(&a);
        assert_eq!(pool.num_free(), 1);
        pool.release(&a);
        assert_eq!(pool.num_free(), 2);
        pool.check_invariants([]).unwrap();
    }
}
