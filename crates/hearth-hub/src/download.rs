//! Bounded, resumable HTTP downloads, hashed while they stream.
//!
//! **Invariants:** a download is written to `<dest>.part` and renamed to `<dest>` only when it
//! is complete and, if a digest was expected, matches it; so an existing `<dest>` is always a
//! whole file. A `.part` is kept only after a transient failure (a broken connection, a body
//! that ended early, an HTTP error status) so the next try resumes it with an HTTP `Range`
//! request; a mismatching, oversized or inconsistent download is deleted. Every size the
//! server states or sends is checked against [`Limits::max_bytes`]; every wait is bounded by a
//! timeout; one process at a time writes a `.part` (file lock).

use crate::{HubError, Progress, Sha256Digest};
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds on what a download may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest file accepted, in bytes.
    pub max_bytes: u64,
    /// The largest JSON answer accepted (registry metadata), in bytes.
    pub max_json_bytes: u64,
    /// Longest wait for a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Longest wait for an answer, and then for each next piece of a body.
    pub stall_timeout: Duration,
    /// Tries per download; each try after a transient failure resumes the `.part`.
    pub attempts: u32,
    /// Pause between tries.
    pub retry_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Above every single-file model people run (Hugging Face caps files at 50 GB).
            max_bytes: 256 << 30,
            max_json_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            attempts: 4,
            retry_delay: Duration::from_secs(2),
        }
    }
}

/// A digest a download must match, and where it came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// The sha256 the download must have.
    pub digest: Sha256Digest,
    /// E.g. "--sha256", "PyPI", "the server's X-Linked-ETag header".
    pub origin: String,
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct Downloaded {
    /// Where the file now is (the `dest` asked for).
    pub path: PathBuf,
    /// Its length, bytes.
    pub bytes: u64,
    /// Its sha256, computed while it was written.
    pub sha256: Sha256Digest,
}

/// Fetches URLs within [`Limits`]. Blocking: call it from a plain thread, not from inside an
/// async runtime (use `spawn_blocking` there).
pub struct Downloader {
    client: Client,
    /// Same, but never follows redirects: Hugging Face states a file's sha256 on the redirect.
    probe: Client,
    limits: Limits,
}

/// The `.part` file beside `dest`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".part");
    dest.with_file_name(name)
}

