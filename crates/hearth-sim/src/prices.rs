//! Electricity price traces: parsing, validation and resampling.
//!
//! Two CSV forms are accepted, each with an optional header line:
//! - `hour,price`: hour 1 is the first hour after a base instant given by the caller (the shipped
//!   DISPATCHES files use this form, one row per hour of a year);
//! - `timestamp,price`: RFC 3339 (`2019-01-01T00:00:00Z`, offsets allowed) or unix seconds.
//!
//! Prices are $/MWh. The interval (5 minutes or 1 hour) is taken from the first two rows.
//!
//! **Invariants of a [`PriceTrace`]:** at least one interval; every price finite and within
//! ±[`MAX_ABS_PRICE`]; the intervals are contiguous (no gaps, no duplicates, strictly increasing).
//! Unsorted or duplicate timestamps are always errors. A gap (a missing interval) is an error
//! unless [`GapPolicy::ForwardFill`] is chosen, in which case the previous price is repeated and
//! the number of filled intervals is recorded in [`PriceTrace::filled`] (the CLI prints it).
//! Every error names the 1-based line of the input it comes from.

use crate::time::{parse_rfc3339, TimeError};
use thiserror::Error;

/// Longest accepted line, in bytes (a decoder of outside input is bounded).
pub const MAX_LINE: usize = 256;
/// Most rows accepted: 10 years of 5-minute intervals.
pub const MAX_ROWS: usize = 10 * 366 * 288;
/// Most intervals forward-filled in one gap (one week of 5-minute intervals).
pub const MAX_GAP_FILL: usize = 7 * 288;
/// Largest |price| accepted, $/MWh (real markets cap well below this).
pub const MAX_ABS_PRICE: f64 = 100_000.0;

/// What to do with a missing interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapPolicy {
    /// A gap is an error naming the line after it.
    Error,
    /// Repeat the previous price over the gap and count the filled intervals.
    ForwardFill,
}

/// A validated, contiguous price series.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTrace {
    /// Unix seconds of the start of the first interval.
    pub start_unix: i64,
    /// Interval length in seconds (300 or 3600).
    pub step_s: u32,
    /// $/MWh, one per interval.
    pub prices: Vec<f64>,
    /// Intervals that were forward-filled over gaps.
    pub filled: usize,
}

/// A price trace that could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum TraceError {
    /// A row could not be parsed or broke an invariant.
    #[error("line {line}: {msg}")]
    Line {
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// The file has a header but no data rows.
    #[error("the trace has no data rows")]
    Empty,
    /// More than [`MAX_ROWS`] rows.
    #[error("the trace has more than {MAX_ROWS} rows")]
    TooManyRows,
    /// Resampling between these interval lengths is not supported.
    #[error("cannot resample a {from}s trace to {to}s (only 1 h <-> 5 min)")]
    Resample {
        /// Interval length of the trace, seconds.
        from: u32,
        /// Requested interval length, seconds.
        to: u32,
    },
}

