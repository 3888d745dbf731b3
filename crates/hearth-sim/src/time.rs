//! Calendar helpers on unix seconds (UTC): RFC 3339 parsing, hour of day, day of week.
//!
//! Small and dependency-free on purpose: the simulator only needs civil dates for business-hour
//! workload shaping and for reading timestamped traces.

use thiserror::Error;

/// A timestamp that could not be read.
#[derive(Debug, Error, PartialEq)]
#[error("`{0}` is not an RFC 3339 timestamp or unix seconds")]
pub struct TimeError(pub String);

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of January 1st, 00:00 UTC, of `year`.
pub fn year_start_unix(year: i64) -> i64 {
    days_from_civil(year, 1, 1) * 86_400
}

/// Hour of day, 0..24, UTC.
pub fn hour_of_day(t: i64) -> u32 {
    (t.rem_euclid(86_400) / 3600) as u32
}

/// Day of week, 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday).
pub fn weekday(t: i64) -> u32 {
    ((t.div_euclid(86_400) + 3).rem_euclid(7)) as u32
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (a space may replace `T`). Fractions of a
/// second are dropped.
pub fn parse_rfc3339(s: &str) -> Result<i64, TimeError> {
    let err = || TimeError(s.chars().take(64).collect());
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| err())
        } else {
            Err(err())
        }
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return Err(err());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo as u32) as i64 {
        return Err(err());
    }
    if h > 23 || mi > 59 || se > 60 {
        return Err(err());
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err());
        }
    }
    let offset = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&c) if (c == b'+' || c == b'-') && i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(err());
            }
            let o = oh * 3600 + om * 60;
            if c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(err()),
    };
    Ok(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2019-01-01T00:00:00Z"), Ok(1_546_300_800));
        assert_eq!(
            parse_rfc3339("2019-01-01T01:00:00+01:00"),
            Ok(1_546_300_800)
        );
        assert_eq!(parse_rfc3339("2020-02-29 12:30:15.250Z"), Ok(1_582_979_415));
        assert!(parse_rfc3339("2019-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2019-01-01T24:00:00Z").is_err());
        assert!(parse_rfc3339("2019-01-01").is_err());
    }

    #[test]
    fn weekday_and_hour() {
        // 2019-01-01 was a Tuesday.
        let t = year_start_unix(2019);
        assert_eq!(t, 1_546_300_800);
        assert_eq!(weekday(t), 1);
        assert_eq!(hour_of_day(t + 13 * 3600 + 59), 13);
    }
}