impl Downloader {
    /// A downloader with its HTTP clients set up for `limits`.
    pub fn new(limits: Limits) -> Result<Self, HubError> {
        let build = |redirect| {
            Client::builder()
                .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(limits.connect_timeout)
                // In the blocking client this bounds each wait (the answer, then every read of
                // the body), not the whole transfer.
                .timeout(limits.stall_timeout)
                .redirect(redirect)
                .build()
                .map_err(HubError::Client)
        };
        Ok(Self {
            client: build(reqwest::redirect::Policy::limited(10))?,
            probe: build(reqwest::redirect::Policy::none())?,
            limits,
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// GETs `url` and parses its JSON body (at most [`Limits::max_json_bytes`]).
    pub fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HubError> {
        let response = self
            .client
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .map_err(|source| transport(url, source))?;
        let response = success(url, response)?;
        let limit = self.limits.max_json_bytes;
        if let Some(bytes) = response.content_length().filter(|&n| n > limit) {
            return Err(too_large(url, bytes, limit));
        }
        let mut body = Vec::new();
        response
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|source| HubError::Interrupted {
                url: url.to_owned(),
                got: body.len() as u64,
                source,
            })?;
        if body.len() as u64 > limit {
            return Err(too_large(url, body.len() as u64, limit));
        }
        serde_json::from_slice(&body).map_err(|source| HubError::Json {
            url: url.to_owned(),
            source,
        })
    }

    /// The sha256 the server states for `url` without sending it, if any: a HEAD request,
    /// redirects not followed, reading `X-Linked-ETag` and then `ETag` when they hold 64 hex
    /// digits. Hugging Face answers `resolve/...` URLs of large (LFS) files this way; most other
    /// servers state nothing usable and this gives `None`.
    pub fn advertised_sha256(&self, url: &str) -> Result<Option<Checksum>, HubError> {
        let response = self
            .probe
            .head(url)
            .send()
            .map_err(|source| transport(url, source))?;
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Ok(None);
        }
        Ok(etag_digest(response.headers()))
    }

    /// Downloads `url` to `dest`, resuming `<dest>.part` if one is there, and checks it against
    /// `expected` when given. A mismatch deletes the download and names both digests.
    pub fn download(
        &self,
        url: &str,
        dest: &Path,
        expected: Option<&Checksum>,
        progress: &mut dyn Progress,
    ) -> Result<Downloaded, HubError> {
        let part = part_path(dest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(HubError::io(&part))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(HubError::Busy { path: part }),
            Err(TryLockError::Error(e)) => return Err(HubError::io(&part)(e)),
        }
        let result = self.download_with_retries(url, &file, &part, progress);
        let (bytes, sha256) = match result {
            Ok(done) => done,
            Err(e) => {
                let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
                if !(e.is_transient() || matches!(e, HubError::Status { .. })) || empty {
                    let _ = std::fs::remove_file(&part);
                }
                return Err(e);
            }
        };
        if let Some(expected) = expected {
            if expected.digest != sha256 {
                let _ = std::fs::remove_file(&part);
                return Err(HubError::HashMismatch {
                    url: url.to_owned(),
                    expected: expected.digest,
                    actual: sha256,
                    origin: expected.origin.clone(),
                });
            }
        }
        file.sync_all().map_err(HubError::io(&part))?;
        std::fs::rename(&part, dest).map_err(HubError::io(dest))?;
        Ok(Downloaded {
            path: dest.to_path_buf(),
            bytes,
            sha256,
        })
    }

    fn download_with_retries(
        &self,
        url: &str,
        file: &File,
        part: &Path,
        progress: &mut dyn Progress,
    ) -> Result<(u64, Sha256Digest), HubError> {
        let mut attempt = 1;
        loop {
            match self.attempt(url, file, part, progress) {
                Err(e) if e.is_transient() && attempt < self.limits.attempts => {
                    attempt += 1;
                    std::thread::sleep(self.limits.retry_delay);
                }
                result => return result,
            }
        }
    }

    /// One request: continues the `.part` from its length, or restarts it when the server
    /// sends the whole file. Returns the file's length and digest.
    fn attempt(
        &self,
        url: &str,
        file: &File,
        part: &Path,
        progress: &mut dyn Progress,
    ) -> Result<(u64, Sha256Digest), HubError> {
        let max = self.limits.max_bytes;
        let mut offset = file.metadata().map_err(HubError::io(part))?.len();
        if offset > max {
            offset = 0;
        }
        let mut response = self.get(url, offset)?;
        if offset > 0 && response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            // The `.part` is as long as the file or longer (it changed): start over.
            offset = 0;
            response = self.get(url, 0)?;
        }
        let total = match response.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                content_range_total(url, response.headers(), offset)?
            }
            StatusCode::OK => {
                // A fresh download, or a server that ignores `Range`: it sends everything.
                offset = 0;
                response.content_length()
            }
            status => {
                return Err(HubError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                })
            }
        };
        if let Some(total) = total.filter(|&t| t > max) {
            return Err(too_large(url, total, max));
        }
        let mut sink = PartSink::continuing(file, part, offset)?;
        let label = part
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_end_matches(".part")
            .to_owned();
        progress.begin(&label, total, offset);
        let streamed = stream_body(url, response, &mut sink, max, progress);
        progress.end();
        streamed?;
        if let Some(total) = total.filter(|&t| t != sink.len) {
            return Err(HubError::Incomplete {
                url: url.to_owned(),
                got: sink.len,
                expected: total,
            });
        }
        Ok((
            sink.len,
            Sha256Digest::from_bytes(sink.hasher.finalize().into()),
        ))
    }

    fn get(&self, url: &str, offset: u64) -> Result<Response, HubError> {
        // `identity`: byte offsets and lengths must be those of the file itself.
        let mut request = self
            .client
            .get(url)
            .header(header::ACCEPT_ENCODING, "identity");
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        request.send().map_err(|source| transport(url, source))
    }
}

/// The `.part` file being written, and the digest and length of everything in it.
struct PartSink<'a> {
    file: &'a File,
    path: &'a Path,
    hasher: Sha256,
    len: u64,
}

