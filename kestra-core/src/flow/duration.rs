//! ISO-8601 durations (`PT1M`, `P1D`, `PT0.5S`, `P1DT2H`): parsing to [`std::time::Duration`],
//! formatting back, and [`IsoDuration`], a validated duration that keeps its original spelling so a
//! flow round-trips unchanged.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an ISO-8601 duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ISO-8601 duration '{text}': {reason}")]
pub struct DurationError {
    /// The rejected text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses an ISO-8601 duration: `P[nW][nD][T[nH][nM][n[.f]S]]`, optional leading `-` is refused,
/// only the seconds may carry a fraction. Years and months are refused (they have no fixed length),
/// as Java's `Duration.parse` does.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        text: text.to_string(),
        reason,
    };
    let upper = text.trim().to_ascii_uppercase();
    let rest = upper
        .strip_prefix('P')
        .ok_or_else(|| err("must start with 'P'"))?;
    if rest.is_empty() {
        return Err(err("no amount after 'P'"));
    }
    let (date_part, time_part) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return Err(err("no amount after 'T'"));
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut total = Duration::ZERO;
    let mut add = |amount: Duration| -> Result<(), DurationError> {
        total = total.checked_add(amount).ok_or_else(|| err("too large"))?;
        Ok(())
    };
    let mut number = String::new();
    for c in date_part.chars() {
        match c {
            '0'..='9' => number.push(c),
            'W' | 'D' => {
                let n: u64 = number.parse().map_err(|_| err("missing amount"))?;
                let unit = if c == 'W' { 7 * 86_400 } else { 86_400 };
                add(Duration::from_secs(
                    n.checked_mul(unit).ok_or_else(|| err("too large"))?,
                ))?;
                number.clear();
            }
            'Y' | 'M' => return Err(err("years and months are not supported")),
            _ => return Err(err("unexpected character")),
        }
    }
    if !number.is_empty() {
        return Err(err("amount without a unit"));
    }
    if let Some(time) = time_part {
        let mut seen_seconds = false;
        for c in time.chars() {
            match c {
                '0'..='9' | '.' | ',' => {
                    if seen_seconds {
                        return Err(err("nothing may follow the seconds"));
                    }
                    number.push(if c == ',' { '.' } else { c });
                }
                'H' | 'M' => {
                    let n: u64 = number
                        .parse()
                        .map_err(|_| err("hours and minutes must be whole numbers"))?;
                    let unit = if c == 'H' { 3600 } else { 60 };
                    add(Duration::from_secs(
                        n.checked_mul(unit).ok_or_else(|| err("too large"))?,
                    ))?;
                    number.clear();
                }
                'S' => {
                    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
                        return Err(err("missing amount"));
                    }
                    let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
                    let secs: u64 = whole.parse().map_err(|_| err("invalid seconds"))?;
                    let nanos: u32 = if frac.is_empty() {
                        0
                    } else {
                        let digits: String =
                            frac.chars().chain(std::iter::repeat('0')).take(9).collect();
                        digits.parse().map_err(|_| err("invalid seconds"))?
                    };
                    add(Duration::new(secs, nanos))?;
                    number.clear();
                    seen_seconds = true;
                }
                _ => return Err(err("unexpected character")),
            }
        }
        if !number.is_empty() {
            return Err(err("amount without a unit"));
        }
    }
    Ok(total)
}

/// Formats a duration the way Java's `Duration.toString()` does: `PT0S`, `PT1M`, `PT36H`, `PT0.5S`.
pub fn format(duration: Duration) -> String {
    let total = duration.as_secs();
    if total == 0 && duration.subsec_nanos() == 0 {
        return "PT0S".to_string();
    }
    let hours = total / 3600;
    let minutes = (total % 3600) / 60;
    let seconds = total % 60;
    let nanos = duration.subsec_nanos();
    let mut out = String::from("PT");
    if hours > 0 {
        out.push_str(&format!("{hours}H"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}M"));
    }
    if seconds > 0 || nanos > 0 {
        out.push_str(&seconds.to_string());
        if nanos > 0 {
            let frac = format!("{nanos:09}");
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        out.push('S');
    }
    out
}

/// A validated ISO-8601 duration that keeps its original spelling (`P1D` stays `P1D`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IsoDuration {
    text: String,
    value: Duration,
}

impl IsoDuration {
    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        Ok(IsoDuration {
            text: text.to_string(),
            value: parse(text)?,
        })
    }

    /// The duration.
    pub fn duration(&self) -> Duration {
        self.value
    }

    /// The original spelling.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<Duration> for IsoDuration {
    fn from(value: Duration) -> Self {
        IsoDuration {
            text: format(value),
            value,
        }
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for IsoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsoDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ISO-8601 duration such as PT1M")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsoDuration, E> {
                IsoDuration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_durations() {
        assert_eq!(parse("PT1M").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("P1D").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("PT0.5S").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse("P1DT2H3M4S").unwrap(),
            Duration::from_secs(86_400 + 7200 + 184)
        );
        assert_eq!(parse("P2W").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse("pt10s").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "",
            "P",
            "PT",
            "1M",
            "PT1",
            "P1M",
            "PT1.5M",
            "PTXS",
            "PT1S2M",
            "10 minutes",
            "PT.S",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_like_java() {
        assert_eq!(format(Duration::ZERO), "PT0S");
        assert_eq!(format(Duration::from_secs(60)), "PT1M");
        assert_eq!(format(Duration::from_secs(86_400 + 61)), "PT24H1M1S");
        assert_eq!(format(Duration::from_millis(500)), "PT0.5S");
        assert_eq!(
            parse(&format(Duration::from_millis(90_250))).unwrap(),
            Duration::from_millis(90_250)
        );
    }

    #[test]
    fn iso_duration_keeps_spelling() {
        let d: IsoDuration = serde_json::from_str("\"P1D\"").unwrap();
        assert_eq!(d.duration(), Duration::from_secs(86_400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"P1D\"");
        let err = serde_json::from_str::<IsoDuration>("\"1 day\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid ISO-8601 duration '1 day'"),
            "{err}"
        );
    }
}
