//! The engine's error type, [`EngineError`], and its [`Result`] alias.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model slice.
///
/// Variants name the file, tensor or field at fault so that a user can act on the message.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading or mapping a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A model file is not valid in its format (safetensors, GGUF, JSON).
    #[error("{path}: not a valid {format} file: {detail}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// The format it was read as (`"safetensors"`, `"GGUF"`, ...).
        format: &'static str,
        /// What the parser found wrong.
        detail: String,
    },
    /// A model configuration field is missing or has an unusable value.
    #[error("{file}: field `{field}`: {detail}")]
    Config {
        /// The file holding the field (`config.json`, a shard index or a GGUF file).
        file: PathBuf,
        /// Name of the field at fault.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A tensor that the configuration requires is not in the model files.
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor {
        /// The file (or model directory) that was searched.
        file: PathBuf,
        /// The tensor's name as the file format spells it.
        name: String,
    },
    /// A tensor's stored shape differs from the one the configuration implies.
    #[error("{file}: tensor `{name}` has shape {got:?}, the config implies {expected:?}")]
    TensorShape {
        /// The file holding the tensor (empty when it did not come from a file).
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// The model or request needs something this engine does not implement.
    #[error("unsupported {what}: {detail}")]
    Unsupported {
        /// The kind of thing (architecture, tensor type, device, ...).
        what: &'static str,
        /// Which one, and why it is not supported.
        detail: String,
    },
    /// A block range is empty, malformed or outside the model.
    #[error(transparent)]
    BlockRange(#[from] hearth_core::BlockRangeError),
    /// Hidden states passed to a slice do not have the shape `[1, tokens >= 1, hidden]`.
    #[error("hidden states have shape {got:?}; this slice expects [batch=1, tokens>=1, {hidden}]")]
    HiddenShape {
        /// Shape received.
        got: Vec<usize>,
        /// The model's hidden size.
        hidden: usize,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The offending token id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab: usize,
    },
    /// No open session has this id: it never existed, was closed, or expired when idle.
    #[error("unknown or expired session {0}")]
    UnknownSession(u64),
    /// A step would take a session past the `max_len` positions it was opened with.
    #[error("session {id}: {tokens} tokens would exceed its length limit of {max_len}")]
    SessionFull {
        /// The session.
        id: u64,
        /// Positions the session would hold after the step.
        tokens: usize,
        /// Positions the session was opened with room for.
        max_len: usize,
    },
    /// A step starts past the end of the session's cache, which would leave positions unfilled.
    #[error(
        "session {id}: step starts at position {requested} but only {cached} positions are cached"
    )]
    PositionGap {
        /// The session.
        id: u64,
        /// Position the step starts at.
        requested: usize,
        /// Positions already cached (the largest valid start).
        cached: usize,
    },
    /// Opening a session would reserve more KV cache than the server's budget has left.
    #[error(
        "KV-cache budget exhausted: {requested} bytes requested, {available} of {budget} available"
    )]
    CacheBudget {
        /// Bytes of KV cache the session needed more (to open, or to grow for a step).
        requested: u64,
        /// Bytes of the budget not reserved by open sessions.
        available: u64,
        /// Bytes all sessions together may reserve.
        budget: u64,
    },
    /// A session would take its owner's share of the KV cache ([`crate::CacheQuota`]) past its
    /// limit.
    #[error(
        "this client's share of the KV cache is exhausted: {requested} bytes requested, \
         {available} of {quota} available"
    )]
    CacheQuota {
        /// Bytes of KV cache the session needed more.
        requested: u64,
        /// Bytes of the share not reserved by the owner's open sessions.
        available: u64,
        /// Bytes the owner's sessions together may reserve.
        quota: u64,
    },
    /// The server already has its maximum number of sessions open (the limit inside).
    #[error("too many open sessions (limit {0})")]
    TooManySessions(usize),
    /// A session asked for a `max_len` of zero or above the server's cap.
    #[error("session length {requested} exceeds the limit {limit}")]
    MaxLenTooLarge {
        /// Positions asked for.
        requested: usize,
        /// Largest `max_len` the server accepts.
        limit: usize,
    },
    /// A session id appears more than once in one batched step; its later steps are refused.
    #[error("session {0} appears more than once in one batch; only its first step runs")]
    DuplicateInBatch(u64),
    /// A device string is neither `cpu` nor `cuda:N` (the string as given inside).
    #[error("invalid device {0:?}: expected `cpu` or `cuda:N`")]
    Device(String),
    /// A stage outside this engine failed: a swarm chain that could not be replaced (its own
    /// typed error inside, for callers to downcast), or the shared head batcher stopping.
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync>),
    /// Tokenizing or detokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] hearth_tokenizer::TokenizerError),
    /// The sampling parameters are invalid or sampling failed.
    #[error(transparent)]
    Sampling(#[from] hearth_sampling::SamplingError),
    /// A tensor operation of the candle backend failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A result whose error defaults to [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::Config {
            file: file.into(),
            field: field.into(),
            detail: detail.into(),
        }
    }
}
