//! Durations in configuration: `"250ms"`, `"10s"`, `"5m"`, `"1h"`, or a number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"` or `"42us"`.
///
/// ```
/// use std::time::Duration;
/// use flowgate_pipeline::serde_duration::parse;
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(parse("ten seconds").is_err());
/// ```
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms or 10s"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit (us, ms, s, m, h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Serde `serialize_with`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Serde `deserialize_with`: a string with a unit, or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => parse(&n.to_string()).map_err(de::Error::custom),
        Raw::Text(s) => parse(&s).map_err(de::Error::custom),
    }
}

/// The same for `Option<Duration>`.
pub mod option {
    use super::*;

    /// Serde `serialize_with`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}
