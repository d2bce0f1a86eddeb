//! Client fields → engine parameters, with errors that name the parameter and its limit.

use pagoda_core::{ResponseFormat, SamplingParams, TokenId, MAX_LOGPROBS};
use pagoda_engine::structured::Schema;
use serde_json::Value;

use crate::api::common::{SamplingFields, UnsupportedFields};
use crate::error::ApiError;

/// Most choices (`n`) per prompt.
pub const MAX_N: usize = 128;
/// Most stop strings per request.
pub const MAX_STOP: usize = 16;
/// Most prompts × choices in one request.
pub const MAX_SEQUENCES_PER_REQUEST: usize = 256;

/// A request's validated generation settings; `max_tokens` of `None` means "the rest of the
/// context", resolved per prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// The client's `cache_salt` (the tenant's salt is added when the request is submitted).
    pub cache_salt: Option<String>,
}

/// One prompt as given: text to tokenize, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<TokenId>),
}

fn range_error(param: &str, message: String) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// Validates the sampling fields. `max_tokens` is the value the client gave under whichever name
/// (`max_tokens_param` names it in errors); `logprobs` the number of alternatives asked for;
/// token ids must be below `vocab_size`.
pub fn generation(
    fields: &SamplingFields,
    max_tokens: Option<i64>,
    max_tokens_param: &str,
    logprobs: Option<i64>,
    logprobs_param: &str,
    vocab_size: usize,
) -> Result<Generation, ApiError> {
    refuse_unsupported(&fields.unsupported, fields.n.unwrap_or(1))?;
    let max_tokens = match max_tokens {
        None => None,
        Some(v) if v >= 1 => Some(v as usize),
        Some(v) => {
            return Err(range_error(
                max_tokens_param,
                format!("{max_tokens_param} must be at least 1, got {v}"),
            ))
        }
    };
    let n = match fields.n.unwrap_or(1) {
        v if (1..=MAX_N as i64).contains(&v) => v as usize,
        v => {
            return Err(range_error(
                "n",
                format!("n must be in [1, {MAX_N}], got {v}"),
            ))
        }
    };
    let top_k = match fields.top_k {
        None | Some(-1) | Some(0) => None,
        Some(v) if v > 0 => Some(v as usize),
        Some(v) => {
            return Err(range_error(
                "top_k",
                format!("top_k must be -1 or 0 (disabled) or at least 1, got {v}"),
            ))
        }
    };
    let logprobs = match logprobs {
        None => None,
        Some(v) if (0..=MAX_LOGPROBS as i64).contains(&v) => Some(v as usize),
        Some(v) => {
            return Err(range_error(
                logprobs_param,
                format!("{logprobs_param} must be in [0, {MAX_LOGPROBS}], got {v}"),
            ))
        }
    };
    let stop = fields
        .stop
        .clone()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(range_error(
            "stop",
            format!("at most {MAX_STOP} stop strings, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(range_error("stop", "stop strings must not be empty".into()));
    }
    let min_tokens = match fields.min_tokens {
        None => 0,
        Some(v) if v >= 0 => v as usize,
        Some(v) => {
            return Err(range_error(
                "min_tokens",
                format!("min_tokens must be at least 0, got {v}"),
            ))
        }
    };
    let allowed_token_ids = match &fields.allowed_token_ids {
        None => None,
        Some(ids) => {
            check_token_ids("allowed_token_ids", ids, vocab_size)?;
            Some(ids.clone())
        }
    };
    let params = SamplingParams {
        temperature: fields.temperature.unwrap_or(1.0),
        top_k,
        top_p: fields.top_p.unwrap_or(1.0),
        min_p: fields.min_p.unwrap_or(0.0),
        seed: fields.seed.map(|s| s as u64),
        repetition_penalty: fields.repetition_penalty.unwrap_or(1.0),
        presence_penalty: fields.presence_penalty.unwrap_or(0.0),
        frequency_penalty: fields.frequency_penalty.unwrap_or(0.0),
        logprobs,
        // Set by `/v1/completions` for `echo` with `logprobs`.
        prompt_logprobs: None,
        // "The rest of the context" is resolved per prompt; until then no bound applies.
        max_tokens: max_tokens.unwrap_or(usize::MAX),
        ignore_eos: fields.ignore_eos,
        stop_token_ids: fields.stop_token_ids.clone().unwrap_or_default(),
        stop,
        logit_bias: logit_bias(fields.logit_bias.as_ref(), vocab_size)?,
        min_tokens,
        allowed_token_ids,
        response_format: response_format(fields.response_format.as_ref())?,
    };
    params.validate()?;
    let include_usage = fields
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if fields.stream_options.is_some() && !fields.stream {
        return Err(range_error(
            "stream_options",
            "stream_options is only allowed when stream is true".into(),
        ));
    }
    if fields.cache_salt.as_deref() == Some("") {
        return Err(range_error(
            "cache_salt",
            "cache_salt must be a non-empty string".into(),
        ));
    }
    Ok(Generation {
        params,
        max_tokens,
        n,
        stream: fields.stream,
        include_usage,
        cache_salt: fields.cache_salt.clone(),
    })
}

/// Checks that every id in `ids` is in the vocabulary; the error names `param` and the bound.
pub fn check_token_ids(param: &str, ids: &[TokenId], vocab_size: usize) -> Result<(), ApiError> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(id) => Err(range_error(
            param,
            format!("{param} must be token ids in [0, {vocab_size}), got {id}"),
        )),
        None => Ok(()),
    }
}

