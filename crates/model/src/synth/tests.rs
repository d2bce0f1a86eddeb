//! Tests of the synthetic-model generator: tokenizers of every shape (exact vocab size,
//! round-trips, compression, merge validity), safetensors contents and statistics, the
//! on-disk directory, and determinism.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;

use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::*;

fn load_tokenizer(shape: &Shape) -> (TokenizerFiles, Tokenizer) {
    let files = build_tokenizer(shape).unwrap();
    let tok = Tokenizer::from_str(&files.tokenizer_json).unwrap();
    (files, tok)
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

const SENTENCE: &str = "The people in this country have a lot of time to work on their own \
                        new things, and they should know that the world is still a great place.";

#[test]
fn every_shape_tokenizer_loads_with_exact_vocab_and_special_ids() {
    for shape in SHAPES {
        let (files, tok) = load_tokenizer(shape);
        assert_eq!(tok.get_vocab_size(true), shape.vocab_size, "{}", shape.name);
        assert_eq!(
            tok.get_vocab_size(false),
            shape.vocab_size,
            "{}",
            shape.name
        );
        for &(content, id) in &files.special.all {
            assert_eq!(
                tok.token_to_id(content),
                Some(id),
                "{} {content}",
                shape.name
            );
            assert_eq!(tok.id_to_token(id).as_deref(), Some(content));
        }
        let max_id = tok.get_vocab(true).values().copied().max().unwrap();
        assert_eq!(max_id as usize, shape.vocab_size - 1, "ids are dense");
        // Special tokens in text are recognised as single tokens.
        let text = format!("{}hi", files.special.eos_token);
        assert_eq!(ids(&tok, &text)[0], files.special.eos_token_id);
    }
}

#[test]
fn edge_vocab_sizes_are_exact() {
    for base in ["tiny", "tiny-qwen2"] {
        for vocab_size in [MIN_VOCAB_SIZE, 300, 1000] {
            let shape = Shape {
                vocab_size,
                ..shape(base).unwrap().clone()
            };
            let (_, tok) = load_tokenizer(&shape);
            assert_eq!(tok.get_vocab_size(true), vocab_size, "{base}");
            let text = "héllo wörld 🙂";
            assert_eq!(tok.decode(&ids(&tok, text), true).unwrap(), text);
        }
    }
    let too_small = Shape {
        vocab_size: MIN_VOCAB_SIZE - 1,
        ..shape("tiny").unwrap().clone()
    };
    assert!(matches!(
        build_tokenizer(&too_small),
        Err(SynthError::InvalidShape { .. })
    ));
}

#[test]
fn every_shape_tokenizer_compresses_english_and_round_trips() {
    for shape in SHAPES {
        let (_, tok) = load_tokenizer(shape);
        let n = ids(&tok, SENTENCE).len();
        let ratio = SENTENCE.len() as f64 / n as f64;
        assert!(
            ratio > 2.5,
            "{}: {n} tokens, {ratio:.2} bytes/token",
            shape.name
        );
        for text in [
            SENTENCE,
            "héllo wörld 你好 🙂",
            "  x = f(1, 2);\n\tzzq!?\r\n",
            "",
        ] {
            let encoded = ids(&tok, text);
            assert_eq!(tok.decode(&encoded, true).unwrap(), text, "{}", shape.name);
        }
    }
}

#[test]
fn merges_use_existing_parts_and_create_new_tokens() {
    for name in ["tiny", "qwen2.5-0.5b"] {
        let files = build_tokenizer(shape(name).unwrap()).unwrap();
        let json: Value = serde_json::from_str(&files.tokenizer_json).unwrap();
        let vocab: HashMap<&str, u64> = json["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_u64().unwrap()))
            .collect();
        let merges = json["model"]["merges"].as_array().unwrap();
        assert_eq!(merges.len() + 256 + 3, vocab.len());
        let mut seen = HashSet::new();
        for merge in merges {
            let (a, b) = merge.as_str().unwrap().split_once(' ').unwrap();
            let merged = format!("{a}{b}");
            let id = vocab[merged.as_str()];
            assert!(vocab[a] < id && vocab[b] < id, "{a} {b}");
            assert!(seen.insert(merged), "duplicate merge result");
        }
    }
}

#[test]
fn tokenizer_generation_is_deterministic_and_fast() {
    let shape = shape("qwen2.5-0.5b").unwrap();
    let start = std::time::Instant::now();
    let a = build_tokenizer(shape).unwrap();
    let elapsed = start.elapsed();
    let b = build_tokenizer(shape).unwrap();
    assert_eq!(a.tokenizer_json, b.tokenizer_json);
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");
}

#[test]
fn llama_adds_bos_and_qwen_does_not() {
    let (files, tok) = load_tokenizer(shape("tiny").unwrap());
    let with = tok.encode("hello", true).unwrap().get_ids().to_vec();
    assert_eq!(with[0], files.special.bos_token_id);
    assert_eq!(&with[1..], &ids(&tok, "hello")[..]);
    let cfg: Value = serde_json::from_str(&files.tokenizer_config_json).unwrap();
    assert_eq!(cfg["add_bos_token"], true);
    assert_eq!(cfg["bos_token"], "<s>");
    assert_eq!(cfg["eos_token"], "</s>");

    let (files, tok) = load_tokenizer(shape("tiny-qwen2").unwrap());
    assert_eq!(
        tok.encode("hello", true).unwrap().get_ids(),
        &ids(&tok, "hello")[..]
    );
    let cfg: Value = serde_json::from_str(&files.tokenizer_config_json).unwrap();
    assert_eq!(cfg["add_bos_token"], false);
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["model_max_length"], 4096);
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(files.special.eos_token_id, 2047);
    assert_eq!(files.special.bos_token_id, 2045);
}

fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::Bf16 => StDtype::BF16,
    }
}

