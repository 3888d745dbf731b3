//! The verification trail of one response, and its offline check.
//!
//! A trail is what a light client needs to audit a generation without the model: every hop's
//! signed receipt (with its activation commitment), which receipts form each pass through the
//! chain (so anyone can re-check the linkage), the spot checks with the seed that chose them, and
//! the failovers. [`verify_trail`] is `hearth verify TRAIL.json`: it trusts nothing the trail
//! says about itself and recomputes every verdict from the receipts' bytes.

use hearth_core::{BlockRange, ContentHash};
use hearth_swarm::identity::peer_of_key;
use hearth_swarm::{ChainLog, CheckOutcome};
use hearth_verify::{check_chain, SpotSeed};
use hearth_wire::{Receipt, ReceiptBody};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who computed what for one response: the route, every signed hop receipt, how they link, the
/// spot checks and the failovers. Served to callers so they can check it themselves.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trail {
    /// The model's content id, hex.
    pub model_id: String,
    /// The hops that served the generation at its end, in block order (after any failovers).
    pub route: Vec<RouteHop>,
    /// Every hop receipt the gateway verified, in the order received.
    pub receipts: Vec<ReceiptOut>,
    /// Every pass of hidden states through hops (steps and failover replays) and its linkage.
    #[serde(default)]
    pub steps: Vec<StepOut>,
    /// Every hop abandoned mid-generation and how it was replaced.
    pub failovers: Vec<FailoverOut>,
    /// Windows re-executed on other servers, and the randomness that chose them.
    #[serde(default)]
    pub spot_checks: SpotChecksOut,
    /// Whether every receipt verified against its node's key and the exact bytes exchanged, and
    /// every pass's receipts link from the client's input through every block.
    pub all_verified: bool,
    /// Element type of the hidden states on the wire (`f16`, `bf16`, `f32`): what a verifier
    /// with the model needs to recompute the digests.
    #[serde(default)]
    pub wire_dtype: String,
    /// The prompt's and the generated token ids (`None` when the generation failed before any).
    #[serde(default)]
    pub tokens: Option<TokensOut>,
    /// The sampling parameters, seed included: with the logits, every token choice can be
    /// replayed (`hearth verify TRAIL --model M`).
    #[serde(default)]
    pub sampling: Option<hearth_sampling::SamplingParams>,
    /// Per node: answered steps and the total time spent waiting on them (for metrics; not
    /// serialized).
    #[serde(skip)]
    pub node_latency: Vec<(String, u64, Duration)>,
}

/// The tokens of a generation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokensOut {
    /// The prompt's token ids, as fed to the model.
    pub prompt: Vec<u32>,
    /// The generated token ids, in order.
    pub generated: Vec<u32>,
    /// When a stage corrected earlier outputs (a caught cheater) and tokens were sampled again:
    /// empty when that never happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewinds: Vec<RewindOut>,
    /// With rewinds: every token sampled, in order, the taken-back ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Vec<u32>>,
}

impl TokensOut {
    /// The tokens of `generation` from `prompt`.
    pub fn of(prompt: &[u32], generation: &hearth_engine::Generation) -> Self {
        let rewinds: Vec<RewindOut> = generation
            .rewinds
            .iter()
            .map(|r| RewindOut {
                sampled: r.sampled,
                position: r.position,
            })
            .collect();
        Self {
            prompt: prompt.to_vec(),
            generated: generation.tokens.clone(),
            sampled: (!rewinds.is_empty()).then(|| generation.sampled.clone()),
            rewinds,
        }
    }

    /// Every token sampled, in order (the generated ones when nothing was taken back).
    pub fn sampled(&self) -> &[u32] {
        self.sampled.as_deref().unwrap_or(&self.generated)
    }
}

/// A rewind ([`hearth_engine::Rewind`]): after `sampled` tokens had been sampled, every token
/// drawn from outputs at or after `position` was taken back and sampled again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindOut {
    /// Tokens sampled (taken-back ones included) before it.
    pub sampled: usize,
    /// The first position recomputed.
    pub position: usize,
}

