//! The decision: what each device does for the next interval. A pure function of
//! (devices, readings, prices, AI demand, demand-response events, site cap, clock, previous state).
//!
//! # The rule
//!
//! Values are rates in $/h *relative to leaving the device idle* ("gain"); powers are watts.
//! With `e` the electricity price ($/MWh; the mean of the day-ahead vector over the next dwell
//! horizon when one is given, else the current price) and `h` the heat value ($/MWh of useful
//! heat, zero when no heat is wanted), a mode drawing `P` watts over an idle draw `I` has
//!
//! * mine:     `gain = TH/s · hashprice/24 + (h − e) · (P − I)/1e6`
//! * serve AI: `gain = tokens/s · 3600/1e6 · $/Mtok + (h − e) · (P − I)/1e6` (needs a waiting job)
//! * heat:     `gain = (h − e) · (P − I)/1e6`
//! * idle:     `gain = 0`
//!
//! Each step, in this order:
//!
//! 1. **Safety first, no dwell:** a device whose reading is unhealthy (see [`crate::reading`]),
//!    missing or stale is idled ("unsafe"); if a demand-response event with target "curtail" is
//!    active, every device is idled in this very step; a device at or above
//!    `limit − temp_margin` is idled ("thermal").
//! 2. **Thermal look-ahead:** with a thermal model, a mode is allowed only if the predicted
//!    temperature at the end of the interval stays ≤ `limit − temp_margin`; a power-limitable
//!    device is derated to the largest power that keeps it there (revenue scaled by power).
//! 3. **Hysteresis:** the device's current mode gets `+b`, every other mode `−b`, where
//!    `b = switch_cost / max(dwell, 1 h) + hysteresis_frac · e · (P − I)/1e6`. A mode must have a
//!    positive adjusted gain to be chosen. So a miner stops when the price passes break-even by
//!    the band and starts again only when it falls back below it by the band.
//! 4. **Minimum dwell:** a device that switched less than `min_dwell` ago keeps its mode (even at a
//!    loss), except that safety (1) overrides it and a miner/heater may be preempted by paid AI
//!    work ("mining is the filler").
//! 5. **Allocation under the cap:** the cap is the site cap lowered by any active
//!    demand-response `limit`. Every device starts at its idle draw; the remaining budget is
//!    handed out greedily over candidate (device, mode) entries sorted by tier — paid AI first,
//!    then modes that dwell locks in, then the rest — and within a tier by gain per extra watt
//!    (a device's own options stay together, best gain first). AI entries also consume one
//!    waiting job each. An entry that does not fit is skipped; a device left without an entry is
//!    idle ("power cap" if it had a profitable mode, else "not worth running").
//!
//! Invariants (tested by property tests): planned power ≤ cap whenever the idle floor fits under
//! it; no device runs when unhealthy, curtailed or at its thermal limit; with a thermal model the
//! predicted end-of-interval temperature of a running device is within its limit; a device
//! changes mode at most once per `min_dwell` unless forced by safety or preempted by AI.
//! Deterministic (ties broken by device index), O(n log n); [`decide_into`] reuses its buffers, so
//! a step allocates only the reason strings of curtailed or unsafe devices.

use crate::json_float::nan_if_null;
use crate::reading::{validate, Health, HealthIssue, Reading};
use crate::thermal::ThermalModel;
use serde::{Deserialize, Serialize};

/// What kind of hardware a device is (informational for the policy; used by control and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A GPU (NVML telemetry and power limits).
    Gpu,
    /// A mining ASIC, controlled through its miner.
    Asic,
    /// A CPU package (RAPL telemetry).
    Cpu,
    /// Anything else (a resistive heater, a simulated load).
    Other,
}

/// Mining capability: the hashrate at the given power.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MineSpec {
    /// Draw while mining, watts.
    pub power_w: f64,
    /// Hashrate at `power_w`, TH/s (SHA-256d).
    pub hashrate_th_s: f64,
}

/// AI-serving capability.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AiSpec {
    /// Draw while serving, watts.
    pub power_w: f64,
    /// Tokens per second this device serves when busy.
    pub tokens_per_s: f64,
}

