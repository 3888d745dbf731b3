//! Deliberate cheating, for tests and demos of verification (docs/verification.md).
//!
//! The modes are plain data and parse everywhere, but a node can act on them only when
//! hearth-swarm is built with the cargo feature `adversary`: release builds leave it off, so a
//! production binary refuses `--adversary` instead of carrying the cheating code. Test builds of
//! the workspace turn it on (hearth's dev-dependency on hearth-swarm names the feature).
//!
//! Syntax: `MODE[@FRACTION|@from:POSITION]`, where MODE is `noise:REL` (add Gaussian noise of
//! REL times the row's RMS), `stale` (each row repeats the previous row's output), `random`
//! (Gaussian values at the row's RMS), `copy-input` (return the input), `skip-block` (run one
//! block fewer than the span) or `claim-model:HEX` (announce and sign another model id, e.g. while serving other
//! weights or a lower precision of the same ones); `@FRACTION` cheats only on that fraction of
//! 32-position windows, `@from:POSITION` only on steps from that position on (an honest prefill,
//! then a cheat that only a decode window's check can catch).

use hearth_core::ContentHash;

/// How a node cheats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cheat {
    /// Adds Gaussian noise of this size relative to each row's RMS.
    Noise(f64),
    /// Returns for each row the previous row's output (row 0: the previous step's last row).
    Stale,
    /// Returns Gaussian values with each row's RMS.
    Random,
    /// Returns the input unchanged.
    CopyInput,
    /// Runs one block fewer than the session's span.
    SkipBlock,
    /// Announces and signs this model id whatever it serves.
    ClaimModel(ContentHash),
}

/// A cheat and how often it is applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adversary {
    /// What the node does when it cheats.
    pub cheat: Cheat,
    /// Fraction of 32-position windows it cheats on (1 = always).
    pub fraction: f64,
    /// Cheats only on steps starting at this position or later (0 = from the start).
    pub from_position: u32,
}

/// Whether this build can act on an [`Adversary`].
pub const ENABLED: bool = cfg!(feature = "adversary");

impl std::str::FromStr for Adversary {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !ENABLED {
            return Err(
                "this build has no adversary modes (build hearth-swarm with the cargo feature \
                 `adversary`, as its tests do)"
                    .into(),
            );
        }
        let (mode, fraction, from_position) = match s.split_once('@') {
            Some((m, at)) => match at.strip_prefix("from:") {
                Some(p) => (
                    m,
                    1.0,
                    p.parse::<u32>()
                        .map_err(|_| format!("bad position {p:?} (expected an integer)"))?,
                ),
                None => (
                    m,
                    at.parse::<f64>()
                        .ok()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .ok_or_else(|| format!("bad fraction {at:?} (expected 0..=1)"))?,
                    0,
                ),
            },
            None => (s, 1.0, 0),
        };
        let cheat = match mode {
            "stale" => Cheat::Stale,
            "random" => Cheat::Random,
            "copy-input" => Cheat::CopyInput,
            "skip-block" => Cheat::SkipBlock,
            other => {
                if let Some(rel) = other.strip_prefix("noise:") {
                    Cheat::Noise(
                        rel.parse::<f64>()
                            .ok()
                            .filter(|r| r.is_finite() && *r > 0.0)
                            .ok_or_else(|| format!("bad noise level {rel:?}"))?,
                    )
                } else if let Some(hex_id) = other.strip_prefix("claim-model:") {
                    let mut id = [0u8; 32];
                    hex::decode_to_slice(hex_id, &mut id)
                        .map_err(|e| format!("bad model id {hex_id:?}: {e}"))?;
                    Cheat::ClaimModel(ContentHash(id))
                } else {
                    return Err(format!(
                        "unknown adversary mode {other:?} (noise:REL, stale, random, copy-input, \
                         skip-block, claim-model:HEX, each optionally @FRACTION or @from:POSITION)"
                    ));
                }
            }
        };
        Ok(Self {
            cheat,
            fraction,
            from_position,
        })
    }
}

#[cfg(not(feature = "adversary"))]
impl Adversary {
    /// Without the feature no [`Adversary`] can be parsed, so this is never reached.
    pub fn cheats_at(&self, _session: &[u8; 16], _position: u32) -> bool {
        false
    }

    /// Without the feature: leaves `values` honest (no [`Adversary`] can exist in such a build).
    pub fn corrupt(&self, _: u64, _: usize, _: &[f32], _: &mut [f32], _: Option<&[f32]>) {}
}

#[cfg(feature = "adversary")]
mod enabled {
    use super::{Adversary, Cheat};
    use hearth_core::{ContentHasher, SplitMix64};

