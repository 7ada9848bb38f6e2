//! Durations as operators write them in configuration (`"30s"`, `"5m"`, `"2h"`, `"30d"`), read
//! with humantime and written back in the same compact form, so `trackgate check` prints what
//! the README documents (`"30d"`, not humantime's `"30days"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Reads a duration; the error says what to write.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration {text:?} ({e}): write a number and a unit, such as \"500ms\", \"30s\", \"5m\", \"2h\" or \"30d\""
        )
    })
}

/// The compact form: the largest units first, without spaces (`1h30m`, `200ms`, `0s`).
pub fn format(duration: Duration) -> String {
    let mut out = String::new();
    let mut secs = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let nanos = duration.subsec_nanos();
    for (unit, size, of) in [
        ("ms", 1_000_000, 1_000),
        ("us", 1_000, 1_000),
        ("ns", 1, 1_000),
    ] {
        let n = nanos / size % of;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*duration))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// The same for an optional duration.
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => s.serialize_some(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_the_compact_form() {
        for text in [
            "30d", "5m", "35m", "1h30m", "200ms", "5s", "7d", "365d", "1s500ms", "0s",
        ] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), text, "{text}");
        }
        assert_eq!(format(parse("5 seconds").unwrap()), "5s");
        assert_eq!(format(parse("1h 30m").unwrap()), "1h30m");
    }

    #[test]
    fn an_unknown_unit_says_what_to_write() {
        let e = parse("5 parsecs").unwrap_err();
        assert!(e.contains("\"30s\""), "{e}");
    }
}
