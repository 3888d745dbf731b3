//! Signals in: electricity price, hashprice, AI demand, demand-response events, heat demand.
//!
//! Every parser here takes bytes from outside (files, HTTP bodies) and returns a typed error
//! that says what was wrong; callers keep the last good value when an update is rejected
//! ([`Latest`]). Every body is bounded by the caller ([`http::MAX_BODY`]).

pub mod dr;
pub mod http;
pub mod price;
pub mod time;

use serde::{Deserialize, Serialize};

/// The bitcoin hashprice in $/TH/day from network figures:
/// `reward · coin_usd · 86400 · 1e12 / (difficulty · 2^32)` (expected BTC per TH/s per day).
pub fn hashprice_usd_per_th_day(difficulty: f64, block_reward_btc: f64, coin_usd: f64) -> f64 {
    if difficulty.is_nan() || difficulty <= 0.0 {
        return 0.0;
    }
    block_reward_btc * coin_usd * 86_400.0 * 1e12 / (difficulty * 4_294_967_296.0)
}

/// Where the hashprice comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashpriceSource {
    /// A given value, $/TH/day.
    Given {
        /// Hashprice, $/TH/day.
        usd_per_th_day: f64,
    },
    /// Computed from network difficulty, block reward (subsidy + average fees) and coin price.
    Network {
        /// Network difficulty (≤ 0 or NaN: hashprice 0).
        difficulty: f64,
        /// BTC per block: subsidy plus average fees.
        block_reward_btc: f64,
        /// Coin price, $ per BTC.
        coin_usd: f64,
    },
}

impl HashpriceSource {
    /// The hashprice now, $/TH/day.
    pub fn usd_per_th_day(&self) -> f64 {
        match *self {
            HashpriceSource::Given { usd_per_th_day } => usd_per_th_day,
            HashpriceSource::Network {
                difficulty,
                block_reward_btc,
                coin_usd,
            } => hashprice_usd_per_th_day(difficulty, block_reward_btc, coin_usd),
        }
    }
}

/// Heat demand: what a MWh of heat is worth now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeatDemand {
    /// No heat wanted.
    None,
    /// Heat is worth `value_usd_per_mwh` while the room is below `setpoint_c − deadband_c/2`;
    /// worthless once it is above `setpoint_c + deadband_c/2`; linear in between.
    Thermostat {
        /// Room temperature, °C.
        room_c: f64,
        /// Target room temperature, °C.
        setpoint_c: f64,
        /// Width of the band around the setpoint, °C (default 1).
        #[serde(default = "default_deadband")]
        deadband_c: f64,
        /// Heat value while the room is cold, $/MWh.
        value_usd_per_mwh: f64,
    },
    /// Heat is worth `value_usd_per_mwh` during the given UTC hours `[from_hour, to_hour)`
    /// (wrapping past midnight when `from_hour > to_hour`).
    Schedule {
        /// First UTC hour with heat wanted (0..=23).
        from_hour: u8,
        /// UTC hour at which heat stops being wanted (exclusive).
        to_hour: u8,
        /// Heat value during those hours, $/MWh.
        value_usd_per_mwh: f64,
    },
}

fn default_deadband() -> f64 {
    1.0
}

impl HeatDemand {
    /// Heat value at `now_s` (Unix seconds), $/MWh.
    pub fn value_usd_per_mwh(&self, now_s: f64) -> f64 {
        let v = match *self {
            HeatDemand::None => 0.0,
            HeatDemand::Thermostat {
                room_c,
                setpoint_c,
                deadband_c,
                value_usd_per_mwh,
            } => {
                let half = deadband_c.max(0.0) / 2.0;
                if room_c <= setpoint_c - half {
                    value_usd_per_mwh
                } else if room_c >= setpoint_c + half {
                    0.0
                } else {
                    value_usd_per_mwh * (setpoint_c + half - room_c) / (2.0 * half)
                }
            }
            HeatDemand::Schedule {
                from_hour,
                to_hour,
                value_usd_per_mwh,
            } => {
                let hour = ((now_s.rem_euclid(86_400.0)) / 3600.0).floor() as u8;
                let on = if from_hour <= to_hour {
                    (from_hour..to_hour).contains(&hour)
                } else {
                    hour >= from_hour || hour < to_hour
                };
                if on {
                    value_usd_per_mwh
                } else {
                    0.0
                }
            }
        };
        if v.is_finite() {
            v.max(0.0)
        } else {
            0.0
        }
    }
}

/// A value with its last good update: a rejected update leaves it unchanged and records why.
#[derive(Clone, Debug, Serialize)]
pub struct Latest<T> {
    /// The last good value; `None` until one arrives.
    pub value: Option<T>,
    /// When the value was last updated, seconds.
    pub updated_s: Option<f64>,
    /// The last rejected update's error, if the latest attempt failed.
    pub last_error: Option<String>,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            value: None,
            updated_s: None,
            last_error: None,
        }
    }
}

impl<T> Latest<T> {
    /// Takes `Ok` as the new value at `now_s` (clearing the error); keeps the value on `Err` and
    /// records the error.
    pub fn update<E: std::fmt::Display>(&mut self, r: Result<T, E>, now_s: f64) {
        match r {
            Ok(v) => {
                self.value = Some(v);
                self.updated_s = Some(now_s);
                self.last_error = None;
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashprice_from_network_figures() {
        // difficulty 1e14, 3.125 + 0.1 BTC, $100k: 3.225·1e5·86400·1e12/(1e14·2^32) ≈ 0.0649.
        let hp = hashprice_usd_per_th_day(1e14, 3.225, 100_000.0);
        assert!((hp - 0.064_877).abs() < 1e-5, "{hp}");
        assert_eq!(hashprice_usd_per_th_day(0.0, 3.125, 1.0), 0.0);
        assert_eq!(hashprice_usd_per_th_day(f64::NAN, 3.125, 1.0), 0.0);
    }

    #[test]
    fn heat_value_follows_thermostat_and_schedule() {
        let t = |room| HeatDemand::Thermostat {
            room_c: room,
            setpoint_c: 20.0,
            deadband_c: 1.0,
            value_usd_per_mwh: 80.0,
        };
        assert_eq!(t(18.0).value_usd_per_mwh(0.0), 80.0);
        assert_eq!(t(22.0).value_usd_per_mwh(0.0), 0.0);
        assert_eq!(t(20.0).value_usd_per_mwh(0.0), 40.0);
        let s = HeatDemand::Schedule {
            from_hour: 22,
            to_hour: 6,
            value_usd_per_mwh: 50.0,
        };
        assert_eq!(s.value_usd_per_mwh(23.0 * 3600.0), 50.0);
        assert_eq!(s.value_usd_per_mwh(86_400.0 + 3.0 * 3600.0), 50.0);
        assert_eq!(s.value_usd_per_mwh(12.0 * 3600.0), 0.0);
    }

    #[test]
    fn latest_keeps_the_last_good_value() {
        let mut l: Latest<f64> = Latest::default();
        l.update::<String>(Ok(42.0), 1.0);
        l.update::<String>(Err("garbage".into()), 2.0);
        assert_eq!(l.value, Some(42.0));
        assert_eq!(l.updated_s, Some(1.0));
        assert_eq!(l.last_error.as_deref(), Some("garbage"));
    }
}
