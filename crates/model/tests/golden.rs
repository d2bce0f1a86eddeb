//! Exactness against Hugging Face transformers (`../shared/golden`): tokenizer cases, stories260k
//! greedy decoding and logits, and the synthetic Llama/Qwen2 models — each case alone, all cases
//! of a file as one batch, chunked prefill, and block sizes 1, 16 and 32.

mod common;

use std::path::Path;

use pagoda_model::kv_cache::KvCacheDtype;
use pagoda_model::test_support::{golden_json, greedy_with_logits, token_ids as ids};
use pagoda_model::{load_model_dir, RunnerOptions, Tokenizer};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("float list")
        .iter()
        .map(|x| x.as_f64().expect("float"))
        .collect()
}

/// Per request: generated ids and the logits that chose each of them.
type Run = Vec<(Vec<u32>, Vec<Vec<f32>>)>;

fn run_greedy(
    model_dir: &Path,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    block_size: usize,
    chunk: usize,
) -> Run {
    run_greedy_options(
        model_dir,
        prompts,
        max_tokens,
        block_size,
        chunk,
        RunnerOptions::default(),
    )
}

fn run_greedy_options(
    model_dir: &Path,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    block_size: usize,
    chunk: usize,
    options: RunnerOptions,
) -> Run {
    let options = RunnerOptions {
        block_size,
        kv_cache_bytes: 64 << 20,
        ..options
    };
    let mut loaded = load_model_dir(model_dir, &options).expect("model loads");
    greedy_with_logits(&mut loaded.runner, prompts, max_tokens, chunk)
}

/// Every way of batching the cases must give the same, golden, results.
fn variants(n: usize) -> Vec<(String, Vec<Vec<usize>>, usize, usize)> {
    let alone: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let together = vec![(0..n).collect::<Vec<_>>()];
    vec![
        ("alone, block 16".into(), alone, 16, 512),
        ("one batch, block 1".into(), together.clone(), 1, 512),
        ("one batch, block 16".into(), together.clone(), 16, 512),
        ("one batch, block 32".into(), together.clone(), 32, 512),
        (
            "one batch, block 16, prefill chunks of 5".into(),
            together,
            16,
            5,
        ),
    ]
}

#[test]
fn tokenizer_cases_are_exact() {
    let Some(shared) = common::shared_dir("tokenizer_cases_are_exact") else {
        return;
    };
    let tok = Tokenizer::from_dir(&shared.join("models/stories260k")).expect("tokenizer loads");
    let cases = golden_json(&shared, "tokenizer_cases.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 20);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "ids of {text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids_with_bos"]),
            "ids_with_bos of {text:?}"
        );
        let tokens: Vec<String> = ids(&case["ids"])
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap())
            .collect();
        let want: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens, want, "tokens of {text:?}");
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn stories260k_greedy_and_logits() {
    let Some(shared) = common::shared_dir("stories260k_greedy_and_logits") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().expect("cases");
    let model = shared.join("models/stories260k");
    let tok = Tokenizer::from_dir(&model).unwrap();
    for (name, groups, block_size, chunk) in variants(cases.len()) {
        for group in groups {
            let prompts: Vec<Vec<u32>> = group
                .iter()
                .map(|&i| ids(&cases[i]["prompt_token_ids"]))
                .collect();
            let run = run_greedy(&model, &prompts, 64, block_size, chunk);
            for (&i, (out, logits)) in group.iter().zip(&run) {
                let case = &cases[i];
                assert_eq!(
                    out,
                    &ids(&case["greedy_token_ids"]),
                    "case {i} ({name}): greedy ids"
                );
                for top in case["top5_logits"].as_array().unwrap() {
                    let step = top["predicts_generated_index"].as_u64().unwrap() as usize;
                    let row = &logits[step];
                    let want_ids = ids(&top["ids"]);
                    let want = floats(&top["logits"]);
                    let got: Vec<f32> = want_ids.iter().map(|&t| row[t as usize]).collect();
                    common::assert_logits_close(
                        &got,
                        &want,
                        1e-4,
                        &format!("case {i} ({name}) step {step}"),
                    );
                    let mut order: Vec<u32> = (0..row.len() as u32).collect();
                    order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
                    assert_eq!(
                        &order[..5],
                        &want_ids[..],
                        "case {i} ({name}) step {step}: top-5 ids"
                    );
                }
                let prompt = ids(&case["prompt_token_ids"]);
                let text = tok.decode(&[prompt, out.clone()].concat(), true).unwrap();
                assert_eq!(
                    text,
                    case["text"].as_str().unwrap(),
                    "case {i} ({name}): text"
                );
            }
        }
    }
}