/// Heat-only capability (a load run only for its heat, e.g. a resistive mode or a stress load).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeatSpec {
    /// Draw while heating, watts.
    pub power_w: f64,
}

/// Static description of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Stable name of the device (logs, metrics, control, the agent's state).
    pub id: String,
    /// What hardware it is.
    pub kind: DeviceKind,
    /// Draw when idle (or curtailed), watts.
    pub idle_w: f64,
    /// Mining capability; `None`: the device cannot mine.
    #[serde(default)]
    pub mine: Option<MineSpec>,
    /// AI-serving capability; `None`: the device cannot serve AI work.
    #[serde(default)]
    pub ai: Option<AiSpec>,
    /// Heat-only capability; `None`: no heat-only mode.
    #[serde(default)]
    pub heat: Option<HeatSpec>,
    /// Never exceed this temperature. `None`: no limit and no temperature needed.
    #[serde(default)]
    pub temp_limit_c: Option<f64>,
    /// Thermal model for look-ahead; without it the device only runs below `limit − margin`.
    #[serde(default)]
    pub thermal: Option<ThermalModel>,
    /// The device accepts a power limit in this range (watts); enables thermal derating.
    #[serde(default)]
    pub power_limit_range_w: Option<(f64, f64)>,
    /// Cost of one mode switch, dollars (wear, pool reconnect, lost shares, model load).
    #[serde(default)]
    pub switch_cost_usd: f64,
}

/// Prices that hold for the coming interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// $/MWh.
    pub electricity_usd_per_mwh: f64,
    /// $/TH/day (SHA-256d). Zero or negative: no mining.
    pub hashprice_usd_per_th_day: f64,
    /// $/MWh of useful heat; zero when no heat is wanted.
    pub heat_value_usd_per_mwh: f64,
}

/// Day-ahead (or any) electricity price vector, used only when given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceForecast<'a> {
    /// Time of `usd_per_mwh[0]`, seconds on the policy clock.
    pub start_s: f64,
    /// Seconds per entry.
    pub step_s: f64,
    /// Electricity prices, $/MWh, one per `step_s` from `start_s`; non-finite entries are skipped.
    pub usd_per_mwh: &'a [f64],
}

/// Paid AI work waiting for this site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AiDemand {
    /// Jobs waiting (one device serves one job).
    pub jobs_waiting: u32,
    /// Offered price, $ per million tokens.
    pub usd_per_mtok: f64,
}

/// What a demand-response event asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrTarget {
    /// Idle every device.
    Curtail,
    /// Keep the site at or below this many watts.
    LimitW(f64),
}

/// A demand-response event (shaped after OpenADR 3; the agent parses it in
/// `hearth_energy::signals::dr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrEvent {
    /// The event's identifier (named in reasons and logs).
    pub id: String,
    /// Start, seconds on the policy clock (inclusive).
    pub start_s: f64,
    /// End, seconds on the policy clock (exclusive).
    pub end_s: f64,
    /// What the event asks of the site while active.
    pub target: DrTarget,
}

impl DrEvent {
    /// Whether the event is in force at `now_s`: `start_s <= now_s < end_s`.
    pub fn active_at(&self, now_s: f64) -> bool {
        self.start_s <= now_s && now_s < self.end_s
    }
}

/// A switch's cost is spread over this many seconds (or the dwell, if longer) of running in the
/// new mode: an hour, the time scale of hourly prices.
pub const SWITCH_AMORTIZE_S: f64 = 3600.0;

/// Tunables of the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Seconds until the next decision (thermal look-ahead horizon).
    pub interval_s: f64,
    /// Minimum time between two voluntary mode switches of a device, seconds.
    pub min_dwell_s: f64,
    /// Hysteresis band as a fraction of the energy cost of a mode.
    pub hysteresis_frac: f64,
    /// Keep this many °C below each device's temperature limit.
    pub temp_margin_c: f64,
    /// A reading older than this is stale, seconds.
    pub stale_after_s: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            interval_s: 60.0,
            min_dwell_s: 300.0,
            hysteresis_frac: 0.05,
            temp_margin_c: 5.0,
            stale_after_s: 180.0,
        }
    }
}

