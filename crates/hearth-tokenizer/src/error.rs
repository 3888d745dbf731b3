//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building a tokenizer, encoding, decoding or rendering a chat
/// template. Messages name the metadata key, file or template that caused the problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key (GGUF) or configuration field (HF) is absent.
    #[error("missing metadata key `{key}`")]
    MissingKey {
        /// The GGUF metadata key or configuration field.
        key: String,
    },
    /// A metadata key or configuration field is present but unusable (wrong type, out of range,
    /// inconsistent with other keys).
    #[error("bad value for `{key}`: {reason}")]
    BadValue {
        /// The GGUF metadata key or configuration field.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The metadata asks for a tokenizer flavour this crate does not implement.
    #[error("unsupported `{key}` = `{value}`")]
    Unsupported {
        /// The GGUF metadata key.
        key: String,
        /// The unsupported value.
        value: String,
    },
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file was read but its contents are not usable.
    #[error("bad file `{path}`: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A chat template failed to compile.
    #[error("chat template does not compile: {0}")]
    TemplateSyntax(String),
    /// A chat template failed while rendering (including `raise_exception` from the template).
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
    /// A token id is not in the vocabulary.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// Size of the vocabulary.
        vocab_size: usize,
    },
    /// The underlying tokenizer failed to encode or decode.
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    /// Invalid arguments to [`crate::SyntheticVocab::new`].
    #[error("synthetic vocabulary: {0}")]
    Synthetic(String),
}

impl TokenizerError {
    /// Shorthand for [`TokenizerError::BadValue`].
    pub(crate) fn bad(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadValue {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TokenizerError::MissingKey`].
    pub(crate) fn missing(key: impl Into<String>) -> Self {
        Self::MissingKey { key: key.into() }
    }
}
