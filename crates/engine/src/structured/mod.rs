//! Structured outputs: which tokens may come next so that a request's output stays valid JSON
//! (`response_format` `{"type": "json_object"}`) or an instance of a JSON Schema (`json_schema`).
//!
//! The engine keeps an [`OutputConstraint`] per such request. Before sampling,
//! [`TokenBytes::allowed_after`] marks every vocabulary token whose bytes the constraint accepts
//! (special tokens and tokens without text never), the sampler draws among those only, and the
//! constraint advances by the chosen token's bytes; the request finishes as soon as the object
//! is complete.
//!
//! A mask costs a pass over the candidates only: tokens are grouped by their first two bytes,
//! and only the groups whose two bytes the state accepts are checked byte by byte (so the many
//! tokens that start with a space and a letter cost nothing between JSON tokens); inside a
//! string, tokens that are plain string text (well-formed UTF-8 without quotes, backslashes or
//! control characters: most of a vocabulary) are allowed without a check and the rest are
//! grouped by first byte. Measured with `json_mask_speed` on a 49,152-token vocabulary: 2–35 µs
//! per mask (see `docs/BENCHMARKS.md`).

pub mod json;
pub mod schema;
pub mod schema_state;

pub use json::JsonState;
pub use schema::{Schema, SchemaError};
pub use schema_state::SchemaState;

use std::sync::Arc;

use pagoda_core::{ResponseFormat, TokenId};

/// A request's output constraint: where its text is in the JSON it must be.
// One per constrained request, checked by copying: a boxed schema state would be copied anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum OutputConstraint {
    JsonObject(JsonState),
    JsonSchema(Arc<Schema>, SchemaState),
}

impl OutputConstraint {
    /// The constraint `format` asks for at the start of the output; `None` for free text.
    pub fn new(format: &ResponseFormat) -> Result<Option<Self>, SchemaError> {
        Ok(match format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(Self::JsonObject(JsonState::object())),
            ResponseFormat::JsonSchema(text) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| SchemaError {
                        path: "/".into(),
                        message: format!("not JSON: {e}"),
                    })?;
                let schema = Schema::compile(&value)?;
                let state = SchemaState::new(&schema);
                Some(Self::JsonSchema(Arc::new(schema), state))
            }
        })
    }

    /// Whether `bytes` can come next.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        match self {
            Self::JsonObject(state) => state.after(bytes).is_some(),
            Self::JsonSchema(schema, state) => state.after(schema, bytes).is_some(),
        }
    }

    /// Moves past `bytes`; `false` (state unchanged) when they cannot come next.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        match self {
            Self::JsonObject(state) => state.after(bytes).map(|next| *state = next).is_some(),
            Self::JsonSchema(schema, state) => state
                .after(schema, bytes)
                .map(|next| *state = next)
                .is_some(),
        }
    }

    /// Whether the output is complete (nothing more may follow).
    pub fn is_done(&self) -> bool {
        match self {
            Self::JsonObject(state) => state.is_done(),
            Self::JsonSchema(_, state) => state.is_done(),
        }
    }

    /// Whether any plain string text may follow (see [`JsonState::in_string_text`]).
    pub fn in_string_text(&self) -> bool {
        match self {
            Self::JsonObject(state) => state.in_string_text(),
            Self::JsonSchema(_, state) => state.in_string_text(),
        }
    }
}

/// Every token's output bytes, flattened (see [`pagoda_model::Tokenizer::token_bytes`]).
#[derive(Debug, Clone)]
pub struct TokenBytes {
    bytes: Vec<u8>,
    /// Token `i`'s bytes are `bytes[starts[i]..starts[i + 1]]`; empty for tokens that are never
    /// output text (special tokens, ids the tokenizer does not have).
    starts: Vec<u32>,
    /// Tokens with text, by their first two bytes.
    all: ByPrefix,
    /// Tokens that are plain string text (see the module docs).
    plain: Vec<TokenId>,
    /// Tokens with text that are not plain string text, by first byte.
    not_plain: ByPrefix,
}

/// Token ids grouped by a key of the start of their text.
#[derive(Debug, Clone)]
struct ByPrefix {
    ids: Vec<TokenId>,
    /// Group `k` is `ids[starts[k]..starts[k + 1]]`.
    starts: Vec<u32>,
}

/// Groups of [`ByPrefix::by_two_bytes`]: the first byte × (no second byte, or one of 256).
const TWO_BYTE_KEYS: usize = 256 * 257;

