//! Synthetic fleets: reproducible mixed fleets of GPUs and ASICs with healthy readings, for the
//! policy's property tests and the timing of one decision (`hearth agent --bench-decide`).
//!
//! Invariant: a pure function of `(n, seed, now_s)`; the same arguments give the same fleet.

use hearth_core::SplitMix64;

use crate::policy::{AiSpec, DeviceKind, DeviceSpec, HeatSpec, MineSpec};
use crate::reading::Reading;
use crate::thermal::ThermalModel;

/// A mixed fleet of `n` devices (GPUs that mine, serve AI and heat; ASICs that mine) with
/// healthy readings at `now_s`.
pub fn synthetic_fleet(n: usize, seed: u64, now_s: f64) -> (Vec<DeviceSpec>, Vec<Reading>) {
    let mut rng = SplitMix64::new(seed);
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
