//! One `hearth simulate` invocation: load inputs, pick runs, simulate, write the report.
//!
//! The CLI in `bin/hearth` only maps its flags onto [`Options`]; everything else lives here so
//! tests and examples drive exactly what users run.

use crate::fleet::{Fleet, FleetError};
use crate::jobs::{generate_jobs, parse_jobs, GenParams, Job, JobError};
use crate::prices::{parse_prices, GapPolicy, PriceTrace, TraceError};
use crate::report::{self, Targets};
use crate::sched::SchedPolicy;
use crate::sim::{simulate, DevicePolicy, RunResult, SimConfig};
use crate::time::year_start_unix;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest input file read, bytes.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// What went wrong in a simulation run.
#[derive(Debug, Error)]
pub enum RunError {
    /// Reading an input or writing the report failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or report directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// An input file is larger than [`MAX_INPUT_BYTES`].
    #[error("{path}: larger than {MAX_INPUT_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The price trace could not be read.
    #[error("{path}: {source}")]
    Prices {
        /// The price file.
        path: PathBuf,
        /// What is wrong with it.
        source: TraceError,
    },
    /// The job trace could not be read.
    #[error("{path}: {source}")]
    Jobs {
        /// The job file.
        path: PathBuf,
        /// What is wrong with it.
        source: JobError,
    },
    /// The job generator rejected its parameters.
    #[error("job generator: {0}")]
    Generate(JobError),
    /// The fleet file could not be read.
    #[error("{path}: {source}")]
    Fleet {
        /// The fleet file.
        path: PathBuf,
        /// What is wrong with it.
        source: FleetError,
    },
    /// Options that are out of range or exclude each other; the message names the flag.
    #[error("{0}")]
    Usage(String),
}

/// Everything `hearth simulate` can be told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Price trace file (`hour,price` or timestamped CSV, $/MWh).
    pub prices: PathBuf,
    /// Unix seconds that hour 1 of an `hour,price` file starts at; `None`: from a `_YYYY` in
    /// the file name, else 2019-01-01.
    pub hour_base_unix: Option<i64>,
    /// Forward-fill gaps in the price trace instead of rejecting it.
    pub fill_gaps: bool,
    /// Job trace CSV; `None`: generate jobs (excludes `generate_jobs`).
    pub jobs: Option<PathBuf>,
    /// Generated jobs: `None` fills the trace at `load`.
    pub generate_jobs: Option<usize>,
    /// Seed of the job generator.
    pub seed: u64,
    /// Offered load of generated jobs on the fixed AI partition, in (0, 10].
    pub load: f64,
    /// Fleet JSON file; `None`: the built-in fleet (excludes `devices`).
    pub fleet: Option<PathBuf>,
    /// Use the built-in fleet scaled to this many devices (excludes `fleet`).
    pub devices: Option<usize>,
    /// `all` or one of [`DevicePolicy`]'s names.
    pub policy: String,
    /// `all` or one of fifo, srf, las, hearth.
    pub scheduler: String,
    /// Simulation interval, seconds: 300 or 3600 (the trace is resampled to it).
    pub interval_s: u32,
    /// Only the first this many days of the trace.
    pub days: Option<f64>,
    /// Give hearth's policy the day's prices as a day-ahead forecast.
    pub day_ahead: bool,
    /// Drop every site's demand-response programme (a pure price comparison).
    pub no_dr: bool,
    /// Target for the hybrid run's p95 queue delay, seconds.
    pub latency_target_p95_queue_s: f64,
    /// hearth's policy tunables (`interval_s` is overridden by the trace interval).
    pub policy_config: hearth_policy::PolicyConfig,
    /// Directory to write the report (Markdown, JSON, SVG plots) to; `None`: write nothing.
    pub out: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prices: PathBuf::from("data/prices/Price_2019.csv"),
            hour_base_unix: None,
            fill_gaps: false,
            jobs: None,
            generate_jobs: None,
            seed: 1,
            load: 0.6,
            fleet: None,
            devices: None,
            policy: "all".into(),
            scheduler: "all".into(),
            interval_s: 300,
            days: None,
            day_ahead: false,
            no_dr: false,
            latency_target_p95_queue_s: 3600.0,
            policy_config: crate::sim::hearth_policy_config(),
            out: None,
        }
    }
}

