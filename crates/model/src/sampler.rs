//! Token sampler: turns one sequence's raw logits into its next token, with vLLM's semantics.
//!
//! Order of work: the reported log-probabilities come from the raw logits (vLLM's default); then
//! the allowed-token masks (the request's `allowed_token_ids`, the engine's structured-output
//! mask), the caller's banned tokens (`min_tokens`) and `logit_bias`; then
//! repetition, frequency and presence penalties; then either a greedy argmax, or temperature,
//! min-p, top-k, top-p and exactly one uniform draw from the request's own random stream.
//! Scratch buffers live in [`Sampler`] so the per-token hot path does not allocate (apart from the
//! returned top-logprobs `Vec`).
//!
//! Bad logits never panic: NaN counts as -inf; tokens at +inf share all the probability; when
//! every logit is -inf the choice is token 0. Params are expected to be validated, but values out
//! of range do not panic either.

use std::cmp::Ordering;

use pagoda_core::{SampledToken, SamplingParams, TokenId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A request's own random stream; the same seed gives the same draws whatever else is in the batch.
#[derive(Debug, Clone)]
pub struct RequestRng(ChaCha8Rng);

impl RequestRng {
    /// `Some(seed)` is reproducible; `None` seeds from the thread's OS-seeded generator.
    pub fn new(seed: Option<u64>) -> Self {
        Self(match seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_rng(&mut rand::rng()),
        })
    }

    /// One uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.0.random()
    }
}

/// How many candidates the top-p search sorts first: most nuclei are smaller, and sorting the
/// whole vocabulary (150k) per token is what we want to avoid.
const NUCLEUS_FIRST_TRY: usize = 64;

/// Restrictions the caller adds for one step on top of a request's own params.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepMasks<'a> {
    /// Tokens that must not be chosen now (the engine's end-of-sequence and stop ids while
    /// `min_tokens` is not reached); ids outside the vocabulary are ignored.
    pub banned: &'a [TokenId],
    /// When set, only the tokens marked `true` may be chosen (structured outputs); ids past its
    /// end may not.
    pub allowed: Option<&'a [bool]>,
}

/// Reusable scratch buffers so sampling does not allocate per token on the hot path (beyond the
/// returned Vec for top logprobs).
#[derive(Debug, Default)]
pub struct Sampler {
    /// Sanitized raw logits, then penalized in place.
    logits: Vec<f32>,
    /// Unnormalized probabilities after temperature and min-p (the top token weighs exactly 1).
    weights: Vec<f32>,
    /// Candidate token indices for top-k, top-p and top-logprobs selection.
    cand: Vec<u32>,
    /// Token ids gathered (sorted) for the penalties.
    ids: Vec<TokenId>,
    /// The allowed tokens' logits while the rest of the vocabulary is masked.
    kept: Vec<(usize, f32)>,
}