impl ByPrefix {
    /// Grouped by first byte: key `b`.
    fn by_first_byte(tokens: &[(TokenId, &[u8])]) -> Self {
        Self::new(256, tokens.iter().map(|&(id, t)| (id, t[0] as usize)))
    }

    /// Grouped by first two bytes: key `first * 257` for one-byte tokens, plus `second + 1`.
    fn by_two_bytes(tokens: &[(TokenId, &[u8])]) -> Self {
        let key = |t: &[u8]| t[0] as usize * 257 + t.get(1).map_or(0, |&b| b as usize + 1);
        Self::new(TWO_BYTE_KEYS, tokens.iter().map(|&(id, t)| (id, key(t))))
    }

    fn new(keys: usize, tokens: impl Iterator<Item = (TokenId, usize)> + Clone) -> Self {
        let mut starts = vec![0u32; keys + 1];
        for (_, k) in tokens.clone() {
            starts[k + 1] += 1;
        }
        for k in 0..keys {
            starts[k + 1] += starts[k];
        }
        let mut next = starts.clone();
        let mut ids = vec![0; starts[keys] as usize];
        for (id, k) in tokens {
            ids[next[k] as usize] = id;
            next[k] += 1;
        }
        Self { ids, starts }
    }

    fn group(&self, key: usize) -> &[TokenId] {
        &self.ids[self.starts[key] as usize..self.starts[key + 1] as usize]
    }
}

/// Whether `bytes` can sit anywhere inside a JSON string as they are.
fn is_plain_string_text(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
        && std::str::from_utf8(bytes).is_ok()
}

impl TokenBytes {
    /// The table for ids `0..tokens.len()`.
    pub fn new(tokens: &[Option<Vec<u8>>]) -> Self {
        let mut bytes = Vec::new();
        let mut starts = Vec::with_capacity(tokens.len() + 1);
        starts.push(0);
        for token in tokens {
            bytes.extend_from_slice(token.as_deref().unwrap_or_default());
            starts.push(
                u32::try_from(bytes.len()).expect("invariant: the vocabulary's text is < 4 GiB"),
            );
        }
        let with_text: Vec<(TokenId, &[u8])> = tokens
            .iter()
            .enumerate()
            .filter_map(|(id, t)| Some((id as TokenId, t.as_deref()?)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let (plain, not_plain): (Vec<(TokenId, &[u8])>, Vec<_>) =
            with_text.iter().partition(|(_, t)| is_plain_string_text(t));
        Self {
            all: ByPrefix::by_two_bytes(&with_text),
            plain: plain.iter().map(|t| t.0).collect(),
            not_plain: ByPrefix::by_first_byte(&not_plain),
            bytes,
            starts,
        }
    }

    /// Number of token ids covered.
    pub fn vocab_size(&self) -> usize {
        self.starts.len() - 1
    }

    /// Token `id`'s bytes; empty for tokens that are never output text or out of range.
    pub fn get(&self, id: TokenId) -> &[u8] {
        let id = id as usize;
        if id >= self.vocab_size() {
            return &[];
        }
        &self.bytes[self.starts[id] as usize..self.starts[id + 1] as usize]
    }

    /// Sets `allowed[i]` (resized to `vocab_size`, extra ids false) for every token that `state`
    /// accepts; returns how many there are.
    pub fn allowed_after(
        &self,
        state: &OutputConstraint,
        vocab_size: usize,
        allowed: &mut Vec<bool>,
    ) -> usize {
        allowed.clear();
        allowed.resize(vocab_size, false);
        let mut count = 0;
        let mut allow = |id: TokenId| {
            if let Some(slot) = allowed.get_mut(id as usize) {
                *slot = true;
                count += 1;
            }
        };
        if state.in_string_text() {
            self.plain.iter().for_each(|&id| allow(id));
            for b in 0..256 {
                if state.accepts(&[b as u8]) {
                    self.check(state, self.not_plain.group(b), &mut allow);
                }
            }
        } else {
            for first in 0..256u16 {
                if !state.accepts(&[first as u8]) {
                    continue;
                }
                let first = first as usize;
                self.check(state, self.all.group(first * 257), &mut allow);
                for second in 0..256 {
                    let group = self.all.group(first * 257 + second + 1);
                    if !group.is_empty() && state.accepts(&[first as u8, second as u8]) {
                        self.check(state, group, &mut allow);
                    }
                }
            }
        }
        count
    }

    /// Calls `allow` for each token of `group` that `state` accepts.
    fn check(&self, state: &OutputConstraint, group: &[TokenId], allow: &mut impl FnMut(TokenId)) {
        for &id in group {
            if state.accepts(self.get(id)) {
                allow(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_that_keep_the_text_valid_are_allowed() {
        let vocab: Vec<Option<Vec<u8>>> = [
            Some("{"),
            Some("{\""),
            Some("}"),
            Some(" "),
            Some("hello"),
            None,
            Some("\":"),
            Some(""),
            Some("[1"),
        ]
        .iter()
        .map(|t| t.map(|s| s.as_bytes().to_vec()))
        .collect();
        let table = TokenBytes::new(&vocab);
        assert_eq!(table.get(4), b"hello");
        assert_eq!(table.get(5), b"");
        assert_eq!(table.get(99), b"");
        let mut allowed = Vec::new();
        // At the start: an opening brace (alone or with a key's quote) or whitespace; the ids the
        // table does not cover (a padded vocabulary) never.
        let start = JsonState::object();
        assert_eq!(
            table.allowed_after(&OutputConstraint::JsonObject(start), 12, &mut allowed),
            3
        );
        assert_eq!(
            allowed,
            [true, true, false, true, false, false, false, false, false, false, false, false]
        );
        // Inside a key: any text, the closing quote with the colon; not a brace.
        let in_key = start.after(b"{\"").unwrap();
        table.allowed_after(&OutputConstraint::JsonObject(in_key), 9, &mut allowed);
        assert_eq!(
            allowed,
            [true, true, true, true, true, false, true, false, true]
        );
        // After the colon: a value ([1, an object, a string), whitespace; not a closing brace.
        let value = in_key.after(b"k\":").unwrap();
        table.allowed_after(&OutputConstraint::JsonObject(value), 9, &mut allowed);
        assert_eq!(
            allowed,
            [true, true, false, true, false, false, true, false, true]
        );
    }

    /// A schema both sample texts below are instances of.
    const SCHEMA: &str = r#"{"type": "object", "properties": {
        "key": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "boolean"},
            {"type": "null"}, {"type": "string"}]}},
        "k2": {"type": "object"}, "café": {"enum": ["✓ \"q\"", 1]}, "n": {"type": "number"}}}"#;