/// Everything the policy looks at. `readings[i]` belongs to `devices[i]`; a missing reading is
/// treated as a vanished sensor.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// The current time, seconds on the policy clock (wall or simulated).
    pub now_s: f64,
    /// The devices to decide for; decisions and state follow this order.
    pub devices: &'a [DeviceSpec],
    /// Latest reading per device, same order as `devices`.
    pub readings: &'a [Reading],
    /// Prices holding now.
    pub prices: Prices,
    /// Electricity price vector; when it covers `now_s` its mean over the dwell horizon replaces
    /// the spot price.
    pub forecast: Option<PriceForecast<'a>>,
    /// Paid AI work waiting for this site.
    pub ai: AiDemand,
    /// Demand-response events; only those active at `now_s` count.
    pub events: &'a [DrEvent],
    /// Site power cap, watts. `None`: unlimited.
    pub site_cap_w: Option<f64>,
    /// The policy's tunables.
    pub config: &'a PolicyConfig,
}

/// What a device does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Mining (SHA-256d) at [`MineSpec::power_w`].
    Mine,
    /// Serving a paid AI job at [`AiSpec::power_w`].
    ServeAi,
    /// Running a load for its heat only, at [`HeatSpec::power_w`].
    Heat,
    /// No load: drawing [`DeviceSpec::idle_w`] (also the safe state).
    Idle,
}

impl Mode {
    /// Every mode, in declaration order.
    pub const ALL: [Mode; 4] = [Mode::Mine, Mode::ServeAi, Mode::Heat, Mode::Idle];

    /// The snake_case name, as serialized and logged (`"serve_ai"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mine => "mine",
            Mode::ServeAi => "serve_ai",
            Mode::Heat => "heat",
            Mode::Idle => "idle",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a device got its mode. `Display` gives the log line. Its `f64`s read `null` back as NaN
/// (it is part of the agent's state; see [`crate::agent_state`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Reason {
    /// Reading unhealthy: safe idle.
    Unsafe {
        /// What is wrong with the reading.
        issue: HealthIssue,
    },
    /// A demand-response curtail event is active.
    Curtailed {
        /// Id of the curtail event.
        event: String,
    },
    /// At or above `limit − margin`, or every load would exceed it within the interval.
    Thermal {
        /// The device's temperature, °C.
        #[serde(deserialize_with = "nan_if_null")]
        temp_c: f64,
        /// The device's temperature limit (before the margin), °C.
        #[serde(deserialize_with = "nan_if_null")]
        limit_c: f64,
    },
    /// Mining pays: electricity below the break-even price.
    MineProfitable {
        /// Effective electricity price, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        price_usd_per_mwh: f64,
        /// Electricity price at which mining (plus heat value) stops paying, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        break_even_usd_per_mwh: f64,
    },
    /// Not mining: electricity above the break-even price (`stopped`: it was mining).
    MineUnprofitable {
        /// Effective electricity price, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        price_usd_per_mwh: f64,
        /// Electricity price at which mining (plus heat value) stops paying, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        break_even_usd_per_mwh: f64,
        /// The device was mining before this step (it was stopped, not left off).
        stopped: bool,
    },
    /// Serving paid AI work.
    ServingAi {
        /// Token revenue at the offered price, $/h.
        #[serde(deserialize_with = "nan_if_null")]
        revenue_usd_per_h: f64,
        /// Electricity cost of the planned draw, $/h.
        #[serde(deserialize_with = "nan_if_null")]
        energy_usd_per_h: f64,
    },
    /// Running for heat: heat is worth more than the electricity.
    Heating {
        /// Value of the useful heat, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        heat_usd_per_mwh: f64,
        /// Effective electricity price, $/MWh.
        #[serde(deserialize_with = "nan_if_null")]
        price_usd_per_mwh: f64,
    },
    /// Kept in its mode: switched too recently.
    Dwell {
        /// Seconds until the minimum dwell has passed.
        #[serde(deserialize_with = "nan_if_null")]
        remaining_s: f64,
    },
    /// Kept in its mode: the better mode's gain does not cover switching.
    Hysteresis {
        /// The mode that would gain more (`Idle`: the current mode loses money).
        better: Mode,
        /// How much more it would gain, $/h.
        #[serde(deserialize_with = "nan_if_null")]
        gain_usd_per_h: f64,
        /// The gain a switch needs (the hysteresis band), $/h.
        #[serde(deserialize_with = "nan_if_null")]
        needed_usd_per_h: f64,
    },
    /// A profitable mode did not fit under the cap (`event`: the DR event that set it).
    PowerCap {
        /// The cap in force (site cap or DR limit), watts.
        #[serde(deserialize_with = "nan_if_null")]
        cap_w: f64,
        /// Id of the demand-response event that set the cap; `None`: the site cap.
        event: Option<String>,
    },
    /// Nothing to do: no AI work, no mining, no heat wanted.
    NothingWorthRunning,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unsafe { issue } => write!(f, "safe idle: {issue}"),
            Reason::Curtailed { event } => write!(f, "curtailed: demand-response event {event}"),
            Reason::Thermal { temp_c, limit_c } => write!(
                f,
                "thermal: {temp_c:.1} °C with limit {limit_c:.1} °C leaves no room for a load"
            ),
            Reason::MineProfitable {
                price_usd_per_mwh: p,
                break_even_usd_per_mwh: b,
            } => write!(f, "mining: price {p:.0} $/MWh < break-even {b:.0} $/MWh"),
            Reason::MineUnprofitable {
                price_usd_per_mwh: p,
                break_even_usd_per_mwh: b,
                stopped,
            } => write!(
                f,
                "mining {}: price {p:.0} $/MWh > break-even {b:.0} $/MWh",
                if *stopped { "stopped" } else { "off" }
            ),
            Reason::ServingAi {
                revenue_usd_per_h: r,
                energy_usd_per_h: c,
            } => write!(f, "serving paid AI: {r:.3} $/h revenue, {c:.3} $/h energy"),
            Reason::Heating {
                heat_usd_per_mwh: h,
                price_usd_per_mwh: p,
            } => write!(f, "heating: heat worth {h:.0} $/MWh > price {p:.0} $/MWh"),
            Reason::Dwell { remaining_s } => {
                write!(f, "kept: minimum dwell, {remaining_s:.0} s left")
            }
            Reason::Hysteresis {
                better,
                gain_usd_per_h,
                needed_usd_per_h,
            } => write!(
                f,
                "kept: {better} would gain {gain_usd_per_h:.3} $/h, switching needs {needed_usd_per_h:.3} $/h"
            ),
            Reason::PowerCap { cap_w, event } => match event {
                Some(e) => write!(f, "power cap {cap_w:.0} W (demand-response event {e})"),
                None => write!(f, "site power cap {cap_w:.0} W reached"),
            },
            Reason::NothingWorthRunning => write!(f, "idle: nothing worth running"),
        }
    }
}

