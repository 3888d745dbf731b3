//! A node's standing from what was observed of it, never from what it announces.
//!
//! Evidence is checked windows (passed or failed), proven fraud, and step latency measured by
//! the client. A node starts in [`Standing::Probation`]: checked more often and routed to only
//! when it is clearly better; after [`PROBATION_WINDOWS`] passed checks it is established. A
//! proven fraud excludes it for good. Routing replaces the node's announced block time by the
//! measured one as soon as there is a measurement, and never believes an announcement faster than
//! what was measured.

use crate::spot::SpotCheckPolicy;

/// Passed checks that end probation.
pub const PROBATION_WINDOWS: u64 = 8;

/// Weight of a new latency sample in the moving average.
const LATENCY_EWMA: f64 = 0.2;

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// New: few passed checks.
    Probation,
    /// Passed enough checks, never failed one.
    Established,
    /// Failed a check that a second verifier confirmed, or a fraud proof names it.
    Excluded,
}

/// What a client knows of one node. Plain data: the swarm persists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reputation {
    /// Windows re-executed and found within tolerance.
    pub passed: u64,
    /// Windows re-executed and found wrong (confirmed).
    pub failed: u64,
    /// Measured steps.
    pub latency_samples: u64,
    /// Moving average of the measured time per step, per block, in ms.
    pub block_ms: f64,
}

impl Reputation {
    /// Where the node stands.
    pub fn standing(&self) -> Standing {
        if self.failed > 0 {
            Standing::Excluded
        } else if self.passed >= PROBATION_WINDOWS {
            Standing::Established
        } else {
            Standing::Probation
        }
    }

    /// Records one checked window.
    pub fn record_check(&mut self, passed: bool) {
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Records one step of `blocks` blocks that took `ms` (network included).
    pub fn record_step(&mut self, ms: f64, blocks: u32) {
        if !ms.is_finite() || ms < 0.0 || blocks == 0 {
            return;
        }
        let per_block = ms / f64::from(blocks);
        self.block_ms = if self.latency_samples == 0 {
            per_block
        } else {
            self.block_ms + LATENCY_EWMA * (per_block - self.block_ms)
        };
        self.latency_samples += 1;
    }

    /// The probability its windows are checked at.
    pub fn check_probability(&self, policy: &SpotCheckPolicy) -> f64 {
        match self.standing() {
            Standing::Probation => policy.probation_probability.max(policy.probability),
            Standing::Established => policy.probability,
            Standing::Excluded => 1.0,
        }
    }

    /// The block time routing should assume: the announced one until something was measured,
    /// then the measurement, and never less than measured.
    pub fn effective_block_ms(&self, announced: f64) -> f64 {
        if self.latency_samples == 0 {
            announced.max(0.0)
        } else {
            self.block_ms
        }
    }

    /// A multiplier (≥ 1) on the node's route cost: probation nodes must be clearly better to be
    /// chosen, so a fresh identity cannot take every route by claiming speed.
    pub fn route_penalty(&self) -> f64 {
        match self.standing() {
            Standing::Probation => 2.0,
            Standing::Established => 1.0,
            Standing::Excluded => f64::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_node_is_on_probation_until_it_passes_checks_and_one_failure_excludes_it() {
        let policy = SpotCheckPolicy::default();
        let mut r = Reputation::default();
        assert_eq!(r.standing(), Standing::Probation);
        assert_eq!(r.check_probability(&policy), policy.probation_probability);
        for _ in 0..PROBATION_WINDOWS {
            r.record_check(true);
        }
        assert_eq!(r.standing(), Standing::Established);
        assert_eq!(r.check_probability(&policy), policy.probability);
        assert_eq!(r.route_penalty(), 1.0);
        r.record_check(false);
        assert_eq!(r.standing(), Standing::Excluded);
        assert!(r.route_penalty().is_infinite());
    }

    #[test]
    fn measured_latency_replaces_an_announced_one() {
        let mut r = Reputation::default();
        assert_eq!(r.effective_block_ms(0.0), 0.0);
        r.record_step(40.0, 4);
        assert_eq!(
            r.effective_block_ms(0.0),
            10.0,
            "a claim of 0 ms is not believed"
        );
        r.record_step(20.0, 4);
        assert!((r.effective_block_ms(1.0) - 9.0).abs() < 1e-9);
        r.record_step(f64::NAN, 4);
        r.record_step(5.0, 0);
        assert_eq!(r.latency_samples, 2);
    }
}
