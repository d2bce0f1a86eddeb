//! `Tokenizer::token_bytes` against the tokenizers' own decoding: concatenating the bytes of a
//! text's tokens gives the decoded text, for a byte-level vocabulary (the synthesized one) and a
//! SentencePiece one with byte fallback (stories260k, from the shared directory).

use std::path::Path;

use pagoda_model::synth;
use pagoda_model::test_support::shared_dir;
use pagoda_model::Tokenizer;

const TEXTS: [&str; 4] = [
    "{\"name\": \"Lily\", \"age\": 3, \"tags\": [true, null]}",
    "Once upon a time,\n\tthere was a café ✓ 🎉",
    "  leading spaces and trailing  ",
    "\\u00e9 \"quoted\" <0x41> ▁",
];

fn check(tokenizer: &Tokenizer) {
    let table = tokenizer.token_bytes(tokenizer.vocab_size());
    for text in TEXTS {
        let ids = tokenizer.encode(text, false).unwrap();
        let decoded = tokenizer.decode(&ids, true).unwrap();
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|&id| table[id as usize].clone().expect("text tokens have bytes"))
            .collect();
        // SentencePiece decoders strip the one space they prepend to the text.
        let joined = String::from_utf8(joined).unwrap();
        assert!(
            joined == decoded || joined.strip_prefix(' ') == Some(decoded.as_str()),
            "{text:?}: tokens give {joined:?}, decode gives {decoded:?}"
        );
    }
}

#[test]
fn byte_level_token_bytes_decode_like_the_tokenizer() {
    let shape = synth::shape("tiny").unwrap();
    let files = synth::build_tokenizer(shape).unwrap();
    let tokenizer = Tokenizer::from_json(
        &files.tokenizer_json,
        Some(&files.tokenizer_config_json),
        Path::new("<synthetic>"),
    )
    .unwrap();
    check(&tokenizer);
    let table = tokenizer.token_bytes(tokenizer.vocab_size() + 3);
    // Special tokens and ids past the tokenizer's vocabulary carry no text; every byte has a token.
    for &(_, id) in &files.special.all {
        assert!(table[id as usize].is_none(), "special token {id}");
    }
    assert!(table[tokenizer.vocab_size()..].iter().all(Option::is_none));
    for b in 0..=255u8 {
        assert!(
            table.iter().any(|t| t.as_deref() == Some(&[b][..])),
            "byte {b}"
        );
    }
}

#[test]
fn sentencepiece_token_bytes_decode_like_the_tokenizer() {
    let Some(shared) = shared_dir("sentencepiece_token_bytes_decode_like_the_tokenizer") else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(&shared.join("models/stories260k")).unwrap();
    check(&tokenizer);
    let table = tokenizer.token_bytes(tokenizer.vocab_size());
    for b in 0..=255u8 {
        assert!(
            table.iter().any(|t| t.as_deref() == Some(&[b][..])),
            "byte {b}"
        );
    }
}
