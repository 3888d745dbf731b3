//! SHA-256 digests: parsed from hex, computed from files.

use crate::HubError;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// A SHA-256 digest. Parses from 64 hexadecimal digits (either case); prints lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest with these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest of everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<Self> {
        let mut hasher = Sha256::new();
        std::io::copy(&mut reader, &mut hasher)?;
        Ok(Self(hasher.finalize().into()))
    }

    /// The digest of the file at `path`.
    pub fn of_file(path: &Path) -> Result<Self, HubError> {
        let file = std::fs::File::open(path).map_err(HubError::io(path))?;
        Self::of_reader(std::io::BufReader::new(file)).map_err(HubError::io(path))
    }

    /// The digest in an HTTP entity tag, if it is one: `"<64 hex>"`, optionally weak (`W/`).
    /// Hugging Face tags its large (LFS) files this way; other servers' tags are usually not 64
    /// hex digits and give `None`.
    pub fn from_etag(tag: &str) -> Option<Self> {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag.trim_matches('"').parse().ok()
    }
}

impl FromStr for Sha256Digest {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| HubError::InvalidDigest(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_hex() {
        let d: Sha256Digest = EMPTY.to_uppercase().parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Sha256Digest::of_reader(&b""[..]).unwrap());
    }

    #[test]
    fn refuses_wrong_lengths_and_non_hex() {
        for bad in [
            "",
            "abc",
            &EMPTY[..63],
            &format!("{EMPTY}0"),
            &EMPTY.replace('e', "g"),
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_digests_from_entity_tags() {
        let d: Sha256Digest = EMPTY.parse().unwrap();
        assert_eq!(Sha256Digest::from_etag(&format!("\"{EMPTY}\"")), Some(d));
        assert_eq!(Sha256Digest::from_etag(&format!("W/\"{EMPTY}\"")), Some(d));
        // A git blob id (40 hex) and nginx-style tags are not digests.
        assert_eq!(
            Sha256Digest::from_etag("\"a3c1f5e2b9d04c7a8e6f1b2c3d4e5f60718293a4\""),
            None
        );
        assert_eq!(Sha256Digest::from_etag("\"65f1a2b3-1c2d\""), None);
    }
}
