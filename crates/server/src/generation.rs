//! From validated prompts to merged per-choice output streams, shared by completions and chat.
//!
//! Each prompt × `n` becomes one engine request (choice `index = prompt × n + i`; with a seed,
//! choice i samples with `seed + i`); the n samples of a prompt go in as one group, which computes
//! the prompt once and shares its KV blocks. Their streams are merged in arrival order, so n > 1
//! interleaves by choice index. Dropping the merged stream drops every request stream, which
//! aborts whatever has not finished: that is how a client disconnect frees the KV cache.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, SelectAll, Stream, StreamExt};
use pagoda_core::{FinishReason, SamplingParams, TokenId};
use pagoda_engine::handle::{QueueLimits, RequestStream};
use pagoda_engine::output::RequestOutput;
use pagoda_model::Tokenizer;

use crate::api::common::Usage;
use crate::error::ApiError;
use crate::state::{AppState, Tenant};
use crate::validation::{max_tokens_for, Generation, MAX_SEQUENCES_PER_REQUEST};

/// One tokenized prompt with its resolved `max_tokens`.
pub struct PreparedPrompt {
    pub ids: Vec<TokenId>,
    pub max_tokens: usize,
}

/// Tokens of context used to render one token's text for logprobs.
const PIECE_CONTEXT: usize = 4;

/// What a merged stream yields.
#[derive(Debug)]
pub enum ChoiceEvent {
    Output {
        index: usize,
        /// Boxed: the prompt's log-probabilities make an output large.
        output: Box<RequestOutput>,
        /// Seconds since this choice's previous output (inter-token latency), if any.
        since_previous: Option<f64>,
    },
    /// The engine dropped the request without finishing it (it stopped, or a bug).
    Lost { index: usize },
}

type ChoiceStream = Pin<Box<dyn Stream<Item = ChoiceEvent> + Send>>;

/// The running choices of one HTTP request.
pub struct Submission {
    pub merged: SelectAll<ChoiceStream>,
    pub num_choices: usize,
    pub prompts: Vec<Vec<TokenId>>,
    pub n: usize,
    /// Per prompt: its tokens served from the prefix cache (as seen by its first choice).
    cached_tokens: Vec<usize>,
}

/// Resolves each prompt's `max_tokens` against the context (errors name `max_tokens_param`).
pub fn prepare(
    state: &AppState,
    prompts: Vec<Vec<TokenId>>,
    generation: &Generation,
    max_tokens_param: &str,
) -> Result<Vec<PreparedPrompt>, ApiError> {
    let num_sequences = prompts.len() * generation.n;
    if num_sequences > MAX_SEQUENCES_PER_REQUEST {
        return Err(ApiError::invalid_param(
            "n",
            format!("prompts × n must be at most {MAX_SEQUENCES_PER_REQUEST}, got {num_sequences}"),
        ));
    }
    let max_model_len = state.engine.limits().max_model_len;
    prompts
        .into_iter()
        .map(|ids| {
            let max_tokens = max_tokens_for(
                generation.max_tokens,
                ids.len(),
                max_model_len,
                max_tokens_param,
            )?;
            Ok(PreparedPrompt { ids, max_tokens })
        })
        .collect()
}

/// The salt isolating a request's prefix-cache blocks: the tenant's (from its API key) and the
/// client's `cache_salt`, so tenants never share blocks and a tenant can partition its own.
fn cache_salt(tenant: Option<&Tenant>, generation: &Generation) -> Option<Arc<str>> {
    match (tenant, generation.cache_salt.as_deref()) {
        (None, None) => None,
        (None, Some(salt)) => Some(Arc::from(format!("client:{salt}"))),
        (Some(t), None) => Some(Arc::from(format!("tenant:{}", t.0))),
        (Some(t), Some(salt)) => Some(Arc::from(format!("tenant:{}|client:{salt}", t.0))),
    }
}

/// Submits every choice, or none: on any refusal the accepted ones are aborted.
pub fn submit(
    state: &Arc<AppState>,
    prompts: Vec<PreparedPrompt>,
    generation: &Generation,
    tenant: Option<&Tenant>,
) -> Result<Submission, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("The server is shutting down."));
    }
    let limits = QueueLimits {
        max_requests: state.config.max_waiting_requests,
        max_tokens: state.config.max_waiting_tokens,
    };
    let n = generation.n;
    let salt = cache_salt(tenant, generation);
    let mut merged = SelectAll::new();
    let mut kept = Vec::with_capacity(prompts.len());
    for (p, prompt) in prompts.into_iter().enumerate() {
        let params: Vec<SamplingParams> = (0..n)
            .map(|i| SamplingParams {
                max_tokens: prompt.max_tokens,
                // With max_tokens left to the context, min_tokens cannot ask for more than fits.
                min_tokens: generation.params.min_tokens.min(prompt.max_tokens),
                seed: generation.params.seed.map(|s| s.wrapping_add(i as u64)),
                ..generation.params.clone()
            })
            .collect();
        // n > 1: parallel samples computing the prompt once and sharing its KV blocks.
        let streams =
            state
                .engine
                .add_request_group(prompt.ids.clone(), params, limits, salt.clone())?;
        for (i, stream) in streams.into_iter().enumerate() {
            merged.push(choice_stream(p * n + i, stream));
        }
        kept.push(prompt.ids);
    }
    Ok(Submission {
        merged,
        num_choices: kept.len() * n,
        cached_tokens: vec![0; kept.len()],
        prompts: kept,
        n,
    })
}

