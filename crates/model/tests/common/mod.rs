//! Helpers shared by this crate's integration tests.

pub use pagoda_model::test_support::shared_dir;

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