fn check_synthetic(name: &str) {
    let Some(shared) = common::shared_dir(name) else {
        return;
    };
    let golden = golden_json(&shared, &format!("synthetic_{name}.json"));
    let cases = golden["cases"].as_array().expect("cases");
    let model = shared.join(format!("models/synthetic/{name}"));
    for (variant, groups, block_size, chunk) in variants(cases.len()) {
        for group in groups {
            let prompts: Vec<Vec<u32>> =
                group.iter().map(|&i| ids(&cases[i]["input_ids"])).collect();
            let run = run_greedy(&model, &prompts, 32, block_size, chunk);
            for (&i, (out, logits)) in group.iter().zip(&run) {
                let case = &cases[i];
                let what = format!("{name} case {i} (len {}, {variant})", prompts.len());
                common::assert_logits_close(
                    &logits[0],
                    &floats(&case["last_logits"]),
                    1e-4,
                    &format!("{what}: last_logits"),
                );
                assert_eq!(out, &ids(&case["greedy_token_ids"]), "{what}: greedy ids");
                common::assert_logits_close(
                    &logits[31],
                    &floats(&case["greedy_final_logits"]),
                    1e-4,
                    &format!("{what}: greedy_final_logits"),
                );
            }
        }
    }
}

#[test]
fn synthetic_llama_gqa() {
    check_synthetic("llama-gqa");
}

#[test]
fn synthetic_llama_rope_scaled() {
    check_synthetic("llama-rope-scaled");
}

#[test]
fn synthetic_qwen2_bias() {
    check_synthetic("qwen2-bias");
}

/// Weights quantized to Q8_0 at load (activations quantized per 32 too, as llama.cpp does): the
/// greedy output of every stories260k prompt equals the f32 goldens for its first 32 tokens, alone
/// and all prompts as one batch.
#[test]
fn stories260k_q8_0_greedy_matches_the_first_32_golden_tokens() {
    let Some(shared) = common::shared_dir("stories260k_q8_0") else {
        return;
    };
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().expect("cases");
    let model = shared.join("models/stories260k");
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_token_ids"])).collect();
    let options = RunnerOptions {
        quantization: Some(pagoda_model::Quantization::Q8_0),
        ..RunnerOptions::default()
    };
    let together = run_greedy_options(&model, &prompts, 32, 16, 512, options.clone());
    for (i, case) in cases.iter().enumerate() {
        let want = &ids(&case["greedy_token_ids"])[..32];
        assert_eq!(&together[i].0, want, "case {i}, one batch");
        let alone = run_greedy_options(&model, &prompts[i..=i], 32, 16, 512, options.clone());
        assert_eq!(&alone[0].0, want, "case {i}, alone");
    }
}

