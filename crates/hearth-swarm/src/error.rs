//! The one error type of the swarm's public API, and its fieldless [`SwarmErrorKind`] for
//! callers that act on the kind (HTTP statuses, metrics) rather than the message.
//!
//! Invariants:
//! - every `pub` function of this crate that can fail returns [`SwarmError`];
//! - [`SwarmError::kind`] is total and [`SwarmErrorKind::ALL`] lists every kind once, so a
//!   caller's table over the kinds (a metric label set, a status map) is finite and complete.

use hearth_core::BlockRange;
use hearth_engine::EngineError;
use libp2p::PeerId;
use std::time::Duration;

/// Shorthand for results of the swarm's API.
pub type Result<T, E = SwarmError> = std::result::Result<T, E>;

/// Why a swarm operation failed. Messages name the blocks, peer or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// No known server announces `blocks` (the first gap in coverage), even counting servers
    /// this chain gave up on. More nodes may join; retrying later can succeed.
    #[error("no server of the swarm covers blocks {blocks}")]
    NoCoverage {
        /// The first range of blocks no known server announces.
        blocks: BlockRange,
    },
    /// Some server announces every block, but only servers this chain caught misbehaving (and
    /// will not use again) cover `blocks`.
    #[error("no usable route for blocks {blocks}: every server of them misbehaved")]
    NoRoute {
        /// The blocks only banned servers cover.
        blocks: BlockRange,
    },
    /// Failover ran out of replacements for `blocks`: replacements existed but each failed in
    /// turn, or one step needed more failovers than allowed.
    #[error("gave up on blocks {blocks} after {failovers} failovers; last failure: {last}")]
    HopsExhausted {
        /// The blocks of the hop that could not be replaced.
        blocks: BlockRange,
        /// Failovers tried before giving up.
        failovers: usize,
        /// The hop failure that ended it (misbehaved, unreachable or timed out).
        #[source]
        last: Box<SwarmError>,
    },
    /// A peer broke the protocol: bad receipt signature, non-finite or wrongly shaped hidden
    /// states, an undecodable or unexpected message, a failed step. The chain never uses it
    /// again.
    #[error("peer {peer} misbehaved: {reason}")]
    PeerMisbehaved {
        /// The peer at fault.
        peer: PeerId,
        /// What it did wrong.
        reason: String,
    },
    /// A peer could not be reached, dropped the stream, or refused the session (busy, paused,
    /// not serving those blocks). It may answer again later.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer that could not be used.
        peer: PeerId,
        /// What went wrong (dial error, stream closed, session refused and why).
        reason: String,
    },
    /// A peer did not answer within the configured time.
    #[error("peer {peer} did not answer within {after:?}")]
    Timeout {
        /// The peer that did not answer.
        peer: PeerId,
        /// How long it was waited for.
        after: Duration,
    },
    /// Local I/O or transport setup failed (key file, listening socket, libp2p transport).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `reading node.key`.
        context: String,
        /// The underlying error (a libp2p transport error is wrapped as `io::Error::other`).
        #[source]
        source: std::io::Error,
    },
    /// The local engine failed (loading or running this node's blocks).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A configuration or argument is unusable (block range outside the model, bad key file).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A broken invariant of this crate: a bug, never the network's or the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure a [`SwarmError`] is, without its details. Stable names for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SwarmErrorKind {
    /// [`SwarmError::NoCoverage`]: some blocks have no server at all.
    NoCoverage,
    /// [`SwarmError::NoRoute`]: only misbehaving servers cover some blocks.
    NoRoute,
    /// [`SwarmError::HopsExhausted`]: failover ran out of replacements for a hop.
    HopsExhausted,
    /// [`SwarmError::PeerMisbehaved`]: a peer sent bad data.
    PeerMisbehaved,
    /// [`SwarmError::Unreachable`]: a peer could not be reached or refused the session.
    Unreachable,
    /// [`SwarmError::Timeout`]: a peer did not answer in time.
    Timeout,
    /// [`SwarmError::Io`]: local I/O or transport setup failed.
    Io,
    /// [`SwarmError::Engine`]: the local engine failed.
    Engine,
    /// [`SwarmError::InvalidInput`]: unusable configuration or arguments.
    InvalidInput,
    /// [`SwarmError::Internal`]: a bug in this crate.
    Internal,
}

