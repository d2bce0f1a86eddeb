//! Reader/writer round trips and malformed files: every corruption must be an error naming the
//! file and the problem, never a panic.

use super::config::model_config;
use super::reader::{GgufFile, MetaValue};
use super::source::GgufSource;
use super::types::GgmlType;
use super::writer::GgufWriter;
use crate::error::ModelError;
use crate::weights::{WeightDtype, WeightSource};

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A small valid file: metadata of every type and two tensors.
fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", MetaValue::String("llama".into()));
    w.add("u8", MetaValue::U8(7));
    w.add("i8", MetaValue::I8(-7));
    w.add("u16", MetaValue::U16(700));
    w.add("i16", MetaValue::I16(-700));
    w.add("u32", MetaValue::U32(70_000));
    w.add("i32", MetaValue::I32(-70_000));
    w.add("f32", MetaValue::F32(0.5));
    w.add("bool", MetaValue::Bool(true));
    w.add("u64", MetaValue::U64(1 << 40));
    w.add("i64", MetaValue::I64(-(1 << 40)));
    w.add("f64", MetaValue::F64(0.25));
    w.add(
        "nested",
        MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::String("a".into())]),
            MetaValue::Array(vec![]),
        ]),
    );
    w.add_tensor("vec", vec![3], GgmlType::F32, || {
        Ok(f32_bytes(&[1.0, 2.0, 3.0]))
    })
    .unwrap();
    w.add_tensor("mat", vec![32, 2], GgmlType::Q8_0, || {
        let mut out = Vec::new();
        let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
        super::quants::quantize(GgmlType::Q8_0, &values, &mut out).unwrap();
        Ok(out)
    })
    .unwrap();
    w.to_bytes().unwrap()
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::from_bytes("test.gguf", bytes)
}

fn err(bytes: Vec<u8>) -> String {
    match parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("test.gguf"), "the file is named: {text}");
            text
        }
    }
}

/// Byte offset of the tensor info of `name` (just after its name).
fn info_offset(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name in file");
    at + needle.len()
}

#[test]
fn every_value_type_round_trips() {
    let f = parse(sample()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.metadata("u8"), Some(&MetaValue::U8(7)));
    assert_eq!(f.get_u64("u32").unwrap(), Some(70_000));
    assert_eq!(f.get_u64("u64").unwrap(), Some(1 << 40));
    assert_eq!(
        f.metadata("i64").and_then(MetaValue::as_i64),
        Some(-(1 << 40))
    );
    assert_eq!(f.get_f64("f32").unwrap(), Some(0.5));
    assert_eq!(f.get_f64("f64").unwrap(), Some(0.25));
    assert_eq!(f.get_bool("bool").unwrap(), Some(true));
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
    let nested = f.get_array("nested").unwrap().unwrap();
    assert_eq!(nested[0].as_array().unwrap()[0].as_str(), Some("a"));
    assert_eq!(f.metadata_entries().len(), 13);
    // Type errors name the key; negative values are not u64.
    let e = f.get_u64("general.architecture").unwrap_err().to_string();
    assert!(
        e.contains("general.architecture") && e.contains("integer"),
        "{e}"
    );
    assert!(f.get_u64("i8").is_err());

    let vec = f.tensor_info("vec").unwrap();
    assert_eq!(
        (vec.dims.as_slice(), vec.ty, vec.n_bytes),
        (&[3][..], GgmlType::F32, 12)
    );
    assert_eq!(f.tensor_bytes(vec).unwrap(), f32_bytes(&[1.0, 2.0, 3.0]));
    let mat = f.tensor_info("mat").unwrap();
    assert_eq!((mat.offset, mat.n_bytes), (32, 68));
}

#[test]
fn header_errors_say_what_is_wrong() {
    assert!(err(vec![]).contains("too short"));
    assert!(err(b"GGU".to_vec()).contains("too short"));
    let mut bad_magic = sample();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert!(err(bad_magic).contains("bad magic"));
    for (version, want) in [
        (1u32, "version 1 is not supported"),
        (3u32.swap_bytes(), "big-endian"),
        (9, "unknown GGUF version 9"),
    ] {
        let mut b = sample();
        b[4..8].copy_from_slice(&version.to_le_bytes());
        let e = err(b);
        assert!(e.contains(want), "{e}");
    }
    // A tensor count far beyond the file is refused before anything is allocated.
    let mut b = sample();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(b).contains("tensor count"));
}

#[test]
fn every_truncation_is_an_error_and_never_a_panic() {
    let full = sample();
    let data_end = {
        let f = parse(full.clone()).unwrap();
        let mat = f.tensor_info("mat").unwrap();
        full.len() - (32 - mat.n_bytes % 32) % 32
    };
    for len in 0..data_end {
        let e = err(full[..len].to_vec());
        assert!(
            ["truncated", "too short", "outside", "larger than the rest"]
                .iter()
                .any(|w| e.contains(w)),
            "{len}: {e}"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let full = sample();
    let mut state = 0x1234_5678_u64;
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..3 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % b.len();
            b[at] = (state >> 13) as u8;
        }
        let _ = parse(b);
    }
}