    impl Adversary {
        /// Whether to cheat on the window holding `position` of `session`.
        pub fn cheats_at(&self, session: &[u8; 16], position: u32) -> bool {
            if position < self.from_position {
                return false;
            }
            if self.fraction >= 1.0 {
                return true;
            }
            let draw = ContentHasher::new("adversary-window")
                .field(session)
                .field(&(position / 32).to_le_bytes())
                .finish();
            draw.unit() < self.fraction
        }

        /// Cheats (or not, by [`Adversary::cheats_at`]) on one step of `session` at positions
        /// `start..`: `values` is the honest output (row-major, `cols` wide) of `input`;
        /// `last_row` carries the session's last honest row from step to step (for
        /// [`Cheat::Stale`]).
        pub fn apply(
            &self,
            session: &[u8; 16],
            start: u32,
            cols: usize,
            input: &[f32],
            values: &mut [f32],
            last_row: &mut Option<Vec<f32>>,
        ) {
            let honest_last = values[values.len().saturating_sub(cols)..].to_vec();
            if self.cheats_at(session, start) {
                let mut first = [0u8; 8];
                first.copy_from_slice(&session[..8]);
                let seed = u64::from(start) ^ u64::from_le_bytes(first);
                self.corrupt(seed, cols, input, values, last_row.as_deref());
            }
            *last_row = Some(honest_last);
        }

        /// Corrupts a step's output `values` (row-major, `cols` wide) computed from `input`.
        /// `previous` is the last row this session returned, for [`Cheat::Stale`].
        pub fn corrupt(
            &self,
            seed: u64,
            cols: usize,
            input: &[f32],
            values: &mut [f32],
            previous: Option<&[f32]>,
        ) {
            let mut rng = SplitMix64::new(seed);
            let mut gaussian = move || {
                let u = rng.unit().max(1e-300);
                let v = rng.unit();
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            };
            let rms = |row: &[f32]| {
                (row.iter().map(|v| v * v).sum::<f32>() / row.len().max(1) as f32).sqrt()
            };
            match self.cheat {
                Cheat::Noise(rel) => {
                    for row in values.chunks_exact_mut(cols) {
                        let scale = rel as f32 * rms(row);
                        for v in row {
                            *v += scale * gaussian();
                        }
                    }
                }
                Cheat::Random => {
                    for row in values.chunks_exact_mut(cols) {
                        let scale = rms(row);
                        for v in row {
                            *v = scale * gaussian();
                        }
                    }
                }
                Cheat::Stale => {
                    let honest = values.to_vec();
                    for (r, row) in values.chunks_exact_mut(cols).enumerate() {
                        let earlier = if r == 0 {
                            previous
                        } else {
                            honest.get((r - 1) * cols..r * cols)
                        };
                        if let Some(earlier) = earlier {
                            row.copy_from_slice(earlier);
                        }
                    }
                }
                Cheat::CopyInput => values.copy_from_slice(input),
                Cheat::SkipBlock | Cheat::ClaimModel(_) => {}
            }
        }
    }
}

#[cfg(all(test, feature = "adversary"))]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        let a: Adversary = "noise:1e-3@0.25".parse().unwrap();
        assert_eq!(a.cheat, Cheat::Noise(1e-3));
        assert_eq!(a.fraction, 0.25);
        assert_eq!("stale".parse::<Adversary>().unwrap().fraction, 1.0);
        let a: Adversary = "random@from:20".parse().unwrap();
        assert_eq!((a.fraction, a.from_position), (1.0, 20));
        assert!(!a.cheats_at(&[1; 16], 19) && a.cheats_at(&[1; 16], 20));
        let id = ContentHash::of(b"x");
        let a: Adversary = format!("claim-model:{}", id.to_hex()).parse().unwrap();
        assert_eq!(a.cheat, Cheat::ClaimModel(id));
        for bad in [
            "noise:-1",
            "noise:x",
            "stale@2",
            "stale@from:x",
            "stale@from:-1",
            "nonsense",
            "claim-model:zz",
        ] {
            assert!(bad.parse::<Adversary>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fractional_cheat_cheats_on_about_that_fraction_of_windows() {
        let a: Adversary = "random@0.1".parse().unwrap();
        let n = (0..10_000u32)
            .filter(|w| a.cheats_at(&[1; 16], w * 32))
            .count();
        assert!((800..1200).contains(&n), "{n}");
    }

    #[test]
    fn each_output_cheat_changes_the_output() {
        let cols = 8;
        let input: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
        let honest: Vec<f32> = (0..16).map(|i| (i as f32).sin()).collect();
        for mode in ["noise:1e-2", "random", "stale", "copy-input"] {
            let a: Adversary = mode.parse().unwrap();
            let mut v = honest.clone();
            a.corrupt(7, cols, &input, &mut v, Some(&[0.5; 8]));
            assert_ne!(v, honest, "{mode}");
        }
    }
}
