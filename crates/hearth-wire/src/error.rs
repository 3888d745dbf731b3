use thiserror::Error;

/// Why bytes from a peer were rejected. Every variant names the field, so a log line tells which
/// side broke the protocol.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WireError {
    /// The input ended before a field was complete.
    #[error("{what}: message truncated (need {need} more bytes, have {have})")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needed.
        need: usize,
        /// Bytes that were left in the input.
        have: usize,
    },
    /// A declared length, count or value exceeds its protocol limit (see [`crate::Limits`]).
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLarge {
        /// The field whose length or value was checked.
        what: &'static str,
        /// The length or value the peer sent.
        len: usize,
        /// The largest value the limit allows.
        max: usize,
    },
    /// A field decoded but its value is not allowed (unknown code, bad span, not UTF-8, ...).
    #[error("{what}: {detail}")]
    BadValue {
        /// The field that was rejected.
        what: &'static str,
        /// Why the value was rejected, for humans.
        detail: String,
    },
    /// A message decoded completely but bytes were left over after it.
    #[error("{what}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The message that was decoded.
        what: &'static str,
        /// How many bytes were left unread.
        extra: usize,
    },
    /// The message's leading version byte is not the one this build speaks.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version {
        /// The version byte the peer sent.
        got: u8,
        /// This build's [`crate::VERSION`].
        supported: u8,
    },
    /// The message kind byte (the one after the version) names no known message.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A signature or its public key is invalid, or a signed record is not the one expected
    /// (another signer, another body); names the record.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
}

/// Result of decoding or verifying wire data; the error defaults to [`WireError`].
pub type Result<T, E = WireError> = std::result::Result<T, E>;
