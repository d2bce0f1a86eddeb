//! KV-cache block accounting: which physical blocks exist, who holds them, and each request's
//! block table. The model runner's `KvCache` stores the values; this module decides where they go.

pub mod block_pool;
pub mod manager;

pub use block_pool::{BlockId, BlockPool};
pub use manager::KvCacheManager;
