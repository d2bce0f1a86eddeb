//! Time to build the `json_object` mask (which vocabulary tokens may come next) for one request,
//! in the states a JSON text spends most of its tokens in, over a model directory's tokenizer.
//!
//! `cargo run --release -p pagoda-engine --example json_mask_speed -- MODEL_DIR`

use std::path::Path;
use std::time::Instant;

use pagoda_engine::structured::{JsonState, TokenBytes};
use pagoda_model::Tokenizer;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: json_mask_speed MODEL_DIR");
    let tokenizer = Tokenizer::from_dir(Path::new(&dir)).expect("a tokenizer.json");
    let vocab = tokenizer.vocab_size();
    let started = Instant::now();
    let table = TokenBytes::new(&tokenizer.token_bytes(vocab));
    println!(
        "vocabulary {vocab}: table built in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut allowed = Vec::new();
    for (name, text) in [
        ("start", ""),
        ("after {", "{"),
        ("in a key", "{\"na"),
        ("after :", "{\"name\":"),
        ("in a string value", "{\"name\": \"Lil"),
        ("in a number", "{\"age\": 12"),
        ("after a value", "{\"a\": [1, 2]"),
    ] {
        let state = JsonState::object()
            .after(text.as_bytes())
            .expect("a JSON prefix");
        let reps = 50;
        let started = Instant::now();
        let mut count = 0;
        for _ in 0..reps {
            count = table.allowed_after(&state, vocab, &mut allowed);
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!("{name:>18}: {count:>6} tokens allowed, {us:>7.0} µs per mask");
    }
}
