//! The sampler's unit tests: exact distributions, penalties, masks and biases, log-probabilities,
//! bad logits, and a property test over random parameters.

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
        .sample(logits, p, prompt, output, StepMasks::default(), &mut rng)
        .token
}

/// Checks the empirical frequency of each token over 20k seeded draws against `want`.
fn check_distribution(logits: &[f32], p: &SamplingParams, want: &[f64]) {
    const DRAWS: usize = 20_000;
    let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(1)));
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[sampler
            .sample(logits, p, &[], &[], StepMasks::default(), &mut rng)
            .token as usize] += 1;
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
    Sampler::new().sample(
        &random_logits(3, 100),
        &g,
        &[],
        &[],
        StepMasks::default(),
        &mut rng,
    );
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
        Sampler::new().sample(&logits, &p, &[], &[], StepMasks::default(), &mut rng);
        assert_eq!(rng.0, expected.0);
    }
}

#[test]
fn same_seed_same_tokens_and_different_seeds_differ() {
    let run = |seed| {
        let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(seed)));
        let p = cut(0.9, Some(40), 0.95, 0.0);
        let mut step = |i| {
            sampler.sample(
                &random_logits(i, 64),
                &p,
                &[],
                &[],
                StepMasks::default(),
                &mut rng,
            )
        };
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
                sampler
                    .sample(&logits, &p, &[], &[], StepMasks::default(), &mut rng)
                    .token,
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
    let s = Sampler::new().sample(&logits, &p, &[2], &[], StepMasks::default(), &mut rng);
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
    let s = Sampler::new().sample(
        &[1.0, 0.0, 1.0],
        &p,
        &[],
        &[],
        StepMasks::default(),
        &mut rng,
    );
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
            let s = sampler.sample(&logits, q, &[0], &[1], StepMasks::default(), &mut rng);
            assert_eq!(s.token, 0);
            assert_eq!(s.logprob, -(4f32.ln()));
        }
        let s = sampler.sample(
            &logits,
            &SamplingParams::greedy(1),
            &[0],
            &[1],
            StepMasks::default(),
            &mut rng,
        );
        assert_eq!(s.token, 0);
        assert!(s.logprob.is_nan(), "no logprob unless asked for");
    }
    let logits = [1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 5.0];
    for _ in 0..20 {
        let s = sampler.sample(&logits, &p, &[], &[2], StepMasks::default(), &mut rng);
        assert_eq!((s.token, s.logprob), (2, 0.0));
        assert_eq!(s.top_logprobs[1], (4, f32::NEG_INFINITY));
    }
    let s = sampler.sample(
        &[f32::NAN, 1.0],
        &p,
        &[],
        &[],
        StepMasks::default(),
        &mut rng,
    );
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
        let s = Sampler::new().sample(&logits, &p, &prompt, &output, StepMasks::default(), &mut rng);
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
                StepMasks::default(),
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
        let t = sampler
            .sample(&logits, &p, &[], &[], banned(&[9]), &mut rng)
            .token;
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
    let s = sampler.sample(&logits, &greedy, &[], &[], banned(&[9]), &mut rng);
    assert_eq!(s.token, best_allowed);
    // Banning the argmax alone: greedy takes the runner-up.
    let best = argmax(&logits) as u32;
    let s = sampler.sample(
        &logits,
        &SamplingParams::greedy(1),
        &[],
        &[],
        banned(&[best]),
        &mut rng,
    );
    let mut rest = logits.clone();
    rest[best as usize] = f32::NEG_INFINITY;
    assert_eq!(s.token, argmax(&rest) as u32);
}

fn banned(ids: &[TokenId]) -> StepMasks<'_> {
    StepMasks {
        banned: ids,
        allowed: None,
    }
}

#[test]
fn the_step_mask_restricts_the_choice_and_combines_with_the_params() {
    let logits = random_logits(12, 64);
    // Mask shorter than the vocabulary: ids past its end are not allowed either.
    let mask: Vec<bool> = (0..40).map(|i| i % 7 == 3).collect();
    let masks = StepMasks {
        banned: &[10],
        allowed: Some(&mask),
    };
    let (mut sampler, mut rng) = (Sampler::new(), RequestRng::new(Some(6)));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        seen.insert(
            sampler
                .sample(&logits, &params(3.0), &[], &[], masks, &mut rng)
                .token,
        );
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![3, 17, 24, 31, 38]
    );
    let greedy = sampler.sample(
        &logits,
        &SamplingParams::greedy(1),
        &[],
        &[],
        masks,
        &mut rng,
    );
    let best = [3u32, 17, 24, 31, 38]
        .into_iter()
        .max_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
        .unwrap();
    assert_eq!(greedy.token, best);
    // With allowed_token_ids too, only their intersection remains.
    let both = SamplingParams {
        allowed_token_ids: Some(vec![17, 18, 38]),
        ..params(3.0)
    };
    for _ in 0..200 {
        let t = sampler
            .sample(&logits, &both, &[], &[], masks, &mut rng)
            .token;
        assert!(t == 17 || t == 38, "{t}");
    }
}

#[test]
fn scores_are_the_logprobs_sampling_reports() {
    let logits = random_logits(7, 300);
    let mut s = Sampler::new();
    let p = SamplingParams {
        logprobs: Some(4),
        ..params(0.0)
    };
    let mut rng = RequestRng::new(Some(1));
    let sampled = s.sample(&logits, &p, &[], &[], StepMasks::default(), &mut rng);
    let scored = s.score(&logits, sampled.token, 4);
    assert_eq!(scored, sampled);
    // A probability distribution over the vocabulary.
    let total: f64 = (0..300)
        .map(|t| f64::from(s.score(&logits, t, 0).logprob).exp())
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    // Ids outside the vocabulary have no probability.
    assert_eq!(s.score(&logits, 300, 0).logprob, f32::NEG_INFINITY);
}

/// The scan `argmax` replaced: first index of the largest value, NaN never chosen, 0 when nothing
/// is above -inf.
fn argmax_by_scan(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > f32::NEG_INFINITY && (xs[best].is_nan() || x > xs[best]) {
            best = i;
        }
    }
    best
}

proptest! {
    #[test]
    fn vectorized_argmax_agrees_with_a_scan(
        values in prop::collection::vec(
            prop_oneof![
                4 => (-3i32..3).prop_map(|v| v as f32),
                1 => Just(f32::NEG_INFINITY),
                1 => Just(f32::INFINITY),
                1 => Just(f32::NAN),
                1 => Just(-0.0f32),
            ],
            0..70,
        )
    ) {
        let got = if values.is_empty() { 0 } else { argmax(&values) };
        prop_assert_eq!(got, argmax_by_scan(&values), "{:?}", values);
    }
}

#[test]
fn plain_greedy_takes_the_same_token_as_the_sanitizing_path() {
    for seed in 0..20 {
        let mut logits = random_logits(seed, 1000 + seed as usize);
        // NaNs and ties: NaN never wins, the lowest id wins a tie.
        logits[seed as usize * 7] = f32::NAN;
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        logits[900 - seed as usize] = top;
        let plain = SamplingParams::greedy(1);
        // A bias on an id past the vocabulary changes nothing but takes the copying path.
        let copied = SamplingParams {
            logit_bias: vec![(5000, 1.0)],
            ..SamplingParams::greedy(1)
        };
        assert_eq!(
            token(&logits, &plain, &[], &[]),
            token(&logits, &copied, &[], &[])
        );
    }
}
