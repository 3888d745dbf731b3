//! How a failed generation is answered: the HTTP status and OpenAI error body, and the kind it is
//! counted under in `/metrics`.
//!
//! A swarm chain's [`SwarmError`] reaches the gateway inside `EngineError::Remote` (the engine
//! does not know the swarm) and keeps its [`SwarmErrorKind`]; failures of the gateway's own
//! engine (head, sampling, in-process slices) count as [`SwarmErrorKind::Engine`].
//!
//! Statuses, by kind:
//! - `no_coverage`, `no_route`, `hops_exhausted`, `unreachable` → 503 + `Retry-After`: the swarm
//!   lacks working nodes for some blocks now; nodes joining or coming back fix it;
//! - `peer_misbehaved` → 502: the route answered with bad data;
//! - `timeout` → 504: a node on the route accepted the work but did not answer in time, the
//!   textbook gateway timeout (not 503: the swarm had capacity on paper, and retrying at once
//!   may hit the same slow node). A swarm chain reports timeouts and unreachable nodes inside
//!   `hops_exhausted` (a slow node stays a last-resort candidate), so this is for bare ones;
//! - `engine` → 500, except a full local cache or session table → 503 + `Retry-After`;
//! - `io`, `invalid_input`, `internal` and any future kind → 500: the gateway's own fault
//!   (client input is validated before any generation starts).

use crate::openai::ApiError;
use axum::http::StatusCode;
use hearth_engine::EngineError;
use hearth_swarm::{SwarmError, SwarmErrorKind};

/// A failed generation, ready to answer and to count.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The kind it is counted under in `/metrics` (`engine` for the gateway's own engine).
    pub kind: SwarmErrorKind,
    /// The error response: status by kind (see the module docs) and an OpenAI error body.
    pub error: ApiError,
}

impl Failure {
    /// Classifies the error a backend's generation ended with.
    pub fn of(e: &EngineError) -> Self {
        match swarm_error(e) {
            Some(SwarmError::Engine(inner)) => Self::engine(inner),
            Some(swarm) => {
                let kind = swarm.kind();
                let message = format!("The swarm could not complete this generation: {swarm}");
                Self {
                    kind,
                    error: api_error(status_of(kind), message),
                }
            }
            None => Self::engine(e),
        }
    }

