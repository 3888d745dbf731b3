//! AI job traces: a CSV reader and a seeded generator shaped after public GPU-cluster traces.
//!
//! A job asks for `gpus` GPUs at once (gang scheduling on one site) and `work_s` seconds of
//! execution on GPUs of reference speed 1.0 (a GPU of speed 2.0 runs it in half the time).
//!
//! CSV form (header required, columns in any order): `arrival,gpus,duration[,deadline]` or
//! `arrival,gpus,tokens[,deadline]`. `arrival` and `deadline` are seconds since the start of the
//! price trace or RFC 3339 timestamps; `duration` is seconds on a reference GPU; `tokens` is
//! converted with a reference throughput (tokens per second per GPU). Rows must be sorted by
//! arrival. Every error names its line.
//!
//! Generator (seeded ChaCha8): sizes k ∈ 1..=max_gpus with P(k) ∝ k^-2.5; durations log-normal
//! (median 15 min, σ = 2) truncated to [1 min, 2 days] by redrawing; arrivals over the horizon
//! with three times the rate on weekdays 09:00–18:00 UTC. The horizon is chosen so that the
//! offered load (GPU-seconds asked / GPU-seconds available on `capacity_gpus`) is `load`.
//!
//! **Invariants of a job list:** sorted by arrival; `gpus ≥ 1`; `work_s > 0` and finite;
//! deadlines, when present, not before arrival; ids are the positions in the list.

use crate::time::{hour_of_day, parse_rfc3339, weekday};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use thiserror::Error;

/// Longest accepted line, bytes.
pub const MAX_LINE: usize = 512;
/// Most jobs accepted from a file or generated.
pub const MAX_JOBS: usize = 2_000_000;
/// Shortest generated duration, seconds.
pub const MIN_DURATION_S: f64 = 60.0;
/// Longest generated duration, seconds (two days).
pub const MAX_DURATION_S: f64 = 2.0 * 86_400.0;
/// Largest accepted job duration from a file (one year).
pub const MAX_FILE_DURATION_S: f64 = 366.0 * 86_400.0;

/// One AI job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// Position of the job in its list.
    pub id: u32,
    /// Seconds since the start of the simulation.
    pub arrival_s: f64,
    /// GPUs the job needs at once, all on one site (≥ 1).
    pub gpus: u32,
    /// Execution time on `gpus` GPUs of reference speed, seconds.
    pub work_s: f64,
    /// Seconds since the start of the simulation.
    pub deadline_s: Option<f64>,
}

/// A job trace that could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum JobError {
    /// A row could not be parsed or broke an invariant.
    #[error("line {line}: {msg}")]
    Line {
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// The file is empty or lacks the header line.
    #[error("the job trace has no header line")]
    NoHeader,
    /// More than [`MAX_JOBS`] jobs.
    #[error("more than {MAX_JOBS} jobs")]
    TooMany,
    /// A generator parameter is out of range; the message says which.
    #[error("bad generator parameter: {0}")]
    Param(String),
}

fn line_err(line: usize, msg: impl Into<String>) -> JobError {
    JobError::Line {
        line,
        msg: msg.into(),
    }
}

