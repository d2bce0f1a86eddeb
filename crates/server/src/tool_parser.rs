//! Tool calls written in free text (`tool_choice` `"auto"`, enabled by `--enable-auto-tool-choice
//! --tool-call-parser NAME`, as vLLM): the model-specific formats chat templates ask models to
//! call tools in, turned into OpenAI `tool_calls`.
//!
//! - `hermes` (Qwen2.5, Hermes and many fine-tunes): each call is
//!   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; the text outside the tags is the
//!   message's content.
//! - `llama3_json` (Llama 3.1/3.2 JSON tool calling): the whole message is a JSON object
//!   `{"name": ..., "parameters": {...}}` (or several, separated by `;`), possibly after
//!   `<|python_tag|>`; a message starting with anything else is content.
//! - `mistral` (Mistral v0.3, Nemo, Small): the whole message is a JSON array of
//!   `{"name": ..., "arguments": {...}}` objects, possibly after `[TOOL_CALLS]` (a control token
//!   that detokenization usually drops); anything else is content.
//!
//! A call that does not parse (bad JSON, no name) stays text, as in vLLM. Streaming applies the
//! same rules as the text arrives ([`StreamingToolParser`]): content passes on at once except a
//! tail that could begin a `<tool_call>` tag (`hermes`) or a message that may be a JSON call
//! (`llama3_json`, `mistral`: held to the end); each call goes out whole once complete.

use serde_json::Value;

/// A tool-call format, by its vLLM name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallParser {
    Hermes,
    Llama3Json,
    Mistral,
    /// pagoda's own format for `tool_choice` "required" with several tools (not a server
    /// option): a JSON object whose one key names the function and whose value is its arguments.
    NamedObject,
}

impl ToolCallParser {
    pub const NAMES: [&'static str; 3] = ["hermes", "llama3_json", "mistral"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// A whole-message format's optional leading marker and the character its JSON opens with.
    fn message_start(self) -> Option<(&'static str, char)> {
        match self {
            Self::Hermes => None,
            Self::Llama3Json => Some((PYTHON_TAG, '{')),
            Self::Mistral => Some((TOOL_CALLS_TAG, '[')),
            Self::NamedObject => Some(("", '{')),
        }
    }
}

/// One call found in the text: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// The text, in order: content, and calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    Call(ParsedCall),
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const TOOL_CALLS_TAG: &str = "[TOOL_CALLS]";

/// Incremental parsing of one message's text.
#[derive(Debug)]
pub struct StreamingToolParser {
    parser: ToolCallParser,
    /// Text received and not yet passed on.
    pending: String,
    /// `hermes`: inside a `<tool_call>` block (its opening tag consumed).
    in_call: bool,
    /// Whole-message formats: whether the message is a JSON call (`Some(true)`, held to the
    /// end) or content (`Some(false)`); `None` while only whitespace (or part of the marker) has
    /// arrived.
    json_message: Option<bool>,
}

impl StreamingToolParser {
    pub fn new(parser: ToolCallParser) -> Self {
        Self {
            parser,
            pending: String::new(),
            in_call: false,
            json_message: None,
        }
    }

    /// Takes the next text of the message; appends what can be passed on to `out`.
    pub fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        self.pending.push_str(text);
        let Some((marker, opener)) = self.parser.message_start() else {
            return self.hermes(out);
        };
        if self.json_message.is_none() {
            let start = self.pending.trim_start();
            if !start.is_empty() && !marker.starts_with(start) {
                self.json_message = Some(start.starts_with(opener) || start.starts_with(marker));
            }
        }
        if self.json_message == Some(false) {
            out.push(Piece::Content(std::mem::take(&mut self.pending)));
        }
    }

