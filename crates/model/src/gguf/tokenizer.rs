//! The tokenizer stored in GGUF metadata, rebuilt as a Hugging Face `tokenizer.json` document and
//! parsed by the `tokenizers` crate (the same code path as a model directory's tokenizer.json).
//!
//! - `tokenizer.ggml.model = llama` (SentencePiece BPE): tokens, scores and token types, `<0xNN>`
//!   byte-fallback tokens, "▁" for spaces. GGUF stores no merges for these; they are derived from
//!   the vocabulary as Hugging Face's `SentencePieceExtractor` does: every split of a normal token
//!   into two vocabulary pieces is a merge, ranked by the token's score (higher first), then by the
//!   token's id, then by the pieces' ids.
//! - `tokenizer.ggml.model = gpt2` (byte-level BPE): tokens and `tokenizer.ggml.merges`, with the
//!   pre-tokenizer named by `tokenizer.ggml.pre` (see [`PRE_TOKENIZERS`]).
//!
//! BOS/EOS come from `tokenizer.ggml.{bos,eos}_token_id`, BOS insertion from
//! `tokenizer.ggml.add_bos_token`, the chat template from `tokenizer.chat_template`.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::reader::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// llama.cpp's token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The `tokenizer.ggml.pre` values pagoda maps to a Hugging Face pre-tokenizer.
pub const PRE_TOKENIZERS: &str =
    "default, gpt-2, phi-2, mpt, olmo, smollm, starcoder, refact, llama3, llama-v3, llama-bpe, falcon3, qwen2, deepseek-r1-qwen";

/// Llama 3's split pattern (its tokenizer.json).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split pattern: like Llama 3's with single digits.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a `gpt2` vocabulary and whether whole words found in the vocabulary skip
/// the merges (Llama 3's `ignore_merges`).
pub fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" => (byte_level(true), false),
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
            false,
        ),
        _ => return None,
    })
}

struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i32>,
    ids: HashMap<&'a str, u32>,
}

fn strings<'a>(file: &GgufFile, key: &str, items: &'a [MetaValue]) -> Result<Vec<&'a str>> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| file.error(format!("{key}[{i}] is {}, not a string", v.summary())))
        })
        .collect()
}

fn read_vocab(file: &GgufFile) -> Result<Vocab<'_>> {
    let key = "tokenizer.ggml.tokens";
    let items = file
        .get_array(key)?
        .ok_or_else(|| file.error(format!("missing metadata key {key}")))?;
    let tokens = strings(file, key, items)?;
    let types = match file.get_array("tokenizer.ggml.token_type")? {
        None => vec![token_type::NORMAL; tokens.len()],
        Some(items) => {
            if items.len() != tokens.len() {
                return Err(file.error(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    items.len(),
                    tokens.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_i64()
                        .and_then(|t| i32::try_from(t).ok())
                        .ok_or_else(|| {
                            file.error(format!(
                                "tokenizer.ggml.token_type[{i}] is {}, not a token type",
                                v.summary()
                            ))
                        })
                })
                .collect::<Result<_>>()?
        }
    };
    let mut ids = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // Some files repeat a token string; the first id wins, as in llama.cpp's lookup.
        ids.entry(*t).or_insert(i as u32);
    }
    Ok(Vocab { tokens, types, ids })
}

/// `tokenizer.json`'s `model.vocab`: token → id, first occurrence of each string.
fn vocab_json(v: &Vocab<'_>) -> Value {
    let mut map = Map::with_capacity(v.ids.len());
    for (i, t) in v.tokens.iter().enumerate() {
        if v.ids.get(t) == Some(&(i as u32)) {
            map.insert((*t).to_string(), json!(i));
        }
    }
    Value::Object(map)
}

/// Control, unknown and user-defined tokens are matched in the input before the model runs.
fn added_tokens(v: &Vocab<'_>) -> Vec<Value> {
    v.tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|&(_, (_, &ty))| {
            matches!(
                ty,
                token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
            )
        })
        .map(|(i, (t, &ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty != token_type::USER_DEFINED})
        })
        .collect()
}

/// Merges of a SentencePiece vocabulary: every split of a normal token into two known pieces,
/// by descending score, then token id, then the pieces' ids.
pub fn derive_spm_merges(tokens: &[&str], types: &[i32], scores: &[f32]) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.entry(*t).or_insert(i);
    }
    // (score, token id, left id, right id)
    let mut found: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i).copied().unwrap_or(token_type::NORMAL) != token_type::NORMAL {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&t[..k]), ids.get(&t[k..])) {
                found.push((scores.get(i).copied().unwrap_or(0.0), i, l, r));
            }
        }
    }
    found.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then((a.2, a.3).cmp(&(b.2, b.3)))
    });
    found
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].to_string(), tokens[r].to_string()))
        .collect()
}

fn token_id(file: &GgufFile, key: &str, v: &Vocab<'_>) -> Result<Option<u32>> {
    match file.get_u64(key)? {
        None => Ok(None),
        Some(id) if (id as usize) < v.tokens.len() => Ok(Some(id as u32)),
        Some(id) => Err(file.error(format!(
            "{key} = {id} is outside the vocabulary of {} tokens",
            v.tokens.len()
        ))),
    }
}

