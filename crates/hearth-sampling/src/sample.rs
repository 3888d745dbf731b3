//! The sampling pipeline. See the crate docs for the exact algorithm.

use std::cmp::Ordering;

use crate::{step_uniform, SamplingError, SamplingParams};

/// Number of top-ranked candidates sorted in the first round of the
/// incremental nucleus (top-p) search; later rounds grow by 4x.
const TOP_P_FIRST_CHUNK: usize = 64;

/// A sampling candidate: token id, penalised logit and (once computed) its
/// unnormalised softmax weight.
#[derive(Clone, Copy, Debug)]
struct Cand {
    /// Penalised logit (f64, `-0.0` normalised to `+0.0`, never NaN or inf).
    l: f64,
    /// `exp((l - l_max) / temperature)`; `0.0` until computed.
    w: f64,
    id: u32,
}

/// The total rank order: higher penalised logit first, then lower token id.
///
/// `total_cmp` equals numeric order here because candidates never hold NaN
/// or `-0.0`.
#[inline]
fn rank_cmp(a: &Cand, b: &Cand) -> Ordering {
    b.l.total_cmp(&a.l).then(a.id.cmp(&b.id))
}

/// Stateless sampler bound to a validated [`SamplingParams`].
///
/// Holds no RNG state: every call derives its randomness from
/// `(params.seed, step)`, so calls may happen in any order, on any machine,
/// and [`Sampler::sample`] always equals [`sample_token`] with the same inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    params: SamplingParams,
}

impl Sampler {
    /// Validate `params` (see [`SamplingParams::validate`]) and build a sampler.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// A fresh [`crate::StopMatcher`] for this sampler's stop sequences.
    pub fn stop_matcher(&self) -> crate::StopMatcher {
        crate::StopMatcher::new(&self.params.stop)
    }

    /// Sample one token.
    ///
    /// `history` = all tokens so far (prompt + generated), used only by the
    /// penalties; `step` = 0-based index of the token being generated, which
    /// selects the random stream. Identical to [`sample_token`] with this
    /// sampler's parameters.
    pub fn sample(&self, logits: &[f32], history: &[u32], step: u64) -> Result<u32, SamplingError> {
        sample_validated(&self.params, logits, history, step)
    }
}

/// Sample one token: the pure function shared by the serving node and the
/// verifier.
///
/// Validates `params` first, then runs the pipeline documented at the crate
/// root. The result depends only on the arguments.
pub fn sample_token(
    params: &SamplingParams,
    logits: &[f32],
    history: &[u32],
    step: u64,
) -> Result<u32, SamplingError> {
    params.validate()?;
    sample_validated(params, logits, history, step)
}

fn sample_validated(
    params: &SamplingParams,
    logits: &[f32],
    history: &[u32],
    step: u64,
) -> Result<u32, SamplingError> {
    let unmasked = check_logits(logits)?;
    let overrides = penalty_overrides(params, logits, history)?;

    if params.temperature == 0.0 {
        return Ok(greedy(logits, &overrides));
    }
    let t = f64::from(params.temperature);

    // Candidates in ascending id order.
    let mut cands: Vec<Cand> = Vec::with_capacity(unmasked);
    for_each_candidate(logits, &overrides, |id, l| {
        cands.push(Cand { l, w: 0.0, id })
    });
    let mut in_id_order = true;

    // Top-k: O(n) selection, never a full sort.
    if let Some(k) = params.top_k {
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, rank_cmp);
            cands.truncate(k);
            in_id_order = false;
        }
    }

    // Softmax numerators, max-subtracted. The max is the same value in any
    // iteration order.
    let l_max = cands.iter().fold(f64::NEG_INFINITY, |m, c| m.max(c.l));
    for c in &mut cands {
        c.w = libm::exp((c.l - l_max) / t);
    }

    // Top-p.
    if let Some(p) = params.top_p.filter(|&p| p < 1.0) {
        if !in_id_order {
            cands.sort_unstable_by_key(|c| c.id);
        }
        let z = sum_weights(&cands);
        let keep = rank_prefix_reaching(&mut cands, f64::from(p) * z);
        cands.truncate(keep);
        in_id_order = false;
    }

    // Min-p: relative to the top token, whose weight is exactly exp(0) = 1.
    if let Some(m) = params.min_p.filter(|&m| m > 0.0) {
        let m = f64::from(m);
        cands.retain(|c| c.w >= m);
    }

    // Renormalise and draw by inverse CDF in ascending id order.
    if !in_id_order {
        cands.sort_unstable_by_key(|c| c.id);
    }
    let z = sum_weights(&cands);
    let target = step_uniform(params.seed, step) * z;
    let mut acc = 0.0f64;
    let mut fallback = None;
    for c in &cands {
        acc += c.w;
        if c.w > 0.0 {
            fallback = Some(c.id);
        }
        if acc > target {
            return Ok(c.id);
        }
    }
    // Unreachable: the top token (weight 1) is always kept, so z >= 1, and
    // `acc` ends exactly at `z > u * z`. Kept as a non-panicking guard.
    Ok(fallback.unwrap_or_else(|| greedy(logits, &overrides)))
}

