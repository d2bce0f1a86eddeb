//! pagoda's engine core (synchronous, no async runtime): the KV-cache block manager today; the
//! scheduler and engine loop build on it (see docs/ARCHITECTURE.md).

pub mod kv;