/// One hop of a route: a node and the blocks it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteHop {
    /// The node's peer id (`"local"` for [`crate::LocalBackend`]).
    pub node: String,
    /// The half-open block range it runs, `start..end`.
    pub blocks: String,
}

/// A hop receipt in a form any client can verify: `bytes` is the versioned encoding
/// (`hearth_wire::Receipt::to_bytes`); the other fields repeat its contents for reading.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiptOut {
    /// The signing node's peer id.
    pub node: String,
    /// The node's ed25519 public key, hex (what the signature verifies against).
    pub node_key: String,
    /// The hop's step counter (per session).
    pub step: u64,
    /// The half-open block range the node ran, `start..end`.
    pub blocks: String,
    /// First token position the step covered.
    #[serde(default)]
    pub start: u32,
    /// Positions covered (one activation-commitment sketch each).
    #[serde(default)]
    pub rows: u32,
    /// Digest of the hidden state the node received, hex.
    pub input: String,
    /// Digest of the hidden state the node sent back, hex.
    pub output: String,
    /// The ed25519 signature, hex.
    pub signature: String,
    /// The whole receipt in its versioned encoding, hex.
    pub bytes: String,
}

/// One pass of hidden states through hops.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepOut {
    /// A failover's replay rather than a generation step.
    pub replay: bool,
    /// Blocks the pass covered, `start..end`.
    pub blocks: String,
    /// Digest of what the client fed the first hop, hex.
    pub input: String,
    /// Indices into `receipts` of the pass's hops, in block order.
    pub receipts: Vec<usize>,
    /// Whether the receipts link (the client's check; `hearth verify` redoes it).
    pub linked: bool,
}

/// The spot checks of a generation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpotChecksOut {
    /// Commitment to the seed, fixed before any node answered, hex.
    pub seed_commitment: String,
    /// The seed, revealed after the generation, hex.
    pub seed: Option<String>,
    /// Every window re-executed.
    pub checks: Vec<CheckOut>,
    /// Nodes caught with a fraud proof (the proofs themselves are written by the CLI).
    pub fraud_proofs: Vec<FraudOut>,
}

/// One re-executed window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckOut {
    /// The checked node's peer id.
    pub node: String,
    /// Its ed25519 key, hex (what the draw depends on).
    pub node_key: String,
    /// Its blocks.
    pub blocks: String,
    /// The positions re-executed, `start..end`.
    pub positions: String,
    /// The window index drawn (`u64::MAX` for the prefill).
    pub window: u64,
    /// The probability of the draw; `null` when the check was forced (always-check prefill).
    pub probability: Option<f64>,
    /// The servers that re-executed it.
    pub verifiers: Vec<String>,
    /// Worst-row relative error against the first verifier.
    pub max_error: f64,
    /// `passed`, `failed`, `disputed` or `no_verifier`.
    pub outcome: String,
}

/// A node caught returning wrong hidden states.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FraudOut {
    /// The node's peer id.
    pub node: String,
    /// The disputed positions, `start..end`.
    pub positions: String,
    /// Size of the proof's encoding, bytes.
    pub bytes: usize,
}

/// A hop abandoned mid-generation, as served in a [`Trail`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverOut {
    /// The abandoned node's peer id.
    pub node: String,
    /// The half-open block range it was running, `start..end`.
    pub blocks: String,
    /// Why it was abandoned (timeout, bad answer, ...).
    pub reason: String,
    /// Milliseconds from detecting the failure to the replacement being ready, replay included.
    pub recovery_ms: f64,
    /// Token positions replayed into the replacement to rebuild its cache.
    pub replayed_tokens: usize,
}

fn outcome_name(o: CheckOutcome) -> &'static str {
    match o {
        CheckOutcome::Passed => "passed",
        CheckOutcome::Failed => "failed",
        CheckOutcome::Disputed => "disputed",
        CheckOutcome::NoVerifier => "no_verifier",
    }
}