/// Parses OpenAI's `logit_bias`: an object from token ids (as strings) to numbers.
fn logit_bias(value: Option<&Value>, vocab_size: usize) -> Result<Vec<(TokenId, f32)>, ApiError> {
    let invalid = |message: String| ApiError::invalid_param("logit_bias", message);
    let entries = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            return Err(invalid(
                "logit_bias must be an object from token ids to numbers".into(),
            ))
        }
    };
    entries
        .iter()
        .map(|(key, bias)| {
            let token = key
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&t| (t as usize) < vocab_size)
                .ok_or_else(|| {
                    invalid(format!(
                        "logit_bias keys must be token ids in [0, {vocab_size}), got {key:?}"
                    ))
                })?;
            let bias = bias.as_f64().ok_or_else(|| {
                invalid(format!(
                    "logit_bias values must be numbers, got {bias} for token {key}"
                ))
            })?;
            // Range checked with the other parameters (SamplingParams::validate).
            Ok((token as TokenId, bias as f32))
        })
        .collect()
}

/// Parses OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`; a schema is compiled
/// here so that one pagoda cannot follow is refused with the reason and the place in it.
fn response_format(value: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let invalid = |message: String| ApiError::invalid_param("response_format", message);
    let Some(format) = value.filter(|v| !v.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    invalid("response_format json_schema needs json_schema.schema".into())
                })?;
            Schema::compile(schema).map_err(|e| invalid(e.to_string()))?;
            Ok(ResponseFormat::JsonSchema(schema.to_string()))
        }
        kind => Err(invalid(format!(
            "response_format {} is not supported; the types are \"text\", \"json_object\" and \"json_schema\"",
            kind.map_or_else(|| format.to_string(), |k| format!("{k:?}"))
        ))),
    }
}

/// Refuses fields pagoda does not implement but that would change the output if it ignored them.
fn refuse_unsupported(fields: &UnsupportedFields, n: i64) -> Result<(), ApiError> {
    let refuse = |param: &str, message: String| Err(ApiError::invalid_param(param, message));
    if let Some(best_of) = fields.best_of.filter(|&b| b != n) {
        return refuse(
            "best_of",
            format!("best_of is not supported (only best_of = n = {n}), got {best_of}"),
        );
    }
    for (param, value) in [
        ("guided_json", &fields.guided_json),
        ("guided_regex", &fields.guided_regex),
        ("guided_choice", &fields.guided_choice),
        ("guided_grammar", &fields.guided_grammar),
        ("structured_outputs", &fields.structured_outputs),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return refuse(
                param,
                format!(
                    "{param} is not supported; use response_format (json_object or json_schema)"
                ),
            );
        }
    }
    Ok(())
}