/// A post-processor adding BOS and/or EOS, or none.
fn post_processor(v: &Vocab<'_>, bos: Option<u32>, eos: Option<u32>) -> Value {
    let special = |id: u32| {
        let t = v.tokens[id as usize];
        (
            json!({"SpecialToken": {"id": t, "type_id": 0}}),
            (t, json!({"id": t, "ids": [id], "tokens": [t]})),
        )
    };
    let mut single = Vec::new();
    let mut specials = Map::new();
    if let Some(id) = bos {
        let (item, (t, def)) = special(id);
        single.push(item);
        specials.insert(t.to_string(), def);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(id) = eos {
        let (item, (t, def)) = special(id);
        single.push(item);
        specials.insert(t.to_string(), def);
    }
    if specials.is_empty() {
        return Value::Null;
    }
    let pair: Vec<Value> = single
        .iter()
        .cloned()
        .chain(single.iter().map(|item| match item.get("Sequence") {
            Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
            None => item.clone(),
        }))
        .collect();
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// The `tokenizer.json` document described by `file`'s metadata.
pub fn tokenizer_json(file: &GgufFile) -> Result<Value> {
    document(file, &read_vocab(file)?)
}

fn document(file: &GgufFile, v: &Vocab<'_>) -> Result<Value> {
    let model = file
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| file.error("missing metadata key tokenizer.ggml.model"))?;
    let bos = token_id(file, "tokenizer.ggml.bos_token_id", v)?;
    let eos = token_id(file, "tokenizer.ggml.eos_token_id", v)?;
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let added = added_tokens(v);
    let doc = match model {
        "llama" => {
            let add_bos = file
                .get_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(true);
            let prefix = file
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let scores: Vec<f32> = match file.get_array("tokenizer.ggml.scores")? {
                None => Vec::new(),
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_f64().map(|x| x as f32).ok_or_else(|| {
                            file.error(format!(
                                "tokenizer.ggml.scores[{i}] is {}, not a number",
                                v.summary()
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let merges = derive_spm_merges(&v.tokens, &v.types, &scores);
            let unk = token_id(file, "tokenizer.ggml.unknown_token_id", v)?
                .map(|id| id as usize)
                .or_else(|| v.types.iter().position(|&t| t == token_type::UNKNOWN))
                .map(|id| v.tokens[id]);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
            let normalizer = if prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]})
            } else {
                replace
            };
            json!({
                "version": "1.0",
                "added_tokens": added,
                "normalizer": normalizer,
                "pre_tokenizer": null,
                "post_processor": post_processor(v, bos.filter(|_| add_bos), eos.filter(|_| add_eos)),
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": usize::from(prefix), "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                          "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                          "vocab": vocab_json(v), "merges": merges},
            })
        }
        "gpt2" => {
            let add_bos = file
                .get_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false);
            let pre_name = file.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let (pre, ignore_merges) = pre_tokenizer(pre_name).ok_or_else(|| {
                file.error(format!(
                    "tokenizer.ggml.pre {pre_name:?} is not supported (supported: {PRE_TOKENIZERS})"
                ))
            })?;
            let key = "tokenizer.ggml.merges";
            let items = file
                .get_array(key)?
                .ok_or_else(|| file.error(format!("missing metadata key {key}")))?;
            let merges = strings(file, key, items)?
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    m.split_once(' ')
                        .map(|(a, b)| json!([a, b]))
                        .ok_or_else(|| file.error(format!("{key}[{i}] {m:?} is not two tokens")))
                })
                .collect::<Result<Vec<Value>>>()?;
            json!({
                "version": "1.0",
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre,
                "post_processor": post_processor(v, bos.filter(|_| add_bos), eos.filter(|_| add_eos)),
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null,
                          "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                          "vocab": vocab_json(v), "merges": merges},
            })
        }
        other => {
            return Err(file.error(format!(
                "tokenizer.ggml.model {other:?} is not supported (supported: llama, gpt2)"
            )))
        }
    };
    Ok(doc)
}

/// pagoda's tokenizer for a GGUF file: the vocabulary, BOS/EOS and chat template of its metadata.
pub fn load_tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let v = read_vocab(file)?;
    let doc = document(file, &v)?;
    let inner: tokenizers::Tokenizer =
        serde_json::from_value(doc).map_err(|e| ModelError::Tokenizer {
            path: file.path().to_path_buf(),
            message: format!("building the tokenizer from GGUF metadata: {e}"),
        })?;
    let name = |key: &str| -> Result<Option<String>> {
        Ok(token_id(file, key, &v)?.map(|id| v.tokens[id as usize].to_string()))
    };
    Ok(Tokenizer::from_parts(
        inner,
        file.path(),
        file.get_str("tokenizer.chat_template")?.map(str::to_string),
        name("tokenizer.ggml.bos_token_id")?,
        name("tokenizer.ggml.eos_token_id")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_follow_scores_then_ids() {
        let tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "<0x41>"];
        let types = [2, 1, 1, 1, 1, 1, 1, 6];
        // "bc" scores higher than "ab"; "abc" splits two ways (ab+c, a+bc), ordered by piece ids.
        let scores = [0.0, -10.0, -11.0, -12.0, -2.0, -1.0, -3.0, 0.0];
        let merges = derive_spm_merges(&tokens, &types, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(pairs, [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
        // Equal scores (llama.cpp writes -1000 for every token of a tokenizer.json-only model):
        // token id order.
        let merges = derive_spm_merges(&tokens, &types, &[-1000.0; 8]);
        assert_eq!(merges[0], ("a".to_string(), "b".to_string()));
    }

    #[test]
    fn every_named_pre_tokenizer_parses() {
        for name in PRE_TOKENIZERS.split(", ") {
            let (pre, _) = pre_tokenizer(name).expect(name);
            let doc = json!({"version": "1.0", "added_tokens": [], "normalizer": null,
                "pre_tokenizer": pre, "post_processor": null, "decoder": null,
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}});
            serde_json::from_value::<tokenizers::Tokenizer>(doc).expect(name);
        }
        assert!(pre_tokenizer("tekken").is_none());
    }
}
