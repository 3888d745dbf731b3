//! Host CPU telemetry from sysfs and procfs: RAPL package energy (powercap), hwmon temperatures,
//! `/proc/stat` utilisation.
//!
//! Roots are injectable (`sys_root` for `/sys`, `proc_root` for `/proc`) so tests use fixture
//! trees. RAPL's `energy_uj` wraps at `max_energy_range_uj`; a decrease is a wrap, handled by
//! adding the range. Since Linux 5.10 `energy_uj` is readable by root only; an unreadable counter
//! makes the source absent and [`detect_host_cpu`] says so.

use super::{read_bounded, BoxFut, Telemetry};
use crate::reading::Reading;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// sysfs values are a few bytes; anything longer is not what we expect.
const MAX_SYSFS_VALUE: usize = 256;
/// `/proc/stat` on a large machine is tens of KiB.
const MAX_PROC_STAT: usize = 1 << 20;
/// At most this many hwmon chips and sensors per chip are scanned.
const MAX_HWMON: usize = 64;
const MAX_SENSORS: usize = 64;

/// A sysfs or procfs file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The file could not be read (or is over its size bound).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// The file does not hold an integer.
    #[error("{path}: cannot parse {value:?} as a number")]
    Parse {
        /// The file.
        path: String,
        /// Its trimmed content, at most 32 characters.
        value: String,
    },
    /// `/proc/stat` has no usable aggregate `cpu` line (message says why).
    #[error("/proc/stat: {0}")]
    ProcStat(String),
}

/// A sysfs value file holding one integer.
fn read_int<T: std::str::FromStr>(path: &Path) -> Result<T, SysfsError> {
    let s = read_bounded(path, MAX_SYSFS_VALUE).map_err(|source| SysfsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    s.trim().parse().map_err(|_| SysfsError::Parse {
        path: path.display().to_string(),
        value: s.trim().chars().take(32).collect(),
    })
}

/// One RAPL package domain (`intel-rapl:N`).
#[derive(Debug)]
pub struct RaplDomain {
    /// The domain's powercap directory.
    pub dir: PathBuf,
    /// Its `name` file (`package-0`), or the directory when unreadable.
    pub name: String,
    /// `max_energy_range_uj`: where `energy_uj` wraps, microjoules (> 0).
    pub range_uj: u64,
    last: Option<(f64, u64)>,
    /// Accumulated energy across wraps, joules.
    total_j: f64,
}

/// Package domains under `<sys_root>/class/powercap` whose counters can be read.
/// Returns the domains and, for each that cannot be used, why.
pub fn rapl_domains(sys_root: &Path) -> (Vec<RaplDomain>, Vec<String>) {
    let base = sys_root.join("class/powercap");
    let mut found = Vec::new();
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(&base) else {
        notes.push(format!("RAPL absent: {} not present", base.display()));
        return (found, notes);
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // Package domains only (intel-rapl:0), not sub-domains (intel-rapl:0:0).
                .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
        })
        .take(MAX_HWMON)
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = read_bounded(&dir.join("name"), MAX_SYSFS_VALUE)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| dir.display().to_string());
        match (
            read_int::<u64>(&dir.join("energy_uj")),
            read_int::<u64>(&dir.join("max_energy_range_uj")),
        ) {
            (Ok(_), Ok(range)) if range > 0 => found.push(RaplDomain {
                dir,
                name,
                range_uj: range,
                last: None,
                total_j: 0.0,
            }),
            (Err(SysfsError::Io { source, .. }), _)
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                notes.push(format!(
                    "RAPL {name}: energy_uj is not readable (root only since Linux 5.10); run as root or grant read access"
                ))
            }
            (Err(e), _) | (_, Err(e)) => notes.push(format!("RAPL {name}: {e}")),
            (Ok(_), Ok(_)) => notes.push(format!("RAPL {name}: zero max_energy_range_uj")),
        }
    }
    if found.is_empty() && notes.is_empty() {
        notes.push("RAPL absent: no intel-rapl package domains".into());
    }
    (found, notes)
}

