//! Fleet description: sites, device groups, economics. Read from JSON or built in.
//!
//! A device group is `count` identical devices described once; the simulator expands it into
//! [`hearth_policy::DeviceSpec`]s (the same type `hearth agent` uses), so the policy sees exactly
//! what it would see on real hardware.
//!
//! Mining revenue is expressed in SHA-256d TH/s because that is what the policy prices
//! (`hashrate × hashprice`); a GPU's mining is given as its revenue-equivalent TH/s.
//!
//! **Invariants after [`Fleet::validate`]:** at least one site and one device; every count ≥ 1
//! and the total ≤ [`MAX_DEVICES`]; powers, speeds and prices finite and non-negative; caps
//! positive; AI-dedicated groups can serve AI.

use hearth_policy::{AiSpec, DeviceKind, DeviceSpec, HeatSpec, MineSpec, ThermalModel};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most devices in one fleet.
pub const MAX_DEVICES: usize = 200_000;
/// Largest fleet JSON accepted, bytes.
pub const MAX_FLEET_BYTES: usize = 1 << 20;

/// A fleet file that does not make sense.
#[derive(Debug, Error)]
pub enum FleetError {
    /// The text is not valid fleet JSON (syntax, unknown or missing fields).
    #[error("fleet JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The text is longer than [`MAX_FLEET_BYTES`].
    #[error("fleet JSON larger than {MAX_FLEET_BYTES} bytes")]
    TooLarge,
    /// The fleet parses but breaks an invariant; the message says which.
    #[error("fleet: {0}")]
    Invalid(String),
}

/// Prices and costs shared by the whole fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Economics {
    /// $/TH/day (SHA-256d), held constant over the run.
    pub hashprice_usd_per_th_day: f64,
    /// Price paid for AI work, $ per million tokens.
    pub ai_usd_per_mtok: f64,
    /// Tokens/s of a reference GPU: a job's `work_s` is measured on such a GPU.
    pub reference_tokens_per_s: f64,
    /// Saving a job's state when it is preempted, seconds of its GPUs' time.
    pub checkpoint_s: f64,
    /// Reloading a job's state when it resumes, seconds of its GPUs' time.
    pub job_restart_s: f64,
}

/// Outdoor climate of a site: a yearly and a daily sinusoid (coldest on Jan 15 and at 05:00).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Climate {
    /// Yearly mean outdoor temperature, °C.
    pub mean_c: f64,
    /// Amplitude of the yearly sinusoid (half the summer–winter swing), °C.
    pub seasonal_amp_c: f64,
    /// Amplitude of the daily sinusoid (half the day–night swing), °C.
    pub daily_amp_c: f64,
    /// Device intake air is this much warmer than outdoors.
    #[serde(default)]
    pub intake_offset_c: f64,
}

/// Space heating wanted at a site.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeatDemand {
    /// Heat is wanted while outdoors is below this.
    pub setpoint_c: f64,
    /// Heat loss of the building, kW per °C below the setpoint (caps the useful heat).
    pub ua_kw_per_c: f64,
    /// What a MWh of useful heat is worth (the fuel or electricity it displaces), $.
    pub value_usd_per_mwh: f64,
}

/// Demand-response programme of a site: `events` per year (pro rata for shorter traces) on the
/// highest-priced days of the trace, `hours` long, starting at that day's most expensive hour.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrProgram {
    /// Events per year.
    pub events: u32,
    /// Length of each event, hours.
    pub hours: u32,
    /// Site limit during an event, kW (0 = curtail everything).
    pub limit_kw: f64,
}

