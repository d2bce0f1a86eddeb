//! Types shared by every pagoda crate: token and request ids, sampling parameters, finish reasons.
//!
//! This crate has no logic beyond validation of the values it defines; the engine, model runner and
//! server all speak in these types so that none of them depends on another's internals.

use serde::{Deserialize, Serialize};

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// Identifies one request inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// How the next token of a request is chosen, with the OpenAI / vLLM parameter set.
///
/// The order of application follows vLLM: the reported log-probabilities come from the raw
/// logits; then `allowed_token_ids`, the `min_tokens` mask and `logit_bias`; then penalties, then
/// temperature, then min-p / top-k / top-p truncation, then a draw from the request's own random
/// stream. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax after penalties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Nucleus sampling mass in (0, 1]; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's; 0 keeps all.
    pub min_p: f32,
    /// Seed of the request's own random stream: the same seed gives the same tokens whatever else runs.
    pub seed: Option<u64>,
    /// Hugging Face style multiplicative penalty over prompt and output tokens; 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over output tokens; 0 is off.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over output tokens; 0 is off.
    pub frequency_penalty: f32,
    /// Return this many top alternatives' log-probabilities with each sampled token.
    pub logprobs: Option<usize>,
    /// vLLM `prompt_logprobs`: return each prompt token's log-probability (from the second on)
    /// with this many top alternatives. The prompt is then computed in full (no prefix-cache
    /// hits).
    #[serde(default)]
    pub prompt_logprobs: Option<usize>,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Extra token ids that end generation (the token is kept in the output).
    pub stop_token_ids: Vec<TokenId>,
    /// Strings that end generation; matched on detokenized text, not included in the output.
    pub stop: Vec<String>,
    /// OpenAI `logit_bias`: added to each listed token's logit before penalties and sampling
    /// (in [-100, 100]; -100 bans a token in practice, +100 forces it).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// vLLM `min_tokens`: until this many tokens are generated, end-of-sequence and stop token
    /// ids cannot be sampled and stop strings are not matched.
    pub min_tokens: usize,
    /// vLLM `allowed_token_ids`: only these tokens can be sampled (`None`: all).
    pub allowed_token_ids: Option<Vec<TokenId>>,
    /// OpenAI `response_format`: free text, or output constrained to one JSON object.
    #[serde(default)]
    pub response_format: ResponseFormat,
}

/// The shape the output must have (OpenAI `response_format.type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Any text.
    #[default]
    Text,
    /// One JSON object: only tokens that keep the output a valid prefix of one can be sampled,
    /// and generation ends when it is complete.
    JsonObject,
    /// An instance of this JSON Schema (its JSON text), constrained the same way.
    JsonSchema(String),
}

/// The largest `|bias|` of a `logit_bias` entry (OpenAI's limit).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            prompt_logprobs: None,
            max_tokens: 16,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            logit_bias: Vec::new(),
            min_tokens: 0,
            allowed_token_ids: None,
            response_format: ResponseFormat::Text,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Fills `out` with the token ids that must not be sampled after `generated` tokens: while
    /// `min_tokens` is not reached, the end-of-sequence ids (unless `ignore_eos`) and the stop
    /// token ids; nothing after.
    pub fn banned_stop_ids(
        &self,
        eos_token_ids: &[TokenId],
        generated: usize,
        out: &mut Vec<TokenId>,
    ) {
        out.clear();
        if generated < self.min_tokens {
            if !self.ignore_eos {
                out.extend_from_slice(eos_token_ids);
            }
            out.extend_from_slice(&self.stop_token_ids);
        }
    }

    /// True when the choice is a deterministic argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Checks every value against its allowed range; the error names the parameter and the limit.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        fn check(ok: bool, param: &'static str, message: String) -> Result<(), InvalidParam> {
            if ok {
                Ok(())
            } else {
                Err(InvalidParam { param, message })
            }
        }
        check(
            self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature),
            "temperature",
            format!("temperature must be in [0, 2], got {}", self.temperature),
        )?;
        check(
            self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            format!("top_p must be in (0, 1], got {}", self.top_p),
        )?;
        check(
            self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p),
            "min_p",
            format!("min_p must be in [0, 1], got {}", self.min_p),
        )?;
        check(
            self.top_k != Some(0),
            "top_k",
            "top_k must be at least 1 (omit it to disable)".to_string(),
        )?;
        check(
            self.repetition_penalty.is_finite()
                && self.repetition_penalty > 0.0
                && self.repetition_penalty <= 2.0,
            "repetition_penalty",
            format!(
                "repetition_penalty must be in (0, 2], got {}",
                self.repetition_penalty
            ),
        )?;
        check(
            self.presence_penalty.is_finite() && (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty",
            format!(
                "presence_penalty must be in [-2, 2], got {}",
                self.presence_penalty
            ),
        )?;
        check(
            self.frequency_penalty.is_finite() && (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty",
            format!(
                "frequency_penalty must be in [-2, 2], got {}",
                self.frequency_penalty
            ),
        )?;
        check(
            self.logprobs.is_none_or(|n| n <= MAX_LOGPROBS),
            "logprobs",
            format!("logprobs must be at most {MAX_LOGPROBS}"),
        )?;
        check(
            self.max_tokens >= 1,
            "max_tokens",
            "max_tokens must be at least 1".to_string(),
        )?;
        check(
            self.min_tokens <= self.max_tokens,
            "min_tokens",
            format!(
                "min_tokens must be at most max_tokens ({}), got {}",
                self.max_tokens, self.min_tokens
            ),
        )?;
        if let Some(&(token, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(b.is_finite() && b.abs() <= MAX_LOGIT_BIAS))
        {
            check(
                false,
                "logit_bias",
                format!(
                    "logit_bias values must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], got {bias} for token {token}"
                ),
            )?;
        }
        check(
            self.allowed_token_ids
                .as_ref()
                .is_none_or(|ids| !ids.is_empty()),
            "allowed_token_ids",
            "allowed_token_ids must not be empty".to_string(),
        )?;
        Ok(())
    }
}

/// The largest number of top alternatives a request may ask log-probabilities for.
pub const MAX_LOGPROBS: usize = 20;

/// A sampling parameter outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParam {
    /// The offending parameter's name, as the API spells it.
    pub param: &'static str,
    /// What is wrong, with the limit.
    pub message: String,
}

