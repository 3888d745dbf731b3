//! A minimal, bounded HTTP/1.1 GET client for polling signal endpoints (price, AI demand).
//!
//! Plain `http://` only (run a local TLS-terminating proxy for `https://`): the agent polls a
//! utility or market endpoint once per interval, and a small client with hard bounds on time and
//! bytes is easier to trust than a general one. Handles `Content-Length`, chunked and
//! read-to-close bodies; refuses bodies over [`MAX_BODY`] and headers over [`MAX_HEADER`].

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body accepted, bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest status line plus headers accepted, bytes.
pub const MAX_HEADER: usize = 16 * 1024;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL (given) is not a plain `http://host[:port]/path`.
    #[error("URL {0:?}: only http://host[:port]/path is supported")]
    Url(String),
    /// The whole request exceeded its time limit (the URL given).
    #[error("{0}: timed out")]
    Timeout(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL requested.
        url: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server answered with a non-2xx status.
    #[error("{url}: HTTP status {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer is malformed or over the size limits.
    #[error("{url}: {msg}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What was wrong.
        msg: String,
    },
}

/// (host:port, path) of an `http://` URL.
pub fn split_url(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.into()))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty()
        || auth.contains('@')
        || path.chars().any(|c| c.is_control() || c == ' ')
        || url.len() > 2048
    {
        return Err(HttpError::Url(url.into()));
    }
    let hostport = if auth
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        || auth.ends_with(']')
    {
        auth.to_string()
    } else {
        format!("{auth}:80")
    };
    Ok((hostport, path.to_string()))
}

/// GETs `url` and returns the body of a 2xx answer, within `timeout` overall.
pub async fn get(url: &str, timeout: Duration) -> Result<Vec<u8>, HttpError> {
    match tokio::time::timeout(timeout, get_inner(url)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(url.into())),
    }
}

async fn get_inner(url: &str) -> Result<Vec<u8>, HttpError> {
    let (hostport, path) = split_url(url)?;
    let io = |source| HttpError::Io {
        url: url.into(),
        source,
    };
    let proto = |msg: String| HttpError::Protocol {
        url: url.into(),
        msg,
    };
    let mut s = TcpStream::connect(&hostport).await.map_err(io)?;
    let host = hostport.trim_end_matches(":80");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: hearth-agent\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    // Read everything up to the limit; Connection: close ends the body.
    let mut buf = Vec::with_capacity(8192);
    let limit = (MAX_HEADER + MAX_BODY + 64 * 1024) as u64;
    (&mut s)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(proto(format!("answer larger than {limit} bytes")));
    }
    let head_end = buf
        .windows(4)
        .take(MAX_HEADER)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| proto("no end of headers".into()))?;
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| proto("headers not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| proto(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = Some(
                    v.parse()
                        .map_err(|_| proto(format!("bad content-length {v:?}")))?,
                );
            }
        }
    }
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            url: url.into(),
            status,
        });
    }
    let raw = &buf[head_end + 4..];
    let body = if chunked {
        dechunk(raw).map_err(proto)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(proto(format!("body of {n} bytes exceeds {MAX_BODY}")));
        }
        raw.get(..n)
            .ok_or_else(|| proto("body shorter than content-length".into()))?
            .to_vec()
    } else {
        raw.to_vec()
    };
    if body.len() > MAX_BODY {
        return Err(proto(format!("body exceeds {MAX_BODY} bytes")));
    }
    Ok(body)
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line unterminated")?;
        let size_s = std::str::from_utf8(&raw[..eol]).map_err(|_| "bad chunk size")?;
        let size_s = size_s.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_s, 16).map_err(|_| format!("bad chunk size {size_s:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_BODY {
            return Err(format!("body exceeds {MAX_BODY} bytes"));
        }
        let chunk = raw.get(..size).ok_or("chunk truncated")?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or("chunk not terminated")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/price").unwrap(),
            ("127.0.0.1:8080".into(), "/price".into())
        );
        assert_eq!(
            split_url("http://example.org").unwrap(),
            ("example.org:80".into(), "/".into())
        );
        assert!(split_url("https://example.org/").is_err());
        assert!(split_url("http://u:p@example.org/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn chunks() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"10\r\nshort").is_err());
    }
}