/// `count` identical devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceGroup {
    /// Name of the group, shown in reports.
    pub name: String,
    /// What kind of device this is (ASIC miner, GPU, ...).
    pub kind: DeviceKind,
    /// Number of identical devices (≥ 1).
    pub count: u32,
    /// Power drawn while idle, watts.
    pub idle_w: f64,
    /// Mining capability; `None` if the device cannot mine.
    #[serde(default)]
    pub mine: Option<MineSpec>,
    /// AI-serving capability; `None` if the device cannot serve AI.
    #[serde(default)]
    pub ai: Option<AiSpec>,
    /// Heat-delivery capability; `None` if its heat is not useful.
    #[serde(default)]
    pub heat: Option<HeatSpec>,
    /// Highest allowed device temperature, °C.
    pub temp_limit_c: f64,
    /// Thermal resistance, °C per watt.
    pub r_c_per_w: f64,
    /// Thermal time constant, seconds.
    pub tau_s: f64,
    /// Wear and fixed cost of one mode change, $.
    pub wear_usd: f64,
    /// Seconds of lost work after starting to mine (boot, pool connection, warm-up).
    pub restart_s: f64,
    /// Reserved for AI jobs (a fixed AI partition); otherwise the device belongs to the policy.
    #[serde(default)]
    pub ai_dedicated: bool,
}

/// One site: a grid connection with a cap, a climate and devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name of the site, shown in errors and reports.
    pub name: String,
    /// Grid connection cap: most power the site may draw, kW (> 0).
    pub power_cap_kw: f64,
    /// Outdoor climate (sets device intake temperature and heat demand).
    pub climate: Climate,
    /// Space heating wanted; `None`: heat is worth nothing here.
    #[serde(default)]
    pub heat: Option<HeatDemand>,
    /// Demand-response programme; `None`: no events.
    #[serde(default)]
    pub dr: Option<DrProgram>,
    /// The devices at the site.
    pub groups: Vec<DeviceGroup>,
}

/// The whole fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Prices and costs shared by all sites.
    pub economics: Economics,
    /// The sites (at least one).
    pub sites: Vec<Site>,
}

impl DeviceGroup {
    /// Mining revenue, $/h, at a hashprice.
    pub fn mine_usd_per_h(&self, hashprice: f64) -> f64 {
        self.mine
            .map_or(0.0, |m| m.hashrate_th_s * hashprice / 24.0)
    }

    /// Cost of starting to mine (wear plus revenue lost while restarting), $.
    pub fn start_mining_cost_usd(&self, hashprice: f64) -> f64 {
        self.wear_usd + self.restart_s / 3600.0 * self.mine_usd_per_h(hashprice)
    }

    /// The spec the policy sees for one device of this group.
    pub fn spec(&self, id: String, ambient_c: f64, hashprice: f64) -> DeviceSpec {
        DeviceSpec {
            id,
            kind: self.kind,
            idle_w: self.idle_w,
            mine: self.mine,
            ai: self.ai,
            heat: self.heat,
            temp_limit_c: Some(self.temp_limit_c),
            thermal: Some(ThermalModel {
                ambient_c,
                r_c_per_w: self.r_c_per_w,
                tau_s: self.tau_s,
            }),
            power_limit_range_w: None,
            // Mean cost per switch over a stop/start pair (the policy's band is symmetric).
            switch_cost_usd: self.wear_usd
                + 0.5 * self.restart_s / 3600.0 * self.mine_usd_per_h(hashprice),
        }
    }

    /// AI speed relative to the reference GPU (0 when the device cannot serve AI).
    pub fn ai_speed(&self, reference_tokens_per_s: f64) -> f64 {
        self.ai
            .map_or(0.0, |a| a.tokens_per_s / reference_tokens_per_s)
    }
}

impl Climate {
    /// Outdoor temperature at `t_unix`.
    pub fn outdoor_c(&self, t_unix: i64) -> f64 {
        use std::f64::consts::TAU;
        let day = t_unix.rem_euclid(365 * 86_400) as f64 / 86_400.0;
        let hour = t_unix.rem_euclid(86_400) as f64 / 3600.0;
        self.mean_c
            - self.seasonal_amp_c * (TAU * (day - 15.0) / 365.0).cos()
            - self.daily_amp_c * (TAU * (hour - 5.0) / 24.0).cos()
    }
}

