//! Bitcoin proof of work: double SHA-256, the 80-byte block header, targets, and the pieces a
//! Stratum miner assembles (coinbase, merkle root).
//!
//! Byte orders, the source of most mining bugs, are fixed here once:
//! - a [`Hash256`] is always in *internal* order (the bytes SHA-256 produced, the order they take
//!   in a serialized header); block explorers show the *display* order, the reverse
//!   ([`to_display_hex`], [`from_display_hex`]);
//! - header integers (version, time, bits, nonce) are little-endian on the wire;
//! - a [`Target`] is a 256-bit number, kept as 32 big-endian bytes; a hash meets it when the hash
//!   read as a little-endian number is `<=` the target.
//!
//! Invariant: pure functions, no IO; every parser takes untrusted input and returns an
//! [`Error`] instead of panicking.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A SHA-256d hash in internal byte order.
pub type Hash256 = [u8; 32];

/// Length of a serialized block header.
pub const HEADER_LEN: usize = 80;

/// SHA-256 applied twice.
pub fn sha256d(data: &[u8]) -> Hash256 {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// The hash in display order (reversed bytes), as block explorers show it.
pub fn to_display_hex(hash: &Hash256) -> String {
    let mut rev = *hash;
    rev.reverse();
    hex::encode(rev)
}

/// Parses a display-order hex hash (64 hex digits) into internal order.
pub fn from_display_hex(s: &str) -> Result<Hash256> {
    let mut h = hex32(s, "display hash")?;
    h.reverse();
    Ok(h)
}

/// Parses exactly 32 bytes of hex, keeping the byte order as written.
pub fn hex32(s: &str, what: &str) -> Result<Hash256> {
    if s.len() != 64 {
        return Err(Error::malformed(
            what,
            format!("expected 64 hex digits, got {} characters", s.len()),
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| Error::malformed(what, e.to_string()))?;
    Ok(out)
}

/// An 80-byte Bitcoin block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Block version (BIP9 version bits live here).
    pub version: u32,
    /// Hash of the previous block, internal order.
    pub prev_blockhash: Hash256,
    /// Merkle root of the block's transactions, internal order.
    pub merkle_root: Hash256,
    /// Block time, seconds since the Unix epoch.
    pub time: u32,
    /// The network target in compact form.
    pub bits: u32,
    /// The nonce.
    pub nonce: u32,
}

impl BlockHeader {
    /// The serialized 80 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..36].copy_from_slice(&self.prev_blockhash);
        b[36..68].copy_from_slice(&self.merkle_root);
        b[68..72].copy_from_slice(&self.time.to_le_bytes());
        b[72..76].copy_from_slice(&self.bits.to_le_bytes());
        b[76..80].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Parses exactly 80 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let b: &[u8; HEADER_LEN] = b.try_into().map_err(|_| {
            Error::malformed(
                "block header",
                format!("expected {HEADER_LEN} bytes, got {}", b.len()),
            )
        })?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&b[4..36]);
        let mut merkle = [0u8; 32];
        merkle.copy_from_slice(&b[36..68]);
        Ok(BlockHeader {
            version: u32_at(0),
            prev_blockhash: prev,
            merkle_root: merkle,
            time: u32_at(68),
            bits: u32_at(72),
            nonce: u32_at(76),
        })
    }

    /// The block hash (SHA-256d of the 80 bytes), internal order.
    pub fn hash(&self) -> Hash256 {
        sha256d(&self.to_bytes())
    }
}

/// Hashes one header template over many nonces, reusing the SHA-256 state of the first 64
/// bytes (the "midstate"), which do not depend on the nonce.
#[derive(Clone)]
pub struct HeaderHasher {
    midstate: Sha256,
    tail: [u8; 16],
}

