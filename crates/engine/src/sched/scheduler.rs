//! The iteration-level scheduler (vLLM v1 style): no prefill and decode phases — every request's
//! computed-token count catches up with its token count, within a per-step token budget.
//!
//! Each step: running requests first (in arrival order), each taking what it still needs (one
//! token when decoding, the rest of its prompt — cut to the remaining budget — when prefilling);
//! then waiting requests in FCFS order while budget, sequence slots and blocks last. A long prompt
//! is thereby split across steps and shares them with decodes (chunked prefill). When blocks run
//! out, the most recently arrived running request is preempted: its blocks are freed and it goes
//! back to the front of the waiting queue, keeping its generated tokens, to be recomputed.
//!
//! With prefix caching, a waiting request (new or preempted) starts from the longest run of cached
//! full blocks matching its tokens and computes only the rest; a preempted request thus finds its
//! own blocks again unless they were evicted meanwhile.
//!
//! Parallel samples of one prompt (`add_request_group`) are scheduled as one request, the group's
//! leader; the others wait until the leader's prompt is computed and then fork from it, sharing
//! its blocks (see [`KvCacheManager::fork`]), each with its own first token sampled from the
//! leader's logits.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use pagoda_core::{FinishReason, RequestId, TokenId};

use crate::kv::{BlockId, CachedPrefix, KvCacheManager};
use crate::request::{Request, RequestStatus};

/// Most prompt tokens of requests that want their prompt's log-probabilities computed in one
/// step (each needs a row of logits: 256 × a 150k vocabulary is 150 MB).
pub const PROMPT_LOGPROBS_CHUNK: usize = 256;

/// Whether `r`'s next tokens are prompt tokens whose log-probabilities it wants.
fn scores_prompt(r: &Request) -> bool {
    r.params.prompt_logprobs.is_some() && r.num_computed_tokens < r.prompt_ids.len()
}

/// Tokens `r` may compute in a step with `budget` left and `scored` prompt-logprob rows left.
fn step_tokens(r: &Request, budget: usize, scored: usize) -> usize {
    let n = r.num_uncomputed().min(budget);
    if scores_prompt(r) {
        n.min(scored)
    } else {
        n
    }
}

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most tokens computed in one step, over all requests.
    pub max_num_batched_tokens: usize,
    /// Most requests running at once.
    pub max_num_seqs: usize,
    /// The model's context length: prompt + max_tokens may not exceed it.
    pub max_model_len: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Reuse cached full blocks across requests with the same prefix.
    pub enable_prefix_caching: bool,
}

impl SchedulerConfig {
    /// Whether a request of this size could ever be served (a pure function of the limits, so
    /// callers outside the engine thread can refuse a request at once).
    pub fn check_admission(
        &self,
        prompt_tokens: usize,
        max_tokens: usize,
    ) -> Result<(), AdmissionError> {
        if prompt_tokens == 0 {
            return Err(AdmissionError::EmptyPrompt);
        }
        if prompt_tokens + max_tokens > self.max_model_len {
            return Err(AdmissionError::ExceedsContext {
                prompt_tokens,
                max_tokens,
                limit: self.max_model_len,
            });
        }
        let needed_blocks = (prompt_tokens + max_tokens).div_ceil(self.block_size);
        if needed_blocks > self.num_blocks {
            return Err(AdmissionError::ExceedsCache {
                needed_blocks,
                total_blocks: self.num_blocks,
            });
        }
        Ok(())
    }
}

/// Why a request was refused at admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("request {0} already exists")]
    Duplicate(RequestId),
    #[error(
        "prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {} exceeds the model's context length of {limit} tokens",
        prompt_tokens + max_tokens
    )]
    ExceedsContext {
        prompt_tokens: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error(
        "prompt + max_tokens needs {needed_blocks} KV blocks but the whole cache has {total_blocks}"
    )]
    ExceedsCache {
        needed_blocks: usize,
        total_blocks: usize,
    },
    #[error("response_format json_object / json_schema needs the model's tokenizer, and this engine has none")]
    NoTokenizer,
    #[error("response_format: {0}")]
    InvalidSchema(String),
}

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub id: RequestId,
    /// Tokens computed for it in this step, starting at its `num_computed_tokens`; its drafts
    /// included.
    pub num_new_tokens: usize,
    /// Of those, the draft tokens (speculative decoding, the first of `spec_token_ids`) after
    /// its last token.
    pub num_spec_tokens: usize,
}

