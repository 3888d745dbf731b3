use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model slice.
///
/// Variants name the file, tensor or field at fault so that a user can act on the message.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid {format} file: {detail}")]
    Format {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    #[error("{file}: field `{field}`: {detail}")]
    Config {
        file: PathBuf,
        field: String,
        detail: String,
    },
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor `{name}` has shape {got:?}, the config implies {expected:?}")]
    TensorShape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error(transparent)]
    BlockRange(#[from] hearth_core::BlockRangeError),
    #[error("hidden states have shape {got:?}; this slice expects [batch=1, tokens>=1, {hidden}]")]
    HiddenShape { got: Vec<usize>, hidden: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("unknown or expired session {0}")]
    UnknownSession(u64),
    #[error("session {id}: {tokens} tokens would exceed its length limit of {max_len}")]
    SessionFull {
        id: u64,
        tokens: usize,
        max_len: usize,
    },
    #[error(
        "session {id}: step starts at position {requested} but only {cached} positions are cached"
    )]
    PositionGap {
        id: u64,
        requested: usize,
        cached: usize,
    },
    #[error(
        "KV-cache budget exhausted: {requested} bytes requested, {available} of {budget} available"
    )]
    CacheBudget {
        requested: u64,
        available: u64,
        budget: u64,
    },
    #[error("too many open sessions (limit {0})")]
    TooManySessions(usize),
    #[error("session length {requested} exceeds the limit {limit}")]
    MaxLenTooLarge { requested: usize, limit: usize },
    #[error("session {0} appears more than once in one batch; only its first step runs")]
    DuplicateInBatch(u64),
    #[error("invalid device {0:?}: expected `cpu` or `cuda:N`")]
    Device(String),
    /// A stage outside this engine failed: a swarm chain that could not be replaced (its own
    /// typed error inside, for callers to downcast), or the shared head batcher stopping.
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Tokenizer(#[from] hearth_tokenizer::TokenizerError),
    #[error(transparent)]
    Sampling(#[from] hearth_sampling::SamplingError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

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
