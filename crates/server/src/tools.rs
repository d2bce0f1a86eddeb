//! Chat tool calling: whether a request answers in text, must call a given function, or may
//! call tools in its text.
//!
//! `tools` are rendered into the chat template (its `tools` variable) either way. With
//! `tool_choice` a named function (or `"required"` with a single tool), the output is
//! constrained to an instance of the function's `parameters` schema (as `response_format`
//! `json_schema`) and returned as the message's `tool_calls` with `finish_reason`
//! `"tool_calls"`. `"none"` generates text. `"auto"` — the default when tools are given, as in
//! OpenAI's API — needs the server started with a parser for the model's tool-call format
//! (`--enable-auto-tool-choice --tool-call-parser`, see [`crate::tool_parser`]); without one,
//! an explicit `"auto"` is refused and an absent `tool_choice` means `"none"`. `"required"` with
//! several tools generates `{"name": {arguments}}` under a schema allowing exactly one of the
//! functions, each with its parameters, and answers it as the call.

use pagoda_engine::structured::Schema;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::tool_parser::ToolCallParser;

/// How a chat request's answer is made.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// Text only.
    Text,
    /// Must call this function: its arguments are generated under its parameters schema.
    Forced(ForcedCall),
    /// Must call one of several functions: the output is `{"name": {arguments}}` under this
    /// schema (exactly one of the functions, each with its parameters).
    ForcedAny(String),
    /// Free text, in which the model may call tools in the parser's format.
    Auto(ToolCallParser),
}

/// Checks `tools` and `tool_choice` against the server's parser (`auto`).
pub fn tool_mode(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    auto: Option<ToolCallParser>,
) -> Result<ToolMode, ApiError> {
    // Every tool must be well-formed, whether or not it is called.
    let functions = tools
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, tool)| function(i, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let invalid = |message: String| ApiError::invalid_param("tool_choice", message);
    let name = match tool_choice.filter(|c| !c.is_null()) {
        // OpenAI's default: "auto" when there are tools (if this server can parse calls).
        None => {
            return Ok(match auto {
                Some(parser) if !functions.is_empty() => ToolMode::Auto(parser),
                _ => ToolMode::Text,
            })
        }
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => return Ok(ToolMode::Text),
            "auto" => {
                return match auto {
                    Some(parser) if !functions.is_empty() => Ok(ToolMode::Auto(parser)),
                    Some(_) => Ok(ToolMode::Text),
                    None => Err(invalid(
                        "tool_choice \"auto\" needs the server started with --enable-auto-tool-choice and --tool-call-parser (hermes, llama3_json or mistral: the model's tool-call format); use \"required\" or name a function".into(),
                    )),
                }
            }
            "required" => match &functions[..] {
                [] => return Err(invalid("tool_choice \"required\" needs tools".into())),
                [(name, _)] => name.clone(),
                _ => return any_call(functions),
            },
            other => return Err(invalid(format!("{CHOICES}, got {other:?}"))),
        },
        Some(named) => named
            .pointer("/function/name")
            .and_then(Value::as_str)
            .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
            .ok_or_else(|| invalid(format!("{CHOICES}, got {named}")))?
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
    Ok(ToolMode::Forced(ForcedCall {
        name,
        parameters: parameters.to_string(),
    }))
}

/// What `tool_choice` may be.
const CHOICES: &str = "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}";

/// The function a request must call.
#[derive(Debug, Clone, PartialEq)]
pub struct ForcedCall {
    pub name: String,
    /// The function's `parameters` schema as JSON text.
    pub parameters: String,
}

/// `"required"` with several tools: one object whose one key is a function's name and whose
/// value is an instance of its parameters.
fn any_call(functions: Vec<(String, Value)>) -> Result<ToolMode, ApiError> {
    let mut properties = serde_json::Map::new();
    for (i, (name, parameters)) in functions.into_iter().enumerate() {
        if properties.contains_key(&name) {
            return Err(ApiError::invalid_param(
                "tools",
                format!("tools[{i}].function.name {name:?} is not unique"),
            ));
        }
        properties.insert(name, parameters);
    }
    let schema = json!({"type": "object", "minProperties": 1, "maxProperties": 1,
                        "properties": properties});
    Schema::compile(&schema).map_err(|e| {
        ApiError::invalid_param(
            "tools",
            format!("the tools' parameters cannot be followed: {e}"),
        )
    })?;
    Ok(ToolMode::ForcedAny(schema.to_string()))
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

    /// The call a request forces, on a server without a tool-call parser.
    fn forced_call(
        tools: Option<&[Value]>,
        tool_choice: Option<&Value>,
    ) -> Result<Option<ForcedCall>, ApiError> {
        Ok(match tool_mode(tools, tool_choice, None)? {
            ToolMode::Forced(call) => Some(call),
            _ => None,
        })
    }

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
        let cases: [(&[Value], Value, &str, &str); 8] = [
            (&tools, json!("auto"), "tool_choice", "auto"),
            (
                &[tool("a"), tool("a")],
                json!("required"),
                "tools",
                "not unique",
            ),
            (
                &[tool("a"), bad_tool[0].clone()],
                json!("required"),
                "tools",
                "\"format\"",
            ),
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
            let e = tool_mode(Some(tools), Some(&choice), None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{choice}");
            assert!(e.message.contains(words), "{choice}: {}", e.message);
        }
    }

    #[test]
    fn required_with_several_tools_chooses_one_by_name() {
        let tools = [tool("weather"), tool("time")];
        let ToolMode::ForcedAny(schema) =
            tool_mode(Some(&tools), Some(&json!("required")), None).unwrap()
        else {
            panic!("not a choice among functions");
        };
        let schema: Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(schema["minProperties"], 1);
        assert_eq!(schema["maxProperties"], 1);
        assert_eq!(schema["properties"]["time"]["required"], json!(["city"]));
    }

    #[test]
    fn auto_is_the_default_with_tools_when_the_server_has_a_parser() {
        let tools = [tool("weather")];
        let hermes = Some(ToolCallParser::Hermes);
        let auto = ToolMode::Auto(ToolCallParser::Hermes);
        assert_eq!(tool_mode(Some(&tools), None, hermes).unwrap(), auto);
        assert_eq!(
            tool_mode(Some(&tools), Some(&json!("auto")), hermes).unwrap(),
            auto
        );
        assert_eq!(
            tool_mode(Some(&tools), Some(&json!("none")), hermes).unwrap(),
            ToolMode::Text
        );
        assert!(matches!(
            tool_mode(Some(&tools), Some(&json!("required")), hermes).unwrap(),
            ToolMode::Forced(_)
        ));
        // Nothing to call.
        assert_eq!(tool_mode(None, None, hermes).unwrap(), ToolMode::Text);
        assert_eq!(
            tool_mode(Some(&[]), Some(&json!("auto")), hermes).unwrap(),
            ToolMode::Text
        );
        // No parser: an absent tool_choice means "none", an explicit "auto" is refused.
        assert_eq!(tool_mode(Some(&tools), None, None).unwrap(), ToolMode::Text);
        let e = tool_mode(Some(&tools), Some(&json!("auto")), None).unwrap_err();
        assert!(e.message.contains("--tool-call-parser"), "{}", e.message);
        // Malformed tools are refused under "auto" too.
        let bad = [json!({"type": "function", "function": {}})];
        let e = tool_mode(Some(&bad), None, hermes).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
    }
}
