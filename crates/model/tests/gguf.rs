//! GGUF end to end against the transformers goldens (`../shared/golden`): Hugging Face models
//! converted with pagoda's llama.cpp-convention writer, loaded back through the GGUF reader
//! (metadata config, tokenizer, dequantized and un-permuted weights).

mod common;

use std::path::{Path, PathBuf};

use pagoda_model::gguf::convert::convert_to_gguf;
use pagoda_model::gguf::writer::GgufWriter;
use pagoda_model::gguf::{GgmlType, GgufFile, MetaValue};
use pagoda_model::ops::gemm::WeightKind;
use pagoda_model::test_support::{golden_json, greedy_with_logits, token_ids as ids};
use pagoda_model::weights::{TensorSource, WeightData, WeightDtype};
use pagoda_model::{load_model_dir, LoadedModel, RunnerOptions, Tokenizer};

/// A converted file in the temp directory, removed when dropped.
struct TempGguf(PathBuf);

impl TempGguf {
    fn convert(model: &Path, ty: GgmlType, tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pagoda-test-{tag}-{}-{}.gguf",
            ty.name(),
            std::process::id()
        ));
        convert_to_gguf(model, &path, ty).expect("conversion succeeds");
        Self(path)
    }
}

impl Drop for TempGguf {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

fn load(path: &Path, dtype: Option<WeightDtype>) -> LoadedModel {
    let options = RunnerOptions {
        kv_cache_bytes: 64 << 20,
        dtype,
        ..RunnerOptions::default()
    };
    load_model_dir(path, &options).expect("model loads")
}

#[test]
fn stories260k_f32_gguf_matches_goldens_and_tokenizer_cases() {
    let Some(shared) = common::shared_dir("stories260k_f32_gguf_matches_goldens") else {
        return;
    };
    let model = shared.join("models/stories260k");
    let file = TempGguf::convert(&model, GgmlType::F32, "stories");
    let mut loaded = load(&file.0, None);
    assert_eq!(
        loaded.runner.model.dtype,
        WeightDtype::F32,
        "auto keeps F32 files in f32"
    );
    let c = loaded.runner.config();
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.as_slice()),
        (Some(1), &[2][..])
    );
    assert!(c.tie_word_embeddings);

    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_token_ids"])).collect();
    for (i, (out, _)) in greedy_with_logits(&mut loaded.runner, &prompts, 64, 512)
        .iter()
        .enumerate()
    {
        assert_eq!(
            out,
            &ids(&cases[i]["greedy_token_ids"]),
            "case {i}: greedy ids"
        );
        let text = loaded
            .tokenizer
            .decode(&[prompts[i].clone(), out.clone()].concat(), true)
            .unwrap();
        assert_eq!(text, cases[i]["text"].as_str().unwrap(), "case {i}: text");
    }

    // The tokenizer rebuilt from GGUF metadata (tokens, scores, types; merges derived) agrees
    // with tokenizer.json on every case.
    let tok = &loaded.tokenizer;
    let reference = Tokenizer::from_dir(&model).unwrap();
    assert_eq!(tok.vocab_size(), reference.vocab_size());
    assert_eq!(
        (tok.bos_token.as_deref(), tok.eos_token.as_deref()),
        (Some("<s>"), Some("</s>"))
    );
    let cases = golden_json(&shared, "tokenizer_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
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
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

/// The tokenizer as llama.cpp's converter writes a tokenizer.json-only Llama
/// (`_set_vocab_llama_hf`): every score -1000, `<unk>` a CONTROL token, `tokenizer.ggml.pre =
/// default`, no `add_space_prefix`. Merges then come from token ids alone and must still give
/// tokenizer.json's ids.
#[test]
fn stories260k_tokenizer_as_llama_cpp_writes_it() {
    let Some(shared) = common::shared_dir("stories260k_tokenizer_as_llama_cpp_writes_it") else {
        return;
    };
    let ours = TempGguf::convert(&shared.join("models/stories260k"), GgmlType::F32, "spm");
    let file = GgufFile::open(&ours.0).unwrap();
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata_entries() {
        let value = match key.as_str() {
            "tokenizer.ggml.add_space_prefix" => continue,
            "tokenizer.ggml.scores" => MetaValue::Array(vec![
                MetaValue::F32(-1000.0);
                value.as_array().unwrap().len()
            ]),
            "tokenizer.ggml.token_type" => MetaValue::Array(
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| match t.as_i64() {
                        Some(2) => MetaValue::I32(3),
                        _ => t.clone(),
                    })
                    .collect(),
            ),
            _ => value.clone(),
        };
        writer.add(key, value);
    }
    writer.add("tokenizer.ggml.pre", MetaValue::String("default".into()));
    for t in file.tensors() {
        let bytes = file.tensor_bytes(t).unwrap().to_vec();
        writer
            .add_tensor(&t.name, t.dims.clone(), t.ty, move || Ok(bytes))
            .unwrap();
    }
    let theirs = TempGguf(ours.0.with_extension("llamacpp.gguf"));
    writer.write_file(&theirs.0).unwrap();

    let mut loaded = load(&theirs.0, None);
    let cases = golden_json(&shared, "tokenizer_cases.json");
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let tok = &loaded.tokenizer;
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids_with_bos"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let case = &golden["cases"][1];
    let prompt = loaded
        .tokenizer
        .encode(case["prompt"].as_str().unwrap(), true)
        .unwrap();
    assert_eq!(prompt, ids(&case["prompt_token_ids"]));
    let run = greedy_with_logits(&mut loaded.runner, &[prompt], 64, 512);
    assert_eq!(run[0].0, ids(&case["greedy_token_ids"]));
}

