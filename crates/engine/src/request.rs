//! A request as the scheduler sees it: its tokens, how many of them have K/V in the cache, and
//! where it is in its life.

use std::sync::Arc;
use std::time::Instant;

use pagoda_core::{FinishReason, RequestId, SamplingParams, TokenId};

use crate::output::RequestTimings;

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Its blocks were taken back; it waits (at the front) to be recomputed.
    Preempted,
    Finished(FinishReason),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    pub prompt_ids: Vec<TokenId>,
    pub output_ids: Vec<TokenId>,
    pub params: SamplingParams,
    /// Tokens (prompt first, then output) whose K/V are in the cache.
    pub num_computed_tokens: usize,
    pub status: RequestStatus,
    pub timings: RequestTimings,
    pub num_preemptions: usize,
    /// Requests with different salts never share cached KV blocks (tenant isolation).
    pub cache_salt: Option<Arc<str>>,
    /// Prompt tokens whose K/V came from the prefix cache when it was first scheduled.
    pub num_cached_tokens: Option<usize>,
    /// Draft tokens (speculative decoding) to verify after its tokens in the next step; they
    /// follow position `num_tokens() - 1` but are not its tokens.
    pub spec_token_ids: Vec<TokenId>,
}

impl Request {
    pub fn new(id: RequestId, prompt_ids: Vec<TokenId>, params: SamplingParams) -> Self {
        Self {
            id,
            prompt_ids,
            output_ids: Vec::new(),
            params,
            num_computed_tokens: 0,
            status: RequestStatus::Waiting,
            timings: RequestTimings::new(Instant::now()),
            num_preemptions: 0,
            cache_salt: None,
            num_cached_tokens: None,
            spec_token_ids: Vec::new(),
        }
    }

    /// Prompt plus generated tokens.
    pub fn num_tokens(&self) -> usize {
        self.prompt_ids.len() + self.output_ids.len()
    }

    /// The token at position `pos` of prompt + output, then of the drafts.
    pub fn token_at(&self, pos: usize) -> TokenId {
        match pos.checked_sub(self.prompt_ids.len()) {
            None => self.prompt_ids[pos],
            Some(o) => match o.checked_sub(self.output_ids.len()) {
                None => self.output_ids[o],
                Some(d) => self.spec_token_ids[d],
            },
        }
    }

    /// Tokens still to be computed before the next one can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.num_tokens() - self.num_computed_tokens
    }

    /// The most tokens this request can ever hold.
    pub fn max_total_tokens(&self) -> usize {
        self.prompt_ids.len() + self.params.max_tokens
    }
}
