//! NVIDIA GPUs through NVML. The library (libnvidia-ml) is opened at run time by
//! `nvml-wrapper`, so the binary runs where no NVIDIA driver exists: [`NvmlGpus::detect`] then
//! returns `None` with the reason, which is not an error.
//!
//! Readings: power draw, energy counter, GPU temperature, utilisation, enforced power limit and
//! its allowed range. Control: [`NvmlGpus::set_power_limit`] clamps to the allowed range (setting
//! a limit needs root on most systems; a refusal is an error the agent logs and retries).

use super::{BoxFut, Telemetry};
use crate::reading::Reading;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;
use std::sync::Arc;

/// A failed NVML query or command.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// NVML returned an error (no such GPU, no permission, unsupported).
    #[error("NVML: {0}")]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
    /// The requested power limit (watts, given) is NaN or infinite.
    #[error("power limit {0} W is not finite")]
    BadLimit(f64),
}

/// The NVML handle, shared by every GPU's telemetry and control.
#[derive(Clone)]
pub struct NvmlGpus {
    nvml: Arc<Nvml>,
    /// Number of GPUs NVML reports (indices `0..count`; at least 1).
    pub count: u32,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpus")
            .field("count", &self.count)
            .finish()
    }
}

/// Static facts about one GPU, for building its [`crate::policy::DeviceSpec`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuInfo {
    /// NVML device index.
    pub index: u32,
    /// Product name (`GPU <index>` when NVML does not say).
    pub name: String,
    /// NVML UUID (`GPU-…`; empty when NVML does not say).
    pub uuid: String,
    /// Allowed power-limit range, watts.
    pub limit_range_w: Option<(f64, f64)>,
    /// Current enforced limit, watts.
    pub limit_w: Option<f64>,
}

impl NvmlGpus {
    /// Opens NVML. `Err(reason)` when there is no driver or no GPU (not a failure of the agent).
    pub fn detect() -> Result<NvmlGpus, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable ({e}): no NVIDIA GPUs"))?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        if count == 0 {
            return Err("NVML: no NVIDIA GPUs".into());
        }
        Ok(NvmlGpus {
            nvml: Arc::new(nvml),
            count,
        })
    }

    /// Static facts about GPU `index`: name, UUID, power-limit range and current limit.
    pub fn info(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let d = self.nvml.device_by_index(index)?;
        Ok(GpuInfo {
            index,
            name: d.name().unwrap_or_else(|_| format!("GPU {index}")),
            uuid: d.uuid().unwrap_or_default(),
            limit_range_w: d
                .power_management_limit_constraints()
                .ok()
                .map(|c| (c.min_limit as f64 / 1000.0, c.max_limit as f64 / 1000.0)),
            limit_w: d.enforced_power_limit().ok().map(|l| l as f64 / 1000.0),
        })
    }

    /// Reads GPU `index` now. A failing device call becomes a fault in the reading.
    pub fn read_now(&self, index: u32, now_s: f64) -> Reading {
        let mut r = Reading {
            at_s: now_s,
            ..Reading::default()
        };
        let d = match self.nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                r.fault = Some(format!("NVML GPU {index}: {e}"));
                return r;
            }
        };
        match d.power_usage() {
            Ok(mw) => r.power_w = Some(mw as f64 / 1000.0),
            Err(e) => {
                r.fault = Some(format!("NVML GPU {index} power: {e}"));
                return r;
            }
        }
        match d.temperature(TemperatureSensor::Gpu) {
            Ok(c) => r.temp_c = Some(c as f64),
            Err(e) => {
                r.fault = Some(format!("NVML GPU {index} temperature: {e}"));
                return r;
            }
        }
        r.energy_j = d
            .total_energy_consumption()
            .ok()
            .map(|mj| mj as f64 / 1000.0);
        r.utilization = d.utilization_rates().ok().map(|u| u.gpu as f64 / 100.0);
        r.power_limit_w = d.enforced_power_limit().ok().map(|l| l as f64 / 1000.0);
        r.power_limit_range_w = d
            .power_management_limit_constraints()
            .ok()
            .map(|c| (c.min_limit as f64 / 1000.0, c.max_limit as f64 / 1000.0));
        r
    }

    /// Sets GPU `index`'s power limit to `watts`, clamped to its allowed range. Returns the limit
    /// set, watts.
    pub fn set_power_limit(&self, index: u32, watts: f64) -> Result<f64, NvmlError> {
        if !watts.is_finite() {
            return Err(NvmlError::BadLimit(watts));
        }
        let mut d = self.nvml.device_by_index(index)?;
        let c = d.power_management_limit_constraints()?;
        let mw = clamp_limit_mw(watts, c.min_limit, c.max_limit);
        d.set_power_management_limit(mw)?;
        Ok(mw as f64 / 1000.0)
    }

    /// Telemetry for one GPU.
    pub fn telemetry(&self, index: u32) -> NvmlTelemetry {
        NvmlTelemetry {
            gpus: self.clone(),
            index,
        }
    }
}

/// Clamps a limit in watts to NVML's allowed range in milliwatts.
pub fn clamp_limit_mw(watts: f64, min_mw: u32, max_mw: u32) -> u32 {
    let (lo, hi) = (min_mw.min(max_mw), max_mw.max(min_mw));
    let mw = (watts * 1000.0).round();
    if mw.is_nan() {
        return lo;
    }
    (mw.clamp(lo as f64, hi as f64)) as u32
}

/// One GPU's telemetry through NVML.
#[derive(Clone, Debug)]
pub struct NvmlTelemetry {
    gpus: NvmlGpus,
    index: u32,
}

impl Telemetry for NvmlTelemetry {
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading> {
        let r = self.gpus.read_now(self.index, now_s);
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped_to_the_allowed_range() {
        assert_eq!(clamp_limit_mw(500.0, 100_000, 350_000), 350_000);
        assert_eq!(clamp_limit_mw(50.0, 100_000, 350_000), 100_000);
        assert_eq!(clamp_limit_mw(200.4, 100_000, 350_000), 200_400);
        assert_eq!(clamp_limit_mw(f64::NAN, 100_000, 350_000), 100_000);
    }

    #[test]
    fn detect_without_a_driver_is_a_reason_not_a_panic() {
        // On machines with a driver this finds GPUs; without, it must say why.
        match NvmlGpus::detect() {
            Ok(g) => assert!(g.count > 0),
            Err(why) => assert!(why.contains("NVML") || why.contains("GPU"), "{why}"),
        }
    }
}