impl RaplDomain {
    /// Samples the counter at `now_s`: returns (average power since the previous sample, total
    /// energy). The first sample has no power.
    pub fn sample(&mut self, now_s: f64) -> Result<(Option<f64>, f64), SysfsError> {
        let uj = read_int::<u64>(&self.dir.join("energy_uj"))?;
        let mut power = None;
        if let Some((t0, e0)) = self.last {
            // A decrease is a wrap of the counter at max_energy_range_uj.
            let delta_uj = if uj >= e0 {
                uj - e0
            } else {
                (self.range_uj - e0.min(self.range_uj)).saturating_add(uj)
            };
            let j = delta_uj as f64 / 1e6;
            self.total_j += j;
            let dt = now_s - t0;
            if dt > 0.0 {
                power = Some(j / dt);
            }
        }
        self.last = Some((now_s, uj));
        Ok((power, self.total_j))
    }
}

/// One temperature sensor of a hwmon chip.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HwmonSensor {
    /// The chip's `name` (`coretemp`, `k10temp`; empty when unreadable).
    pub chip: String,
    /// The sensor's `temp*_label`, or its file stem (`temp1`) when it has none.
    pub label: String,
    /// Temperature, °C.
    pub temp_c: f64,
}

/// Reads every `temp*_input` of every chip under `<sys_root>/class/hwmon` (millidegrees → °C).
/// Unreadable or unparsable sensors are skipped.
pub fn hwmon_temps(sys_root: &Path) -> Vec<HwmonSensor> {
    let base = sys_root.join("class/hwmon");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return out;
    };
    let mut chips: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .take(MAX_HWMON)
        .collect();
    chips.sort();
    for chip in chips {
        let name = read_bounded(&chip.join("name"), MAX_SYSFS_VALUE)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let Ok(files) = std::fs::read_dir(&chip) else {
            continue;
        };
        let mut inputs: Vec<PathBuf> = files
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("temp") && n.ends_with("_input"))
            })
            .take(MAX_SENSORS)
            .collect();
        inputs.sort();
        for input in inputs {
            let Ok(milli) = read_int::<i64>(&input) else {
                continue;
            };
            let stem = input
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("temp")
                .trim_end_matches("_input")
                .to_string();
            let label = read_bounded(&chip.join(format!("{stem}_label")), MAX_SYSFS_VALUE)
                .map(|s| s.trim().to_string())
                .unwrap_or(stem);
            out.push(HwmonSensor {
                chip: name.clone(),
                label,
                temp_c: milli as f64 / 1000.0,
            });
        }
    }
    out
}

/// hwmon chip names that report the CPU package temperature.
pub const CPU_CHIPS: [&str; 5] = [
    "coretemp",
    "k10temp",
    "zenpower",
    "cpu_thermal",
    "x86_pkg_temp",
];