/// Validate logits: non-empty, fits u32 ids, no NaN / `+inf`, at least one
/// finite value. Returns the number of finite (unmasked) logits.
fn check_logits(logits: &[f32]) -> Result<usize, SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    if u32::try_from(logits.len() - 1).is_err() {
        return Err(SamplingError::VocabTooLarge {
            vocab_size: logits.len(),
        });
    }
    let mut unmasked = 0usize;
    for (index, &x) in logits.iter().enumerate() {
        if x.is_finite() {
            unmasked += 1;
        } else if x != f32::NEG_INFINITY {
            return Err(SamplingError::NonFinite { index });
        }
    }
    if unmasked == 0 {
        return Err(SamplingError::AllMasked {
            vocab_size: logits.len(),
        });
    }
    Ok(unmasked)
}

/// Penalised logits for the distinct tokens of the penalty window, sorted by
/// id. Masked (`-inf`) tokens stay masked and get no entry.
fn penalty_overrides(
    params: &SamplingParams,
    logits: &[f32],
    history: &[u32],
) -> Result<Vec<(u32, f64)>, SamplingError> {
    if !params.has_penalties() || history.is_empty() {
        return Ok(Vec::new());
    }
    let window = match params.repeat_last_n {
        0 => history,
        n => &history[history.len().saturating_sub(n)..],
    };
    let mut sorted = window.to_vec();
    sorted.sort_unstable();

    let rep = f64::from(params.repetition_penalty);
    let freq = f64::from(params.frequency_penalty);
    let presence = f64::from(params.presence_penalty);
    let mut out = Vec::new();
    for run in sorted.chunk_by(|a, b| a == b) {
        let token = run[0];
        let Some(&x) = logits.get(token as usize) else {
            return Err(SamplingError::TokenOutOfRange {
                token,
                vocab_size: logits.len(),
            });
        };
        if x == f32::NEG_INFINITY {
            continue;
        }
        let mut v = f64::from(x);
        if v <= 0.0 {
            v *= rep;
        } else {
            v /= rep;
        }
        v -= run.len() as f64 * freq + presence;
        out.push((token, v));
    }
    Ok(out)
}

/// Call `f(id, penalised_logit)` for every unmasked token in ascending id
/// order. `-0.0` is normalised to `+0.0` so that `total_cmp` is numeric order.
#[inline]
fn for_each_candidate(logits: &[f32], overrides: &[(u32, f64)], mut f: impl FnMut(u32, f64)) {
    let mut ov = overrides.iter().peekable();
    for (i, &x) in logits.iter().enumerate() {
        if x == f32::NEG_INFINITY {
            continue;
        }
        // Fits: check_logits bounded the length by the u32 range.
        let id = i as u32;
        let v = match ov.peek() {
            Some(&&(t, v)) if t == id => {
                ov.next();
                v
            }
            _ => f64::from(x),
        };
        f(id, v + 0.0);
    }
}