/// The decision for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Index into `PolicyInput::devices`.
    pub device: usize,
    /// What the device does for the next interval.
    pub mode: Mode,
    /// Planned draw, watts (idle draw when idle).
    pub power_w: f64,
    /// Power limit to set (power-limitable devices running a load), watts.
    pub power_limit_w: Option<f64>,
    /// The load runs below its nominal power to stay within the thermal limit.
    pub derated: bool,
    /// The mode differs from the previous step's.
    pub changed: bool,
    /// Why it got this mode.
    pub reason: Reason,
}

/// Per-device memory the policy carries between steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The mode the device was last told to run.
    pub mode: Mode,
    /// When the device entered `mode`, seconds on the policy clock.
    pub since_s: f64,
    /// Mode changes so far.
    pub switches: u64,
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            mode: Mode::Idle,
            since_s: f64::NEG_INFINITY,
            switches: 0,
        }
    }
}

/// The policy's memory: `devices[i]` belongs to `PolicyInput::devices[i]` (keep the order stable;
/// a length change resets the state of the devices past the old length).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// One entry per device, in device order.
    pub devices: Vec<DeviceState>,
}

/// One step of the policy: returns the decisions (one per device, in device order) and the next
/// state.
pub fn decide(input: &PolicyInput<'_>, state: &PolicyState) -> (Vec<Decision>, PolicyState) {
    let mut next = state.clone();
    let mut out = Vec::with_capacity(input.devices.len());
    let mut scratch = Scratch::default();
    decide_into(input, &mut next, &mut out, &mut scratch);
    (out, next)
}

