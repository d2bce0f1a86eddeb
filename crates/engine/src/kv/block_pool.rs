//! A pool of fixed-size KV blocks: reference counts, the free queue in eviction order, and the
//! prefix cache (hash → block) over full blocks.
//!
//! A block whose last holder lets go goes back to the free queue but, if it holds a cached full
//! block, keeps its hash: a later request with the same prefix takes it back out of the queue
//! (a hit). Blocks are only evicted — their hash forgotten — when `allocate` takes them for new
//! content, least recently freed first. Blocks without cached content are queued at the front,
//! so they are reused before any cached block is evicted. Running out of blocks is a value
//! (`None`), never a panic; `check_invariants` is what the property tests call after every step.

use std::collections::HashMap;

use super::free_queue::FreeQueue;
use super::hash::{hash_block, BlockHash, BlockKey, HashFn};

/// A physical KV-cache block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Owns every block's reference count, the free queue and the cache of full blocks.
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    free: FreeQueue,
    /// The cached content of each block, if it is registered in `cache`.
    cached: Vec<Option<(BlockHash, BlockKey)>>,
    cache: HashMap<BlockHash, BlockId>,
    hash_fn: HashFn,
    caching: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks; `caching` turns the prefix cache on.
    pub fn new(num_blocks: usize, caching: bool) -> Self {
        Self::with_hash_fn(num_blocks, caching, hash_block)
    }

    /// A pool hashing block keys with `hash_fn` (tests force collisions with it).
    pub fn with_hash_fn(num_blocks: usize, caching: bool, hash_fn: HashFn) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            free: FreeQueue::full(num_blocks),
            cached: vec![None; num_blocks],
            cache: HashMap::new(),
            hash_fn,
            caching,
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

    /// Blocks whose content is in the cache (held or free).
    pub fn num_cached(&self) -> usize {
        self.cache.len()
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block.0 as usize]
    }

    pub fn hash(&self, key: &BlockKey) -> BlockHash {
        (self.hash_fn)(key)
    }

    /// Takes `n` free blocks (each with one reference), or none at all when fewer are free.
    /// Cached blocks taken this way are evicted: their content is forgotten.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self
                .free
                .pop_front()
                .expect("invariant: n free blocks were counted");
            self.evict(b);
            self.ref_counts[b.0 as usize] = 1;
            blocks.push(b);
        }
        Some(blocks)
    }

    fn evict(&mut self, block: BlockId) {
        if let Some((hash, _)) = self.cached[block.0 as usize].take() {
            self.cache.remove(&hash);
        }
    }

    /// The cached block holding exactly `key` (hash `hash`), if any. The stored key is compared,
    /// so a hash collision is a miss, never a wrong hit.
    pub fn lookup(&self, hash: BlockHash, key: &BlockKey) -> Option<BlockId> {
        if !self.caching {
            return None;
        }
        let &b = self.cache.get(&hash)?;
        match &self.cached[b.0 as usize] {
            Some((_, stored)) if stored == key => Some(b),
            _ => None,
        }
    }

    /// Adds a reference to a block: a cache hit (taking it out of the free queue if no one held
    /// it) or a second table sharing it.
    pub fn touch(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block.0 as usize];
        if *rc == 0 {
            self.free.remove(block);
        }
        *rc += 1;
    }

    /// Registers a held, full block's content in the cache. A block with the same hash already
    /// cached (the same prefix computed twice) stays the cached one.
    pub fn register(&mut self, block: BlockId, hash: BlockHash, key: BlockKey) {
        if !self.caching || self.cache.contains_key(&hash) {
            return;
        }
        let slot = &mut self.cached[block.0 as usize];
        if slot.is_some() {
            return;
        }
        *slot = Some((hash, key));
        self.cache.insert(hash, block);
    }

    /// Drops one reference to each block, in the order given; blocks reaching zero go to the free
    /// queue: to its back if cached (evicted last, least recently freed first), to its front if
    /// not (reused first).
    pub fn release<'a>(&mut self, blocks: impl IntoIterator<Item = &'a BlockId>) {
        for &b in blocks {
            let rc = &mut self.ref_counts[b.0 as usize];
            assert!(*rc > 0, "invariant: released block {b:?} was allocated");
            *rc -= 1;
            if *rc == 0 {
                if self.cached[b.0 as usize].is_some() {
                    self.free.push_back(b);
                } else {
                    self.free.push_front(b);
                }
            }
        }
    }

    /// The free blocks in the order they would be taken.
    pub fn free_blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.free.iter()
    }

    /// Checks the pool against the block tables that reference it: each block's ref count
    /// equals the number of tables holding it, free and used are disjoint and cover the pool,
    /// and the cache map and the per-block cached keys agree.
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
        let mut count = 0;
        for b in self.free.iter() {
            if std::mem::replace(&mut is_free[b.0 as usize], true) {
                return Err(format!("{b:?} is on the free list twice"));
            }
            count += 1;
        }
        if count != self.free.len() {
            return Err(format!(
                "free queue links {count} blocks but counts {}",
                self.free.len()
            ));
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
        for (hash, b) in &self.cache {
            match &self.cached[b.0 as usize] {
                Some((h, _)) if h == hash => {}
                _ => return Err(format!("cache entry for {b:?} does not match its block")),
            }
        }
        let registered = self.cached.iter().filter(|c| c.is_some()).count();
        if registered != self.cache.len() {
            return Err(format!(
                "{registered} blocks hold cached keys but the cache maps {}",
                self.cache.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