    proptest::proptest! {
        /// The grouped, plain-text-skipping mask equals checking every token's bytes (for
        /// json_object, and a schema when the prefix is one of its instances').
        #[test]
        fn the_mask_equals_checking_every_token(
            vocab in proptest::collection::vec(
                proptest::option::weighted(
                    0.9,
                    proptest::collection::vec(
                        proptest::sample::select(b" \n{}[]\":,0-1.eEtrufalsn\\xyz\xc3\xa9\xe2\x9c\x93\x01".to_vec()),
                        0..5,
                    ),
                ),
                1..80,
            ),
            text in proptest::sample::select(vec![
                "{\"key\": [1, -2.5e3, true, null, \"v\\u00e9\\n\"], \"k2\": {\"x\": false}}",
                "{ \"caf\u{e9}\": \"\u{2713} \\\"q\\\"\", \"n\": 0.25 }",
            ]),
            cut in 0usize..60,
            padding in 0usize..3,
            schema in proptest::bool::ANY,
        ) {
            let table = TokenBytes::new(&vocab);
            let cut = cut.min(text.len());
            let state = JsonState::object().after(&text.as_bytes()[..cut]).unwrap();
            let mut allowed = Vec::new();
            let prefix = &text.as_bytes()[..cut];
            let constraint = if schema {
                let mut c = OutputConstraint::new(&ResponseFormat::JsonSchema(SCHEMA.into()))
                    .unwrap()
                    .unwrap();
                proptest::prop_assume!(c.advance(prefix));
                c
            } else {
                OutputConstraint::JsonObject(state)
            };
            let count = table.allowed_after(&constraint, vocab.len() + padding, &mut allowed);
            let want: Vec<bool> = (0..vocab.len() + padding)
                .map(|id| {
                    let bytes = table.get(id as TokenId);
                    !bytes.is_empty() && constraint.accepts(bytes)
                })
                .collect();
            proptest::prop_assert_eq!(&allowed, &want);
            proptest::prop_assert_eq!(count, want.iter().filter(|&&a| a).count());
        }
    }
}