impl HeaderHasher {
    /// Prepares hashing of `header` with varying nonce (its own `nonce` field is ignored).
    pub fn new(header: &BlockHeader) -> Self {
        let bytes = header.to_bytes();
        let mut midstate = Sha256::new();
        midstate.update(&bytes[..64]);
        let mut tail = [0u8; 16];
        tail.copy_from_slice(&bytes[64..80]);
        HeaderHasher { midstate, tail }
    }

    /// SHA-256d of the header with this nonce.
    #[inline]
    pub fn hash(&self, nonce: u32) -> Hash256 {
        let mut tail = self.tail;
        tail[12..16].copy_from_slice(&nonce.to_le_bytes());
        let mut h = self.midstate.clone();
        h.update(tail);
        Sha256::digest(h.finalize()).into()
    }
}

/// A 256-bit proof-of-work target, big-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target(pub [u8; 32]);

/// Little-endian 64-bit limbs, only what targets need.
#[derive(Clone, Copy)]
struct U256([u64; 4]);

impl U256 {
    /// `v << shift`; `None` if a set bit would leave the 256 bits.
    fn shl_checked(v: u64, shift: u32) -> Option<U256> {
        if v == 0 {
            return Some(U256([0; 4]));
        }
        let top = 64 - v.leading_zeros() + shift; // bit length of the result
        if top > 256 {
            return None;
        }
        let mut limbs = [0u64; 4];
        let word = (shift / 64) as usize;
        let bit = shift % 64;
        limbs[word] = v << bit;
        if bit != 0 && word + 1 < 4 {
            limbs[word + 1] = v >> (64 - bit);
        }
        Some(U256(limbs))
    }

    fn to_be_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&limb.to_be_bytes());
        }
        out
    }
}

impl Target {
    /// The largest target (every hash meets it).
    pub const MAX: Target = Target([0xff; 32]);

    /// Pool difficulty 1: `0x00000000FFFF0000…0000` (the "bdiff" convention of Bitcoin pools).
    pub const DIFF1: Target = {
        let mut b = [0u8; 32];
        b[4] = 0xff;
        b[5] = 0xff;
        Target(b)
    };

    /// Expands the compact `nBits` form: `mantissa * 256^(exponent - 3)`. A set sign bit or a
    /// value above 2^256 is an error, as in Bitcoin Core.
    pub fn from_compact(bits: u32) -> Result<Target> {
        let exponent = bits >> 24;
        let mantissa = bits & 0x007f_ffff;
        if bits & 0x0080_0000 != 0 && mantissa != 0 {
            return Err(Error::malformed("nbits", format!("{bits:08x} is negative")));
        }
        let value = if exponent <= 3 {
            U256::shl_checked(u64::from(mantissa >> (8 * (3 - exponent))), 0)
        } else {
            U256::shl_checked(u64::from(mantissa), 8 * (exponent - 3))
        };
        value
            .map(|v| Target(v.to_be_bytes()))
            .ok_or_else(|| Error::malformed("nbits", format!("{bits:08x} overflows 256 bits")))
    }

    /// The share target for a pool difficulty: `DIFF1 / difficulty`, saturating at
    /// [`Target::MAX`]. Computed through an f64 quotient (53 significant bits, as cgminer and
    /// cpuminer do); exact for difficulties that are powers of two.
    pub fn from_difficulty(difficulty: f64) -> Result<Target> {
        if !difficulty.is_finite() || difficulty <= 0.0 {
            return Err(Error::malformed(
                "difficulty",
                format!("{difficulty} is not a positive finite number"),
            ));
        }
        let q = 65535.0 / difficulty; // target = q * 2^208
        if !q.is_finite() {
            return Ok(Target::MAX);
        }
        let raw = q.to_bits();
        let exp = ((raw >> 52) & 0x7ff) as i32;
        if exp == 0 {
            return Ok(Target([0; 32])); // subnormal: far below 1
        }
        let mantissa = (raw & ((1u64 << 52) - 1)) | (1u64 << 52);
        let shift = exp - 1075 + 208; // value = mantissa * 2^shift
        let value = if shift >= 0 {
            U256::shl_checked(mantissa, shift as u32)
        } else if shift > -64 {
            U256::shl_checked(mantissa >> (-shift) as u32, 0)
        } else {
            U256::shl_checked(0, 0)
        };
        Ok(value
            .map(|v| Target(v.to_be_bytes()))
            .unwrap_or(Target::MAX))
    }

