//! What hearth's HTTP APIs (gateway, agent) accept from web browsers.
//!
//! A page the operator visits can make the browser send requests to `http://127.0.0.1:9100`: a
//! cross-origin `POST` with a "simple" content type (`text/plain`, form encodings) goes out with
//! no preflight, and a page on a domain the attacker re-points at 127.0.0.1 (DNS rebinding) is
//! even same-origin to the browser. Three rules close both, and cost non-browser clients
//! (curl, SDKs) nothing:
//!
//! 1. **Content type**: a request with a body (`POST`, `PUT`, `PATCH`) must say
//!    `Content-Type: application/json`. A browser sends that cross-origin only after a CORS
//!    preflight, which these APIs never approve.
//! 2. **Origin**: a request that carries an `Origin` (browsers add it to cross-origin requests
//!    and to every `POST`) must come from the API's own origin (same host and port as `Host`)
//!    or from an origin the operator allowed.
//! 3. **Host**: the `Host` header must name the server as an IP address, `localhost`, or a name
//!    the operator allowed: a rebinding page's requests carry the attacker's domain name.
//!
//! Pure: the servers pass header values in and map a [`Refusal`] to their own error format.

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A request with a body whose `Content-Type` is not `application/json`.
    ContentType {
        /// What it said (empty when it said nothing).
        got: String,
    },
    /// A browser request from another origin.
    CrossOrigin {
        /// The `Origin` it carried.
        origin: String,
    },
    /// A `Host` that is neither an IP address, `localhost`, nor an allowed name.
    UnknownHost {
        /// The `Host` it carried.
        host: String,
    },
}

impl Refusal {
    /// The HTTP status to answer with: 415 for the content type, 403 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ContentType { .. } => 415,
            Refusal::CrossOrigin { .. } | Refusal::UnknownHost { .. } => 403,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ContentType { got } if got.is_empty() => {
                write!(f, "send the body with `Content-Type: application/json`")
            }
            Refusal::ContentType { got } => write!(
                f,
                "send the body with `Content-Type: application/json` (not `{got}`)"
            ),
            Refusal::CrossOrigin { origin } => write!(
                f,
                "requests from origin `{origin}` are refused (allow it with --allow-origin)"
            ),
            Refusal::UnknownHost { host } => write!(
                f,
                "requests for host `{host}` are refused: use an IP address or localhost, or \
                 allow the name with --allow-host"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The rules above, with the names and origins an operator allowed.
#[derive(Clone, Debug, Default)]
pub struct RequestGuard {
    /// Host names (no port), lowercase.
    hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`), lowercase, no trailing slash.
    origins: Vec<String>,
}

/// The parts of a request the guard looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The `Host` header (or the URI's authority), if any.
    pub host: Option<&'a [u8]>,
    /// The `Origin` header, if any.
    pub origin: Option<&'a [u8]>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a [u8]>,
}

impl RequestGuard {
    /// A guard that also accepts the host names `hosts` and the origins `origins`.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            origins: origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks one request.
    pub fn check(&self, req: &RequestHead<'_>) -> Result<(), Refusal> {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let host = req.host.map(text);
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Err(Refusal::UnknownHost { host: host.clone() });
            }
        }
        if let Some(origin) = req.origin.map(text) {
            let own = host.as_ref().is_some_and(|h| {
                origin_authority(&origin).is_some_and(|a| a.eq_ignore_ascii_case(h))
            });
            let allowed = self
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/')));
            if !own && !allowed {
                return Err(Refusal::CrossOrigin { origin });
            }
        }
        if matches!(req.method, "POST" | "PUT" | "PATCH") {
            let got = req.content_type.map(text).unwrap_or_default();
            let media = got.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/json") {
                return Err(Refusal::ContentType { got });
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self.hosts.contains(&name)
    }
}

/// The host part of a `Host` value: `[::1]:80` → `::1`, `a.b:80` → `a.b`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The `host[:port]` of an origin `scheme://host[:port]`; `None` for `null` or anything else.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    Some(rest.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(
        method: &'a str,
        host: Option<&'a str>,
        origin: Option<&'a str>,
        content_type: Option<&'a str>,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            host: host.map(str::as_bytes),
            origin: origin.map(str::as_bytes),
            content_type: content_type.map(str::as_bytes),
        }
    }

    #[test]
    fn tools_and_same_origin_pages_pass() {
        let g = RequestGuard::default();
        let json = Some("application/json");
        for req in [
            // curl, SDKs: no Origin.
            head("POST", Some("127.0.0.1:9100"), None, json),
            head(
                "POST",
                Some("localhost:9100"),
                None,
                Some("Application/JSON; charset=utf-8"),
            ),
            head("POST", Some("[::1]:8080"), None, json),
            head("GET", Some("10.0.0.5:8080"), None, None),
            head("DELETE", Some("127.0.0.1:9100"), None, None),
            // The API's own page.
            head(
                "POST",
                Some("127.0.0.1:9100"),
                Some("http://127.0.0.1:9100"),
                json,
            ),
            head("GET", None, None, None),
        ] {
            assert_eq!(g.check(&req), Ok(()), "{req:?}");
        }
    }

    #[test]
    fn cross_origin_rebinding_and_simple_bodies_are_refused() {
        let g = RequestGuard::default();
        let json = Some("application/json");
        let cases = [
            // A page elsewhere posting a "simple" request: no preflight in the browser.
            head(
                "POST",
                Some("127.0.0.1:9100"),
                Some("https://evil.example"),
                Some("text/plain"),
            ),
            head(
                "POST",
                Some("127.0.0.1:9100"),
                Some("https://evil.example"),
                json,
            ),
            head("POST", Some("127.0.0.1:9100"), Some("null"), json),
            // Same host, another port: another origin.
            head(
                "POST",
                Some("127.0.0.1:9100"),
                Some("http://127.0.0.1:8000"),
                json,
            ),
            // DNS rebinding: same-origin to the browser, but the name is the attacker's.
            head(
                "POST",
                Some("rebind.evil.example:9100"),
                Some("http://rebind.evil.example:9100"),
                json,
            ),
            head("GET", Some("rebind.evil.example:9100"), None, None),
            // No Origin (a tool), but a body that is not declared JSON.
            head("POST", Some("127.0.0.1:9100"), None, None),
            head(
                "POST",
                Some("127.0.0.1:9100"),
                None,
                Some("application/x-www-form-urlencoded"),
            ),
            head(
                "PUT",
                Some("127.0.0.1:9100"),
                None,
                Some("multipart/form-data; boundary=x"),
            ),
        ];
        for req in cases {
            let refusal = g.check(&req).expect_err(&format!("{req:?}"));
            assert!(refusal.status() == 403 || refusal.status() == 415);
            assert!(!refusal.to_string().is_empty());
        }
    }

    #[test]
    fn operators_can_allow_names_and_origins() {
        let g = RequestGuard::new(
            &["API.example.org".into()],
            &["https://dash.example.org/".into()],
        );
        let json = Some("application/json");
        assert_eq!(
            g.check(&head(
                "POST",
                Some("api.example.org"),
                Some("https://dash.example.org"),
                json
            )),
            Ok(())
        );
        assert_eq!(
            g.check(&head(
                "POST",
                Some("api.example.org:443"),
                Some("https://api.example.org:443"),
                json
            )),
            Ok(())
        );
        assert!(g
            .check(&head("POST", Some("other.example.org"), None, json))
            .is_err());
    }
}
