//! The schema of the energy agent's `GET /api/state`: the agent (`hearth-energy`) builds and
//! serializes these types, and a node that follows the agent (`hearth node --agent-url`)
//! deserializes them. One definition for both sides, so renaming a field changes both and cannot
//! silently stop nodes from pausing.
//!
//! Invariant: whatever the agent serializes deserializes again and serializes back to the same
//! JSON: serde_json writes non-finite floats as `null`, and every `f64` here (and in the
//! [`Reason`], [`crate::reading::HealthIssue`] and [`Reading`] it carries) reads `null` as NaN.
//! Readers ignore fields they do not know, so an agent that adds a field keeps older nodes
//! working; the agent's tests check that the served JSON holds exactly these fields.

use crate::json_float::nan_if_null;
use crate::policy::{AiDemand, Decision, DeviceKind, DrEvent, Mode, Reason};
use crate::reading::{Health, Reading};
use serde::{Deserialize, Serialize};

/// What a device is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The mode to run.
    pub mode: Mode,
    /// The power limit to set, watts (power-limitable devices running a load).
    pub power_limit_w: Option<f64>,
}

impl From<&Decision> for Command {
    fn from(d: &Decision) -> Self {
        Command {
            mode: d.mode,
            power_limit_w: d.power_limit_w,
        }
    }
}

/// Where a device's actuation stands (shown in `/api/state` and `/metrics`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActuatorStatus {
    /// The last command applied successfully.
    pub applied: Option<Command>,
    /// The command being applied or retried.
    pub pending: Option<Command>,
    /// The last error, cleared on success.
    pub last_error: Option<String>,
    /// Failed attempts so far.
    pub failures: u64,
    /// Consecutive failed attempts of the current command.
    pub retrying: u32,
}

/// The signals as the last decision saw them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SignalsView {
    /// Electricity price, $/MWh.
    #[serde(deserialize_with = "nan_if_null")]
    pub electricity_usd_per_mwh: f64,
    /// Where the price came from: "endpoint", "csv" or "fixed".
    pub price_source: String,
    /// The price endpoint's last error, if its last poll failed.
    pub price_error: Option<String>,
    /// Hashprice, $/TH/day.
    #[serde(deserialize_with = "nan_if_null")]
    pub hashprice_usd_per_th_day: f64,
    /// Value of useful heat, $/MWh.
    #[serde(deserialize_with = "nan_if_null")]
    pub heat_value_usd_per_mwh: f64,
    /// Paid AI work waiting.
    pub ai: AiDemand,
    /// The AI demand endpoint's last error, if its last poll failed.
    pub ai_error: Option<String>,
}

/// One device in `/api/state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device's id in the agent's configuration.
    pub id: String,
    /// What kind of hardware it is.
    pub kind: DeviceKind,
    /// How the agent reaches it ("nvml:0", "cgminer 10.0.0.5:4028", "simulated").
    pub backend: String,
    /// The decided mode.
    pub mode: Mode,
    /// The reason as a sentence.
    pub reason: String,
    /// The reason as data.
    pub reason_detail: Reason,
    /// Planned draw, watts.
    #[serde(deserialize_with = "nan_if_null")]
    pub planned_w: f64,
    /// Power limit to set, watts.
    pub power_limit_w: Option<f64>,
    /// The load runs below its nominal power to stay within the thermal limit.
    pub derated: bool,
    /// A node on this device may take AI work.
    pub serve_ai: bool,
    /// The reading the decision used.
    pub reading: Reading,
    /// The verdict on that reading.
    pub health: Health,
    /// When the device entered its mode, seconds (NaN: it never switched).
    #[serde(deserialize_with = "nan_if_null")]
    pub mode_since_s: f64,
    /// Mode changes so far.
    pub switches: u64,
    /// Where the device's actuation stands.
    pub control: ActuatorStatus,
}