/// Parses a job CSV. `start_unix` is the instant that relative time 0 refers to (RFC 3339
/// times are converted with it); `tokens_per_gpu_s` converts a `tokens` column to seconds.
pub fn parse_jobs(
    text: &str,
    start_unix: i64,
    tokens_per_gpu_s: f64,
) -> Result<Vec<Job>, JobError> {
    let mut cols: Option<[Option<usize>; 5]> = None; // arrival, gpus, duration, tokens, deadline
    let mut jobs: Vec<Job> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        if raw.len() > MAX_LINE {
            return Err(line_err(line, format!("line longer than {MAX_LINE} bytes")));
        }
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        let Some(c) = cols else {
            let mut c = [None; 5];
            for (i, name) in fields.iter().enumerate() {
                let slot = match name.to_ascii_lowercase().as_str() {
                    "arrival" | "submit" | "submit_time" => 0,
                    "gpus" | "num_gpus" => 1,
                    "duration" | "duration_s" => 2,
                    "tokens" => 3,
                    "deadline" => 4,
                    other => return Err(line_err(line, format!("unknown column `{other}`"))),
                };
                if c[slot].replace(i).is_some() {
                    return Err(line_err(line, format!("column `{name}` given twice")));
                }
            }
            if c[0].is_none() || c[1].is_none() {
                return Err(line_err(line, "header needs `arrival` and `gpus` columns"));
            }
            if c[2].is_some() == c[3].is_some() {
                return Err(line_err(
                    line,
                    "header needs exactly one of `duration` or `tokens`",
                ));
            }
            cols = Some(c);
            continue;
        };
        let ncols = c.iter().flatten().count();
        if fields.len() != ncols {
            return Err(line_err(
                line,
                format!("expected {ncols} fields, found {}", fields.len()),
            ));
        }
        let get = |slot: usize| c[slot].map(|i| fields[i]);
        let time = |s: &str, what: &str| -> Result<f64, JobError> {
            if let Ok(v) = s.parse::<f64>() {
                if v.is_finite() {
                    return Ok(v);
                }
            } else if let Ok(t) = parse_rfc3339(s) {
                return Ok((t - start_unix) as f64);
            }
            Err(line_err(
                line,
                format!("{what} `{s}` is not seconds or an RFC 3339 time"),
            ))
        };
        let arrival = time(get(0).unwrap_or_default(), "arrival")?;
        if arrival < 0.0 {
            return Err(line_err(line, "arrival before the start of the simulation"));
        }
        if let Some(prev) = jobs.last() {
            if arrival < prev.arrival_s {
                return Err(line_err(line, "jobs must be sorted by arrival"));
            }
        }
        let g = get(1).unwrap_or_default();
        let gpus: u32 = g
            .parse()
            .map_err(|_| line_err(line, format!("gpus `{g}` is not a positive integer")))?;
        if gpus == 0 || gpus > 4096 {
            return Err(line_err(line, format!("gpus {gpus} not in 1..=4096")));
        }
        let work_s = if let Some(d) = get(2) {
            let v: f64 = d
                .parse()
                .map_err(|_| line_err(line, format!("duration `{d}` is not a number")))?;
            if !v.is_finite() || v <= 0.0 {
                return Err(line_err(
                    line,
                    format!(
                        "duration {d} must be positive (negative or zero durations are invalid)"
                    ),
                ));
            }
            v
        } else {
            let t = get(3).unwrap_or_default();
            let v: f64 = t
                .parse()
                .map_err(|_| line_err(line, format!("tokens `{t}` is not a number")))?;
            if !v.is_finite() || v <= 0.0 {
                return Err(line_err(line, format!("tokens {t} must be positive")));
            }
            v / (tokens_per_gpu_s * gpus as f64)
        };
        if work_s > MAX_FILE_DURATION_S {
            return Err(line_err(line, "duration longer than a year"));
        }
        let deadline_s = match get(4) {
            None | Some("") => None,
            Some(d) => {
                let v = time(d, "deadline")?;
                if v < arrival {
                    return Err(line_err(line, "deadline before arrival"));
                }
                Some(v)
            }
        };
        if jobs.len() >= MAX_JOBS {
            return Err(JobError::TooMany);
        }
        jobs.push(Job {
            id: jobs.len() as u32,
            arrival_s: arrival,
            gpus,
            work_s,
            deadline_s,
        });
    }
    if cols.is_none() {
        return Err(JobError::NoHeader);
    }
    Ok(jobs)
}