    /// True when `hash` (internal order, read as a little-endian number) is `<=` this target.
    pub fn is_met_by(&self, hash: &Hash256) -> bool {
        let mut be = *hash;
        be.reverse();
        be <= self.0
    }

    /// The target as a (rounded) float, for difficulty arithmetic and display.
    pub fn to_f64(&self) -> f64 {
        be_to_f64(&self.0)
    }

    /// The pool difficulty this target corresponds to (`DIFF1 / target`).
    pub fn difficulty(&self) -> f64 {
        Target::DIFF1.to_f64() / self.to_f64()
    }
}

fn be_to_f64(be: &[u8; 32]) -> f64 {
    be.iter().fold(0.0, |acc, &b| acc * 256.0 + f64::from(b))
}

/// The pool difficulty a hash would satisfy (`DIFF1 / hash`); infinite for an all-zero hash.
pub fn hash_difficulty(hash: &Hash256) -> f64 {
    let mut be = *hash;
    be.reverse();
    Target::DIFF1.to_f64() / be_to_f64(&be)
}

/// The coinbase transaction a Stratum miner builds: `coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2`.
pub fn build_coinbase(
    coinb1: &[u8],
    extranonce1: &[u8],
    extranonce2: &[u8],
    coinb2: &[u8],
) -> Vec<u8> {
    let mut tx =
        Vec::with_capacity(coinb1.len() + extranonce1.len() + extranonce2.len() + coinb2.len());
    tx.extend_from_slice(coinb1);
    tx.extend_from_slice(extranonce1);
    tx.extend_from_slice(extranonce2);
    tx.extend_from_slice(coinb2);
    tx
}