/// The trail of a swarm chain's log, for hidden states of `dtype` on the wire.
pub fn trail_of(model_id: &ContentHash, log: &ChainLog, dtype: hearth_wire::HiddenDType) -> Trail {
    let receipts: Vec<ReceiptOut> = log
        .receipts
        .iter()
        .map(|(peer, r)| ReceiptOut {
            node: peer.to_string(),
            node_key: hex::encode(r.node),
            step: r.body.step,
            blocks: r.body.span.to_string(),
            start: r.body.start,
            rows: r.body.rows(),
            input: r.body.input.to_hex(),
            output: r.body.output.to_hex(),
            signature: hex::encode(r.signature),
            bytes: hex::encode(r.to_bytes()),
        })
        .collect();
    let steps: Vec<StepOut> = log
        .steps
        .iter()
        .map(|s| StepOut {
            replay: s.replay,
            blocks: s.blocks.to_string(),
            input: s.input.to_hex(),
            receipts: s.receipts.clone(),
            linked: s.linkage.is_ok(),
        })
        .collect();
    Trail {
        model_id: model_id.to_hex(),
        wire_dtype: dtype.name().into(),
        tokens: None,
        sampling: None,
        route: log
            .route
            .iter()
            .map(|(p, r)| RouteHop {
                node: p.to_string(),
                blocks: r.to_string(),
            })
            .collect(),
        // The chain keeps only receipts it verified against the bytes it exchanged.
        all_verified: log.receipts.iter().all(|(_, r)| r.verify().is_ok())
            && log.steps.iter().all(|s| s.linkage.is_ok()),
        receipts,
        steps,
        failovers: log
            .failovers
            .iter()
            .map(|f| FailoverOut {
                node: f.peer.to_string(),
                blocks: f.range.to_string(),
                reason: f.reason.clone(),
                recovery_ms: f.recovery.as_secs_f64() * 1000.0,
                replayed_tokens: f.replayed_tokens,
            })
            .collect(),
        spot_checks: SpotChecksOut {
            seed_commitment: log.spot_commitment.map(|c| c.to_hex()).unwrap_or_default(),
            seed: log.spot_seed.map(|s| hex::encode(s.0)),
            checks: log
                .checks
                .iter()
                .map(|c| CheckOut {
                    node: c.peer.to_string(),
                    node_key: hearth_swarm::identity::public_key_of(&c.peer)
                        .map(hex::encode)
                        .unwrap_or_default(),
                    blocks: c.blocks.to_string(),
                    positions: format!("{}..{}", c.positions.start, c.positions.end),
                    window: c.window,
                    probability: c.probability,
                    verifiers: c.verifiers.iter().map(|p| p.to_string()).collect(),
                    max_error: c.max_error,
                    outcome: outcome_name(c.outcome).into(),
                })
                .collect(),
            fraud_proofs: log
                .fraud_proofs
                .iter()
                .map(|(peer, p)| FraudOut {
                    node: peer.to_string(),
                    positions: format!(
                        "{}..{}",
                        p.window_start,
                        u64::from(p.window_start) + u64::from(p.window_rows)
                    ),
                    bytes: p.to_bytes().len(),
                })
                .collect(),
        },
        node_latency: log
            .per_node
            .iter()
            .map(|(p, t)| (p.to_string(), t.steps, t.total))
            .collect(),
    }
}

/// What [`verify_trail`] checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrailReport {
    /// Receipts whose signature, key ↔ peer id, model id and commitment were checked.
    pub receipts: usize,
    /// Passes whose linkage was recomputed.
    pub steps: usize,
    /// Spot checks whose draw was recomputed from the revealed seed.
    pub draws_checked: usize,
    /// Everything found wrong; empty means the trail verifies.
    pub problems: Vec<String>,
}

fn parse_hash(hex_str: &str) -> Option<ContentHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(ContentHash(out))
}

