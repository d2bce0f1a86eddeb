//! Per-request block tables over a [`BlockPool`]: `allocate_slots` grows a request's table so it
//! covers its computed tokens plus the tokens of this step, `free` gives everything back.

use std::collections::HashMap;

use pagoda_core::RequestId;

use super::block_pool::{BlockId, BlockPool};

/// Block tables of every request holding KV cache.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    tables: HashMap<RequestId, Vec<BlockId>>,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(
            block_size > 0,
            "invariant: block size is validated by the caller"
        );
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            tables: HashMap::new(),
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

    /// Makes `request`'s table cover `num_tokens` tokens in total, allocating what is missing.
    /// Returns the table, or `None` (and changes nothing) when the pool cannot serve it.
    pub fn allocate_slots(&mut self, request: RequestId, num_tokens: usize) -> Option<&[BlockId]> {
        let have = self.tables.get(&request).map_or(0, Vec::len);
        let need = self.blocks_for(num_tokens).saturating_sub(have);
        let new_blocks = self.pool.allocate(need)?;
        let table = self.tables.entry(request).or_default();
        table.extend(new_blocks);
        Some(table)
    }

    /// Whether `allocate_slots` for this many more blocks would succeed.
    pub fn can_allocate(&self, num_blocks: usize) -> bool {
        num_blocks <= self.pool.num_free()
    }

    pub fn block_table(&self, request: RequestId) -> Option<&[BlockId]> {
        self.tables.get(&request).map(Vec::as_slice)
    }

    /// Returns all of `request`'s blocks to the pool (no-op for an unknown request).
    pub fn free(&mut self, request: RequestId) {
        if let Some(table) = self.tables.remove(&request) {
            self.pool.release(&table);
        }
    }

    /// Ref counts match the tables; free and used blocks partition the pool.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool
            .check_invariants(self.tables.values().map(Vec::as_slice))
    }

    pub fn num_requests(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_tables_block_by_block_and_fails_without_side_effects() {
        let mut m = KvCacheManager::new(4, 2);
        let r = RequestId(1);
        assert_eq!(m.allocate_slots(r, 3).unwrap(), &[BlockId(0), BlockId(1)]);
        assert_eq!(
            m.allocate_slots(r, 4).unwrap().len(),
            2,
            "still fits in 2 blocks"
        );
        assert_eq!(m.allocate_slots(r, 5).unwrap().len(), 3);
        let other = RequestId(2);
        assert!(m.allocate_slots(other, 4).is_none(), "needs 2, 1 free");
        assert!(m.block_table(other).is_none());
        assert_eq!(m.pool().num_free(), 1);
        m.free(r);
        assert_eq!(m.pool().num_free(), 4);
        m.check_invariants().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grow { req: u64, tokens: usize },
        Free { req: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..6, 1usize..12).prop_map(|(req, tokens)| Op::Grow { req, tokens }),
            1 => (0u64..6).prop_map(|req| Op::Free { req }),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_after_every_operation(
            num_blocks in 1usize..10,
            block_size in 1usize..5,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut m = KvCacheManager::new(num_blocks, block_size);
            let mut tokens: HashMap<u64, usize> = HashMap::new();
            for op in ops {
                match op {
                    Op::Grow { req, tokens: add } => {
                        let total = tokens.get(&req).copied().unwrap_or(0) + add;
                        let before = m.pool().num_free();
                        match m.allocate_slots(RequestId(req), total) {
                            Some(table) => {
                                prop_assert!(table.len() * block_size >= total);
                                tokens.insert(req, total);
                            }
                            None => prop_assert_eq!(m.pool().num_free(), before),
                        }
                    }
                    Op::Free { req } => {
                        m.free(RequestId(req));
                        tokens.remove(&req);
                    }
                }
                m.check_invariants().map_err(TestCaseError::fail)?;
            }
            for req in 0..6 {
                m.free(RequestId(req));
            }
            prop_assert_eq!(m.pool().num_free(), num_blocks, "everything free at the end");
            m.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