#[test]
fn stories260k_q8_0_gguf_matches_the_first_32_greedy_tokens() {
    let Some(shared) = common::shared_dir("stories260k_q8_0_gguf") else {
        return;
    };
    let file = TempGguf::convert(
        &shared.join("models/stories260k"),
        GgmlType::Q8_0,
        "stories",
    );
    let gguf = GgufFile::open(&file.0).unwrap();
    assert_eq!(
        gguf.tensor_info("blk.0.attn_q.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    // 172-wide rows do not fill 32-value blocks: F16, as llama.cpp's converter does.
    assert_eq!(
        gguf.tensor_info("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::F16
    );
    drop(gguf);
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let cases = golden["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_token_ids"])).collect();
    // Dequantized to f32, and to bf16 (what `auto` picks for a quantized file).
    for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
        let mut loaded = load(&file.0, Some(dtype));
        for (i, (out, _)) in greedy_with_logits(&mut loaded.runner, &prompts, 32, 512)
            .iter()
            .enumerate()
        {
            let want = &ids(&cases[i]["greedy_token_ids"])[..32];
            assert_eq!(
                out.as_slice(),
                want,
                "case {i} ({}): first 32 greedy ids",
                dtype.name()
            );
        }
    }
}

fn check_synthetic(name: &str) {
    let Some(shared) = common::shared_dir(&format!("synthetic_{name}_f32_gguf")) else {
        return;
    };
    let golden = golden_json(&shared, &format!("synthetic_{name}.json"));
    let cases = golden["cases"].as_array().unwrap();
    let file = TempGguf::convert(
        &shared.join(format!("models/synthetic/{name}")),
        GgmlType::F32,
        name,
    );
    let mut loaded = load(&file.0, None);
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["input_ids"])).collect();
    for (i, (out, logits)) in greedy_with_logits(&mut loaded.runner, &prompts, 32, 512)
        .iter()
        .enumerate()
    {
        let what = format!("{name} case {i} (len {})", prompts[i].len());
        let want: Vec<f64> = cases[i]["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        common::assert_logits_close(&logits[0], &want, 1e-4, &format!("{what}: last_logits"));
        assert_eq!(
            out,
            &ids(&cases[i]["greedy_token_ids"]),
            "{what}: greedy ids"
        );
    }
}

#[test]
fn synthetic_llama_gqa_f32_gguf() {
    check_synthetic("llama-gqa");
}

#[test]
fn synthetic_llama_rope_scaled_f32_gguf() {
    check_synthetic("llama-rope-scaled");
}