/// What a simulation produced.
#[derive(Debug)]
pub struct Outcome {
    /// One result per (policy, scheduler) pair run.
    pub runs: Vec<RunResult>,
    /// The targets computed from `runs`.
    pub targets: Targets,
    /// The report as a Markdown document.
    pub markdown: String,
    /// Intervals forward-filled over gaps in the price trace.
    pub filled: usize,
}

fn read(path: &Path) -> Result<String, RunError> {
    let io = |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_INPUT_BYTES {
        return Err(RunError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// A year from `..._YYYY...` in a file name.
fn year_in_name(path: &Path) -> Option<i64> {
    let name = path.file_stem()?.to_str()?;
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| p.len() == 4)
        .filter_map(|p| p.parse::<i64>().ok())
        .find(|y| (1970..=2200).contains(y))
}

/// Loads the price trace at the simulation interval.
pub fn load_prices(o: &Options) -> Result<PriceTrace, RunError> {
    let text = read(&o.prices)?;
    let base = o
        .hour_base_unix
        .unwrap_or_else(|| year_start_unix(year_in_name(&o.prices).unwrap_or(2019)));
    let gaps = if o.fill_gaps {
        GapPolicy::ForwardFill
    } else {
        GapPolicy::Error
    };
    let err = |source| RunError::Prices {
        path: o.prices.clone(),
        source,
    };
    let mut t = parse_prices(&text, gaps, base).map_err(err)?;
    if o.interval_s != 300 && o.interval_s != 3600 {
        return Err(RunError::Usage("--interval must be 5m or 1h".into()));
    }
    t = t.resample(o.interval_s).map_err(err)?;
    if let Some(days) = o.days {
        if days.is_nan() || days <= 0.0 {
            return Err(RunError::Usage("--days must be positive".into()));
        }
        let n = ((days * 86_400.0 / t.step_s as f64).ceil() as usize).clamp(1, t.len());
        t.prices.truncate(n);
    }
    Ok(t)
}

/// The fleet: a file, a scaled fleet, or the built-in default.
pub fn load_fleet(o: &Options) -> Result<Fleet, RunError> {
    match (&o.fleet, o.devices) {
        (Some(_), Some(_)) => Err(RunError::Usage(
            "--fleet and --devices exclude each other".into(),
        )),
        (Some(p), None) => Fleet::from_json(&read(p)?).map_err(|source| RunError::Fleet {
            path: p.clone(),
            source,
        }),
        (None, Some(n)) => Ok(Fleet::scaled_fleet(n)),
        (None, None) => Ok(Fleet::default_fleet()),
    }
}

/// GPUs of the fixed AI partition (the capacity the generator's load refers to).
pub fn ai_partition_gpus(fleet: &Fleet) -> u32 {
    fleet
        .sites
        .iter()
        .flat_map(|s| &s.groups)
        .filter(|g| g.ai_dedicated)
        .map(|g| g.count)
        .sum()
}

/// Largest gang that fits on one site's AI partition.
fn largest_partition(fleet: &Fleet) -> u32 {
    fleet
        .sites
        .iter()
        .map(|s| {
            s.groups
                .iter()
                .filter(|g| g.ai_dedicated)
                .map(|g| g.count)
                .sum::<u32>()
        })
        .max()
        .unwrap_or(0)
}

/// The jobs: a file or the generator.
pub fn load_jobs(o: &Options, fleet: &Fleet, trace: &PriceTrace) -> Result<Vec<Job>, RunError> {
    if let Some(p) = &o.jobs {
        if o.generate_jobs.is_some() {
            return Err(RunError::Usage(
                "--jobs and --generate-jobs exclude each other".into(),
            ));
        }
        return parse_jobs(
            &read(p)?,
            trace.start_unix,
            fleet.economics.reference_tokens_per_s,
        )
        .map_err(|source| RunError::Jobs {
            path: p.clone(),
            source,
        });
    }
    let cap = ai_partition_gpus(fleet);
    if cap == 0 {
        return Ok(Vec::new());
    }
    let max_gpus = largest_partition(fleet).clamp(1, 64);
    generate_jobs(&GenParams {
        n_jobs: o.generate_jobs,
        seed: o.seed,
        max_gpus,
        load: o.load,
        capacity_gpus: cap,
        start_unix: trace.start_unix,
        max_horizon_s: trace.duration_s(),
    })
    .map_err(RunError::Generate)
}

/// The (policy, scheduler) pairs to run.
pub fn run_list(
    policy: &str,
    scheduler: &str,
) -> Result<Vec<(DevicePolicy, SchedPolicy)>, RunError> {
    let sched_of = |s: &str| -> Result<SchedPolicy, RunError> {
        SchedPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                RunError::Usage(format!(
                    "unknown scheduler `{s}` (all, fifo, srf, las, hearth)"
                ))
            })
    };
    let pol_of = |s: &str| -> Result<DevicePolicy, RunError> {
        DevicePolicy::parse(s).ok_or_else(|| {
            RunError::Usage(format!(
                "unknown policy `{s}` (all, always-mine, oracle, hearth, hybrid, mine-only, ai-only)"
            ))
        })
    };
    // Default pairing: hybrid and ai-only with hearth's scheduler; the price-only policies
    // with LAS; the scheduler comparison with hearth's price policy (hybrid for hearth's own).
    let default_sched = |p: DevicePolicy| match p {
        DevicePolicy::Hybrid | DevicePolicy::AiOnly => SchedPolicy::Hearth,
        _ => SchedPolicy::Las,
    };
    let default_policy = |s: SchedPolicy| match s {
        SchedPolicy::Hearth => DevicePolicy::Hybrid,
        _ => DevicePolicy::Hearth,
    };
    let mut out = Vec::new();
    match (policy, scheduler) {
        ("all", "all") => {
            for s in SchedPolicy::ALL {
                out.push((default_policy(s), s));
            }
            for p in DevicePolicy::ALL {
                out.push((p, default_sched(p)));
            }
            // Ablations of hearth's scheduler: lending alone (FIFO order) and order alone (no
            // lending).
            out.push((DevicePolicy::Hybrid, SchedPolicy::Fifo));
            out.push((DevicePolicy::Hearth, SchedPolicy::Hearth));
        }
        ("all", s) => {
            for s in s.split(',') {
                let s = sched_of(s.trim())?;
                for p in DevicePolicy::ALL {
                    out.push((p, s));
                }
            }
        }
        (p, "all") => {
            for p in p.split(',') {
                let p = pol_of(p.trim())?;
                for s in SchedPolicy::ALL {
                    out.push((p, s));
                }
            }
        }
        (p, s) => {
            for p in p.split(',') {
                for s in s.split(',') {
                    out.push((pol_of(p.trim())?, sched_of(s.trim())?));
                }
            }
        }
    }
    let mut seen = Vec::new();
    out.retain(|r| {
        if seen.contains(r) {
            false
        } else {
            seen.push(*r);
            true
        }
    });
    Ok(out)
}