/// Reusable buffers for [`decide_into`] (so a loop over many steps allocates nothing).
#[derive(Default, Debug)]
pub struct Scratch {
    cands: Vec<Cand>,
    assigned: Vec<bool>,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    dev: u32,
    mode: Mode,
    tier: u8,
    rank: u8,
    /// Gain per extra watt of the device's best option in this tier (sort key).
    key: f64,
    power_w: f64,
    extra_w: f64,
    derated: bool,
    /// Gain after the hysteresis adjustment, $/h.
    adj_gain: f64,
}

/// In-place form of [`decide`]: updates `state`, fills `out` (cleared first).
pub fn decide_into(
    input: &PolicyInput<'_>,
    state: &mut PolicyState,
    out: &mut Vec<Decision>,
    scratch: &mut Scratch,
) {
    let cfg = input.config;
    let n = input.devices.len();
    state.devices.resize(n, DeviceState::default());
    out.clear();
    scratch.cands.clear();
    scratch.assigned.clear();
    scratch.assigned.resize(n, false);

    let now = input.now_s;
    let dwell = cfg.min_dwell_s.max(0.0);
    let price = effective_price(input);
    let heat = input.prices.heat_value_usd_per_mwh.max(0.0);
    let hashprice = input.prices.hashprice_usd_per_th_day;

    // Demand response: curtail wins; otherwise the tightest active limit lowers the cap.
    let mut curtail: Option<&str> = None;
    let mut cap_w = input.site_cap_w.unwrap_or(f64::INFINITY);
    let mut cap_event: Option<&str> = None;
    for ev in input.events.iter().filter(|e| e.active_at(now)) {
        match ev.target {
            DrTarget::Curtail => {
                if curtail.is_none() {
                    curtail = Some(&ev.id);
                }
            }
            DrTarget::LimitW(w) => {
                if w < cap_w {
                    cap_w = w.max(0.0);
                    cap_event = Some(&ev.id);
                }
            }
        }
    }
    if cap_w.is_nan() {
        cap_w = 0.0;
    }

    let mut idle_floor_w = 0.0;
    for (i, spec) in input.devices.iter().enumerate() {
        let idle_w = spec.idle_w.max(0.0);
        idle_floor_w += idle_w;
        let cur = state.devices[i];
        let forced = |reason| Decision {
            device: i,
            mode: Mode::Idle,
            power_w: idle_w,
            power_limit_w: None,
            derated: false,
            changed: cur.mode != Mode::Idle,
            reason,
        };
        // 1. Safety.
        let health = match input.readings.get(i) {
            Some(r) => validate(r, now, cfg.stale_after_s, spec.temp_limit_c.is_some()),
            None => Health::Unhealthy(HealthIssue::SourceFault {
                detail: "no reading".into(),
            }),
        };
        if let Health::Unhealthy(issue) = health {
            out.push(forced(Reason::Unsafe { issue }));
            continue;
        }
        if let Some(ev) = curtail {
            out.push(forced(Reason::Curtailed { event: ev.into() }));
            continue;
        }
        let temp = input.readings.get(i).and_then(|r| r.temp_c);
        let limit = spec.temp_limit_c.map(|l| l - cfg.temp_margin_c.max(0.0));
        if let (Some(t), Some(l), Some(raw)) = (temp, limit, spec.temp_limit_c) {
            if t >= l {
                out.push(forced(Reason::Thermal {
                    temp_c: t,
                    limit_c: raw,
                }));
                continue;
            }
        }
        // Placeholder: the allocation pass below overwrites it.
        out.push(forced(Reason::NothingWorthRunning));

        // 2.–4. Options with thermal look-ahead, hysteresis and dwell.
        let thermal_max_w = match (spec.thermal, temp, limit) {
            (Some(m), Some(t), Some(l)) => m.max_power_w(t, l, cfg.interval_s.max(0.0)),
            _ => f64::INFINITY,
        };
        let locked = now - cur.since_s < dwell;
        let first = scratch.cands.len();
        for mode in [Mode::ServeAi, Mode::Mine, Mode::Heat] {
            let Some(opt) = option(spec, mode, price, heat, hashprice, input.ai) else {
                continue;
            };
            let Some((power_w, gain, derated)) = fit_thermal(spec, opt, thermal_max_w) else {
                // Remember why, in case the device ends up idle.
                if let (Some(t), Some(raw), Some(d)) = (temp, spec.temp_limit_c, out.last_mut()) {
                    d.reason = Reason::Thermal {
                        temp_c: t,
                        limit_c: raw,
                    };
                }
                continue;
            };
            let incumbent = mode == cur.mode;
            if locked && !incumbent && !(mode == Mode::ServeAi && cur.mode != Mode::ServeAi) {
                continue;
            }
            let extra_w = (power_w - idle_w).max(0.0);
            let band = band(spec, cfg, dwell, price, extra_w);
            let adj_gain = if incumbent { gain + band } else { gain - band };
            // A dwell-locked incumbent keeps running even at a loss; everything else must pay.
            if !(adj_gain > 0.0 || (locked && incumbent)) {
                continue;
            }
            let tier = if mode == Mode::ServeAi {
                0
            } else if locked && incumbent {
                1
            } else {
                2
            };
            scratch.cands.push(Cand {
                dev: i as u32,
                mode,
                tier,
                rank: 0,
                key: 0.0,
                power_w,
                extra_w,
                derated,
                adj_gain,
            });
        }
        // Rank a device's options within a tier by adjusted gain; key = best gain per watt.
        let mine = &mut scratch.cands[first..];
        mine.sort_by(|a, b| a.tier.cmp(&b.tier).then(b.adj_gain.total_cmp(&a.adj_gain)));
        let mut k = 0;
        while k < mine.len() {
            let tier = mine[k].tier;
            let key = mine[k].adj_gain / mine[k].extra_w.max(1e-3);
            let mut rank = 0;
            while k < mine.len() && mine[k].tier == tier {
                mine[k].key = key;
                mine[k].rank = rank;
                rank += 1;
                k += 1;
            }
        }
    }

    // 5. Greedy allocation under the cap.
    scratch.cands.sort_by(|a, b| {
        a.tier
            .cmp(&b.tier)
            .then(b.key.total_cmp(&a.key))
            .then(a.dev.cmp(&b.dev))
            .then(a.rank.cmp(&b.rank))
    });
    let mut budget = cap_w - idle_floor_w;
    let mut jobs = input.ai.jobs_waiting;
    for c in &scratch.cands {
        let d = c.dev as usize;
        if scratch.assigned[d] {
            continue;
        }
        if c.mode == Mode::ServeAi && jobs == 0 {
            continue;
        }
        if c.extra_w > budget {
            out[d].reason = Reason::PowerCap {
                cap_w,
                event: cap_event.map(Into::into),
            };
            continue;
        }
        budget -= c.extra_w;
        if c.mode == Mode::ServeAi {
            jobs -= 1;
        }
        scratch.assigned[d] = true;
        let dec = &mut out[d];
        dec.mode = c.mode;
        dec.power_w = c.power_w;
        dec.derated = c.derated;
        dec.power_limit_w = input.devices[d]
            .power_limit_range_w
            .map(|(lo, hi)| c.power_w.clamp(lo.min(hi), hi));
    }

    // Reasons and state.
    for (i, dec) in out.iter_mut().enumerate() {
        let spec = &input.devices[i];
        let cur = state.devices[i];
        dec.changed = dec.mode != cur.mode;
        let forced = matches!(dec.reason, Reason::Unsafe { .. } | Reason::Curtailed { .. })
            || (dec.mode == Mode::Idle && matches!(dec.reason, Reason::Thermal { .. }));
        if !forced {
            dec.reason = explain(spec, dec, cur, input, price, heat, dwell, now);
        }
        if dec.changed {
            state.devices[i] = DeviceState {
                mode: dec.mode,
                since_s: now,
                switches: cur.switches + 1,
            };
        }
    }
}