/// The merkle root from the coinbase hash and the Stratum merkle branch (each step:
/// `root = sha256d(root ‖ branch)`, all in internal order).
pub fn merkle_root(coinbase_hash: &Hash256, branch: &[Hash256]) -> Hash256 {
    let mut root = *coinbase_hash;
    let mut buf = [0u8; 64];
    for step in branch {
        buf[..32].copy_from_slice(&root);
        buf[32..].copy_from_slice(step);
        root = sha256d(&buf);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        version: u32,
        prev: &str,
        merkle: &str,
        time: u32,
        bits: u32,
        nonce: u32,
    ) -> BlockHeader {
        BlockHeader {
            version,
            prev_blockhash: from_display_hex(prev).unwrap(),
            merkle_root: from_display_hex(merkle).unwrap(),
            time,
            bits,
            nonce,
        }
    }

    fn genesis() -> BlockHeader {
        header(
            1,
            &"0".repeat(64),
            "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
            1231006505,
            0x1d00ffff,
            2083236893,
        )
    }

    #[test]
    fn genesis_block_hash() {
        let h = genesis();
        let hash = h.hash();
        assert_eq!(
            to_display_hex(&hash),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
        // The serialized header is the well-known 80 bytes.
        assert_eq!(
            hex::encode(h.to_bytes()),
            "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
        );
        assert!(Target::from_compact(h.bits).unwrap().is_met_by(&hash));
        // One nonce off no longer meets the network target.
        let mut wrong = h;
        wrong.nonce += 1;
        assert!(!Target::from_compact(h.bits)
            .unwrap()
            .is_met_by(&wrong.hash()));
    }

    #[test]
    fn block_125552_hash() {
        let h = header(
            1,
            "00000000000008a3a41b85b8b29ad444def299fee21793cd8b9e567eab02cd81",
            "2b12fcf1b09288fcaff797d71e950e71ae42b91e8bdb2304758dfcffc2b620e3",
            1305998791,
            440711666,
            2504433986,
        );
        assert_eq!(
            to_display_hex(&h.hash()),
            "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d"
        );
        assert!(Target::from_compact(h.bits).unwrap().is_met_by(&h.hash()));
        assert_eq!(BlockHeader::from_bytes(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn midstate_hasher_matches_plain_hash() {
        let g = genesis();
        let hasher = HeaderHasher::new(&g);
        for nonce in [0, 1, g.nonce, u32::MAX] {
            let mut h = g;
            h.nonce = nonce;
            assert_eq!(hasher.hash(nonce), h.hash());
        }
    }

    #[test]
    fn header_parse_rejects_wrong_length() {
        assert!(BlockHeader::from_bytes(&[0u8; 79]).is_err());
        assert!(BlockHeader::from_bytes(&[0u8; 81]).is_err());
    }

    #[test]
    fn compact_targets() {
        let t = Target::from_compact(0x1d00ffff).unwrap();
        assert_eq!(t, Target::DIFF1);
        let t = Target::from_compact(0x1b0404cb).unwrap();
        assert_eq!(
            hex::encode(t.0),
            "00000000000404cb000000000000000000000000000000000000000000000000"
        );
        // Small exponents shift the mantissa right.
        let t = Target::from_compact(0x01123456).unwrap();
        assert_eq!(t.0[31], 0x12);
        assert!(t.0[..31].iter().all(|&b| b == 0));
        assert!(Target::from_compact(0x04923456).is_err(), "negative");
        assert!(Target::from_compact(0xff123456).is_err(), "overflow");
    }

    #[test]
    fn difficulty_targets() {
        assert_eq!(Target::from_difficulty(1.0).unwrap(), Target::DIFF1);
        let t2 = Target::from_difficulty(2.0).unwrap();
        assert_eq!(
            hex::encode(t2.0),
            "000000007fff8000000000000000000000000000000000000000000000000000"
        );
        let half = Target::from_difficulty(0.5).unwrap();
        assert_eq!(
            hex::encode(half.0),
            "00000001fffe0000000000000000000000000000000000000000000000000000"
        );
        assert!((Target::from_difficulty(1000.0).unwrap().difficulty() - 1000.0).abs() < 1e-9);
        assert_eq!(Target::from_difficulty(1e-80).unwrap(), Target::MAX);
        assert_eq!(Target::from_difficulty(1e300).unwrap(), Target([0; 32]));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Target::from_difficulty(bad).is_err());
        }
    }

    #[test]
    fn merkle_and_coinbase() {
        let cb = build_coinbase(b"ab", b"cd", b"ef", b"gh");
        assert_eq!(cb, b"abcdefgh");
        let leaf = sha256d(&cb);
        assert_eq!(merkle_root(&leaf, &[]), leaf);
        let b1 = sha256d(b"one");
        let b2 = sha256d(b"two");
        let mut cat = leaf.to_vec();
        cat.extend_from_slice(&b1);
        let step1 = sha256d(&cat);
        let mut cat = step1.to_vec();
        cat.extend_from_slice(&b2);
        assert_eq!(merkle_root(&leaf, &[b1, b2]), sha256d(&cat));
    }

    #[test]
    fn genesis_merkle_root_is_its_coinbase_hash() {
        // The genesis block has one transaction, so its merkle root is that transaction's hash.
        let tx = hex::decode(concat!(
            "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff",
            "4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72",
            "206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff",
            "0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f",
            "61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
        ))
        .unwrap();
        // Split it like a pool would, around a 4+4-byte extranonce inside the scriptSig.
        let (c1, rest) = tx.split_at(50);
        let (en1, rest) = rest.split_at(4);
        let (en2, c2) = rest.split_at(4);
        let root = merkle_root(&sha256d(&build_coinbase(c1, en1, en2, c2)), &[]);
        assert_eq!(root, genesis().merkle_root);
    }
}
