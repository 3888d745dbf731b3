//! API keys: bearer tokens from the operator's config, checked in constant time (shared by the
//! gateway's and the energy agent's HTTP APIs).
//!
//! Keys are stored as BLAKE3 digests and a presented token is hashed the same way before a
//! constant-time comparison with every configured digest (no early exit), so neither the
//! position of the first differing byte nor a key's length leaks through timing.

use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// Shows how many keys there are, never their digests.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Keys to accept; empty strings are ignored.
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            digests: keys
                .into_iter()
                .filter(|k| !k.as_ref().is_empty())
                .map(|k| *blake3::hash(k.as_ref().as_bytes()).as_bytes())
                .collect(),
        }
    }

    /// No key configured: the gateway must stay on loopback.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether an `Authorization` header value carries an accepted key.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(token) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let presented = blake3::hash(token);
        let mut ok = subtle::Choice::from(0u8);
        for digest in &self.digests {
            ok |= digest.ct_eq(presented.as_bytes());
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_bearer_tokens_pass() {
        let keys = ApiKeys::new(["sk-one", "sk-two", ""]);
        assert!(keys.accepts(Some(b"Bearer sk-one")));
        assert!(keys.accepts(Some(b"Bearer sk-two")));
        assert!(!keys.accepts(Some(b"Bearer sk-on")));
        assert!(!keys.accepts(Some(b"Bearer sk-one ")));
        assert!(!keys.accepts(Some(b"sk-one")));
        assert!(!keys.accepts(Some(b"Bearer ")));
        assert!(!keys.accepts(None));
        assert!(ApiKeys::new([""]).is_empty());
        assert!(ApiKeys::default().accepts(None));
    }
}
