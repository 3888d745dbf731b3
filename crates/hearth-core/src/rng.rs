//! SplitMix64, the one small deterministic generator of hearth.
//!
//! Used wherever hearth needs reproducible numbers without a dependency: the sampler derives its
//! ChaCha20 key from a request seed with it (a protocol fact, see `hearth-sampling`), synthetic
//! fleets and placement simulations draw from it, and tests generate cases with it. Not for
//! anything secret.
//!
//! The algorithm is Vigna's `splitmix64.c` (Steele, Lea & Flood, 2014): add the golden gamma to
//! the state, then mix. Invariant: the same seed gives the same sequence on every machine.

/// SplitMix64 generator state. `SplitMix64::new(seed)` followed by `next_u64` gives the reference
/// sequence of `splitmix64.c` seeded with `seed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The state increment: 2^64 divided by the golden ratio, rounded to odd.
    pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator whose first output is the reference's first output for `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` on the grid of 2^-53 (the top 53 bits of one output).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// An integer in `[0, n)` by reduction modulo `n` (bias below 2^-40 for `n` < 2^24; fine for
    /// simulations and test cases, not for statistics over huge `n`); `n = 0` counts as 1.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Shuffles `xs` in place (Fisher–Yates, drawing with [`SplitMix64::below`]).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn matches_reference_values() {
        // Reference outputs of splitmix64.c seeded with 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(g.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn unit_and_range_stay_in_bounds() {
        let mut g = SplitMix64::new(7);
        for _ in 0..10_000 {
            let u = g.unit();
            assert!((0.0..1.0).contains(&u));
            let r = g.range(-3.0, 5.0);
            assert!((-3.0..5.0).contains(&r));
            assert!(g.below(10) < 10);
        }
        let mut xs: Vec<u32> = (0..100).collect();
        g.shuffle(&mut xs);
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(xs, sorted, "a 100-element shuffle that changes nothing");
    }
}