/// Parameters of the built-in workload generator.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Number of jobs; `None`: as many as fill `max_horizon_s` at `load`.
    pub n_jobs: Option<usize>,
    /// Seed of the ChaCha8 generator; the same seed gives the same trace.
    pub seed: u64,
    /// Largest job, GPUs (sizes are 1..=max_gpus).
    pub max_gpus: u32,
    /// Offered load on `capacity_gpus` (0 < load).
    pub load: f64,
    /// GPUs the offered load is measured against.
    pub capacity_gpus: u32,
    /// Unix seconds of simulated time 0 (for business hours).
    pub start_unix: i64,
    /// Longest horizon the arrivals may span, seconds (the simulation length).
    pub max_horizon_s: f64,
}

/// Exponent of the job-size distribution, P(k) ∝ k^-ALPHA.
pub const SIZE_ALPHA: f64 = 2.5;
/// Arrival-rate factor inside business hours.
pub const BUSINESS_FACTOR: f64 = 3.0;
const LOGN_MEDIAN_S: f64 = 900.0;
const LOGN_SIGMA: f64 = 2.0;

/// True on weekdays 09:00–18:00 UTC.
pub fn is_business_hour(t_unix: i64) -> bool {
    weekday(t_unix) < 5 && (9..18).contains(&hour_of_day(t_unix))
}

/// Uniform in [0, 1) with 53 bits.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the log argument in (0, 1].
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Generates a seeded workload (see the module docs for its shape).
pub fn generate_jobs(p: &GenParams) -> Result<Vec<Job>, JobError> {
    if p.n_jobs.is_some_and(|n| n > MAX_JOBS) {
        return Err(JobError::TooMany);
    }
    if !(p.max_horizon_s.is_finite() && p.max_horizon_s > 0.0) {
        return Err(JobError::Param("the horizon must be positive".into()));
    }
    if !(p.load.is_finite() && p.load > 0.0) || p.capacity_gpus == 0 || p.max_gpus == 0 {
        return Err(JobError::Param(
            "load, capacity and max_gpus must be positive".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    // Size CDF for P(k) ∝ k^-alpha.
    let weights: Vec<f64> = (1..=p.max_gpus)
        .map(|k| (k as f64).powf(-SIZE_ALPHA))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut sizes = Vec::new();
    let mut works = Vec::new();
    let mut gpu_seconds = 0.0;
    let fill = p.load * p.capacity_gpus as f64 * p.max_horizon_s;
    loop {
        match p.n_jobs {
            Some(n) if sizes.len() >= n => break,
            None if gpu_seconds >= fill => break,
            _ => {}
        }
        if sizes.len() >= MAX_JOBS {
            return Err(JobError::TooMany);
        }
        let u = unit(&mut rng);
        let k = cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1) as u32 + 1;
        let d = loop {
            let d = (LOGN_MEDIAN_S.ln() + LOGN_SIGMA * std_normal(&mut rng)).exp();
            if (MIN_DURATION_S..=MAX_DURATION_S).contains(&d) {
                break d;
            }
        };
        gpu_seconds += k as f64 * d;
        sizes.push(k);
        works.push(d);
    }
    // Horizon that gives the requested offered load, capped by the simulation length.
    let horizon = (gpu_seconds / (p.load * p.capacity_gpus as f64))
        .min(p.max_horizon_s)
        .max(1.0);
    // Arrival instants: rejection sampling against the business-hour rate shape.
    let n = sizes.len();
    let mut arrivals = Vec::with_capacity(n);
    while arrivals.len() < n {
        let t = unit(&mut rng) * horizon;
        let rate = if is_business_hour(p.start_unix + t as i64) {
            BUSINESS_FACTOR
        } else {
            1.0
        };
        if unit(&mut rng) * BUSINESS_FACTOR < rate {
            arrivals.push(t);
        }
    }
    arrivals.sort_by(f64::total_cmp);
    Ok(arrivals
        .into_iter()
        .zip(sizes.into_iter().zip(works))
        .enumerate()
        .map(|(i, (a, (k, d)))| Job {
            id: i as u32,
            arrival_s: a,
            gpus: k,
            work_s: d,
            deadline_s: None,
        })
        .collect())
}
