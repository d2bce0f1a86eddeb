//! Locating the workspace's `../shared` directory (models and golden outputs) for tests of every
//! crate.
//!
//! CI always has it: with `CI=true` a missing directory is a failure. Elsewhere (a user's fresh
//! clone) a test that needs it says that it was skipped and why, and passes.

use std::path::PathBuf;

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
