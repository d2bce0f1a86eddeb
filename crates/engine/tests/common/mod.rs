//! Shared by the engine's integration tests: an engine over the built-in demo model, an engine
//! over a model directory with an exact number of KV blocks, and a driver that runs it dry.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use pagoda_core::RequestId;
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_model::builtin::load_builtin;
use pagoda_model::kv_cache::KvCache;
use pagoda_model::{load_model_dir, RunnerOptions};

/// An engine over the built-in demo model (no files needed), blocks of 4 tokens in
/// `kv_cache_bytes`.
pub fn builtin_engine(kv_cache_bytes: usize) -> LlmEngine {
    builtin_engine_with(kv_cache_bytes, &EngineConfig::default())
}

/// [`builtin_engine`] with the given engine options.
pub fn builtin_engine_with(kv_cache_bytes: usize, config: &EngineConfig) -> LlmEngine {
    let loaded = load_builtin(&RunnerOptions {
        block_size: 4,
        kv_cache_bytes,
        ..RunnerOptions::default()
    })
    .unwrap();
    LlmEngine::new(loaded.runner, Some(loaded.tokenizer), config)
}

/// An engine over `model` whose KV pool has exactly `num_blocks` blocks of `block_size`.
pub fn engine_with_blocks(
    model: &Path,
    block_size: usize,
    num_blocks: usize,
    config: &EngineConfig,
) -> LlmEngine {
    let probe = load_model_dir(
        model,
        &RunnerOptions {
            block_size,
            kv_cache_bytes: 1 << 20,
            ..RunnerOptions::default()
        },
    )
    .unwrap();
    let block_bytes =
        KvCache::block_bytes(probe.runner.config(), block_size, probe.runner.kv.dtype);
    let options = RunnerOptions {
        block_size,
        kv_cache_bytes: num_blocks * block_bytes,
        ..RunnerOptions::default()
    };
    let loaded = load_model_dir(model, &options).unwrap();
    assert_eq!(loaded.runner.kv.geometry.num_blocks, num_blocks);
    LlmEngine::new(loaded.runner, Some(loaded.tokenizer), config)
}

/// Steps until every request finished, checking the scheduler's invariants after each step;
/// returns each request's tokens.
pub fn run_to_completion(engine: &mut LlmEngine) -> HashMap<RequestId, Vec<u32>> {
    let mut tokens: HashMap<RequestId, Vec<u32>> = HashMap::new();
    while engine.has_unfinished() {
        for out in engine.step() {
            tokens.entry(out.id).or_default().push(out.token.token);
        }
        engine.scheduler().check_invariants().unwrap();
    }
    tokens
}