fn line_err(line: usize, msg: impl Into<String>) -> TraceError {
    TraceError::Line {
        line,
        msg: msg.into(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum KeyKind {
    Hour,
    Timestamp,
}

/// Parses a price CSV. `hour_base_unix` is the instant that hour 1 starts at (used only by the
/// `hour,price` form).
pub fn parse_prices(
    text: &str,
    gaps: GapPolicy,
    hour_base_unix: i64,
) -> Result<PriceTrace, TraceError> {
    let mut kind: Option<KeyKind> = None;
    let mut rows: Vec<(usize, i64, f64)> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        if raw.len() > MAX_LINE {
            return Err(line_err(line, format!("line longer than {MAX_LINE} bytes")));
        }
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut fields = l.split(',').map(str::trim);
        let (Some(key), Some(val)) = (fields.next(), fields.next()) else {
            return Err(line_err(line, "expected two fields: time,price"));
        };
        if fields.next().is_some() {
            return Err(line_err(line, "expected two fields: time,price"));
        }
        if rows.is_empty() && kind.is_none() && val.parse::<f64>().is_err() {
            // Header line: the first column's name picks the form.
            kind = Some(match key.to_ascii_lowercase().as_str() {
                "hour" | "hour_ending" | "he" => KeyKind::Hour,
                "timestamp" | "time" | "datetime" | "ts" | "unix" => KeyKind::Timestamp,
                other => {
                    return Err(line_err(
                        line,
                        format!("unknown first column `{other}` (expected hour or timestamp)"),
                    ))
                }
            });
            continue;
        }
        let k = *kind.get_or_insert(KeyKind::Timestamp);
        let t = match k {
            KeyKind::Hour => {
                let h: i64 = key
                    .parse()
                    .map_err(|_| line_err(line, format!("hour `{key}` is not an integer")))?;
                if !(1..=(MAX_ROWS as i64)).contains(&h) {
                    return Err(line_err(line, format!("hour {h} out of range (1-based)")));
                }
                hour_base_unix + (h - 1) * 3600
            }
            KeyKind::Timestamp => parse_time(key).map_err(|e| line_err(line, e.to_string()))?,
        };
        let p: f64 = val
            .parse()
            .map_err(|_| line_err(line, format!("price `{val}` is not a number")))?;
        if !p.is_finite() {
            return Err(line_err(line, format!("price `{val}` is not finite")));
        }
        if p.abs() > MAX_ABS_PRICE {
            return Err(line_err(
                line,
                format!("price {p} $/MWh beyond ±{MAX_ABS_PRICE}"),
            ));
        }
        if rows.len() >= MAX_ROWS {
            return Err(TraceError::TooManyRows);
        }
        rows.push((line, t, p));
    }
    let Some(&(_, t0, p0)) = rows.first() else {
        return Err(TraceError::Empty);
    };
    let step = if rows.len() == 1 {
        3600
    } else {
        let (l1, t1, _) = rows[1];
        let d = t1 - t0;
        if d <= 0 {
            return Err(line_err(
                l1,
                "timestamps must be strictly increasing (unsorted or duplicate row)",
            ));
        }
        if d != 300 && d != 3600 {
            return Err(line_err(
                l1,
                format!("interval of {d} s between the first two rows; expected 300 (5 min) or 3600 (1 h)"),
            ));
        }
        d
    };
    let mut prices = Vec::with_capacity(rows.len());
    prices.push(p0);
    let mut filled = 0;
    let mut prev_t = t0;
    for &(line, t, p) in &rows[1..] {
        let d = t - prev_t;
        if d <= 0 {
            return Err(line_err(
                line,
                "timestamps must be strictly increasing (unsorted or duplicate row)",
            ));
        }
        if d % step != 0 {
            return Err(line_err(
                line,
                format!("timestamp not on the {step} s grid of the trace"),
            ));
        }
        let missing = (d / step - 1) as usize;
        if missing > 0 {
            match gaps {
                GapPolicy::Error => {
                    return Err(line_err(
                        line,
                        format!("gap: {missing} missing interval(s) before this row"),
                    ))
                }
                GapPolicy::ForwardFill => {
                    if missing > MAX_GAP_FILL {
                        return Err(line_err(
                            line,
                            format!("gap of {missing} intervals is too long to fill"),
                        ));
                    }
                    let last = *prices.last().unwrap_or(&p0);
                    prices.extend(std::iter::repeat_n(last, missing));
                    filled += missing;
                    if prices.len() > MAX_ROWS {
                        return Err(TraceError::TooManyRows);
                    }
                }
            }
        }
        prices.push(p);
        prev_t = t;
    }
    Ok(PriceTrace {
        start_unix: t0,
        step_s: step as u32,
        prices,
        filled,
    })
}

/// Largest |unix seconds| accepted (about the year 5138), so differences cannot overflow.
const MAX_ABS_UNIX: i64 = 100_000_000_000;

fn parse_time(s: &str) -> Result<i64, TimeError> {
    if let Ok(v) = s.parse::<i64>() {
        if v.unsigned_abs() > MAX_ABS_UNIX as u64 {
            return Err(TimeError(s.chars().take(64).collect()));
        }
        return Ok(v);
    }
    parse_rfc3339(s)
}

impl PriceTrace {
    /// Number of intervals.
    pub fn len(&self) -> usize {
        self.prices.len()
    }
    /// True if there are no intervals (never, for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
    /// Length of the trace in seconds.
    pub fn duration_s(&self) -> f64 {
        self.prices.len() as f64 * self.step_s as f64
    }
    /// Returns the trace at another interval: 1 h → 5 min repeats each hourly price (the price
    /// is a step function of time); 5 min → 1 h averages whole hours (a trailing partial hour is
    /// averaged over the intervals present).
    pub fn resample(&self, step_s: u32) -> Result<PriceTrace, TraceError> {
        if step_s == self.step_s {
            return Ok(self.clone());
        }
        let prices = match (self.step_s, step_s) {
            (3600, 300) => {
                if self.prices.len() * 12 > MAX_ROWS {
                    return Err(TraceError::TooManyRows);
                }
                self.prices
                    .iter()
                    .flat_map(|&p| std::iter::repeat_n(p, 12))
                    .collect()
            }
            (300, 3600) => self
                .prices
                .chunks(12)
                .map(|c| c.iter().sum::<f64>() / c.len() as f64)
                .collect(),
            (from, to) => return Err(TraceError::Resample { from, to }),
        };
        Ok(PriceTrace {
            start_unix: self.start_unix,
            step_s,
            prices,
            filled: self.filled * (self.step_s as usize) / (step_s as usize),
        })
    }
}
