//! First-order thermal RC model: `dT/dt = (T_amb + R·P − T) / τ`.
//!
//! Used twice: the policy predicts where a device's temperature will be at the end of the next
//! interval for a candidate power, and the [`crate::sim_device::SimulatedDevice`] steps its
//! temperature with it. Both use the exact solution for constant power over a step, so a
//! simulation stepped in many small steps and the policy's single-step prediction agree, and the
//! temperature is monotone within a step (the maximum over a step is at one of its ends).

use serde::{Deserialize, Serialize};

/// Parameters of one device's thermal model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThermalModel {
    /// Ambient (intake) temperature, °C.
    pub ambient_c: f64,
    /// Thermal resistance, °C per watt: the steady-state rise above ambient per watt drawn.
    pub r_c_per_w: f64,
    /// Time constant, seconds.
    pub tau_s: f64,
}

impl ThermalModel {
    /// Steady-state temperature at constant power.
    pub fn steady_c(&self, power_w: f64) -> f64 {
        self.ambient_c + self.r_c_per_w * power_w
    }

    /// Temperature after `dt_s` seconds at constant `power_w`, starting from `temp_c` (exact).
    pub fn step(&self, temp_c: f64, power_w: f64, dt_s: f64) -> f64 {
        let steady = self.steady_c(power_w);
        let decay = self.decay(dt_s);
        steady + (temp_c - steady) * decay
    }

    /// The largest constant power for which the temperature stays at or below `limit_c` over the
    /// next `dt_s` seconds, starting from `temp_c` (may be negative: nothing keeps it below).
    pub fn max_power_w(&self, temp_c: f64, limit_c: f64, dt_s: f64) -> f64 {
        if temp_c > limit_c {
            return f64::NEG_INFINITY;
        }
        let decay = self.decay(dt_s);
        let gain = self.r_c_per_w * (1.0 - decay);
        if gain <= 0.0 {
            // Zero resistance or zero-length step: power cannot raise the temperature.
            return f64::INFINITY;
        }
        // End temperature is the larger end of a monotone path; solve end ≤ limit for P.
        (limit_c - self.ambient_c - (temp_c - self.ambient_c) * decay) / gain
    }

    fn decay(&self, dt_s: f64) -> f64 {
        if self.tau_s <= 0.0 {
            0.0
        } else {
            (-dt_s.max(0.0) / self.tau_s).exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: ThermalModel = ThermalModel {
        ambient_c: 25.0,
        r_c_per_w: 0.2,
        tau_s: 120.0,
    };

    #[test]
    fn converges_to_steady_state_and_splits_steps_exactly() {
        let one = M.step(30.0, 250.0, 600.0);
        let mut many = 30.0;
        for _ in 0..600 {
            many = M.step(many, 250.0, 1.0);
        }
        assert!((one - many).abs() < 1e-9, "{one} vs {many}");
        let far = M.step(30.0, 250.0, 1e6);
        assert!((far - 75.0).abs() < 1e-9);
    }

    #[test]
    fn max_power_keeps_the_end_temperature_at_the_limit() {
        let p = M.max_power_w(60.0, 80.0, 60.0);
        assert!(p > 0.0);
        let end = M.step(60.0, p, 60.0);
        assert!((end - 80.0).abs() < 1e-9, "{end}");
        assert!(M.step(60.0, p + 1.0, 60.0) > 80.0);
        assert_eq!(M.max_power_w(90.0, 80.0, 60.0), f64::NEG_INFINITY);
    }
}
