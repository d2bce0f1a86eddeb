//! `/v1/completions` wire types.

use serde::{Deserialize, Serialize};

use super::common::{SamplingFields, Usage};

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    /// A string, a list of strings, a list of token ids, or a list of lists of token ids;
    /// kept raw so that a wrong shape gets a precise error.
    pub prompt: Option<serde_json::Value>,
    /// Top alternatives per token (0..=20).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    /// Text after the completion (insertion); not supported, refused when set.
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Serialize, Default, Clone, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `None` (null) for an echoed prompt's first token, which nothing predicts.
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub fn extend(&mut self, other: &CompletionLogprobs) {
        self.tokens.extend(other.tokens.iter().cloned());
        self.token_logprobs.extend(&other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs.iter().cloned());
        self.text_offset.extend(&other.text_offset);
    }

    /// Keeps the first `n` tokens' entries.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.token_logprobs.truncate(n);
        self.top_logprobs.truncate(n);
        self.text_offset.truncate(n);
    }
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
