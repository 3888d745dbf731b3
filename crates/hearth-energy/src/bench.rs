//! The timing of one policy decision (`hearth agent --bench-decide`) over a synthetic fleet.

pub use hearth_policy::synthetic::synthetic_fleet;

use crate::policy::{
    decide_into, AiDemand, PolicyConfig, PolicyInput, PolicyState, Prices, Scratch,
};
use std::time::Instant;

/// Timing of `runs` decisions over a fleet of `n` devices.
#[derive(Clone, Debug)]
pub struct DecideBench {
    /// Fleet size.
    pub devices: usize,
    /// Timed decisions (the warm-up run excluded).
    pub runs: usize,
    /// Median time of one decision, microseconds.
    pub median_us: f64,
    /// 95th-percentile time of one decision, microseconds.
    pub p95_us: f64,
    /// Fastest decision, microseconds.
    pub min_us: f64,
    /// Devices not idle in the last decision (a sanity figure: the work was real).
    pub running: usize,
}

/// Times `decide_into` on a synthetic fleet with a binding site cap and some AI demand, after one
/// untimed warm-up run, carrying the policy state from run to run as the agent does.
pub fn bench_decide(n: usize, runs: usize) -> DecideBench {
    let now = 1_000_000.0;
    let (specs, readings) = synthetic_fleet(n, 42, now);
    let cfg = PolicyConfig::default();
    let cap = specs.iter().map(|s| s.idle_w).sum::<f64>() + 300.0 * n as f64;
    let mut state = PolicyState::default();
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    let mut times = Vec::with_capacity(runs.max(1));
    let mut running = 0;
    // One untimed warm-up run: the first call grows the reusable buffers.
    for r in 0..=runs.max(1) {
        let input = PolicyInput {
            now_s: now,
            devices: &specs,
            readings: &readings,
            prices: Prices {
                electricity_usd_per_mwh: 60.0 + (r % 7) as f64 * 20.0,
                hashprice_usd_per_th_day: 0.05,
                heat_value_usd_per_mwh: 40.0,
            },
            forecast: None,
            ai: AiDemand {
                jobs_waiting: (n / 10) as u32,
                usd_per_mtok: 0.5,
            },
            events: &[],
            site_cap_w: Some(cap),
            config: &cfg,
        };
        let t = Instant::now();
        decide_into(&input, &mut state, &mut out, &mut scratch);
        if r > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        running = out
            .iter()
            .filter(|d| d.mode != crate::policy::Mode::Idle)
            .count();
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    DecideBench {
        devices: n,
        runs: times.len(),
        median_us: pick(0.5),
        p95_us: pick(0.95),
        min_us: times[0],
        running,
    }
}
