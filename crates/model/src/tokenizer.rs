//! Tokenization: Hugging Face `tokenizer.json` through the `tokenizers` crate (GGUF tokenizers
//! are rebuilt as one, see `crate::gguf::tokenizer`), the settings of
//! `tokenizer_config.json` (BOS handling, chat template), and incremental detokenization that is
//! correct when a multi-byte UTF-8 character is split over several tokens.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A model's tokenizer and its configuration.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
    /// Jinja chat template from tokenizer_config.json, when the model has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn token_string(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(&config_path, e)),
        };
        Self::from_json(&json, config.as_deref(), &path)
    }

    /// Builds a tokenizer from the two JSON documents; `origin` names the source in errors.
    pub fn from_json(
        tokenizer_json: &str,
        config_json: Option<&str>,
        origin: &Path,
    ) -> Result<Self> {
        let inner = tokenizer_json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| ModelError::Tokenizer {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
        let config: serde_json::Value = match config_json {
            Some(text) => serde_json::from_str(text).map_err(|source| ModelError::Json {
                path: origin.with_file_name("tokenizer_config.json"),
                source,
            })?,
            None => serde_json::Value::Null,
        };
        Ok(Self {
            inner,
            origin: origin.to_path_buf(),
            chat_template: config
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string),
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
        })
    }

    /// Wraps a tokenizer built elsewhere (from GGUF metadata); `origin` names it in errors.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        origin: &Path,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        Self {
            inner,
            origin: origin.to_path_buf(),
            chat_template,
            bos_token,
            eos_token,
        }
    }

    fn err(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer {
            path: self.origin.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    /// The token strings of `ids` (as stored in the vocabulary).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes each token id `0..vocab_size` adds to the output text, as its decoder writes
    /// them mid-text; `None` for special tokens and ids the tokenizer does not have.
    ///
    /// Byte-level vocabularies (GPT-2 style: Qwen, SmolLM2, Llama 3) map each character of a
    /// piece back to its byte; SentencePiece-style ones (Llama 2, Mistral) write `<0xHH>` pieces
    /// as that byte and `▁` as a space.
    pub fn token_bytes(&self, vocab_size: usize) -> Vec<Option<Vec<u8>>> {
        let byte_level = self
            .inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|json| json.contains("\"ByteLevel\""));
        let special: std::collections::HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let from_char = byte_level.then(byte_level_chars);
        (0..vocab_size as u32)
            .map(|id| {
                if special.contains(&id) {
                    return None;
                }
                let piece = self.inner.id_to_token(id)?;
                match &from_char {
                    Some(map) => piece.chars().map(|c| map.get(&c).copied()).collect(),
                    None => Some(match fallback_byte(&piece) {
                        Some(b) => vec![b],
                        None => piece.replace('\u{2581}', " ").into_bytes(),
                    }),
                }
            })
            .collect()
    }
}

/// GPT-2's byte-level alphabet, character to byte: printable bytes stand for themselves, the
/// others (controls, space, 0x7f-0xa0, 0xad) for `U+0100` onwards in byte order.
fn byte_level_chars() -> std::collections::HashMap<char, u8> {
    let visible = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if visible(b) {
                (char::from(b), b)
            } else {
                shifted += 1;
                (char::from_u32(255 + shifted).unwrap_or('\0'), b)
            }
        })
        .collect()
}

/// The byte of a SentencePiece byte-fallback piece `<0xHH>`.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// Turns a growing token sequence into text deltas, holding back bytes of an incomplete UTF-8
/// character until the token that completes it arrives.
///
/// Decoding a short window (a few tokens of context plus the new ones) rather than the whole
/// sequence keeps each step O(1) and gives the same text as decoding everything, including the
/// leading-space rules of SentencePiece-style decoders.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    /// Starts after `prompt`: its last few tokens serve as context for the first generated ones.
    ///
    /// The context must begin on a character boundary: byte-fallback decoders turn a whole run of
    /// bytes into replacement characters when it starts mid-character, so the window is widened
    /// (or, failing that, dropped) until it decodes cleanly.
    pub fn new(tokenizer: &Tokenizer, prompt: &[u32], skip_special_tokens: bool) -> Self {
        const CONTEXT_TOKENS: usize = 5;
        const MAX_CONTEXT_TOKENS: usize = 16;
        let clean = |start: usize| {
            tokenizer
                .decode(&prompt[start..], skip_special_tokens)
                .is_ok_and(|t| !t.contains('\u{FFFD}'))
        };
        let len = prompt.len();
        let keep = (CONTEXT_TOKENS.min(len)..=MAX_CONTEXT_TOKENS.min(len))
            .find(|&k| clean(len - k))
            .unwrap_or(0);
        Self {
            tokens: prompt[len - keep..].to_vec(),
            prefix_offset: 0,
            read_offset: keep,
            skip_special_tokens,
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn step(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        self.tokens.push(token);
        let prefix = tokenizer.decode(
            &self.tokens[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full =
            tokenizer.decode(&self.tokens[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = match full.get(prefix.len()..) {
                Some(d) if full.starts_with(&prefix) => d.to_string(),
                // The decoder rewrote earlier text (rare); emit the part after the common prefix.
                _ => {
                    let common = prefix
                        .char_indices()
                        .zip(full.chars())
                        .take_while(|((_, a), b)| a == b)
                        .count();
                    full.chars().skip(common).collect()
                }
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            // Drop tokens that can no longer be part of a window.
            if self.prefix_offset > 64 {
                self.tokens.drain(..self.prefix_offset);
                self.read_offset -= self.prefix_offset;
                self.prefix_offset = 0;
            }
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}