/// Electricity price over the coming dwell horizon: the forecast's mean when it covers `now`.
fn effective_price(input: &PolicyInput<'_>) -> f64 {
    let now = input.now_s;
    let spot = input.prices.electricity_usd_per_mwh;
    let Some(f) = input.forecast else {
        return spot;
    };
    if f.step_s <= 0.0 || f.usd_per_mwh.is_empty() || now < f.start_s {
        return spot;
    }
    let horizon = input
        .config
        .min_dwell_s
        .max(input.config.interval_s)
        .max(f.step_s);
    let first = ((now - f.start_s) / f.step_s).floor();
    if !first.is_finite() || first >= f.usd_per_mwh.len() as f64 {
        return spot;
    }
    let first = first as usize;
    let count = ((horizon / f.step_s).ceil() as usize).max(1);
    let slice = &f.usd_per_mwh[first..(first + count).min(f.usd_per_mwh.len())];
    let finite: Vec<f64> = slice.iter().copied().filter(|p| p.is_finite()).collect();
    if finite.is_empty() {
        return spot;
    }
    finite.iter().sum::<f64>() / finite.len() as f64
}

/// (power, gain $/h) of a mode at nominal power, or `None` when the device cannot do it now.
fn option(
    spec: &DeviceSpec,
    mode: Mode,
    price: f64,
    heat: f64,
    hashprice: f64,
    ai: AiDemand,
) -> Option<(f64, f64)> {
    let idle_w = spec.idle_w.max(0.0);
    let (power_w, revenue) = match mode {
        Mode::Mine => {
            let m = spec.mine?;
            if hashprice <= 0.0 || !hashprice.is_finite() {
                return None;
            }
            (m.power_w, m.hashrate_th_s.max(0.0) * hashprice / 24.0)
        }
        Mode::ServeAi => {
            let a = spec.ai?;
            if ai.jobs_waiting == 0 || ai.usd_per_mtok.is_nan() || ai.usd_per_mtok <= 0.0 {
                return None;
            }
            (
                a.power_w,
                a.tokens_per_s.max(0.0) * 3600.0 / 1e6 * ai.usd_per_mtok,
            )
        }
        Mode::Heat => {
            let h = spec.heat?;
            if heat <= 0.0 {
                return None;
            }
            (h.power_w, 0.0)
        }
        Mode::Idle => return None,
    };
    if !(power_w.is_finite() && power_w >= 0.0 && revenue.is_finite()) {
        return None;
    }
    let extra_mw = (power_w - idle_w).max(0.0) / 1e6;
    let gain = revenue + (heat - price) * extra_mw;
    // No valid price, no load (a NaN price must not keep anything running).
    gain.is_finite().then_some((power_w, gain))
}

