//! Comparing a node's hidden states with a recomputation.
//!
//! The measure is each row's relative error `‖claimed − recomputed‖₂ / ‖recomputed‖₂`, and a
//! window's verdict is its worst row. Honest nodes on the same kernel path as the verifier give
//! 0 (hearth's CPU kernels are bit-exact across batching, splits and threads: docs/protocol.md,
//! "Determinism"); on another path (AVX-512 vs scalar, hearth's vs candle's kernels) a few
//! values per row round to the neighbouring wire value, far below the tolerance. The tolerance and
//! the measurements it comes from are in docs/verification.md.

use hearth_wire::{sketch_row, sketch_signs, RowSketch, SKETCH_LEN};

/// Largest worst-row relative error an honest node is allowed. Calibrated on SmolLM2 and the
/// 1B shapes (docs/verification.md): honest paths stay below 1/10 of it, additive noise of 1e-3
/// relative (the smallest adversary) lands above 2×.
pub const HONEST_TOLERANCE: f64 = 3e-4;

/// How a window's claimed rows compare with a recomputation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Rows compared.
    pub rows: usize,
    /// Largest per-row relative error.
    pub max_error: f64,
    /// Mean per-row relative error.
    pub mean_error: f64,
}

/// Whether a window passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the tolerance.
    Agrees,
    /// Beyond it: the node's output is not what its blocks compute.
    Disagrees,
}

impl Comparison {
    /// The verdict at `tolerance`; a comparison of zero rows agrees vacuously.
    pub fn verdict(&self, tolerance: f64) -> Verdict {
        // A NaN error (never produced by finite inputs) counts as cheating.
        if self.max_error.is_nan() || self.max_error > tolerance {
            Verdict::Disagrees
        } else {
            Verdict::Agrees
        }
    }

    fn of(errors: impl Iterator<Item = f64>) -> Self {
        let (mut rows, mut max, mut sum) = (0usize, 0f64, 0f64);
        for e in errors {
            rows += 1;
            max = if e.is_nan() { f64::NAN } else { max.max(e) };
            sum += e;
        }
        Self {
            rows,
            max_error: max,
            mean_error: if rows == 0 { 0.0 } else { sum / rows as f64 },
        }
    }
}

fn norm(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

/// Relative error of one row; a zero recomputed row compares absolutely.
pub fn row_error(claimed: &[f32], recomputed: &[f32]) -> f64 {
    let diff = norm(
        claimed
            .iter()
            .zip(recomputed)
            .map(|(a, b)| f64::from(*a) - f64::from(*b)),
    );
    let scale = norm(recomputed.iter().map(|v| f64::from(*v)));
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// Compares row-major `claimed` and `recomputed` of width `cols` row by row (lengths must
/// match; extra values of the longer one are ignored).
pub fn compare_rows(claimed: &[f32], recomputed: &[f32], cols: usize) -> Comparison {
    let cols = cols.max(1);
    Comparison::of(
        claimed
            .chunks_exact(cols)
            .zip(recomputed.chunks_exact(cols))
            .map(|(a, b)| row_error(a, b)),
    )
}

/// Compares committed sketches with the rows a verifier recomputed (without the claimed rows).
/// Each projection of an error vector `e` has standard deviation `‖e‖₂`, so the root mean square
/// of the sketch differences estimates `‖e‖₂`; divided by the row's norm it estimates
/// [`row_error`]. Four projections make it a noisy estimate (a χ with 4 degrees of freedom):
/// below a tenth of the true error with probability under 1e-4.
pub fn compare_sketches(claimed: &[RowSketch], recomputed: &[f32], cols: usize) -> Comparison {
    let cols = cols.max(1);
    let signs = sketch_signs(cols);
    Comparison::of(
        claimed
            .iter()
            .zip(recomputed.chunks_exact(cols))
            .map(|(c, row)| {
                let mine = sketch_row(row, &signs);
                let diff = norm(
                    c.iter()
                        .zip(mine)
                        .map(|(a, b)| f64::from(*a) - f64::from(b)),
                ) / (SKETCH_LEN as f64).sqrt();
                let scale = norm(row.iter().map(|v| f64::from(*v)));
                if scale > 0.0 {
                    diff / scale
                } else {
                    diff
                }
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::SplitMix64;

    fn gaussian(rng: &mut SplitMix64) -> f64 {
        // Box-Muller; fine for tests.
        let u = rng.unit().max(1e-300);
        let v = rng.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn row(rng: &mut SplitMix64, cols: usize) -> Vec<f32> {
        (0..cols).map(|_| gaussian(rng) as f32).collect()
    }

    #[test]
    fn identical_rows_agree_and_noise_is_measured_at_its_size() {
        let mut rng = SplitMix64::new(1);
        let cols = 512;
        let honest: Vec<f32> = (0..8).flat_map(|_| row(&mut rng, cols)).collect();
        let same = compare_rows(&honest, &honest, cols);
        assert_eq!(same.max_error, 0.0);
        assert_eq!(same.verdict(HONEST_TOLERANCE), Verdict::Agrees);
        for rel in [1e-3, 1e-2] {
            let noisy: Vec<f32> = honest
                .iter()
                .map(|x| x + (rel * gaussian(&mut rng)) as f32)
                .collect();
            let c = compare_rows(&noisy, &honest, cols);
            assert!(
                (c.mean_error / rel - 1.0).abs() < 0.2,
                "{rel}: measured {c:?}"
            );
            assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Disagrees);
        }
    }

    #[test]
    fn sketches_estimate_the_row_error_without_the_rows() {
        let mut rng = SplitMix64::new(2);
        let cols = 576;
        let honest: Vec<f32> = (0..32).flat_map(|_| row(&mut rng, cols)).collect();
        let signs = sketch_signs(cols);
        let commit = |rows: &[f32]| -> Vec<RowSketch> {
            rows.chunks_exact(cols)
                .map(|r| sketch_row(r, &signs))
                .collect()
        };
        assert_eq!(
            compare_sketches(&commit(&honest), &honest, cols).max_error,
            0.0
        );
        let rel = 1e-3;
        let noisy: Vec<f32> = honest
            .iter()
            .map(|x| x + (rel * gaussian(&mut rng)) as f32)
            .collect();
        let c = compare_sketches(&commit(&noisy), &honest, cols);
        assert!((c.mean_error / rel - 1.0).abs() < 0.3, "{c:?}");
        assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Disagrees);
    }

    #[test]
    fn nan_and_zero_rows_do_not_pass_silently() {
        let c = compare_rows(&[f32::NAN, 1.0], &[1.0, 1.0], 2);
        assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Disagrees);
        let c = compare_rows(&[0.5, 0.0], &[0.0, 0.0], 2);
        assert_eq!(c.verdict(HONEST_TOLERANCE), Verdict::Disagrees);
        assert_eq!(compare_rows(&[], &[], 4).verdict(0.0), Verdict::Agrees);
    }
}
