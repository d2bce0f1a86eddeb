//! pagoda's engine core (synchronous, no async runtime): the KV-cache block manager, requests and
//! the iteration-level scheduler; the engine loop builds on them (see docs/ARCHITECTURE.md).

pub mod engine;
pub mod handle;
pub mod kv;
pub mod output;
pub mod request;
pub mod sched;
pub mod speculative;
pub mod structured;