impl Fleet {
    /// Parses and validates fleet JSON.
    pub fn from_json(text: &str) -> Result<Fleet, FleetError> {
        if text.len() > MAX_FLEET_BYTES {
            return Err(FleetError::TooLarge);
        }
        let f: Fleet = serde_json::from_str(text)?;
        f.validate()?;
        Ok(f)
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.sites
            .iter()
            .flat_map(|s| &s.groups)
            .map(|g| g.count as usize)
            .sum()
    }

    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), FleetError> {
        let bad = |m: String| Err(FleetError::Invalid(m));
        let e = &self.economics;
        for (name, v) in [
            ("hashprice_usd_per_th_day", e.hashprice_usd_per_th_day),
            ("ai_usd_per_mtok", e.ai_usd_per_mtok),
            ("checkpoint_s", e.checkpoint_s),
            ("job_restart_s", e.job_restart_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be finite and ≥ 0"));
            }
        }
        if !(e.reference_tokens_per_s.is_finite() && e.reference_tokens_per_s > 0.0) {
            return bad("reference_tokens_per_s must be positive".into());
        }
        if self.sites.is_empty() {
            return bad("no sites".into());
        }
        let mut total = 0usize;
        for s in &self.sites {
            if !(s.power_cap_kw.is_finite() && s.power_cap_kw > 0.0) {
                return bad(format!("site {}: power_cap_kw must be positive", s.name));
            }
            let c = &s.climate;
            if ![c.mean_c, c.seasonal_amp_c, c.daily_amp_c, c.intake_offset_c]
                .iter()
                .all(|v| v.is_finite() && v.abs() < 100.0)
            {
                return bad(format!("site {}: climate out of range", s.name));
            }
            if let Some(h) = &s.heat {
                if ![h.setpoint_c, h.ua_kw_per_c, h.value_usd_per_mwh]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0)
                {
                    return bad(format!(
                        "site {}: heat values must be finite and ≥ 0",
                        s.name
                    ));
                }
            }
            if let Some(d) = &s.dr {
                if d.hours == 0
                    || d.hours > 24
                    || d.events > 366
                    || d.limit_kw.is_nan()
                    || d.limit_kw < 0.0
                {
                    return bad(format!(
                        "site {}: dr needs 1..=24 hours, ≤ 366 events, limit ≥ 0",
                        s.name
                    ));
                }
            }
            for g in &s.groups {
                if g.count == 0 {
                    return bad(format!("group {}: count must be ≥ 1", g.name));
                }
                total += g.count as usize;
                let mut vals = vec![g.idle_w, g.r_c_per_w, g.tau_s, g.wear_usd, g.restart_s];
                vals.extend(g.mine.iter().flat_map(|m| [m.power_w, m.hashrate_th_s]));
                vals.extend(g.ai.iter().flat_map(|a| [a.power_w, a.tokens_per_s]));
                vals.extend(g.heat.iter().map(|h| h.power_w));
                if !vals.iter().all(|v| v.is_finite() && *v >= 0.0) {
                    return bad(format!("group {}: values must be finite and ≥ 0", g.name));
                }
                if !(g.temp_limit_c.is_finite() && g.temp_limit_c > c.mean_c) {
                    return bad(format!(
                        "group {}: temp_limit_c must exceed the site's mean temperature",
                        g.name
                    ));
                }
                if g.ai_dedicated && g.ai.is_none_or(|a| a.tokens_per_s <= 0.0) {
                    return bad(format!("group {}: ai_dedicated needs an ai spec", g.name));
                }
            }
        }
        if total == 0 {
            return bad("no devices".into());
        }
        if total > MAX_DEVICES {
            return bad(format!("more than {MAX_DEVICES} devices"));
        }
        Ok(())
    }

    /// The built-in fleet: a home with two GPUs that heat it, and a mining site with ASICs, a
    /// 16-GPU AI partition and 16 mining GPUs that can be lent to AI.
    pub fn default_fleet() -> Fleet {
        Fleet {
            economics: default_economics(),
            sites: vec![home_site(2), farm_site(100, 16, 16)],
        }
    }

    /// A fleet of about `n` devices for scale runs: one farm site, 90 % ASICs, 10 % GPUs (half
    /// of them an AI partition).
    pub fn scaled_fleet(n: usize) -> Fleet {
        let n = n.clamp(2, MAX_DEVICES);
        let gpus = (n / 10).max(2);
        let ai = gpus / 2;
        let asics = n - gpus;
        let mut site = farm_site(asics as u32, ai as u32, (gpus - ai) as u32);
        site.groups.retain(|g| g.count > 0);
        Fleet {
            economics: default_economics(),
            sites: vec![site],
        }
    }
}