#[test]
fn bad_tensor_infos_are_errors() {
    let full = sample();
    let at = info_offset(&full, "mat");
    // n_dims(4) dims(2×8) type(4) offset(8)
    let (type_at, offset_at) = (at + 4 + 16, at + 4 + 16 + 4);
    let patch = |pos: usize, bytes: &[u8]| {
        let mut b = full.clone();
        b[pos..pos + bytes.len()].copy_from_slice(bytes);
        err(b)
    };
    let e = patch(offset_at, &7u64.to_le_bytes());
    assert!(e.contains("not a multiple of the alignment"), "{e}");
    let e = patch(offset_at, &(1u64 << 20).to_le_bytes());
    assert!(e.contains("mat") && e.contains("outside the file"), "{e}");
    let e = patch(type_at, &77u32.to_le_bytes());
    assert!(e.contains("unknown ggml type id 77"), "{e}");
    let e = patch(at, &9u32.to_le_bytes());
    assert!(e.contains("9 dimensions"), "{e}");
    // 32 values of Q4_K do not fill a 256-value block.
    let e = patch(type_at, &12u32.to_le_bytes());
    assert!(e.contains("Q4_K"), "{e}");
    let e = patch(at + 4, &u64::MAX.to_le_bytes());
    assert!(e.contains("mat"), "{e}");
}

#[test]
fn bad_metadata_is_an_error() {
    let full = sample();
    let pos = full.windows(4).position(|w| w == b"bool").unwrap() + 4;
    let mut b = full.clone();
    b[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(err(b).contains("unknown value type 99"));
    let mut b = full.clone();
    b[pos + 4] = 2;
    assert!(err(b).contains("bool"));
    let mut b = full.clone();
    b[pos - 1] = 0xFF;
    assert!(err(b).contains("UTF-8"));
    // general.alignment must be a power of two.
    let mut w = GgufWriter::new();
    w.add("general.alignment", MetaValue::U32(48));
    assert!(err(w.to_bytes().unwrap()).contains("alignment"));
}

#[test]
fn custom_alignment_is_honoured() {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    string(&mut b, "general.alignment");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&64u32.to_le_bytes());
    string(&mut b, "t");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(b.len().div_ceil(64) * 64, 0);
    b.extend_from_slice(&f32_bytes(&[4.0, 5.0]));
    let f = parse(b).unwrap();
    assert_eq!((f.version, f.alignment), (2, 64));
    let t = f.tensor_info("t").unwrap();
    assert_eq!(f.tensor_bytes(t).unwrap(), f32_bytes(&[4.0, 5.0]));
}

/// A one-layer llama header: enough metadata for [`model_config`].
fn llama_metadata(w: &mut GgufWriter<'_>) {
    w.add("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in [
        ("llama.block_count", 1u32),
        ("llama.embedding_length", 32),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 128),
    ] {
        w.add(k, MetaValue::U32(v));
    }
    w.add(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    );
    w.add("llama.vocab_size", MetaValue::U32(16));
}

#[test]
fn config_comes_from_metadata_and_missing_keys_are_named() {
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    let f = parse(w.to_bytes().unwrap()).unwrap();
    let c = model_config(&f).unwrap();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (1, 32, 4, 2, 8)
    );
    assert_eq!(
        (c.vocab_size, c.max_context_len, c.rope_theta),
        (16, 128, 10_000.0)
    );
    assert!(c.tie_word_embeddings && !c.qkv_bias && c.rope_scaling.is_none());

    let mut w = GgufWriter::new();
    w.add("general.architecture", MetaValue::String("llama".into()));
    let e = model_config(&parse(w.to_bytes().unwrap()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama.block_count"), "{e}");
    let mut w = GgufWriter::new();
    w.add("general.architecture", MetaValue::String("mamba".into()));
    let e = model_config(&parse(w.to_bytes().unwrap()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"mamba\"") && e.contains("llama, qwen2"), "{e}");
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    w.add("llama.rope.scaling.type", MetaValue::String("yarn".into()));
    let e = model_config(&parse(w.to_bytes().unwrap()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("yarn"), "{e}");
}

#[test]
fn unsupported_tensor_types_are_named_when_used() {
    let mut w = GgufWriter::new();
    llama_metadata(&mut w);
    w.add_tensor("token_embd.weight", vec![256, 16], GgmlType::Iq2Xxs, || {
        Ok(vec![0; 16 * 66])
    })
    .unwrap();
    let f = parse(w.to_bytes().unwrap()).unwrap();
    let mut config = model_config(&f).unwrap();
    config.hidden_size = 256;
    let source = GgufSource::new(f, &config);
    assert!(source.contains("model.embed_tokens.weight"));
    assert_eq!(
        source.stored_dtype("model.embed_tokens.weight").unwrap(),
        WeightDtype::Bf16
    );
    let e = source
        .linear("model.embed_tokens.weight", 16, 256, WeightDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor token_embd.weight has type IQ2_XXS, which pagoda does not support")
            && e.contains("Q8_0")
            && e.contains("test.gguf"),
        "{e}"
    );
    let e = source
        .linear("model.embed_tokens.weight", 16, 32, WeightDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape"), "{e}");
    let e = source
        .vector_f32("model.norm.weight", &[32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("output_norm.weight"), "{e}");
    // Raw bytes stay reachable for kernels that read blocks directly.
    let raw = source.raw_tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(
        (raw.ty, raw.rows, raw.cols, raw.bytes.len()),
        (GgmlType::Iq2Xxs, 16, 256, 16 * 66)
    );
}
