//! Local generation over a fixed set of sequences, one forward per step for all of them.
//!
//! This is the runner's own driver for `pagoda generate`, `pagoda bench latency` and the golden
//! tests: every sequence gets its blocks up front (interleaved across sequences, so block tables
//! are never contiguous), prompts are prefilled in chunks of at most `prefill_chunk` tokens, and
//! then all sequences decode together. Serving traffic goes through the engine's scheduler instead.

use pagoda_core::{SampledToken, SamplingParams, TokenId};

use crate::error::{ModelError, Result};
use crate::model::StepBatch;
use crate::ops::attention::SeqAttention;
use crate::runner::ModelRunner;
use crate::sampler::{RequestRng, Sampler, StepMasks};

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<TokenId>,
    pub params: SamplingParams,
}

/// How the batch is driven.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Largest prompt chunk a sequence prefills in one step.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { prefill_chunk: 512 }
    }
}

/// What a callback sees for each sampled token.
pub struct TokenEvent<'a> {
    pub seq: usize,
    /// The raw logits that chose the token.
    pub logits: &'a [f32],
    pub sampled: &'a SampledToken,
}

/// Why a local generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    MaxTokens,
    Eos,
    ContextLength,
}

/// A finished sequence.
#[derive(Debug, Clone)]
pub struct Generation {
    pub output_ids: Vec<TokenId>,
    pub stop: Stop,
}

struct SeqState {
    prompt: Vec<TokenId>,
    output: Vec<TokenId>,
    computed: usize,
    table: Vec<u32>,
    rng: RequestRng,
    done: Option<Stop>,
}

/// Generates every request to completion; `on_token` sees each sampled token as it is produced.
pub fn generate(
    runner: &mut ModelRunner,
    requests: &[GenerationRequest],
    options: &GenerateOptions,
    mut on_token: impl FnMut(TokenEvent<'_>),
) -> Result<Vec<Generation>> {
    let bs = runner.kv.geometry.block_size;
    let max_ctx = runner.config().max_context_len;
    let eos = runner.config().eos_token_ids.clone();
    let mut seqs: Vec<SeqState> = Vec::with_capacity(requests.len());
    let mut needed = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.prompt_ids.is_empty() {
            return Err(ModelError::InvalidOption(format!(
                "request {i}: empty prompt"
            )));
        }
        if r.prompt_ids.len() >= max_ctx {
            return Err(ModelError::InvalidOption(format!(
                "request {i}: prompt of {} tokens leaves no room in the {max_ctx}-token context",
                r.prompt_ids.len()
            )));
        }
        if let Some(&bad) = r
            .prompt_ids
            .iter()
            .find(|&&t| t as usize >= runner.config().vocab_size)
        {
            return Err(ModelError::InvalidOption(format!(
                "request {i}: token id {bad} is outside the vocabulary"
            )));
        }
        let total = (r.prompt_ids.len() + r.params.max_tokens).min(max_ctx);
        needed.push(total.div_ceil(bs));
        seqs.push(SeqState {
            prompt: r.prompt_ids.clone(),
            output: Vec::new(),
            computed: 0,
            table: Vec::new(),
            rng: RequestRng::new(r.params.seed),
            done: None,
        });
    }
    let total_blocks: usize = needed.iter().sum();
    if total_blocks > runner.kv.geometry.num_blocks {
        return Err(ModelError::KvCacheTooSmall {
            budget_bytes: runner.kv.geometry.num_blocks
                * crate::kv_cache::KvCache::block_bytes(runner.config(), bs, runner.kv.dtype),
            num_blocks: runner.kv.geometry.num_blocks,
            needed: total_blocks,
        });
    }
    // Round-robin hand-out: sequence i's blocks are spread through the pool.
    let mut next_block = 0u32;
    for round in 0..needed.iter().copied().max().unwrap_or(0) {
        for (s, &n) in seqs.iter_mut().zip(&needed) {
            if round < n {
                s.table.push(next_block);
                next_block += 1;
            }
        }
    }

    let mut sampler = Sampler::new();
    let mut banned = Vec::new();
    let mut token_ids = Vec::new();
    let mut metas: Vec<(usize, usize, usize, usize)> = Vec::new(); // (seq, start, num, ctx)
    let mut logits_rows = Vec::new();
    let mut logits_seqs = Vec::new();
    loop {
        token_ids.clear();
        metas.clear();
        logits_rows.clear();
        logits_seqs.clear();
        for (i, s) in seqs.iter().enumerate() {
            if s.done.is_some() {
                continue;
            }
            let start = token_ids.len();
            let all_len = s.prompt.len() + s.output.len();
            let take = if s.computed < s.prompt.len() {
                (s.prompt.len() - s.computed).min(options.prefill_chunk.max(1))
            } else {
                all_len - s.computed
            };
            for pos in s.computed..s.computed + take {
                token_ids.push(if pos < s.prompt.len() {
                    s.prompt[pos]
                } else {
                    s.output[pos - s.prompt.len()]
                });
            }
            let ctx = s.computed + take;
            metas.push((i, start, take, ctx));
            if ctx == all_len {
                logits_rows.push(start + take - 1);
                logits_seqs.push(i);
            }
        }
        if metas.is_empty() {
            break;
        }
        let attn: Vec<SeqAttention<'_>> = metas
            .iter()
            .map(|&(i, start, num, ctx)| SeqAttention {
                query_start: start,
                num_queries: num,
                context_len: ctx,
                block_table: &seqs[i].table,
            })
            .collect();
        let batch = StepBatch {
            token_ids: &token_ids,
            seqs: &attn,
            logits_rows: &logits_rows,
        };
        let vocab = runner.config().vocab_size;
        let logits = runner.execute(&batch);
        drop(attn);
        for &(i, _, num, _) in &metas {
            seqs[i].computed += num;
        }
        for (row, &i) in logits_seqs.iter().enumerate() {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let params = &requests[i].params;
            let s = &mut seqs[i];
            params.banned_stop_ids(&eos, s.output.len(), &mut banned);
            let masks = StepMasks {
                banned: &banned,
                allowed: None,
            };
            let sampled =
                sampler.sample(row_logits, params, &s.prompt, &s.output, masks, &mut s.rng);
            s.output.push(sampled.token);
            on_token(TokenEvent {
                seq: i,
                logits: row_logits,
                sampled: &sampled,
            });
            let stop_token = !params.ignore_eos && eos.contains(&sampled.token)
                || params.stop_token_ids.contains(&sampled.token);
            s.done = if stop_token {
                Some(Stop::Eos)
            } else if s.output.len() >= params.max_tokens {
                Some(Stop::MaxTokens)
            } else if s.prompt.len() + s.output.len() >= max_ctx {
                Some(Stop::ContextLength)
            } else {
                None
            };
        }
    }
    Ok(seqs
        .into_iter()
        .map(|s| Generation {
            output_ids: s.output,
            stop: s.done.unwrap_or(Stop::MaxTokens),
        })
        .collect())
}
