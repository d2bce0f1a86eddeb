//! Chat tool calling: which function, if any, a request forces the model to call.
//!
//! `tools` are rendered into the chat template (its `tools` variable) either way. With
//! `tool_choice` a named function (or `"required"` with a single tool), the output is
//! constrained to an instance of the function's `parameters` schema (as `response_format`
//! `json_schema`) and returned as the message's `tool_calls` with `finish_reason`
//! `"tool_calls"`. `"none"` (the default here) generates text. `"auto"` needs a model-specific
//! parser of tool calls in free text, which pagoda does not have, so it is refused, as is
//! `"required"` with several tools (the output cannot yet choose among their schemas).

use pagoda_engine::structured::Schema;
use serde_json::{json, Value};

use crate::error::ApiError;

/// The function a request must call.
#[derive(Debug, Clone, PartialEq)]
pub struct ForcedCall {
    pub name: String,
    /// The function's `parameters` schema as JSON text.
    pub parameters: String,
}

/// Checks `tools` and `tool_choice`; `Some` when the request forces a call.
pub fn forced_call(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
) -> Result<Option<ForcedCall>, ApiError> {
    let tools = tools.unwrap_or_default();
    let functions = tools
        .iter()
        .enumerate()
        .map(|(i, tool)| function(i, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = tool_choice.filter(|c| !c.is_null());
    let invalid = |message: String| ApiError::invalid_param("tool_choice", message);
    let name = match choice {
        None => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => return Ok(None),
            "auto" => {
                return Err(invalid(
                    "tool_choice \"auto\" is not supported (pagoda has no parser for tool calls in free text); use \"required\" or name a function".into(),
                ))
            }
            "required" => match &functions[..] {
                [(name, _)] => name.clone(),
                [] => return Err(invalid("tool_choice \"required\" needs tools".into())),
                _ => {
                    return Err(invalid(format!(
                        "tool_choice \"required\" is supported with one tool, got {}; name the function instead",
                        functions.len()
                    )))
                }
            },
            other => {
                return Err(invalid(format!(
                    "tool_choice must be \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {other:?}"
                )))
            }
        },
        Some(named) => named
            .pointer("/function/name")
            .and_then(Value::as_str)
            .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
            .ok_or_else(|| {
                invalid(format!(
                    "tool_choice must be \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {named}"
                ))
            })?
            .to_string(),
    };
    let (i, (name, parameters)) = functions
        .into_iter()
        .enumerate()
        .find(|(_, (n, _))| *n == name)
        .ok_or_else(|| invalid(format!("tool_choice names {name:?}, which is not in tools")))?;
    Schema::compile(&parameters).map_err(|e| {
        ApiError::invalid_param("tools", format!("tools[{i}].function.parameters: {e}"))
    })?;
    Ok(Some(ForcedCall {
        name,
        parameters: parameters.to_string(),
    }))
}

/// Tool `i`'s function name and parameters schema (an empty schema or none: any object).
fn function(i: usize, tool: &Value) -> Result<(String, Value), ApiError> {
    let invalid = |message: String| ApiError::invalid_param("tools", message);
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(format!("tools[{i}].type must be \"function\"")));
    }
    let name = tool
        .pointer("/function/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "tools[{i}].function.name must be a non-empty string"
            ))
        })?;
    let parameters = match tool.pointer("/function/parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(Value::Object(schema)) if schema.is_empty() => json!({"type": "object"}),
        Some(schema) => schema.clone(),
    };
    Ok((name.to_string(), parameters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn a_named_or_single_required_function_is_forced() {
        let tools = [tool("weather"), tool("time")];
        let named = json!({"type": "function", "function": {"name": "time"}});
        let call = forced_call(Some(&tools), Some(&named)).unwrap().unwrap();
        assert_eq!(call.name, "time");
        let schema: Value = serde_json::from_str(&call.parameters).unwrap();
        assert_eq!(schema["required"], json!(["city"]));
        let required = json!("required");
        let call = forced_call(Some(&tools[..1]), Some(&required))
            .unwrap()
            .unwrap();
        assert_eq!(call.name, "weather");
        // Without parameters: an empty object.
        let bare = [json!({"type": "function", "function": {"name": "ping"}})];
        let call = forced_call(Some(&bare), Some(&required)).unwrap().unwrap();
        assert_eq!(call.parameters, r#"{"type":"object","properties":{}}"#);
        for none in [None, Some(json!("none")), Some(Value::Null)] {
            assert_eq!(forced_call(Some(&tools), none.as_ref()).unwrap(), None);
        }
        // An empty schema: any object; unfollowable schemas of tools not called do not matter.
        let loose = [
            json!({"type": "function", "function": {"name": "f", "parameters": {}}}),
            json!({"type": "function", "function": {"name": "g",
                "parameters": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}),
        ];
        let call = forced_call(
            Some(&loose),
            Some(&json!({"type": "function", "function": {"name": "f"}})),
        );
        assert_eq!(call.unwrap().unwrap().parameters, r#"{"type":"object"}"#);
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_parameter() {
        let tools = [tool("weather"), tool("time")];
        let bad_tool = [json!({"type": "function", "function": {"name": "x",
            "parameters": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}})];
        let cases: [(&[Value], Value, &str, &str); 7] = [
            (&tools, json!("auto"), "tool_choice", "auto"),
            (&tools, json!("required"), "tool_choice", "one tool"),
            (&[], json!("required"), "tool_choice", "needs tools"),
            (
                &tools,
                json!({"type": "function", "function": {"name": "nope"}}),
                "tool_choice",
                "not in tools",
            ),
            (
                &tools,
                json!({"function": {"name": "time"}}),
                "tool_choice",
                "must be",
            ),
            (
                &[json!({"type": "function", "function": {}})],
                json!("none"),
                "tools",
                "name",
            ),
            (&bad_tool, json!("required"), "tools", "\"format\""),
        ];
        for (tools, choice, param, words) in cases {
            let e = forced_call(Some(tools), Some(&choice)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{choice}");
            assert!(e.message.contains(words), "{choice}: {}", e.message);
        }
    }
}
