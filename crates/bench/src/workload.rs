//! Benchmark workloads: what each request asks for.
//!
//! - `random`: prompts of random real tokens of the target's tokenizer (drawn from the tokens
//!   of a built-in English passage), lengths uniform in `len × [1 − r, 1 + r]`, `ignore_eos`.
//! - `shared-prefix`: a few long random prefixes shared by many requests, each followed by a
//!   unique random suffix (exercises prefix caching).
//! - `sharegpt`: first human turn of ShareGPT conversations as the prompt; the output length
//!   is the token count of the first reply (or `--output-len`).
//!
//! Everything is reproducible from the seed. Requests are serialized to JSON here, once, so the
//! timed loop only sends bytes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::client::{EndpointKind, PreparedRequest};
use crate::error::{BenchError, Result};
use crate::tokens::TokenSource;

/// Tokenizer round trips run this many at a time against a server.
const REMOTE_PARALLELISM: usize = 32;

/// Source of the random workload's tokens: ordinary prose, so that the ids are ones the
/// tokenizer really produces (merges, words, punctuation) rather than arbitrary vocabulary.
const CORPUS: &str = "The old harbour town woke slowly. Fishermen checked their nets while the \
    baker pulled the first loaves from a brick oven, and the smell of bread drifted over wet \
    cobblestones. At the station, a clerk wrote the morning's timetable on a chalkboard: trains \
    to the capital at 7:15, 9:40 and 13:05; the coastal line delayed by twenty minutes because \
    of repairs near the bridge. Children ran past the library, where a notice announced a \
    lecture on astronomy, mathematics and the history of navigation. Inside, shelves held \
    atlases, dictionaries, novels, and a few rare manuscripts about shipbuilding. A student \
    asked whether the computer could translate an article from French into English; the \
    librarian explained how the software splits sentences into tokens, compares probabilities, \
    and chooses the most likely words. Outside, the weather changed quickly: clouds gathered, \
    the wind turned north-east, and rain began to fall on the market, where merchants sold \
    apples, cheese, olives, wool, copper pots, and bright blue pottery. By evening the storm \
    had passed. Lanterns glowed along the quay, musicians played an old song about sailors \
    returning home, and somebody calculated that 3,482 visitors had come to the festival, \
    almost twice as many as the year before. \"We should build a bigger stage,\" said the \
    mayor, \"and perhaps a museum for the lighthouse.\" Nobody disagreed.";

/// Which workload, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadSpec {
    Random {
        input_len: usize,
        output_len: usize,
        range_ratio: f64,
    },
    SharedPrefix {
        prefix_len: usize,
        num_prefixes: usize,
        input_len: usize,
        output_len: usize,
        range_ratio: f64,
    },
    ShareGpt {
        path: PathBuf,
        /// Overrides the reply's token count.
        output_len: Option<usize>,
        ignore_eos: bool,
    },
}

/// One request's content before serialization.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub prompt_len: usize,
    pub output_len: usize,
    pub ignore_eos: bool,
}

/// Sampling settings common to every request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSettings {
    pub model: String,
    pub endpoint: EndpointKind,
    pub temperature: f64,
    /// Keys merged into every request body last (they override the generated ones), e.g.
    /// `logit_bias` for a server without `ignore_eos`.
    pub extra_body: Map<String, Value>,
}

