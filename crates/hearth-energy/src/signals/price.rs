//! Electricity prices: a CSV file (hourly or 5-minute) or an HTTP JSON endpoint.
//!
//! CSV: a header row naming the columns, then one row per interval, `$/MWh`.
//! * `hour,price` (also `interval5,price` for 5-minute data): an index, `hour 1` = the first hour
//!   of the year (the index may start at 0 or 1; it is relative to the first row). Looked up
//!   cyclically by the time within the year, so a year of prices replays on any year.
//! * `timestamp,price`: RFC 3339 or Unix seconds, uniformly spaced; looked up by absolute time.
//!
//! Accepted price headers: `price`, `usd_per_mwh`, `lmp`. Errors name the line. Bounded: at most
//! [`MAX_ROWS`] rows, [`MAX_LINE`] bytes per line.
//!
//! JSON (endpoint or `POST /api/price`): `{"usd_per_mwh": 42.5}` (also `price`), optionally
//! `"forecast": {"start": <ts>, "step_s": 3600, "usd_per_mwh": [..]}`.

use super::time::{parse_timestamp, year_start_s};
use serde::{Deserialize, Serialize};

/// Most data rows a price CSV may have.
pub const MAX_ROWS: usize = 1_000_000;
/// Longest CSV line accepted, bytes.
pub const MAX_LINE: usize = 4096;
/// Prices outside this band ($/MWh) are input errors, not market events.
pub const PRICE_BOUND: f64 = 100_000.0;

/// A rejected price input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PriceError {
    /// The CSV is malformed or out of range.
    #[error("price CSV line {line}: {msg}")]
    Csv {
        /// 1-based line number of the offending line.
        line: usize,
        /// What was wrong.
        msg: String,
    },
    /// The JSON body is malformed or out of range (message says what).
    #[error("price JSON: {0}")]
    Json(String),
}

/// How rows map to time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timebase {
    /// Row `i` covers `[start + i·step, start + (i+1)·step)`.
    Absolute {
        /// Start of row 0, Unix seconds.
        start_s: f64,
    },
    /// Row `i` covers the `i`-th interval of the year, repeating every year.
    YearIndex,
}

/// A uniformly spaced price series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriceSeries {
    /// How row indices map to time.
    pub timebase: Timebase,
    /// Seconds each row covers.
    pub step_s: f64,
    /// One price per row, $/MWh.
    pub usd_per_mwh: Vec<f64>,
}

impl PriceSeries {
    /// Index of the row covering `t_s`, if any.
    pub fn index_at(&self, t_s: f64) -> Option<usize> {
        let n = self.usd_per_mwh.len();
        if n == 0 || !t_s.is_finite() {
            return None;
        }
        match self.timebase {
            Timebase::Absolute { start_s } => {
                let i = ((t_s - start_s) / self.step_s).floor();
                (i >= 0.0 && i < n as f64).then_some(i as usize)
            }
            Timebase::YearIndex => {
                let i = ((t_s - year_start_s(t_s)) / self.step_s).floor() as usize;
                Some(i % n)
            }
        }
    }

    /// The price at `t_s`.
    pub fn at(&self, t_s: f64) -> Option<f64> {
        self.index_at(t_s).map(|i| self.usd_per_mwh[i])
    }

    /// Start time of the row covering `t_s` (for building a forecast).
    pub fn row_start(&self, t_s: f64) -> Option<f64> {
        let i = self.index_at(t_s)?;
        Some(match self.timebase {
            Timebase::Absolute { start_s } => start_s + i as f64 * self.step_s,
            Timebase::YearIndex => {
                let ys = year_start_s(t_s);
                ys + (((t_s - ys) / self.step_s).floor()) * self.step_s
            }
        })
    }
}

fn check_price(p: f64) -> Result<f64, String> {
    if p.is_finite() && p.abs() <= PRICE_BOUND {
        Ok(p)
    } else {
        Err(format!("price {p} is not a plausible $/MWh"))
    }
}

