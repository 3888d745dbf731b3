//! f32 weights (small or test checkpoints, some norms-heavy exports) without a general GEMM.
//!
//! A general matmul (candle's `gemm`) picks its blocking and vector paths from the shape of the
//! whole call, so a row's output rounds differently in a prefill than alone. Here every output
//! is one [`dot`](super::dot) of the activation row with the weight row, in a fixed order: a
//! row's result is bitwise the same in any batch and on any number of threads. Decode is bound by
//! streaming the weights either way; prefill gives up the cache blocking of a GEMM, which
//! matters little for a format that is rare in inference checkpoints.

use super::{check_len, chunk_size, dot, mul, par_chunks, KernelError, OutPtr};

/// Row-major f32 weights `w[n, k]`.
#[derive(Clone)]
pub struct PackedF32 {
    w: Vec<f32>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedF32")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

impl PackedF32 {
    /// Takes the row-major `w[n, k]`. Errors if `w.len() != n * k`.
    pub fn pack(w: Vec<f32>, n: usize, k: usize) -> Result<Self, KernelError> {
        check_len("w", mul(n, k)?, w.len())?;
        Ok(Self { w, n, k })
    }

    /// Output features (rows of the matrix).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `y[m, n] = x[m, k] · wᵀ`. Errors if `x.len() != m * k` or `y.len() != m * n`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        check_len("x", mul(m, k)?, x.len())?;
        check_len("y", mul(m, n)?, y.len())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let out = OutPtr::new(y, m, n);
        let rows = chunk_size(n, 4 * k);
        par_chunks(n.div_ceil(rows), |c| {
            let (j0, j1) = (c * rows, n.min((c + 1) * rows));
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                // SAFETY: columns `j0..j1` belong to this job only.
                let yi = unsafe { out.row_mut(i, j0, j1 - j0) };
                for (yij, wj) in yi
                    .iter_mut()
                    .zip(self.w[j0 * k..j1 * k].chunks_exact(k.max(1)))
                {
                    *yij = dot(xi, wj);
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::SplitMix64;

    #[test]
    fn matches_f64_and_rows_do_not_depend_on_the_batch() {
        let mut rng = SplitMix64::new(5);
        let (n, k) = (37, 300);
        let mut r = || rng.unit() as f32 * 2.0 - 1.0;
        let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
        let x: Vec<f32> = (0..9 * k).map(|_| r()).collect();
        let p = PackedF32::pack(w.clone(), n, k).unwrap();
        let mut all = vec![f32::NAN; 9 * n];
        p.matmul(&x, 9, &mut all).unwrap();
        for i in 0..9 {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|q| x[i * k + q] as f64 * w[j * k + q] as f64)
                    .sum();
                assert!((all[i * n + j] as f64 - want).abs() < 1e-4);
            }
            let mut alone = vec![f32::NAN; n];
            p.matmul(&x[i * k..(i + 1) * k], 1, &mut alone).unwrap();
            assert!(alone
                .iter()
                .zip(&all[i * n..(i + 1) * n])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        assert!(PackedF32::pack(w[1..].to_vec(), n, k).is_err());
        assert!(p.matmul(&x[1..], 1, &mut all[..n]).is_err());
    }
}
