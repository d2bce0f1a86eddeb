//! Locating `../shared` (models and golden outputs) for tests.
//!
//! CI always has it: there a missing directory fails the test. Elsewhere (a user's fresh clone) the
//! test prints that it was skipped and why, and passes.

use std::path::PathBuf;

/// The shared directory, or `None` (after saying so) when it is absent outside CI.
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

/// `|a - b| <= rel * max(1, max|b|)` over two logit vectors, as the goldens' README prescribes.
#[allow(dead_code)]
pub fn assert_logits_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max);
    assert!(
        worst <= rel * scale,
        "{what}: max abs diff {worst:.3e} > {rel:e} × {scale}"
    );
}
