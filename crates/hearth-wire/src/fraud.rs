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
use crate::messages::{header, read_header, MAX_ERROR_MESSAGE};
use crate::receipt::Receipt;
use crate::Limits;
use hearth_core::ContentHash;

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
        let mut w = header(KIND_FRAUD_PROOF, self.encoded_len_hint());
        self.encode_body(&mut w);
        w.finish()
    }

    /// Bytes the encoding takes, about (for buffer sizes).
    fn encoded_len_hint(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.input.data.len() + s.output.data.len() + 512)
            .sum::<usize>()
            + 16
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u32(self.window_start)
            .u32(self.window_rows)
            .u32(self.steps.len() as u32);
        for s in &self.steps {
            s.input.encode(w);
            s.output.encode(w);
            s.receipt.encode(w);
        }
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
        let kind = read_header(&mut r)?;
        if kind != KIND_FRAUD_PROOF {
            return Err(WireError::UnknownKind(kind));
        }
        let proof = Self::decode_body(&mut r, limits)?;
        r.end("fraud proof")?;
        Ok(proof)
    }

    fn decode_body(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
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
                input: HiddenStates::decode(r, limits)?,
                output: HiddenStates::decode(r, limits)?,
                receipt: Receipt::decode(r, limits)?,
            });
        }
        Ok(Self {
            window_start,
            window_rows,
            steps,
        })
    }
}

/// A request on a [`FRAUD_PROTOCOL`](crate::FRAUD_PROTOCOL) stream: the client sends one, the
/// node answers with one [`FraudReply`], and the stream closes.
///
/// This is how fraud proofs spread: the client that caught a node submits the proof to nodes
/// that serve the same blocks; each re-checks it on its own weights and, if it holds, hosts it
/// and says so in the DHT; any later client finds the hosts, fetches the proof and re-checks it
/// before excluding the accused. Nobody has to trust the submitter or the host.
#[derive(Clone, Debug, PartialEq)]
pub enum FraudRequest {
    /// Re-check this proof and, if it holds, host it (kind 11).
    Submit(FraudProof),
    /// Send the proof hosted against `accused` (an ed25519 key) about `model_id` (kind 12).
    Fetch {
        /// The model the accused served.
        model_id: ContentHash,
        /// The accused node's key.
        accused: [u8; 32],
    },
}

/// A node's answer to a [`FraudRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum FraudReply {
    /// The proof re-checked and is hosted (kind 111).
    Accepted,
    /// The proof was not hosted, and why (kind 112; at most [`MAX_ERROR_MESSAGE`] bytes).
    Refused(String),
    /// The hosted proof (kind 113).
    Proof(FraudProof),
    /// No proof hosted against that key (kind 114).
    NotFound,
}

const KIND_SUBMIT: u8 = 11;
const KIND_FETCH: u8 = 12;
const KIND_ACCEPTED: u8 = 111;
const KIND_REFUSED: u8 = 112;
const KIND_PROOF: u8 = 113;
const KIND_NOT_FOUND: u8 = 114;

impl FraudRequest {
    /// The frame body (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Submit(p) => {
                let mut w = header(KIND_SUBMIT, p.encoded_len_hint());
                p.encode_body(&mut w);
                w.finish()
            }
            Self::Fetch { model_id, accused } => {
                let mut w = header(KIND_FETCH, 64);
                w.fixed(&model_id.0).fixed(accused);
                w.finish()
            }
        }
    }

    /// Parses a frame body, checking every length against `limits`; trailing bytes are an error.
    /// Checks nothing about a submitted proof's claim.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let out = match read_header(&mut r)? {
            KIND_SUBMIT => Self::Submit(FraudProof::decode_body(&mut r, limits)?),
            KIND_FETCH => Self::Fetch {
                model_id: ContentHash(r.array("fetch model id")?),
                accused: r.array("fetch accused key")?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        r.end("fraud request")?;
        Ok(out)
    }
}

impl FraudReply {
    /// The frame body (without the length prefix); a refusal is cut to [`MAX_ERROR_MESSAGE`]
    /// bytes at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Accepted => header(KIND_ACCEPTED, 0).finish(),
            Self::Refused(why) => {
                let mut end = why.len().min(MAX_ERROR_MESSAGE);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                let mut w = header(KIND_REFUSED, end + 4);
                w.bytes(&why.as_bytes()[..end]);
                w.finish()
            }
            Self::Proof(p) => {
                let mut w = header(KIND_PROOF, p.encoded_len_hint());
                p.encode_body(&mut w);
                w.finish()
            }
            Self::NotFound => header(KIND_NOT_FOUND, 0).finish(),
        }
    }

    /// Parses a frame body, checking every length against `limits`; trailing bytes are an error.
    /// Checks nothing about a returned proof's claim.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let out = match read_header(&mut r)? {
            KIND_ACCEPTED => Self::Accepted,
            KIND_REFUSED => Self::Refused(r.string("refusal", MAX_ERROR_MESSAGE)?),
            KIND_PROOF => Self::Proof(FraudProof::decode_body(&mut r, limits)?),
            KIND_NOT_FOUND => Self::NotFound,
            other => return Err(WireError::UnknownKind(other)),
        };
        r.end("fraud reply")?;
        Ok(out)
    }
}