/// Checks a trail as a light client would, with no model and no network: every receipt's
/// signature, that its key is the peer id it is attributed to, that it ran the trail's model and
/// carries a commitment for each position; every pass's linkage; the spot-check seed against its
/// commitment and every recorded draw against the seed; and that `all_verified` says what these
/// checks found.
pub fn verify_trail(trail: &Trail) -> TrailReport {
    let mut report = TrailReport::default();
    let mut problem = |p: String| report.problems.push(p);
    let Some(model) = parse_hash(&trail.model_id) else {
        problem(format!(
            "model id {:?} is not 32 bytes of hex",
            trail.model_id
        ));
        return report;
    };
    let mut bodies: Vec<Option<ReceiptBody>> = Vec::with_capacity(trail.receipts.len());
    let mut checked = 0;
    for (i, r) in trail.receipts.iter().enumerate() {
        let receipt = match hex::decode(&r.bytes)
            .map_err(|e| e.to_string())
            .and_then(|b| Receipt::from_bytes(&b).map_err(|e| e.to_string()))
        {
            Ok(receipt) => receipt,
            Err(e) => {
                problem(format!("receipt {i}: undecodable: {e}"));
                bodies.push(None);
                continue;
            }
        };
        if receipt.verify().is_err() {
            problem(format!("receipt {i}: bad signature"));
        }
        match peer_of_key(&receipt.node) {
            Some(peer) if peer.to_string() == r.node => {}
            _ => problem(format!(
                "receipt {i}: signed by a key that is not peer {}",
                r.node
            )),
        }
        if receipt.body.model_id != model {
            problem(format!("receipt {i}: ran model {}", receipt.body.model_id));
        }
        if receipt.body.rows() == 0 {
            problem(format!("receipt {i}: no activation commitment"));
        }
        if receipt.body.output.to_hex() != r.output || receipt.body.input.to_hex() != r.input {
            problem(format!(
                "receipt {i}: the readable digests differ from the signed ones"
            ));
        }
        checked += 1;
        bodies.push(Some(receipt.body));
    }
    report.receipts = checked;
    let mut linked_all = true;
    for (i, step) in trail.steps.iter().enumerate() {
        let (Some(blocks), Some(input)) = (
            step.blocks.parse::<BlockRange>().ok(),
            parse_hash(&step.input),
        ) else {
            problem(format!("step {i}: unreadable blocks or input"));
            linked_all = false;
            continue;
        };
        let hops: Option<Vec<&ReceiptBody>> = step
            .receipts
            .iter()
            .map(|r| bodies.get(*r).and_then(Option::as_ref))
            .collect();
        let result = match hops {
            Some(hops) => check_chain(input, blocks, model, &hops).map_err(|e| e.to_string()),
            None => Err("names a missing or undecodable receipt".into()),
        };
        if let Err(e) = &result {
            linked_all = false;
            problem(format!("step {i}: {e}"));
        }
        if result.is_ok() != step.linked {
            problem(format!("step {i}: the trail says linked = {}", step.linked));
        }
        report.steps += 1;
    }
    if !trail.receipts.is_empty() && trail.steps.is_empty() {
        linked_all = false;
        problem("receipts but no passes: linkage cannot be checked".into());
    }
    let spot = &trail.spot_checks;
    if let Some(seed_hex) = &spot.seed {
        let mut seed = [0u8; 32];
        if hex::decode_to_slice(seed_hex, &mut seed).is_err() {
            problem("spot-check seed is not 32 bytes of hex".into());
        } else {
            let seed = SpotSeed(seed);
            if seed.commitment().to_hex() != spot.seed_commitment {
                problem("spot-check seed does not match its commitment".into());
            }
            for (i, c) in spot.checks.iter().enumerate() {
                let Some(p) = c.probability else { continue };
                let mut key = [0u8; 32];
                if hex::decode_to_slice(&c.node_key, &mut key).is_err()
                    || !seed.checks(&key, c.window, p)
                {
                    problem(format!("check {i}: the seed did not draw this window"));
                }
                report.draws_checked += 1;
            }
        }
    }
    let all_ok = report.problems.is_empty() && linked_all;
    if trail.all_verified != all_ok {
        report.problems.push(format!(
            "all_verified is {} but the checks say {all_ok}",
            trail.all_verified
        ));
    }
    report
}
