use serde::{Deserialize, Serialize};
use std::fmt;

/// A 32-byte BLAKE3 content hash (model ids, block ids, tensor digests).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hash of one byte string.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 8 bytes in hex: enough to tell models apart in logs and CLI output.
    pub fn short(&self) -> String {
        self.to_hex()[..16].to_string()
    }

    /// The hash as a draw uniform in `[0, 1)` on the grid of 2^-53: the top 53 bits of its
    /// first 8 bytes read little-endian (as [`crate::SplitMix64::unit`] reads one output). For
    /// decisions anyone can re-derive from the hashed fields, such as which windows are checked.
    pub fn unit(&self) -> f64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(first) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.short())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Incremental hasher with domain-separated, length-prefixed fields, so that
/// `("ab", "c")` and `("a", "bc")` hash differently.
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    /// A hasher for one kind of object; `domain` keeps different kinds from colliding.
    pub fn new(domain: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"hearth:");
        h.update(&(domain.len() as u64).to_le_bytes());
        h.update(domain.as_bytes());
        Self(h)
    }

    /// Adds one length-prefixed field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds one length-prefixed field exactly as [`Self::field`] does, absorbing `bytes` in
    /// pieces of at most `chunk` bytes and calling `absorbed` with each piece once it has been
    /// hashed (to release memory-mapped pages of a large field as hashing proceeds).
    pub fn field_chunked(
        &mut self,
        bytes: &[u8],
        chunk: usize,
        mut absorbed: impl FnMut(&[u8]),
    ) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        for piece in bytes.chunks(chunk.max(1)) {
            self.0.update(piece);
            absorbed(piece);
        }
        self
    }

    /// The hash of the domain and every field added so far; the hasher stays usable.
    pub fn finish(&self) -> ContentHash {
        ContentHash(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_reads_the_top_53_bits_of_the_first_8_bytes() {
        assert_eq!(ContentHash([0; 32]).unit(), 0.0);
        let mut half = [0u8; 32];
        half[7] = 0x80;
        assert_eq!(ContentHash(half).unit(), 0.5);
        let top = ContentHash([0xff; 32]).unit();
        assert!(top < 1.0 && top > 1.0 - 1e-15, "{top}");
    }

    #[test]
    fn fields_are_length_prefixed() {
        let a = ContentHasher::new("t").field(b"ab").field(b"c").finish();
        let b = ContentHasher::new("t").field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
        let c = ContentHasher::new("u").field(b"ab").field(b"c").finish();
        assert_ne!(a, c);
        assert_eq!(a, ContentHasher::new("t").field(b"ab").field(b"c").finish());
    }

    #[test]
    fn chunked_field_hashes_like_a_field() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let whole = ContentHasher::new("t").field(&bytes).field(b"x").finish();
        for chunk in [0, 1, 7, 4096, 10_000, 20_000] {
            let mut seen = 0;
            let h = ContentHasher::new("t")
                .field_chunked(&bytes, chunk, |p| seen += p.len())
                .field(b"x")
                .finish();
            assert_eq!(h, whole, "chunk {chunk}");
            assert_eq!(seen, bytes.len());
        }
    }

    #[test]
    fn hex_is_64_chars() {
        let h = ContentHash::of(b"hearth");
        assert_eq!(h.to_hex().len(), 64);
        assert_eq!(h.short().len(), 16);
        assert!(h.to_hex().starts_with(&h.short()));
    }
}