impl Sampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the next token.
    ///
    /// `logits`: raw model logits for one sequence (len = vocab). `prompt_ids` / `output_ids`: the
    /// request's tokens so far (for penalties); `masks`: this step's extra restrictions. Greedy
    /// params never touch `rng`; any other params take exactly one draw from it.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        prompt_ids: &[TokenId],
        output_ids: &[TokenId],
        masks: StepMasks<'_>,
        rng: &mut RequestRng,
    ) -> SampledToken {
        assert!(!logits.is_empty(), "sampling needs at least one logit");
        if params.is_greedy() && params.logprobs.is_none() && !adjusts_logits(params, masks) {
            // Plain greedy: the argmax of the raw logits (NaN never wins, as after sanitizing).
            return SampledToken {
                token: argmax(logits) as TokenId,
                logprob: f32::NAN,
                top_logprobs: Vec::new(),
            };
        }
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&x| sanitize(x)));
        // The normalizer costs an exp per vocabulary entry: only for requests that want logprobs.
        let norm = params.logprobs.map(|_| LogNorm::new(&self.logits));
        let top_logprobs = match &norm {
            Some(norm) => self.top_logprobs(params.logprobs.unwrap_or(0), norm),
            None => Vec::new(),
        };
        self.apply_masks_and_bias(params, masks);
        self.apply_penalties(params, prompt_ids, output_ids);
        let token = if params.is_greedy() {
            argmax(&self.logits)
        } else {
            // Drawn before truncation so a seeded request gets the same stream whatever its params.
            let u = rng.uniform();
            self.draw(params, u)
        };
        SampledToken {
            token: token as TokenId,
            logprob: norm.map_or(f32::NAN, |n| n.logprob(sanitize(logits[token]))),
            top_logprobs,
        }
    }

    /// `token`'s log-probability under the raw `logits` with the `top` most likely alternatives,
    /// as [`Sampler::sample`] reports them (prompt log-probabilities: what the model gave the
    /// token that came next).
    pub fn score(&mut self, logits: &[f32], token: TokenId, top: usize) -> SampledToken {
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&x| sanitize(x)));
        let norm = LogNorm::new(&self.logits);
        let top_logprobs = self.top_logprobs(top, &norm);
        let logprob = self
            .logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&x| norm.logprob(x));
        SampledToken {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// The `n` most likely raw tokens with their log-probabilities, most likely first.
    fn top_logprobs(&mut self, n: usize, norm: &LogNorm) -> Vec<(TokenId, f32)> {
        if n == 0 {
            return Vec::new();
        }
        self.cand.clear();
        self.cand.extend(0..self.logits.len() as u32);
        select_top(&mut self.cand, &self.logits, n);
        self.cand.sort_unstable_by(by_logit_desc(&self.logits));
        let logits = &self.logits;
        self.cand
            .iter()
            .map(|&i| (i, norm.logprob(logits[i as usize])))
            .collect()
    }

    /// `allowed_token_ids` and the step's allowed mask (everything else to -inf), the step's
    /// banned tokens to -inf, then `logit_bias` added.
    fn apply_masks_and_bias(&mut self, params: &SamplingParams, masks: StepMasks<'_>) {
        let logits = &mut self.logits;
        if let Some(allowed) = &params.allowed_token_ids {
            self.kept.clear();
            self.kept.extend(
                allowed
                    .iter()
                    .filter_map(|&id| logits.get(id as usize).map(|&x| (id as usize, x))),
            );
            logits.fill(f32::NEG_INFINITY);
            for &(id, x) in &self.kept {
                logits[id] = x;
            }
        }
        if let Some(allowed) = masks.allowed {
            for (i, x) in logits.iter_mut().enumerate() {
                if !allowed.get(i).copied().unwrap_or(false) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        for &id in masks.banned {
            if let Some(x) = logits.get_mut(id as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        for &(id, bias) in &params.logit_bias {
            if let Some(x) = logits.get_mut(id as usize) {
                *x = sanitize(*x + bias);
            }
        }
    }

    /// vLLM's penalties, in its order: repetition (HF, over prompt and output), then frequency and
    /// presence (OpenAI, over output only). Sorting the ids keeps the cost in the sequence length,
    /// not the vocabulary, and needs no per-vocab count table.
    fn apply_penalties(&mut self, params: &SamplingParams, prompt: &[TokenId], output: &[TokenId]) {
        let (logits, ids) = (&mut self.logits, &mut self.ids);
        let rep = params.repetition_penalty;
        if rep != 1.0 {
            ids.clear();
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(output);
            ids.sort_unstable();
            ids.dedup();
            for &id in ids.iter() {
                if let Some(x) = logits.get_mut(id as usize) {
                    // Dividing a negative logit would raise it, so those are multiplied instead.
                    *x = sanitize(if *x > 0.0 { *x / rep } else { *x * rep });
                }
            }
        }
        let (freq, pres) = (params.frequency_penalty, params.presence_penalty);
        if freq != 0.0 || pres != 0.0 {
            ids.clear();
            ids.extend_from_slice(output);
            ids.sort_unstable();
            for run in ids.chunk_by(|a, b| a == b) {
                if let Some(x) = logits.get_mut(run[0] as usize) {
                    *x = sanitize(*x - freq * run.len() as f32 - pres);
                }
            }
        }
    }

    /// Temperature, min-p, top-k, top-p, then inverse CDF at `u` over what is left.
    fn draw(&mut self, params: &SamplingParams, u: f64) -> usize {
        let logits = &self.logits;
        let best = argmax(logits);
        let max = logits[best];
        if max == f32::NEG_INFINITY {
            return best;
        }
        let all_inf = max == f32::INFINITY;
        let t = if params.temperature.is_finite() {
            params.temperature
        } else {
            1.0
        };
        let min_p = params.min_p;
        self.weights.clear();
        self.weights.extend(logits.iter().map(|&x| {
            let w = if all_inf {
                // The limit of softmax: the +inf tokens share the mass equally.
                f32::from(x == f32::INFINITY)
            } else {
                // max(x / t) = max / t, so subtracting before dividing gives the same softmax.
                ((x - max) / t).exp()
            };
            // The top token weighs exactly 1, so "prob < min_p * max_prob" is just "w < min_p".
            if w < min_p {
                0.0
            } else {
                w
            }
        }));
        let w = &self.weights;
        let top_k = params.top_k.filter(|&k| k < w.len());
        let top_p = f64::from(params.top_p);
        // Written as `<` so that a NaN top_p means no truncation.
        let nucleus_wanted = top_p < 1.0;
        let picked = if top_k.is_none() && !nucleus_wanted {
            // No truncation: walk the vocabulary in id order; no sort, no candidate list.
            inverse_cdf(0..w.len(), w, u)
        } else {
            let cand = &mut self.cand;
            cand.clear();
            cand.extend((0..w.len() as u32).filter(|&i| w[i as usize] > 0.0));
            if let Some(k) = top_k {
                select_top(cand, logits, k.max(1));
            }
            if nucleus_wanted {
                // top-p is relative to the mass min-p and top-k left, as vLLM renormalizes first.
                let mass: f64 = cand.iter().map(|&i| f64::from(w[i as usize])).sum();
                nucleus(cand, w, logits, top_p * mass);
            }
            inverse_cdf(cand.iter().map(|&i| i as usize), w, u)
        };
        // Nothing left with weight (only reachable with out-of-range params): fall back to greedy.
        picked.unwrap_or(best)
    }
}

/// NaN becomes -inf so every comparison is total; -0 becomes +0 so ties really tie.
fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x + 0.0
    }
}

/// Whether masks, bias or penalties change any logit before the choice.
fn adjusts_logits(params: &SamplingParams, masks: StepMasks<'_>) -> bool {
    params.allowed_token_ids.is_some()
        || masks.allowed.is_some()
        || !masks.banned.is_empty()
        || !params.logit_bias.is_empty()
        || params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0
}

/// First index of the largest value (ties go to the lowest id; NaN never wins).
///
/// Sixteen lanes each keep their own first maximum, so the loop vectorizes into compares and
/// blends (the one-at-a-time scan took ≈ 50 µs of every decode step over a 49k vocabulary).
fn argmax(xs: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [usize::MAX; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for (c, chunk) in (&mut chunks).enumerate() {
        for l in 0..LANES {
            if chunk[l] > best[l] {
                best[l] = chunk[l];
                at[l] = c * LANES + l;
            }
        }
    }
    let tail = xs.len() - chunks.remainder().len();
    // Nothing above -inf (all -inf or NaN) leaves the first index, as the scan gave; a -inf
    // candidate never displaces it (no index is below 0).
    let mut winner = (f32::NEG_INFINITY, 0);
    let candidates = best.into_iter().zip(at);
    let rest = chunks.remainder().iter().enumerate();
    for (x, i) in candidates.chain(rest.map(|(i, &x)| (x, tail + i))) {
        if x > winner.0 || (x == winner.0 && i < winner.1) {
            winner = (x, i);
        }
    }
    winner.1
}

/// Larger logit first, lower id first among equals: one total order for every selection.
fn by_logit_desc(keys: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        keys[b as usize]
            .total_cmp(&keys[a as usize])
            .then(a.cmp(&b))
    }
}

/// Keeps the `n` best of `idx` (in no particular order) in O(len), without sorting.
fn select_top(idx: &mut Vec<u32>, keys: &[f32], n: usize) {
    if n < idx.len() {
        idx.select_nth_unstable_by(n, by_logit_desc(keys));
        idx.truncate(n);
    }
}

/// Cuts `cand` to the smallest most-likely set whose weight reaches `mass` (at least one token),
/// sorted most likely first. It selects and sorts growing prefixes, so a small nucleus in a large
/// vocabulary costs a few linear selections instead of a full sort.
fn nucleus(cand: &mut Vec<u32>, w: &[f32], keys: &[f32], mass: f64) {
    let cmp = by_logit_desc(keys);
    let n = cand.len();
    let (mut done, mut cum) = (0, 0.0f64);
    let mut end = n.min(NUCLEUS_FIRST_TRY);
    loop {
        // cand[..done] already holds the `done` best, so only the rest needs selecting.
        if end < n {
            cand[done..].select_nth_unstable_by(end - done, &cmp);
        }
        cand[done..end].sort_unstable_by(&cmp);
        for i in done..end {
            cum += f64::from(w[cand[i] as usize]);
            if cum >= mass {
                cand.truncate(i + 1);
                return;
            }
        }
        if end == n {
            return;
        }
        done = end;
        end = (end * 4).min(n);
    }
}

/// The first of `ids` whose cumulative weight exceeds `u` times their total, or `None` when they
/// have no weight. Summing twice in the same order makes the walk always end on a token.
fn inverse_cdf(ids: impl Iterator<Item = usize> + Clone, w: &[f32], u: f64) -> Option<usize> {
    let total: f64 = ids.clone().map(|i| f64::from(w[i])).sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let target = u * total;
    let (mut cum, mut last) = (0.0f64, None);
    for i in ids {
        if w[i] > 0.0 {
            cum += f64::from(w[i]);
            last = Some(i);
            if cum > target {
                return Some(i);
            }
        }
    }
    last
}

/// What log_softmax subtracts, with the non-finite cases spelled out.
enum LogNorm {
    /// The usual case: log-sum-exp of the logits.
    Finite(f64),
    /// Some logits are +inf: they share the mass, so each has this logprob and the rest -inf.
    PosInf(f32),
    /// Every logit is -inf (or NaN): all equal, so uniform with this logprob.
    Uniform(f32),
}

impl LogNorm {
    fn new(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY {
            let count = logits.iter().filter(|&&x| x == f32::INFINITY).count();
            LogNorm::PosInf(-(count as f64).ln() as f32)
        } else if max == f32::NEG_INFINITY {
            LogNorm::Uniform(-(logits.len() as f64).ln() as f32)
        } else {
            // Max-subtracted so exp cannot overflow; f64 sum so 150k small terms keep precision.
            let sum: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
            LogNorm::Finite(f64::from(max) + sum.ln())
        }
    }

    fn logprob(&self, x: f32) -> f32 {
        match *self {
            LogNorm::Finite(lse) => (f64::from(x) - lse) as f32,
            LogNorm::PosInf(lp) if x == f32::INFINITY => lp,
            LogNorm::PosInf(_) => f32::NEG_INFINITY,
            LogNorm::Uniform(lp) => lp,
        }
    }
}

#[cfg(test)]
mod tests;