fn values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match view.dtype() {
        StDtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StDtype::BF16 => view
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Checks names, shapes, dtypes and value statistics of a generated checkpoint.
fn check_checkpoint(shape: &Shape, dtype: DType, bytes: &[u8]) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (header_len, meta) = SafeTensors::read_metadata(bytes).unwrap();
    assert_eq!(header_len % 8, 0);
    let format = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(format.as_deref(), Some("pt"));

    let (h, d) = (shape.hidden_size, shape.head_dim());
    let (q, kv) = (shape.num_attention_heads * d, shape.num_key_value_heads * d);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![shape.vocab_size, h],
        ),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !shape.tie_word_embeddings {
        expected.push(("lm_head.weight".into(), vec![shape.vocab_size, h]));
    }
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let i = shape.intermediate_size;
        for (name, dims) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            expected.push((format!("{p}.{name}"), dims));
        }
        if shape.attention_bias {
            expected.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            expected.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            expected.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
    }
    assert_eq!(st.len(), expected.len(), "no extra tensors");
    for (name, dims) in &expected {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.shape(), &dims[..], "{name}");
        assert_eq!(view.dtype(), st_dtype(dtype), "{name}");
        let vals = values(&view);
        if name.contains("norm") {
            assert!(vals.iter().all(|&v| v == 1.0), "{name} not all ones");
        } else {
            let n = vals.len() as f64;
            let mean = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = vals
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            // Five standard errors (plus bf16 rounding slack for the std).
            let mean_tol = 5.0 * 0.02 / n.sqrt();
            let std_tol = 5.0 * 0.02 / (2.0 * n).sqrt() + 0.0005;
            assert!(mean.abs() < mean_tol, "{name} mean {mean}");
            assert!(
                (var.sqrt() - 0.02).abs() < std_tol,
                "{name} std {}",
                var.sqrt()
            );
            assert!(vals.iter().all(|v| v.abs() < 0.1));
        }
    }
}

#[test]
fn in_memory_checkpoints_have_hf_tensors_and_statistics() {
    for (name, dtype) in [
        ("tiny", DType::F32),
        ("tiny", DType::Bf16),
        ("tiny-qwen2", DType::Bf16),
    ] {
        let shape = shape(name).unwrap();
        let (model, bytes) = build_in_memory(shape, dtype, 7).unwrap();
        check_checkpoint(shape, dtype, &bytes);
        let config: Value = serde_json::from_str(&model.config_json).unwrap();
        assert_eq!(config["torch_dtype"], dtype.torch_name());
        assert_eq!(config["vocab_size"], shape.vocab_size);
        assert_eq!(config["head_dim"], shape.head_dim());
        assert_eq!(config["tie_word_embeddings"], shape.tie_word_embeddings);
        assert_eq!(config["architectures"][0], shape.architecture);
        assert!(config["rope_scaling"].is_null());
    }
}

