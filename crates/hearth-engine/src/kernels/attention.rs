//! Causal grouped-query attention of one session on the CPU, in a fixed order of roundings.
//!
//! Invariant: the output of query position `p` depends only on its query vector and the keys and
//! values of the positions it sees, never on how many other positions share the call (a prefill
//! of any length, a single decode step, a replay), where `p` falls among them, or how many threads
//! run it. Each (position, head) is computed whole by one task: the scores of the visible
//! positions in ascending order, their maximum, the exponentials summed in ascending order, and
//! the value rows accumulated in ascending order and divided by that sum once. Masked positions
//! are never touched, so nothing depends on the length of the cache beyond the window.
//!
//! (A general matmul, as candle's attention uses, blocks and vectorizes the reduction over the
//! key positions differently for different shapes, so a position's scores round differently in
//! a prefill than in a decode step.)

use rayon::prelude::*;

use super::{check_len, dot, mul, KernelError};

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads` (query head `h` reads KV head `h / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions already in the cache before this call's rows.
    pub past: usize,
    /// Query rows of this call: positions `past..past + rows`.
    pub rows: usize,
    /// Positions allocated per KV head in `k` and `v` (at least `past + rows`).
    pub kv_stride: usize,
    /// Sliding window: a position sees at most this many positions, itself included.
    pub window: Option<usize>,
    /// Factor applied to every score (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

/// Below this many multiply-adds a call runs on the calling thread (forking costs more).
const PARALLEL_WORK: usize = 1 << 15;

