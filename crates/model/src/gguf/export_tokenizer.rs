//! A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) as GGUF tokenizer metadata, the way
//! llama.cpp's converter stores it:
//!
//! - BPE with byte fallback (SentencePiece style, e.g. Llama 2, stories260k) → `llama`: tokens,
//!   scores and token types; no merges (readers derive them from the scores). A token's score is
//!   minus the rank of the first merge producing it, so the derived merges come back in the
//!   original order; tokens no merge produces rank below every merge.
//! - Byte-level BPE → `gpt2`: tokens, token types, merges, and `tokenizer.ggml.pre` named after the
//!   pre-tokenizer (GPT-2's ByteLevel regex, SmolLM's digits + ByteLevel, Llama 3's or Qwen2's
//!   split pattern).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::reader::MetaValue;
use super::tokenizer::{token_type, LLAMA3_PATTERN, QWEN2_PATTERN};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The `tokenizer.ggml.pre` name of a byte-level pre-tokenizer, if it is one pagoda reads back.
pub fn pre_tokenizer_name(pre: &Value) -> Option<&'static str> {
    let kind = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let regex = |v: &Value| v.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    if kind(pre) == "ByteLevel" {
        return regex(pre).then_some("gpt-2");
    }
    let items = pre.get("pretokenizers")?.as_array()?;
    match items.as_slice() {
        [digits, bl] if kind(digits) == "Digits" && kind(bl) == "ByteLevel" && regex(bl) => {
            (digits.get("individual_digits") == Some(&Value::Bool(true))).then_some("smollm")
        }
        [split, bl] if kind(split) == "Split" && kind(bl) == "ByteLevel" && !regex(bl) => {
            match split.pointer("/pattern/Regex").and_then(Value::as_str)? {
                p if p == LLAMA3_PATTERN => Some("llama-bpe"),
                p if p == QWEN2_PATTERN => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The tokenizer metadata of the model directory `dir`, with `config.vocab_size` tokens at least
/// (unused ids become `[PADn]` tokens, as llama.cpp's converter writes them).
pub fn tokenizer_metadata(dir: &Path, config: &ModelConfig) -> Result<Vec<(String, MetaValue)>> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let config_path = dir.join("tokenizer_config.json");
    let tok_config = if config_path.exists() {
        read_json(&config_path)?
    } else {
        Value::Null
    };
    let bad = |message: String| ModelError::Tokenizer {
        path: path.clone(),
        message,
    };
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "model type {} cannot be written as GGUF (supported: BPE)",
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    // id → (text, special added token?, added token?)
    let mut entries: HashMap<usize, (String, bool, bool)> = HashMap::new();
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("vocab id of {text:?}")))? as usize;
        entries.insert(id, (text.clone(), false, false));
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad(format!("added token {added} lacks id or content")));
        };
        let special = added["special"].as_bool().unwrap_or(false);
        let entry = entries
            .entry(id as usize)
            .or_insert((text.to_string(), special, true));
        if entry.0 != text {
            return Err(bad(format!("id {id} is both {:?} and {text:?}", entry.0)));
        }
        (entry.1, entry.2) = (special, true);
    }
    let size = entries
        .keys()
        .max()
        .map_or(0, |m| m + 1)
        .max(config.vocab_size);
    let unk = model["unk_token"].as_str();
    let mut tokens = Vec::with_capacity(size);
    let mut types = Vec::with_capacity(size);
    for id in 0..size {
        let (text, ty) = match entries.get(&id) {
            None => (format!("[PAD{id}]"), token_type::UNUSED),
            Some((text, special, added)) => {
                let ty = if Some(text.as_str()) == unk {
                    token_type::UNKNOWN
                } else if *special {
                    token_type::CONTROL
                } else if *added {
                    token_type::USER_DEFINED
                } else if is_byte_token(text) {
                    token_type::BYTE
                } else {
                    token_type::NORMAL
                };
                (text.clone(), ty)
            }
        };
        tokens.push(text);
        types.push(ty);
    }
    let merges: Vec<(String, String)> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
            Value::Array(p) => match p.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("model.merges holds something other than token pairs".into()))?;

    let mut meta: Vec<(String, MetaValue)> = Vec::new();
    let mut put = |k: &str, v: MetaValue| meta.push((k.to_string(), v));
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let pre = &tok["pre_tokenizer"];
    if model["byte_fallback"].as_bool() == Some(true) {
        if !(pre.is_null() || pre["type"].as_str() == Some("Metaspace")) {
            return Err(bad(format!(
                "a byte-fallback BPE with pre-tokenizer {} cannot be written as GGUF",
                pre["type"]
            )));
        }
        put("tokenizer.ggml.model", MetaValue::String("llama".into()));
        let mut scores = vec![None::<f32>; size];
        for (rank, (a, b)) in merges.iter().enumerate() {
            if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
                scores[id as usize].get_or_insert(-(rank as f32));
            }
        }
        let scores = scores
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (s, &ty))| match (s, ty) {
                (Some(s), _) => *s,
                (None, token_type::NORMAL) => -((merges.len() + i) as f32),
                _ => 0.0,
            });
        put("tokenizer.ggml.tokens", strings(&tokens));
        put(
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.map(MetaValue::F32).collect()),
        );
        put("tokenizer.ggml.token_type", ints(&types));
        put(
            "tokenizer.ggml.add_space_prefix",
            MetaValue::Bool(prepends_space(&tok["normalizer"]) || prepends_space(pre)),
        );
    } else if let Some(pre_name) = pre_tokenizer_name(pre) {
        if let Some((a, b)) = merges
            .iter()
            .find(|(a, b)| a.contains(' ') || b.contains(' '))
        {
            return Err(bad(format!(
                "merge ({a:?}, {b:?}) holds a space, which GGUF cannot store"
            )));
        }
        put("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
        put("tokenizer.ggml.pre", MetaValue::String(pre_name.into()));
        put("tokenizer.ggml.tokens", strings(&tokens));
        put("tokenizer.ggml.token_type", ints(&types));
        let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
        put("tokenizer.ggml.merges", strings(&merges));
    } else {
        return Err(bad(format!(
            "pre-tokenizer {pre} has no GGUF equivalent pagoda knows (supported: none or Metaspace with byte fallback; ByteLevel as in GPT-2, SmolLM, Llama 3, Qwen2)"
        )));
    }

    let lookup = |key: &str| token_text(tok_config.get(key)).and_then(|t| ids.get(t).copied());
    let bos = lookup("bos_token").or(config.bos_token_id);
    let eos = lookup("eos_token").or(config.eos_token_ids.first().copied());
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        (
            "tokenizer.ggml.unknown_token_id",
            unk.and_then(|u| ids.get(u).copied()),
        ),
        ("tokenizer.ggml.padding_token_id", lookup("pad_token")),
    ] {
        if let Some(id) = id {
            put(key, MetaValue::U32(id));
        }
    }
    // BOS as the tokenizer adds it: tokenizer_config's flag, else a template starting with it.
    let add_bos = tok_config["add_bos_token"].as_bool().unwrap_or_else(|| {
        tok["post_processor"]["single"][0]
            .get("SpecialToken")
            .is_some()
    });
    put("tokenizer.ggml.add_bos_token", MetaValue::Bool(add_bos));
    let add_eos = tok_config["add_eos_token"].as_bool().unwrap_or(false);
    put("tokenizer.ggml.add_eos_token", MetaValue::Bool(add_eos));
    let template = match &tok_config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: the default one, else the first.
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or(list.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    };
    if let Some(t) = template {
        put("tokenizer.chat_template", MetaValue::String(t));
    }
    Ok(meta)
}