fn uniform_len(rng: &mut ChaCha8Rng, mean: usize, ratio: f64) -> usize {
    let low = ((mean as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let high = ((mean as f64) * (1.0 + ratio)).round().max(low as f64) as usize;
    rng.random_range(low..=high)
}

fn check_ratio(range_ratio: f64) -> Result<()> {
    if !(0.0..1.0).contains(&range_ratio) {
        return Err(BenchError::invalid(format!(
            "--range-ratio must be in [0, 1), got {range_ratio}"
        )));
    }
    Ok(())
}

/// Distinct token ids of the corpus: the pool random prompts draw from.
async fn token_pool(tokens: &TokenSource) -> Result<Vec<u32>> {
    let mut ids = tokens.encode(CORPUS).await?;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(BenchError::Tokenizer(
            "the corpus tokenized to nothing".into(),
        ));
    }
    Ok(ids)
}

/// Text of `len` random pool tokens, and its token count (exact with a local tokenizer, where
/// re-encoding is cheap; the requested `len` against a server, whose usage reports the truth).
async fn random_text(tokens: &TokenSource, ids: Vec<u32>) -> Result<(String, usize)> {
    let text = tokens.decode(&ids).await?;
    let len = if tokens.is_local() {
        tokens.encode(&text).await?.len()
    } else {
        ids.len()
    };
    Ok((text, len))
}

/// Decodes many id lists, a few at a time against a server.
async fn decode_all(tokens: &TokenSource, id_lists: Vec<Vec<u32>>) -> Result<Vec<(String, usize)>> {
    stream::iter(id_lists.into_iter().map(|ids| random_text(tokens, ids)))
        .buffered(REMOTE_PARALLELISM)
        .try_collect()
        .await
}

fn draw(rng: &mut ChaCha8Rng, pool: &[u32], len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

/// Builds `n` prompts of the workload.
pub async fn build(
    spec: &WorkloadSpec,
    n: usize,
    seed: u64,
    tokens: &TokenSource,
) -> Result<Vec<Prompt>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match spec {
        WorkloadSpec::Random {
            input_len,
            output_len,
            range_ratio,
        } => {
            check_ratio(*range_ratio)?;
            let pool = token_pool(tokens).await?;
            let mut ids = Vec::with_capacity(n);
            let mut outputs = Vec::with_capacity(n);
            for _ in 0..n {
                let len = uniform_len(&mut rng, *input_len, *range_ratio);
                ids.push(draw(&mut rng, &pool, len));
                outputs.push(uniform_len(&mut rng, *output_len, *range_ratio));
            }
            let texts = decode_all(tokens, ids).await?;
            Ok(texts
                .into_iter()
                .zip(outputs)
                .map(|((text, prompt_len), output_len)| Prompt {
                    text,
                    prompt_len,
                    output_len,
                    ignore_eos: true,
                })
                .collect())
        }
        WorkloadSpec::SharedPrefix {
            prefix_len,
            num_prefixes,
            input_len,
            output_len,
            range_ratio,
        } => {
            check_ratio(*range_ratio)?;
            if *num_prefixes == 0 {
                return Err(BenchError::invalid("--num-prefixes must be at least 1"));
            }
            let pool = token_pool(tokens).await?;
            let prefix_ids = (0..*num_prefixes)
                .map(|_| draw(&mut rng, &pool, *prefix_len))
                .collect();
            let prefixes = decode_all(tokens, prefix_ids).await?;
            let mut suffix_ids = Vec::with_capacity(n);
            let mut outputs = Vec::with_capacity(n);
            for _ in 0..n {
                let len = uniform_len(&mut rng, *input_len, *range_ratio);
                suffix_ids.push(draw(&mut rng, &pool, len));
                outputs.push(uniform_len(&mut rng, *output_len, *range_ratio));
            }
            let suffixes = decode_all(tokens, suffix_ids).await?;
            Ok(suffixes
                .into_iter()
                .zip(outputs)
                .enumerate()
                .map(|(i, ((suffix, suffix_len), output_len))| {
                    let (prefix, prefix_len) = &prefixes[i % prefixes.len()];
                    Prompt {
                        text: format!("{prefix}{suffix}"),
                        prompt_len: prefix_len + suffix_len,
                        output_len,
                        ignore_eos: true,
                    }
                })
                .collect())
        }
        WorkloadSpec::ShareGpt {
            path,
            output_len,
            ignore_eos,
        } => sharegpt(path, *output_len, *ignore_eos, n, &mut rng, tokens).await,
    }
}

#[derive(Deserialize)]
struct Conversation {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

/// (prompt, reply) pairs: each conversation's first human turn and the reply that follows it.
pub fn sharegpt_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| BenchError::io(path, e))?;
    let conversations: Vec<Conversation> = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|source| BenchError::Json {
        what: format!("ShareGPT dataset {}", path.display()),
        source,
    })?;
    let pairs = conversations
        .into_iter()
        .filter_map(|c| {
            let first_human = c.conversations.iter().position(|t| t.from == "human")?;
            let reply = c.conversations.get(first_human + 1)?;
            let prompt = &c.conversations[first_human].value;
            (reply.from == "gpt" && !prompt.trim().is_empty())
                .then(|| (prompt.clone(), reply.value.clone()))
        })
        .collect::<Vec<_>>();
    if pairs.is_empty() {
        return Err(BenchError::Dataset {
            path: path.to_path_buf(),
            message: "no conversation starts with a human turn answered by gpt".into(),
        });
    }
    Ok(pairs)
}

