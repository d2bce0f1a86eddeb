//! `pagoda convert-gguf`: writes a Hugging Face model directory as a GGUF file with llama.cpp's
//! conventions (the conversion itself is `pagoda_model::gguf::convert`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pagoda_model::gguf::convert::{convert_to_gguf, parse_output_type};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the weight matrices: f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (norms stay f32).
    #[arg(long = "type", default_value = "f16")]
    pub ty: String,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let ty = parse_output_type(&args.ty)?;
    let start = Instant::now();
    let summary = convert_to_gguf(&args.model, &args.out, ty).with_context(|| {
        format!(
            "converting {} to {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    if !summary.fallbacks.is_empty() {
        let names: Vec<String> = summary
            .fallbacks
            .iter()
            .map(|(name, t)| format!("{name} ({t})"))
            .collect();
        eprintln!(
            "pagoda: {} matrices have rows that are not whole {ty} blocks and were written in another type: {}",
            names.len(),
            names.join(", ")
        );
    }
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "pagoda: wrote {} ({ty}, {} tensors, {:.1} MB) in {:.1} s",
        args.out.display(),
        summary.num_tensors,
        size as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
