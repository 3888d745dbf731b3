//! How fraud proofs spread, so that every client excludes a caught node, not only the one that
//! caught it.
//!
//! 1. The client that caught a node ([`SwarmChain`](crate::SwarmChain)'s spot checks) submits
//!    the proof ([`FraudRequest::Submit`]) to other servers of the same blocks.
//! 2. Each such node re-checks it on its own weights ([`recompute`], then
//!    [`Replay::judge`](hearth_verify::Replay::judge)); if it holds, the node keeps it on its
//!    [`FraudBoard`] and provides [`fraud_key`](crate::dht::fraud_key)`(model, accused)` in the
//!    DHT, refreshed with its announcement.
//! 3. Any client that finds the accused among a model's servers also looks for providers of
//!    that key; it fetches the proof from one ([`FraudRequest::Fetch`]) and re-checks it itself
//!    by re-executing the proof's positions on other servers, before excluding the accused.
//!
//! Nobody trusts the submitter or the host: a proof is signed by the accused, and every party
//! that acts on it recomputes it first. A proof that does not hold costs one re-execution and
//! is remembered as rejected.

use hearth_core::BlockRange;
use hearth_engine::{DType, Device, SliceServer, Tensor};
use hearth_wire::{FraudProof, FraudReply, HiddenStates};
use libp2p::PeerId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Most proofs a node hosts; the oldest goes first.
pub const MAX_HOSTED_PROOFS: usize = 32;
/// Most bytes of proofs a node hosts (a proof of a long session can take megabytes).
pub const MAX_HOSTED_BYTES: usize = 256 << 20;

/// The fraud proofs a node re-checked and serves to anyone who asks, at most one per accused
/// key, bounded in count and bytes.
pub struct FraudBoard {
    hosted: Mutex<VecDeque<Hosted>>,
    /// One re-check at a time: each costs a prefill over the proof's positions.
    pub(crate) checking: tokio::sync::Semaphore,
}

struct Hosted {
    accused: [u8; 32],
    peer: PeerId,
    /// The encoded [`FraudReply::Proof`], ready to send.
    reply: Arc<Vec<u8>>,
}

impl Default for FraudBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl FraudBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self {
            hosted: Mutex::default(),
            checking: tokio::sync::Semaphore::new(1),
        }
    }

    fn hosted(&self) -> std::sync::MutexGuard<'_, VecDeque<Hosted>> {
        self.hosted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a proof against `accused` is hosted.
    pub fn holds(&self, accused: &[u8; 32]) -> bool {
        self.hosted().iter().any(|h| &h.accused == accused)
    }

    /// The encoded reply carrying the proof against `accused`, if hosted.
    pub fn reply_for(&self, accused: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.hosted()
            .iter()
            .find(|h| &h.accused == accused)
            .map(|h| h.reply.clone())
    }

    /// Hosts `proof` (already re-checked) against `accused`, evicting the oldest proofs to stay
    /// within [`MAX_HOSTED_PROOFS`] and [`MAX_HOSTED_BYTES`]. A proof larger than the byte bound
    /// is not hosted.
    pub fn host(&self, accused: [u8; 32], peer: PeerId, proof: FraudProof) -> bool {
        let reply = FraudReply::Proof(proof).encode();
        if reply.len() > MAX_HOSTED_BYTES {
            return false;
        }
        let mut hosted = self.hosted();
        hosted.retain(|h| h.accused != accused);
        while hosted.len() >= MAX_HOSTED_PROOFS
            || hosted.iter().map(|h| h.reply.len()).sum::<usize>() + reply.len() > MAX_HOSTED_BYTES
        {
            hosted.pop_front();
        }
        hosted.push_back(Hosted {
            accused,
            peer,
            reply: Arc::new(reply),
        });
        true
    }

    /// The peers proofs are hosted against (for refreshing the DHT provider records).
    pub fn accused_peers(&self) -> Vec<PeerId> {
        self.hosted().iter().map(|h| h.peer).collect()
    }
}

/// What blocks `span` of `server` compute from `input` (positions from `input.start`, in one
/// prefill), rounded to `input`'s wire dtype as a node would send it: what
/// [`Replay::judge`](hearth_verify::Replay::judge) compares a proof's claimed rows with.
pub fn recompute(
    server: &SliceServer,
    span: BlockRange,
    input: &HiddenStates,
) -> hearth_engine::Result<Vec<f32>> {
    let id = server.open_span(input.rows as usize + input.start as usize, span)?;
    let result = (|| -> hearth_engine::Result<Vec<f32>> {
        let x = Tensor::from_vec(
            input.to_f32(),
            (1, input.rows as usize, input.cols as usize),
            &Device::Cpu,
        )?;
        let out = server.step(id, input.start as usize, &x)?;
        Ok(out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    })();
    let _ = server.close(id);
    let values = result?;
    Ok(HiddenStates::from_f32(input.dtype, input.start, input.rows, input.cols, &values).to_f32())
}
