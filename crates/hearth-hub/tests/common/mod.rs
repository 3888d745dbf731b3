//! A local HTTP server that serves files the way the tests need (with or without `Range`,
//! cut off mid-way, with entity tags) and records every request; and a progress recorder.

#![allow(dead_code)] // each test binary uses part of this

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use hearth_hub::{HubOptions, Limits, Progress};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How one path is served.
#[derive(Clone, Default)]
pub(crate) struct Served {
    /// The file's bytes.
    pub(crate) body: Vec<u8>,
    /// Answer `Range: bytes=N-` with 206 (else with the whole file, as some servers do).
    pub(crate) honour_range: bool,
    /// Cut the connection of the first GET after this many body bytes.
    pub(crate) cut_first_after: Option<usize>,
    /// Send the body chunked, without Content-Length.
    pub(crate) chunked: bool,
    /// Sent quoted as the `ETag` header, when set.
    pub(crate) etag: Option<String>,
    /// Sent quoted as the `X-Linked-ETag` header (as Hugging Face does for LFS files), when set.
    pub(crate) linked_etag: Option<String>,
}

/// A request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// HTTP method, e.g. "GET" or "HEAD".
    pub(crate) method: String,
    /// Request path, starting with `/`.
    pub(crate) path: String,
    /// The `Range` header, if one was sent.
    pub(crate) range: Option<String>,
}

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, Served>>,
    log: Mutex<Vec<Seen>>,
}

/// The test HTTP server: what it serves and what it was asked.
pub(crate) struct Server {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub(crate) base: String,
    shared: Arc<Shared>,
}

impl Server {
    /// Starts a server on 127.0.0.1 (an ephemeral port) in a background thread.
    pub(crate) fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { base, shared }
    }

    /// Serves `served` at `path` (which starts with `/`); returns its URL.
    pub(crate) fn put(&self, path: &str, served: Served) -> String {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), served);
        format!("{}{path}", self.base)
    }

    /// The requests seen so far for `path`.
    pub(crate) fn seen(&self, path: &str) -> Vec<Seen> {
        let log = self.shared.log.lock().unwrap();
        log.iter().filter(|s| s.path == path).cloned().collect()
    }

    /// The GET requests seen so far for `path`.
    pub(crate) fn gets(&self, path: &str) -> Vec<Seen> {
        let mut seen = self.seen(path);
        seen.retain(|s| s.method == "GET");
        seen
    }

    /// Hub options pointing PyPI here, with small, fast limits.
    pub(crate) fn options(&self, attempts: u32) -> HubOptions {
        HubOptions {
            pypi_url: self.base.clone(),
            limits: Limits {
                attempts,
                retry_delay: Duration::ZERO,
                stall_timeout: Duration::from_secs(10),
                ..Limits::default()
            },
        }
    }
}

async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_get = request.method() == Method::GET;
    let first_get = {
        let mut log = shared.log.lock().unwrap();
        let first = !log.iter().any(|s| s.path == path && s.method == "GET");
        log.push(Seen {
            method: request.method().to_string(),
            path: path.clone(),
            range: range.clone(),
        });
        first && is_get
    };
    let Some(served) = shared.files.lock().unwrap().get(&path).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    let len = served.body.len();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("etag", &served.etag),
        ("x-linked-etag", &served.linked_etag),
    ] {
        if let Some(v) = value {
            headers.insert(name, HeaderValue::from_str(&format!("\"{v}\"")).unwrap());
        }
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| served.honour_range);
    let (code, body) = match start {
        Some(start) if start >= len => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).unwrap(),
            );
            (StatusCode::RANGE_NOT_SATISFIABLE, Vec::new())
        }
        Some(start) => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{}/{len}", len - 1)).unwrap(),
            );
            (StatusCode::PARTIAL_CONTENT, served.body[start..].to_vec())
        }
        None => (StatusCode::OK, served.body.clone()),
    };
    if served.honour_range {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let cut = served
        .cut_first_after
        .filter(|&cut| first_get && cut < body.len());
    let (sent, cut_off) = match cut {
        Some(cut) => (body[..cut].to_vec(), true),
        None => (body.clone(), false),
    };
    if !served.chunked {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    // The cut comes a moment after the bytes, so they leave hyper's buffer before the
    // connection is dropped, as when a real connection breaks mid-way.
    let tail = futures::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("cut off by the test server"))
    })
    .filter(move |_| futures::future::ready(cut_off));
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(sent))]).chain(tail);
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = code;
    response.headers_mut().extend(headers);
    response
}

fn status(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

/// Deterministic bytes that do not compress away.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Lowercase hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hearth_hub::Sha256Digest::of_reader(bytes)
        .unwrap()
        .to_string()
}

/// Records progress calls.
#[derive(Default, Debug)]
pub(crate) struct Recorder {
    /// `(label, total, done at start, bytes advanced, ended)` per transfer.
    pub(crate) transfers: Vec<(String, Option<u64>, u64, u64, bool)>,
}

impl Progress for Recorder {
    fn begin(&mut self, label: &str, total: Option<u64>, done: u64) {
        self.transfers
            .push((label.to_owned(), total, done, 0, false));
    }

    fn advance(&mut self, bytes: u64) {
        self.transfers.last_mut().expect("advance after begin").3 += bytes;
    }

    fn end(&mut self) {
        self.transfers.last_mut().expect("end after begin").4 = true;
    }
}

/// Every path under `dir`, relative, sorted; empty when `dir` does not exist.
pub(crate) fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
