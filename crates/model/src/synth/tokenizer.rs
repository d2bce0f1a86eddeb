//! Synthetic byte-level BPE tokenizer of an exact vocabulary size: 256 GPT-2 byte symbols, the
//! family's special tokens, merges learnt from the built-in English word list (so English text
//! compresses plausibly), then systematic letter-string merges up to the vocabulary size.
//! Emits Hugging Face `tokenizer.json` and `tokenizer_config.json`.

use std::collections::HashMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use super::corpus;
use super::shapes::{Family, Shape};
use super::SynthError;

/// The special tokens of a synthetic tokenizer and the ids they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: &'static str,
    pub bos_token_id: u32,
    pub eos_token: &'static str,
    pub eos_token_id: u32,
    pub unk_token: Option<&'static str>,
    pub pad_token: Option<&'static str>,
    /// Every special token with its id, in id order.
    pub all: Vec<(&'static str, u32)>,
}

/// Llama: `<unk>` 0, `<s>` 1 (BOS), `</s>` 2 (EOS).
/// Qwen2: `<|endoftext|>` V-3 (BOS, pad), `<|im_start|>` V-2, `<|im_end|>` V-1 (EOS).
pub fn special_tokens(shape: &Shape) -> Result<SpecialTokens, SynthError> {
    shape.validate()?;
    Ok(match shape.family()? {
        Family::Llama => SpecialTokens {
            bos_token: "<s>",
            bos_token_id: 1,
            eos_token: "</s>",
            eos_token_id: 2,
            unk_token: Some("<unk>"),
            pad_token: None,
            all: vec![("<unk>", 0), ("<s>", 1), ("</s>", 2)],
        },
        Family::Qwen2 => {
            let base = (shape.vocab_size - 3) as u32;
            SpecialTokens {
                bos_token: "<|endoftext|>",
                bos_token_id: base,
                eos_token: "<|im_end|>",
                eos_token_id: base + 2,
                unk_token: None,
                pad_token: Some("<|endoftext|>"),
                all: vec![
                    ("<|endoftext|>", base),
                    ("<|im_start|>", base + 1),
                    ("<|im_end|>", base + 2),
                ],
            }
        }
    })
}

/// The generated tokenizer files and the special tokens they declare.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
    pub special: SpecialTokens,
}

/// Builds `tokenizer.json` / `tokenizer_config.json` whose total vocabulary (model vocabulary,
/// which includes the special tokens, plus added tokens) is exactly `shape.vocab_size`.
pub fn build_tokenizer(shape: &Shape) -> Result<TokenizerFiles, SynthError> {
    let special = special_tokens(shape)?;
    let family = shape.family()?;
    let budget = shape.vocab_size - 256 - special.all.len();

    let mut vocab = Vocab::with_bytes();
    train(&mut vocab, budget);
    fill(&mut vocab, budget)?;

    // Model vocabulary in id order: specials first (Llama) or last (Qwen2).
    let offset = match family {
        Family::Llama => special.all.len() as u32,
        Family::Qwen2 => 0,
    };
    let mut entries: Vec<(&str, u32)> = Vec::with_capacity(shape.vocab_size);
    if family == Family::Llama {
        entries.extend(special.all.iter().copied());
    }
    entries.extend(
        vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32 + offset)),
    );
    if family == Family::Qwen2 {
        entries.extend(special.all.iter().copied());
    }
    if entries.len() != shape.vocab_size {
        return Err(SynthError::Internal(format!(
            "tokenizer has {} tokens, expected {}",
            entries.len(),
            shape.vocab_size
        )));
    }

    let merges: Vec<String> = vocab
        .merges
        .iter()
        .map(|&(a, b)| format!("{} {}", vocab.tokens[a as usize], vocab.tokens[b as usize]))
        .collect();
    let added_tokens: Vec<Value> = special
        .all
        .iter()
        .map(|&(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let post_processor = match family {
        Family::Llama => {
            let bos = special.bos_token;
            let tok = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
            let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
            json!({
                "type": "TemplateProcessing",
                "single": [tok(0), seq("A", 0)],
                "pair": [tok(0), seq("A", 0), tok(1), seq("B", 1)],
                "special_tokens": {bos: {"id": bos, "ids": [special.bos_token_id], "tokens": [bos]}},
            })
        }
        Family::Qwen2 => json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": false, "use_regex": false}),
    };
    let file = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens,
        normalizer: None,
        pre_tokenizer: json!({"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true}),
        post_processor,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": true, "use_regex": true}),
        model: BpeJson {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: OrderedVocab(&entries),
            merges,
        },
    };
    let tokenizer_json = serde_json::to_string_pretty(&file)?;
    let tokenizer_config_json = tokenizer_config(shape, family, &special)?;
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json,
        special,
    })
}

const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const ZEPHYR_TEMPLATE: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