    /// The message is complete: passes on everything still held.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        let rest = std::mem::take(&mut self.pending);
        match self.parser {
            ToolCallParser::Hermes if self.in_call => {
                // An unterminated block (the output was cut) stays text.
                out.push(Piece::Content(format!("{OPEN}{rest}")));
            }
            parser if self.json_message == Some(true) => {
                let calls = match parser {
                    ToolCallParser::Mistral => mistral_calls(&rest),
                    ToolCallParser::NamedObject => named_object_call(&rest).map(|c| vec![c]),
                    _ => llama3_calls(&rest),
                };
                match calls {
                    Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                    None => out.push(Piece::Content(rest)),
                }
            }
            _ if !rest.is_empty() => out.push(Piece::Content(rest)),
            _ => {}
        }
        self.in_call = false;
    }

    fn hermes(&mut self, out: &mut Vec<Piece>) {
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CLOSE) else {
                    return;
                };
                let body: String = self.pending.drain(..end + CLOSE.len()).collect();
                let body = &body[..end];
                self.in_call = false;
                out.push(match hermes_call(body) {
                    Some(call) => Piece::Call(call),
                    None => Piece::Content(format!("{OPEN}{body}{CLOSE}")),
                });
                continue;
            }
            if let Some(start) = self.pending.find(OPEN) {
                if start > 0 {
                    out.push(Piece::Content(self.pending[..start].to_string()));
                }
                self.pending.drain(..start + OPEN.len());
                self.in_call = true;
                continue;
            }
            // Hold back a tail that may be the start of an opening tag.
            let len = self.pending.len();
            let hold = (1..OPEN.len().min(len + 1))
                .rev()
                .find(|&n| {
                    self.pending.is_char_boundary(len - n)
                        && OPEN.starts_with(&self.pending[len - n..])
                })
                .unwrap_or(0);
            if len > hold {
                out.push(Piece::Content(self.pending.drain(..len - hold).collect()));
            }
            return;
        }
    }
}

/// Parses a whole message.
pub fn parse_all(parser: ToolCallParser, text: &str) -> Vec<Piece> {
    let mut parser = StreamingToolParser::new(parser);
    let mut out = Vec::new();
    parser.push(text, &mut out);
    parser.finish(&mut out);
    out
}

/// The arguments of a call object (`arguments` or `parameters`) as JSON text.
fn call_of(value: &Value) -> Option<ParsedCall> {
    let name = value.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        // Some models write the arguments as a JSON string already.
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    Some(ParsedCall {
        name: name.to_string(),
        arguments,
    })
}

fn hermes_call(body: &str) -> Option<ParsedCall> {
    call_of(&serde_json::from_str(body.trim()).ok()?)
}

/// One or more JSON call objects separated by `;`, after an optional `<|python_tag|>`; `None`
/// unless the whole text is that.
fn llama3_calls(text: &str) -> Option<Vec<ParsedCall>> {
    let mut rest = text.trim_start();
    rest = rest.strip_prefix(PYTHON_TAG).unwrap_or(rest);
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return (!calls.is_empty()).then_some(calls);
        }
        if !calls.is_empty() {
            rest = rest.strip_prefix(';')?.trim_start();
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        calls.push(call_of(&value)?);
        rest = &rest[values.byte_offset()..];
    }
}

/// `{"name": {arguments}}`; `None` unless the whole text is that.
fn named_object_call(text: &str) -> Option<ParsedCall> {
    let object: serde_json::Map<String, Value> = serde_json::from_str(text.trim()).ok()?;
    let mut entries = object.into_iter();
    match (entries.next(), entries.next()) {
        (Some((name, arguments)), None) => Some(ParsedCall {
            name,
            arguments: arguments.to_string(),
        }),
        _ => None,
    }
}

