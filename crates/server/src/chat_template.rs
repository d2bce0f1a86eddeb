//! Chat templates: the model's Jinja template from tokenizer_config.json, rendered with
//! minijinja the way transformers' `apply_chat_template` does (trim_blocks, lstrip_blocks,
//! Python string methods, `raise_exception`, `bos_token` / `eos_token`).
//!
//! A model without a template gets [`FALLBACK_TEMPLATE`] (logged at start-up, and overridable
//! with `--chat-template`): one `role: content` line per message, then `assistant:` when a
//! generation prompt is asked for, after the BOS token.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::api::chat::{ChatMessage, MessageContent};
use crate::error::ApiError;

/// Used when the model has no chat template of its own.
pub const FALLBACK_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// True when this is [`FALLBACK_TEMPLATE`].
    pub is_fallback: bool,
}

#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a [serde_json::Value]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)` (transformers provides it; Llama 3 templates put today's date in the
/// system prompt). UTC; supports %Y %m %d %H %M %S %b %B %%.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (unix_secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs_of_day = unix_secs % 86_400;
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles `source` (or the fallback when `None`).
    pub fn new(
        source: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, String> {
        let is_fallback = source.is_none();
        let source = source.unwrap_or_else(|| FALLBACK_TEMPLATE.to_string());
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source)
            .map_err(|e| format!("the chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            is_fallback,
        })
    }

    /// Renders `messages` (and `tools`, the template's `tools` variable, when there are some);
    /// errors are the client's (bad messages) and answer 400.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, ApiError> {
        if messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "messages must contain at least one message",
            ));
        }
        let mut rendered = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "messages[{i}].role must be one of {}, got {:?}",
                        ROLES.join(", "),
                        m.role
                    ),
                ));
            }
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    "messages",
                                    format!(
                                        "messages[{i}]: only text content parts are supported, got {kind:?}"
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            rendered.push(TemplateMessage {
                role: &m.role,
                content,
                name: m.name.as_deref(),
                tool_calls: m.tool_calls.as_deref(),
                tool_call_id: m.tool_call_id.as_deref(),
            });
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ApiError::internal(format!("chat template: {e}")))?;
        template
            .render(minijinja::context! {
                messages => rendered,
                tools => tools.filter(|t| !t.is_empty()),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                ApiError::invalid_param(
                    "messages",
                    format!("the chat template refused the messages: {e}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    #[test]
    fn fallback_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::new(None, Some("<s>".into()), None).unwrap();
        let text = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], None, true)
            .unwrap();
        assert_eq!(text, "<s>system: Be brief.\nuser: Hi\nassistant:");
        assert!(t.is_fallback);
    }

    #[test]
    fn hf_style_templates_work_with_python_methods_and_raise_exception() {
        let source = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}\
            <|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let t = ChatTemplate::new(Some(source.into()), None, Some("</s>".into())).unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hello ")], None, true).unwrap(),
            "<|user|>hello</s>\n<|assistant|>"
        );
        let e = t.render(&[msg("system", "x")], None, true).unwrap_err();
        assert!(e.message.contains("bad role"), "{}", e.message);
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2026-11-23 12:34:56 UTC.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %B %%", 1_795_437_296),
            "23 Nov 2026 12:34:56 November %"
        );
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }

    #[test]
    fn bad_messages_are_client_errors() {
        let t = ChatTemplate::new(None, None, None).unwrap();
        assert_eq!(
            t.render(&[], None, true).unwrap_err().param.as_deref(),
            Some("messages")
        );
        assert!(t.render(&[msg("wizard", "x")], None, true).is_err());
    }

    #[test]
    fn tools_and_tool_turns_reach_the_template() {
        let source = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}\
            {% for m in messages %}{{ m.role }}:{{ m.content }}\
            {% if m.tool_calls %}{{ m.tool_calls[0].function.name }}{% endif %}\
            {% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %};{% endfor %}";
        let t = ChatTemplate::new(Some(source.into()), None, None).unwrap();
        let tools = [serde_json::json!({"type": "function", "function": {"name": "weather"}})];
        let call = serde_json::json!({"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": "{}"}});
        let messages = [
            msg("user", "Rain?"),
            ChatMessage {
                tool_calls: Some(vec![call]),
                ..msg("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("c1".into()),
                ..msg("tool", "yes")
            },
        ];
        assert_eq!(
            t.render(&messages, Some(&tools), false).unwrap(),
            "[weather]user:Rain?;assistant:weather;tool:yes#c1;"
        );
        // Without tools the variable is undefined, as in transformers.
        assert_eq!(
            t.render(&messages[..1], None, false).unwrap(),
            "user:Rain?;"
        );
    }
}
