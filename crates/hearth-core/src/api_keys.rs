//! API keys: bearer tokens from the operator's config, checked in constant time (shared by the
//! gateway's and the energy agent's HTTP APIs), and the rules both APIs follow for them: where
//! keys come from on the command line, and that no key means loopback only.
//!
//! Keys are stored as BLAKE3 digests and a presented token is hashed the same way before a
//! constant-time comparison with every configured digest (no early exit), so neither the
//! position of the first differing byte nor a key's length leaks through timing.

use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// The bearer tokens an API accepts; empty means no authentication.
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

/// An API about to listen on a non-loopback address with no key configured: anyone who can
/// reach the address could use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnprotectedBind {
    /// The address that was refused.
    pub addr: SocketAddr,
    /// Which API, when the process serves more than one kind (e.g. "the agent's API").
    pub api: Option<String>,
    /// The environment variable the keys can also come from.
    pub env_var: String,
}

impl std::fmt::Display for UnprotectedBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refusing to serve ")?;
        if let Some(api) = &self.api {
            write!(f, "{api} ")?;
        }
        write!(
            f,
            "on {} without an API key: pass --api-key (or {}), or listen on a loopback address such as 127.0.0.1",
            self.addr, self.env_var
        )
    }
}

impl std::error::Error for UnprotectedBind {}

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

    /// The keys an operator gave a command: each of `flags` as given, then the comma-separated
    /// entries of `list` (an environment variable's value), trimmed; empty keys are dropped.
    pub fn merge_keys(flags: &[String], list: Option<&str>) -> Vec<String> {
        let listed = list
            .into_iter()
            .flat_map(|l| l.split(','))
            .map(|k| k.trim().to_string());
        flags
            .iter()
            .cloned()
            .chain(listed)
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// [`ApiKeys::merge_keys`] with the list read from the environment variable `env_var`
    /// (unset or not Unicode: no entries). The one place this crate reads the environment.
    pub fn keys_from_flags_and_env(flags: &[String], env_var: &str) -> Vec<String> {
        Self::merge_keys(flags, std::env::var(env_var).ok().as_deref())
    }

    /// No key configured: the API must stay on loopback.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Refuses a non-loopback `addr` when no key is configured. `api` names the API in the
    /// message (`None`: the process serves only one); `env_var` is where keys can also be given.
    pub fn check_bind(
        &self,
        addr: SocketAddr,
        api: Option<&str>,
        env_var: &str,
    ) -> Result<(), UnprotectedBind> {
        if self.is_empty() && !addr.ip().is_loopback() {
            return Err(UnprotectedBind {
                addr,
                api: api.map(str::to_string),
                env_var: env_var.to_string(),
            });
        }
        Ok(())
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

    #[test]
    fn flags_come_first_and_listed_keys_are_trimmed() {
        let flags = vec![
            "sk-flag".to_string(),
            String::new(),
            " sk-spaced".to_string(),
        ];
        assert_eq!(
            ApiKeys::merge_keys(&flags, Some(" sk-a , ,sk-b,")),
            ["sk-flag", " sk-spaced", "sk-a", "sk-b"]
        );
        assert_eq!(ApiKeys::merge_keys(&flags, None), ["sk-flag", " sk-spaced"]);
        assert!(ApiKeys::merge_keys(&[], Some(" , ")).is_empty());
    }

    #[test]
    fn keys_are_read_from_the_named_environment_variable() {
        // A name no other test uses, so setting it races with nothing.
        let var = "HEARTH_CORE_TEST_API_KEYS_FROM_ENV";
        let flags = vec!["sk-flag".to_string()];
        assert_eq!(ApiKeys::keys_from_flags_and_env(&flags, var), ["sk-flag"]);
        std::env::set_var(var, "sk-env-1, sk-env-2");
        let keys = ApiKeys::keys_from_flags_and_env(&flags, var);
        std::env::remove_var(var);
        assert_eq!(keys, ["sk-flag", "sk-env-1", "sk-env-2"]);
    }

    #[test]
    fn without_a_key_only_loopback_addresses_are_allowed() {
        let none = ApiKeys::default();
        let env = "HEARTH_API_KEYS";
        for ok in ["127.0.0.1:8080", "[::1]:0", "127.1.2.3:1"] {
            assert_eq!(none.check_bind(ok.parse().unwrap(), None, env), Ok(()));
        }
        for public in ["0.0.0.0:0", "[::]:8080", "192.168.1.5:80"] {
            let addr: SocketAddr = public.parse().unwrap();
            assert!(none.check_bind(addr, None, env).is_err(), "{public}");
            let keyed = ApiKeys::new(["sk"]);
            assert_eq!(keyed.check_bind(addr, None, env), Ok(()));
        }
    }

    #[test]
    fn the_refusal_names_the_api_the_address_and_where_keys_go() {
        let none = ApiKeys::default();
        let addr = "0.0.0.0:0".parse().unwrap();
        let plain = none.check_bind(addr, None, "HEARTH_API_KEYS").unwrap_err();
        assert_eq!(
            plain.to_string(),
            "refusing to serve on 0.0.0.0:0 without an API key: pass --api-key (or HEARTH_API_KEYS), or listen on a loopback address such as 127.0.0.1"
        );
        let named = none
            .check_bind(addr, Some("the agent's API"), "HEARTH_AGENT_KEYS")
            .unwrap_err();
        assert_eq!(
            named.to_string(),
            "refusing to serve the agent's API on 0.0.0.0:0 without an API key: pass --api-key (or HEARTH_AGENT_KEYS), or listen on a loopback address such as 127.0.0.1"
        );
    }
}
