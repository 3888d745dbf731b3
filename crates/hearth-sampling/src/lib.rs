//! Deterministic, replayable token sampling over plain `&[f32]` logits.
//!
//! *Given the same logits, history, parameters and step, the same token, on any
//! machine.* A serving node samples with [`Sampler::sample`]; a verifier later
//! replays any single step with [`sample_token`] and must get the same token.
//!
//! ```
//! use hearth_sampling::{sample_token, Sampler, SamplingParams};
//!
//! let params = SamplingParams {
//!     temperature: 0.8,
//!     top_p: Some(0.95),
//!     seed: 1234,
//!     stop: vec!["</s>".into()],
//!     ..SamplingParams::default()
//! };
//! let sampler = Sampler::new(params.clone())?;
//! let logits = [0.5f32, 2.0, -1.0, 1.5];
//! let history = [1u32, 3];
//! let token = sampler.sample(&logits, &history, 0)?;
//! // A verifier replays step 0 from the same inputs alone.
//! assert_eq!(sample_token(&params, &logits, &history, 0)?, token);
//!
//! let mut stops = sampler.stop_matcher();
//! let out = stops.push("Hello</");
//! assert_eq!((out.emit.as_str(), out.stopped), ("Hello", false));
//! assert!(stops.push("s> trailing").stopped);
//! # Ok::<(), hearth_sampling::SamplingError>(())
//! ```
//!
//! # Determinism rules
//!
//! * All arithmetic after reading the `f32` logits is IEEE-754 `f64` with a
//!   fixed, sequential evaluation order (no parallel or SIMD reductions, no
//!   fused multiply-add, no `HashMap` iteration).
//! * `exp` is [`libm::exp`] (a pure-Rust port of musl), never the platform libm.
//! * Ties are broken by a strict total order, the **rank order**: higher
//!   (penalised) logit first, then lower token id. `-0.0` equals `+0.0`.
//! * Randomness: exactly one uniform `u ∈ [0, 1)` per step, from a ChaCha20
//!   stream keyed by the seed and selected by the step index; see
//!   [`step_uniform`] and the [`rng`] module docs for the exact derivation.
//!   Greedy decoding draws nothing.
//!
//! # Logit validation
//!
//! Empty logits, NaN and `+inf` are errors ([`SamplingError::EmptyLogits`],
//! [`SamplingError::NonFinite`] with the first bad index). `-inf` is accepted
//! and means "banned token" (e.g. a grammar mask): it is never sampled and is
//! unaffected by penalties. If every logit is `-inf` the result is
//! [`SamplingError::AllMasked`].
//!
//! # Pipeline (order of operations)
//!
//! Let `C` be the unmasked tokens and `l_i` their logits as `f64`.
//!
//! 1. **Penalties** over the window = last `repeat_last_n` tokens of `history`
//!    (`0` = all of it), for each distinct token `i` in the window occurring
//!    `c_i` times: `l_i = l_i <= 0 ? l_i * rep : l_i / rep`, then
//!    `l_i -= c_i * frequency_penalty + presence_penalty` (llama.cpp order).
//!    Window tokens outside the vocabulary are an error
//!    ([`SamplingError::TokenOutOfRange`]) when any penalty is active; the
//!    history is ignored otherwise.
//! 2. **Greedy** if `temperature == 0`: the first token in rank order (argmax,
//!    lowest id on ties). Done.
//! 3. **Top-k**: keep the first `k` tokens in rank order.
//! 4. **Temperature + softmax** (max-subtracted):
//!    `w_i = libm::exp((l_i - l_max) / T)`; the top token has `w = 1` exactly.
//!    Ranking uses `l`, so it does not depend on `T`.
//! 5. **Top-p** (if `top_p < 1`): `Z = Σ w_i` summed in ascending id order;
//!    keep the shortest rank-order prefix whose running sum (in rank order)
//!    reaches `top_p * Z`, at least one token (all of them if rounding keeps
//!    the sum below the target).
//! 6. **Min-p** (if `min_p > 0`): keep tokens with `w_i >= min_p` (i.e.
//!    `p_i >= min_p * p_max`, since `w_max = 1`).
//! 7. **Renormalise and draw**: `Z' = Σ w_i` of the survivors in ascending id
//!    order; with `u = step_uniform(seed, step)`, return the first survivor in
//!    ascending id order whose running sum exceeds `u * Z'`.
//!
//! Cost is `O(n + k log k)` with `top_k` set. Without `top_k`, top-p sorts
//! only as many top-ranked tokens as it needs (in rounds of 64, 256, …), and
//! plain temperature / min-p sampling sorts nothing. One `Vec` of candidates is
//! allocated per non-greedy call, plus a window-sized one when penalties are
//! on.
//!
//! # Stop sequences
//!
//! [`StopMatcher`] detects text-level stop sequences in a stream of decoded
//! chunks, holding back only what could still be the start of a stop
//! sequence.

#![deny(missing_docs)]

mod error;
mod params;
pub mod rng;
mod sample;
mod stop;

pub use error::SamplingError;
pub use params::SamplingParams;
pub use rng::{step_key, step_uniform};
pub use sample::{sample_token, Sampler};
pub use stop::{StopMatcher, StopOutcome};
