//! Small, total parsers for the time formats signals use: RFC 3339 timestamps and ISO 8601
//! durations (the subset OpenADR 3 uses: `PnDTnHnMnS`, `PnW`).

/// Parses an RFC 3339 timestamp (`2026-11-24T08:00:00Z`, `…+01:00`, fractional seconds) or a
/// plain number of Unix seconds, into Unix seconds.
pub fn parse_timestamp(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(x) = s.parse::<f64>() {
        return if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("timestamp {s:?} is not finite"))
        };
    }
    let bad = || format!("timestamp {s:?} is not RFC 3339 (e.g. 2026-11-24T08:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 16 || b.len() > 40 || !s.is_ascii() {
        return Err(bad());
    }
    let num = |a: usize, z: usize| -> Result<i64, String> {
        s.get(a..z)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return Err(bad());
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi) = (num(11, 13)?, num(14, 16)?);
    if b[13] != b':' {
        return Err(bad());
    }
    let mut i = 16;
    let mut sec = 0.0;
    if b.get(i) == Some(&b':') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
            end += 1;
        }
        sec = s[start..end].parse::<f64>().map_err(|_| bad())?;
        i = end;
    }
    let offset_s = match &s[i..] {
        "" | "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh = num(i + 1, i + 3)?;
            let om = num(i + 4, i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec >= 61.0 {
        return Err(bad());
    }
    let days = days_from_civil(y, mo, d);
    Ok((days * 86_400 + h * 3600 + mi * 60 - offset_s) as f64 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats Unix seconds as RFC 3339 UTC to the second (`2026-11-24T08:00:00Z`).
pub fn format_timestamp(t_s: f64) -> String {
    if !t_s.is_finite() {
        return format!("{t_s}");
    }
    let secs = t_s.clamp(-62e9, 253e9).floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of days_from_civil (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Unix seconds of 00:00 UTC on January 1st of the year containing `t_s`.
pub fn year_start_s(t_s: f64) -> f64 {
    // Years 0..=9999 are all a price series can mean; clamping keeps the arithmetic in range.
    let t_s = if t_s.is_nan() {
        0.0
    } else {
        t_s.clamp(-62e9, 253e9)
    };
    let days = (t_s / 86_400.0).floor() as i64;
    // Invert days_from_civil for the year only.
    let mut y = 1970 + days.div_euclid(365);
    while days_from_civil(y, 1, 1) > days {
        y -= 1;
    }
    while days_from_civil(y + 1, 1, 1) <= days {
        y += 1;
    }
    (days_from_civil(y, 1, 1) * 86_400) as f64
}

/// Parses an ISO 8601 duration (`PT1H`, `PT15M`, `PT30S`, `P1DT2H`, `P1W`, fractional seconds)
/// into seconds. Years and months are refused (their length is ambiguous).
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let bad = |why: &str| format!("duration {s:?}: {why} (e.g. PT1H, PT15M, P1DT2H)");
    let t = s.trim();
    let rest = t
        .strip_prefix('P')
        .or_else(|| t.strip_prefix('p'))
        .ok_or_else(|| bad("must start with P"))?;
    if rest.is_empty() || rest.len() > 32 {
        return Err(bad("empty or too long"));
    }
    let mut total = 0.0;
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in rest.chars() {
        match c {
            'T' | 't' => {
                if in_time || !num.is_empty() {
                    return Err(bad("misplaced T"));
                }
                in_time = true;
            }
            '0'..='9' | '.' => num.push(c),
            u => {
                let v: f64 = num.parse().map_err(|_| bad("missing number"))?;
                num.clear();
                let mult = match (u.to_ascii_uppercase(), in_time) {
                    ('W', false) => 7.0 * 86_400.0,
                    ('D', false) => 86_400.0,
                    ('H', true) => 3600.0,
                    ('M', true) => 60.0,
                    ('S', true) => 1.0,
                    ('Y', false) | ('M', false) => {
                        return Err(bad("years and months are not supported"))
                    }
                    _ => return Err(bad("unknown unit")),
                };
                total += v * mult;
                any = true;
            }
        }
    }
    if !num.is_empty() || !any {
        return Err(bad("trailing number without unit"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0.0);
        assert_eq!(
            parse_timestamp("2026-11-24T08:00:00Z").unwrap(),
            1_795_478_400.0 + 8.0 * 3600.0
        );
        assert_eq!(
            parse_timestamp("2026-11-24T09:00:00+01:00").unwrap(),
            parse_timestamp("2026-11-24T08:00:00Z").unwrap()
        );
        assert_eq!(
            parse_timestamp("2000-02-29T00:00:00.5Z").unwrap(),
            951_782_400.5
        );
        assert_eq!(parse_timestamp("12345").unwrap(), 12345.0);
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-24T08:00:00Q",
            "NaN",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
        assert_eq!(year_start_s(1_795_478_400.0 + 5.0), 1_767_225_600.0);
        assert_eq!(year_start_s(f64::MAX), year_start_s(253e9));
        assert!(
            format_timestamp(1e300).ends_with('Z'),
            "{}",
            format_timestamp(1e300)
        );
        for ts in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2026-11-24T08:05:09Z",
            "1969-12-31T23:00:00Z",
        ] {
            assert_eq!(format_timestamp(parse_timestamp(ts).unwrap()), ts);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT1H").unwrap(), 3600.0);
        assert_eq!(parse_duration("PT15M").unwrap(), 900.0);
        assert_eq!(
            parse_duration("P1DT2H30S").unwrap(),
            86_400.0 + 7200.0 + 30.0
        );
        assert_eq!(parse_duration("PT0.5S").unwrap(), 0.5);
        for bad in ["", "1H", "P", "PT", "P1M", "PT5", "PTXS", "P1H"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