    fn engine(e: &EngineError) -> Self {
        let status = match e {
            EngineError::CacheBudget { .. }
            | EngineError::CacheQuota { .. }
            | EngineError::TooManySessions(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => status_of(SwarmErrorKind::Engine),
        };
        Self {
            kind: SwarmErrorKind::Engine,
            error: api_error(status, format!("The generation failed: {e}")),
        }
    }
}

/// The swarm's own error inside an engine error, if it came from a swarm chain.
fn swarm_error(e: &EngineError) -> Option<&SwarmError> {
    match e {
        EngineError::Remote(inner) => inner.downcast_ref::<SwarmError>(),
        _ => None,
    }
}

/// The status a failure of `kind` is answered with (see the module docs).
pub fn status_of(kind: SwarmErrorKind) -> StatusCode {
    match kind {
        SwarmErrorKind::NoCoverage
        | SwarmErrorKind::NoRoute
        | SwarmErrorKind::HopsExhausted
        | SwarmErrorKind::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        SwarmErrorKind::PeerMisbehaved => StatusCode::BAD_GATEWAY,
        SwarmErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body for `status` (503s carry `Retry-After`).
fn api_error(status: StatusCode, message: String) -> ApiError {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(message),
        StatusCode::BAD_GATEWAY => ApiError::bad_gateway(message),
        StatusCode::GATEWAY_TIMEOUT => ApiError::gateway_timeout(message),
        _ => ApiError::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::BlockRange;
    use libp2p::PeerId;
    use std::time::Duration;

    fn blocks() -> BlockRange {
        BlockRange::new(3, 6).expect("valid range")
    }

    /// One error of each kind, as a swarm chain hands it to the engine.
    fn swarm_failure(kind: SwarmErrorKind) -> EngineError {
        let peer = PeerId::random();
        let e = match kind {
            SwarmErrorKind::NoCoverage => SwarmError::NoCoverage { blocks: blocks() },
            SwarmErrorKind::NoRoute => SwarmError::NoRoute { blocks: blocks() },
            SwarmErrorKind::HopsExhausted => SwarmError::HopsExhausted {
                blocks: blocks(),
                failovers: 8,
                last: Box::new(SwarmError::PeerMisbehaved {
                    peer,
                    reason: "bad".into(),
                }),
            },
            SwarmErrorKind::PeerMisbehaved => SwarmError::PeerMisbehaved {
                peer,
                reason: "non-finite hidden state at row 0, column 1".into(),
            },
            SwarmErrorKind::Unreachable => SwarmError::Unreachable {
                peer,
                reason: "the node closed the stream".into(),
            },
            SwarmErrorKind::Timeout => SwarmError::Timeout {
                peer,
                after: Duration::from_secs(30),
            },
            SwarmErrorKind::Io => SwarmError::Io {
                context: "listening".into(),
                source: std::io::Error::other("address in use"),
            },
            SwarmErrorKind::Engine => SwarmError::Engine(EngineError::Device("tpu".into())),
            SwarmErrorKind::InvalidInput => SwarmError::InvalidInput("0 blocks".into()),
            _ => SwarmError::Internal("a bug".into()),
        };
        assert_eq!(e.kind(), kind, "the test builds the kind it names");
        EngineError::Remote(Box::new(e))
    }

    #[test]
    fn every_swarm_kind_has_its_status_and_retry_after_only_on_503() {
        use SwarmErrorKind as K;
        let expected = [
            (K::NoCoverage, 503),
            (K::NoRoute, 503),
            (K::HopsExhausted, 503),
            (K::PeerMisbehaved, 502),
            (K::Unreachable, 503),
            (K::Timeout, 504),
            (K::Io, 500),
            (K::Engine, 500),
            (K::InvalidInput, 500),
            (K::Internal, 500),
        ];
        let listed: Vec<K> = expected.iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, K::ALL, "every kind needs an expected status here");
        for (kind, status) in expected {
            let failure = Failure::of(&swarm_failure(kind));
            assert_eq!(failure.kind, kind);
            assert_eq!(failure.error.status.as_u16(), status, "{kind}");
            assert_eq!(status_of(kind).as_u16(), status, "{kind}");
            assert_eq!(failure.error.retry_after.is_some(), status == 503, "{kind}");
            assert_eq!(failure.error.kind, "server_error");
            assert!(!failure.error.message.is_empty());
        }
    }

    #[test]
    fn messages_name_what_failed() {
        let f = Failure::of(&swarm_failure(SwarmErrorKind::NoCoverage));
        assert!(
            f.error.message.contains("blocks 3..6"),
            "{}",
            f.error.message
        );
        let f = Failure::of(&swarm_failure(SwarmErrorKind::PeerMisbehaved));
        assert!(
            f.error.message.contains("non-finite"),
            "{}",
            f.error.message
        );
        assert_eq!(f.error.code, Some("bad_gateway"));
    }

    #[test]
    fn local_engine_failures_count_as_engine_and_capacity_is_503() {
        let full = Failure::of(&EngineError::TooManySessions(256));
        assert_eq!(full.kind, SwarmErrorKind::Engine);
        assert_eq!(full.error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(full.error.retry_after.is_some());
        let bug = Failure::of(&EngineError::Device("tpu".into()));
        assert_eq!(bug.kind, SwarmErrorKind::Engine);
        assert_eq!(bug.error.status, StatusCode::INTERNAL_SERVER_ERROR);
        // A stage error that is not the swarm's (the head batcher stopping) is the engine's.
        let stopped = Failure::of(&EngineError::Remote("the head batcher stopped".into()));
        assert_eq!(stopped.kind, SwarmErrorKind::Engine);
        assert_eq!(stopped.error.status, StatusCode::INTERNAL_SERVER_ERROR);
        // The swarm wrapping a capacity error of the engine keeps the capacity status.
        let wrapped = Failure::of(&EngineError::Remote(Box::new(SwarmError::Engine(
            EngineError::TooManySessions(1),
        ))));
        assert_eq!(wrapped.error.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