/// Whether a normalizer (Llama 2's `Prepend("▁")`, possibly in a `Sequence`) or a `Metaspace`
/// pre-tokenizer puts "▁" before the text: GGUF's `add_space_prefix`.
fn prepends_space(v: &Value) -> bool {
    match v["type"].as_str() {
        Some("Prepend") => true,
        Some("Sequence") => v["normalizers"]
            .as_array()
            .is_some_and(|items| items.iter().any(prepends_space)),
        Some("Metaspace") => v["prepend_scheme"]
            .as_str()
            .map_or(v["add_prefix_space"].as_bool().unwrap_or(true), |s| {
                s != "never"
            }),
        _ => false,
    }
}

fn strings(items: &[String]) -> MetaValue {
    MetaValue::Array(items.iter().map(|s| MetaValue::String(s.clone())).collect())
}

fn ints(items: &[i32]) -> MetaValue {
    MetaValue::Array(items.iter().map(|&t| MetaValue::I32(t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_level_pre_tokenizers_are_named() {
        let bl = |r: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": r});
        assert_eq!(pre_tokenizer_name(&bl(true)), Some("gpt-2"));
        assert_eq!(pre_tokenizer_name(&bl(false)), None);
        let smollm = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_tokenizer_name(&smollm), Some("smollm"));
        let llama3 = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated"}, bl(false)]});
        assert_eq!(pre_tokenizer_name(&llama3), Some("llama-bpe"));
        let llama2 = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace"}]});
        assert!(prepends_space(&llama2));
        assert!(prepends_space(
            &json!({"type": "Metaspace", "prepend_scheme": "first"})
        ));
        assert!(!prepends_space(
            &json!({"type": "Metaspace", "prepend_scheme": "never"})
        ));
        assert!(!prepends_space(&Value::Null));
        assert!(is_byte_token("<0x0A>") && !is_byte_token("<0xZZ>") && !is_byte_token("<s>"));
    }
}
