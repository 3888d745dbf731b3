//! One device's telemetry at one moment, and the check that decides whether it can be trusted.
//!
//! Every telemetry source (NVML, RAPL, hwmon, /proc, a miner's API, the simulated device) fills a
//! [`Reading`]; [`validate`] turns it into a [`Health`] verdict. The policy calls [`validate`]
//! itself, so a reading that is missing, stale or nonsensical can never steer a device into a
//! load: it puts the device in safe idle and says why.
//!
//! Invariant: `validate` is pure and total (NaN, infinities and absent fields are verdicts, not
//! panics).

use crate::json_float::nan_if_null;
use serde::{Deserialize, Serialize};

/// Below this a temperature is not physical for a running device (sensor fault).
pub const MIN_PLAUSIBLE_TEMP_C: f64 = -50.0;
/// Above this a temperature is a sensor fault (silicon is long dead by then).
pub const MAX_PLAUSIBLE_TEMP_C: f64 = 150.0;
/// Above this a single device's power draw is a sensor fault (the largest ASICs draw ~10 kW).
pub const MAX_PLAUSIBLE_POWER_W: f64 = 50_000.0;

/// What one source reported for one device. Absent fields are `None` (a source that has no such
/// sensor), never zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// When the values were read, seconds on the policy's clock (wall or simulated).
    #[serde(deserialize_with = "nan_if_null")]
    pub at_s: f64,
    /// Power draw, watts.
    pub power_w: Option<f64>,
    /// Cumulative energy counter, joules (monotone apart from wraps the source already handled).
    pub energy_j: Option<f64>,
    /// Hottest relevant temperature, °C.
    pub temp_c: Option<f64>,
    /// Utilisation in [0, 1].
    pub utilization: Option<f64>,
    /// The enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// The allowed power-limit range, watts (min, max).
    pub power_limit_range_w: Option<(f64, f64)>,
    /// A source-level fault (the sensor vanished, the miner did not answer). Wins over values.
    pub fault: Option<String>,
}

/// Why a reading cannot be trusted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "issue", rename_all = "snake_case")]
pub enum HealthIssue {
    /// The source reported a fault (vanished sensor, unreachable miner).
    SourceFault {
        /// The source's description of the fault.
        detail: String,
    },
    /// The reading is older than the staleness limit.
    Stale {
        /// Age of the reading, seconds (infinite when a timestamp is not finite).
        #[serde(deserialize_with = "nan_if_null")]
        age_s: f64,
    },
    /// A temperature is required (the device has a limit) but none was read.
    NoTemperature,
    /// Temperature not finite or outside [-50, 150] °C.
    BadTemperature {
        /// The reported temperature, °C.
        #[serde(deserialize_with = "nan_if_null")]
        temp_c: f64,
    },
    /// Power negative, not finite or absurdly large.
    BadPower {
        /// The reported power, watts.
        #[serde(deserialize_with = "nan_if_null")]
        power_w: f64,
    },
    /// Utilisation not finite or outside [0, 1].
    BadUtilization {
        /// The reported utilisation.
        #[serde(deserialize_with = "nan_if_null")]
        utilization: f64,
    },
}

impl std::fmt::Display for HealthIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthIssue::SourceFault { detail } => write!(f, "sensor fault: {detail}"),
            HealthIssue::Stale { age_s } => write!(f, "reading stale ({age_s:.0} s old)"),
            HealthIssue::NoTemperature => write!(f, "no temperature reading"),
            HealthIssue::BadTemperature { temp_c } => {
                write!(f, "temperature {temp_c} °C is not plausible")
            }
            HealthIssue::BadPower { power_w } => write!(f, "power {power_w} W is not plausible"),
            HealthIssue::BadUtilization { utilization } => {
                write!(f, "utilisation {utilization} is not plausible")
            }
        }
    }
}

/// The verdict on a reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// The reading can be trusted.
    Ok,
    /// The reading cannot be trusted; the device must idle.
    Unhealthy(HealthIssue),
}

/// Judges a reading taken at `reading.at_s` as seen at `now_s`.
///
/// `stale_after_s`: a reading older than this is stale. `needs_temp`: the device has a temperature
/// limit, so it must report a temperature to be allowed to run.
pub fn validate(reading: &Reading, now_s: f64, stale_after_s: f64, needs_temp: bool) -> Health {
    use HealthIssue::*;
    if let Some(detail) = &reading.fault {
        return Health::Unhealthy(SourceFault {
            detail: detail.clone(),
        });
    }
    let age = now_s - reading.at_s;
    // A non-finite timestamp is as untrustworthy as an old one.
    if !age.is_finite() || age > stale_after_s {
        return Health::Unhealthy(Stale {
            age_s: if age.is_finite() { age } else { f64::INFINITY },
        });
    }
    match reading.temp_c {
        Some(t) if !(MIN_PLAUSIBLE_TEMP_C..=MAX_PLAUSIBLE_TEMP_C).contains(&t) => {
            return Health::Unhealthy(BadTemperature { temp_c: t });
        }
        None if needs_temp => return Health::Unhealthy(NoTemperature),
        _ => {}
    }
    if let Some(p) = reading.power_w {
        if !(0.0..=MAX_PLAUSIBLE_POWER_W).contains(&p) {
            return Health::Unhealthy(BadPower { power_w: p });
        }
    }
    if let Some(u) = reading.utilization {
        if !(0.0..=1.0).contains(&u) {
            return Health::Unhealthy(BadUtilization { utilization: u });
        }
    }
    Health::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Reading {
        Reading {
            at_s: 100.0,
            power_w: Some(200.0),
            temp_c: Some(60.0),
            utilization: Some(0.5),
            ..Reading::default()
        }
    }

    #[test]
    fn good_reading_is_ok() {
        assert_eq!(validate(&good(), 110.0, 180.0, true), Health::Ok);
    }

    #[test]
    fn nonsense_values_are_unhealthy() {
        let mut r = good();
        r.power_w = Some(-5.0);
        assert!(matches!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::BadPower { .. })
        ));
        let mut r = good();
        r.temp_c = Some(500.0);
        assert!(matches!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::BadTemperature { .. })
        ));
        let mut r = good();
        r.temp_c = Some(f64::NAN);
        assert!(matches!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::BadTemperature { .. })
        ));
        let mut r = good();
        r.utilization = Some(1.5);
        assert!(matches!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::BadUtilization { .. })
        ));
    }

    #[test]
    fn stale_missing_and_faulted_readings_are_unhealthy() {
        assert!(matches!(
            validate(&good(), 1000.0, 180.0, true),
            Health::Unhealthy(HealthIssue::Stale { .. })
        ));
        let mut r = good();
        r.temp_c = None;
        assert_eq!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::NoTemperature)
        );
        assert_eq!(validate(&r, 100.0, 180.0, false), Health::Ok);
        let mut r = good();
        r.fault = Some("gone".into());
        assert!(matches!(
            validate(&r, 100.0, 180.0, true),
            Health::Unhealthy(HealthIssue::SourceFault { .. })
        ));
    }
}
