//! Fraud proofs: everything anyone holding a node's blocks needs to re-check that the node
//! returned wrong hidden states, with nothing to trust but the node's own signatures.
//!
//! A proof lists consecutive steps of one session on one node, from position 0 through the end of
//! the disputed window: each step's input and output states and the node's signed receipt for
//! them. The receipts bind the states (their digests) and the node's key; the inputs from
//! position 0 rebuild the node's KV cache, so one prefill over all inputs recomputes every output
//! the node claimed. Which checks make a proof valid is `hearth_verify::fraud`; this module only
//! defines its bytes.

use crate::codec::{Reader, Writer};
use crate::error::{Result, WireError};
use crate::hidden::HiddenStates;
use crate::receipt::Receipt;
use crate::{Limits, VERSION};

/// Kind byte of a stored or gossiped fraud proof (after the version byte).
const KIND_FRAUD_PROOF: u8 = 201;

/// One step the accused node answered: what it was sent, what it returned, what it signed.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvenStep {
    /// The hidden states the node received.
    pub input: HiddenStates,
    /// The hidden states the node returned.
    pub output: HiddenStates,
    /// The node's receipt over both.
    pub receipt: Receipt,
}

/// A claim that a node's outputs at positions `window_start..window_start + window_rows` are
/// not what its blocks compute from its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct FraudProof {
    /// First disputed position.
    pub window_start: u32,
    /// Disputed positions (at least 1).
    pub window_rows: u32,
    /// The node's steps from position 0 through the window's end, in order.
    pub steps: Vec<ProvenStep>,
}

impl FraudProof {
    /// The versioned encoding, for files and gossip.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload: usize = self
            .steps
            .iter()
            .map(|s| s.input.data.len() + s.output.data.len() + 512)
            .sum();
        let mut w = Writer::with_capacity(16 + payload);
        w.u8(VERSION)
            .u8(KIND_FRAUD_PROOF)
            .u32(self.window_start)
            .u32(self.window_rows)
            .u32(self.steps.len() as u32);
        for s in &self.steps {
            s.input.encode(&mut w);
            s.output.encode(&mut w);
            s.receipt.encode(&mut w);
        }
        w.finish()
    }

    /// Parses [`FraudProof::to_bytes`]: at most `limits.max_positions` steps, each state within
    /// `limits`, the whole at most `limits.max_frame_bytes`; trailing bytes are an error. Checks
    /// nothing about the claim itself.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_frame_bytes {
            return Err(WireError::TooLarge {
                what: "fraud proof",
                len: bytes.len(),
                max: limits.max_frame_bytes,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("fraud proof version")?;
        if version != VERSION {
            return Err(WireError::Version {
                got: version,
                supported: VERSION,
            });
        }
        let kind = r.u8("fraud proof kind")?;
        if kind != KIND_FRAUD_PROOF {
            return Err(WireError::UnknownKind(kind));
        }
        let window_start = r.u32("fraud proof window start")?;
        let window_rows = r.u32("fraud proof window rows")?;
        if window_rows == 0 {
            return Err(WireError::BadValue {
                what: "fraud proof window rows",
                detail: "an empty window".into(),
            });
        }
        let n = r.len("fraud proof steps", limits.max_positions as usize)?;
        // Each step takes well over 64 bytes, so this bounds the allocation by the input size.
        let mut steps = Vec::with_capacity(n.min(r.remaining() / 64));
        for _ in 0..n {
            steps.push(ProvenStep {
                input: HiddenStates::decode(&mut r, limits)?,
                output: HiddenStates::decode(&mut r, limits)?,
                receipt: Receipt::decode(&mut r, limits)?,
            });
        }
        r.end("fraud proof")?;
        Ok(Self {
            window_start,
            window_rows,
            steps,
        })
    }
}
