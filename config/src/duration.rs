//! Durations in configuration: `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"`, `"42us"` (or
//! `µs`), or a number of seconds. Use with `#[serde(with = "flowgate_config::duration")]`,
//! or `flowgate_config::duration::option` for an `Option<Duration>`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"` or `"42us"`.
///
/// ```
/// use std::time::Duration;
/// use flowgate_config::duration::parse;
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

    /// Serde `deserialize_with`: a duration, or `null` for none.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "super::deserialize")] Duration);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
        #[serde(default, with = "super::option")]
        o: Option<Duration>,
    }

    #[test]
    fn units_numbers_and_none() {
        let t: T = serde_json::from_str(r#"{"d": "42µs", "o": "1.5s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_micros(42));
        assert_eq!(t.o, Some(Duration::from_millis(1500)));
        let t: T = serde_json::from_str(r#"{"d": 2, "o": null}"#).unwrap();
        assert_eq!((t.d, t.o), (Duration::from_secs(2), None));
        let t: T = serde_json::from_str(r#"{"d": "5m"}"#).unwrap();
        assert_eq!((t.d, t.o), (Duration::from_secs(300), None));
        assert!(serde_json::from_str::<T>(r#"{"d": "soon"}"#).is_err());
        assert_eq!(
            parse(&format(Duration::from_micros(1500))),
            Ok(Duration::from_micros(1500))
        );
    }
}