/// A JSON array of call objects (or one object), after an optional `[TOOL_CALLS]`; `None` unless
/// the whole text is that.
fn mistral_calls(text: &str) -> Option<Vec<ParsedCall>> {
    let text = text.trim_start();
    let text = text.strip_prefix(TOOL_CALLS_TAG).unwrap_or(text);
    match serde_json::from_str::<Value>(text.trim()).ok()? {
        Value::Array(items) if !items.is_empty() => items.iter().map(call_of).collect(),
        object @ Value::Object(_) => Some(vec![call_of(&object)?]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> Piece {
        Piece::Call(ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        })
    }

    fn content(text: &str) -> Piece {
        Piece::Content(text.into())
    }

    /// Adjacent content pieces merged (streaming splits content arbitrarily).
    fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (_, Piece::Content(b)) if b.is_empty() => {}
                (_, p) => out.push(p),
            }
        }
        out
    }

    /// The text parsed whole, then streamed a character at a time, gives `want`.
    fn check_whole_and_by_char(parser: ToolCallParser, text: &str, want: &[Piece]) {
        assert_eq!(merged(parse_all(parser, text)), want, "{text}");
        let mut streaming = StreamingToolParser::new(parser);
        let mut out = Vec::new();
        let mut start = 0;
        for end in (1..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            streaming.push(&text[start..end], &mut out);
            start = end;
        }
        streaming.finish(&mut out);
        assert_eq!(merged(out), want, "{text} streamed");
    }

    fn hermes_cases() -> Vec<(&'static str, Vec<Piece>)> {
        vec![
            ("Just text, no <tool_ call.", vec![content("Just text, no <tool_ call.")]),
            (
                r#"<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>"#,
                vec![call("weather", r#"{"city":"Oslo"}"#)],
            ),
            (
                "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>",
                vec![
                    content("Let me check.\n"),
                    call("a", "{}"),
                    content("\n"),
                    call("b", r#"{"x": 1}"#),
                ],
            ),
            // Not a call: bad JSON, or no name, stays text; so does an unterminated block.
            (
                "<tool_call>{oops}</tool_call> and <tool_call>{\"arguments\": {}}</tool_call>",
                vec![content(
                    "<tool_call>{oops}</tool_call> and <tool_call>{\"arguments\": {}}</tool_call>",
                )],
            ),
            (
                "Ok <tool_call>{\"name\": \"a\", \"argu",
                vec![content("Ok <tool_call>{\"name\": \"a\", \"argu")],
            ),
            ("ends with <tool_c", vec![content("ends with <tool_c")]),
            ("é<tool_call>{\"name\":\"ü\"}</tool_call>ß", vec![content("é"), call("ü", "{}"), content("ß")]),
        ]
    }

    #[test]
    fn hermes_blocks_become_calls_and_everything_else_content() {
        for (text, want) in hermes_cases() {
            assert_eq!(
                merged(parse_all(ToolCallParser::Hermes, text)),
                want,
                "{text}"
            );
        }
    }

    /// Streaming gives the same pieces however the text is cut, and passes content on at once
    /// except a tail that could begin a tag.
    #[test]
    fn hermes_streaming_agrees_with_whole_text_at_every_cut() {
        for (text, want) in hermes_cases() {
            let cuts: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for &a in &cuts {
                for &b in cuts.iter().filter(|&&b| b >= a) {
                    let mut parser = StreamingToolParser::new(ToolCallParser::Hermes);
                    let mut out = Vec::new();
                    for part in [&text[..a], &text[a..b], &text[b..]] {
                        parser.push(part, &mut out);
                    }
                    parser.finish(&mut out);
                    assert_eq!(merged(out), want, "{text:?} cut at {a}, {b}");
                }
            }
        }
        let mut parser = StreamingToolParser::new(ToolCallParser::Hermes);
        let mut out = Vec::new();
        parser.push("Hello <tool", &mut out);
        assert_eq!(out, vec![content("Hello ")]);
    }

    #[test]
    fn llama3_json_messages_are_calls_and_others_content() {
        let cases = [
            (
                r#"{"name": "weather", "parameters": {"city": "Oslo"}}"#,
                vec![call("weather", r#"{"city":"Oslo"}"#)],
            ),
            (
                "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"s\": \";\"}}",
                vec![call("a", "{}"), call("b", r#"{"s":";"}"#)],
            ),
            ("  The weather is fine.", vec![content("  The weather is fine.")]),
            (r#"{"name": "a", "parameters": {}} trailing"#, vec![content(r#"{"name": "a", "parameters": {}} trailing"#)]),
            (r#"{"not": "a call"}"#, vec![content(r#"{"not": "a call"}"#)]),
            ("", vec![]),
        ];
        for (text, want) in cases {
            check_whole_and_by_char(ToolCallParser::Llama3Json, text, &want);
        }
    }

    #[test]
    fn mistral_messages_are_call_arrays_and_others_content() {
        let cases = [
            (
                r#"[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "time", "arguments": {}}]"#,
                vec![call("weather", r#"{"city":"Oslo"}"#), call("time", "{}")],
            ),
            (
                r#" [{"name": "weather", "arguments": {}}]"#,
                vec![call("weather", "{}")],
            ),
            ("[1, 2]", vec![content("[1, 2]")]),
            ("[]", vec![content("[]")]),
            ("Sure, [TOOL", vec![content("Sure, [TOOL")]),
            ("[TOOL_CALLS", vec![content("[TOOL_CALLS")]),
        ];
        for (text, want) in cases {
            check_whole_and_by_char(ToolCallParser::Mistral, text, &want);
        }
    }

    #[test]
    fn a_named_object_is_one_call() {
        let p = ToolCallParser::NamedObject;
        assert_eq!(
            parse_all(p, r#"{"weather": {"city": "Oslo"}}"#),
            vec![call("weather", r#"{"city":"Oslo"}"#)]
        );
        // Cut short (max_tokens) or not one key: text.
        for text in [r#"{"weather": {"ci"#, r#"{"a": {}, "b": {}}"#, "{}"] {
            assert_eq!(merged(parse_all(p, text)), vec![content(text)], "{text}");
        }
    }

    #[test]
    fn parsers_are_named_as_in_vllm() {
        for name in ToolCallParser::NAMES {
            assert!(ToolCallParser::from_name(name).is_some());
        }
        assert_eq!(ToolCallParser::from_name("pythonic"), None);
    }
}