fn default_economics() -> Economics {
    Economics {
        hashprice_usd_per_th_day: 0.055,
        ai_usd_per_mtok: 0.05,
        reference_tokens_per_s: 2000.0,
        checkpoint_s: 60.0,
        job_restart_s: 120.0,
    }
}

fn gpu_group(name: &str, count: u32, dedicated: bool, heat: bool) -> DeviceGroup {
    DeviceGroup {
        name: name.into(),
        kind: DeviceKind::Gpu,
        count,
        idle_w: 30.0,
        // RTX 4090-class: ~$0.04/h of mining revenue at 350 W, as SHA-256d-equivalent TH/s.
        mine: Some(MineSpec {
            power_w: 350.0,
            hashrate_th_s: 17.5,
        }),
        ai: Some(AiSpec {
            power_w: 400.0,
            tokens_per_s: 2000.0,
        }),
        heat: heat.then_some(HeatSpec { power_w: 350.0 }),
        temp_limit_c: 83.0,
        r_c_per_w: 0.1,
        tau_s: 120.0,
        wear_usd: 0.005,
        restart_s: 60.0,
        ai_dedicated: dedicated,
    }
}

fn home_site(gpus: u32) -> Site {
    Site {
        name: "home".into(),
        power_cap_kw: 1.5,
        climate: Climate {
            mean_c: 10.0,
            seasonal_amp_c: 10.0,
            daily_amp_c: 4.0,
            intake_offset_c: 10.0,
        },
        heat: Some(HeatDemand {
            setpoint_c: 16.0,
            ua_kw_per_c: 0.25,
            value_usd_per_mwh: 60.0,
        }),
        dr: None,
        groups: vec![gpu_group("home-rtx4090", gpus, false, true)],
    }
}

fn farm_site(asics: u32, ai_gpus: u32, mining_gpus: u32) -> Site {
    let asic_kw = asics as f64 * 3.01;
    let gpu_kw = (ai_gpus + mining_gpus) as f64 * 0.4;
    let mut groups = vec![DeviceGroup {
        name: "s19xp".into(),
        kind: DeviceKind::Asic,
        count: asics,
        idle_w: 15.0,
        // Antminer S19 XP: 140 TH/s at 3,010 W.
        mine: Some(MineSpec {
            power_w: 3010.0,
            hashrate_th_s: 140.0,
        }),
        ai: None,
        heat: None,
        temp_limit_c: 85.0,
        r_c_per_w: 0.012,
        tau_s: 300.0,
        wear_usd: 0.05,
        restart_s: 600.0,
        ai_dedicated: false,
    }];
    groups.push(gpu_group("ai-rtx4090", ai_gpus, true, false));
    groups.push(gpu_group("mine-rtx4090", mining_gpus, false, false));
    Site {
        name: "farm".into(),
        power_cap_kw: (asic_kw + gpu_kw) * 1.05,
        climate: Climate {
            mean_c: 15.0,
            seasonal_amp_c: 10.0,
            daily_amp_c: 6.0,
            intake_offset_c: 5.0,
        },
        heat: None,
        dr: Some(DrProgram {
            events: 12,
            hours: 3,
            limit_kw: (asic_kw + gpu_kw) * 0.3,
        }),
        groups,
    }
}
