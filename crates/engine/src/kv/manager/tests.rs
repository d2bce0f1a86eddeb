//! Prefix caching through the manager, in the style of vLLM's block-pool tests: tiny pools and
//! the exact block ids of hits, partial hits, eviction order and collisions.

use std::collections::HashMap;
use std::sync::Arc;

use pagoda_core::{SamplingParams, TokenId};
use proptest::prelude::*;

use super::*;
use crate::kv::hash::BlockHash;

fn request(id: u64, tokens: &[TokenId]) -> Request {
    Request::new(RequestId(id), tokens.to_vec(), SamplingParams::greedy(16))
}

fn salted(id: u64, tokens: &[TokenId], salt: &str) -> Request {
    let mut r = request(id, tokens);
    r.cache_salt = Some(Arc::from(salt));
    r
}

fn ids(blocks: &[BlockId]) -> Vec<u32> {
    blocks.iter().map(|b| b.0).collect()
}

/// Finds the cached prefix and allocates the whole request; returns (hit blocks, table).
fn admit(m: &mut KvCacheManager, r: &Request) -> (Vec<u32>, Vec<u32>) {
    let prefix = m.find_cached_prefix(r);
    let hit = ids(&prefix.blocks);
    let table = ids(m.allocate_slots(r, r.num_tokens(), prefix).unwrap());
    m.check_invariants().unwrap();
    (hit, table)
}

#[test]
fn grows_tables_block_by_block_and_fails_without_side_effects() {
    let mut m = KvCacheManager::new(4, 2, false);
    let r = request(1, &[0; 5]);
    let none = CachedPrefix::default;
    assert_eq!(ids(m.allocate_slots(&r, 3, none()).unwrap()), vec![0, 1]);
    assert_eq!(m.allocate_slots(&r, 4, none()).unwrap().len(), 2);
    assert_eq!(m.allocate_slots(&r, 5, none()).unwrap().len(), 3);
    let other = request(2, &[0; 4]);
    assert!(
        m.allocate_slots(&other, 4, none()).is_none(),
        "needs 2, 1 free"
    );
    assert!(m.block_table(other.id).is_none());
    assert_eq!(m.pool().num_free(), 1);
    m.free(r.id);
    assert_eq!(m.pool().num_free(), 4);
    m.check_invariants().unwrap();
}

#[test]
fn full_and_partial_hits_reuse_exact_blocks() {
    let mut m = KvCacheManager::new(10, 4, true);
    let a: Vec<TokenId> = (0..10).collect();
    assert_eq!(admit(&mut m, &request(1, &a)), (vec![], vec![0, 1, 2]));
    // Same first 8 tokens: both full blocks hit, the rest is new.
    let b: Vec<TokenId> = (0..8).chain([100, 101, 102]).collect();
    assert_eq!(admit(&mut m, &request(2, &b)), (vec![0, 1], vec![0, 1, 3]));
    assert_eq!(m.pool().ref_count(BlockId(0)), 2);
    // Same first block only: a partial hit.
    let c: Vec<TokenId> = (0..4).chain(50..58).collect();
    assert_eq!(admit(&mut m, &request(3, &c)), (vec![0], vec![0, 4, 5]));
    // Exactly the cached 8 tokens: the last block is recomputed (its last token is sampled from).
    let d: Vec<TokenId> = (0..8).collect();
    assert_eq!(admit(&mut m, &request(4, &d)), (vec![0], vec![0, 6]));
    assert_eq!(m.pool().ref_count(BlockId(0)), 4);
    // A differing first token misses everything, even with equal later blocks.
    let e: Vec<TokenId> = [99].into_iter().chain(1..10).collect();
    assert_eq!(admit(&mut m, &request(5, &e)), (vec![], vec![7, 8, 9]));
}

#[test]
fn blocks_filled_by_decoding_are_cached_too() {
    let mut m = KvCacheManager::new(6, 2, true);
    let mut r = request(1, &[1, 2, 3]);
    m.allocate_slots(&r, 3, CachedPrefix::default()).unwrap();
    r.output_ids.push(4);
    m.allocate_slots(&r, 4, CachedPrefix::default()).unwrap();
    m.free(r.id);
    // A prompt equal to prompt + output of the first hits both of its blocks.
    assert_eq!(admit(&mut m, &request(2, &[1, 2, 3, 4, 5])).0, vec![0, 1]);
}

