//! `pagoda convert-gguf` then `pagoda generate` / `pagoda serve --model file.gguf`: the GGUF file
//! gives the same text as the Hugging Face directory it came from.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pagoda_model::test_support::{golden_json, shared_dir};

fn pagoda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pagoda"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("pagoda starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pagoda-gguf-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn convert(model: &Path, out: &Path, ty: &str) -> String {
    let out = run_ok(
        pagoda()
            .args(["convert-gguf", "--type", ty, "--model"])
            .arg(model)
            .arg("--out")
            .arg(out),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pagoda generate` greedy output (stdout) for `prompt`.
fn generate(model: &Path, prompt: &str, max_tokens: &str, extra: &[&str]) -> String {
    let out = run_ok(
        pagoda()
            .args(["generate", "--model"])
            .arg(model)
            .args([
                "--prompt",
                prompt,
                "--max-tokens",
                max_tokens,
                "--ignore-eos",
            ])
            .args(extra),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn stories260k_gguf_generates_the_same_text_as_the_hf_directory() {
    let Some(shared) = shared_dir("stories260k_gguf_generates_the_same_text") else {
        return;
    };
    let scratch = Scratch::new("stories");
    let model = shared.join("models/stories260k");
    let golden = golden_json(&shared, "stories260k_greedy.json");
    let case = &golden["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();

    let f32_file = scratch.0.join("stories-f32.gguf");
    convert(&model, &f32_file, "f32");
    let hf_text = generate(&model, prompt, "64", &[]);
    assert_eq!(
        hf_text.trim_end_matches('\n'),
        case["completion_text"].as_str().unwrap()
    );
    assert_eq!(generate(&f32_file, prompt, "64", &[]), hf_text);

    // Q8_0 (with F16 for the 172-wide down projections): the first 32 tokens, in f32 and with
    // auto (bf16).
    let q8_file = scratch.0.join("stories-q8_0.gguf");
    let log = convert(&model, &q8_file, "q8_0");
    assert!(log.contains("F16") && log.contains("ffn_down"), "{log}");
    let hf_32 = generate(&model, prompt, "32", &[]);
    assert_eq!(generate(&q8_file, prompt, "32", &["--dtype", "f32"]), hf_32);
    assert_eq!(generate(&q8_file, prompt, "32", &[]), hf_32);
}

/// pagoda's synthetic models have byte-level BPE tokenizers: GGUF `gpt2` with merges. The Llama
/// shape adds BOS and uses a Zephyr chat template; the Qwen2 shape adds no BOS, has biases, an
/// untied head and ChatML.
#[test]
fn synthetic_models_round_trip_through_gguf_gpt2_tokenizers() {
    let scratch = Scratch::new("synth");
    let prompt = "Hello world! 12345 tokens,  spaces\tand ünïcode 日本 — ok?";
    for shape in ["tiny", "tiny-qwen2"] {
        let dir = scratch.0.join(shape);
        run_ok(
            pagoda()
                .args(["synth-model", "--shape", shape, "--dtype", "f32", "--out"])
                .arg(&dir),
        );
        let file = scratch.0.join(format!("{shape}.gguf"));
        convert(&dir, &file, "f32");
        let hf = generate(&dir, prompt, "24", &[]);
        assert!(!hf.trim().is_empty(), "{shape}");
        assert_eq!(generate(&file, prompt, "24", &[]), hf, "{shape}");

        // Served: the chat template and EOS come from the GGUF metadata.
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "Hi there, 42?"}],
                       "max_tokens": 16, "temperature": 0}"#;
        let answer = |model: &Path| {
            let server = support::ServerProcess::start(&[
                "--model",
                model.to_str().unwrap(),
                "--served-model-name",
                "m",
            ]);
            let (status, text) = server.post("/v1/chat/completions", body);
            assert_eq!(status, 200, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            (
                v["choices"][0]["message"]["content"].clone(),
                v["usage"]["prompt_tokens"].clone(),
            )
        };
        assert_eq!(answer(&file), answer(&dir), "{shape}: chat completion");
    }
}

#[test]
fn bad_gguf_files_fail_with_a_clear_message() {
    let scratch = Scratch::new("bad");
    let file = scratch.0.join("truncated.gguf");
    std::fs::write(&file, b"GGUF\x03\x00\x00\x00\x01").unwrap();
    let out = pagoda()
        .args(["generate", "--max-tokens", "2", "--model"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("truncated.gguf") && stderr.contains("invalid GGUF"),
        "{stderr}"
    );
    let out = pagoda()
        .args(["convert-gguf", "--type", "q5_k", "--model", "x", "--out"])
        .arg(scratch.0.join("x.gguf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("q5_k") && stderr.contains("q8_0"),
        "{stderr}"
    );
}
