//! The pool alone: allocation order, references, the cache map and eviction on reuse.

use std::sync::Arc;

use super::*;

fn key(tokens: &[u32]) -> BlockKey {
    BlockKey {
        parent: None,
        tokens: tokens.to_vec(),
        salt: None::<Arc<str>>,
    }
}

fn free_ids(pool: &BlockPool) -> Vec<u32> {
    pool.free_blocks().map(|b| b.0).collect()
}

#[test]
fn allocates_in_order_and_reuses_uncached_blocks_first() {
    let mut pool = BlockPool::new(4, true);
    let a = pool.allocate(2).unwrap();
    assert_eq!(a, vec![BlockId(0), BlockId(1)]);
    assert!(pool.allocate(3).is_none(), "only 2 free");
    assert_eq!(pool.num_free(), 2, "a failed allocation takes nothing");
    pool.release(&a[..1]);
    assert_eq!(
        free_ids(&pool),
        vec![0, 2, 3],
        "an uncached block goes to the front"
    );
    assert_eq!(
        pool.allocate(3).unwrap(),
        vec![BlockId(0), BlockId(2), BlockId(3)]
    );
    pool.check_invariants([&a[1..], &[BlockId(0), BlockId(2), BlockId(3)][..]])
        .unwrap();
}

#[test]
fn shared_blocks_are_freed_by_the_last_holder() {
    let mut pool = BlockPool::new(2, true);
    let a = pool.allocate(1).unwrap();
    pool.touch(a[0]);
    pool.release(&a);
    assert_eq!(pool.num_free(), 1);
    pool.release(&a);
    assert_eq!(pool.num_free(), 2);
    pool.check_invariants([]).unwrap();
}

#[test]
fn cached_blocks_survive_release_until_allocate_evicts_them() {
    let mut pool = BlockPool::new(3, true);
    let blocks = pool.allocate(2).unwrap();
    let k = key(&[1, 2]);
    let h = pool.hash(&k);
    pool.register(blocks[0], h, k.clone());
    pool.release(&blocks);
    // Block 1 (uncached) is reused first, then 2, and block 0 (cached) last.
    assert_eq!(free_ids(&pool), vec![1, 2, 0]);
    assert_eq!(
        pool.lookup(h, &k),
        Some(BlockId(0)),
        "still cached while free"
    );
    pool.touch(BlockId(0));
    assert_eq!(
        free_ids(&pool),
        vec![1, 2],
        "a hit takes it out of the free queue"
    );
    pool.release(&[BlockId(0)]);
    let taken = pool.allocate(3).unwrap();
    assert_eq!(taken, vec![BlockId(1), BlockId(2), BlockId(0)]);
    assert_eq!(
        pool.lookup(h, &k),
        None,
        "evicted when taken for new content"
    );
    assert_eq!(pool.num_cached(), 0);
    pool.check_invariants([&taken[..]]).unwrap();
}

#[test]
fn without_caching_nothing_is_registered_or_found() {
    let mut pool = BlockPool::new(2, false);
    let b = pool.allocate(1).unwrap();
    let k = key(&[1, 2]);
    let h = pool.hash(&k);
    pool.register(b[0], h, k.clone());
    assert_eq!(pool.lookup(h, &k), None);
    assert_eq!(pool.num_cached(), 0);
}
