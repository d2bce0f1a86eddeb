//! The engine step: schedule → execute → sample → update, over the model runner.
//!
//! [`LlmEngine`] is synchronous and single-threaded (the kernels have their own pool); the
//! serving layer drives it from a dedicated thread. Each step turns the scheduler's decision into
//! one batched forward (flattened tokens + block tables), samples the requests that reached the
//! end of their tokens, detokenizes incrementally, and applies the stop rules: EOS (unless
//! `ignore_eos`), stop token ids, stop strings (matched on the detokenized text and left out of
//! it), a completed JSON object (`response_format` `json_object` or `json_schema`, whose
//! requests sample only tokens that keep their output valid: [`crate::structured`]),
//! `max_tokens` and the model's context length. With speculative decoding on, decoding requests
//! carry n-gram drafts into the step and keep those the model's own samples confirm
//! ([`crate::speculative`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pagoda_core::{FinishReason, RequestId, SampledToken, SamplingParams, TokenId};
use pagoda_model::model::StepBatch;
use pagoda_model::ops::attention::SeqAttention;
use pagoda_model::sampler::{RequestRng, Sampler, StepMasks};
use pagoda_model::{IncrementalDecoder, ModelRunner, Tokenizer};

use crate::output::{EngineStats, RequestOutput, RequestTimings, StepRecord};
use crate::request::Request;
use crate::sched::scheduler::AdmissionError;
use crate::sched::{Scheduler, SchedulerConfig};
use crate::speculative::SpeculativeConfig;
use crate::structured::{OutputConstraint, TokenBytes};

/// Engine limits (the model and cache geometry come from the runner).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Reuse the K/V of cached full blocks across requests sharing a prefix.
    pub enable_prefix_caching: bool,
    /// Speculative decoding by n-gram prompt lookup (off when `None`).
    pub speculative: Option<SpeculativeConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            enable_prefix_caching: true,
            speculative: None,
        }
    }
}

/// A request sampled in this step: its first logits row and how many of its drafts
/// (`spec_token_ids`, still in place while the step samples) are verified after it.
struct ToSample {
    id: RequestId,
    first_row: usize,
    num_drafts: usize,
}

struct Detok {
    decoder: IncrementalDecoder,
    /// Text not yet emitted because it may be the start of a stop string.
    pending: String,
}

/// The engine over one model runner.
pub struct LlmEngine {
    runner: ModelRunner,
    tokenizer: Option<Tokenizer>,
    scheduler: Scheduler,
    sampler: Sampler,
    rngs: HashMap<RequestId, RequestRng>,
    detok: HashMap<RequestId, Detok>,
    /// End-of-sequence ids of the model (generation_config.json).
    eos_token_ids: Vec<TokenId>,
    /// Scratch: the ids a request may not sample yet (`min_tokens`).
    banned: Vec<TokenId>,
    /// Where each `json_object` / `json_schema` request's output is in its JSON text.
    constraints: HashMap<RequestId, OutputConstraint>,
    /// The vocabulary's bytes, built when the first such request arrives.
    token_bytes: Option<TokenBytes>,
    /// Scratch: the tokens such a request may sample this step.
    allowed: Vec<bool>,
    speculative: Option<SpeculativeConfig>,
    /// Scratch: a request's prompt and output in one sequence, for the draft lookup.
    spec_tokens: Vec<TokenId>,
    /// The prompt log-probabilities computed so far of requests that asked for them.
    prompt_logprobs: HashMap<RequestId, Vec<SampledToken>>,
    pub stats: EngineStats,
}