async fn sharegpt(
    path: &Path,
    output_len: Option<usize>,
    ignore_eos: bool,
    n: usize,
    rng: &mut ChaCha8Rng,
    tokens: &TokenSource,
) -> Result<Vec<Prompt>> {
    let mut pairs = sharegpt_pairs(path)?;
    pairs.shuffle(rng);
    // Only the conversations that will be used are tokenized (the full dataset is large).
    let mut chosen = Vec::with_capacity(n);
    let mut candidates = pairs.iter().cycle().take(n.max(1) * 2 + pairs.len());
    while chosen.len() < n {
        let batch: Vec<&(String, String)> = candidates.by_ref().take(REMOTE_PARALLELISM).collect();
        if batch.is_empty() {
            break;
        }
        let measured: Vec<Option<Prompt>> =
            stream::iter(batch.into_iter().map(|(prompt, reply)| async move {
                let prompt_len = tokens.encode(prompt).await?.len();
                let out = match output_len {
                    Some(len) => len,
                    None => tokens.encode(reply).await?.len(),
                };
                Ok::<_, BenchError>((out > 0).then(|| Prompt {
                    text: prompt.clone(),
                    prompt_len,
                    output_len: out,
                    ignore_eos,
                }))
            }))
            .buffered(REMOTE_PARALLELISM)
            .try_collect()
            .await?;
        chosen.extend(measured.into_iter().flatten());
    }
    chosen.truncate(n);
    if chosen.len() < n {
        return Err(BenchError::Dataset {
            path: path.to_path_buf(),
            message: "every reply tokenized to nothing".into(),
        });
    }
    Ok(chosen)
}

/// The JSON body of one streamed request for `prompt`.
pub fn request_body(prompt: &Prompt, settings: &RequestSettings) -> Value {
    let mut body = match settings.endpoint {
        EndpointKind::Completions => json!({
            "model": settings.model,
            "prompt": prompt.text,
            "max_tokens": prompt.output_len,
        }),
        EndpointKind::Chat => json!({
            "model": settings.model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_completion_tokens": prompt.output_len,
        }),
    };
    body["temperature"] = json!(settings.temperature);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    if prompt.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    for (key, value) in &settings.extra_body {
        body[key] = value.clone();
    }
    body
}

/// Serializes every prompt's request once.
pub fn prepare(prompts: &[Prompt], settings: &RequestSettings) -> Result<Vec<PreparedRequest>> {
    prompts
        .iter()
        .map(|p| {
            let body = serde_json::to_vec(&request_body(p, settings)).map_err(|source| {
                BenchError::Json {
                    what: "a request body".into(),
                    source,
                }
            })?;
            Ok(PreparedRequest {
                body: Bytes::from(body),
                prompt_len: p.prompt_len,
                expected_output_len: p.output_len,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> Prompt {
        Prompt {
            text: "hello there".into(),
            prompt_len: 2,
            output_len: 7,
            ignore_eos: true,
        }
    }

    fn settings(endpoint: EndpointKind, extra: Value) -> RequestSettings {
        RequestSettings {
            model: "m".into(),
            endpoint,
            temperature: 0.5,
            extra_body: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn bodies_ask_for_a_stream_with_usage_and_the_output_length() {
        let body = request_body(&prompt(), &settings(EndpointKind::Completions, json!({})));
        assert_eq!(body["prompt"], "hello there");
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        let chat = request_body(&prompt(), &settings(EndpointKind::Chat, json!({})));
        assert_eq!(chat["messages"][0]["content"], "hello there");
        assert_eq!(chat["max_completion_tokens"], 7);
        assert!(chat.get("max_tokens").is_none());
    }

    #[test]
    fn extra_body_keys_are_added_and_override_generated_ones() {
        let extra = json!({"logit_bias": {"2": -100}, "temperature": 1.0});
        let body = request_body(&prompt(), &settings(EndpointKind::Completions, extra));
        assert_eq!(body["logit_bias"]["2"], -100);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["max_tokens"], 7);
    }
}
