//! Prometheus metrics (OpenMetrics text via prometheus-client).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;
type G = Gauge<f64, AtomicU64>;

/// Every series the agent exports.
pub struct Metrics {
    registry: Registry,
    /// `hearth_device_power_watts{device}`: measured draw, watts (absent while not reported).
    pub device_power_w: Family<Labels, G>,
    /// `hearth_device_planned_watts{device}`: draw the policy planned, watts.
    pub device_planned_w: Family<Labels, G>,
    /// `hearth_device_temperature_celsius{device}`: measured temperature, °C.
    pub device_temp_c: Family<Labels, G>,
    /// `hearth_device_utilization_ratio{device}`: utilisation in [0, 1].
    pub device_utilization: Family<Labels, G>,
    /// `hearth_device_healthy{device}`: 1 when the reading is trusted, else 0.
    pub device_healthy: Family<Labels, G>,
    /// `hearth_device_mode{device,mode}`: 1 for the current mode, 0 for the others.
    pub device_mode: Family<Labels, G>,
    /// `hearth_device_mode_changes_total{device,mode}`: switches into `mode`.
    pub mode_changes: Family<Labels, Counter>,
    /// `hearth_device_control_failures{device}`: failed control attempts so far.
    pub control_failures: Family<Labels, G>,
    /// `hearth_decisions_total`: policy decisions run.
    pub decisions: Counter,
    /// `hearth_decide_seconds`: duration of the last decision, seconds.
    pub decide_seconds: G,
    /// `hearth_electricity_price_usd_per_mwh`: price the last decision used, $/MWh.
    pub price: G,
    /// `hearth_hashprice_usd_per_th_day`: hashprice the last decision used, $/TH/day.
    pub hashprice: G,
    /// `hearth_heat_value_usd_per_mwh`: heat value the last decision used, $/MWh.
    pub heat_value: G,
    /// `hearth_ai_price_usd_per_mtok`: offered AI price, $ per million tokens.
    pub ai_price: G,
    /// `hearth_ai_jobs_waiting`: paid AI jobs waiting.
    pub ai_jobs: G,
    /// `hearth_dr_active`: 1 while a demand-response event is active, else 0.
    pub dr_active: G,
    /// `hearth_site_cap_watts`: effective site cap (lowered by demand response), watts; -1: none.
    pub cap_w: G,
    /// `hearth_site_planned_watts`: total planned draw of the last decision, watts.
    pub planned_w: G,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered under the `hearth_` prefix, none set yet.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("hearth");
        let m = Metrics {
            device_power_w: Family::default(),
            device_planned_w: Family::default(),
            device_temp_c: Family::default(),
            device_utilization: Family::default(),
            device_healthy: Family::default(),
            device_mode: Family::default(),
            mode_changes: Family::default(),
            control_failures: Family::default(),
            decisions: Counter::default(),
            decide_seconds: G::default(),
            price: G::default(),
            hashprice: G::default(),
            heat_value: G::default(),
            ai_price: G::default(),
            ai_jobs: G::default(),
            dr_active: G::default(),
            cap_w: G::default(),
            planned_w: G::default(),
            registry: Registry::default(),
        };
        r.register(
            "device_power_watts",
            "Measured power draw per device",
            m.device_power_w.clone(),
        );
        r.register(
            "device_planned_watts",
            "Power the policy planned per device",
            m.device_planned_w.clone(),
        );
        r.register(
            "device_temperature_celsius",
            "Temperature per device",
            m.device_temp_c.clone(),
        );
        r.register(
            "device_utilization_ratio",
            "Utilisation per device (0..1)",
            m.device_utilization.clone(),
        );
        r.register(
            "device_healthy",
            "1 when the device's reading is trusted",
            m.device_healthy.clone(),
        );
        r.register(
            "device_mode",
            "1 for the device's current mode, 0 for the others",
            m.device_mode.clone(),
        );
        r.register(
            "device_mode_changes",
            "Mode changes per device and new mode",
            m.mode_changes.clone(),
        );
        r.register(
            "device_control_failures",
            "Failed control attempts per device",
            m.control_failures.clone(),
        );
        r.register("decisions", "Policy decisions run", m.decisions.clone());
        r.register(
            "decide_seconds",
            "Duration of the last policy decision",
            m.decide_seconds.clone(),
        );
        r.register(
            "electricity_price_usd_per_mwh",
            "Electricity price used by the last decision",
            m.price.clone(),
        );
        r.register(
            "hashprice_usd_per_th_day",
            "Hashprice used by the last decision",
            m.hashprice.clone(),
        );
        r.register(
            "heat_value_usd_per_mwh",
            "Value of useful heat used by the last decision",
            m.heat_value.clone(),
        );
        r.register(
            "ai_price_usd_per_mtok",
            "Offered AI price",
            m.ai_price.clone(),
        );
        r.register("ai_jobs_waiting", "Paid AI jobs waiting", m.ai_jobs.clone());
        r.register(
            "dr_active",
            "1 while a demand-response event is active",
            m.dr_active.clone(),
        );
        r.register(
            "site_cap_watts",
            "Effective site cap (site cap lowered by demand response); -1 when none",
            m.cap_w.clone(),
        );
        r.register(
            "site_planned_watts",
            "Total planned power of the last decision",
            m.planned_w.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Labels for one device.
pub fn dev(id: &str) -> Labels {
    vec![("device".into(), id.into())]
}

/// Labels for one device and mode.
pub fn dev_mode(id: &str, mode: &str) -> Labels {
    vec![("device".into(), id.into()), ("mode".into(), mode.into())]
}
