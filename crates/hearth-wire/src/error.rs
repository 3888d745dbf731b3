use thiserror::Error;

/// Why bytes from a peer were rejected. Every variant names the field, so a log line tells which
/// side broke the protocol.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WireError {
    #[error("{what}: message truncated (need {need} more bytes, have {have})")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {detail}")]
    BadValue { what: &'static str, detail: String },
    #[error("{what}: {extra} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version { got: u8, supported: u8 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
}

pub type Result<T, E = WireError> = std::result::Result<T, E>;