/// Why a request stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// Reached `max_tokens`.
    Length,
    /// Produced an end-of-sequence token or a stop token id.
    StopToken(TokenId),
    /// Produced one of the request's stop strings.
    StopString(String),
    /// Completed the JSON object its `response_format` asked for.
    StructuredComplete,
    /// Reached the model's context length.
    ContextLength,
    /// Aborted by the client or the server.
    Abort,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_openai_str(&self) -> &'static str {
        match self {
            FinishReason::Length | FinishReason::ContextLength => "length",
            FinishReason::StopToken(_)
            | FinishReason::StopString(_)
            | FinishReason::StructuredComplete => "stop",
            FinishReason::Abort => "abort",
        }
    }
}

/// One sampled token with its log-probability and, when asked, the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: TokenId,
    /// Log-probability of `token` under the model's raw distribution (before temperature/truncation);
    /// NaN when the request did not ask for logprobs (computing it costs a pass over the vocabulary).
    pub logprob: f32,
    /// The `logprobs` most likely tokens with their log-probabilities, most likely first.
    pub top_logprobs: Vec<(TokenId, f32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_params_are_valid_and_bad_ones_name_the_parameter() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "top_p");
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "temperature");
        let bad = SamplingParams {
            logprobs: Some(21),
            ..SamplingParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "logprobs");
        let bad = SamplingParams {
            min_tokens: 17,
            ..SamplingParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "min_tokens");
        for bias in [100.5, -101.0, f32::NAN, f32::INFINITY] {
            let bad = SamplingParams {
                logit_bias: vec![(3, 1.0), (7, bias)],
                ..SamplingParams::default()
            };
            let e = bad.validate().unwrap_err();
            assert_eq!(e.param, "logit_bias");
            assert!(e.message.contains("token 7"), "{}", e.message);
        }
        let edge = SamplingParams {
            logit_bias: vec![(0, -100.0), (1, 100.0)],
            min_tokens: 16,
            allowed_token_ids: Some(vec![4]),
            ..SamplingParams::default()
        };
        assert!(edge.validate().is_ok());
        let bad = SamplingParams {
            allowed_token_ids: Some(Vec::new()),
            ..SamplingParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "allowed_token_ids");
    }

    #[test]
    fn stop_ids_are_banned_only_until_min_tokens() {
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![7],
            ..SamplingParams::default()
        };
        let mut out = vec![99];
        p.banned_stop_ids(&[2], 0, &mut out);
        assert_eq!(out, vec![2, 7]);
        p.banned_stop_ids(&[2], 1, &mut out);
        assert_eq!(out, vec![2, 7]);
        p.banned_stop_ids(&[2], 2, &mut out);
        assert!(out.is_empty());
        let ignoring = SamplingParams {
            ignore_eos: true,
            ..p
        };
        ignoring.banned_stop_ids(&[2], 0, &mut out);
        assert_eq!(out, vec![7]);
    }

    #[test]
    fn greedy_is_greedy() {
        assert!(SamplingParams::greedy(4).is_greedy());
        assert!(!SamplingParams::default().is_greedy());
    }
}
