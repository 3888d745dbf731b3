//! Hugging Face style Jinja chat templates, rendered with minijinja.
//!
//! The environment mirrors `transformers`' `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks` are on, Python string/dict methods are available (`.strip()`,
//! `.startswith()`, `.items()`, ...), and the helper functions templates call exist:
//! `raise_exception`, `strftime_now` and a Python-compatible `tojson`.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;

mod pyjson;
mod time;

const TEMPLATE_NAME: &str = "chat_template";
/// Global holding a fixed Unix time for `strftime_now`; absent means the system clock.
const FIXED_TIME_GLOBAL: &str = "__hearth_fixed_unix_time";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant`, ... (the template decides what it accepts).
    pub role: String,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// The message as the template sees it: a map with `role` and `content`.
    fn to_value(&self) -> Value {
        Value::from_pairs(
            [("role", &self.role), ("content", &self.content)].map(|(k, v)| (k, v.as_str())),
        )
    }
}

/// A compiled chat template plus the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` once. `bos_token` / `eos_token` are the texts the template sees as
    /// `bos_token` / `eos_token` (left undefined when `None`).
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        Ok(Self {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// Makes `strftime_now` report this Unix time (UTC) instead of the current time, for
    /// reproducible prompts.
    pub fn with_fixed_time(mut self, unix_seconds: i64) -> Self {
        self.env.add_global(FIXED_TIME_GLOBAL, unix_seconds);
        self
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. With `add_generation_prompt`, the template appends the header
    /// that opens the assistant's reply.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::TemplateRender(e.to_string()))?;
        let token = |t: &Option<String>| t.as_deref().map_or(Value::UNDEFINED, Value::from);
        let ctx = context! {
            messages => messages.iter().map(ChatMessage::to_value).collect::<Value>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => token(&self.bos_token),
            eos_token => token(&self.eos_token),
        };
        template
            .render(ctx)
            .map_err(|e| TokenizerError::TemplateRender(e.to_string()))
    }
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC date/time formatted like Python's `strftime`.
fn strftime_now(state: &State, format: &str) -> Result<String, Error> {
    let fixed = state.lookup(FIXED_TIME_GLOBAL).and_then(|v| v.as_i64());
    let now = fixed.unwrap_or_else(time::system_unix_seconds);
    Ok(time::strftime(format, now))
}

/// `tojson`, as Python's `json.dumps(value, ensure_ascii=False)`: unlike minijinja's built-in it
/// does not HTML-escape, and it uses Python's separators.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let options = pyjson::Options {
        indent,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    if value.kind() == ValueKind::Invalid {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "cannot serialize to JSON",
        ));
    }
    Ok(pyjson::to_string(value, &options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        ChatTemplate::new(source.into(), Some("<s>".into()), Some("</s>".into()))?
            .with_fixed_time(1_721_952_000) // 2024-07-26 00:00:00 UTC
            .render(messages, true)
    }

    #[test]
    fn python_methods_and_helpers() {
        let msgs = [ChatMessage::new("user", "  Hi  ")];
        let out = render(
            "{{ bos_token }}{% for m in messages %}{{ m.content.strip() }}\
             {% if m.role.startswith('us') %}!{% endif %}{% endfor %}\
             {{ strftime_now('%d %b %Y') }}{{ {'a': '<b>', 'c': [1, 2.5]} | tojson }}",
            &msgs,
        )
        .unwrap();
        assert_eq!(out, r#"<s>Hi!26 Jul 2024{"a": "<b>", "c": [1, 2.5]}"#);
    }

    #[test]
    fn raise_exception_is_an_error() {
        let err = render("{{ raise_exception('roles must alternate') }}", &[]).unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateRender(_)));
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = ChatTemplate::new("{% for x in %}".into(), None, None).unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err}");
    }

    #[test]
    fn loop_controls_and_undefined_bos() {
        let msgs = [ChatMessage::new("a", "1"), ChatMessage::new("b", "2")];
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}\
             {{ m.content }}{% break %}{% endfor %}"
                .into(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&msgs, false).unwrap(), "2");
    }

    #[test]
    fn trim_and_lstrip_blocks() {
        let out = render("  {% if true %}\nx\n  {% endif %}\ny", &[]).unwrap();
        assert_eq!(out, "x\ny");
    }
}