/// Parses `prompt`: a string, a list of strings, a list of token ids or a list of lists of ids.
pub fn prompts(value: Option<&Value>, vocab_size: usize) -> Result<Vec<PromptInput>, ApiError> {
    const SHAPES: &str =
        "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids";
    let value = value.ok_or_else(|| ApiError::invalid_param("prompt", "prompt is required"))?;
    let tokens = |items: &[Value]| -> Result<Vec<TokenId>, ApiError> {
        items
            .iter()
            .map(|t| match t.as_u64() {
                Some(id) if (id as usize) < vocab_size => Ok(id as TokenId),
                _ => Err(ApiError::invalid_param(
                    "prompt",
                    format!("token ids must be integers in [0, {vocab_size}), got {t}"),
                )),
            })
            .collect()
    };
    let prompts = match value {
        Value::String(s) => vec![PromptInput::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid_param(
                "prompt",
                "prompt must not be empty",
            ))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(PromptInput::Text(s.clone())),
                    _ => Err(ApiError::invalid_param("prompt", SHAPES)),
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![PromptInput::Tokens(tokens(items)?)],
            Value::Array(_) => items
                .iter()
                .map(|i| match i {
                    Value::Array(ids) if !ids.is_empty() => Ok(PromptInput::Tokens(tokens(ids)?)),
                    _ => Err(ApiError::invalid_param("prompt", SHAPES)),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(ApiError::invalid_param("prompt", SHAPES)),
        },
        _ => return Err(ApiError::invalid_param("prompt", SHAPES)),
    };
    Ok(prompts)
}

/// Resolves `max_tokens` for one prompt and checks prompt + max_tokens against the context,
/// with the numbers in the message.
pub fn max_tokens_for(
    requested: Option<usize>,
    prompt_len: usize,
    max_model_len: usize,
    param: &str,
) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    if prompt_len >= max_model_len {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "This model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} tokens, leaving no room for output."
            ),
        ));
    }
    let available = max_model_len - prompt_len;
    match requested {
        None => Ok(available),
        Some(m) if m <= available => Ok(m),
        Some(m) => Err(ApiError::invalid_param(
            param,
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_len} in the prompt, {m} for the completion). Please reduce the prompt or {param}.",
                prompt_len + m
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        let cases = [
            (json!({"temperature": 3.0}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"top_k": -5}), "top_k"),
            (json!({"n": 0}), "n"),
            (json!({"stop": ["", "x"]}), "stop"),
            (json!({"presence_penalty": 9}), "presence_penalty"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"logit_bias": {"100": 1}}), "logit_bias"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"3": "1"}}), "logit_bias"),
            (json!({"logit_bias": {"3": 101}}), "logit_bias"),
            (json!({"logit_bias": [1]}), "logit_bias"),
            (json!({"min_tokens": -1}), "min_tokens"),
            (json!({"allowed_token_ids": [100]}), "allowed_token_ids"),
            (json!({"allowed_token_ids": []}), "allowed_token_ids"),
            (json!({"best_of": 2}), "best_of"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"kind": "json"}}),
                "response_format",
            ),
            (json!({"guided_choice": ["a", "b"]}), "guided_choice"),
        ];
        for (body, param) in cases {
            let e = generation(
                &fields(body.clone()),
                None,
                "max_tokens",
                None,
                "logprobs",
                100,
            )
            .unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let e = generation(
            &fields(json!({})),
            Some(0),
            "max_tokens",
            None,
            "logprobs",
            100,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = generation(
            &fields(json!({})),
            None,
            "max_tokens",
            Some(21),
            "logprobs",
            100,
        )
        .unwrap_err();
        assert!(e.message.contains("[0, 20]"));
        let e = generation(
            &fields(json!({"min_tokens": 9})),
            Some(8),
            "max_tokens",
            None,
            "logprobs",
            100,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("min_tokens"));
    }

    #[test]
    fn sampling_controls_reach_the_engine_parameters() {
        let g = generation(
            &fields(json!({
                "logit_bias": {"5": -100, " 7": 2.5},
                "min_tokens": 3,
                "allowed_token_ids": [1, 5, 99],
                "best_of": 2,
                "n": 2,
                "response_format": {"type": "text"},
                "guided_json": null,
            })),
            Some(8),
            "max_tokens",
            None,
            "logprobs",
            100,
        )
        .unwrap();
        let mut bias = g.params.logit_bias.clone();
        bias.sort_by_key(|&(t, _)| t);
        assert_eq!(bias, vec![(5, -100.0), (7, 2.5)]);
        assert_eq!(g.params.min_tokens, 3);
        assert_eq!(g.params.allowed_token_ids, Some(vec![1, 5, 99]));
        assert_eq!(g.params.response_format, ResponseFormat::Text);
        let json_mode = generation(
            &fields(json!({"response_format": {"type": "json_object"}})),
            None,
            "max_tokens",
            None,
            "logprobs",
            100,
        )
        .unwrap();
        assert_eq!(json_mode.params.response_format, ResponseFormat::JsonObject);
        // Without max_tokens the bound is the rest of the context, resolved per prompt.
        let open = generation(
            &fields(json!({"min_tokens": 5000})),
            None,
            "max_tokens",
            None,
            "logprobs",
            100,
        );
        assert!(open.is_ok());
    }

    #[test]
    fn prompts_accept_the_four_shapes() {
        assert_eq!(
            prompts(Some(&json!("hi")), 10).unwrap(),
            vec![PromptInput::Text("hi".into())]
        );
        assert_eq!(prompts(Some(&json!(["a", "b"])), 10).unwrap().len(), 2);
        assert_eq!(
            prompts(Some(&json!([1, 2])), 10).unwrap(),
            vec![PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(prompts(Some(&json!([[1], [2, 3]])), 10).unwrap().len(), 2);
        for bad in [
            json!([]),
            json!(3),
            json!([1, "a"]),
            json!([[]]),
            json!([10]),
            json!({}),
        ] {
            assert_eq!(
                prompts(Some(&bad), 10).unwrap_err().param.as_deref(),
                Some("prompt"),
                "{bad}"
            );
        }
    }

    #[test]
    fn context_overflow_says_the_numbers() {
        let e = max_tokens_for(Some(100), 450, 512, "max_tokens").unwrap_err();
        assert!(
            e.message.contains("512") && e.message.contains("550"),
            "{}",
            e.message
        );
        assert_eq!(max_tokens_for(None, 500, 512, "max_tokens").unwrap(), 12);
        assert!(max_tokens_for(None, 512, 512, "max_tokens").is_err());
    }
}
