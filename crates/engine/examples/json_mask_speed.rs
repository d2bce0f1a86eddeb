//! Time to build a structured-output mask (which vocabulary tokens may come next) for one
//! request, in the states a JSON text spends most of its tokens in, for `json_object` and for a
//! small `json_schema`, over a model directory's tokenizer.
//!
//! `cargo run --release -p pagoda-engine --example json_mask_speed -- MODEL_DIR`

use std::path::Path;
use std::time::Instant;

use pagoda_core::ResponseFormat;
use pagoda_engine::structured::{OutputConstraint, TokenBytes};
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
    let schema = r#"{"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}}}, "required": ["name", "age"]}"#;
    let formats = [
        ("json_object", ResponseFormat::JsonObject),
        ("json_schema", ResponseFormat::JsonSchema(schema.into())),
    ];
    let mut allowed = Vec::new();
    for (format_name, format) in formats {
        for (name, text) in [
            ("start", ""),
            ("after {", "{"),
            ("in a key", "{\"na"),
            ("after :", "{\"name\":"),
            ("in a string value", "{\"name\": \"Lil"),
            ("in a number", "{\"name\": \"Lily\", \"age\": 12"),
            (
                "in an array",
                "{\"name\": \"Lily\", \"age\": 12, \"pets\": [\"cat\", ",
            ),
        ] {
            let mut constraint = OutputConstraint::new(&format).unwrap().unwrap();
            assert!(constraint.advance(text.as_bytes()), "{format_name}: {text}");
            let reps = 50;
            let started = Instant::now();
            let mut count = 0;
            for _ in 0..reps {
                count = table.allowed_after(&constraint, vocab, &mut allowed);
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / reps as f64;
            println!("{format_name} {name:>18}: {count:>6} tokens allowed, {us:>7.0} µs per mask");
        }
    }
}
