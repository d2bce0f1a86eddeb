//! What the engine hands out: per-token request outputs with their timings, and the engine's
//! counters and gauges for metrics.

use std::time::{Duration, Instant};

use pagoda_core::{FinishReason, RequestId, SampledToken};

/// When a request passed each point of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimings {
    /// When it was handed to the engine.
    pub arrival: Instant,
    /// The first step that computed any of its tokens.
    pub first_scheduled: Option<Instant>,
    /// When its first output token was sampled.
    pub first_token: Option<Instant>,
    /// When it finished (set on the final output only).
    pub finished: Option<Instant>,
}

impl RequestTimings {
    pub fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            first_scheduled: None,
            first_token: None,
            finished: None,
        }
    }

    /// Arrival to first scheduled step.
    pub fn queue_time(&self) -> Option<Duration> {
        Some(self.first_scheduled? - self.arrival)
    }

    /// Arrival to first token.
    pub fn time_to_first_token(&self) -> Option<Duration> {
        Some(self.first_token? - self.arrival)
    }

    /// First scheduled step to first token.
    pub fn prefill_time(&self) -> Option<Duration> {
        Some(self.first_token? - self.first_scheduled?)
    }

    /// First token to finish.
    pub fn decode_time(&self) -> Option<Duration> {
        Some(self.finished? - self.first_token?)
    }

    /// Arrival to finish.
    pub fn e2e_latency(&self) -> Option<Duration> {
        Some(self.finished? - self.arrival)
    }
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub id: RequestId,
    pub token: SampledToken,
    /// Text completed by this token (may be empty while a character or a possible stop string
    /// is incomplete).
    pub text: String,
    pub finished: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub num_cached_tokens: usize,
    /// Output tokens so far, this one included.
    pub num_output_tokens: usize,
    pub timings: RequestTimings,
    /// With the request's first token, when it asked for `prompt_logprobs`: the log-probability
    /// of each prompt token from the second on (entry `i` scores prompt token `i + 1`).
    pub prompt_logprobs: Option<Vec<SampledToken>>,
}

/// One engine step, as reported to observers (metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Tokens computed in the step (prefill chunks plus decodes).
    pub num_tokens: usize,
    /// Requests in the step.
    pub num_seqs: usize,
    /// Tokens sampled in the step.
    pub num_sampled: usize,
    pub duration: Duration,
}

/// Counters (since start) and gauges (now) of an engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub num_preemptions: usize,
    pub num_steps: u64,
    pub num_scheduled_tokens: u64,
    pub num_generated_tokens: u64,
    /// Tokens of scheduled requests looked up in the prefix cache (resumptions included).
    pub prefix_cache_queries: u64,
    /// Of those, tokens found in the cache.
    pub prefix_cache_hits: u64,
    /// Prompt tokens served from the cache at requests' first scheduling.
    pub prompt_tokens_cached: u64,
    /// Blocks copied on write (parallel samples diverging inside a shared block).
    pub num_cow_copies: u64,
    /// Draft tokens verified (speculative decoding).
    pub num_draft_tokens: u64,
    /// Of those, drafts kept as output.
    pub num_accepted_tokens: u64,
    /// Wall time spent in steps.
    pub step_time_total: Duration,
    /// Of that, time in the model's forward pass (the kernels: projections, attention, norms).
    pub forward_time_total: Duration,
    /// Of that, time in the sampler (penalties, softmax, top-k/p, logprobs).
    pub sample_time_total: Duration,
    pub last_step: Option<StepRecord>,
}

impl EngineStats {
    /// Fraction of KV blocks in use, in [0, 1].
    pub fn kv_cache_usage(&self) -> f64 {
        if self.kv_blocks_total == 0 {
            0.0
        } else {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        }
    }

    /// Fraction of step time spent outside the forward pass and the sampler: scheduling, block
    /// allocation, batch metadata, detokenization and stop checks (0 before the first step).
    pub fn step_overhead_fraction(&self) -> f64 {
        let step = self.step_time_total.as_secs_f64();
        if step == 0.0 {
            return 0.0;
        }
        let inside = (self.forward_time_total + self.sample_time_total).as_secs_f64();
        ((step - inside) / step).max(0.0)
    }

    /// Mean tokens computed per step.
    pub fn mean_tokens_per_step(&self) -> f64 {
        if self.num_steps == 0 {
            0.0
        } else {
            self.num_scheduled_tokens as f64 / self.num_steps as f64
        }
    }
}
