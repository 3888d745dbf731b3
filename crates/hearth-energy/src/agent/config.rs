//! The agent's configuration (a JSON file; see docs/agent.md for a full example).

use crate::policy::{AiDemand, AiSpec, DeviceKind, DeviceSpec, HeatSpec, MineSpec, PolicyConfig};
use crate::signals::{HashpriceSource, HeatDemand};
use crate::thermal::ThermalModel;
use serde::{Deserialize, Serialize};

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Most devices one agent drives.
pub const MAX_DEVICES: usize = 100_000;

/// The whole agent configuration; every field has a default, unknown fields are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTP listen address for /metrics and /api.
    pub listen: String,
    /// Bearer tokens accepted on the API's write endpoints (events, prices, demand). Empty: no
    /// auth, and the binary then refuses a non-loopback `listen` (`hearth agent` generates a
    /// local token unless told `--insecure-no-auth`).
    pub api_keys: Vec<String>,
    /// Host names (besides IP addresses and `localhost`) the API answers to; anything else is
    /// refused, which defeats DNS rebinding (`hearth_core::RequestGuard`).
    pub allowed_hosts: Vec<String>,
    /// Web origins allowed to call the API from a browser (besides the API's own).
    pub allowed_origins: Vec<String>,
    /// Seconds between decisions.
    pub interval_s: f64,
    /// Site power cap, kW (`null`: none).
    pub site_cap_kw: Option<f64>,
    /// The policy's tunables (`interval_s` is overridden by the agent's own).
    pub policy: PolicyConfig,
    /// Where the electricity price comes from.
    pub price: PriceConfig,
    /// Where the hashprice comes from.
    pub hashprice: HashpriceSource,
    /// Paid AI demand: initial values and an optional endpoint.
    pub ai: AiConfig,
    /// What useful heat is worth.
    pub heat: HeatDemand,
    /// Add every NVIDIA GPU (NVML) and the host CPU found at start.
    pub auto_detect: bool,
    /// Devices configured explicitly (ids unique, at most [`MAX_DEVICES`]).
    pub devices: Vec<DeviceConfig>,
    /// Root of sysfs, normally `/sys` (tests point it at a fixture tree).
    pub sys_root: String,
    /// Root of procfs, normally `/proc` (tests point it at a fixture tree).
    pub proc_root: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: "127.0.0.1:9100".into(),
            api_keys: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            interval_s: 60.0,
            site_cap_kw: None,
            policy: PolicyConfig::default(),
            price: PriceConfig::default(),
            hashprice: HashpriceSource::Given {
                usd_per_th_day: 0.05,
            },
            ai: AiConfig::default(),
            heat: HeatDemand::None,
            auto_detect: false,
            devices: Vec::new(),
            sys_root: "/sys".into(),
            proc_root: "/proc".into(),
        }
    }
}

/// Electricity price sources; a pushed or polled price wins over the CSV, the CSV over the fixed
/// price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceConfig {
    /// Price when no other source has a value, $/MWh.
    pub fixed_usd_per_mwh: f64,
    /// A price CSV (hour or timestamp rows).
    pub csv: Option<String>,
    /// An HTTP JSON endpoint polled every interval.
    pub url: Option<String>,
    /// Give the policy the CSV's prices ahead of now as a forecast.
    pub use_forecast: bool,
}

impl Default for PriceConfig {
    fn default() -> Self {
        PriceConfig {
            fixed_usd_per_mwh: 50.0,
            csv: None,
            url: None,
            use_forecast: false,
        }
    }
}

/// Paid AI demand for this site.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    /// Paid AI jobs waiting (until an update arrives).
    pub jobs_waiting: u32,
    /// Offered price, $ per million tokens (until an update arrives).
    pub usd_per_mtok: f64,
    /// An HTTP JSON endpoint (`{"jobs_waiting": n, "usd_per_mtok": x}`) polled every interval.
    pub url: Option<String>,
}

impl AiConfig {
    /// The configured demand as the policy takes it.
    pub fn demand(&self) -> AiDemand {
        AiDemand {
            jobs_waiting: self.jobs_waiting,
            usd_per_mtok: self.usd_per_mtok,
        }
    }
}

/// How the agent reads and controls one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// A simulated device (thermal RC model) that follows commands.
    Simulated,
    /// NVIDIA GPU `index` through NVML: telemetry and power limits.
    Nvml {
        /// NVML device index.
        index: u32,
    },
    /// The host CPU: RAPL, hwmon, /proc/stat; optionally running the built-in Stratum miner.
    HostCpu {
        /// Run the built-in Stratum miner on the CPU; `None`: telemetry only.
        #[serde(default)]
        builtin_miner: Option<BuiltinMinerConfig>,
    },
    /// An external miner with the cgminer/bmminer API (`host:4028`).
    Cgminer {
        /// API address, `host:port`.
        addr: String,
    },
    /// An external LuxOS miner (`host:4028`).
    Luxos {
        /// API address, `host:port`.
        addr: String,
    },
}