/// Applies the thermal ceiling: nominal power, a derated power (power-limitable devices), or
/// `None`. Returns (power, gain, derated).
fn fit_thermal(
    spec: &DeviceSpec,
    (power_w, gain): (f64, f64),
    thermal_max_w: f64,
) -> Option<(f64, f64, bool)> {
    if power_w <= thermal_max_w {
        return Some((power_w, gain, false));
    }
    let (lo, _) = spec.power_limit_range_w?;
    let idle_w = spec.idle_w.max(0.0);
    // Round down a little so float noise cannot put the prediction above the limit.
    let p = (thermal_max_w - 1e-6).min(power_w);
    if p < lo || p <= idle_w || !p.is_finite() {
        return None;
    }
    // Revenue and energy both scale with the power above idle (a linear, conservative guess).
    let scale = (p - idle_w) / (power_w - idle_w).max(1e-9);
    Some((p, gain * scale, true))
}

/// Hysteresis band for a device running `extra_w` above idle, $/h.
fn band(spec: &DeviceSpec, cfg: &PolicyConfig, dwell: f64, price: f64, extra_w: f64) -> f64 {
    let hours = (dwell.max(SWITCH_AMORTIZE_S).max(cfg.interval_s) / 3600.0).max(1e-9);
    spec.switch_cost_usd.max(0.0) / hours
        + cfg.hysteresis_frac.max(0.0) * price.abs() * extra_w / 1e6
}

