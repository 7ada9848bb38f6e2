//! Time as the CRM and the wire write it: RFC 3339 timestamps normalised to UTC, and the wall
//! clock in milliseconds that durable records carry.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Normalises a timestamp to RFC 3339 UTC (`2026-11-02T08:14:03Z`). Offsets are applied; a
/// timestamp without a zone is taken as UTC (EWS sends UTC unless a time zone context says
/// otherwise). Unparsable values are kept as sent.
pub fn normalize_timestamp(raw: &str) -> String {
    let t = raw.trim();
    parse_rfc3339(t)
        .map(|(secs, frac)| format_utc(secs, frac))
        .unwrap_or_else(|| t.to_owned())
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (a missing zone counts as UTC).
pub fn timestamp_seconds(raw: &str) -> Option<i64> {
    parse_rfc3339(raw.trim()).map(|(secs, _)| secs)
}

/// Returns seconds since the epoch and the fractional digits (trailing zeros dropped).
fn parse_rfc3339(t: &str) -> Option<(i64, &str)> {
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac = "";
    if let Some(r) = rest.strip_prefix('.') {
        let len = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[len..];
        frac = r[..len].trim_end_matches('0');
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hh = rest.get(1..3)?.parse::<i64>().ok()?;
            let mm = rest.get(rest.len() - 2..)?.parse::<i64>().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + s - offset, frac))
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-02T08:14:03Z`).
pub fn format_seconds(secs: i64) -> String {
    format_utc(secs, "")
}

fn format_utc(secs: i64, frac: &str) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let dot = if frac.is_empty() { "" } else { "." };
    // One allocation: this runs for every timestamp of every message inspected.
    let mut out = String::with_capacity(21 + frac.len());
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{dot}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_utc() {
        assert_eq!(
            normalize_timestamp("2026-11-02T08:14:03Z"),
            "2026-11-02T08:14:03Z"
        );
        assert_eq!(
            normalize_timestamp("2026-11-02T09:14:03+01:00"),
            "2026-11-02T08:14:03Z"
        );
        assert_eq!(
            normalize_timestamp("2026-03-01T01:00:00.1230000-02:30"),
            "2026-03-01T03:30:00.123Z"
        );
        assert_eq!(
            normalize_timestamp("2025-12-31T23:30:00-01:00"),
            "2026-01-01T00:30:00Z"
        );
        assert_eq!(
            normalize_timestamp("2026-11-02T08:14:03"),
            "2026-11-02T08:14:03Z"
        );
        assert_eq!(normalize_timestamp("yesterday"), "yesterday");
    }
}