/// Argmax of the penalised logits; ties go to the lowest id.
fn greedy(logits: &[f32], overrides: &[(u32, f64)]) -> u32 {
    let mut best: Option<(u32, f64)> = None;
    for_each_candidate(logits, overrides, |id, l| {
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((id, l));
        }
    });
    // check_logits guarantees at least one candidate.
    best.map_or(0, |(id, _)| id)
}

/// Sequential left-to-right f64 sum of the weights, in slice order.
fn sum_weights(cands: &[Cand]) -> f64 {
    cands.iter().fold(0.0, |acc, c| acc + c.w)
}

/// Length of the smallest rank-order prefix whose sequential weight sum is
/// `>= target` (at least 1; all candidates if the sum never reaches it).
///
/// Leaves that prefix sorted by rank at the front of `cands`. Works in rounds:
/// select the next chunk of top candidates with `select_nth_unstable_by`, sort
/// only that chunk, and continue the running sum; so a concentrated
/// distribution costs O(n), never a full sort.
fn rank_prefix_reaching(cands: &mut [Cand], target: f64) -> usize {
    let n = cands.len();
    let mut done = 0;
    let mut chunk = TOP_P_FIRST_CHUNK;
    let mut acc = 0.0f64;
    while done < n {
        let end = n.min(done.saturating_add(chunk));
        let rest = &mut cands[done..];
        let m = end - done;
        if m < rest.len() {
            rest.select_nth_unstable_by(m - 1, rank_cmp);
        }
        rest[..m].sort_unstable_by(rank_cmp);
        for (i, c) in cands[done..end].iter().enumerate() {
            acc += c.w;
            if acc >= target {
                return done + i + 1;
            }
        }
        done = end;
        chunk = chunk.saturating_mul(4);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(l: f64, w: f64, id: u32) -> Cand {
        Cand { l, w, id }
    }

    #[test]
    fn rank_prefix_handles_multiple_rounds() {
        // 1000 equal weights: reaching 700 needs 700 tokens, several rounds.
        let mut c: Vec<Cand> = (0..1000u32).rev().map(|i| cand(0.0, 1.0, i)).collect();
        assert_eq!(rank_prefix_reaching(&mut c, 700.0), 700);
        let ids: Vec<u32> = c[..700].iter().map(|c| c.id).collect();
        assert_eq!(ids, (0..700).collect::<Vec<_>>());
        // Unreachable target keeps everything.
        let mut c: Vec<Cand> = (0..10u32).map(|i| cand(0.0, 1.0, i)).collect();
        assert_eq!(rank_prefix_reaching(&mut c, 11.0), 10);
        // Zero target still keeps one.
        assert_eq!(rank_prefix_reaching(&mut c, 0.0), 1);
    }

    #[test]
    fn penalties_follow_llama_cpp_semantics() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            repeat_last_n: 0,
            ..SamplingParams::greedy()
        };
        let logits = [4.0, -1.0, 0.0, 3.0, f32::NEG_INFINITY];
        let ov = penalty_overrides(&p, &logits, &[1, 0, 0, 2, 4, 0]).unwrap();
        assert_eq!(
            ov,
            vec![
                (0, 4.0 / 2.0 - 3.0 * 0.5 - 0.25),
                (1, -2.0 - 0.5 - 0.25),
                (2, 0.0 - 0.5 - 0.25),
            ]
        );
        // The window only sees the last n tokens.
        let p2 = SamplingParams {
            repeat_last_n: 2,
            ..p.clone()
        };
        let ov = penalty_overrides(&p2, &logits, &[1, 0, 0, 2, 4, 0]).unwrap();
        assert_eq!(ov, vec![(0, 2.0 - 0.5 - 0.25)]);
        // Out-of-range history token inside the window is an error.
        assert_eq!(
            penalty_overrides(&p, &logits, &[9]),
            Err(SamplingError::TokenOutOfRange {
                token: 9,
                vocab_size: 5
            })
        );
    }
}
