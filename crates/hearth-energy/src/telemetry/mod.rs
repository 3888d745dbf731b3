//! Telemetry from real sources, each optional and detected at start, behind one interface.
//!
//! * [`sysfs`]: CPU package energy through Linux powercap/RAPL, temperatures through hwmon,
//!   utilisation from `/proc/stat`; the roots are injectable so tests run on fixture trees.
//! * [`nvml`]: NVIDIA GPUs through NVML, loaded at run time (no driver → no GPUs, not an error).
//! * [`SimTelemetry`]: a [`SimulatedDevice`] behind the same interface.
//!
//! Every source returns a [`Reading`]; a source that fails returns a reading with `fault` set
//! rather than an error, so the policy idles that device and says why. Every file read is
//! bounded ([`read_bounded`]).

pub mod nvml;
pub mod sysfs;

use crate::reading::Reading;
use crate::sim_device::SimulatedDevice;
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// A boxed, sendable future (keeps the traits object-safe without an extra crate).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One device's telemetry.
pub trait Telemetry: Send + Sync {
    /// Reads the device now (`now_s` on the agent's clock). Never fails: faults are in the
    /// reading.
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading>;
}

/// Reads at most `max` bytes of a small file (sysfs values, `/proc/stat`); a longer file is an
/// error rather than a silent truncation.
pub fn read_bounded(path: &Path, max: usize) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(max.min(4096));
    f.take(max as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is longer than {max} bytes", path.display()),
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not UTF-8", path.display()),
        )
    })
}

/// A simulated device's sensors.
#[derive(Clone, Debug)]
pub struct SimTelemetry(pub Arc<Mutex<SimulatedDevice>>);

impl Telemetry for SimTelemetry {
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading> {
        let r = match self.0.lock() {
            Ok(mut d) => {
                // The device evolves in the agent's (wall) time: advance it to now.
                if now_s > d.now_s {
                    let dt = now_s - d.now_s;
                    d.step(dt);
                }
                let mut r = d.reading();
                // The simulated device runs on the agent's clock in the agent; keep its stamp
                // unless a stall is being simulated.
                if d.fault.is_none() {
                    r.at_s = now_s;
                }
                r
            }
            Err(_) => Reading {
                at_s: now_s,
                fault: Some("simulated device lock poisoned".into()),
                ..Reading::default()
            },
        };
        Box::pin(async move { r })
    }
}

/// A fixed reading source for tests: returns whatever was last stored, stamped now (a live
/// sensor whose values do not change).
#[derive(Clone, Debug, Default)]
pub struct FixedTelemetry(pub Arc<Mutex<Reading>>);

impl Telemetry for FixedTelemetry {
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading> {
        let r = self
            .0
            .lock()
            .map(|r| Reading {
                at_s: now_s,
                ..r.clone()
            })
            .unwrap_or_else(|_| Reading {
                at_s: now_s,
                fault: Some("lock poisoned".into()),
                ..Reading::default()
            });
        Box::pin(async move { r })
    }
}

/// A miner's own report (hashrate, power, temperature) through hearth-mining. A miner that does
/// not answer within the time limit gives a faulted reading (the policy idles it and the
/// control worker keeps retrying); it never blocks the agent.
#[derive(Debug, Clone)]
pub struct MinerTelemetry {
    /// The miner, shared with its actuator.
    pub miner: Arc<hearth_mining::Miner>,
    /// Time limit of one status query.
    pub timeout: std::time::Duration,
}

impl Telemetry for MinerTelemetry {
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading> {
        Box::pin(async move {
            let mut r = Reading {
                at_s: now_s,
                ..Reading::default()
            };
            match tokio::time::timeout(self.timeout, self.miner.status()).await {
                Ok(Ok(s)) => {
                    r.power_w = s.power_w;
                    r.temp_c = s.temperature_c;
                    r.utilization = Some(if s.paused || s.hashrate_hs <= 0.0 {
                        0.0
                    } else {
                        1.0
                    });
                }
                Ok(Err(e)) => r.fault = Some(format!("miner did not answer: {e}")),
                Err(_) => r.fault = Some(format!("miner did not answer within {:?}", self.timeout)),
            }
            r
        })
    }
}
