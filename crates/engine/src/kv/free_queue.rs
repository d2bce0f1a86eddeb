//! The queue of free blocks in eviction order: a doubly linked list over block ids, so that
//! taking the first block, appending, prepending and removing a block from the middle (a cached
//! free block that a new request reuses) are all O(1).

use super::block_pool::BlockId;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct FreeQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    queued: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeQueue {
    /// A queue holding every block, in id order.
    pub fn full(num_blocks: usize) -> Self {
        let n = num_blocks as u32;
        Self {
            prev: (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect(),
            next: (0..n)
                .map(|i| if i + 1 == n { NONE } else { i + 1 })
                .collect(),
            queued: vec![true; num_blocks],
            head: if n == 0 { NONE } else { 0 },
            tail: if n == 0 { NONE } else { n - 1 },
            len: num_blocks,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Takes the first block (the next to be evicted).
    pub fn pop_front(&mut self) -> Option<BlockId> {
        if self.head == NONE {
            return None;
        }
        let b = BlockId(self.head);
        self.remove(b);
        Some(b)
    }

    /// Appends a block: it will be evicted after every block already queued.
    pub fn push_back(&mut self, block: BlockId) {
        let b = block.0;
        debug_assert!(!self.queued[b as usize], "invariant: {block:?} queued once");
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NONE;
        match self.tail {
            NONE => self.head = b,
            t => self.next[t as usize] = b,
        }
        self.tail = b;
        self.queued[b as usize] = true;
        self.len += 1;
    }

    /// Prepends a block: it is the next one taken.
    pub fn push_front(&mut self, block: BlockId) {
        let b = block.0;
        debug_assert!(!self.queued[b as usize], "invariant: {block:?} queued once");
        self.next[b as usize] = self.head;
        self.prev[b as usize] = NONE;
        match self.head {
            NONE => self.tail = b,
            h => self.prev[h as usize] = b,
        }
        self.head = b;
        self.queued[b as usize] = true;
        self.len += 1;
    }

    /// Unlinks a queued block.
    pub fn remove(&mut self, block: BlockId) {
        let b = block.0 as usize;
        debug_assert!(self.queued[b], "invariant: only queued blocks are removed");
        let (p, n) = (self.prev[b], self.next[b]);
        match p {
            NONE => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NONE => self.tail = p,
            n => self.prev[n as usize] = p,
        }
        self.queued[b] = false;
        self.len -= 1;
    }

    /// The queued blocks, first to be taken first.
    pub fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            (at != NONE).then(|| {
                let b = at;
                at = self.next[b as usize];
                BlockId(b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(q: &FreeQueue) -> Vec<u32> {
        q.iter().map(|b| b.0).collect()
    }

    #[test]
    fn links_stay_consistent_through_every_operation() {
        let mut q = FreeQueue::full(5);
        assert_eq!(ids(&q), vec![0, 1, 2, 3, 4]);
        q.remove(BlockId(2));
        q.remove(BlockId(0));
        q.remove(BlockId(4));
        assert_eq!(ids(&q), vec![1, 3]);
        q.push_back(BlockId(0));
        q.push_front(BlockId(4));
        assert_eq!(ids(&q), vec![4, 1, 3, 0]);
        assert_eq!(q.pop_front(), Some(BlockId(4)));
        assert_eq!(q.len(), 3);
        assert!(!q.queued[4] && q.queued[3]);
        while q.pop_front().is_some() {}
        assert_eq!(q.len(), 0);
        q.push_front(BlockId(2));
        assert_eq!(ids(&q), vec![2]);
    }
}
