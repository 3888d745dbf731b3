//! Sampling parameters and their validation.

use serde::{Deserialize, Serialize};

use crate::SamplingError;

/// Parameters that fully determine how a token is chosen from a logits vector.
///
/// Together with the logits, the token history and the step index, these
/// parameters make [`crate::sample_token`] a pure function: a verifier that
/// holds the same four inputs gets the same token on any machine.
///
/// Every field has a default (see [`SamplingParams::default`]), and the struct
/// deserializes with missing fields filled from that default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature. `0.0` selects greedy decoding (argmax, no random
    /// draw at all). Must be finite and `>= 0`.
    pub temperature: f32,

    /// Keep only the `k` highest-ranked tokens (after penalties). `None` = off.
    /// `Some(0)` is invalid. A `k` at least the number of unmasked tokens is a
    /// no-op.
    pub top_k: Option<usize>,

    /// Nucleus sampling: keep the smallest prefix of the ranked distribution
    /// whose probability mass is `>= top_p` (always at least one token).
    /// `None` or `Some(1.0)` = off. Must lie in `(0, 1]`.
    pub top_p: Option<f32>,

    /// Min-p: keep only tokens whose probability is `>= min_p` times the
    /// probability of the most likely token. `None` or `Some(0.0)` = off.
    /// Must lie in `[0, 1]`.
    pub min_p: Option<f32>,

    /// Repetition penalty with llama.cpp / Hugging Face semantics: for every
    /// *distinct* token in the penalty window, a logit `> 0` is divided by the
    /// penalty and a logit `<= 0` is multiplied by it. `1.0` = off. Must be
    /// finite and `> 0`.
    pub repetition_penalty: f32,

    /// Size of the penalty window: the last `repeat_last_n` tokens of the
    /// history are considered by all three penalties. `0` = the whole history.
    pub repeat_last_n: usize,

    /// OpenAI-style frequency penalty: `count * frequency_penalty` is
    /// subtracted from the logit of each token that occurs `count` times in the
    /// penalty window. `0.0` = off. Must be finite (may be negative).
    pub frequency_penalty: f32,

    /// OpenAI-style presence penalty: subtracted once from the logit of each
    /// token that occurs at least once in the penalty window. `0.0` = off.
    /// Must be finite (may be negative).
    pub presence_penalty: f32,

    /// Seed of the per-step random stream. See [`crate::step_uniform`] for the
    /// exact derivation.
    pub seed: u64,

    /// Text-level stop sequences, used with [`crate::StopMatcher`]. Each must be
    /// non-empty. The sampler itself never looks at them.
    pub stop: Vec<String>,

    /// Maximum number of tokens to generate. Enforced by the caller's decode
    /// loop, not by the sampler. Must be `>= 1`.
    pub max_tokens: usize,
}

impl Default for SamplingParams {
    /// Greedy decoding: temperature `0`, every filter and penalty off,
    /// `repeat_last_n = 64`, `seed = 0`, no stop sequences, `max_tokens = 256`.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            stop: Vec::new(),
            max_tokens: 256,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding parameters; identical to [`SamplingParams::default`].
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether these parameters decode greedily (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any of the three history penalties changes logits.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }

    /// Check every parameter against its documented range.
    ///
    /// Returns [`SamplingError::InvalidParam`] naming the first offending field
    /// (fields are checked in declaration order).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(SamplingError::invalid(
                "temperature",
                format!("must be finite and >= 0, got {t}"),
            ));
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::invalid(
                "top_k",
                "must be >= 1 (use None to disable)",
            ));
        }
        if let Some(p) = self.top_p {
            // NaN fails both comparisons' complements, so test the good range.
            if !(p > 0.0 && p <= 1.0) {
                return Err(SamplingError::invalid(
                    "top_p",
                    format!("must lie in (0, 1], got {p}"),
                ));
            }
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(SamplingError::invalid(
                    "min_p",
                    format!("must lie in [0, 1], got {m}"),
                ));
            }
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(SamplingError::invalid(
                "repetition_penalty",
                format!("must be finite and > 0, got {r}"),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(SamplingError::invalid(
                "frequency_penalty",
                format!("must be finite, got {}", self.frequency_penalty),
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(SamplingError::invalid(
                "presence_penalty",
                format!("must be finite, got {}", self.presence_penalty),
            ));
        }
        if let Some(i) = self.stop.iter().position(String::is_empty) {
            return Err(SamplingError::invalid(
                "stop",
                format!("stop sequence #{i} is empty"),
            ));
        }
        if self.max_tokens == 0 {
            return Err(SamplingError::invalid("max_tokens", "must be >= 1"));
        }
        Ok(())
    }
}