impl<'a> PartSink<'a> {
    /// Keeps the first `offset` bytes of the file (hashing them) and appends after them.
    fn continuing(mut file: &'a File, path: &'a Path, offset: u64) -> Result<Self, HubError> {
        file.set_len(offset).map_err(HubError::io(path))?;
        file.seek(SeekFrom::Start(0)).map_err(HubError::io(path))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file.take(offset), &mut hasher).map_err(HubError::io(path))?;
        Ok(Self {
            file,
            path,
            hasher,
            len: offset,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), HubError> {
        let mut file = self.file;
        file.write_all(bytes).map_err(HubError::io(self.path))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Appends the body to `sink`, never letting the file grow past `max` bytes.
fn stream_body(
    url: &str,
    mut body: Response,
    sink: &mut PartSink,
    max: u64,
    progress: &mut dyn Progress,
) -> Result<(), HubError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(HubError::Interrupted {
                    url: url.to_owned(),
                    got: sink.len,
                    source,
                })
            }
        };
        if sink.len + n as u64 > max {
            return Err(too_large(url, sink.len + n as u64, max));
        }
        sink.append(&buf[..n])?;
        progress.advance(n as u64);
    }
}

/// The total length from a `206` answer's `Content-Range: bytes START-END/TOTAL` (`TOTAL` may
/// be `*`), after checking that it starts where the `.part` ends.
fn content_range_total(
    url: &str,
    headers: &HeaderMap,
    offset: u64,
) -> Result<Option<u64>, HubError> {
    let value = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = || HubError::BadContentRange {
        url: url.to_owned(),
        value: value.to_owned(),
        offset,
    };
    let (range, total) = value
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().map_err(|_| bad())?),
    };
    if start != offset || end < start || total.is_some_and(|t| end >= t) {
        return Err(bad());
    }
    Ok(total)
}

fn etag_digest(headers: &HeaderMap) -> Option<Checksum> {
    [("x-linked-etag", "X-Linked-ETag"), ("etag", "ETag")]
        .into_iter()
        .find_map(|(key, shown)| {
            let value = headers.get(key)?.to_str().ok()?;
            Some(Checksum {
                digest: Sha256Digest::from_etag(value)?,
                origin: format!("the server's {shown} header"),
            })
        })
}

fn success(url: &str, response: Response) -> Result<Response, HubError> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(HubError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        })
    }
}

fn transport(url: &str, source: reqwest::Error) -> HubError {
    HubError::Transport {
        url: url.to_owned(),
        source,
    }
}

fn too_large(url: &str, bytes: u64, limit: u64) -> HubError {
    HubError::TooLarge {
        url: url.to_owned(),
        bytes,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn range(value: &str, offset: u64) -> Result<Option<u64>, HubError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(value).unwrap());
        content_range_total("http://x/f", &headers, offset)
    }

    #[test]
    fn content_range_must_continue_the_part() {
        assert_eq!(range("bytes 100-199/200", 100).unwrap(), Some(200));
        assert_eq!(range("bytes 100-199/*", 100).unwrap(), None);
        for (bad, offset) in [
            ("bytes 0-199/200", 100),
            ("bytes 100-99/200", 100),
            ("bytes 100-200/200", 100),
            ("bytes 100-199", 100),
            ("items 100-199/200", 100),
            ("bytes x-199/200", 100),
            ("", 100),
        ] {
            assert!(
                matches!(range(bad, offset), Err(HubError::BadContentRange { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefers_the_linked_etag() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_str(&format!("\"{b}\"")).unwrap());
        assert_eq!(etag_digest(&headers).unwrap().digest, b.parse().unwrap());
        headers.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{a}\"")).unwrap(),
        );
        let found = etag_digest(&headers).unwrap();
        assert_eq!(found.digest, a.parse().unwrap());
        assert!(found.origin.contains("X-Linked-ETag"));
        headers.clear();
        headers.insert("etag", HeaderValue::from_static("\"5f1a-3c\""));
        assert_eq!(etag_digest(&headers), None);
    }

    #[test]
    fn part_sits_beside_the_file() {
        assert_eq!(
            part_path(Path::new("/m/x/a.gguf")),
            PathBuf::from("/m/x/a.gguf.part")
        );
    }
}
