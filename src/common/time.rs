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
    let mut out = String::with_capacity(21);
    push_normalized_timestamp(raw, &mut out);
    out
}

/// Appends the normal form of `raw` (see [`normalize_timestamp`]) to `out`: a message's
/// timestamps are packed with the rest of its text.
pub fn push_normalized_timestamp(raw: &str, out: &mut String) {
    let t = crate::common::text::trim(raw);
    // What EWS sends: already in the normal form, copied as it is without parsing it (what
    // does not parse is kept as sent as well, so the order of the checks changes nothing).
    if is_normal_utc(t) {
        return out.push_str(t);
    }
    match parse_rfc3339(t) {
        Some((secs, frac)) => write_utc(secs, frac, out),
        None => out.push_str(t),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` naming a real second (no 31st of a 30-day month, no leap second),
/// exactly what [`write_utc`] would write for it. Fields that are not digits count as zero,
/// so some strings that do not parse pass too: those are kept as sent either way.
fn is_normal_utc(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 20 || b[19] != b'Z' || b[10] != b'T' {
        return false;
    }
    let field = |r: std::ops::Range<usize>| digits(&b[r]).unwrap_or(0);
    let (year, month, day, second) = (field(0..4), field(5..7), field(8..10), field(17..19));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days && second < 60
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
    let num = |r: std::ops::Range<usize>| digits(b.get(r)?);
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
            let offset = rest.as_bytes();
            let hh = digits(offset.get(1..3)?)?;
            let mm = digits(offset.get(offset.len() - 2..)?)?;
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

/// A field of ASCII digits (no sign, no spaces), read without `str::parse`: this runs for every
/// timestamp of every message inspected.
fn digits(field: &[u8]) -> Option<i64> {
    field.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-02T08:14:03Z`).
pub fn format_seconds(secs: i64) -> String {
    let mut out = String::with_capacity(20);
    write_utc(secs, "", &mut out);
    out
}

fn write_utc(secs: i64, frac: &str, out: &mut String) {
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
    // No formatting machinery: this runs for every timestamp of every message inspected.
    if (0..=9999).contains(&y) {
        let mut head = *b"0000-00-00T00:00:00";
        // Two digits at a time: a division by ten per digit was most of this function.
        let mut put = |at: usize, n: i64| {
            let n = n.rem_euclid(100) as u8;
            head[at] = b'0' + n / 10;
            head[at + 1] = b'0' + n % 10;
        };
        put(0, y / 100);
        put(2, y);
        put(5, m);
        put(8, d);
        put(11, rem / 3600);
        put(14, rem % 3600 / 60);
        put(17, rem % 60);
        out.push_str(std::str::from_utf8(&head).unwrap_or_default());
    } else {
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
    }
    out.push_str(dot);
    out.push_str(frac);
    out.push('Z');
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
        // Fields are digits: a sign or a space is not a number here.
        assert_eq!(
            normalize_timestamp("2026-+1-02T08:14:03Z"),
            "2026-+1-02T08:14:03Z"
        );
        assert_eq!(
            normalize_timestamp("2026-11- 2T08:14:03Z"),
            "2026-11- 2T08:14:03Z"
        );
        assert_eq!(
            normalize_timestamp("2026-11-02T08:14:03+-1:00"),
            "2026-11-02T08:14:03+-1:00"
        );
    }

    #[test]
    fn a_day_or_second_past_the_end_rolls_over_as_before() {
        for (sent, normal) in [
            ("2026-02-30T10:00:00Z", "2026-03-02T10:00:00Z"),
            ("2026-04-31T10:00:00Z", "2026-05-01T10:00:00Z"),
            ("2026-06-30T23:59:60Z", "2026-07-01T00:00:00Z"),
            ("2100-02-29T00:00:00Z", "2100-03-01T00:00:00Z"),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
            ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00Z"),
        ] {
            assert_eq!(normalize_timestamp(sent), normal, "{sent}");
        }
    }

    #[test]
    fn years_outside_four_digits_are_still_written() {
        assert_eq!(format_seconds(-62_167_219_201), "-001-12-31T23:59:59Z");
        assert_eq!(format_seconds(253_402_300_800), "10000-01-01T00:00:00Z");
    }

    proptest::proptest! {
        /// Every second of years 0–9999 is written in the fixed shape and reads back as itself.
        #[test]
        fn written_seconds_read_back(secs in -62_167_219_200i64..253_402_300_800) {
            let written = format_seconds(secs);
            proptest::prop_assert_eq!(written.len(), 20);
            proptest::prop_assert_eq!(timestamp_seconds(&written), Some(secs));
            proptest::prop_assert_eq!(normalize_timestamp(&written), written);
        }
    }
}