/// Q8_0 kernels against the f32 forward of the same, dequantized weights: on every synthetic
/// golden prompt, the greedy tokens of the quantized model (int8 weights and activations,
/// `vpdpbusd`) and of an f32 model holding the dequantized weights. What separates them is only
/// the activations' quantization and summation order.
#[test]
fn q8_0_greedy_matches_the_dequantized_f32_forward() {
    let Some(shared) = common::shared_dir("q8_0_vs_dequantized") else {
        return;
    };
    let (mut agree, mut total) = (0usize, 0usize);
    for name in ["llama-gqa", "llama-rope-scaled", "qwen2-bias"] {
        let golden = golden_json(&shared, &format!("synthetic_{name}.json"));
        let model = shared.join(format!("models/synthetic/{name}"));
        let prompts: Vec<Vec<u32>> = golden["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| ids(&c["input_ids"]))
            .collect();
        let options = RunnerOptions {
            block_size: 16,
            kv_cache_bytes: 64 << 20,
            ..RunnerOptions::default()
        };
        let run = |dequantize: bool| {
            let mut loaded = load_model_dir(&model, &options).expect("model loads");
            loaded.runner.model.quantize_q8_0();
            if dequantize {
                loaded.runner.model.map_matrices(|w| w.to_f32());
            }
            greedy_with_logits(&mut loaded.runner, &prompts, 32, 512)
        };
        let (quantized, reference) = (run(false), run(true));
        for ((q, _), (r, _)) in quantized.iter().zip(&reference) {
            // Compare up to the first divergence: after it the contexts differ.
            let same = q.iter().zip(r).take_while(|(a, b)| a == b).count();
            agree += same;
            total += same + usize::from(same < r.len());
            println!(
                "{name}: {same}/{} greedy tokens before any divergence",
                r.len()
            );
        }
    }
    let rate = agree as f64 / total as f64;
    assert!(
        rate >= 0.99,
        "Q8_0 vs dequantized f32: {agree}/{total} = {rate:.4}"
    );
}

/// Reduced-precision KV caches against the f32 goldens: at each of the 32 greedy steps of every
/// synthetic case, the model is fed the golden prefix (teacher forcing) and its top-1 token is
/// compared with the golden one. Issue 8 asks for ≥ 99% agreement with int8; the agreement of
/// each dtype is printed (run with `--nocapture`).
#[test]
fn reduced_precision_kv_caches_keep_top1_agreement() {
    let Some(shared) = common::shared_dir("reduced_precision_kv_caches") else {
        return;
    };
    for dtype in [KvCacheDtype::Bf16, KvCacheDtype::F16, KvCacheDtype::Int8] {
        let (mut agree, mut total) = (0usize, 0usize);
        for name in ["llama-gqa", "llama-rope-scaled", "qwen2-bias"] {
            let golden = golden_json(&shared, &format!("synthetic_{name}.json"));
            let model = shared.join(format!("models/synthetic/{name}"));
            let mut prompts = Vec::new();
            let mut wanted = Vec::new();
            for case in golden["cases"].as_array().expect("cases") {
                let (input, greedy) = (ids(&case["input_ids"]), ids(&case["greedy_token_ids"]));
                for step in 0..greedy.len() {
                    prompts.push([&input[..], &greedy[..step]].concat());
                    wanted.push(greedy[step]);
                }
            }
            let options = RunnerOptions {
                kv_cache_dtype: Some(dtype),
                ..RunnerOptions::default()
            };
            let run = run_greedy_options(&model, &prompts, 1, 16, 512, options);
            for ((out, _), want) in run.iter().zip(&wanted) {
                agree += usize::from(out[0] == *want);
                total += 1;
            }
        }
        let rate = agree as f64 / total as f64;
        println!(
            "KV cache {}: top-1 agreement {agree}/{total} = {rate:.4}",
            dtype.name()
        );
        assert!(
            rate >= 0.99,
            "KV cache {}: top-1 agreement {agree}/{total} = {rate:.4} < 0.99",
            dtype.name()
        );
    }
}

#[test]
fn incremental_detokenization_matches_full_decode_across_split_utf8() {
    let Some(shared) = common::shared_dir("incremental_detokenization") else {
        return;
    };
    let tok = Tokenizer::from_dir(&shared.join("models/stories260k")).unwrap();
    let cases = golden_json(&shared, "tokenizer_cases.json");
    let mut saw_split_char = false;
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let all = ids(&case["ids_with_bos"]);
        // Every split point where the "prompt" (first `p` tokens) is whole text, as a prompt that
        // came from text is; the rest arrive one by one.
        for p in 1..all.len() {
            if tok.decode(&all[..p], true).unwrap().ends_with('\u{FFFD}') {
                continue;
            }
            let mut decoder = pagoda_model::IncrementalDecoder::new(&tok, &all[..p], true);
            let mut streamed = String::new();
            for &t in &all[p..] {
                let delta = decoder.step(&tok, t).unwrap();
                saw_split_char |= delta.is_empty();
                streamed.push_str(&delta);
            }
            let full = tok.decode(&all, true).unwrap();
            let prefix = tok.decode(&all[..p], true).unwrap();
            assert_eq!(
                format!("{prefix}{streamed}"),
                full,
                "{text:?} split after {p} tokens"
            );
        }
    }
    assert!(
        saw_split_char,
        "some case should hold back bytes of a split character"
    );
}