fn tokenizer_config(
    shape: &Shape,
    family: Family,
    special: &SpecialTokens,
) -> Result<String, SynthError> {
    let decoder: serde_json::Map<String, Value> = special
        .all
        .iter()
        .map(|&(content, id)| {
            let token = json!({"content": content, "lstrip": false, "normalized": false,
                               "rstrip": false, "single_word": false, "special": true});
            (id.to_string(), token)
        })
        .collect();
    let (add_bos, template) = match family {
        Family::Llama => (true, ZEPHYR_TEMPLATE),
        Family::Qwen2 => (false, CHATML_TEMPLATE),
    };
    let config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": special.bos_token,
        "chat_template": template,
        "clean_up_tokenization_spaces": false,
        "eos_token": special.eos_token,
        "model_max_length": shape.max_position_embeddings,
        "pad_token": special.pad_token,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": special.unk_token,
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Option<()>,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeJson<'a>,
}

#[derive(Serialize)]
struct BpeJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'static str>,
    continuing_subword_prefix: Option<&'static str>,
    end_of_word_suffix: Option<&'static str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: OrderedVocab<'a>,
    merges: Vec<String>,
}

/// A token → id map serialised in id order (serde_json's own map would sort by key).
struct OrderedVocab<'a>(&'a [(&'a str, u32)]);

impl Serialize for OrderedVocab<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, id) in self.0 {
            map.serialize_entry(token, id)?;
        }
        map.end()
    }
}

/// GPT-2's reversible byte → printable character mapping used by byte-level BPE.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        *slot = if printable {
            char::from(b as u8)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    out
}

/// Model tokens (without the special tokens): index `b` < 256 is byte `b`, then merge results.
struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
    merges: Vec<(u32, u32)>,
}

impl Vocab {
    fn with_bytes() -> Self {
        let tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self {
            tokens,
            index,
            merges: Vec::new(),
        }
    }

    /// Adds the merge `a b` if its result is a new token; returns the result's id if added.
    fn push_merge(&mut self, a: u32, b: u32) -> Option<u32> {
        let merged = format!("{}{}", self.tokens[a as usize], self.tokens[b as usize]);
        if self.index.contains_key(&merged) {
            return None;
        }
        let id = self.tokens.len() as u32;
        self.index.insert(merged.clone(), id);
        self.tokens.push(merged);
        self.merges.push((a, b));
        Some(id)
    }

    /// The id of `a`+`b`, adding the merge when it is new.
    fn merge_or_get(&mut self, a: u32, b: u32) -> u32 {
        let merged = format!("{}{}", self.tokens[a as usize], self.tokens[b as usize]);
        match self.index.get(&merged) {
            Some(&id) => id,
            None => self.push_merge(a, b).unwrap_or(0),
        }
    }
}

/// Classic BPE training on the weighted built-in corpus, stopping at `budget` merges or when
/// every pre-token is a single token. Ties break towards the smaller pair, so it is deterministic.
fn train(vocab: &mut Vocab, budget: usize) {
    let chars = byte_chars();
    let mut words: Vec<(Vec<u32>, u64)> = corpus::pretokens()
        .into_iter()
        .map(|(text, weight)| {
            let symbols = text
                .bytes()
                .map(|b| vocab.index[&chars[b as usize].to_string()]);
            (symbols.collect(), weight)
        })
        .collect();
    let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
    for (word, weight) in &words {
        for p in word.windows(2) {
            *counts.entry((p[0], p[1])).or_default() += weight;
        }
    }
    while vocab.merges.len() < budget {
        let best = counts
            .iter()
            .max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0)))
            .map(|(&pair, _)| pair);
        let Some(pair) = best else { break };
        counts.remove(&pair);
        let Some(new_id) = vocab.push_merge(pair.0, pair.1) else {
            continue; // the merged string already exists: drop this pair
        };
        for (word, weight) in words.iter_mut() {
            if !word.windows(2).any(|p| (p[0], p[1]) == pair) {
                continue;
            }
            for p in word.windows(2) {
                let key = (p[0], p[1]);
                if let Some(c) = counts.get_mut(&key) {
                    *c = c.saturating_sub(*weight);
                    if *c == 0 {
                        counts.remove(&key);
                    }
                }
            }
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && (word[i], word[i + 1]) == pair {
                    merged.push(new_id);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            *word = merged;
            for p in word.windows(2) {
                if (p[0], p[1]) != pair {
                    *counts.entry((p[0], p[1])).or_default() += *weight;
                }
            }
        }
    }
}

/// Letters in rough English frequency order, for the systematic fill.
const FILL_LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";

/// Tops the merges up to `budget` with letter strings, shortest first: level 1 is `Ġx` and `xy`,
/// each next level appends one letter to every string of the previous level.
fn fill(vocab: &mut Vocab, budget: usize) -> Result<(), SynthError> {
    let letters: Vec<u32> = FILL_LETTERS.iter().map(|&b| u32::from(b)).collect();
    let mut level: Vec<u32> = vec![u32::from(b' ')];
    level.extend(&letters);
    // Each level is 26x larger than the last and eventually all new, so this always terminates
    // for a validated vocabulary size; the bound only guards against logic errors.
    for _ in 0..8 {
        let mut next = Vec::with_capacity(level.len().saturating_mul(letters.len()).min(budget));
        for &prefix in &level {
            for &letter in &letters {
                if vocab.merges.len() >= budget {
                    return Ok(());
                }
                next.push(vocab.merge_or_get(prefix, letter));
            }
        }
        level = next;
    }
    Err(SynthError::Internal(format!(
        "tokenizer fill stopped at {} of {budget} merges",
        vocab.merges.len()
    )))
}
