//! KV-cache block accounting: which physical blocks exist, who holds them, each request's block
//! table, and the prefix cache of full blocks. The model runner's `KvCache` stores the values;
//! this module decides where they go.

pub mod block_pool;
mod free_queue;
pub mod hash;
pub mod manager;

pub use block_pool::{BlockId, BlockPool};
pub use hash::{BlockHash, BlockKey};
pub use manager::{CachedPrefix, KvCacheManager, PrefixCacheStats};