impl SwarmErrorKind {
    /// Every kind, once each.
    pub const ALL: [SwarmErrorKind; 10] = [
        Self::NoCoverage,
        Self::NoRoute,
        Self::HopsExhausted,
        Self::PeerMisbehaved,
        Self::Unreachable,
        Self::Timeout,
        Self::Io,
        Self::Engine,
        Self::InvalidInput,
        Self::Internal,
    ];

    /// A stable snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCoverage => "no_coverage",
            Self::NoRoute => "no_route",
            Self::HopsExhausted => "hops_exhausted",
            Self::PeerMisbehaved => "peer_misbehaved",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Engine => "engine",
            Self::InvalidInput => "invalid_input",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for SwarmErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SwarmError {
    /// The kind of this error.
    pub fn kind(&self) -> SwarmErrorKind {
        match self {
            Self::NoCoverage { .. } => SwarmErrorKind::NoCoverage,
            Self::NoRoute { .. } => SwarmErrorKind::NoRoute,
            Self::HopsExhausted { .. } => SwarmErrorKind::HopsExhausted,
            Self::PeerMisbehaved { .. } => SwarmErrorKind::PeerMisbehaved,
            Self::Unreachable { .. } => SwarmErrorKind::Unreachable,
            Self::Timeout { .. } => SwarmErrorKind::Timeout,
            Self::Io { .. } => SwarmErrorKind::Io,
            Self::Engine(_) => SwarmErrorKind::Engine,
            Self::InvalidInput(_) => SwarmErrorKind::InvalidInput,
            Self::Internal(_) => SwarmErrorKind::Internal,
        }
    }

    /// Local I/O that failed while doing `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A transport (libp2p) failure while doing `context`, kept as the I/O error's source.
    pub(crate) fn transport(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::io(context, std::io::Error::other(source))
    }

    /// A blocking task that panicked or was cancelled: a bug.
    pub(crate) fn join(what: &str, e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("{what}: {e}"))
    }
}

impl From<hearth_core::BlockRangeError> for SwarmError {
    fn from(e: hearth_core::BlockRangeError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn kinds_are_listed_once_with_distinct_snake_case_names() {
        let names: HashSet<&str> = SwarmErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), SwarmErrorKind::ALL.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        // Every variant's kind is in ALL (the match in `kind` is exhaustive; this checks ALL).
        let peer = PeerId::random();
        let blocks = BlockRange::new(2, 4).expect("valid range");
        let errors = [
            SwarmError::NoCoverage { blocks },
            SwarmError::NoRoute { blocks },
            SwarmError::HopsExhausted {
                blocks,
                failovers: 1,
                last: Box::new(SwarmError::Timeout {
                    peer,
                    after: Duration::from_secs(1),
                }),
            },
            SwarmError::PeerMisbehaved {
                peer,
                reason: "bad receipt".into(),
            },
            SwarmError::Unreachable {
                peer,
                reason: "closed".into(),
            },
            SwarmError::Timeout {
                peer,
                after: Duration::from_secs(1),
            },
            SwarmError::io("reading node.key", std::io::Error::other("denied")),
            SwarmError::Engine(EngineError::TooManySessions(1)),
            SwarmError::InvalidInput("x".into()),
            SwarmError::Internal("x".into()),
        ];
        let kinds: Vec<SwarmErrorKind> = errors.iter().map(SwarmError::kind).collect();
        assert_eq!(kinds, SwarmErrorKind::ALL);
    }

    #[test]
    fn exhausted_failover_names_its_blocks_and_last_failure() {
        let peer = PeerId::random();
        let e = SwarmError::HopsExhausted {
            blocks: BlockRange::new(3, 6).expect("valid range"),
            failovers: 8,
            last: Box::new(SwarmError::PeerMisbehaved {
                peer,
                reason: "non-finite hidden state".into(),
            }),
        };
        let text = e.to_string();
        assert!(
            text.contains("3..6") && text.contains("non-finite"),
            "{text}"
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some(format!("peer {peer} misbehaved: non-finite hidden state").as_str())
        );
    }
}