/// What `/api/state` shows: the last decision and what it saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the last decision ran, seconds since the Unix epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub now_s: f64,
    /// Decisions so far.
    pub decisions: u64,
    /// How long the last decision took, µs.
    #[serde(deserialize_with = "nan_if_null")]
    pub decide_us: f64,
    /// Seconds between decisions.
    #[serde(deserialize_with = "nan_if_null")]
    pub interval_s: f64,
    /// The configured site cap, watts.
    pub site_cap_w: Option<f64>,
    /// The site cap lowered by active demand-response limits, watts.
    pub effective_cap_w: Option<f64>,
    /// Planned draw of all devices, watts.
    #[serde(deserialize_with = "nan_if_null")]
    pub planned_w: f64,
    /// Measured draw of all devices that report power, watts.
    #[serde(deserialize_with = "nan_if_null")]
    pub measured_w: f64,
    /// Known demand-response events.
    pub dr_events: Vec<DrEvent>,
    /// Ids of the active ones.
    pub dr_active: Vec<String>,
    /// The signals the last decision saw.
    pub signals: SignalsView,
    /// One entry per device, in the agent's device order.
    pub devices: Vec<DeviceView>,
    /// What detection found missing, and why.
    pub notes: Vec<String>,
}

impl Snapshot {
    /// Whether the agent lets a node on `device_id` take AI work; `None` when the state has no
    /// such device.
    pub fn serves_ai(&self, device_id: &str) -> Option<bool> {
        self.devices
            .iter()
            .find(|d| d.id == device_id)
            .map(|d| d.serve_ai)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;
    use crate::reading::HealthIssue;

    fn device(id: &str, mode: Mode) -> DeviceView {
        DeviceView {
            id: id.into(),
            kind: DeviceKind::Gpu,
            backend: "simulated".into(),
            mode,
            reason: String::new(),
            reason_detail: Reason::NothingWorthRunning,
            planned_w: 20.0,
            power_limit_w: None,
            derated: false,
            serve_ai: mode == Mode::ServeAi,
            reading: Reading::default(),
            health: Health::Ok,
            mode_since_s: 0.0,
            switches: 0,
            control: ActuatorStatus::default(),
        }
    }

    #[test]
    fn serves_ai_answers_per_device() {
        let state = Snapshot {
            devices: vec![device("gpu0", Mode::ServeAi), device("gpu1", Mode::Mine)],
            ..Snapshot::default()
        };
        assert_eq!(state.serves_ai("gpu0"), Some(true));
        assert_eq!(state.serves_ai("gpu1"), Some(false));
        assert_eq!(state.serves_ai("gpu2"), None);
    }

    #[test]
    fn non_finite_floats_survive_the_round_trip_as_null() {
        let issue = HealthIssue::BadTemperature { temp_c: f64::NAN };
        let mut d = device("gpu0", Mode::Idle);
        d.mode_since_s = f64::NEG_INFINITY;
        d.reading.at_s = f64::INFINITY;
        d.health = Health::Unhealthy(issue.clone());
        d.reason_detail = Reason::Unsafe { issue };
        let state = Snapshot {
            measured_w: f64::NAN,
            devices: vec![d],
            ..Snapshot::default()
        };
        let json = serde_json::to_value(&state).unwrap();
        assert!(json["devices"][0]["mode_since_s"].is_null());
        let back: Snapshot = serde_json::from_value(json.clone()).unwrap();
        assert!(back.devices[0].mode_since_s.is_nan());
        assert!(back.devices[0].reading.at_s.is_nan());
        assert!(back.measured_w.is_nan());
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.serves_ai("gpu0"), Some(false));
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_are_errors() {
        let mut json = serde_json::to_value(Snapshot {
            devices: vec![device("gpu0", Mode::ServeAi)],
            ..Snapshot::default()
        })
        .unwrap();
        json["devices"][0]["added_later"] = serde_json::json!(1);
        let state: Snapshot = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(state.serves_ai("gpu0"), Some(true));
        let renamed = json["devices"][0]
            .as_object_mut()
            .and_then(|d| d.remove("serve_ai"));
        assert_eq!(renamed, Some(serde_json::Value::Bool(true)));
        let err = serde_json::from_value::<Snapshot>(json).unwrap_err();
        assert!(err.to_string().contains("serve_ai"), "{err}");
    }
}
