//! Tokenizers from a Hugging Face model folder.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::TokenizerError;
use crate::stream::PieceKind;
use crate::template::ChatTemplate;
use crate::{Parts, Tokenizer};

const TOKENIZER_JSON: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TEMPLATE_FILE: &str = "chat_template.jinja";

pub(crate) fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let json_path = dir.join(TOKENIZER_JSON);
    let inner = tokenizers::Tokenizer::from_str(&read(&json_path)?)
        .map_err(|e| bad_file(&json_path, e.to_string()))?;

    let config_path = dir.join(TOKENIZER_CONFIG);
    let config = read_json_object(&config_path)?.unwrap_or_default();
    let field = |name: &str| Field {
        path: &config_path,
        name: name.to_owned(),
        value: config.get(name).filter(|v| !v.is_null()),
    };

    let bos_text = field("bos_token").token_text()?;
    let eos_text = field("eos_token").token_text()?;
    let id_of = |text: &Option<String>, name: &str| -> Result<Option<u32>, TokenizerError> {
        text.as_deref()
            .map(|t| {
                inner.token_to_id(t).ok_or_else(|| {
                    bad_file(
                        &config_path,
                        format!("`{name}` `{t}` is not in the vocabulary"),
                    )
                })
            })
            .transpose()
    };
    let bos = id_of(&bos_text, "bos_token")?;
    let mut eos: Vec<u32> = id_of(&eos_text, "eos_token")?.into_iter().collect();

    let vocab_size = inner.get_vocab_size(true);
    let generation_path = dir.join(GENERATION_CONFIG);
    if let Some(generation) = read_json_object(&generation_path)? {
        let ids = match generation.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single) => vec![single],
        };
        for id in ids {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .filter(|&id| (id as usize) < vocab_size)
                .ok_or_else(|| {
                    bad_file(
                        &generation_path,
                        format!("`eos_token_id` {id} is not a token id"),
                    )
                })?;
            eos.push(id);
        }
    }

    let add_bos = match field("add_bos_token").value {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad_file(
                &config_path,
                format!("`add_bos_token` should be a bool, found {other}"),
            ))
        }
        // No explicit setting: the BOS is added by tokenizer.json's post-processor, if at all.
        None => match bos {
            Some(bos) => inner
                .encode_fast("", true)
                .map(|e| e.get_ids().contains(&bos))
                .unwrap_or(false),
            None => false,
        },
    };

    let template_path = dir.join(TEMPLATE_FILE);
    let source = if template_path.is_file() {
        Some(read(&template_path)?)
    } else {
        field("chat_template").template_source()?
    };
    let template = source
        .map(|s| ChatTemplate::new(s, bos_text, eos_text))
        .transpose()?;

    Tokenizer::assemble(Parts {
        pieces: PieceKind::detect(inner.get_decoder()),
        inner,
        vocab_size,
        bos,
        eos,
        add_bos,
        template,
    })
}

/// A possibly absent field of `tokenizer_config.json`.
struct Field<'a> {
    path: &'a Path,
    name: String,
    value: Option<&'a Value>,
}

impl Field<'_> {
    fn error(&self, expected: &str) -> TokenizerError {
        let found = self.value.map_or_else(String::new, Value::to_string);
        bad_file(
            self.path,
            format!("`{}` should be {expected}, found {found}", self.name),
        )
    }

    /// Special tokens are written either as a string or as an AddedToken object.
    fn token_text(&self) -> Result<Option<String>, TokenizerError> {
        match self.value {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(self.error("a string or an object with a `content` string")),
            },
            Some(_) => Err(self.error("a string or an object with a `content` string")),
        }
    }

    /// A single template, or a list of `{name, template}` where `default` wins (else the first).
    fn template_source(&self) -> Result<Option<String>, TokenizerError> {
        let expected = "a string or a list of {name, template}";
        match self.value {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Array(items)) => {
                let mut named = Vec::with_capacity(items.len());
                for item in items {
                    match (item.get("name"), item.get("template")) {
                        (Some(Value::String(n)), Some(Value::String(t))) => named.push((n, t)),
                        _ => return Err(self.error(expected)),
                    }
                }
                let chosen = named
                    .iter()
                    .find(|(n, _)| n.as_str() == "default")
                    .or(named.first());
                Ok(chosen.map(|(_, t)| (*t).clone()))
            }
            Some(_) => Err(self.error(expected)),
        }
    }
}

fn bad_file(path: &Path, reason: String) -> TokenizerError {
    TokenizerError::BadFile {
        path: PathBuf::from(path),
        reason,
    }
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads an optional JSON object file; `None` if the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    match serde_json::from_str(&read(path)?) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(bad_file(path, "expected a JSON object".into())),
        Err(e) => Err(bad_file(path, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: &Value) -> Field<'_> {
        Field {
            path: Path::new("tokenizer_config.json"),
            name: "chat_template".into(),
            value: Some(value),
        }
    }

    #[test]
    fn template_lists_prefer_default() {
        let list = serde_json::json!([
            {"name": "rag", "template": "R"},
            {"name": "default", "template": "D"},
        ]);
        assert_eq!(
            field(&list).template_source().unwrap().as_deref(),
            Some("D")
        );
        let list = serde_json::json!([{"name": "rag", "template": "R"}]);
        assert_eq!(
            field(&list).template_source().unwrap().as_deref(),
            Some("R")
        );
        assert!(field(&serde_json::json!([]))
            .template_source()
            .unwrap()
            .is_none());
        assert!(field(&serde_json::json!({"x": 1}))
            .template_source()
            .is_err());
    }

    #[test]
    fn token_fields() {
        let text = |v: Value| field(&v).token_text().map(|t| t.unwrap_or_default());
        assert_eq!(text(serde_json::json!("<s>")).unwrap(), "<s>");
        assert_eq!(text(serde_json::json!({"content": "<s>"})).unwrap(), "<s>");
        let err = text(serde_json::json!(["<s>"])).unwrap_err();
        assert!(err.to_string().contains("chat_template"), "{err}");
    }
}
