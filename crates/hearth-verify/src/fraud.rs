//! Checking a [`FraudProof`]: is it a well-formed, signed record of one node's session, and
//! does recomputing it disagree with what the node signed?
//!
//! [`Replay::of`] does every check that needs no model (signatures by one key, one session,
//! model and span, digests and commitments matching the states, positions from 0 without gaps,
//! the window inside them) and returns the merged inputs to recompute; [`Replay::judge`] compares the
//! recomputation with the node's signed rows in the window. A proof holds when `judge` says
//! [`Verdict::Disagrees`](crate::Verdict::Disagrees): the node signed outputs its blocks do not
//! compute from inputs it signed for.

use crate::compare::{compare_rows, Comparison};
use hearth_core::{BlockRange, ContentHash};
use hearth_wire::{ActivationCommitment, FraudProof, HiddenStates, SessionKey};
use thiserror::Error;

/// Why a fraud proof is not even a valid record (before any recomputation).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FraudError {
    /// No steps.
    #[error("the proof has no steps")]
    Empty,
    /// A receipt's signature does not verify.
    #[error("step {0}: receipt signature does not verify")]
    Signature(usize),
    /// Steps signed by different keys, or for different sessions, models or spans.
    #[error("step {0}: not the same node, session, model and span as step 0")]
    Mixed(usize),
    /// A step's states do not match its receipt.
    #[error("step {step}: {what} does not match the receipt")]
    Mismatch {
        /// Index of the step.
        step: usize,
        /// Which part.
        what: &'static str,
    },
    /// A step starts past the positions before it (a gap): steps cover positions 0.., each
    /// starting at the end of those before it or below (a rewind, which overwrites from there).
    #[error("step {step}: starts at position {got}, past the {expected} positions before it")]
    Positions {
        /// Index of the step.
        step: usize,
        /// Positions covered before it (the latest start allowed).
        expected: u32,
        /// Where it starts.
        got: u32,
    },
    /// The disputed window is not inside the proven positions.
    #[error("window {start}..{end} is outside the proven positions 0..{proven}")]
    Window {
        /// First disputed position.
        start: u32,
        /// End of the disputed positions.
        end: u64,
        /// Positions the steps cover.
        proven: u32,
    },
}

/// A structurally valid proof, ready to be recomputed.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The accused node's ed25519 key.
    pub node: [u8; 32],
    /// The session the steps belong to.
    pub session: SessionKey,
    /// The model the node claimed to run.
    pub model_id: ContentHash,
    /// The blocks it claimed to run.
    pub span: BlockRange,
    /// Every input, positions `0..end`, merged into one prefill (a rewound position holds its
    /// latest input, as the node's cache did).
    pub input: HiddenStates,
    /// The node's outputs at the disputed positions, row-major f32.
    pub claimed: Vec<f32>,
    /// First disputed position.
    pub window_start: u32,
    /// Disputed positions.
    pub window_rows: u32,
}

impl Replay {
    /// Checks `proof` as far as possible without the model.
    pub fn of(proof: &FraudProof) -> Result<Self, FraudError> {
        let first = proof.steps.first().ok_or(FraudError::Empty)?;
        let head = &first.receipt;
        let mut input = first.input.clone();
        input.rows = 0;
        input.data.clear();
        let cols = input.cols as usize;
        let row_bytes = cols * input.dtype.bytes_per_value();
        // The latest output of every position, row-major f32.
        let mut outputs: Vec<f32> = Vec::new();
        for (i, s) in proof.steps.iter().enumerate() {
            let r = &s.receipt;
            r.verify().map_err(|_| FraudError::Signature(i))?;
            if r.node != head.node
                || r.body.session != head.body.session
                || r.body.model_id != head.body.model_id
                || r.body.span != head.body.span
            {
                return Err(FraudError::Mixed(i));
            }
            let mismatch = |what| FraudError::Mismatch { step: i, what };
            if r.body.input != s.input.digest() {
                return Err(mismatch("input digest"));
            }
            if r.body.output != s.output.digest() {
                return Err(mismatch("output digest"));
            }
            if r.body.start != s.input.start
                || s.output.start != s.input.start
                || s.output.rows != s.input.rows
                || s.output.cols != s.input.cols
                || s.output.dtype != s.input.dtype
                || s.input.cols != first.input.cols
                || s.input.dtype != first.input.dtype
            {
                return Err(mismatch("shape or positions"));
            }
            if r.body.commitment != ActivationCommitment::of(&s.output) {
                return Err(mismatch("commitment"));
            }
            if s.input.start > input.rows {
                return Err(FraudError::Positions {
                    step: i,
                    expected: input.rows,
                    got: s.input.start,
                });
            }
            // A step below the end rewinds: the node replays from its start, so its rows replace
            // everything from there on.
            let start = s.input.start as usize;
            input.data.truncate(start * row_bytes);
            input.data.extend_from_slice(&s.input.data);
            input.rows = s.input.start + s.input.rows;
            outputs.truncate(start * cols);
            outputs.extend(s.output.to_f32());
        }
        let end = u64::from(proof.window_start) + u64::from(proof.window_rows);
        if end > u64::from(input.rows) {
            return Err(FraudError::Window {
                start: proof.window_start,
                end,
                proven: input.rows,
            });
        }
        let claimed = outputs[proof.window_start as usize * cols..end as usize * cols].to_vec();
        Ok(Self {
            node: head.node,
            session: head.body.session,
            model_id: head.body.model_id,
            span: head.body.span,
            input,
            claimed,
            window_start: proof.window_start,
            window_rows: proof.window_rows,
        })
    }

