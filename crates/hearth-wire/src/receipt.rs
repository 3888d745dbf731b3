//! Signed hop receipts: a node's statement "for session S, step N, I ran blocks A..B of model M
//! on input with digest I at positions P.. and produced output with digest O, whose rows sketch to
//! C". Anyone holding the receipt (and the two hidden-state digests) can check it with nothing but
//! the node's public key: no network, no model, no trust in whoever relays it. The commitment C
//! lets a verifier that recomputes the rows compare them without the rows themselves
//! ([`ActivationCommitment`]).

use crate::codec::{Reader, Writer};
use crate::commitment::ActivationCommitment;
use crate::error::{Result, WireError};
use crate::Limits;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hearth_core::{BlockRange, ContentHash};

/// Domain separation: a receipt signature can never be replayed as another kind of signature.
const RECEIPT_DOMAIN: &[u8] = b"hearth/hop-receipt/v2";
/// Bytes in a [`SessionKey`].
pub const SESSION_KEY_LEN: usize = 16;

/// A client-chosen random session id; receipts from every hop of one generation share it.
pub type SessionKey = [u8; SESSION_KEY_LEN];

/// What a node signs for one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptBody {
    /// The session the step belongs to.
    pub session: SessionKey,
    /// The step's index, as the client sent it in `Step::step`.
    pub step: u64,
    /// Id of the model the node ran.
    pub model_id: ContentHash,
    /// Blocks of the model the node ran.
    pub span: BlockRange,
    /// [`HiddenStates::digest`](crate::HiddenStates::digest) of the states the node received.
    pub input: ContentHash,
    /// [`HiddenStates::digest`](crate::HiddenStates::digest) of the states the node returned;
    /// in a linked chain it is the next hop's `input`.
    pub output: ContentHash,
    /// Position of the first row (the step's `hidden.start`): with the row count in
    /// `commitment`, which tokens of the session this step covers.
    pub start: u32,
    /// Sketch of every output row ([`ActivationCommitment::of`] the returned states).
    pub commitment: ActivationCommitment,
}

/// A body, the signer's ed25519 public key and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// What was signed.
    pub body: ReceiptBody,
    /// The signing node's ed25519 public key.
    pub node: [u8; 32],
    /// ed25519 signature by `node` over the domain `hearth/hop-receipt/v2` followed by the body's
    /// encoding.
    pub signature: [u8; 64],
}

impl ReceiptBody {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(RECEIPT_DOMAIN.len() + 148 + self.commitment.encoded_len());
        w.fixed(RECEIPT_DOMAIN);
        self.encode(&mut w);
        w.finish()
    }

    fn encode(&self, w: &mut Writer) {
        w.fixed(&self.session)
            .u64(self.step)
            .fixed(&self.model_id.0)
            .u32(self.span.start())
            .u32(self.span.end())
            .fixed(&self.input.0)
            .fixed(&self.output.0)
            .u32(self.start);
        self.commitment.encode(w);
    }

    /// Rows the receipt covers (one sketch each).
    pub fn rows(&self) -> u32 {
        self.commitment.rows.len() as u32
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        let session = r.array("receipt session")?;
        let step = r.u64("receipt step")?;
        let model_id = ContentHash(r.array("receipt model id")?);
        let start = r.u32("receipt span start")?;
        let end = r.u32("receipt span end")?;
        let span = BlockRange::new(start, end).map_err(|e| WireError::BadValue {
            what: "receipt span",
            detail: e.to_string(),
        })?;
        Ok(Self {
            session,
            step,
            model_id,
            span,
            input: ContentHash(r.array("receipt input digest")?),
            output: ContentHash(r.array("receipt output digest")?),
            start: r.u32("receipt start position")?,
            commitment: ActivationCommitment::decode(r, limits)?,
        })
    }

    /// Signs with the node's key.
    pub fn sign(self, key: &SigningKey) -> Receipt {
        let signature = key.sign(&self.signing_bytes()).to_bytes();
        Receipt {
            node: key.verifying_key().to_bytes(),
            body: self,
            signature,
        }
    }
}

