//! What a node publishes in the DHT about itself, per model it serves. Signed by the node, so a
//! DHT peer that stores or relays the record cannot alter it, and carrying its own issue time and
//! lifetime, so stale records die even on peers that never hear from the node again.

use crate::codec::{Reader, Writer};
use crate::error::{Result, WireError};
use crate::{Limits, VERSION};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hearth_core::{BlockRange, ContentHash};

const ANNOUNCE_DOMAIN: &[u8] = b"hearth/announcement/v2";
/// Most RTT entries one announcement carries.
pub const MAX_RTTS: usize = 32;
/// Most listen addresses one announcement carries.
pub const MAX_ADDRS: usize = 16;
/// Longest listen address (binary multiaddr) one announcement carries, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// Round-trip time from the announcing node to another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRtt {
    /// The other node's ed25519 public key (its peer id inlines it).
    pub node: [u8; 32],
    /// Measured round-trip time to it, in microseconds.
    pub rtt_us: u32,
}

/// A node's offer for one model: the span it serves, how fast, how much room it has, and where to
/// reach it. Valid until `issued_unix_ms + ttl_secs`; nodes republish every `ttl_secs / 3`.
#[derive(Clone, Debug, PartialEq)]
pub struct Announcement {
    /// Id of the model served (content hash of its config, blocks and head).
    pub model_id: ContentHash,
    /// Blocks in the whole model (a sanity check against a mismatched model id).
    pub n_blocks: u32,
    /// Blocks of the model this node serves; lies within `0..n_blocks`.
    pub span: BlockRange,
    /// Measured compute time per block per token (decode), milliseconds.
    pub block_ms: f32,
    /// Tokens/s the node offers on each block of its span.
    pub throughput: f32,
    /// KV-cache room left, in tokens of the whole span.
    pub cache_free_tokens: u64,
    /// Sessions that did work recently (hearth nodes: grew in the last 10 s); sessions held
    /// open without work do not count. Clients read it as the node's load.
    pub active_sessions: u32,
    /// Asking price in micro-credits per 1000 block-tokens (0 = free; for the market wave).
    pub price: u64,
    /// Which nodes compute the same bits as this one on the same weights
    /// (`hearth_engine::build_class`): spot checks pick verifiers of the same class.
    pub build_class: u64,
    /// Measured RTTs to peers that serve the blocks after this span (likely next hops).
    pub rtts: Vec<PeerRtt>,
    /// Multiaddrs, binary form, where the node listens.
    pub addrs: Vec<Vec<u8>>,
    /// When the node issued the record, Unix time in milliseconds.
    pub issued_unix_ms: u64,
    /// Lifetime of the record from `issued_unix_ms`, in seconds; readers drop it after that.
    pub ttl_secs: u32,
    /// The node's ed25519 public key.
    pub node: [u8; 32],
}

/// An announcement plus the node's signature over it.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedAnnouncement {
    /// The signed record.
    pub announcement: Announcement,
    /// ed25519 signature by `announcement.node` over the domain `hearth/announcement/v2` followed
    /// by the record's encoding.
    pub signature: [u8; 64],
}

impl Announcement {
    fn encode_body(&self, w: &mut Writer) {
        w.fixed(&self.model_id.0)
            .u32(self.n_blocks)
            .u32(self.span.start())
            .u32(self.span.end())
            .f32(self.block_ms)
            .f32(self.throughput)
            .u64(self.cache_free_tokens)
            .u32(self.active_sessions)
            .u64(self.price)
            .u64(self.build_class)
            .u32(self.rtts.len() as u32);
        for r in &self.rtts {
            w.fixed(&r.node).u32(r.rtt_us);
        }
        w.u32(self.addrs.len() as u32);
        for a in &self.addrs {
            w.bytes(a);
        }
        w.u64(self.issued_unix_ms)
            .u32(self.ttl_secs)
            .fixed(&self.node);
    }

    fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512);
        w.fixed(ANNOUNCE_DOMAIN);
        self.encode_body(&mut w);
        w.finish()
    }

    /// Signs with the node's key (whose public half must be `self.node`).
    pub fn sign(mut self, key: &SigningKey) -> SignedAnnouncement {
        self.node = key.verifying_key().to_bytes();
        self.rtts.truncate(MAX_RTTS);
        self.addrs.retain(|a| a.len() <= MAX_ADDR_LEN);
        self.addrs.truncate(MAX_ADDRS);
        let signature = key.sign(&self.signing_bytes()).to_bytes();
        SignedAnnouncement {
            announcement: self,
            signature,
        }
    }

    /// Whether the record is past its lifetime at `now_unix_ms`.
    pub fn expired(&self, now_unix_ms: u64) -> bool {
        // Saturating: `issued_unix_ms` comes from a peer and may be anything.
        now_unix_ms
            > self
                .issued_unix_ms
                .saturating_add(u64::from(self.ttl_secs) * 1000)
    }
}

impl SignedAnnouncement {
    /// The DHT record value: version byte, announcement, signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(600);
        w.u8(VERSION);
        self.announcement.encode_body(&mut w);
        w.fixed(&self.signature);
        w.finish()
    }

    /// Decodes, bounds every list, and checks the signature.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_announcement_bytes {
            return Err(WireError::TooLarge {
                what: "announcement",
                len: bytes.len(),
                max: limits.max_announcement_bytes,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("announcement version")?;
        if version != VERSION {
            return Err(WireError::Version {
                got: version,
                supported: VERSION,
            });
        }
        let model_id = ContentHash(r.array("announcement model id")?);
        let n_blocks = r.u32("announcement n_blocks")?;
        let start = r.u32("announcement span")?;
        let end = r.u32("announcement span")?;
        if end > n_blocks || n_blocks > limits.max_blocks {
            return Err(WireError::BadValue {
                what: "announcement span",
                detail: format!("{start}..{end} of {n_blocks} blocks"),
            });
        }
        let span = BlockRange::new(start, end).map_err(|e| WireError::BadValue {
            what: "announcement span",
            detail: e.to_string(),
        })?;
        let block_ms = r.f32("announcement block_ms")?;
        let throughput = r.f32("announcement throughput")?;
        if !(block_ms.is_finite() && block_ms >= 0.0 && throughput.is_finite() && throughput >= 0.0)
        {
            return Err(WireError::BadValue {
                what: "announcement speed",
                detail: format!("block_ms {block_ms}, throughput {throughput}"),
            });
        }
        let cache_free_tokens = r.u64("announcement cache_free_tokens")?;
        let active_sessions = r.u32("announcement active_sessions")?;
        let price = r.u64("announcement price")?;
        let build_class = r.u64("announcement build class")?;
        let n_rtts = r.len("announcement rtts", MAX_RTTS)?;
        let mut rtts = Vec::with_capacity(n_rtts);
        for _ in 0..n_rtts {
            rtts.push(PeerRtt {
                node: r.array("announcement rtt node")?,
                rtt_us: r.u32("announcement rtt")?,
            });
        }
        let n_addrs = r.len("announcement addrs", MAX_ADDRS)?;
        let mut addrs = Vec::with_capacity(n_addrs);
        for _ in 0..n_addrs {
            addrs.push(r.bytes("announcement addr", MAX_ADDR_LEN)?.to_vec());
        }
        let announcement = Announcement {
            model_id,
            n_blocks,
            span,
            block_ms,
            throughput,
            cache_free_tokens,
            active_sessions,
            price,
            build_class,
            rtts,
            addrs,
            issued_unix_ms: r.u64("announcement issued")?,
            ttl_secs: r.u32("announcement ttl")?,
            node: r.array("announcement node key")?,
        };
        let signature = r.array("announcement signature")?;
        r.end("announcement")?;
        let key = VerifyingKey::from_bytes(&announcement.node)
            .map_err(|_| WireError::BadSignature("announcement"))?;
        key.verify(
            &announcement.signing_bytes(),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| WireError::BadSignature("announcement"))?;
        Ok(Self {
            announcement,
            signature,
        })
    }
}
