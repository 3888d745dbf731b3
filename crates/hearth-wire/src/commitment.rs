//! Activation commitments: a 16-byte sketch of every hidden-state row a node returns, signed
//! inside its receipt (docs/verification.md).
//!
//! A row's sketch is [`SKETCH_LEN`] random ±1 projections of the row as sent on the wire:
//! `s_j = Σ_i r_j(i) · x_i`, summed in f64 in column order and rounded to f32. The signs are
//! public and fixed (SplitMix64 from [`SKETCH_SEED`], one word per column, bit `j` = sign of
//! projection `j`), so the sketch is a pure function of the row's bytes: a client recomputes it
//! from the states it received and rejects a receipt whose commitment differs in any bit, and a
//! verifier that recomputes the row compares sketches within a tolerance. Each projection of an
//! error vector `e` has standard deviation `‖e‖₂`, so four of them estimate the size of any
//! deviation from the honest row. They do not pin down a deviation chosen orthogonal to the
//! public signs: whoever holds the full rows (the client, a fraud proof) compares those instead.
//!
//! Invariant: the same bytes give the same sketch bits on every machine (IEEE f64 additions in a
//! fixed order, one final rounding to f32).

use crate::codec::{Reader, Writer};
use crate::error::{Result, WireError};
use crate::hidden::HiddenStates;
use crate::Limits;
use hearth_core::SplitMix64;

/// Projections per row: 4 × f32 = 16 bytes per token per stage.
pub const SKETCH_LEN: usize = 4;
/// Seed of the public projection signs (a protocol constant: changing it changes every sketch).
pub const SKETCH_SEED: u64 = 0x6865_6172_7468_736b; // "hearthsk"

/// One row's sketch.
pub type RowSketch = [f32; SKETCH_LEN];

/// The sketches of a step's output rows, in row order.
#[derive(Clone, Debug, Default)]
pub struct ActivationCommitment {
    /// One sketch per row of the committed hidden states.
    pub rows: Vec<RowSketch>,
}

impl PartialEq for ActivationCommitment {
    /// Bitwise: a commitment either is the one computed from the bytes or it is not.
    fn eq(&self, other: &Self) -> bool {
        self.rows.len() == other.rows.len()
            && self
                .rows
                .iter()
                .flatten()
                .zip(other.rows.iter().flatten())
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for ActivationCommitment {}

/// The public sign words of the first `cols` columns (bit `j` set = projection `j` subtracts).
pub fn sketch_signs(cols: usize) -> Vec<u64> {
    let mut rng = SplitMix64::new(SKETCH_SEED);
    (0..cols).map(|_| rng.next_u64()).collect()
}

/// The sketch of one row given its sign words (`signs.len() >= row.len()`).
pub fn sketch_row(row: &[f32], signs: &[u64]) -> RowSketch {
    let mut sums = [0f64; SKETCH_LEN];
    for (x, word) in row.iter().zip(signs) {
        let x = f64::from(*x);
        for (j, sum) in sums.iter_mut().enumerate() {
            if word >> j & 1 == 0 {
                *sum += x;
            } else {
                *sum -= x;
            }
        }
    }
    sums.map(|s| s as f32)
}

impl ActivationCommitment {
    /// The commitment to `states`: one sketch per row of its values as sent.
    pub fn of(states: &HiddenStates) -> Self {
        Self::of_rows(&states.to_f32(), states.cols as usize)
    }

    /// The commitment to row-major `values` of width `cols`.
    pub fn of_rows(values: &[f32], cols: usize) -> Self {
        let signs = sketch_signs(cols);
        Self {
            rows: values
                .chunks_exact(cols.max(1))
                .map(|row| sketch_row(row, &signs))
                .collect(),
        }
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        4 + self.rows.len() * SKETCH_LEN * 4
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u32(self.rows.len() as u32);
        for v in self.rows.iter().flatten() {
            w.f32(*v);
        }
    }

    /// Decodes at most `limits.max_rows` sketches of finite values.
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        let n = r.len("commitment rows", limits.max_rows as usize)?;
        if r.remaining() < n * SKETCH_LEN * 4 {
            return Err(WireError::Truncated {
                what: "commitment sketches",
                need: n * SKETCH_LEN * 4,
                have: r.remaining(),
            });
        }
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let mut row = [0f32; SKETCH_LEN];
            for v in &mut row {
                *v = r.f32("commitment sketch")?;
                if !v.is_finite() {
                    return Err(WireError::BadValue {
                        what: "commitment sketch",
                        detail: "non-finite value".into(),
                    });
                }
            }
            rows.push(row);
        }
        Ok(Self { rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HiddenDType;

    #[test]
    fn the_sketch_is_a_signed_sum_with_the_public_signs() {
        let signs = sketch_signs(3);
        let row = [1.0f32, 2.0, 4.0];
        let s = sketch_row(&row, &signs);
        for (j, v) in s.iter().enumerate() {
            let expected: f32 = row
                .iter()
                .zip(&signs)
                .map(|(x, w)| if w >> j & 1 == 0 { *x } else { -*x })
                .sum();
            assert_eq!(*v, expected);
        }
        // The four projections are different sign patterns (not four copies of one).
        let patterns: std::collections::HashSet<u64> = (0..SKETCH_LEN)
            .map(|j| {
                sketch_signs(64)
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, w)| acc | (w >> j & 1) << i)
            })
            .collect();
        assert_eq!(patterns.len(), SKETCH_LEN);
    }

    #[test]
    fn any_changed_value_changes_the_commitment_and_it_round_trips() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let h = HiddenStates::from_f32(HiddenDType::F16, 5, 4, 16, &values);
        let c = ActivationCommitment::of(&h);
        assert_eq!(c.rows.len(), 4);
        let mut tampered = h.clone();
        tampered.data[37] ^= 0x10;
        assert_ne!(ActivationCommitment::of(&tampered), c);
        let mut w = Writer::with_capacity(c.encoded_len());
        c.encode(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes.len(), c.encoded_len());
        let back = ActivationCommitment::decode(&mut Reader::new(&bytes), &Limits::default());
        assert_eq!(back.unwrap(), c);
    }

    #[test]
    fn oversized_truncated_and_non_finite_commitments_are_refused() {
        let limits = Limits {
            max_rows: 2,
            ..Limits::default()
        };
        let mut w = Writer::with_capacity(8);
        w.u32(3);
        let too_many = w.finish();
        assert!(matches!(
            ActivationCommitment::decode(&mut Reader::new(&too_many), &limits),
            Err(WireError::TooLarge { .. })
        ));
        let mut w = Writer::with_capacity(8);
        w.u32(1).f32(1.0);
        let truncated = w.finish();
        assert!(matches!(
            ActivationCommitment::decode(&mut Reader::new(&truncated), &limits),
            Err(WireError::Truncated { .. })
        ));
        let mut w = Writer::with_capacity(24);
        w.u32(1).f32(1.0).f32(f32::NAN).f32(0.0).f32(0.0);
        let nan = w.finish();
        assert!(matches!(
            ActivationCommitment::decode(&mut Reader::new(&nan), &limits),
            Err(WireError::BadValue { .. })
        ));
    }
}