/// CPU time counters from the first line of `/proc/stat`: (busy, total) jiffies.
pub fn proc_stat_cpu(proc_root: &Path) -> Result<(u64, u64), SysfsError> {
    let path = proc_root.join("stat");
    let s = read_bounded(&path, MAX_PROC_STAT).map_err(|source| SysfsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| SysfsError::ProcStat("no aggregate `cpu` line".into()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(10)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| SysfsError::ProcStat(format!("bad counter in {line:?}")))?;
    if fields.len() < 4 {
        return Err(SysfsError::ProcStat(format!("too few fields in {line:?}")));
    }
    // user nice system idle iowait irq softirq steal (guest fields are already in user/nice).
    // Saturating: a corrupt counter must not overflow.
    let total: u64 = fields
        .iter()
        .take(8)
        .fold(0u64, |a, &b| a.saturating_add(b));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Ok((total - idle.min(total), total))
}

/// The host CPU as one device: RAPL package power (summed over packages), the hottest CPU hwmon
/// sensor, and `/proc/stat` utilisation. Each part optional.
#[derive(Debug)]
pub struct HostCpu {
    sys_root: PathBuf,
    proc_root: PathBuf,
    inner: Mutex<HostState>,
}

#[derive(Debug)]
struct HostState {
    rapl: Vec<RaplDomain>,
    last_stat: Option<(u64, u64)>,
}

/// What was found for the host CPU, and why each missing part is missing.
#[derive(Debug)]
pub struct HostDetection {
    /// The host CPU device over whatever was found.
    pub cpu: HostCpu,
    /// At least one RAPL package counter is readable.
    pub has_power: bool,
    /// A CPU hwmon sensor (one of [`CPU_CHIPS`]) reports a temperature.
    pub has_temp: bool,
    /// `/proc/stat` gives CPU time counters.
    pub has_util: bool,
    /// Why each missing part is missing, for the log.
    pub notes: Vec<String>,
}

/// Detects the host CPU's telemetry under the given roots (`/sys`, `/proc` in production).
pub fn detect_host_cpu(sys_root: &Path, proc_root: &Path) -> HostDetection {
    let (rapl, mut notes) = rapl_domains(sys_root);
    let has_temp = hwmon_temps(sys_root)
        .iter()
        .any(|s| CPU_CHIPS.contains(&s.chip.as_str()));
    if !has_temp {
        notes.push("hwmon: no CPU temperature sensor (coretemp/k10temp/zenpower)".into());
    }
    let stat = proc_stat_cpu(proc_root);
    if let Err(e) = &stat {
        notes.push(format!("CPU utilisation absent: {e}"));
    }
    HostDetection {
        has_power: !rapl.is_empty(),
        has_temp,
        has_util: stat.is_ok(),
        notes,
        cpu: HostCpu {
            sys_root: sys_root.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            inner: Mutex::new(HostState {
                rapl,
                last_stat: stat.ok(),
            }),
        },
    }
}

impl HostCpu {
    /// Reads the host CPU now (synchronous; sysfs reads are fast).
    pub fn read_now(&self, now_s: f64) -> Reading {
        let mut r = Reading {
            at_s: now_s,
            ..Reading::default()
        };
        let Ok(mut st) = self.inner.lock() else {
            r.fault = Some("host telemetry lock poisoned".into());
            return r;
        };
        let mut power = 0.0;
        let mut energy = 0.0;
        let mut have_power = !st.rapl.is_empty();
        for d in st.rapl.iter_mut() {
            match d.sample(now_s) {
                Ok((p, e)) => {
                    energy += e;
                    match p {
                        Some(p) => power += p,
                        None => have_power = false,
                    }
                }
                Err(e) => {
                    // A counter that was readable and no longer is: the sensor vanished.
                    r.fault = Some(format!("RAPL {}: {e}", d.name));
                    return r;
                }
            }
        }
        if !st.rapl.is_empty() {
            r.energy_j = Some(energy);
        }
        if have_power {
            r.power_w = Some(power);
        }
        r.temp_c = hwmon_temps(&self.sys_root)
            .iter()
            .filter(|s| CPU_CHIPS.contains(&s.chip.as_str()))
            .map(|s| s.temp_c)
            .reduce(f64::max);
        if let Ok((busy, total)) = proc_stat_cpu(&self.proc_root) {
            if let Some((b0, t0)) = st.last_stat {
                if total > t0 {
                    r.utilization = Some(busy.saturating_sub(b0) as f64 / (total - t0) as f64);
                }
            }
            st.last_stat = Some((busy, total));
        }
        r
    }
}

impl Telemetry for HostCpu {
    fn read(&self, now_s: f64) -> BoxFut<'_, Reading> {
        let r = self.read_now(now_s);
        Box::pin(async move { r })
    }
}