fn choice_stream(index: usize, stream: RequestStream) -> ChoiceStream {
    let state = (stream, None::<Instant>, false);
    Box::pin(stream::unfold(
        state,
        move |(mut stream, last, done)| async move {
            if done {
                return None;
            }
            match stream.next().await {
                Some(output) => {
                    let now = Instant::now();
                    let since_previous = last.map(|t| (now - t).as_secs_f64());
                    let done = output.finished.is_some();
                    Some((
                        ChoiceEvent::Output {
                            index,
                            output: Box::new(output),
                            since_previous,
                        },
                        (stream, Some(now), done),
                    ))
                }
                None => Some((ChoiceEvent::Lost { index }, (stream, last, true))),
            }
        },
    ))
}

impl Submission {
    /// Records an event in the metrics (tokens, inter-token latency, TTFT and finish). Prompt
    /// tokens count once per prompt (at its first choice's first token), as in `usage`.
    pub fn observe(&mut self, state: &AppState, event: &ChoiceEvent) {
        let ChoiceEvent::Output {
            index,
            output,
            since_previous,
        } = event
        else {
            return;
        };
        let m = &state.metrics;
        m.generation_tokens.inc();
        if output.num_output_tokens == 1 {
            if index % self.n.max(1) == 0 {
                m.prompt_tokens.inc_by(output.num_prompt_tokens as u64);
                if let Some(c) = self.cached_tokens.get_mut(index / self.n.max(1)) {
                    *c = output.num_cached_tokens;
                }
            }
            if let Some(ttft) = output.timings.time_to_first_token() {
                m.time_to_first_token.observe(ttft.as_secs_f64());
            }
        }
        if let Some(itl) = since_previous {
            m.inter_token_latency.observe(*itl);
        }
        if let Some(reason) = &output.finished {
            m.observe_finished(&output.timings, reason.as_openai_str());
        }
    }

    /// Runs every choice to its end (non-streaming responses), handing each output to `apply`
    /// with its choice index; returns the number of completion tokens.
    pub async fn collect(
        &mut self,
        state: &AppState,
        mut apply: impl FnMut(usize, &RequestOutput),
    ) -> Result<usize, ApiError> {
        let mut completion_tokens = 0;
        while let Some(event) = self.merged.next().await {
            self.observe(state, &event);
            match event {
                ChoiceEvent::Output { index, output, .. } => {
                    completion_tokens += 1;
                    apply(index, &output);
                }
                ChoiceEvent::Lost { .. } => {
                    return Err(ApiError::internal("The engine dropped the request."))
                }
            }
        }
        Ok(completion_tokens)
    }

    /// Prompt tokens over all prompts (counted once, not per choice), as in `usage`.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }

    /// The `usage` object for `completion_tokens` generated tokens.
    pub fn usage(&self, completion_tokens: usize) -> Usage {
        Usage::new(
            self.prompt_tokens(),
            completion_tokens,
            self.cached_tokens.iter().sum(),
        )
    }

    /// The prompt a choice came from.
    pub fn prompt_of(&self, index: usize) -> &[TokenId] {
        &self.prompts[index / self.n.max(1)]
    }
}

/// What one choice has produced so far; `L` is the endpoint's logprobs shape.
#[derive(Debug, Default)]
pub struct ChoiceProgress<L> {
    pub text: String,
    /// `Some` when logprobs were asked for.
    pub logprobs: Option<L>,
    pub finish_reason: Option<&'static str>,
    /// The last few tokens (prompt tail, then output): context for [`token_piece`].
    pub context: Vec<TokenId>,
}

impl<L: Default> ChoiceProgress<L> {
    /// One per choice of `submission`, each starting from its prompt's tail.
    pub fn for_choices(submission: &Submission, want_logprobs: bool) -> Vec<Self> {
        (0..submission.num_choices)
            .map(|i| {
                let prompt = submission.prompt_of(i);
                Self {
                    text: String::new(),
                    logprobs: want_logprobs.then(L::default),
                    finish_reason: None,
                    context: prompt[prompt.len().saturating_sub(PIECE_CONTEXT)..].to_vec(),
                }
            })
            .collect()
    }

    /// Takes in one output: its text, its finish reason, and its token as context.
    pub fn advance(&mut self, output: &RequestOutput) {
        if self.context.len() == PIECE_CONTEXT {
            self.context.remove(0);
        }
        self.context.push(output.token.token);
        self.text.push_str(&output.text);
        self.finish_reason = output.finished.as_ref().map(FinishReason::as_openai_str);
    }
}

/// The text of token `id` after `context` (the tokens before it), as a client should see it in
/// logprobs: SentencePiece spaces and byte tokens are rendered by the tokenizer's decoder.
pub fn token_piece(tokenizer: &Tokenizer, context: &[TokenId], id: TokenId) -> String {
    let context = &context[context.len().saturating_sub(PIECE_CONTEXT)..];
    let mut ids = context.to_vec();
    ids.push(id);
    match (
        tokenizer.decode(context, false),
        tokenizer.decode(&ids, false),
    ) {
        (Ok(before), Ok(after)) if after.starts_with(&before) => after[before.len()..].to_string(),
        _ => tokenizer
            .decode(&[id], false)
            .ok()
            .or_else(|| tokenizer.id_to_token(id))
            .unwrap_or_default(),
    }
}
