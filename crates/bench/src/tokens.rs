//! Where prompt tokens come from: a local Hugging Face tokenizer (`--tokenizer`, a
//! `tokenizer.json` or a model directory), or the server's own `/tokenize` and `/detokenize`
//! (pagoda and vLLM shape first, then llama-server's), so that prompts are made of real tokens
//! of the target's tokenizer without the benchmark needing its files.

use std::path::Path;

use serde_json::{json, Value};

use crate::client::Target;
use crate::error::{BenchError, Result};

/// Field names of a server's tokenizer endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteShape {
    /// pagoda, vLLM: `{"prompt"}` → `{"tokens"}`, `{"tokens"}` → `{"prompt"}`.
    Prompt,
    /// llama-server: `{"content"}` → `{"tokens"}`, `{"tokens"}` → `{"content"}`.
    Content,
}

pub enum TokenSource {
    Local(Box<pagoda_model::Tokenizer>),
    Remote {
        target: Target,
        model: String,
        shape: RemoteShape,
    },
}

fn token_ids(value: &Value) -> Option<Vec<u32>> {
    value
        .get("tokens")?
        .as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

impl TokenSource {
    /// Loads `tokenizer.json` from a file path or a model directory.
    pub fn local(path: &Path) -> Result<Self> {
        let tokenizer = if path.is_dir() {
            pagoda_model::Tokenizer::from_dir(path)
        } else {
            let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
            pagoda_model::Tokenizer::from_json(&text, None, path)
        }
        .map_err(|e| BenchError::Tokenizer(e.to_string()))?;
        Ok(TokenSource::Local(Box::new(tokenizer)))
    }

    /// The server's tokenizer, probing which request shape it understands.
    pub async fn remote(target: &Target, model: &str) -> Result<Self> {
        let mut failures = Vec::new();
        for shape in [RemoteShape::Prompt, RemoteShape::Content] {
            let source = TokenSource::Remote {
                target: target.clone(),
                model: model.to_string(),
                shape,
            };
            match source.encode("Hello world").await {
                Ok(ids) if !ids.is_empty() => return Ok(source),
                Ok(_) => failures.push(format!("{shape:?} shape: no tokens")),
                Err(e) => failures.push(format!("{shape:?} shape: {e}")),
            }
        }
        Err(BenchError::Tokenizer(format!(
            "the server's /tokenize did not work ({}); pass --tokenizer PATH",
            failures.join("; ")
        )))
    }

    pub fn describe(&self) -> String {
        match self {
            TokenSource::Local(_) => "local tokenizer".into(),
            TokenSource::Remote { target, .. } => {
                format!("{}/tokenize and /detokenize", target.base_url())
            }
        }
    }

    /// Token ids of `text`, without special tokens (the server adds its own, e.g. BOS).
    pub async fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TokenSource::Local(t) => t
                .encode(text, false)
                .map_err(|e| BenchError::Tokenizer(e.to_string())),
            TokenSource::Remote {
                target,
                model,
                shape,
            } => {
                let body = match shape {
                    RemoteShape::Prompt => {
                        json!({"model": model, "prompt": text, "add_special_tokens": false})
                    }
                    RemoteShape::Content => json!({"content": text, "add_special": false}),
                };
                let answer = target.post_json("/tokenize", &body).await?;
                token_ids(&answer).ok_or_else(|| BenchError::Protocol {
                    url: format!("{}/tokenize", target.base_url()),
                    message: "expected {\"tokens\": [ids…]}".into(),
                })
            }
        }
    }

    /// Text of `ids`.
    pub async fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TokenSource::Local(t) => t
                .decode(ids, false)
                .map_err(|e| BenchError::Tokenizer(e.to_string())),
            TokenSource::Remote {
                target,
                model,
                shape,
            } => {
                let (body, field) = match shape {
                    RemoteShape::Prompt => (json!({"model": model, "tokens": ids}), "prompt"),
                    RemoteShape::Content => (json!({"tokens": ids}), "content"),
                };
                let answer = target.post_json("/detokenize", &body).await?;
                answer
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| BenchError::Protocol {
                        url: format!("{}/detokenize", target.base_url()),
                        message: format!("expected {{\"{field}\": \"…\"}}"),
                    })
            }
        }
    }

    /// Whether counting tokens is cheap (local) rather than a request per count.
    pub fn is_local(&self) -> bool {
        matches!(self, TokenSource::Local(_))
    }
}