/// Parses a price CSV (see the module docs).
pub fn parse_csv(text: &str) -> Result<PriceSeries, PriceError> {
    let err = |line: usize, msg: String| PriceError::Csv { line, msg };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (hline, header) = lines.next().ok_or_else(|| {
        err(
            1,
            "empty file: expected a header such as `hour,price`".into(),
        )
    })?;
    if header.len() > MAX_LINE {
        return Err(err(hline, format!("longer than {MAX_LINE} bytes")));
    }
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let time_col = cols
        .iter()
        .position(|c| {
            [
                "hour",
                "interval5",
                "interval",
                "timestamp",
                "time",
                "datetime",
            ]
            .contains(&c.as_str())
        })
        .ok_or_else(|| {
            err(
                hline,
                format!("header {header:?} names no time column (hour, interval5, timestamp)"),
            )
        })?;
    let price_col = cols
        .iter()
        .position(|c| ["price", "usd_per_mwh", "lmp", "$/mwh"].contains(&c.as_str()))
        .ok_or_else(|| {
            err(
                hline,
                format!("header {header:?} names no price column (price, usd_per_mwh)"),
            )
        })?;
    let kind = cols[time_col].as_str();
    let indexed = kind == "hour" || kind.starts_with("interval");
    let index_step = if kind == "hour" { 3600.0 } else { 300.0 };

    let mut first_t: Option<f64> = None;
    // Index rows must be consecutive; timestamp rows set their step from the first two.
    let mut step: Option<f64> = indexed.then_some(index_step);
    let mut prev: Option<(usize, f64)> = None;
    let mut prices = Vec::new();
    for (line, l) in lines {
        if l.len() > MAX_LINE {
            return Err(err(line, format!("longer than {MAX_LINE} bytes")));
        }
        if prices.len() >= MAX_ROWS {
            return Err(err(line, format!("more than {MAX_ROWS} rows")));
        }
        let fields: Vec<&str> = l.split(',').map(|f| f.trim().trim_matches('"')).collect();
        if fields.len() != cols.len() {
            return Err(err(
                line,
                format!("{} fields, header has {}", fields.len(), cols.len()),
            ));
        }
        let p: f64 = fields[price_col].parse().map_err(|_| {
            err(
                line,
                format!("price {:?} is not a number", fields[price_col]),
            )
        })?;
        let p = check_price(p).map_err(|m| err(line, m))?;
        let t = if indexed {
            let i: u64 = fields[time_col].parse().map_err(|_| {
                err(
                    line,
                    format!(
                        "{kind} {:?} is not a non-negative integer",
                        fields[time_col]
                    ),
                )
            })?;
            i as f64 * index_step
        } else {
            parse_timestamp(fields[time_col]).map_err(|m| err(line, m))?
        };
        if let Some((pline, pt)) = prev {
            let d = t - pt;
            if d <= 0.0 {
                return Err(err(line, "time does not increase".into()));
            }
            match step {
                None => step = Some(d),
                Some(s) if (d - s).abs() > 1e-6 => {
                    return Err(err(
                        line,
                        format!(
                            "rows are not evenly spaced ({d} s after line {pline}, expected {s} s)"
                        ),
                    ))
                }
                Some(_) => {}
            }
        } else {
            first_t = Some(t);
        }
        prev = Some((line, t));
        prices.push(p);
    }
    let Some(first_t) = first_t else {
        return Err(err(hline, "no price rows".into()));
    };
    let step_s = step.unwrap_or(if indexed { index_step } else { 3600.0 });
    let timebase = if indexed {
        Timebase::YearIndex
    } else {
        Timebase::Absolute { start_s: first_t }
    };
    Ok(PriceSeries {
        timebase,
        step_s,
        usd_per_mwh: prices,
    })
}

/// A price update from JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriceUpdate {
    /// The price now, $/MWh.
    pub usd_per_mwh: f64,
    /// Prices ahead, if the body carried a forecast (absolute time base).
    pub forecast: Option<PriceSeries>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceJson {
    #[serde(alias = "price")]
    usd_per_mwh: f64,
    #[serde(default)]
    forecast: Option<ForecastJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastJson {
    start: serde_json::Value,
    step_s: f64,
    usd_per_mwh: Vec<f64>,
}

/// Most entries a forecast may carry (a week of 5-minute prices).
pub const MAX_FORECAST: usize = 7 * 24 * 12;

/// Parses a JSON price body (see the module docs). The caller bounds the body size.
pub fn parse_json(body: &[u8]) -> Result<PriceUpdate, PriceError> {
    let j: PriceJson = serde_json::from_slice(body).map_err(|e| PriceError::Json(e.to_string()))?;
    let p = check_price(j.usd_per_mwh).map_err(PriceError::Json)?;
    let forecast = match j.forecast {
        None => None,
        Some(f) => {
            if f.usd_per_mwh.is_empty() || f.usd_per_mwh.len() > MAX_FORECAST {
                return Err(PriceError::Json(format!(
                    "forecast must have 1..={MAX_FORECAST} prices"
                )));
            }
            if !(f.step_s.is_finite() && f.step_s >= 60.0 && f.step_s <= 86_400.0) {
                return Err(PriceError::Json(format!(
                    "forecast step_s {} outside 60..=86400",
                    f.step_s
                )));
            }
            for &x in &f.usd_per_mwh {
                check_price(x).map_err(PriceError::Json)?;
            }
            let start_s = match &f.start {
                serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                serde_json::Value::String(s) => parse_timestamp(s).map_err(PriceError::Json)?,
                _ => f64::NAN,
            };
            if !start_s.is_finite() {
                return Err(PriceError::Json(
                    "forecast start must be a timestamp".into(),
                ));
            }
            Some(PriceSeries {
                timebase: Timebase::Absolute { start_s },
                step_s: f.step_s,
                usd_per_mwh: f.usd_per_mwh,
            })
        }
    };
    Ok(PriceUpdate {
        usd_per_mwh: p,
        forecast,
    })
}