/// `out[r, h, :] = softmax(scale · q[h, r] · K[kvh, lo..=p]ᵀ) · V[kvh, lo..=p]` for every row `r`
/// (position `p = past + r`) and query head `h`, with `lo = p + 1 - window` (or 0).
///
/// Layouts (row-major): `q` is `[heads, rows, head_dim]`; `k` and `v` are
/// `[kv_heads, kv_stride, head_dim]` with positions `0..past + rows` filled; `out` is
/// `[rows, heads * head_dim]`. Errors if a length or head count does not fit.
pub fn attention(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: hd,
        past,
        rows,
        kv_stride,
        window,
        scale,
    } = *shape;
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(KernelError::Heads { heads, kv_heads });
    }
    let total = past.checked_add(rows).ok_or(KernelError::Overflow)?;
    if total > kv_stride {
        return Err(KernelError::Length {
            what: "kv_stride",
            expected: total,
            actual: kv_stride,
        });
    }
    check_len("q", mul(mul(heads, rows)?, hd)?, q.len())?;
    check_len("k", mul(mul(kv_heads, kv_stride)?, hd)?, k.len())?;
    check_len("v", mul(mul(kv_heads, kv_stride)?, hd)?, v.len())?;
    check_len("out", mul(mul(rows, heads)?, hd)?, out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let n_rep = heads / kv_heads;
    let visible = |p: usize| window.map_or(p + 1, |w| w.clamp(1, p + 1));

    // Task `t` is row `t / heads`, head `t % heads`: one `head_dim` slice of `out`.
    let task = |t: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (r, h) = (t / heads, t % heads);
        let p = past + r;
        let lo = p + 1 - visible(p);
        let qv = &q[(h * rows + r) * hd..][..hd];
        let base = (h / n_rep) * kv_stride;
        scores.clear();
        scores.extend((lo..=p).map(|j| dot(qv, &k[(base + j) * hd..][..hd]) * scale));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, &e) in (lo..=p).zip(scores.iter()) {
            for (o, &vv) in o.iter_mut().zip(&v[(base + j) * hd..][..hd]) {
                *o += e * vv;
            }
        }
        o.iter_mut().for_each(|o| *o /= sum);
    };

    let work = rows * heads * hd * visible(total - 1);
    if work < PARALLEL_WORK || rayon::current_num_threads() <= 1 {
        let mut scores = Vec::new();
        for (t, o) in out.chunks_exact_mut(hd).enumerate() {
            task(t, o, &mut scores);
        }
    } else {
        out.par_chunks_exact_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (t, o)| task(t, o, scores));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::SplitMix64;

    fn random(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect()
    }

    /// Straightforward f64 attention over the same layouts.
    fn reference(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let hd = s.head_dim;
        let mut out = vec![0.0; s.rows * s.heads * hd];
        for r in 0..s.rows {
            let p = s.past + r;
            let lo = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
            for h in 0..s.heads {
                let kvh = h / (s.heads / s.kv_heads);
                let qv = &q[(h * s.rows + r) * hd..][..hd];
                let scores: Vec<f64> = (lo..=p)
                    .map(|j| {
                        let kv = &k[(kvh * s.kv_stride + j) * hd..][..hd];
                        qv.iter()
                            .zip(kv)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            * s.scale as f64
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, sc) in (lo..=p).zip(&scores) {
                    let w = (sc - max).exp() / sum;
                    let vv = &v[(kvh * s.kv_stride + j) * hd..][..hd];
                    for d in 0..hd {
                        out[(r * s.heads + h) * hd + d] += w * vv[d] as f64;
                    }
                }
            }
        }
        out
    }

    fn shape(past: usize, rows: usize, window: Option<usize>) -> AttentionShape {
        AttentionShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 40,
            past,
            rows,
            kv_stride: 80,
            window,
            scale: 1.0 / (40f32).sqrt(),
        }
    }

    #[test]
    fn matches_an_f64_reference() {
        let mut rng = SplitMix64::new(3);
        for (past, rows, window) in [
            (0, 1, None),
            (0, 17, None),
            (9, 30, None),
            (20, 13, Some(7)),
        ] {
            let s = shape(past, rows, window);
            let q = random(&mut rng, s.heads * rows * s.head_dim);
            let k = random(&mut rng, s.kv_heads * s.kv_stride * s.head_dim);
            let v = random(&mut rng, k.len());
            let mut out = vec![f32::NAN; rows * s.heads * s.head_dim];
            attention(&s, &q, &k, &v, &mut out).unwrap();
            for (g, w) in out.iter().zip(reference(&s, &q, &k, &v)) {
                assert!((*g as f64 - w).abs() < 1e-5, "got {g}, want {w}");
            }
        }
    }

    /// Every split of positions `0..n` into consecutive calls gives bitwise the outputs of one
    /// call, on 1, 2 and 3 threads.
    #[test]
    fn a_position_does_not_depend_on_the_call_or_threads() {
        let mut rng = SplitMix64::new(11);
        for window in [None, Some(5)] {
            let n = 41;
            let full = shape(0, n, window);
            let hd = full.head_dim;
            let k = random(&mut rng, full.kv_heads * full.kv_stride * hd);
            let v = random(&mut rng, k.len());
            // Queries per position, laid out per call as [heads, rows, hd].
            let qpos: Vec<Vec<f32>> = (0..n).map(|_| random(&mut rng, full.heads * hd)).collect();
            let run = |past: usize, rows: usize| {
                let s = AttentionShape { past, rows, ..full };
                let mut q = vec![0.0; s.heads * rows * hd];
                for r in 0..rows {
                    for h in 0..s.heads {
                        q[(h * rows + r) * hd..][..hd]
                            .copy_from_slice(&qpos[past + r][h * hd..][..hd]);
                    }
                }
                let mut out = vec![f32::NAN; rows * s.heads * hd];
                attention(&s, &q, &k, &v, &mut out).unwrap();
                out
            };
            let whole = run(0, n);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for splits in [vec![n], vec![1; n], vec![7, 1, 20, 13], vec![30, 11]] {
                    let mut got = Vec::new();
                    let mut past = 0;
                    for rows in splits {
                        got.extend(pool.install(|| run(past, rows)));
                        past += rows;
                    }
                    assert!(
                        got.iter()
                            .zip(&whole)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "window {window:?}, {threads} threads: a split changed the bits"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let s = shape(0, 2, None);
        let q = vec![0.0; s.heads * 2 * s.head_dim];
        let kv = vec![0.0; s.kv_heads * s.kv_stride * s.head_dim];
        let mut out = vec![0.0; 2 * s.heads * s.head_dim];
        assert!(attention(&s, &q[1..], &kv, &kv, &mut out).is_err());
        assert!(attention(&s, &q, &kv, &kv[1..], &mut out).is_err());
        let bad_heads = AttentionShape { kv_heads: 4, ..s };
        assert!(attention(&bad_heads, &q, &kv, &kv, &mut out).is_err());
        let too_long = AttentionShape { past: 79, ..s };
        assert!(attention(&too_long, &q, &kv, &kv, &mut out).is_err());
    }
}
