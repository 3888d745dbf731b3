//! Synthetic fleets and the timing of one policy decision (`hearth agent --bench-decide`).

use crate::policy::{
    decide_into, AiDemand, AiSpec, DeviceKind, DeviceSpec, HeatSpec, MineSpec, PolicyConfig,
    PolicyInput, PolicyState, Prices, Scratch,
};
use crate::reading::Reading;
use crate::thermal::ThermalModel;
use std::time::Instant;

/// SplitMix64: a tiny deterministic generator so fleets are reproducible without a dependency.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// A mixed fleet of `n` devices (GPUs that mine, serve AI and heat; ASICs that mine) with
/// healthy readings at `now_s`.
pub fn synthetic_fleet(n: usize, seed: u64, now_s: f64) -> (Vec<DeviceSpec>, Vec<Reading>) {
    let mut rng = SplitMix(seed);
    let mut specs = Vec::with_capacity(n);
    let mut readings = Vec::with_capacity(n);
    for i in 0..n {
        let gpu = i % 4 != 3;
        let spec = if gpu {
            let p = rng.range(150.0, 450.0);
            DeviceSpec {
                id: format!("gpu{i}"),
                kind: DeviceKind::Gpu,
                idle_w: rng.range(10.0, 30.0),
                mine: Some(MineSpec {
                    power_w: p,
                    hashrate_th_s: p * rng.range(0.0001, 0.0003),
                }),
                ai: Some(AiSpec {
                    power_w: p * 0.9,
                    tokens_per_s: rng.range(20.0, 200.0),
                }),
                heat: Some(HeatSpec { power_w: p * 0.5 }),
                temp_limit_c: Some(83.0),
                thermal: Some(ThermalModel {
                    ambient_c: 25.0,
                    r_c_per_w: rng.range(0.08, 0.14),
                    tau_s: rng.range(60.0, 300.0),
                }),
                power_limit_range_w: Some((p * 0.3, p)),
                switch_cost_usd: rng.range(0.0, 0.002),
            }
        } else {
            let p = rng.range(1500.0, 3500.0);
            DeviceSpec {
                id: format!("asic{i}"),
                kind: DeviceKind::Asic,
                idle_w: rng.range(20.0, 60.0),
                mine: Some(MineSpec {
                    power_w: p,
                    hashrate_th_s: p / rng.range(17.0, 30.0),
                }),
                ai: None,
                heat: None,
                temp_limit_c: Some(85.0),
                thermal: Some(ThermalModel {
                    ambient_c: 25.0,
                    r_c_per_w: rng.range(0.01, 0.02),
                    tau_s: rng.range(120.0, 600.0),
                }),
                power_limit_range_w: None,
                switch_cost_usd: rng.range(0.0, 0.01),
            }
        };
        readings.push(Reading {
            at_s: now_s,
            power_w: Some(spec.idle_w),
            temp_c: Some(rng.range(30.0, 80.0)),
            utilization: Some(0.0),
            ..Reading::default()
        });
        specs.push(spec);
    }
    (specs, readings)
}

/// Timing of `runs` decisions over a fleet of `n` devices.
#[derive(Clone, Debug)]
pub struct DecideBench {
    pub devices: usize,
    pub runs: usize,
    pub median_us: f64,
    pub p95_us: f64,
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