#[test]
fn same_seed_same_bytes_regardless_of_threads() {
    let shape = shape("tiny").unwrap();
    let (_, a) = build_in_memory(shape, DType::Bf16, 42).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (_, b) = pool
        .install(|| build_in_memory(shape, DType::Bf16, 42))
        .unwrap();
    assert_eq!(a, b);
    let (_, c) = build_in_memory(shape, DType::Bf16, 43).unwrap();
    assert_ne!(a, c);
    assert_eq!(a.len(), c.len());
}

#[test]
fn streaming_in_small_batches_matches_in_memory() {
    let shape = shape("tiny-qwen2").unwrap();
    for dtype in [DType::F32, DType::Bf16] {
        let layout = weights::layout(shape, dtype).unwrap();
        let mut memory = vec![0u8; layout.data_len];
        weights::fill_data(&layout, dtype, 5, &mut memory);
        for batch in [1, 300_000] {
            let mut streamed = Vec::new();
            weights::stream_data(&layout, dtype, 5, &mut streamed, batch).unwrap();
            assert_eq!(streamed, memory);
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn write_model_dir_matches_in_memory() {
    let dir = TempDir(std::env::temp_dir().join(format!("pagoda-synth-{}", std::process::id())));
    let out = dir.0.join("nested/tiny");
    let shape = shape("tiny").unwrap();
    write_model_dir(shape, DType::Bf16, 3, &out).unwrap();
    let (model, bytes) = build_in_memory(shape, DType::Bf16, 3).unwrap();
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), bytes);
    assert!(!out.join("model.safetensors.tmp").exists());
    for (file, text) in [
        ("config.json", &model.config_json),
        ("generation_config.json", &model.generation_config_json),
        ("tokenizer.json", &model.tokenizer_json),
        ("tokenizer_config.json", &model.tokenizer_config_json),
    ] {
        let on_disk = std::fs::read_to_string(out.join(file)).unwrap();
        assert_eq!(&on_disk, text, "{file}");
        let _: Value = serde_json::from_str(&on_disk).unwrap();
    }
    let config: Value = serde_json::from_str(&model.config_json).unwrap();
    let generation: Value = serde_json::from_str(&model.generation_config_json).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(config["initializer_range"], 0.02);
    assert_eq!(generation["bos_token_id"], 1);
    assert_eq!(generation["eos_token_id"], 2);
    Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
}

#[test]
fn qwen_config_has_qwen_fields() {
    let shape = shape("qwen2.5-0.5b").unwrap();
    let model = SynthModel::new(shape, DType::Bf16).unwrap();
    let config: Value = serde_json::from_str(&model.config_json).unwrap();
    assert_eq!(config["model_type"], "qwen2");
    assert_eq!(config["rope_theta"], 1_000_000.0);
    assert_eq!(config["rms_norm_eps"], 1e-6);
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["eos_token_id"], 151_935);
    assert_eq!(config["bos_token_id"], 151_933);
    let generation: Value = serde_json::from_str(&model.generation_config_json).unwrap();
    assert_eq!(generation["eos_token_id"], 151_935);
    // Tensor list of the big shapes (without generating them).
    let specs = tensor_specs(shape);
    assert_eq!(specs.len(), 1 + 24 * 12 + 1);
    let params: usize = specs.iter().map(TensorSpec::numel).sum();
    assert!((490_000_000..500_000_000).contains(&params), "{params}");
    let specs = tensor_specs(super::shape("tinyllama-1.1b").unwrap());
    let params: usize = specs.iter().map(TensorSpec::numel).sum();
    assert!((1_090_000_000..1_110_000_000).contains(&params), "{params}");
    assert_eq!(specs.last().unwrap().name, "lm_head.weight");
}

#[test]
fn dtype_parses() {
    assert_eq!(DType::from_str("f32").unwrap(), DType::F32);
    assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
    assert_eq!("BFloat16".parse::<DType>().unwrap(), DType::Bf16);
    assert!("f16".parse::<DType>().is_err());
    assert_eq!(DType::Bf16.to_string(), "bf16");
}
