//! Durations in configuration: `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"`, or a number of
//! seconds. Use with `#[serde(with = "flowgate_lb::duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"` or `"42us"`.
///
/// ```
/// use std::time::Duration;
/// use flowgate_lb::duration::parse;
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse("soon").is_err());
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
        "us" => n / 1e6,
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

/// Serde `serialize_with`: writes milliseconds, e.g. `"1500ms"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Serde `deserialize_with`: accepts a string with a unit or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(t) => parse(&t).map_err(de::Error::custom),
        Raw::Secs(n) if n.is_finite() && (0.0..=1e9).contains(&n) => Ok(Duration::from_secs_f64(n)),
        Raw::Secs(n) => Err(de::Error::custom(format!("{n} is not a duration"))),
    }
}