#[test]
fn synthetic_qwen2_bias_f32_gguf() {
    check_synthetic("qwen2-bias");
}

/// The writer stores q/k the way llama.cpp's converter does (`LlamaModel.permute`): stored row
/// `h·d + 2i + s` is Hugging Face row `h·d + s·d/2 + i`. Checked on the file's raw bytes, so the
/// reader's un-permutation is tested against the convention and not only against itself.
#[test]
fn llama_q_and_k_rows_are_stored_permuted_as_llama_cpp_does() {
    let Some(shared) = common::shared_dir("llama_q_and_k_rows_are_stored_permuted") else {
        return;
    };
    let model = shared.join("models/synthetic/llama-gqa");
    let file = TempGguf::convert(&model, GgmlType::F32, "permute");
    let gguf = GgufFile::open(&file.0).unwrap();
    let hf = TensorSource::open_dir(&model).unwrap();
    let (hidden, head_dim) = (128, 16);
    for (name, gguf_name, heads) in [
        (
            "model.layers.1.self_attn.q_proj.weight",
            "blk.1.attn_q.weight",
            8,
        ),
        (
            "model.layers.1.self_attn.k_proj.weight",
            "blk.1.attn_k.weight",
            2,
        ),
        (
            "model.layers.1.self_attn.v_proj.weight",
            "blk.1.attn_v.weight",
            2,
        ),
    ] {
        let rows = heads * head_dim;
        let WeightData::F32(want) = hf
            .linear(name, rows, hidden, WeightDtype::F32)
            .unwrap()
            .data
        else {
            unreachable!()
        };
        let info = gguf.tensor_info(gguf_name).unwrap();
        let stored: Vec<f32> = gguf
            .tensor_bytes(info)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let permuted = !name.contains("v_proj");
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..head_dim / 2 {
                    let stored_row = h * head_dim + 2 * i + s;
                    let hf_row = if permuted {
                        h * head_dim + s * head_dim / 2 + i
                    } else {
                        stored_row
                    };
                    assert_eq!(
                        &stored[stored_row * hidden..(stored_row + 1) * hidden],
                        &want[hf_row * hidden..(hf_row + 1) * hidden],
                        "{gguf_name} row {stored_row}"
                    );
                }
            }
        }
    }
}

/// A random-weight Llama whose matrices fill whole Q4_K super-blocks (the shared synthetic
/// models' 128-wide ones do not), written to a temp directory that is removed when dropped.
struct TempModelDir(PathBuf);

impl TempModelDir {
    fn q4_k_friendly(tag: &str) -> Self {
        use pagoda_model::synth::{self, DType, Shape};
        let shape = Shape {
            name: "q4k-test",
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            ..synth::shape("tiny").expect("a built-in shape").clone()
        };
        let dir = std::env::temp_dir().join(format!("pagoda-test-{tag}-{}", std::process::id()));
        synth::write_model_dir(&shape, DType::F32, 7, &dir).expect("model written");
        Self(dir)
    }
}

impl Drop for TempModelDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Relative RMS difference of two logit rows, and whether their top-1 tokens agree.
fn logit_gap(a: &[f32], b: &[f32]) -> (f64, bool) {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &x)| if x > m.1 { (i, x) } else { m },
            )
            .0
    };
    ((diff / norm).sqrt(), argmax(a) == argmax(b))
}

/// Over two runs of the same prompts, the worst [`logit_gap`] of the first step (the same
/// context in both) and how many prompts' top-1 tokens agree there.
fn first_step_gaps(
    a: &[(Vec<u32>, Vec<Vec<f32>>)],
    b: &[(Vec<u32>, Vec<Vec<f32>>)],
) -> (f64, usize) {
    a.iter().zip(b).fold((0f64, 0), |(worst, agree), (x, y)| {
        let (gap, same) = logit_gap(&x.1[0], &y.1[0]);
        (worst.max(gap), agree + usize::from(same))
    })
}