/// Runs everything `o` asks for and writes the report when `o.out` is set.
pub fn run(o: &Options) -> Result<Outcome, RunError> {
    if !(o.load.is_finite() && o.load > 0.0 && o.load <= 10.0) {
        return Err(RunError::Usage("--load must be in (0, 10]".into()));
    }
    let trace = load_prices(o)?;
    let mut fleet = load_fleet(o)?;
    if o.no_dr {
        fleet.sites.iter_mut().for_each(|s| s.dr = None);
    }
    let jobs = load_jobs(o, &fleet, &trace)?;
    let runs_wanted = run_list(&o.policy, &o.scheduler)?;
    let cfg = SimConfig {
        day_ahead: o.day_ahead,
        policy: o.policy_config.clone(),
        sample_s: (trace.duration_s() / 365.0).clamp(trace.step_s as f64, 86_400.0),
        ..SimConfig::default()
    };
    let runs: Vec<RunResult> = runs_wanted
        .iter()
        .map(|&(p, s)| simulate(&fleet, &trace, &jobs, p, s, &cfg))
        .collect();
    let targets = report::targets(&runs, o.latency_target_p95_queue_s);
    let header = format!(
        "Prices: `{}` ({} intervals of {} s, {} forward-filled); fleet: {} devices on {} sites; jobs: {} ({}); day-ahead: {}; demand response: {}.",
        o.prices.display(),
        trace.len(),
        trace.step_s,
        trace.filled,
        fleet.device_count(),
        fleet.sites.len(),
        jobs.len(),
        match &o.jobs {
            Some(p) => format!("from `{}`", p.display()),
            None => format!("generated, seed {}, offered load {} on the AI partition", o.seed, o.load),
        },
        if o.day_ahead { "yes" } else { "no" },
        if o.no_dr { "off" } else { "as in the fleet" },
    );
    let markdown = report::markdown(&runs, &targets, &header);
    if let Some(dir) = &o.out {
        report::write_all(dir, &runs, &targets, &header).map_err(|source| RunError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(Outcome {
        runs,
        targets,
        markdown,
        filled: trace.filled,
    })
}
