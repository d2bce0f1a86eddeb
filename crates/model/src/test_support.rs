//! Helpers for tests and examples of every crate: locating the workspace's `../shared` directory
//! (models and golden outputs), reading its golden files, running greedy generations to compare
//! with them, and pseudo-random file-format bytes.
//!
//! CI always has it: with `CI=true` a missing directory is a failure. Elsewhere (a user's fresh
//! clone) a test that needs it says that it was skipped and why, and passes.

use std::path::{Path, PathBuf};

/// Pseudo-random bytes (xorshift): file-format blocks for kernel tests and examples.
pub fn random_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 7) as u8
        })
        .collect()
}

/// The shared directory (`$PAGODA_SHARED`, else `../shared` beside the checkout), or `None`
/// after printing why `test` is skipped.
///
/// # Panics
/// When the directory is missing and `CI` is `true` or `1`.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("PAGODA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("golden").is_dir() && dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test}: shared models/goldens not found at {} (required when CI=true)",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: shared models/goldens not found at {} (set PAGODA_SHARED to run it)",
        dir.display()
    );
    None
}

/// Parses `golden/<file>` of the shared directory.
///
/// # Panics
/// When the file is missing or not JSON (a broken fixture).
pub fn golden_json(shared: &Path, file: &str) -> serde_json::Value {
    let path = shared.join("golden").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A golden JSON list of token ids.
///
/// # Panics
/// When `value` is not a list of non-negative integers.
pub fn token_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}

/// Greedy generation (EOS ignored) of `max_tokens` tokens for every prompt, batched in one
/// [`crate::generate::generate`] call: per prompt, the generated ids and the logits that chose
/// each of them.
///
/// # Panics
/// When generation fails (a broken fixture).
pub fn greedy_with_logits(
    runner: &mut crate::ModelRunner,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    prefill_chunk: usize,
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    use crate::generate::{generate, GenerateOptions, GenerationRequest};
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .map(|p| GenerationRequest {
            prompt_ids: p.clone(),
            params: pagoda_core::SamplingParams {
                ignore_eos: true,
                ..pagoda_core::SamplingParams::greedy(max_tokens)
            },
        })
        .collect();
    let mut logits = vec![Vec::new(); prompts.len()];
    let out = generate(
        runner,
        &requests,
        &GenerateOptions { prefill_chunk },
        |ev| logits[ev.seq].push(ev.logits.to_vec()),
    )
    .expect("generation runs");
    out.into_iter()
        .zip(logits)
        .map(|(g, l)| (g.output_ids, l))
        .collect()
}