/// Q4_K end to end: the model converted to a Q4_K GGUF runs on the Q4_K kernels (nibbles through
/// `vpdpbusd`, activations quantized per 32) when loaded as stored; its logits stay near those of
/// the same file dequantized to f32 (what separates them is the activations' quantization), and
/// `--quantization q4_k` on the safetensors directory gives the same weights as the file.
#[test]
fn q4_k_gguf_runs_on_the_q4_k_kernels_near_the_dequantized_forward() {
    let dir = TempModelDir::q4_k_friendly("q4k-model");
    let gguf = TempGguf::convert(&dir.0, GgmlType::Q4K, "q4k");
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| (0..24).map(|t| 3 + (t * 7 + i * 13) % 250).collect())
        .collect();
    let mut native = load(&gguf.0, None);
    assert_eq!(native.runner.model.weight_kind(), WeightKind::Q4K);
    let mut dequantized = load(&gguf.0, Some(WeightDtype::F32));
    assert_eq!(dequantized.runner.model.weight_kind(), WeightKind::F32);
    let mut from_dir = load_model_dir(
        &dir.0,
        &RunnerOptions {
            kv_cache_bytes: 64 << 20,
            quantization: Some(pagoda_model::Quantization::Q4K),
            ..RunnerOptions::default()
        },
    )
    .expect("model loads");
    let runs = [&mut native, &mut dequantized, &mut from_dir]
        .map(|m| greedy_with_logits(&mut m.runner, &prompts, 8, 512));
    let (worst, agree) = first_step_gaps(&runs[0], &runs[1]);
    let total = prompts.len();
    for (q, d) in runs[0].iter().zip(&runs[2]) {
        // Quantizing the f32 weights here gives the bytes the converter wrote: same numbers.
        assert_eq!(q.0, d.0, "q4_k GGUF vs --quantization q4_k");
        assert_eq!(q.1, d.1);
    }
    println!("q4_k vs dequantized f32: worst relative logit gap {worst:.4}, top-1 {agree}/{total}");
    assert!(worst < 0.05, "relative logit gap {worst}");
    assert_eq!(agree, total);
}

/// The model converted to a `ty` GGUF loads (as stored) with weights of `kind`, and its
/// first-step logits stay near those of the same file dequantized to f32 (within 5% relative
/// RMS, top-1 equal on every prompt); returns the worst gap.
fn quantized_gguf_near_the_dequantized_forward(ty: GgmlType, kind: WeightKind, tag: &str) -> f64 {
    let dir = TempModelDir::q4_k_friendly(&format!("{tag}-model"));
    let gguf = TempGguf::convert(&dir.0, ty, tag);
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| (0..24).map(|t| 3 + (t * 11 + i * 17) % 250).collect())
        .collect();
    let mut native = load(&gguf.0, None);
    assert_eq!(native.runner.model.weight_kind(), kind);
    let mut dequantized = load(&gguf.0, Some(WeightDtype::F32));
    let runs = [&mut native, &mut dequantized]
        .map(|m| greedy_with_logits(&mut m.runner, &prompts, 4, 512));
    let (worst, agree) = first_step_gaps(&runs[0], &runs[1]);
    assert_eq!(agree, prompts.len(), "{ty}: top-1 differs");
    println!("{ty} as {kind:?} vs dequantized f32: worst relative logit gap {worst:.4}");
    assert!(worst < 0.05, "{ty}: relative logit gap {worst}");
    worst
}

/// Quantized types without kernels of their own (here Q4_0; also Q4_1, Q5_0, Q5_1) are
/// requantized to Q8_0 at load: the file runs on the Q8_0 kernels.
#[test]
fn q4_0_gguf_runs_on_the_q8_0_kernels_near_the_dequantized_forward() {
    quantized_gguf_near_the_dequantized_forward(GgmlType::Q4_0, WeightKind::Q8_0, "q40");
}

/// Q6_K (as a Q4_K_M file keeps its output and some `ffn_down` matrices) runs on the Q6_K
/// kernels as stored.
#[test]
fn q6_k_gguf_runs_on_the_q6_k_kernels_near_the_dequantized_forward() {
    quantized_gguf_near_the_dequantized_forward(GgmlType::Q6K, WeightKind::Q6K, "q6k");
}