impl LlmEngine {
    /// An engine over `runner`; without a tokenizer, outputs carry ids only and stop strings
    /// are not available.
    pub fn new(runner: ModelRunner, tokenizer: Option<Tokenizer>, config: &EngineConfig) -> Self {
        let g = runner.kv.geometry;
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_num_seqs: config.max_num_seqs,
            max_model_len: runner.config().max_context_len,
            block_size: g.block_size,
            num_blocks: g.num_blocks,
            enable_prefix_caching: config.enable_prefix_caching,
        });
        Self {
            eos_token_ids: runner.config().eos_token_ids.clone(),
            runner,
            tokenizer,
            scheduler,
            sampler: Sampler::new(),
            banned: Vec::new(),
            constraints: HashMap::new(),
            token_bytes: None,
            allowed: Vec::new(),
            speculative: config.speculative,
            spec_tokens: Vec::new(),
            prompt_logprobs: HashMap::new(),
            rngs: HashMap::new(),
            detok: HashMap::new(),
            stats: EngineStats::default(),
        }
    }

    /// The model's end-of-sequence ids (what ends a request unless `ignore_eos`).
    pub fn eos_token_ids(&self) -> &[TokenId] {
        &self.eos_token_ids
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Queues a request arriving now; refused when it could never be served.
    pub fn add_request(
        &mut self,
        id: RequestId,
        prompt_ids: Vec<TokenId>,
        params: SamplingParams,
    ) -> Result<(), AdmissionError> {
        self.add_request_at(id, prompt_ids, params, Instant::now(), None)
    }

    /// Queues a request that arrived at `arrival` (its timings count from there). Requests with
    /// different `cache_salt`s never share cached K/V.
    pub fn add_request_at(
        &mut self,
        id: RequestId,
        prompt_ids: Vec<TokenId>,
        params: SamplingParams,
        arrival: Instant,
        cache_salt: Option<Arc<str>>,
    ) -> Result<(), AdmissionError> {
        self.add_request_group(&[id], prompt_ids, vec![params], arrival, cache_salt)
    }

    /// Queues `params.len()` parallel samples of one prompt (ids `ids`, same length; one is a
    /// plain request): the prompt is computed once, each sample draws its first token from the same logits with its own
    /// parameters and seed, and the samples share the prompt's blocks (copied on write).
    pub fn add_request_group(
        &mut self,
        ids: &[RequestId],
        prompt_ids: Vec<TokenId>,
        params: Vec<SamplingParams>,
        arrival: Instant,
        cache_salt: Option<Arc<str>>,
    ) -> Result<(), AdmissionError> {
        let requests: Vec<Request> = ids
            .iter()
            .zip(params)
            .map(|(&id, params)| {
                let mut r = Request::new(id, prompt_ids.clone(), params);
                r.timings = RequestTimings::new(arrival);
                r.cache_salt = cache_salt.clone();
                r
            })
            .collect();
        let seeds: Vec<Option<u64>> = requests.iter().map(|r| r.params.seed).collect();
        // The samples of a group usually share their format: it is compiled once.
        let mut constraints: Vec<Option<OutputConstraint>> = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let format = &r.params.response_format;
            let constraint = match i.checked_sub(1) {
                Some(prev) if requests[prev].params.response_format == *format => {
                    constraints[prev].clone()
                }
                _ => OutputConstraint::new(format)
                    .map_err(|e| AdmissionError::InvalidSchema(e.to_string()))?,
            };
            constraints.push(constraint);
        }
        if constraints.iter().any(Option::is_some) && self.token_bytes.is_none() {
            let tok = self.tokenizer.as_ref().ok_or(AdmissionError::NoTokenizer)?;
            let vocab = self.runner.config().vocab_size;
            self.token_bytes = Some(TokenBytes::new(&tok.token_bytes(vocab)));
        }
        self.scheduler.add_request_group(requests)?;
        for ((&id, seed), constraint) in ids.iter().zip(seeds).zip(constraints) {
            self.rngs.insert(id, RequestRng::new(seed));
            if let Some(constraint) = constraint {
                self.constraints.insert(id, constraint);
            }
            if let Some(tok) = &self.tokenizer {
                let decoder = IncrementalDecoder::new(tok, &prompt_ids, true);
                self.detok.insert(
                    id,
                    Detok {
                        decoder,
                        pending: String::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Ends a request now; its blocks are free before the next step.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.forget(id);
        self.scheduler.finish(id, FinishReason::Abort).is_some()
    }

    fn forget(&mut self, id: RequestId) {
        self.rngs.remove(&id);
        self.constraints.remove(&id);
        self.prompt_logprobs.remove(&id);
        self.detok.remove(&id);
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// The counters plus the current queue and cache gauges.
    pub fn snapshot(&self) -> EngineStats {
        let kv = self.scheduler.kv();
        EngineStats {
            num_running: self.scheduler.num_running(),
            num_waiting: self.scheduler.num_waiting(),
            kv_blocks_used: kv.pool().num_used(),
            kv_blocks_total: kv.pool().num_blocks(),
            prefix_cache_queries: kv.stats.queries,
            prefix_cache_hits: kv.stats.hits,
            prompt_tokens_cached: self.scheduler.num_prompt_tokens_cached,
            num_cow_copies: kv.num_cow_copies,
            ..self.stats.clone()
        }
    }

    /// Runs one step and returns one output per sampled token.
    pub fn step(&mut self) -> Vec<RequestOutput> {
        let started = Instant::now();
        self.propose_drafts();
        let out = self.scheduler.schedule();
        self.stats.num_preemptions = self.scheduler.num_preemptions;
        if out.is_empty() {
            return Vec::new();
        }
        self.stats.num_steps += 1;
        self.stats.num_scheduled_tokens += out.num_tokens() as u64;
        let now = Instant::now();
        let num_seqs = out.scheduled.len();
        for s in &out.scheduled {
            self.scheduler.mark_scheduled(s.id, now);
        }

        let mut token_ids = Vec::with_capacity(out.num_tokens());
        let mut tables: Vec<Vec<u32>> = Vec::with_capacity(out.scheduled.len());
        let mut metas = Vec::with_capacity(out.scheduled.len());
        let mut logits_rows = Vec::new();
        let mut sampling = Vec::new();
        // Prompt positions whose logits score the next prompt token: (request, row in the step,
        // that token, alternatives wanted).
        let mut prompt_rows = Vec::new();
        for s in &out.scheduled {
            let r = self
                .scheduler
                .request(s.id)
                .expect("invariant: scheduled requests exist");
            let start = token_ids.len();
            let first = r.num_computed_tokens;
            token_ids.extend((first..first + s.num_new_tokens).map(|p| r.token_at(p)));
            let table = self
                .scheduler
                .block_table(s.id)
                .expect("invariant: scheduled requests hold blocks");
            tables.push(table.iter().map(|b| b.0).collect());
            metas.push((start, s.num_new_tokens, first + s.num_new_tokens));
            // The last token's row, then one per draft (each predicts the position after it).
            let real = s.num_new_tokens - s.num_spec_tokens;
            if let Some(top) = r.params.prompt_logprobs {
                // Positions not scored yet (a preempted request computes its prompt again).
                let scored = self.prompt_logprobs.get(&s.id).map_or(0, Vec::len);
                let end = (first + real).min(r.prompt_ids.len().saturating_sub(1));
                for q in first.max(scored)..end {
                    prompt_rows.push((s.id, start + q - first, r.prompt_ids[q + 1], top));
                }
            }
            if first + real == r.num_tokens() {
                sampling.push(ToSample {
                    id: s.id,
                    first_row: logits_rows.len(),
                    num_drafts: s.num_spec_tokens,
                });
                logits_rows.extend((0..=s.num_spec_tokens).map(|j| start + real - 1 + j));
            }
            self.stats.num_draft_tokens += s.num_spec_tokens as u64;
        }
        let prompt_rows_start = logits_rows.len();
        logits_rows.extend(prompt_rows.iter().map(|&(_, row, _, _)| row));
        let seqs: Vec<SeqAttention<'_>> = metas
            .iter()
            .zip(&tables)
            .map(
                |(&(query_start, num_queries, context_len), table)| SeqAttention {
                    query_start,
                    num_queries,
                    context_len,
                    block_table: table,
                },
            )
            .collect();
        let batch = StepBatch {
            token_ids: &token_ids,
            seqs: &seqs,
            logits_rows: &logits_rows,
        };
        let vocab = self.runner.config().vocab_size;
        for &(src, dst) in &out.copies {
            self.runner.kv.copy_block(src.0 as usize, dst.0 as usize);
        }
        let forward_started = Instant::now();
        let logits = self.runner.execute(&batch);
        self.stats.forward_time_total += forward_started.elapsed();

        let to_sample = self.scheduler.on_step_done(&out);
        debug_assert!(to_sample.iter().eq(sampling.iter().map(|s| &s.id)));
        // Sample every request (and the samples forking from it, from the same row) while the
        // logits borrow the runner; then fork and apply the tokens. A request with drafts samples
        // row after row while each token sampled equals the draft that was computed after it.
        let sample_started = Instant::now();
        for (j, &(id, _, next, top)) in prompt_rows.iter().enumerate() {
            let row = prompt_rows_start + j;
            let scored = self
                .sampler
                .score(&logits[row * vocab..(row + 1) * vocab], next, top);
            self.prompt_logprobs.entry(id).or_default().push(scored);
        }
        let mut sampled: Vec<(RequestId, SampledToken)> = Vec::with_capacity(logits_rows.len());
        let mut forked = Vec::new();
        let mut history = Vec::new();
        for &ToSample {
            id,
            first_row,
            num_drafts,
        } in &sampling
        {
            let children = if num_drafts == 0 {
                self.scheduler.take_forks(id)
            } else {
                Vec::new()
            };
            for &rid in std::iter::once(&id).chain(&children) {
                let r = self
                    .scheduler
                    .request(rid)
                    .expect("invariant: sampled requests exist");
                let rng = self
                    .rngs
                    .get_mut(&rid)
                    .expect("invariant: every live request has an rng");
                // Only a request without forks has drafts, so a fork's slice is empty.
                let drafts = &r.spec_token_ids[..num_drafts];
                for (j, row) in (first_row..=first_row + num_drafts).enumerate() {
                    // The output so far: the request's, then (past the first row) the tokens
                    // sampled before in this step.
                    let output_ids: &[TokenId] = if j == 0 { &r.output_ids } else { &history };
                    r.params.banned_stop_ids(
                        &self.eos_token_ids,
                        output_ids.len(),
                        &mut self.banned,
                    );
                    let allowed = match (self.constraints.get(&rid), &self.token_bytes) {
                        (Some(constraint), Some(table)) => {
                            table.allowed_after(constraint, vocab, &mut self.allowed);
                            Some(&self.allowed[..])
                        }
                        _ => None,
                    };
                    let masks = StepMasks {
                        banned: &self.banned,
                        allowed,
                    };
                    let token = self.sampler.sample(
                        &logits[row * vocab..(row + 1) * vocab],
                        &r.params,
                        &r.prompt_ids,
                        output_ids,
                        masks,
                        rng,
                    );
                    let confirmed = drafts.get(j) == Some(&token.token);
                    if confirmed {
                        if j == 0 {
                            history.clear();
                            history.extend_from_slice(&r.output_ids);
                        }
                        history.push(token.token);
                    }
                    sampled.push((rid, token));
                    if !confirmed {
                        break;
                    }
                }
            }
            forked.extend(children.into_iter().map(|child| (id, child)));
        }
        self.stats.sample_time_total += sample_started.elapsed();
        for (leader, child) in forked {
            self.scheduler.fork(leader, child, now);
            if let Some(scores) = self.prompt_logprobs.get(&leader) {
                let scores = scores.clone();
                self.prompt_logprobs.insert(child, scores);
            }
        }
        // Apply each request's tokens in order until one finishes it; the drafts it kept (all
        // its tokens but the last) have their K/V from this step.
        let mut outputs = Vec::with_capacity(sampled.len());
        let mut run = sampled.into_iter().peekable();
        while let Some((id, token)) = run.next() {
            let mut output = self.apply_token(id, token, now);
            let mut kept = 0;
            while let Some((_, token)) = run.next_if(|(next, _)| *next == id) {
                if output.finished.is_some() {
                    continue;
                }
                outputs.push(output);
                output = self.apply_token(id, token, now);
                kept += 1;
            }
            if output.finished.is_none() && kept > 0 {
                self.scheduler.accept_drafts(id, kept);
            }
            self.stats.num_accepted_tokens += kept as u64;
            outputs.push(output);
        }
        let record = StepRecord {
            num_tokens: out.num_tokens(),
            num_seqs,
            num_sampled: outputs.len(),
            duration: started.elapsed(),
        };
        self.stats.step_time_total += record.duration;
        self.stats.last_step = Some(record);
        outputs
    }

    /// Gives every decoding request its n-gram drafts for the next step (speculative decoding
    /// on; not for requests whose output is constrained, nor past `max_tokens` or the context,
    /// nor while more requests run than `disable_by_batch_size`).
    fn propose_drafts(&mut self) {
        let Some(spec) = self.speculative else {
            return;
        };
        let max_len = self.runner.config().max_context_len;
        let busy = spec
            .disable_by_batch_size
            .is_some_and(|n| self.scheduler.num_running() > n);
        let (constraints, tokens) = (&self.constraints, &mut self.spec_tokens);
        self.scheduler.propose_drafts(|r, drafts| {
            if busy || constraints.contains_key(&r.id) {
                return;
            }
            // After this step at most `drafts + 1` tokens are added, at positions < max_len.
            let room = (r.params.max_tokens.saturating_sub(r.output_ids.len() + 1))
                .min(max_len.saturating_sub(r.num_tokens()));
            tokens.clear();
            tokens.extend_from_slice(&r.prompt_ids);
            tokens.extend_from_slice(&r.output_ids);
            spec.propose(tokens, room, drafts);
        });
    }

    /// Appends a sampled token to its request, applies the stop rules and detokenizes.
    fn apply_token(&mut self, id: RequestId, token: SampledToken, now: Instant) -> RequestOutput {
        let max_len = self.runner.config().max_context_len;
        let r = self
            .scheduler
            .request(id)
            .expect("invariant: sampled requests exist");
        let params = r.params.clone();
        let num_output = r.output_ids.len() + 1;
        let num_tokens = r.num_tokens() + 1;
        let num_prompt_tokens = r.prompt_ids.len();
        let num_cached_tokens = r.num_cached_tokens.unwrap_or(0);
        self.scheduler.append_token(id, token.token);
        self.stats.num_generated_tokens += 1;
        let prompt_logprobs = (num_output == 1 && params.prompt_logprobs.is_some())
            .then(|| self.prompt_logprobs.remove(&id).unwrap_or_default());
        // A constrained request's text advances by the token's bytes: `Some(Some(done))`, or
        // `Some(None)` when the token does not fit (only when nothing was allowed: a vocabulary
        // that cannot write the next byte), which ends the request as aborted.
        let structured = self.constraints.get_mut(&id).map(|constraint| {
            let bytes = self
                .token_bytes
                .as_ref()
                .map_or(&[][..], |t| t.get(token.token));
            constraint.advance(bytes).then(|| constraint.is_done())
        });

        let mut finished = if !params.ignore_eos && self.eos_token_ids.contains(&token.token)
            || params.stop_token_ids.contains(&token.token)
        {
            Some(FinishReason::StopToken(token.token))
        } else if structured == Some(Some(true)) {
            Some(FinishReason::StructuredComplete)
        } else if structured == Some(None) {
            Some(FinishReason::Abort)
        } else if num_output >= params.max_tokens {
            Some(FinishReason::Length)
        } else if num_tokens >= max_len {
            Some(FinishReason::ContextLength)
        } else {
            None
        };
        let mut text = String::new();
        if let (Some(tok), Some(d)) = (&self.tokenizer, self.detok.get_mut(&id)) {
            // A failed decode (malformed vocabulary entry) loses text, never the request.
            let delta = d.decoder.step(tok, token.token).unwrap_or_default();
            d.pending.push_str(&delta);
            // Before `min_tokens` the text is not searched for stop strings (as vLLM).
            let stops: &[String] = if num_output < params.min_tokens {
                &[]
            } else {
                &params.stop
            };
            let (emit, stop) = split_at_stop(&d.pending, stops, finished.is_some());
            text = emit;
            d.pending
                .drain(..text.len() + stop.as_ref().map_or(0, |s| s.len()));
            if let Some(stop) = stop {
                finished = Some(FinishReason::StopString(stop));
            }
            if finished.is_some() {
                d.pending.clear();
            }
        }
        let mut timings = self
            .scheduler
            .request(id)
            .map(|r| r.timings)
            .unwrap_or_else(|| RequestTimings::new(now));
        if let Some(reason) = &finished {
            self.forget(id);
            self.scheduler.finish(id, reason.clone());
            timings.finished = Some(Instant::now());
        }
        RequestOutput {
            id,
            token,
            text,
            finished,
            num_prompt_tokens,
            num_cached_tokens,
            num_output_tokens: num_output,
            timings,
            prompt_logprobs,
        }
    }
}

/// Splits pending text into what can be emitted now and, if a stop string occurs, that string.
/// Without a stop, the longest tail that could still begin a stop string is held back (unless
/// the request is ending anyway).
fn split_at_stop(pending: &str, stops: &[String], ending: bool) -> (String, Option<String>) {
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| pending.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, stop)) = hit {
        return (pending[..at].to_string(), Some(stop.clone()));
    }
    if ending {
        return (pending.to_string(), None);
    }
    let hold = stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n))
                .map(move |n| &s[..n])
        })
        .filter(|prefix| pending.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0);
    (pending[..pending.len() - hold].to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text_and_partial_matches_are_held_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(
            split_at_stop("abc EN", &stops, false),
            ("abc ".into(), None)
        );
        assert_eq!(
            split_at_stop("abc EN", &stops, true),
            ("abc EN".into(), None)
        );
        assert_eq!(
            split_at_stop("abc END more", &stops, false),
            ("abc ".into(), Some("END".into()))
        );
        assert_eq!(
            split_at_stop("x\n\ny END", &stops, false),
            ("x".into(), Some("\n\n".into()))
        );
        assert_eq!(split_at_stop("plain", &[], false), ("plain".into(), None));
    }
}