#[allow(clippy::too_many_arguments)]
fn explain(
    spec: &DeviceSpec,
    dec: &Decision,
    cur: DeviceState,
    input: &PolicyInput<'_>,
    price: f64,
    heat: f64,
    dwell: f64,
    now: f64,
) -> Reason {
    let idle_w = spec.idle_w.max(0.0);
    let mine_break_even = || {
        let m = spec.mine?;
        let extra_mw = (m.power_w - idle_w).max(1e-9) / 1e6;
        let rev = m.hashrate_th_s.max(0.0) * input.prices.hashprice_usd_per_th_day / 24.0;
        Some(rev / extra_mw + heat)
    };
    let locked = now - cur.since_s < dwell;
    // The kept mode's own gain (None: the device cannot run it), used by both checks below.
    let own_gain = || {
        option(
            spec,
            dec.mode,
            price,
            heat,
            input.prices.hashprice_usd_per_th_day,
            input.ai,
        )
        .map(|(_, g)| g)
    };
    if !dec.changed && locked && dec.mode != Mode::Idle {
        // Kept by dwell only if something else would have been chosen; cheap check: the
        // mode's own gain is not positive.
        let gain = own_gain().unwrap_or(f64::NEG_INFINITY);
        if gain <= 0.0 {
            return Reason::Dwell {
                remaining_s: dwell - (now - cur.since_s),
            };
        }
    }
    if !dec.changed && dec.mode != Mode::Idle {
        // Hysteresis: another mode (or idle) has a higher raw gain but not by enough.
        let own = own_gain().unwrap_or(0.0);
        let mut better: Option<(Mode, f64)> = if own < 0.0 {
            Some((Mode::Idle, -own))
        } else {
            None
        };
        for m in [Mode::ServeAi, Mode::Mine, Mode::Heat] {
            if m == dec.mode {
                continue;
            }
            if let Some((_, g)) = option(
                spec,
                m,
                price,
                heat,
                input.prices.hashprice_usd_per_th_day,
                input.ai,
            ) {
                if g - own > better.map_or(0.0, |b| b.1) {
                    better = Some((m, g - own));
                }
            }
        }
        if let Some((m, diff)) = better {
            let extra_w = (dec.power_w - idle_w).max(0.0);
            return Reason::Hysteresis {
                better: m,
                gain_usd_per_h: diff,
                needed_usd_per_h: 2.0 * band(spec, input.config, dwell, price, extra_w),
            };
        }
    }
    match dec.mode {
        Mode::Mine => Reason::MineProfitable {
            price_usd_per_mwh: price,
            break_even_usd_per_mwh: mine_break_even().unwrap_or(f64::NAN),
        },
        Mode::ServeAi => {
            let tps = spec.ai.map_or(0.0, |a| a.tokens_per_s);
            Reason::ServingAi {
                revenue_usd_per_h: tps * 3600.0 / 1e6 * input.ai.usd_per_mtok,
                energy_usd_per_h: price * dec.power_w / 1e6,
            }
        }
        Mode::Heat => Reason::Heating {
            heat_usd_per_mwh: heat,
            price_usd_per_mwh: price,
        },
        Mode::Idle => {
            if let Reason::PowerCap { .. } = dec.reason {
                return dec.reason.clone();
            }
            // The best mode that would have paid, if any: idle because of dwell or the band.
            let hp = input.prices.hashprice_usd_per_th_day;
            let mut best: Option<(Mode, f64, f64)> = None;
            for m in [Mode::ServeAi, Mode::Mine, Mode::Heat] {
                if let Some((p, g)) = option(spec, m, price, heat, hp, input.ai) {
                    if g > 0.0 && best.is_none_or(|b| g > b.1) {
                        best = Some((m, g, p));
                    }
                }
            }
            if let Some((m, g, p)) = best {
                if locked && cur.mode == Mode::Idle {
                    return Reason::Dwell {
                        remaining_s: dwell - (now - cur.since_s),
                    };
                }
                return Reason::Hysteresis {
                    better: m,
                    gain_usd_per_h: g,
                    needed_usd_per_h: band(spec, input.config, dwell, price, (p - idle_w).max(0.0)),
                };
            }
            match mine_break_even() {
                Some(be) if hp > 0.0 => Reason::MineUnprofitable {
                    price_usd_per_mwh: price,
                    break_even_usd_per_mwh: be,
                    stopped: cur.mode == Mode::Mine,
                },
                _ => Reason::NothingWorthRunning,
            }
        }
    }
}