/// The pool the built-in CPU miner connects to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinMinerConfig {
    /// Pool URL, `stratum+tcp://host:port`.
    pub url: String,
    /// Stratum worker name (usually `account.worker`).
    pub user: String,
    /// Stratum worker password; `None`: the miner's default.
    #[serde(default)]
    pub password: Option<String>,
}

/// One configured device: what it can do and how the agent reaches it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device as the policy sees it.
    pub spec: DeviceSpec,
    /// How it is read and controlled.
    pub backend: Backend,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is too large, not valid JSON or out of range.
    #[error("config {path}: {msg}")]
    Invalid {
        /// The config file (or `(agent)` for one built in code).
        path: String,
        /// What is wrong.
        msg: String,
    },
}

impl AgentConfig {
    /// Parses and validates a JSON config.
    pub fn from_json(bytes: &[u8], path: &str) -> Result<AgentConfig, ConfigError> {
        let bad = |msg: String| ConfigError::Invalid {
            path: path.into(),
            msg,
        };
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let c: AgentConfig = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        c.validate().map_err(bad)?;
        Ok(c)
    }

    /// Checks ranges and uniqueness.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.interval_s.is_finite() && self.interval_s > 0.0 && self.interval_s <= 86_400.0) {
            return Err(format!("interval_s {} outside (0, 86400]", self.interval_s));
        }
        if let Some(kw) = self.site_cap_kw {
            if !(kw.is_finite() && kw >= 0.0) {
                return Err(format!("site_cap_kw {kw} is not a power"));
            }
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(format!("more than {MAX_DEVICES} devices"));
        }
        let mut ids = std::collections::HashSet::new();
        for d in &self.devices {
            let s = &d.spec;
            if s.id.is_empty() || s.id.len() > 128 || !ids.insert(s.id.as_str()) {
                return Err(format!("device id {:?} empty, too long or repeated", s.id));
            }
            let powers = [
                Some(s.idle_w),
                s.mine.map(|m| m.power_w),
                s.ai.map(|a| a.power_w),
                s.heat.map(|h| h.power_w),
            ];
            if powers
                .iter()
                .flatten()
                .any(|p| !(p.is_finite() && *p >= 0.0 && *p <= 100_000.0))
            {
                return Err(format!("device {}: a power is not in 0..=100000 W", s.id));
            }
            if let Some(t) = s.temp_limit_c {
                if !(t.is_finite() && (0.0..=150.0).contains(&t)) {
                    return Err(format!("device {}: temp_limit_c {t} not in 0..=150", s.id));
                }
            }
        }
        Ok(())
    }

    /// The demo fleet of `hearth agent --simulated`: three GPUs (mine, serve AI, heat) and an
    /// ASIC, all simulated.
    pub fn simulated_demo() -> AgentConfig {
        let gpu = |i: usize, p: f64| DeviceConfig {
            spec: DeviceSpec {
                id: format!("sim-gpu{i}"),
                kind: DeviceKind::Gpu,
                idle_w: 20.0,
                // A GPU hashes SHA-256d too slowly to matter: it serves AI or heats.
                mine: None,
                ai: Some(AiSpec {
                    power_w: p * 0.9,
                    tokens_per_s: 60.0,
                }),
                heat: Some(HeatSpec { power_w: p * 0.5 }),
                temp_limit_c: Some(83.0),
                thermal: Some(ThermalModel {
                    ambient_c: 25.0,
                    r_c_per_w: 0.16,
                    tau_s: 90.0,
                }),
                power_limit_range_w: Some((100.0, p)),
                switch_cost_usd: 0.002,
            },
            backend: Backend::Simulated,
        };
        AgentConfig {
            interval_s: 10.0,
            site_cap_kw: Some(4.0),
            policy: PolicyConfig {
                interval_s: 10.0,
                min_dwell_s: 60.0,
                stale_after_s: 30.0,
                ..PolicyConfig::default()
            },
            ai: AiConfig {
                jobs_waiting: 1,
                usd_per_mtok: 2.0,
                url: None,
            },
            heat: HeatDemand::Thermostat {
                room_c: 19.0,
                setpoint_c: 21.0,
                deadband_c: 1.0,
                value_usd_per_mwh: 90.0,
            },
            devices: vec![
                gpu(0, 350.0),
                gpu(1, 300.0),
                gpu(2, 250.0),
                DeviceConfig {
                    spec: DeviceSpec {
                        id: "sim-asic0".into(),
                        kind: DeviceKind::Asic,
                        idle_w: 40.0,
                        mine: Some(MineSpec {
                            power_w: 3250.0,
                            hashrate_th_s: 200.0,
                        }),
                        ai: None,
                        heat: None,
                        temp_limit_c: Some(85.0),
                        thermal: Some(ThermalModel {
                            ambient_c: 25.0,
                            r_c_per_w: 0.015,
                            tau_s: 300.0,
                        }),
                        power_limit_range_w: None,
                        switch_cost_usd: 0.02,
                    },
                    backend: Backend::Simulated,
                },
            ],
            ..AgentConfig::default()
        }
    }
}