/// What the next step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    pub scheduled: Vec<ScheduledRequest>,
    /// Requests preempted while building this step.
    pub preempted: Vec<RequestId>,
    /// Copy-on-write block copies (source, destination) to do before the step's forward.
    pub copies: Vec<(BlockId, BlockId)>,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_new_tokens).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// Owns every live request, the queues and the KV block tables.
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    requests: HashMap<RequestId, Request>,
    /// Admission order, used to pick preemption victims.
    arrival_seq: HashMap<RequestId, u64>,
    next_seq: u64,
    waiting: VecDeque<RequestId>,
    /// Kept sorted by arrival, so the last one is the most recently arrived.
    running: Vec<RequestId>,
    /// Parallel samples waiting for their leader's prompt, by leader.
    forks: HashMap<RequestId, Vec<RequestId>>,
    pub num_preemptions: usize,
    /// Prompt tokens served from the prefix cache at requests' first scheduling.
    pub num_prompt_tokens_cached: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            kv: KvCacheManager::new(
                config.num_blocks,
                config.block_size,
                config.enable_prefix_caching,
            ),
            config,
            requests: HashMap::new(),
            arrival_seq: HashMap::new(),
            next_seq: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            forks: HashMap::new(),
            num_preemptions: 0,
            num_prompt_tokens_cached: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request, or refuses one that could never be served.
    pub fn add_request(&mut self, request: Request) -> Result<(), AdmissionError> {
        if self.requests.contains_key(&request.id) {
            return Err(AdmissionError::Duplicate(request.id));
        }
        self.config
            .check_admission(request.prompt_ids.len(), request.params.max_tokens)?;
        self.arrival_seq.insert(request.id, self.next_seq);
        self.next_seq += 1;
        self.waiting.push_back(request.id);
        self.requests.insert(request.id, request);
        Ok(())
    }

    /// Queues parallel samples of one prompt: the first is scheduled; the others fork from it
    /// once its prompt is computed (see [`Scheduler::take_forks`]). All or none are queued.
    pub fn add_request_group(&mut self, requests: Vec<Request>) -> Result<(), AdmissionError> {
        let mut ids = std::collections::HashSet::new();
        for r in &requests {
            if self.requests.contains_key(&r.id) || !ids.insert(r.id) {
                return Err(AdmissionError::Duplicate(r.id));
            }
            self.config
                .check_admission(r.prompt_ids.len(), r.params.max_tokens)?;
        }
        let mut requests = requests.into_iter();
        let Some(leader) = requests.next() else {
            return Ok(());
        };
        let leader_id = leader.id;
        self.add_request(leader)?;
        let children: Vec<RequestId> = requests
            .map(|r| {
                let id = r.id;
                self.arrival_seq.insert(id, self.next_seq);
                self.next_seq += 1;
                self.requests.insert(id, r);
                id
            })
            .collect();
        if !children.is_empty() {
            self.forks.insert(leader_id, children);
        }
        Ok(())
    }

    /// The samples waiting to fork from `leader` (taken: call when the leader's prompt is
    /// computed, then [`Scheduler::fork`] each).
    pub fn take_forks(&mut self, leader: RequestId) -> Vec<RequestId> {
        self.forks.remove(&leader).unwrap_or_default()
    }

    /// Starts `child` from `leader`'s computed tokens and blocks (shared, copied on write).
    pub fn fork(&mut self, leader: RequestId, child: RequestId, at: Instant) {
        let Some((computed, cached)) = self
            .requests
            .get(&leader)
            .map(|l| (l.num_computed_tokens, l.num_cached_tokens))
        else {
            return;
        };
        if let Some(c) = self.requests.get_mut(&child) {
            c.num_computed_tokens = computed;
            c.num_cached_tokens = cached;
            c.status = RequestStatus::Running;
            c.timings.first_scheduled.get_or_insert(at);
        } else {
            return;
        }
        self.kv.fork(leader, child);
        self.insert_running(child);
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut scored = PROMPT_LOGPROBS_CHUNK;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let r = &self.requests[&id];
            let (computed, num_new) = (r.num_computed_tokens, step_tokens(r, budget, scored));
            if num_new == 0 {
                i += 1;
                continue;
            }
            // Drafts ride along a decode, as many as the budget leaves room for; if their slots
            // cannot be had, the decode goes without them before anything is preempted.
            let mut num_spec = if num_new == r.num_uncomputed() {
                r.spec_token_ids.len().min(budget - num_new)
            } else {
                0
            };
            let mut allocated = self
                .kv
                .allocate_slots(r, computed + num_new + num_spec, CachedPrefix::default())
                .is_some();
            if !allocated && num_spec > 0 {
                num_spec = 0;
                allocated = self
                    .kv
                    .allocate_slots(r, computed + num_new, CachedPrefix::default())
                    .is_some();
            }
            if allocated {
                if scores_prompt(r) {
                    scored -= num_new;
                }
                out.scheduled.push(ScheduledRequest {
                    id,
                    num_new_tokens: num_new + num_spec,
                    num_spec_tokens: num_spec,
                });
                budget -= num_new + num_spec;
                i += 1;
                continue;
            }
            // Out of blocks: preempt the most recently arrived running request (the last one,
            // never already scheduled in this step since scheduling goes front to back).
            let victim = self
                .running
                .pop()
                .expect("invariant: `id` itself is running");
            self.preempt(victim);
            out.preempted.push(victim);
        }
        // New work only in steps that did not have to preempt.
        if out.preempted.is_empty() {
            while let Some(&id) = self.waiting.front() {
                // A group's samples will all run: they must fit under the cap together (a group
                // larger than the cap runs alone).
                let group = 1 + self.forks.get(&id).map_or(0, Vec::len);
                let full = self.running.len() + group > self.config.max_num_seqs;
                if budget == 0 || (full && !self.running.is_empty()) {
                    break;
                }
                let r = &self.requests[&id];
                debug_assert_eq!(r.num_computed_tokens, 0, "invariant: waiting holds no KV");
                // Prompt log-probabilities need every prompt position's logits: no cache hits.
                let prefix = if r.params.prompt_logprobs.is_some() {
                    CachedPrefix::default()
                } else {
                    self.kv.find_cached_prefix(r)
                };
                let num_hit = prefix.num_blocks() * self.config.block_size;
                let num_new = step_tokens(r, budget, scored).min(r.num_tokens() - num_hit);
                if num_new == 0 {
                    // Its prompt's log-probabilities wait for the next step.
                    break;
                }
                let num_tokens = r.num_tokens();
                let wants_scores = scores_prompt(r);
                if self
                    .kv
                    .allocate_slots(r, num_hit + num_new, prefix)
                    .is_none()
                {
                    break;
                }
                if wants_scores {
                    scored -= num_new;
                }
                self.kv.record_lookup(num_tokens, num_hit);
                self.waiting.pop_front();
                self.insert_running(id);
                if let Some(r) = self.requests.get_mut(&id) {
                    r.status = RequestStatus::Running;
                    r.num_computed_tokens = num_hit;
                    if r.num_cached_tokens.is_none() {
                        let cached = num_hit.min(r.prompt_ids.len());
                        r.num_cached_tokens = Some(cached);
                        self.num_prompt_tokens_cached += cached as u64;
                    }
                }
                out.scheduled.push(ScheduledRequest {
                    id,
                    num_new_tokens: num_new,
                    num_spec_tokens: 0,
                });
                budget -= num_new;
            }
        }
        out.copies = self.kv.take_copies();
        out
    }

    fn insert_running(&mut self, id: RequestId) {
        let seq = self.arrival_seq[&id];
        let pos = self.running.partition_point(|r| self.arrival_seq[r] < seq);
        self.running.insert(pos, id);
    }

    fn preempt(&mut self, id: RequestId) {
        self.kv.free(id);
        if let Some(r) = self.requests.get_mut(&id) {
            r.num_computed_tokens = 0;
            r.spec_token_ids.clear();
            r.status = RequestStatus::Preempted;
            r.num_preemptions += 1;
        }
        self.num_preemptions += 1;
        self.waiting.push_front(id);
    }

    /// Records that the step ran: every scheduled request's K/V now covers its new tokens (its
    /// drafts' K/V counts only once they are accepted, see [`Scheduler::accept_drafts`]).
    /// Returns the requests that reached the end of their tokens and so need a sampled token.
    pub fn on_step_done(&mut self, output: &SchedulerOutput) -> Vec<RequestId> {
        let mut to_sample = Vec::new();
        for s in &output.scheduled {
            if let Some(r) = self.requests.get_mut(&s.id) {
                r.num_computed_tokens += s.num_new_tokens - s.num_spec_tokens;
                if r.num_computed_tokens == r.num_tokens() {
                    to_sample.push(s.id);
                }
            }
        }
        to_sample
    }

    /// Sets the drafts of every running request that is decoding (one token left to compute,
    /// at least one generated) to what `propose(request, drafts)` leaves in `drafts`, and clears
    /// every other running request's.
    pub fn propose_drafts(&mut self, mut propose: impl FnMut(&Request, &mut Vec<TokenId>)) {
        for id in &self.running {
            let Some(r) = self.requests.get_mut(id) else {
                continue;
            };
            let mut drafts = std::mem::take(&mut r.spec_token_ids);
            drafts.clear();
            if r.num_uncomputed() == 1 && !r.output_ids.is_empty() {
                propose(r, &mut drafts);
            }
            r.spec_token_ids = drafts;
        }
    }

    /// Records that the first `accepted` drafts verified in the last step became the request's
    /// tokens (appended since): their K/V, computed in that step, now counts. The rest of the
    /// drafts' slots are simply written again later.
    pub fn accept_drafts(&mut self, id: RequestId, accepted: usize) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.num_computed_tokens += accepted;
            r.spec_token_ids.clear();
            debug_assert!(
                r.num_computed_tokens < r.num_tokens(),
                "invariant: a kept draft is followed by the token sampled after it"
            );
        }
    }

    /// Appends a sampled token to a request (the first one stamps its first-token time).
    pub fn append_token(&mut self, id: RequestId, token: TokenId) {
        if let Some(r) = self.requests.get_mut(&id) {
            if r.output_ids.is_empty() && r.timings.first_token.is_none() {
                r.timings.first_token = Some(Instant::now());
            }
            r.output_ids.push(token);
        }
    }

    /// Stamps a request's first-scheduled time (later calls keep the first).
    pub fn mark_scheduled(&mut self, id: RequestId, at: Instant) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.timings.first_scheduled.get_or_insert(at);
        }
    }

    /// Ends a request (finished or aborted): frees its blocks and hands it back.
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> Option<Request> {
        let mut request = self.requests.remove(&id)?;
        self.arrival_seq.remove(&id);
        self.kv.free(id);
        // A leader ending before its samples forked hands the group to its first sample.
        if let Some(mut children) = self.forks.remove(&id) {
            let heir = children.remove(0);
            match self.waiting.iter().position(|r| *r == id) {
                Some(at) => self.waiting.insert(at, heir),
                None => self.waiting.push_front(heir),
            }
            if !children.is_empty() {
                self.forks.insert(heir, children);
            }
        }
        self.forks.retain(|_, children| {
            children.retain(|r| *r != id);
            !children.is_empty()
        });
        self.running.retain(|r| *r != id);
        self.waiting.retain(|r| *r != id);
        request.status = RequestStatus::Finished(reason);
        Some(request)
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    pub fn block_table(&self, id: RequestId) -> Option<&[BlockId]> {
        self.kv.block_table(id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting requests, samples waiting to fork included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len() + self.forks.values().map(Vec::len).sum::<usize>()
    }

    /// Tokens the waiting requests must compute before they can produce output.
    pub fn num_waiting_tokens(&self) -> usize {
        self.waiting
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(Request::num_uncomputed)
            .sum()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Block-pool invariants plus: every live request is in exactly one queue (running,
    /// waiting, or waiting to fork from a live leader), only running requests hold blocks, and a
    /// request's table covers its computed tokens.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants()?;
        let running_set: std::collections::HashSet<_> = self.running.iter().collect();
        let waiting_set: std::collections::HashSet<_> = self.waiting.iter().collect();
        let fork_set: std::collections::HashSet<_> = self.forks.values().flatten().collect();
        let num_forks: usize = self.forks.values().map(Vec::len).sum();
        if running_set.len() != self.running.len()
            || waiting_set.len() != self.waiting.len()
            || fork_set.len() != num_forks
        {
            return Err("a request is queued twice".into());
        }
        for (leader, children) in &self.forks {
            if children.is_empty() || !self.requests.contains_key(leader) {
                return Err(format!("forks of {leader}: leader gone or no samples"));
            }
        }
        for (id, r) in &self.requests {
            let running = running_set.contains(id);
            let waiting = waiting_set.contains(id) || fork_set.contains(id);
            if running == waiting || (waiting_set.contains(id) && fork_set.contains(id)) {
                return Err(format!("{id}: running = {running}, waiting = {waiting}"));
            }
            let blocks = self.kv.block_table(*id).map_or(0, <[_]>::len);
            if waiting && blocks > 0 {
                return Err(format!("{id} waits but holds {blocks} blocks"));
            }
            if blocks * self.config.block_size < r.num_computed_tokens {
                return Err(format!(
                    "{id}: {blocks} blocks for {} computed tokens",
                    r.num_computed_tokens
                ));
            }
        }
        if self.kv.num_requests() > self.running.len() {
            return Err("a finished or waiting request still holds blocks".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
