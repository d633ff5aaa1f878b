//! Times as users read and write them: RFC 3339 in UTC, dates, and
//! durations such as `7d`. No time zone database: everything is UTC.

use policy::calendar::{civil_from_days as civil, days_from_civil};

/// `YYYY-MM-DD` of a Unix time in milliseconds.
pub fn date(ms: u64) -> String {
    let (y, m, d) = civil((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-30T16:35:14.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(ms),
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// A duration such as `500ms`, `10s`, `5m`, `12h`, `7d`, `4w`: the policy's
/// own syntax, so the command line and the policy file agree.
pub use policy::retention::parse_duration_ms;

/// A point in time as a user writes it on the command line: RFC 3339 in
/// UTC (`2026-11-30T08:00:00Z`, seconds optional, fractions allowed), a
/// date (`2026-11-30`, its midnight UTC), or a duration ago (`7d`, `12h`).
pub fn parse_time_ms(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Some(ago) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(ago));
    }
    let bad = || {
        format!(
            "{t:?} is not a time: use RFC 3339 in UTC (2026-11-30T08:00:00Z), a date (2026-11-30), or a duration ago (7d, 12h)"
        )
    };
    let (date_part, time_part) = match t.split_once(['T', 't', ' ']) {
        Some((d, rest)) => (d, Some(rest)),
        None => (t, None),
    };
    let mut it = date_part.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    if civil(days) != (y, m, d) {
        return Err(bad());
    }
    let mut ms = days as u64 * 86_400_000;
    if let Some(time) = time_part {
        let time = time
            .strip_suffix(['Z', 'z'])
            .or_else(|| time.strip_suffix("+00:00"))
            .ok_or_else(|| format!("{t:?}: give the time in UTC, ending in Z"))?;
        let (hms, frac) = match time.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (time, None),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |s: &str, max: u64| s.parse::<u64>().ok().filter(|v| *v <= max).ok_or_else(bad);
        let h = num(parts[0], 23)?;
        let mi = num(parts[1], 59)?;
        let s = match parts.get(2) {
            Some(s) => num(s, 60)?,
            None => 0,
        };
        ms += ((h * 60 + mi) * 60 + s) * 1000;
        if let Some(f) = frac {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            ms += digits.parse::<u64>().map_err(|_| bad())?;
        }
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_in_utc() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(rfc3339_ms(1_764_520_514_123), "2025-11-30T16:35:14.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [0, 951_782_400_000, 1_764_520_514_123, 4_102_444_800_000] {
            assert_eq!(parse_time_ms(&rfc3339_ms(ms), 0), Ok(ms));
        }
        assert_eq!(parse_time_ms("2000-02-29", 0), Ok(951_782_400_000));
        assert_eq!(parse_time_ms("2000-02-29T00:01Z", 0), Ok(951_782_460_000));
        assert_eq!(parse_time_ms("7d", 10 * 86_400_000), Ok(3 * 86_400_000));
        for bad in [
            "2001-02-29",
            "2000-13-01",
            "yesterday",
            "2000-01-01T10:00",
            "2000-01-01T25:00Z",
            "7y",
            "",
        ] {
            assert!(parse_time_ms(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_ms("90d"), Some(90 * 86_400_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("99999999999999999999d"), None);
    }
}
