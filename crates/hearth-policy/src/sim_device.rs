//! A simulated device: draws the power of its commanded mode and heats up by the thermal RC model.
//!
//! Stands in for hardware in tests, in `hearth agent --simulated` and in the fleet simulator. It
//! is deterministic and steps in simulated time: `apply` a decision, `step` some seconds, read a
//! [`Reading`]. Faults can be injected to exercise the agent's safety paths.

use crate::policy::{Decision, DeviceSpec, Mode};
use crate::reading::Reading;
use crate::thermal::ThermalModel;

/// A fault the simulated sensor shows instead of the truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimFault {
    /// The sensor is gone: readings carry a source fault.
    Vanished,
    /// Nonsense values: −1 W and 500 °C.
    Nonsense,
    /// The reading's timestamp stops advancing.
    Stalled {
        /// The timestamp every reading carries from now on, seconds.
        since_s: f64,
    },
}

/// One simulated device: its spec, thermal state and commanded mode, in simulated time.
#[derive(Clone, Debug)]
pub struct SimulatedDevice {
    /// What the device is: draw per mode, idle draw, power-limit range.
    pub spec: DeviceSpec,
    /// The thermal model its temperature follows (the spec's, or a generic one).
    pub model: ThermalModel,
    /// The commanded mode.
    pub mode: Mode,
    /// The commanded power limit, watts; caps the draw of a load (never below idle draw).
    pub power_limit_w: Option<f64>,
    /// True temperature now, °C.
    pub temp_c: f64,
    /// Energy drawn since creation, joules.
    pub energy_j: f64,
    /// Simulated time now, seconds.
    pub now_s: f64,
    /// An injected sensor fault; `None`: readings tell the truth.
    pub fault: Option<SimFault>,
}

impl SimulatedDevice {
    /// A device at ambient temperature, idle, at time `now_s`. Without a thermal model in the
    /// spec, a generic one (25 °C ambient, 0.1 °C/W, 60 s) is used.
    pub fn new(spec: DeviceSpec, now_s: f64) -> SimulatedDevice {
        let model = spec.thermal.unwrap_or(ThermalModel {
            ambient_c: 25.0,
            r_c_per_w: 0.1,
            tau_s: 60.0,
        });
        SimulatedDevice {
            temp_c: model.ambient_c,
            spec,
            model,
            mode: Mode::Idle,
            power_limit_w: None,
            energy_j: 0.0,
            now_s,
            fault: None,
        }
    }

    /// Nominal draw of a mode (before the power limit).
    pub fn mode_power_w(&self, mode: Mode) -> f64 {
        let s = &self.spec;
        match mode {
            Mode::Mine => s.mine.map_or(s.idle_w, |m| m.power_w),
            Mode::ServeAi => s.ai.map_or(s.idle_w, |a| a.power_w),
            Mode::Heat => s.heat.map_or(s.idle_w, |h| h.power_w),
            Mode::Idle => s.idle_w,
        }
    }

    /// The power drawn now: the mode's draw, capped by the power limit while running a load.
    pub fn power_w(&self) -> f64 {
        let p = self.mode_power_w(self.mode);
        match (self.mode, self.power_limit_w) {
            (Mode::Idle, _) | (_, None) => p,
            (_, Some(l)) => p.min(l.max(self.spec.idle_w)),
        }
    }

    /// Follows a decision: mode and power limit.
    pub fn apply(&mut self, d: &Decision) {
        self.mode = d.mode;
        self.power_limit_w = d.power_limit_w;
    }

    /// Advances simulated time by `dt_s` at the current power.
    pub fn step(&mut self, dt_s: f64) {
        let p = self.power_w();
        self.temp_c = self.model.step(self.temp_c, p, dt_s);
        self.energy_j += p * dt_s.max(0.0);
        self.now_s += dt_s.max(0.0);
    }

    /// What the device's sensors report now.
    pub fn reading(&self) -> Reading {
        let mut r = Reading {
            at_s: self.now_s,
            power_w: Some(self.power_w()),
            energy_j: Some(self.energy_j),
            temp_c: Some(self.temp_c),
            utilization: Some(if self.mode == Mode::Idle { 0.0 } else { 1.0 }),
            power_limit_w: self.power_limit_w,
            power_limit_range_w: self.spec.power_limit_range_w,
            fault: None,
        };
        match self.fault {
            None => {}
            Some(SimFault::Vanished) => r.fault = Some("simulated sensor vanished".into()),
            Some(SimFault::Nonsense) => {
                r.power_w = Some(-1.0);
                r.temp_c = Some(500.0);
            }
            Some(SimFault::Stalled { since_s }) => r.at_s = since_s,
        }
        r
    }
}
