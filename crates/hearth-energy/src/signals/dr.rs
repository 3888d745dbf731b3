//! Demand-response events, shaped after OpenADR 3.
//!
//! `POST /api/dr/events` accepts either an OpenADR 3 `event` object
//!
//! ```json
//! {"id": "evt-42", "programID": "p1", "eventName": "peak",
//!  "intervalPeriod": {"start": "2026-11-24T17:00:00Z", "duration": "PT1H"},
//!  "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [5.0]}]}]}
//! ```
//!
//! where `IMPORT_CAPACITY_LIMIT` (kW) limits the site, and `SIMPLE` with a level ≥ 1 (or a
//! payload type `CURTAIL`) idles every device; or the short form
//! `{"id": "evt-42", "start": "now" | <ts>, "duration": "PT1H" | "end": <ts>, "target": "curtail" | {"limit_kw": 5}}`.
//!
//! A missing start means now. Validation: id 1..=128 visible characters, duration in
//! (0, 7 days], limit finite and ≥ 0, at most [`MAX_PAYLOADS`] payloads. The caller bounds the
//! body size; [`DrBook`] bounds how many events are kept.

use super::time::{parse_duration, parse_timestamp};
use crate::policy::{DrEvent, DrTarget};
use serde_json::Value;

/// Most events a [`DrBook`] keeps pending.
pub const MAX_EVENTS: usize = 256;
/// Most intervals, and most payloads, read from one OpenADR event; the rest are ignored.
pub const MAX_PAYLOADS: usize = 16;
/// Longest accepted event, seconds (7 days).
pub const MAX_DURATION_S: f64 = 7.0 * 86_400.0;

/// A rejected demand-response event; the message says what was wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("demand-response event: {0}")]
pub struct DrError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, DrError> {
    Err(DrError(msg.into()))
}

fn time_field(v: &Value, now_s: f64, what: &str) -> Result<f64, DrError> {
    match v {
        Value::Null => Ok(now_s),
        Value::String(s) if s.eq_ignore_ascii_case("now") => Ok(now_s),
        Value::String(s) => parse_timestamp(s).map_err(DrError),
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| DrError(format!("{what} is not a finite number"))),
        _ => bad(format!("{what} must be a timestamp string or number")),
    }
}

fn duration_field(v: &Value) -> Result<Option<f64>, DrError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => parse_duration(s).map(Some).map_err(DrError),
        Value::Number(n) => Ok(n.as_f64()),
        _ => bad("duration must be an ISO 8601 string or seconds"),
    }
}

fn limit_w(kw: f64) -> Result<DrTarget, DrError> {
    if (0.0..=1e7).contains(&kw) {
        Ok(DrTarget::LimitW(kw * 1000.0))
    } else {
        bad(format!("limit {kw} kW is not a plausible site limit"))
    }
}

/// Parses and validates an event body at `now_s`.
pub fn parse_event(body: &[u8], now_s: f64) -> Result<DrEvent, DrError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DrError(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| DrError("must be a JSON object".into()))?;
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return bad("missing id"),
    };
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return bad("id must be 1..=128 visible ASCII characters");
    }
    let (start_s, duration, end, target) = if let Some(period) = obj.get("intervalPeriod") {
        // OpenADR 3 form.
        let start = time_field(period.get("start").unwrap_or(&Value::Null), now_s, "start")?;
        let dur = duration_field(period.get("duration").unwrap_or(&Value::Null))?;
        let intervals = obj
            .get("intervals")
            .and_then(Value::as_array)
            .ok_or_else(|| DrError("OpenADR event needs intervals".into()))?;
        let mut target = None;
        let payloads = intervals
            .iter()
            .take(MAX_PAYLOADS)
            .filter_map(|i| i.get("payloads").and_then(Value::as_array))
            .flatten()
            .take(MAX_PAYLOADS);
        for p in payloads {
            let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
            let value = p
                .get("values")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_f64);
            let t = match kind {
                "IMPORT_CAPACITY_LIMIT" => {
                    limit_w(value.ok_or_else(|| DrError("capacity limit needs a value".into()))?)?
                }
                "SIMPLE" if value.unwrap_or(0.0) >= 1.0 => DrTarget::Curtail,
                "SIMPLE" => continue,
                "CURTAIL" => DrTarget::Curtail,
                other => return bad(format!("unsupported payload type {other:?}")),
            };
            // Curtail wins over a limit.
            if target.is_none() || t == DrTarget::Curtail {
                target = Some(t);
            }
        }
        let target = target.ok_or_else(|| DrError("no usable payload".into()))?;
        (start, dur, None, target)
    } else {
        let start = time_field(obj.get("start").unwrap_or(&Value::Null), now_s, "start")?;
        let dur = duration_field(obj.get("duration").unwrap_or(&Value::Null))?;
        let end = match obj.get("end") {
            None | Some(Value::Null) => None,
            Some(v) => Some(time_field(v, now_s, "end")?),
        };
        let target = match obj.get("target") {
            Some(Value::String(s)) if s == "curtail" => DrTarget::Curtail,
            Some(Value::Object(o)) => match o.get("limit_kw").and_then(Value::as_f64) {
                Some(kw) => limit_w(kw)?,
                None => return bad("target object needs limit_kw"),
            },
            _ => return bad("target must be \"curtail\" or {\"limit_kw\": x}"),
        };
        (start, dur, end, target)
    };
    let end_s = match (duration, end) {
        (Some(d), _) => start_s + d,
        (None, Some(e)) => e,
        (None, None) => return bad("needs a duration or an end"),
    };
    let len = end_s - start_s;
    if !(len > 0.0 && len <= MAX_DURATION_S) {
        return bad(format!("duration {len} s outside (0, 7 days]"));
    }
    Ok(DrEvent {
        id,
        start_s,
        end_s,
        target,
    })
}

/// The events the agent knows: bounded, replaced by id, expired ones dropped.
#[derive(Clone, Debug, Default)]
pub struct DrBook {
    events: Vec<DrEvent>,
}

impl DrBook {
    /// Adds or replaces (same id) an event. Drops expired events first; refuses a new event
    /// when [`MAX_EVENTS`] are pending.
    pub fn upsert(&mut self, ev: DrEvent, now_s: f64) -> Result<(), DrError> {
        self.expire(now_s);
        if let Some(e) = self.events.iter_mut().find(|e| e.id == ev.id) {
            *e = ev;
            return Ok(());
        }
        if self.events.len() >= MAX_EVENTS {
            return bad(format!("{MAX_EVENTS} events already pending"));
        }
        self.events.push(ev);
        Ok(())
    }

    /// Removes an event by id (cancel). Returns whether it existed.
    pub fn cancel(&mut self, id: &str) -> bool {
        let n = self.events.len();
        self.events.retain(|e| e.id != id);
        n != self.events.len()
    }

    /// Drops events that ended at or before `now_s`.
    pub fn expire(&mut self, now_s: f64) {
        self.events.retain(|e| e.end_s > now_s);
    }

    /// The events kept, in insertion order (expired ones too until the next `expire`).
    pub fn events(&self) -> &[DrEvent] {
        &self.events
    }
}
