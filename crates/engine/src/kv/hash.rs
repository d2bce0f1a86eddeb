//! Content keys of full KV blocks, for prefix caching.
//!
//! A full block's key is its parent block's hash, its own token ids and the request's cache salt,
//! so a hash stands for the whole prefix up to and including the block (vLLM's hash chain). The
//! hash is 128 bits (two independent SipHash passes), and a lookup also compares the stored key
//! (parent hash, tokens, salt) with the wanted one, so a collision of the map's hash can never
//! make one prefix reuse another's K/V.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use pagoda_core::TokenId;

/// The hash of a full block's content and everything before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u128);

/// What a full block holds, as far as reuse is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The hash of the previous block of the same sequence (`None` for the first block).
    pub parent: Option<BlockHash>,
    pub tokens: Vec<TokenId>,
    /// Requests with different salts never share blocks (tenant isolation).
    pub salt: Option<Arc<str>>,
}

/// Turns a key into its hash; replaceable in tests to force collisions.
pub type HashFn = fn(&BlockKey) -> BlockHash;

/// The production hash: 128 bits from two differently seeded SipHash passes over the key.
pub fn hash_block(key: &BlockKey) -> BlockHash {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        key.hash(&mut h);
        h.finish() as u128
    };
    BlockHash(half(0) << 64 | half(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parent: Option<BlockHash>, tokens: &[TokenId], salt: Option<&str>) -> BlockKey {
        BlockKey {
            parent,
            tokens: tokens.to_vec(),
            salt: salt.map(Arc::from),
        }
    }

    #[test]
    fn hash_depends_on_parent_tokens_and_salt() {
        let a = hash_block(&key(None, &[1, 2], None));
        assert_eq!(a, hash_block(&key(None, &[1, 2], None)), "deterministic");
        assert_ne!(a, hash_block(&key(None, &[2, 1], None)));
        assert_ne!(a, hash_block(&key(Some(a), &[1, 2], None)));
        assert_ne!(a, hash_block(&key(None, &[1, 2], Some("tenant-a"))));
        assert_ne!(
            hash_block(&key(None, &[1, 2], Some("tenant-a"))),
            hash_block(&key(None, &[1, 2], Some("tenant-b")))
        );
    }
}
