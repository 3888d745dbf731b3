//! Which windows get re-executed, so that a node cannot tell a checked window from another.
//!
//! A client draws a secret [`SpotSeed`] per generation and publishes only its commitment (in the
//! trail) before any node answers; a window is checked when a hash of the seed, the node's key
//! and the window index falls below the check probability. The node sees neither the seed nor
//! which windows are checked, so cheating on any window risks the same probability of being
//! caught; after the generation the seed is revealed, and anyone can recompute which windows
//! were checked (the client cannot claim checks it did not make, nor pick targets after seeing
//! answers without breaking the commitment).

use hearth_core::{ContentHash, ContentHasher};

/// When and how often windows are checked. The defaults are hearth's (docs/verification.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpotCheckPolicy {
    /// Positions per window: a commitment covers at most this many generated tokens.
    pub window: u32,
    /// Probability that a window of an established node is re-executed.
    pub probability: f64,
    /// The same for a node in probation (few checked windows so far).
    pub probation_probability: f64,
    /// Whether the prefill (the first step's window) is always checked: it is where a prompt's
    /// answer is decided, and checking it before returning keeps a cheater's output out of the
    /// generation altogether.
    pub always_check_prefill: bool,
}

impl Default for SpotCheckPolicy {
    fn default() -> Self {
        Self {
            window: 32,
            probability: 0.05,
            probation_probability: 0.5,
            always_check_prefill: false,
        }
    }
}

impl SpotCheckPolicy {
    /// Which window position `position` falls in.
    pub fn window_of(&self, position: u32) -> u64 {
        u64::from(position / self.window.max(1))
    }
}

/// A client's secret randomness for one generation's spot checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotSeed(pub [u8; 32]);

impl SpotSeed {
    /// What the client publishes before the nodes answer.
    pub fn commitment(&self) -> ContentHash {
        ContentHasher::new("spot-check-seed")
            .field(&self.0)
            .finish()
    }

    /// Whether `window` of the node with ed25519 key `node` is checked at `probability`.
    pub fn checks(&self, node: &[u8; 32], window: u64, probability: f64) -> bool {
        let draw = ContentHasher::new("spot-check-draw")
            .field(&self.0)
            .field(node)
            .field(&window.to_le_bytes())
            .finish();
        draw.unit() < probability
    }
}

/// Probability that a node cheating on a fraction `cheat` of its windows is caught at least once
/// in `windows` windows, each checked with probability `p` and each checked cheat detected with
/// probability `detection`: `1 − (1 − p·cheat·detection)^windows`.
pub fn catch_probability(p: f64, cheat: f64, detection: f64, windows: f64) -> f64 {
    let per_window = (p * cheat * detection).clamp(0.0, 1.0);
    // ln1p/exp keep precision when the per-window chance is tiny.
    1.0 - (windows * (-per_window).ln_1p()).exp()
}

/// Windows a node must serve before a cheater on fraction `cheat` is caught with probability at
/// least `target` (infinite when it never is).
pub fn windows_to_catch(p: f64, cheat: f64, detection: f64, target: f64) -> f64 {
    let per_window = (p * cheat * detection).clamp(0.0, 1.0);
    if per_window <= 0.0 {
        return f64::INFINITY;
    }
    ((-target).ln_1p() / (-per_window).ln_1p()).ceil()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_happen_at_the_requested_rate_and_depend_on_seed_node_and_window() {
        let seed = SpotSeed([5; 32]);
        let node = [9; 32];
        let n = 20_000;
        let hits = (0..n).filter(|w| seed.checks(&node, *w, 0.05)).count();
        // Binomial(20000, 0.05): mean 1000, sd ~31.
        assert!((850..1150).contains(&hits), "{hits}");
        let other_node = (0..n)
            .filter(|w| seed.checks(&node, *w, 0.05) != seed.checks(&[8; 32], *w, 0.05))
            .count();
        assert!(other_node > 1000, "{other_node}");
        let other_seed = SpotSeed([6; 32]);
        let differ = (0..n)
            .filter(|w| seed.checks(&node, *w, 0.05) != other_seed.checks(&node, *w, 0.05))
            .count();
        assert!(differ > 1000, "{differ}");
        assert!((0..100).all(|w| seed.checks(&node, w, 1.0)));
        assert!((0..100).all(|w| !seed.checks(&node, w, 0.0)));
        assert_ne!(seed.commitment(), other_seed.commitment());
    }

    /// A simulation with the real seeded draws: many "days" of `n` windows, a cheater on a random
    /// 1 % of them, checks at 5 %; the fraction of days it is caught matches the formula.
    #[test]
    fn the_seeded_draws_catch_at_the_rate_the_formula_says() {
        let (p, f, n, days) = (0.05, 0.01, 2000u64, 400u64);
        let node = [1u8; 32];
        let mut rng = hearth_core::SplitMix64::new(42);
        let mut caught_days = 0;
        for day in 0..days {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&day.to_le_bytes());
            let seed = SpotSeed(seed);
            let caught = (0..n).any(|w| rng.unit() < f && seed.checks(&node, w, p));
            caught_days += u64::from(caught);
        }
        let expected = catch_probability(p, f, 1.0, n as f64);
        let measured = caught_days as f64 / days as f64;
        // Binomial(400, 0.63): sd 0.024; 4 sd.
        assert!(
            (measured - expected).abs() < 0.1,
            "measured {measured}, formula {expected}"
        );
    }

    #[test]
    fn the_catch_arithmetic_matches_the_closed_form() {
        // 5 % checks, 1 % cheating, perfect detection: 1 - 0.9995^n.
        let p = catch_probability(0.05, 0.01, 1.0, 1000.0);
        assert!((p - (1.0 - 0.9995f64.powi(1000))).abs() < 1e-12);
        let n = windows_to_catch(0.05, 0.01, 1.0, 1.0 - 1e-6);
        assert!(catch_probability(0.05, 0.01, 1.0, n) >= 1.0 - 1e-6);
        assert!(catch_probability(0.05, 0.01, 1.0, n - 1.0) < 1.0 - 1e-6);
        assert_eq!(windows_to_catch(0.0, 0.5, 1.0, 0.9), f64::INFINITY);
        assert_eq!(
            SpotCheckPolicy::default().window_of(31),
            0,
            "positions 0..32 are window 0"
        );
        assert_eq!(SpotCheckPolicy::default().window_of(32), 1);
    }
}
