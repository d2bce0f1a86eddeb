//! Token sampler: turns one sequence's raw logits into its next token, with vLLM's semantics.
//!
//! Order of work: the reported log-probabilities come from the raw logits (vLLM's default); then
//! the allowed-token mask, the caller's banned tokens (`min_tokens`) and `logit_bias`; then
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
    /// request's tokens so far (for penalties); `banned`: tokens that must not be chosen now (the
    /// engine's end-of-sequence and stop ids while `min_tokens` is not reached); ids outside the
    /// vocabulary are ignored. Greedy params never touch `rng`; any other params take exactly one
    /// draw from it.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        prompt_ids: &[TokenId],
        output_ids: &[TokenId],
        banned: &[TokenId],
        rng: &mut RequestRng,
    ) -> SampledToken {
        assert!(!logits.is_empty(), "sampling needs at least one logit");
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&x| sanitize(x)));
        // The normalizer costs an exp per vocabulary entry: only for requests that want logprobs.
        let norm = params.logprobs.map(|_| LogNorm::new(&self.logits));
        let top_logprobs = match &norm {
            Some(norm) => self.top_logprobs(params.logprobs.unwrap_or(0), norm),
            None => Vec::new(),
        };
        self.apply_masks_and_bias(params, banned);
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

    /// `allowed_token_ids` (everything else to -inf), `banned` to -inf, then `logit_bias` added.
    fn apply_masks_and_bias(&mut self, params: &SamplingParams, banned: &[TokenId]) {
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
        for &id in banned {
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

/// First index of the largest value (ties go to the lowest id).
fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate().skip(1) {
        if x > xs[best] {
            best = i;
        }
    }
    best
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    /// Params with truncation: `top_k`, `top_p`, `min_p`.
    fn cut(temperature: f32, top_k: Option<usize>, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            top_k,
            top_p,
            min_p,
            ..params(temperature)
        }
    }

    fn random_logits(seed: u64, n: usize) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-5.0..5.0)).collect()
    }

    fn token(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) -> u32 {
        let mut rng = RequestRng::new(Some(0));
        Sampler::new()
            .sample(logits, p, prompt, output, &[], &mut rng)
            .token
    }

    /// Checks the empirical frequency of each token over 20k seeded draws against `want`.
    fn check_distribution(logits: &[f32], p: &SamplingParams, want: &[f64]) {
        const DRAWS: usize = 20_000;
        let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(1)));
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..DRAWS {
            counts[sampler.sample(logits, p, &[], &[], &[], &mut rng).token as usize] += 1;
        }
        let got: Vec<f64> = counts.iter().map(|&c| c as f64 / DRAWS as f64).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.02, "got {got:?}, want {want:?}");
        }
        assert_eq!(got.len(), want.len());
    }

    #[test]
    fn greedy_picks_the_argmax_lowest_id_on_ties_and_leaves_the_rng_alone() {
        let g = SamplingParams::greedy(1);
        assert_eq!(token(&[0.1, 3.0, -1.0, 2.9], &g, &[], &[]), 1);
        assert_eq!(token(&[1.0, 4.0, 2.0, 4.0, 4.0], &g, &[], &[]), 1);
        let mut rng = RequestRng::new(Some(9));
        let before = rng.clone();
        Sampler::new().sample(&random_logits(3, 100), &g, &[], &[], &[], &mut rng);
        assert_eq!(rng.0, before.0);
        assert_eq!(rng.uniform(), before.clone().uniform());
    }

    #[test]
    fn non_greedy_takes_exactly_one_draw_whatever_the_truncation() {
        let logits = random_logits(4, 500);
        for p in [
            params(1.0),
            cut(0.7, Some(3), 0.5, 0.2),
            cut(1.5, None, 0.01, 0.0),
        ] {
            let mut rng = RequestRng::new(Some(5));
            let mut expected = rng.clone();
            expected.uniform();
            Sampler::new().sample(&logits, &p, &[], &[], &[], &mut rng);
            assert_eq!(rng.0, expected.0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let run = |seed| {
            let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(seed)));
            let p = cut(0.9, Some(40), 0.95, 0.0);
            let mut step = |i| sampler.sample(&random_logits(i, 64), &p, &[], &[], &[], &mut rng);
            (0..50).map(|i| step(i).token).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn truncating_to_one_token_gives_the_argmax() {
        for seed in 0..20 {
            let logits = random_logits(seed, 200);
            let want = argmax(&logits) as u32;
            let mut rng = RequestRng::new(Some(seed));
            let mut sampler = Sampler::new();
            for p in [
                cut(1.0, Some(1), 1.0, 0.0),
                cut(1.0, None, 1e-6, 0.0),
                cut(1.0, None, 1.0, 1.0),
            ] {
                assert_eq!(
                    sampler.sample(&logits, &p, &[], &[], &[], &mut rng).token,
                    want
                );
            }
        }
    }

    #[test]
    fn nucleus_matches_a_full_sort_on_a_large_vocabulary() {
        // Flat logits make the nucleus large, so the prefix has to grow several times.
        let logits: Vec<f32> = random_logits(6, 5000).iter().map(|x| x * 0.1).collect();
        let w: Vec<f32> = logits.iter().map(|x| x.exp()).collect();
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        let mut sorted: Vec<u32> = (0..5000).collect();
        sorted.sort_by(by_logit_desc(&logits));
        for top_p in [1e-9, 0.01, 0.3, 0.9, 0.999, 1.0] {
            let mut cand: Vec<u32> = (0..5000).collect();
            nucleus(&mut cand, &w, &logits, top_p * total);
            let (mut cum, mut len) = (0.0, 0);
            while len < sorted.len() && cum < top_p * total {
                cum += f64::from(w[sorted[len] as usize]);
                len += 1;
            }
            assert_eq!(cand, sorted[..len.max(1)], "top_p {top_p}");
        }
    }

    #[test]
    fn empirical_distributions_match() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        check_distribution(&logits, &params(1.0), &[0.5, 0.3, 0.2]);
        // Keeping 0.5 + 0.3 reaches 0.7; both are renormalized by 0.8 and id 2 never shows.
        let kept = [0.5 / 0.8, 0.3 / 0.8, 0.0];
        check_distribution(&logits, &cut(1.0, None, 0.7, 0.0), &kept);
        check_distribution(&logits, &cut(1.0, Some(2), 1.0, 0.0), &kept);
        // min_p 0.5 drops 0.2 (< 0.25) but keeps 0.3.
        check_distribution(&logits, &cut(1.0, None, 1.0, 0.5), &kept);
        // Temperature 0.5 squares the probabilities.
        let want: Vec<f64> = [0.25, 0.09, 0.04].iter().map(|p| p / 0.38).collect();
        check_distribution(&logits, &params(0.5), &want);
    }

    #[test]
    fn repetition_penalty_lowers_repeated_tokens_of_either_sign() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy(1)
        };
        let g = SamplingParams::greedy(1);
        // Positive logit in the prompt: 2.0 / 2 = 1.0 < 1.5.
        assert_eq!(token(&[2.0, 1.5], &g, &[0], &[]), 0);
        assert_eq!(token(&[2.0, 1.5], &p, &[0], &[]), 1);
        // Negative logit in the output: -1.0 * 2 = -2.0 < -1.5.
        assert_eq!(token(&[-1.0, -1.5], &g, &[], &[0]), 0);
        assert_eq!(token(&[-1.0, -1.5], &p, &[], &[0, 0]), 1);
        // Out-of-vocabulary ids are ignored.
        assert_eq!(token(&[2.0, 1.5], &p, &[7], &[9]), 0);
    }

    #[test]
    fn frequency_and_presence_penalties_are_exact_and_count_output_only() {
        // Token 0 appears twice in the output: 1 - 0.25 * 2 - 0.125 = 0.375.
        let p = SamplingParams {
            frequency_penalty: 0.25,
            presence_penalty: 0.125,
            ..SamplingParams::greedy(1)
        };
        assert_eq!(token(&[1.0, 0.37], &p, &[], &[0, 1, 0]), 0);
        assert_eq!(token(&[1.0, 0.38], &p, &[], &[0, 2, 0]), 1);
        // Token 1 appears once too: 0.38 - 0.25 - 0.125 = 0.005 < 0.375.
        assert_eq!(token(&[1.0, 0.38], &p, &[], &[0, 1, 0]), 0);
        // Prompt tokens do not count.
        assert_eq!(token(&[1.0, 0.38], &p, &[0, 0, 0], &[]), 0);
        // Presence counts once: 1 - 0.5 = 0.5 whatever the count.
        let pres = SamplingParams {
            presence_penalty: 0.5,
            ..SamplingParams::greedy(1)
        };
        assert_eq!(token(&[1.0, 0.49], &pres, &[], &[0, 0, 0, 0]), 0);
        assert_eq!(token(&[1.0, 0.51], &pres, &[], &[0, 0, 0, 0]), 1);
    }

    #[test]
    fn logprobs_are_the_raw_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        let want = |i: usize| (f64::from(logits[i]) - lse) as f32;
        // Penalties and temperature change the choice, not the reported logprobs.
        let p = SamplingParams {
            logprobs: Some(3),
            repetition_penalty: 1.7,
            ..params(0.3)
        };
        let mut rng = RequestRng::new(Some(2));
        let s = Sampler::new().sample(&logits, &p, &[2], &[], &[], &mut rng);
        assert!((s.logprob - want(s.token as usize)).abs() < 1e-5);
        let ids: Vec<u32> = s.top_logprobs.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, [2, 1, 0]);
        for &(i, lp) in &s.top_logprobs {
            assert!((lp - want(i as usize)).abs() < 1e-5);
        }
        // Ties list the lower id first; asking for more than the vocabulary gives all of it.
        let p = SamplingParams {
            logprobs: Some(5),
            ..SamplingParams::greedy(1)
        };
        let s = Sampler::new().sample(&[1.0, 0.0, 1.0], &p, &[], &[], &[], &mut rng);
        let ids: Vec<u32> = s.top_logprobs.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, [0, 2, 1]);
    }

    #[test]
    fn non_finite_logits_do_not_panic() {
        let mut sampler = Sampler::new();
        let mut rng = RequestRng::new(Some(3));
        let p = SamplingParams {
            logprobs: Some(2),
            top_p: 0.9,
            ..params(1.0)
        };
        let greedy_with_logprobs = SamplingParams {
            logprobs: Some(0),
            ..SamplingParams::greedy(1)
        };
        for logits in [vec![f32::NAN; 4], vec![f32::NEG_INFINITY; 4]] {
            for q in [&p, &greedy_with_logprobs] {
                let s = sampler.sample(&logits, q, &[0], &[1], &[], &mut rng);
                assert_eq!(s.token, 0);
                assert_eq!(s.logprob, -(4f32.ln()));
            }
            let s = sampler.sample(
                &logits,
                &SamplingParams::greedy(1),
                &[0],
                &[1],
                &[],
                &mut rng,
            );
            assert_eq!(s.token, 0);
            assert!(s.logprob.is_nan(), "no logprob unless asked for");
        }
        let logits = [1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 5.0];
        for _ in 0..20 {
            let s = sampler.sample(&logits, &p, &[], &[2], &[], &mut rng);
            assert_eq!((s.token, s.logprob), (2, 0.0));
            assert_eq!(s.top_logprobs[1], (4, f32::NEG_INFINITY));
        }
        let s = sampler.sample(&[f32::NAN, 1.0], &p, &[], &[], &[], &mut rng);
        assert_eq!((s.token, s.logprob), (1, 0.0));
    }

    fn arb_params() -> impl Strategy<Value = SamplingParams> {
        (
            prop_oneof![Just(0.0f32), 0.05f32..2.0],
            proptest::option::of(1usize..400),
            prop_oneof![Just(1.0f32), 0.01f32..=1.0],
            prop_oneof![Just(0.0f32), 0.0f32..=1.0],
            (0.5f32..=2.0, -2.0f32..=2.0, -2.0f32..=2.0),
            proptest::option::of(0usize..=20),
            any::<u64>(),
        )
            .prop_map(
                |(t, k, top_p, min_p, (rep, pres, freq), lp, seed)| SamplingParams {
                    repetition_penalty: rep,
                    presence_penalty: pres,
                    frequency_penalty: freq,
                    logprobs: lp,
                    seed: Some(seed),
                    ..cut(t, k, top_p, min_p)
                },
            )
    }

    proptest! {
        #[test]
        fn samples_are_in_range_finite_and_within_top_k(
            logits in proptest::collection::vec(-30.0f32..30.0, 1..300),
            p in arb_params(),
            prompt in proptest::collection::vec(any::<u32>(), 0..20),
            output in proptest::collection::vec(any::<u32>(), 0..20),
        ) {
            let n = logits.len() as u32;
            let prompt: Vec<u32> = prompt.iter().map(|&i| i % n).collect();
            let output: Vec<u32> = output.iter().map(|&i| i % n).collect();
            prop_assert!(p.validate().is_ok());
            let mut rng = RequestRng::new(p.seed);
            let s = Sampler::new().sample(&logits, &p, &prompt, &output, &[], &mut rng);
            prop_assert!(s.token < n);
            if p.logprobs.is_some() {
                prop_assert!(s.logprob.is_finite() && s.logprob <= 0.0);
            } else {
                prop_assert!(s.logprob.is_nan());
            }
            prop_assert_eq!(s.top_logprobs.len(), p.logprobs.unwrap_or(0).min(logits.len()));
            prop_assert!(s.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
            if let Some(k) = p.top_k {
                // Reference penalties, written independently of the sampler's.
                let mut pen = logits.clone();
                for (i, x) in pen.iter_mut().enumerate() {
                    let i = i as u32;
                    if prompt.contains(&i) || output.contains(&i) {
                        let r = p.repetition_penalty;
                        *x = if *x > 0.0 { *x / r } else { *x * r };
                    }
                    let count = output.iter().filter(|&&o| o == i).count();
                    if count > 0 {
                        *x = *x - p.frequency_penalty * count as f32 - p.presence_penalty;
                    }
                }
                let chosen = pen[s.token as usize];
                prop_assert!(pen.iter().filter(|&&x| x > chosen).count() < k);
            }
        }
    }

    #[test]
    fn logit_bias_forces_or_bans_tokens_and_leaves_the_reported_logprobs_raw() {
        let logits = random_logits(7, 50);
        let best = argmax(&logits) as u32;
        let forced = (best + 17) % 50;
        let force = |bias: f32, base: SamplingParams| SamplingParams {
            logit_bias: vec![(forced, bias), (999, 100.0)],
            logprobs: Some(1),
            ..base
        };
        let mut rng = RequestRng::new(Some(3));
        let mut sampler = Sampler::new();
        for base in [SamplingParams::greedy(1), params(1.0)] {
            for _ in 0..50 {
                let s = sampler.sample(
                    &logits,
                    &force(100.0, base.clone()),
                    &[],
                    &[],
                    &[],
                    &mut rng,
                );
                assert_eq!(s.token, forced);
                // The raw distribution's log-probability, as vLLM reports it.
                let raw = LogNorm::new(&logits).logprob(logits[forced as usize]);
                assert_eq!(s.logprob, raw);
                assert_eq!(s.top_logprobs[0].0, best);
            }
        }
        // -100 on the argmax: greedy takes the runner-up.
        let ban = SamplingParams {
            logit_bias: vec![(best, -100.0)],
            ..SamplingParams::greedy(1)
        };
        let mut rest = logits.clone();
        rest[best as usize] = f32::NEG_INFINITY;
        assert_eq!(token(&logits, &ban, &[], &[]), argmax(&rest) as u32);
        // A small bias shifts the distribution exactly: +ln 2 doubles a token's odds.
        let doubled = SamplingParams {
            logit_bias: vec![(0, 2f32.ln())],
            ..params(1.0)
        };
        check_distribution(&[0.0, 0.0, 0.0], &doubled, &[0.5, 0.25, 0.25]);
    }

    #[test]
    fn allowed_and_banned_tokens_restrict_the_choice() {
        let logits = random_logits(11, 64);
        let allowed = vec![3, 9, 40, 63, 500];
        let p = SamplingParams {
            allowed_token_ids: Some(allowed.clone()),
            ..params(2.0)
        };
        let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(5)));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let t = sampler.sample(&logits, &p, &[], &[], &[9], &mut rng).token;
            assert!(allowed.contains(&t) && t != 9, "{t}");
            seen.insert(t);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![3, 40, 63]);
        let greedy = SamplingParams {
            allowed_token_ids: Some(allowed),
            ..SamplingParams::greedy(1)
        };
        let best_allowed = [3u32, 40, 63]
            .into_iter()
            .max_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
            .unwrap();
        let s = sampler.sample(&logits, &greedy, &[], &[], &[9], &mut rng);
        assert_eq!(s.token, best_allowed);
        // Banning the argmax alone: greedy takes the runner-up.
        let best = argmax(&logits) as u32;
        let s = sampler.sample(
            &logits,
            &SamplingParams::greedy(1),
            &[],
            &[],
            &[best],
            &mut rng,
        );
        let mut rest = logits.clone();
        rest[best as usize] = f32::NEG_INFINITY;
        assert_eq!(s.token, argmax(&rest) as u32);
    }
}
