//! The switch of the step-interleaved A/B harness (`examples/decode_ab.rs`).
//!
//! This machine's memory bandwidth drifts by 2× within a minute, so two builds, or two runs of one
//! build, cannot be told apart below about ±20%. The harness instead runs both variants in one
//! generation and flips this switch after every decode step (A on even steps, B on odd): the two
//! halves of a window share the machine's state, and a window's B/A time ratio moves about ±3%.
//!
//! Code under development reads [`variant`] to choose between two implementations. No committed
//! code reads it, so the harness as committed compares A with A: the method's own spread.

use std::sync::atomic::{AtomicU32, Ordering};

static VARIANT: AtomicU32 = AtomicU32::new(0);

/// The variant code under test should run: 0 unless the harness set another.
#[inline(always)]
pub fn variant() -> u32 {
    VARIANT.load(Ordering::Relaxed)
}

/// Sets the variant that [`variant`] returns from now on (the harness, between steps).
pub fn set_variant(v: u32) {
    VARIANT.store(v, Ordering::Relaxed);
}
