//! Per-request block tables over a [`BlockPool`], with automatic prefix caching.
//!
//! `find_cached_prefix` finds the longest run of cached full blocks that starts a request's
//! tokens; `allocate_slots` takes those blocks (a hit) and allocates the rest so the table covers
//! the tokens of this step, registering every block that this step fills; `free` gives the blocks
//! back, last block first, so that when cached blocks are later evicted the leaves of a prefix go
//! before the blocks they extend.
//!
//! Parallel samples of one prompt share its blocks: `fork` gives a sample its parent's whole
//! table (one more reference per block). A block that is still shared when a request is about to
//! write into it (the prompt's partially filled last block, when the samples' first tokens
//! differ) is copied on write: the writer gets a fresh block, and the copy is queued for the
//! model runner to perform before the step's forward (`take_copies`).

use std::collections::HashMap;

use pagoda_core::RequestId;

use super::block_pool::{BlockId, BlockPool};
use super::hash::{BlockHash, BlockKey};
use crate::request::Request;

/// The cached full blocks a request can start from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedPrefix {
    pub blocks: Vec<BlockId>,
    /// Hashes of those blocks (the start of the request's hash chain).
    hashes: Vec<BlockHash>,
}

impl CachedPrefix {
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// Tokens looked up in, and found in, the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of scheduled requests that were looked up.
    pub queries: u64,
    /// Of those, tokens whose K/V came from the cache.
    pub hits: u64,
}

#[derive(Debug, Clone, Default)]
struct RequestBlocks {
    table: Vec<BlockId>,
    /// Hashes of the request's first full blocks (a chain; computed as blocks fill).
    hashes: Vec<BlockHash>,
    /// Leading blocks of `table` already offered to the cache.
    num_registered: usize,
}

