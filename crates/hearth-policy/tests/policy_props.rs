//! Property tests of the policy: power cap, thermal limits (one step and closed loop with the
//! simulated device), demand-response curtailment, hysteresis, AI first, unsafe → idle.

use hearth_core::SplitMix64;
use hearth_policy::sim_device::SimulatedDevice;
use hearth_policy::synthetic::synthetic_fleet;
use hearth_policy::*;
use proptest::prelude::*;

fn prices(e: f64, hp: f64, heat: f64) -> Prices {
    Prices {
        electricity_usd_per_mwh: e,
        hashprice_usd_per_th_day: hp,
        heat_value_usd_per_mwh: heat,
    }
}

#[allow(clippy::too_many_arguments)]
fn input<'a>(
    now: f64,
    specs: &'a [DeviceSpec],
    readings: &'a [Reading],
    p: Prices,
    ai: AiDemand,
    events: &'a [DrEvent],
    cap: Option<f64>,
    cfg: &'a PolicyConfig,
) -> PolicyInput<'a> {
    PolicyInput {
        now_s: now,
        devices: specs,
        readings,
        prices: p,
        forecast: None,
        ai,
        events,
        site_cap_w: cap,
        config: cfg,
    }
}

/// A random previous state: modes and switch times.
fn random_state(n: usize, seed: u64, now: f64) -> PolicyState {
    let mut rng = SplitMix64::new(seed);
    PolicyState {
        devices: (0..n)
            .map(|_| DeviceState {
                mode: Mode::ALL[(rng.next_u64() % 4) as usize],
                since_s: now - rng.range(0.0, 900.0),
                switches: 0,
            })
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn power_cap_and_thermal_limits_hold(
        n in 1usize..60,
        seed in any::<u64>(),
        e in -50.0f64..400.0,
        hp in 0.0f64..0.2,
        heat in 0.0f64..150.0,
        jobs in 0u32..40,
        mtok in 0.0f64..3.0,
        cap_frac in 0.0f64..1.2,
        dr_limit in proptest::option::of(0.0f64..1.0),
    ) {
        let now = 10_000.0;
        let (specs, readings) = synthetic_fleet(n, seed, now);
        let state = random_state(n, seed ^ 1, now);
        let cfg = PolicyConfig::default();
        let floor: f64 = specs.iter().map(|s| s.idle_w).sum();
        let full: f64 = specs.iter().map(|s| s.mine.map_or(0.0, |m| m.power_w)).sum();
        let cap = floor + cap_frac * (full - floor);
        let events: Vec<DrEvent> = dr_limit
            .map(|f| DrEvent {
                id: "dr".into(),
                start_s: now - 1.0,
                end_s: now + 600.0,
                target: DrTarget::LimitW(floor + f * (cap - floor)),
            })
            .into_iter()
            .collect();
        let inp = input(now, &specs, &readings, prices(e, hp, heat),
            AiDemand { jobs_waiting: jobs, usd_per_mtok: mtok }, &events, Some(cap), &cfg);
        let (dec, _) = decide(&inp, &state);
        prop_assert_eq!(dec.len(), n);
        let total: f64 = dec.iter().map(|d| d.power_w).sum();
        let eff_cap = events.first().map_or(cap, |ev| match ev.target {
            DrTarget::LimitW(w) => w.min(cap),
            DrTarget::Curtail => 0.0,
        });
        prop_assert!(total <= eff_cap + 1e-6, "planned {} W > cap {} W", total, eff_cap);
        let ai_count = dec.iter().filter(|d| d.mode == Mode::ServeAi).count();
        prop_assert!(ai_count as u32 <= jobs);
        for d in &dec {
            let s = &specs[d.device];
            if d.mode == Mode::Idle {
                continue;
            }
            let t = readings[d.device].temp_c.unwrap();
            let limit = s.temp_limit_c.unwrap() - cfg.temp_margin_c;
            prop_assert!(t < limit);
            let m = s.thermal.unwrap();
            let end = m.step(t, d.power_w, cfg.interval_s);
            prop_assert!(end <= limit + 1e-6, "{} predicted {} > {}", s.id, end, limit);
        }
    }

    #[test]
    fn closed_loop_never_exceeds_temperature_limit(
        n in 1usize..12,
        seed in any::<u64>(),
        e in 0.0f64..100.0,
        jobs in 0u32..12,
    ) {
        let cfg = PolicyConfig::default();
        let (mut specs, _) = synthetic_fleet(n, seed, 0.0);
        for s in &mut specs {
            s.switch_cost_usd = 0.0;
        }
        let mut devs: Vec<SimulatedDevice> =
            specs.iter().cloned().map(|s| SimulatedDevice::new(s, 0.0)).collect();
        let mut state = PolicyState::default();
        let mut rng = SplitMix64::new(seed);
        for step in 0..120 {
            let now = step as f64 * cfg.interval_s;
            let readings: Vec<Reading> = devs.iter().map(|d| d.reading()).collect();
            // Cheap power and high hashprice push every device to run flat out.
            let p = prices(e, 0.3 * rng.range(0.5, 1.5), 200.0);
            let inp = input(now, &specs, &readings, p,
                AiDemand { jobs_waiting: jobs, usd_per_mtok: 2.0 }, &[], None, &cfg);
            let (dec, next) = decide(&inp, &state);
            state = next;
            for (d, dv) in dec.iter().zip(devs.iter_mut()) {
                dv.apply(d);
                // Sub-steps: the temperature is checked inside the interval, not only at its end.
                for _ in 0..10 {
                    dv.step(cfg.interval_s / 10.0);
                    let limit = dv.spec.temp_limit_c.unwrap();
                    prop_assert!(dv.temp_c <= limit, "{} at {} °C > {}", dv.spec.id, dv.temp_c, limit);
                }
            }
        }
        // And the loop actually ran loads (so the property is not vacuous).
        prop_assert!(state.devices.iter().any(|s| s.switches > 0));
    }

    #[test]
    fn curtail_event_idles_every_device_in_the_same_step(
        n in 1usize..50,
        seed in any::<u64>(),
        e in -50.0f64..100.0,
        jobs in 0u32..50,
    ) {
        let now = 5_000.0;
        let (specs, readings) = synthetic_fleet(n, seed, now);
        let state = random_state(n, seed, now);
        let cfg = PolicyConfig::default();
        let events = [DrEvent { id: "evt-1".into(), start_s: now, end_s: now + 1.0, target: DrTarget::Curtail }];
        let inp = input(now, &specs, &readings, prices(e, 0.2, 100.0),
            AiDemand { jobs_waiting: jobs, usd_per_mtok: 5.0 }, &events, None, &cfg);
        let (dec, next) = decide(&inp, &state);
        for d in &dec {
            prop_assert_eq!(d.mode, Mode::Idle);
            let is_curtailed = matches!(d.reason, Reason::Curtailed { .. } | Reason::Unsafe { .. });
            prop_assert!(is_curtailed, "{:?}", d.reason);
        }
        prop_assert!(next.devices.iter().all(|s| s.mode == Mode::Idle));
        // Before the event started nothing was curtailed.
        let before = input(now - 0.5, &specs, &readings, prices(e, 0.2, 100.0),
            AiDemand { jobs_waiting: jobs, usd_per_mtok: 5.0 }, &events, None, &cfg);
        let (dec, _) = decide(&before, &state);
        let none_curtailed = dec.iter().all(|d| !matches!(d.reason, Reason::Curtailed { .. }));
        prop_assert!(none_curtailed);
    }

    #[test]
    fn hysteresis_prevents_flapping(
        seed in any::<u64>(),
        amplitude in 0.0f64..30.0,
        dwell_steps in 1u32..10,
    ) {
        let cfg = PolicyConfig { min_dwell_s: dwell_steps as f64 * 60.0, ..PolicyConfig::default() };
        let (mut specs, _) = synthetic_fleet(8, seed, 0.0);
        for s in &mut specs {
            s.ai = None;
            s.heat = None;
        }
        let hp = 0.05;
        let steps = 200u32;
        let mut state = PolicyState::default();
        for step in 0..steps {
            let now = step as f64 * 60.0;
            let readings: Vec<Reading> = specs.iter().map(|s| Reading {
                at_s: now, power_w: Some(s.idle_w), temp_c: Some(30.0), ..Reading::default()
            }).collect();
            // Price alternates around device 0's break-even every step.
            let m = specs[0].mine.unwrap();
            let be = m.hashrate_th_s * hp / 24.0 / ((m.power_w - specs[0].idle_w) / 1e6);
            let e = if step % 2 == 0 { be + amplitude } else { be - amplitude };
            let inp = input(now, &specs, &readings, prices(e, hp, 0.0), AiDemand::default(), &[], None, &cfg);
            let (_, next) = decide(&inp, &state);
            state = next;
        }
        let allowed = 1 + (steps / dwell_steps) as u64;
        for (s, st) in specs.iter().zip(&state.devices) {
            prop_assert!(st.switches <= allowed, "{} switched {} times (allowed {})", s.id, st.switches, allowed);
        }
    }

    #[test]
    fn paid_ai_comes_first_and_unsafe_devices_idle(
        n in 1usize..40,
        seed in any::<u64>(),
        bad in any::<u64>(),
    ) {
        let now = 100.0;
        let (mut specs, mut readings) = synthetic_fleet(n, seed, now);
        for s in &mut specs {
            s.switch_cost_usd = 0.0;
        }
        let mut rng = SplitMix64::new(bad);
        let mut unsafe_dev = vec![false; n];
        for (i, r) in readings.iter_mut().enumerate() {
            r.temp_c = Some(40.0);
            match rng.next_u64() % 6 {
                0 => { r.power_w = Some(-3.0); unsafe_dev[i] = true; }
                1 => { r.temp_c = Some(500.0); unsafe_dev[i] = true; }
                2 => { r.at_s = now - 10_000.0; unsafe_dev[i] = true; }
                3 => { r.fault = Some("gone".into()); unsafe_dev[i] = true; }
                _ => {}
            }
        }
        let cfg = PolicyConfig::default();
        // Mining pays far more than AI here, yet AI-capable devices must serve the paid AI work.
        let inp = input(now, &specs, &readings, prices(20.0, 1000.0, 0.0),
            AiDemand { jobs_waiting: n as u32, usd_per_mtok: 2.0 }, &[], None, &cfg);
        let (dec, _) = decide(&inp, &PolicyState::default());
        for d in &dec {
            if unsafe_dev[d.device] {
                prop_assert_eq!(d.mode, Mode::Idle);
                let is_unsafe = matches!(d.reason, Reason::Unsafe { .. });
                prop_assert!(is_unsafe);
            } else if specs[d.device].ai.is_some() {
                prop_assert_eq!(d.mode, Mode::ServeAi, "{}", d.reason);
            } else {
                prop_assert_eq!(d.mode, Mode::Mine);
            }
        }
    }
}

#[test]
fn reasons_name_price_and_break_even() {
    let cfg = PolicyConfig {
        min_dwell_s: 0.0,
        hysteresis_frac: 0.0,
        ..PolicyConfig::default()
    };
    let spec = DeviceSpec {
        id: "s19".into(),
        kind: DeviceKind::Asic,
        idle_w: 0.0,
        mine: Some(MineSpec {
            power_w: 1000.0,
            // 96 $/MWh break-even at 0.05 $/TH/day: 0.096 $/h = TH · 0.05/24.
            hashrate_th_s: 0.096 * 24.0 / 0.05,
        }),
        ai: None,
        heat: None,
        temp_limit_c: None,
        thermal: None,
        power_limit_range_w: None,
        switch_cost_usd: 0.0,
    };
    let specs = [spec];
    let readings = [Reading {
        at_s: 0.0,
        ..Reading::default()
    }];
    let inp = input(
        0.0,
        &specs,
        &readings,
        prices(50.0, 0.05, 0.0),
        AiDemand::default(),
        &[],
        None,
        &cfg,
    );
    let (dec, state) = decide(&inp, &PolicyState::default());
    assert_eq!(dec[0].mode, Mode::Mine);
    assert_eq!(
        dec[0].reason.to_string(),
        "mining: price 50 $/MWh < break-even 96 $/MWh"
    );
    let later = [Reading {
        at_s: 60.0,
        ..Reading::default()
    }];
    let inp = input(
        60.0,
        &specs,
        &later,
        prices(182.0, 0.05, 0.0),
        AiDemand::default(),
        &[],
        None,
        &cfg,
    );
    let (dec, _) = decide(&inp, &state);
    assert_eq!(dec[0].mode, Mode::Idle);
    assert!(dec[0].changed);
    assert_eq!(
        dec[0].reason.to_string(),
        "mining stopped: price 182 $/MWh > break-even 96 $/MWh"
    );
}

#[test]
fn forecast_is_used_only_when_given() {
    let cfg = PolicyConfig {
        min_dwell_s: 600.0,
        hysteresis_frac: 0.0,
        ..PolicyConfig::default()
    };
    let (specs, readings) = synthetic_fleet(1, 7, 0.0);
    let m = specs[0].mine.unwrap();
    let be = m.hashrate_th_s * 0.05 / 24.0 / ((m.power_w - specs[0].idle_w) / 1e6);
    let mut inp = input(
        0.0,
        &specs,
        &readings,
        prices(be * 0.9, 0.05, 0.0),
        AiDemand::default(),
        &[],
        None,
        &cfg,
    );
    let mut only_mine = specs.clone();
    only_mine[0].switch_cost_usd = 0.0;
    only_mine[0].ai = None;
    only_mine[0].heat = None;
    inp.devices = &only_mine;
    let (dec, _) = decide(&inp, &PolicyState::default());
    assert_eq!(dec[0].mode, Mode::Mine);
    // A price spike over the coming dwell makes starting not worth it.
    let fc = [be * 0.9, be * 3.0];
    inp.forecast = Some(PriceForecast {
        start_s: 0.0,
        step_s: 300.0,
        usd_per_mwh: &fc,
    });
    let (dec, _) = decide(&inp, &PolicyState::default());
    assert_eq!(dec[0].mode, Mode::Idle);
}

#[test]
fn thermal_derate_sets_a_power_limit_below_nominal() {
    let cfg = PolicyConfig::default();
    let (specs, mut readings) = synthetic_fleet(1, 3, 0.0);
    let mut specs = specs;
    specs[0].ai = None;
    specs[0].heat = None;
    specs[0].switch_cost_usd = 0.0;
    specs[0].thermal = Some(ThermalModel {
        ambient_c: 25.0,
        r_c_per_w: 0.15,
        tau_s: 60.0,
    });
    specs[0].mine = Some(MineSpec {
        power_w: 400.0,
        hashrate_th_s: 1.0,
    });
    specs[0].power_limit_range_w = Some((120.0, 400.0));
    let m = specs[0].thermal.unwrap();
    let limit = specs[0].temp_limit_c.unwrap() - cfg.temp_margin_c;
    let nominal = 400.0;
    let t = 70.0;
    // Nominal power would overshoot the limit within one interval.
    assert!(m.step(t, nominal, cfg.interval_s) > limit);
    readings[0].temp_c = Some(t);
    let inp = input(
        0.0,
        &specs,
        &readings,
        prices(0.0, 1.0, 0.0),
        AiDemand::default(),
        &[],
        None,
        &cfg,
    );
    let (dec, _) = decide(&inp, &PolicyState::default());
    let d = &dec[0];
    assert_eq!(d.mode, Mode::Mine, "{d:?}");
    assert!(d.derated, "{d:?}");
    assert!(d.power_w < nominal && d.power_w >= 120.0);
    assert_eq!(d.power_limit_w, Some(d.power_w));
    let end = m.step(t, d.power_w, cfg.interval_s);
    assert!(end <= limit + 1e-9 && end > limit - 0.01, "{end}");
}

#[test]
fn heat_runs_when_heat_is_worth_more_than_power() {
    let cfg = PolicyConfig {
        min_dwell_s: 0.0,
        ..PolicyConfig::default()
    };
    let spec = DeviceSpec {
        id: "radiator-gpu".into(),
        kind: DeviceKind::Gpu,
        idle_w: 20.0,
        mine: None,
        ai: None,
        heat: Some(HeatSpec { power_w: 200.0 }),
        temp_limit_c: None,
        thermal: None,
        power_limit_range_w: None,
        switch_cost_usd: 0.0,
    };
    let specs = [spec];
    let readings = [Reading::default()];
    let run = |e: f64, h: f64| {
        let inp = input(
            0.0,
            &specs,
            &readings,
            prices(e, 0.0, h),
            AiDemand::default(),
            &[],
            None,
            &cfg,
        );
        decide(&inp, &PolicyState::default()).0.remove(0)
    };
    let d = run(50.0, 100.0);
    assert_eq!(d.mode, Mode::Heat);
    assert_eq!(
        d.reason.to_string(),
        "heating: heat worth 100 $/MWh > price 50 $/MWh"
    );
    let d = run(150.0, 100.0);
    assert_eq!(d.mode, Mode::Idle);
    assert_eq!(d.reason, Reason::NothingWorthRunning);
    let d = run(50.0, 0.0);
    assert_eq!(d.mode, Mode::Idle);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Garbage prices (NaN, infinities, huge negatives) never panic, never break the cap, and a
    /// non-finite electricity price runs nothing.
    #[test]
    fn garbage_prices_are_harmless(
        n in 1usize..30,
        seed in any::<u64>(),
        e in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), -1e9f64..1e9],
        hp in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1.0f64..10.0],
        heat in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -100.0f64..1e4],
        mtok in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1.0f64..100.0],
    ) {
        let now = 100.0;
        let (specs, readings) = synthetic_fleet(n, seed, now);
        let cfg = PolicyConfig::default();
        let floor: f64 = specs.iter().map(|s| s.idle_w).sum();
        let cap = floor + 500.0;
        let state = random_state(n, seed, now);
        let inp = input(now, &specs, &readings, prices(e, hp, heat),
            AiDemand { jobs_waiting: 5, usd_per_mtok: mtok }, &[], Some(cap), &cfg);
        let (dec, _) = decide(&inp, &state);
        let total: f64 = dec.iter().map(|d| d.power_w).sum();
        prop_assert!(total <= cap + 1e-6);
        if !e.is_finite() {
            prop_assert!(dec.iter().all(|d| d.mode == Mode::Idle));
        }
        for d in &dec {
            prop_assert!(d.power_w.is_finite());
            let _ = d.reason.to_string();
        }
    }
}
