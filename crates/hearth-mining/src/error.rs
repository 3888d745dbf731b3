//! The one error type of this crate.
//!
//! Every failure that comes from outside (a miner that does not answer, a pool that sends
//! garbage, a reply that is too large) maps to a variant here; nothing in this crate panics on
//! outside data.

use std::time::Duration;

/// Errors of the miner-control paths.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (e.g. `connect 10.0.0.5:4028`).
        what: String,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not answer within the limit.
    #[error("{what}: no answer within {limit:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The limit that ran out.
        limit: Duration,
    },
    /// A reply or line was longer than the limit (it was not read further).
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent something that does not follow the protocol.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The miner answered with STATUS "E" or "F" (cgminer/bmminer/LuxOS API).
    #[error("miner refused `{command}`: {msg} (STATUS {status}, Code {code})")]
    Refused {
        /// The command that was refused.
        command: String,
        /// "E" (error) or "F" (fatal).
        status: String,
        /// The API's message code.
        code: i64,
        /// The API's message text.
        msg: String,
    },
    /// The pool answered a request with an error (Stratum).
    #[error("pool error on {method}: {detail}")]
    Pool {
        /// The request method.
        method: String,
        /// The error the pool gave.
        detail: String,
    },
    /// The configuration asks for something this crate does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The built-in miner has been shut down.
    #[error("the built-in miner has been shut down")]
    Stopped,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// True when retrying later may help (the miner or pool did not answer or the link
    /// dropped); false for answers that will not change (refusals, malformed data).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Timeout { .. })
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