    /// Compares the node's rows in the window with `recomputed`: the span's output for every
    /// position of [`Replay::input`] (row-major f32, rounded to the wire dtype as a node would
    /// send it).
    pub fn judge(&self, recomputed: &[f32]) -> Comparison {
        let cols = self.input.cols as usize;
        let from = self.window_start as usize * cols;
        let to = from + self.window_rows as usize * cols;
        compare_rows(&self.claimed, recomputed.get(from..to).unwrap_or(&[]), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Verdict, HONEST_TOLERANCE};
    use hearth_wire::{HiddenDType, ProvenStep, ReceiptBody, SigningKey};

    /// A toy "model": output = 2 × input.
    fn step(key: &SigningKey, start: u32, rows: u32, cheat: f32) -> ProvenStep {
        let cols = 8;
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((start * cols + i) as f32 * 0.1).sin())
            .collect();
        let y: Vec<f32> = x.iter().map(|v| 2.0 * v + cheat).collect();
        let input = HiddenStates::from_f32(HiddenDType::F16, start, rows, cols, &x);
        let output = HiddenStates::from_f32(HiddenDType::F16, start, rows, cols, &y);
        let receipt = ReceiptBody {
            session: [4; 16],
            step: u64::from(start),
            model_id: ContentHash::of(b"toy"),
            span: BlockRange::new(0, 2).unwrap(),
            input: input.digest(),
            output: output.digest(),
            start,
            commitment: ActivationCommitment::of(&output),
        }
        .sign(key);
        ProvenStep {
            input,
            output,
            receipt,
        }
    }

    fn proof(cheat: f32) -> FraudProof {
        let key = SigningKey::from_bytes(&[3; 32]);
        FraudProof {
            window_start: 4,
            window_rows: 2,
            steps: vec![
                step(&key, 0, 4, 0.0),
                step(&key, 4, 1, cheat),
                step(&key, 5, 1, 0.0),
            ],
        }
    }

    fn recompute(r: &Replay) -> Vec<f32> {
        let x = r.input.to_f32();
        let y: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        HiddenStates::from_f32(r.input.dtype, 0, r.input.rows, r.input.cols, &y).to_f32()
    }

