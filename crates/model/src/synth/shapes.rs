//! Model shapes: the catalogue of real (and tiny test) Llama/Qwen2 geometries that the
//! synthetic-model generator can reproduce, plus lookup and sanity checks.

use super::SynthError;

/// Architecture family, derived from [`Shape::architecture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM`: `<unk>`/`<s>`/`</s>` at ids 0/1/2, BOS added.
    Llama,
    /// `Qwen2ForCausalLM`: ChatML special tokens at the top of the vocabulary, no BOS added.
    Qwen2,
}

/// The geometry of a decoder-only transformer, with the hyperparameters of its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    /// `"LlamaForCausalLM"` or `"Qwen2ForCausalLM"`.
    pub architecture: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Qwen2: biases on the q/k/v projections.
    pub attention_bias: bool,
}

const LLAMA: &str = "LlamaForCausalLM";
const QWEN2: &str = "Qwen2ForCausalLM";

/// Every shape the generator knows by name.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "tiny",
        architecture: LLAMA,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 2048,
        max_position_embeddings: 2048,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        attention_bias: false,
    },
    // A tiny Qwen2 (q/k/v biases, untied lm_head) to exercise those paths cheaply.
    Shape {
        name: "tiny-qwen2",
        architecture: QWEN2,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 2048,
        max_position_embeddings: 4096,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: false,
        attention_bias: true,
    },
    Shape {
        name: "smollm2-135m",
        architecture: LLAMA,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        vocab_size: 49152,
        max_position_embeddings: 8192,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        attention_bias: false,
    },
    Shape {
        name: "qwen2.5-0.5b",
        architecture: QWEN2,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        vocab_size: 151936,
        max_position_embeddings: 32768,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        attention_bias: true,
    },
    Shape {
        name: "qwen2.5-1.5b",
        architecture: QWEN2,
        hidden_size: 1536,
        intermediate_size: 8960,
        num_hidden_layers: 28,
        num_attention_heads: 12,
        num_key_value_heads: 2,
        vocab_size: 151936,
        max_position_embeddings: 32768,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        attention_bias: true,
    },
    Shape {
        name: "tinyllama-1.1b",
        architecture: LLAMA,
        hidden_size: 2048,
        intermediate_size: 5632,
        num_hidden_layers: 22,
        num_attention_heads: 32,
        num_key_value_heads: 4,
        vocab_size: 32000,
        max_position_embeddings: 2048,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        attention_bias: false,
    },
];

/// Smallest vocabulary the synthetic tokenizer can fill: 256 byte symbols + 3 special tokens.
pub const MIN_VOCAB_SIZE: usize = 259;
/// Largest vocabulary accepted (real models stay far below it).
pub const MAX_VOCAB_SIZE: usize = 1 << 20;

/// Looks a shape up by name; the error lists the known names.
pub fn shape(name: &str) -> Result<&'static Shape, SynthError> {
    SHAPES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SynthError::UnknownShape {
            name: name.to_string(),
            known: SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        })
}

impl Shape {
    /// The architecture family, or an error for an architecture string we cannot generate.
    pub fn family(&self) -> Result<Family, SynthError> {
        match self.architecture {
            LLAMA => Ok(Family::Llama),
            QWEN2 => Ok(Family::Qwen2),
            other => Err(self.invalid(format!(
                "unsupported architecture {other:?} (expected {LLAMA:?} or {QWEN2:?})"
            ))),
        }
    }

    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that the geometry is consistent enough to generate.
    pub fn validate(&self) -> Result<(), SynthError> {
        self.family()?;
        let dims = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((field, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(self.invalid(format!("{field} must be positive")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(self.invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(self.invalid(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !(MIN_VOCAB_SIZE..=MAX_VOCAB_SIZE).contains(&self.vocab_size) {
            return Err(self.invalid(format!(
                "vocab_size {} must be in {MIN_VOCAB_SIZE}..={MAX_VOCAB_SIZE}",
                self.vocab_size
            )));
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps > 0.0) {
            return Err(self.invalid("rope_theta and rms_norm_eps must be positive".into()));
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> SynthError {
        SynthError::InvalidShape {
            name: self.name.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_shapes_are_valid_and_findable() {
        for s in SHAPES {
            s.validate().unwrap();
            assert_eq!(shape(s.name).unwrap().name, s.name);
        }
        let tiny = shape("tiny").unwrap();
        assert_eq!(tiny.head_dim(), 32);
        assert_eq!(tiny.family().unwrap(), Family::Llama);
        assert_eq!(shape("qwen2.5-0.5b").unwrap().head_dim(), 64);
        assert_eq!(shape("tinyllama-1.1b").unwrap().head_dim(), 64);
        assert_eq!(shape("smollm2-135m").unwrap().head_dim(), 64);
    }

    #[test]
    fn unknown_shape_lists_known_names() {
        let err = shape("gpt-5").unwrap_err().to_string();
        assert!(err.contains("gpt-5"), "{err}");
        for s in SHAPES {
            assert!(err.contains(s.name), "{err}");
        }
    }

    #[test]
    fn invalid_shapes_are_rejected() {
        let base = shape("tiny").unwrap().clone();
        let bad_heads = Shape {
            num_attention_heads: 3,
            ..base.clone()
        };
        assert!(bad_heads.validate().is_err());
        let bad_kv = Shape {
            num_key_value_heads: 3,
            ..base.clone()
        };
        assert!(bad_kv.validate().is_err());
        let bad_vocab = Shape {
            vocab_size: 100,
            ..base.clone()
        };
        assert!(bad_vocab.validate().is_err());
        let bad_arch = Shape {
            architecture: "MistralForCausalLM",
            ..base
        };
        assert!(bad_arch.family().is_err());
    }
}