/// Block tables of every request holding KV cache.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    requests: HashMap<RequestId, RequestBlocks>,
    /// Copy-on-write block copies (source, destination) the runner must do before the next step.
    copies: Vec<(BlockId, BlockId)>,
    /// Blocks copied on write since the start.
    pub num_cow_copies: u64,
    pub stats: PrefixCacheStats,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self::with_pool(BlockPool::new(num_blocks, prefix_caching), block_size)
    }

    pub fn with_pool(pool: BlockPool, block_size: usize) -> Self {
        assert!(
            block_size > 0,
            "invariant: block size is validated by the caller"
        );
        Self {
            pool,
            block_size,
            requests: HashMap::new(),
            copies: Vec::new(),
            num_cow_copies: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// The key of `request`'s full block `index`, chained to `parent`.
    fn block_key(&self, request: &Request, index: usize, parent: Option<BlockHash>) -> BlockKey {
        let start = index * self.block_size;
        BlockKey {
            parent,
            tokens: (start..start + self.block_size)
                .map(|p| request.token_at(p))
                .collect(),
            salt: request.cache_salt.clone(),
        }
    }

    /// The longest run of cached full blocks at the start of `request`'s tokens, leaving at least
    /// its last token to compute (its logits are needed to sample). Changes nothing.
    pub fn find_cached_prefix(&self, request: &Request) -> CachedPrefix {
        let mut prefix = CachedPrefix::default();
        if !self.pool.caching() {
            return prefix;
        }
        let max_blocks = request.num_tokens().saturating_sub(1) / self.block_size;
        for index in 0..max_blocks {
            let key = self.block_key(request, index, prefix.hashes.last().copied());
            let hash = self.pool.hash(&key);
            match self.pool.lookup(hash, &key) {
                Some(block) => {
                    prefix.blocks.push(block);
                    prefix.hashes.push(hash);
                }
                None => break,
            }
        }
        prefix
    }

    /// Makes `request`'s table cover `num_tokens` tokens in total, starting from `prefix` (empty,
    /// or what `find_cached_prefix` just returned for a request holding no blocks), allocating
    /// what is missing, copying on write the shared blocks that the tokens after
    /// `request.num_computed_tokens` will be written into, and registering the blocks that
    /// `num_tokens` fills. Returns the table, or `None` (and changes nothing) when the pool
    /// cannot serve it.
    pub fn allocate_slots(
        &mut self,
        request: &Request,
        num_tokens: usize,
        prefix: CachedPrefix,
    ) -> Option<&[BlockId]> {
        let have = self.requests.get(&request.id).map_or(0, |r| r.table.len());
        debug_assert!(
            prefix.blocks.is_empty() || have == 0,
            "invariant: a cached prefix starts a new table"
        );
        // Held blocks this step writes into that another table also holds.
        let shared_writes: Vec<usize> = match self.requests.get(&request.id) {
            Some(entry) if num_tokens > request.num_computed_tokens => {
                let first = request.num_computed_tokens / self.block_size;
                let last = (num_tokens - 1) / self.block_size;
                (first..=last.min(entry.table.len().saturating_sub(1)))
                    .filter(|&i| self.pool.ref_count(entry.table[i]) > 1)
                    .collect()
            }
            _ => Vec::new(),
        };
        let need = self
            .blocks_for(num_tokens)
            .saturating_sub(have.max(prefix.blocks.len()))
            + shared_writes.len();
        // Hit blocks nobody holds sit in the free queue: they are not free for new content.
        let free_hits = prefix
            .blocks
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == 0)
            .count();
        if need + free_hits > self.pool.num_free() {
            return None;
        }
        for &b in &prefix.blocks {
            self.pool.touch(b);
        }
        let new_blocks = self
            .pool
            .allocate(need)
            .expect("invariant: enough free blocks were counted");
        let mut entry = self.requests.remove(&request.id).unwrap_or_default();
        if !prefix.blocks.is_empty() {
            entry.num_registered = prefix.blocks.len();
            entry.table = prefix.blocks;
            entry.hashes = prefix.hashes;
        }
        let (cow_blocks, new_blocks) = new_blocks.split_at(shared_writes.len());
        for (&index, &copy) in shared_writes.iter().zip(cow_blocks) {
            let shared = std::mem::replace(&mut entry.table[index], copy);
            self.pool.release([&shared]);
            self.copies.push((shared, copy));
            self.num_cow_copies += 1;
        }
        entry.table.extend_from_slice(new_blocks);
        self.register_full_blocks(request, num_tokens, &mut entry);
        let table = &self.requests.entry(request.id).or_insert(entry).table;
        Some(table)
    }

    /// Offers to the cache every block of `entry` that holds `block_size` of the request's first
    /// `num_tokens` tokens and was not offered yet.
    fn register_full_blocks(
        &mut self,
        request: &Request,
        num_tokens: usize,
        entry: &mut RequestBlocks,
    ) {
        if !self.pool.caching() {
            return;
        }
        let num_full = num_tokens.min(request.num_tokens()) / self.block_size;
        for index in entry.num_registered..num_full {
            let key = self.block_key(request, index, entry.hashes.last().copied());
            let hash = self.pool.hash(&key);
            debug_assert_eq!(
                entry.hashes.len(),
                index,
                "invariant: one hash per full block"
            );
            entry.hashes.push(hash);
            self.pool.register(entry.table[index], hash, key);
        }
        entry.num_registered = entry.num_registered.max(num_full);
    }

    /// Gives `child` the same blocks as `parent` (one more reference each): a parallel sample
    /// starting from its parent's computed prompt. No-op if the parent holds no blocks.
    pub fn fork(&mut self, parent: RequestId, child: RequestId) {
        let Some(entry) = self.requests.get(&parent).cloned() else {
            return;
        };
        for &b in &entry.table {
            self.pool.touch(b);
        }
        if let Some(old) = self.requests.insert(child, entry) {
            self.pool.release(old.table.iter().rev());
        }
    }

    /// The copy-on-write copies queued since the last call, for the runner.
    pub fn take_copies(&mut self) -> Vec<(BlockId, BlockId)> {
        std::mem::take(&mut self.copies)
    }

    /// Counts a scheduled request's lookup in the prefix-cache statistics.
    pub fn record_lookup(&mut self, num_tokens: usize, num_hit_tokens: usize) {
        if self.pool.caching() {
            self.stats.queries += num_tokens as u64;
            self.stats.hits += num_hit_tokens as u64;
        }
    }

    pub fn block_table(&self, request: RequestId) -> Option<&[BlockId]> {
        self.requests.get(&request).map(|r| r.table.as_slice())
    }

    /// Returns all of `request`'s blocks to the pool, last block first (no-op for an unknown
    /// request). Its cached blocks stay cached until evicted.
    pub fn free(&mut self, request: RequestId) {
        if let Some(entry) = self.requests.remove(&request) {
            self.pool.release(entry.table.iter().rev());
        }
    }

    /// Ref counts match the tables; free and used blocks partition the pool.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool
            .check_invariants(self.requests.values().map(|r| r.table.as_slice()))
    }

    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests;
