//! hearth's wire protocol: the only crate that defines bytes on the network.
//!
//! Invariants:
//! - every decoder takes a byte slice and [`Limits`], checks each length and shape against the
//!   limits before allocating, rejects trailing bytes, and never panics (fuzzed: `fuzz/`);
//! - every message starts with the protocol [`VERSION`];
//! - signatures (receipts, announcements) are ed25519 over domain-separated encodings, checkable
//!   with nothing but the signer's public key.

mod announce;
mod codec;
mod commitment;
mod error;
mod frame;
mod fraud;
mod hidden;
mod messages;
mod receipt;

pub use announce::{Announcement, PeerRtt, SignedAnnouncement, MAX_ADDRS, MAX_ADDR_LEN, MAX_RTTS};
pub use codec::{Reader, Writer};
pub use commitment::{
    sketch_row, sketch_signs, ActivationCommitment, RowSketch, SKETCH_LEN, SKETCH_SEED,
};
pub use ed25519_dalek::SigningKey;
pub use error::{Result, WireError};
pub use frame::{read_frame, read_frame_body, read_frame_len, write_frame};
pub use fraud::{FraudProof, FraudReply, FraudRequest, ProvenStep};
pub use hidden::{HiddenDType, HiddenStates};
pub use messages::{
    ErrorCode, ErrorReply, OpenSession, Opened, Request, Response, Step, StepDone,
    MAX_ERROR_MESSAGE,
};
pub use receipt::{Receipt, ReceiptBody, SessionKey, SESSION_KEY_LEN};

/// The libp2p protocol name of inference sessions.
pub const INFERENCE_PROTOCOL: &str = "/hearth/inference/1";
/// The libp2p protocol name of fraud-proof exchange ([`FraudRequest`], [`FraudReply`]).
pub const FRAUD_PROTOCOL: &str = "/hearth/fraud/1";
/// Wire format version; bumped on any incompatible change (2: receipts carry the start position
/// and an activation commitment; 3: announcements carry the build class).
pub const VERSION: u8 = 3;

/// Hard limits on everything a peer can make us allocate.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame body.
    pub max_frame_bytes: usize,
    /// Most hidden-state rows (tokens) in one step.
    pub max_rows: u32,
    /// Widest hidden state.
    pub max_hidden: u32,
    /// Highest position (context length) a session may reach.
    pub max_positions: u32,
    /// Most blocks a model may have.
    pub max_blocks: u32,
    /// Largest announcement record.
    pub max_announcement_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 2048 rows × 16384 wide × 2 bytes = 64 MiB: a long prefill of a 70B-class model.
        Self {
            max_frame_bytes: 64 << 20 | 4096,
            max_rows: 2048,
            max_hidden: 16_384,
            max_positions: 131_072,
            max_blocks: 1024,
            max_announcement_bytes: 8192,
        }
    }
}