    #[test]
    fn an_honest_record_is_valid_and_agrees_a_cheat_disagrees() {
        let honest = Replay::of(&proof(0.0)).unwrap();
        assert_eq!(honest.input.rows, 6);
        assert_eq!(honest.claimed.len(), 2 * 8);
        let c = honest.judge(&recompute(&honest));
        assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Agrees, "{c:?}");
        let cheat = Replay::of(&proof(0.05)).unwrap();
        let c = cheat.judge(&recompute(&cheat));
        assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Disagrees, "{c:?}");
    }

    #[test]
    fn a_rewound_session_is_judged_on_the_latest_rows() {
        let key = SigningKey::from_bytes(&[3; 32]);
        // Positions 4 and 5 computed, then rewound to 4 (another node was caught and the
        // generation sampled again): the node's later rows are the ones that count.
        let rewound = |before: f32, after: f32| FraudProof {
            window_start: 4,
            window_rows: 2,
            steps: vec![
                step(&key, 0, 4, 0.0),
                step(&key, 4, 1, before),
                step(&key, 5, 1, before),
                step(&key, 4, 1, after),
                step(&key, 5, 1, after),
            ],
        };
        let judge = |p: &FraudProof| {
            let r = Replay::of(p).unwrap();
            assert_eq!(r.input.rows, 6);
            r.judge(&recompute(&r)).verdict(HONEST_TOLERANCE)
        };
        assert_eq!(judge(&rewound(0.0, 0.0)), Verdict::Agrees);
        assert_eq!(
            judge(&rewound(0.05, 0.0)),
            Verdict::Agrees,
            "superseded rows"
        );
        assert_eq!(judge(&rewound(0.0, 0.05)), Verdict::Disagrees);
    }

    /// Any sequence of validly signed steps (gaps, rewinds, replays from 0) and any window:
    /// `Replay::of` answers without panicking, and an accepted proof claims exactly the
    /// window's rows.
    #[test]
    fn random_step_sequences_never_panic() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut rng = hearth_core::SplitMix64::new(7);
        let mut pick = |n: u32| (rng.next_u64() % u64::from(n)) as u32;
        let (mut accepted, mut rewound) = (0, 0);
        for _ in 0..300 {
            let mut end = 0u32;
            let mut steps = Vec::new();
            for _ in 0..1 + pick(6) {
                // Mostly at the end, sometimes below it (a rewind), sometimes past it (a gap).
                let start = match pick(4) {
                    0 => pick(end + 1),
                    1 => end + 1,
                    _ => end,
                };
                let rows = 1 + pick(4);
                steps.push(step(&key, start, rows, 0.0));
                if start <= end {
                    end = start + rows;
                }
            }
            let p = FraudProof {
                window_start: pick(12),
                window_rows: 1 + pick(6),
                steps,
            };
            let rewinds = p
                .steps
                .windows(2)
                .any(|w| w[1].input.start < w[0].input.start + w[0].input.rows);
            if let Ok(r) = Replay::of(&p) {
                accepted += 1;
                rewound += usize::from(rewinds);
                assert_eq!(
                    r.claimed.len(),
                    p.window_rows as usize * r.input.cols as usize
                );
                assert!(
                    u64::from(p.window_start) + u64::from(p.window_rows) <= u64::from(r.input.rows)
                );
                let _ = r.judge(&recompute(&r));
            }
        }
        assert!(
            accepted > 20 && rewound > 5 && accepted < 300,
            "{accepted} accepted, {rewound} with rewinds"
        );
    }

    #[test]
    fn forged_or_inconsistent_records_are_refused_before_any_recomputation() {
        let mut p = proof(0.0);
        p.steps[1].output.data[0] ^= 1;
        assert!(matches!(
            Replay::of(&p),
            Err(FraudError::Mismatch { step: 1, .. })
        ));
        let mut p = proof(0.0);
        p.steps[2].receipt.signature[3] ^= 1;
        assert_eq!(Replay::of(&p).unwrap_err(), FraudError::Signature(2));
        let mut p = proof(0.0);
        p.steps[2] = step(&SigningKey::from_bytes(&[7; 32]), 5, 1, 0.0);
        assert_eq!(Replay::of(&p).unwrap_err(), FraudError::Mixed(2));
        let mut p = proof(0.0);
        p.steps.remove(1);
        assert!(matches!(
            Replay::of(&p),
            Err(FraudError::Positions { step: 1, .. })
        ));
        // A gap is refused; a rewind is not (below).
        let mut p = proof(0.0);
        p.steps[2] = step(&SigningKey::from_bytes(&[3; 32]), 6, 1, 0.0);
        assert!(matches!(
            Replay::of(&p),
            Err(FraudError::Positions { step: 2, .. })
        ));
        let mut p = proof(0.0);
        p.window_rows = 3;
        assert!(matches!(Replay::of(&p), Err(FraudError::Window { .. })));
        p.steps.clear();
        assert_eq!(Replay::of(&p).unwrap_err(), FraudError::Empty);
    }
}