impl Receipt {
    /// Checks the signature against the embedded public key. Whether that key is the node the
    /// caller talked to is the caller's check ([`Receipt::verify_from`]).
    pub fn verify(&self) -> Result<()> {
        let key =
            VerifyingKey::from_bytes(&self.node).map_err(|_| WireError::BadSignature("receipt"))?;
        let sig = Signature::from_bytes(&self.signature);
        key.verify(&self.body.signing_bytes(), &sig)
            .map_err(|_| WireError::BadSignature("receipt"))
    }

    /// Checks the signature and that it was made by `node` over exactly `expected`.
    pub fn verify_from(&self, node: &[u8; 32], expected: &ReceiptBody) -> Result<()> {
        if &self.node != node {
            return Err(WireError::BadSignature("receipt (signed by another key)"));
        }
        if &self.body != expected {
            return Err(WireError::BadSignature(
                "receipt (body differs from the step)",
            ));
        }
        self.verify()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        self.body.encode(w);
        w.fixed(&self.node).fixed(&self.signature);
    }

    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        Ok(Self {
            body: ReceiptBody::decode(r, limits)?,
            node: r.array("receipt node key")?,
            signature: r.array("receipt signature")?,
        })
    }

    /// Standalone encoding, for storing receipts or handing them to a verifier.
    /// Standalone form starts with the protocol version, so stored receipts stay readable.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(229 + self.body.commitment.encoded_len());
        w.u8(crate::VERSION);
        self.encode(&mut w);
        w.finish()
    }

    /// Parses the [`Receipt::to_bytes`] form (trailing bytes are an error; at most
    /// `Limits::default().max_rows` sketches); does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let version = r.u8("receipt version")?;
        if version != crate::VERSION {
            return Err(WireError::Version {
                got: version,
                supported: crate::VERSION,
            });
        }
        let out = Self::decode(&mut r, &Limits::default())?;
        r.end("receipt")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReceiptBody {
        ReceiptBody {
            session: [7; 16],
            step: 3,
            model_id: ContentHash::of(b"model"),
            span: BlockRange::new(2, 5).unwrap(),
            input: ContentHash::of(b"in"),
            output: ContentHash::of(b"out"),
            start: 4,
            commitment: ActivationCommitment {
                rows: vec![[1.0, -2.0, 0.5, 3.0]],
            },
        }
    }

    #[test]
    fn signed_receipt_verifies_and_round_trips() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let r = body().sign(&key);
        r.verify().unwrap();
        r.verify_from(&key.verifying_key().to_bytes(), &body())
            .unwrap();
        let back = Receipt::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let good = body().sign(&key);
        let mut tampered = Vec::new();
        let mut r = good.clone();
        r.body.step += 1;
        tampered.push(r);
        let mut r = good.clone();
        r.body.output = ContentHash::of(b"made up");
        tampered.push(r);
        let mut r = good.clone();
        r.body.span = BlockRange::new(2, 4).unwrap();
        tampered.push(r);
        let mut r = good.clone();
        r.body.start += 1;
        tampered.push(r);
        let mut r = good.clone();
        r.body.commitment.rows[0][2] = 0.25;
        tampered.push(r);
        let mut r = good.clone();
        r.signature[0] ^= 1;
        tampered.push(r);
        let mut r = good.clone();
        r.node = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        tampered.push(r);
        for t in tampered {
            assert!(t.verify().is_err(), "{t:?} verified");
        }
        let other = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        assert!(good.verify_from(&other, &body()).is_err());
        let mut expected = body();
        expected.input = ContentHash::of(b"something else");
        assert!(good
            .verify_from(&key.verifying_key().to_bytes(), &expected)
            .is_err());
    }
}
