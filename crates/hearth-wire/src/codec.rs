//! The byte-level reader and writer every message is built on. Hand-written rather than serde +
//! postcard/bincode because every length field must be checked against a protocol limit *before*
//! anything is allocated, hidden-state payloads are large and must be decoded with one copy, and
//! the encoding is a protocol fact that must not shift when a library changes its format.

use crate::error::{Result, WireError};

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `n` bytes before it reallocates.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a u16, 2 bytes little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32, 4 bytes little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64, 8 bytes little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends an f32 as its IEEE 754 bits, 4 bytes little-endian.
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Fixed-size bytes (hashes, keys, signatures): no length prefix.
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Variable-size bytes with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }

    /// The bytes written so far.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a byte slice; every read is bounds-checked and names what it was reading.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, borrowed from the input; [`WireError::Truncated`] if fewer remain.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as a fixed-size array (hashes, keys, signatures).
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A little-endian f32 (any bit pattern, NaN included: callers check finiteness).
    pub fn f32(&mut self, what: &'static str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// A length prefix, rejected if above `max` (before anything is allocated for it).
    pub fn len(&mut self, what: &'static str, max: usize) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(WireError::TooLarge { what, len: n, max });
        }
        Ok(n)
    }

    /// Length-prefixed bytes of at most `max`.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8]> {
        let n = self.len(what, max)?;
        self.take(n, what)
    }

    /// Length-prefixed UTF-8 of at most `max` bytes.
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<String> {
        let b = self.bytes(what, max)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| WireError::BadValue {
                what,
                detail: "not UTF-8".into(),
            })
    }

    /// Fails unless every byte was consumed: trailing bytes mean the peer and we disagree on the
    /// format, which must not pass silently.
    pub fn end(&self, what: &'static str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(WireError::TrailingBytes {
                what,
                extra: self.remaining(),
            });
        }
        Ok(())
    }
}
