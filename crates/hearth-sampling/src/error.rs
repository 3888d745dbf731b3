//! Error type for the sampling crate.

use thiserror::Error;

/// Everything that can go wrong while validating parameters or sampling a token.
///
/// Errors are deterministic: the same inputs always produce the same error
/// (for example [`SamplingError::NonFinite`] always names the *first* offending
/// index), so a verifier replaying a step can compare errors as well as tokens.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SamplingError {
    /// The logits slice was empty.
    #[error("logits are empty")]
    EmptyLogits,

    /// A logit was NaN or `+inf`. `index` is the first such position.
    ///
    /// `-inf` is *not* an error: it marks a banned (masked) token that can never
    /// be sampled. See [`SamplingError::AllMasked`].
    #[error("logit at index {index} is NaN or +inf")]
    NonFinite {
        /// Index of the first NaN or `+inf` logit.
        index: usize,
    },

    /// Every logit was `-inf`, so there is no token left to choose.
    #[error("all {vocab_size} logits are -inf (masked); nothing can be sampled")]
    AllMasked {
        /// Length of the logits slice.
        vocab_size: usize,
    },

    /// The logits slice is longer than the `u32` token-id space.
    #[error("vocabulary of {vocab_size} logits does not fit u32 token ids")]
    VocabTooLarge {
        /// Length of the logits slice.
        vocab_size: usize,
    },

    /// A token in the penalty window of the history is not a valid index into
    /// the logits. Only checked when a penalty is active.
    #[error("history token {token} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The offending token id.
        token: u32,
        /// Length of the logits slice.
        vocab_size: usize,
    },

    /// A sampling parameter is out of its valid range.
    #[error("invalid sampling parameter `{name}`: {reason}")]
    InvalidParam {
        /// Field name of the offending [`crate::SamplingParams`] parameter.
        name: &'static str,
        /// Human-readable description of the constraint that was violated.
        reason: String,
    },
}

impl SamplingError {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}