#[test]
fn eviction_is_least_recently_freed_first_and_leaves_before_parents() {
    let mut m = KvCacheManager::new(6, 2, true);
    let a = request(1, &[1, 2, 3, 4, 5, 6]);
    assert_eq!(admit(&mut m, &a).1, vec![0, 1, 2]);
    m.free(a.id);
    let b = request(2, &[7, 8, 9, 10]);
    assert_eq!(admit(&mut m, &b).1, vec![3, 4]);
    m.free(b.id);
    // Never-used block 5 first, then a's blocks leaf first, then b's.
    assert_eq!(
        m.pool().free_blocks().map(|b| b.0).collect::<Vec<_>>(),
        vec![5, 2, 1, 0, 4, 3]
    );
    // Reusing a's prefix makes it the most recently used: b's blocks are now evicted first.
    let a2 = request(3, &[1, 2, 3, 4, 5, 6, 99]);
    assert_eq!(admit(&mut m, &a2), (vec![0, 1, 2], vec![0, 1, 2, 5]));
    m.free(a2.id);
    // Its partial last block (5, uncached) is reused first, then b's blocks, leaf first.
    let fresh = request(4, &[50, 51, 52, 53, 54, 55]);
    assert_eq!(admit(&mut m, &fresh).1, vec![5, 4, 3]);
    // a's prefix is still cached, b's is gone.
    assert_eq!(
        m.find_cached_prefix(&request(5, &[1, 2, 3, 4, 0]))
            .blocks
            .len(),
        2
    );
    assert!(m
        .find_cached_prefix(&request(6, &[7, 8, 9, 10, 0]))
        .blocks
        .is_empty());
}

#[test]
fn a_hash_collision_is_a_miss_not_a_wrong_hit() {
    fn colliding(_: &crate::kv::BlockKey) -> BlockHash {
        BlockHash(42)
    }
    let pool = BlockPool::with_hash_fn(8, true, colliding);
    let mut m = KvCacheManager::with_pool(pool, 2);
    assert_eq!(
        admit(&mut m, &request(1, &[1, 2, 3, 4, 5])).1,
        vec![0, 1, 2]
    );
    // Every key hashes alike: a different first block must not reuse block 0.
    assert_eq!(
        admit(&mut m, &request(2, &[9, 9, 3, 4, 5])),
        (vec![], vec![3, 4, 5])
    );
    // The true owner of the hash still hits.
    assert_eq!(admit(&mut m, &request(3, &[1, 2, 7, 7, 7])).0, vec![0]);
}

#[test]
fn different_salts_never_share_blocks() {
    let mut m = KvCacheManager::new(12, 2, true);
    let tokens = [1, 2, 3, 4, 5];
    let miss: Vec<u32> = Vec::new();
    assert_eq!(admit(&mut m, &salted(1, &tokens, "tenant-a")).0, miss);
    assert_eq!(admit(&mut m, &salted(2, &tokens, "tenant-b")).0, miss);
    assert_eq!(
        admit(&mut m, &request(3, &tokens)).0,
        miss,
        "no salt is a salt too"
    );
    assert_eq!(admit(&mut m, &salted(4, &tokens, "tenant-a")).0, vec![0, 1]);
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
    /// Requests whose tokens share prefixes (all draw from one sequence, offset by at most one
    /// token) grow and free at random; every step keeps the pool consistent.
    #[test]
    fn invariants_hold_after_every_operation(
        num_blocks in 1usize..10,
        block_size in 1usize..5,
        caching in any::<bool>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut m = KvCacheManager::new(num_blocks, block_size, caching);
        let mut tokens: HashMap<u64, usize> = HashMap::new();
        for op in ops {
            match op {
                Op::Grow { req, tokens: add } => {
                    let total = tokens.get(&req).copied().unwrap_or(0) + add;
                    let seq: Vec<TokenId> = (0..total as u32).map(|t| t + (req % 2) as u32).collect();
                    let r = request(req, &seq);
                    let prefix = if tokens.contains_key(&req) {
                        CachedPrefix::default()
                    } else {
                        m.find_cached_prefix(&r)
                    };
                    let before = m.pool().num_free();
                    match m.allocate_slots(&r, total, prefix) {
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
