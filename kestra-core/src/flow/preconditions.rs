//! What the flow language itself checks of a flow trigger's `preconditions`: the resolved
//! `timeWindow` ([`WindowSpec`]) and the `value`/`values` rules of `where` filters
//! ([`check_filter`]). The validator uses them to reject a bad flow at deploy time; the executor
//! ([`crate::executor::preconditions`]) uses the same functions to evaluate the conditions.

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::flow::triggers::{FilterType, PreconditionFilter, TimeWindow, TimeWindowType};

const DAY: TimeDelta = TimeDelta::days(1);

/// A resolved `timeWindow` (durations travel as milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WindowSpec {
    /// Fixed windows of `window`, shifted by `advance`.
    Duration {
        /// Window length (> 0).
        #[serde(with = "millis")]
        window: TimeDelta,
        /// Offset of the window starts.
        #[serde(with = "millis")]
        advance: TimeDelta,
    },
    /// A window of `window` ending at the evaluated execution.
    Sliding {
        /// Window length (> 0).
        #[serde(with = "millis")]
        window: TimeDelta,
    },
    /// Midnight until `deadline`, each day.
    DailyDeadline {
        /// Time of day.
        deadline: NaiveTime,
    },
    /// `start` until `end`, each day.
    DailyWindow {
        /// Start time of day.
        start: NaiveTime,
        /// End time of day (after `start`).
        end: NaiveTime,
    },
}

/// A [`TimeDelta`] as whole milliseconds.
mod millis {
    use chrono::TimeDelta;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &TimeDelta, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.num_milliseconds())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TimeDelta, D::Error> {
        let ms = i64::deserialize(d)?;
        TimeDelta::try_milliseconds(ms)
            .ok_or_else(|| serde::de::Error::custom(format!("{ms} ms is out of range")))
    }
}

/// A time of day as Kestra writes it (`HH:mm`, `HH:mm:ss`, `HH:mm:ss.SSS`).
pub fn parse_time_of_day(text: &str) -> Result<NaiveTime, String> {
    ["%H:%M:%S%.f", "%H:%M:%S", "%H:%M"]
        .iter()
        .find_map(|f| NaiveTime::parse_from_str(text.trim(), f).ok())
        .ok_or_else(|| format!("invalid time of day '{text}', expected HH:mm:ss"))
}

fn delta(d: std::time::Duration, what: &str) -> Result<TimeDelta, (&'static str, String)> {
    TimeDelta::from_std(d).map_err(|_| ("window", format!("{what} is too large")))
}

impl WindowSpec {
    /// Resolves a `timeWindow` (absent: a DURATION_WINDOW of one day). `Err((property, message))`
    /// names the offending property (relative to `timeWindow`).
    pub fn from_config(config: Option<&TimeWindow>) -> Result<WindowSpec, (&'static str, String)> {
        let Some(c) = config else {
            return Ok(WindowSpec::Duration {
                window: DAY,
                advance: TimeDelta::zero(),
            });
        };
        let kind = c.window_type.unwrap_or(TimeWindowType::DurationWindow);
        let name = match kind {
            TimeWindowType::DurationWindow => "DURATION_WINDOW",
            TimeWindowType::SlidingWindow => "SLIDING_WINDOW",
            TimeWindowType::DailyTimeDeadline => "DAILY_TIME_DEADLINE",
            TimeWindowType::DailyTimeWindow => "DAILY_TIME_WINDOW",
        };
        let forbid = |present: bool, prop: &'static str| -> Result<(), (&'static str, String)> {
            if present {
                Err((prop, format!("'{prop}' cannot be used with a {name}")))
            } else {
                Ok(())
            }
        };
        let window = |c: &TimeWindow| -> Result<TimeDelta, (&'static str, String)> {
            match &c.window {
                None => Ok(DAY),
                Some(w) => {
                    let d = delta(w.duration(), "window")?;
                    if d <= TimeDelta::zero() {
                        Err(("window", "the window must be longer than zero".to_string()))
                    } else {
                        Ok(d)
                    }
                }
            }
        };
        let time =
            |v: &Option<String>, prop: &'static str| -> Result<NaiveTime, (&'static str, String)> {
                match v {
                    None => Err((prop, format!("'{prop}' is required for a {name}"))),
                    Some(t) => parse_time_of_day(t).map_err(|m| (prop, m)),
                }
            };
        match kind {
            TimeWindowType::DurationWindow => {
                forbid(c.deadline.is_some(), "deadline")?;
                forbid(c.start_time.is_some(), "startTime")?;
                forbid(c.end_time.is_some(), "endTime")?;
                let advance = match &c.window_advance {
                    None => TimeDelta::zero(),
                    Some(a) => delta(a.duration(), "windowAdvance")?,
                };
                Ok(WindowSpec::Duration {
                    window: window(c)?,
                    advance,
                })
            }
            TimeWindowType::SlidingWindow => {
                forbid(c.deadline.is_some(), "deadline")?;
                forbid(c.start_time.is_some(), "startTime")?;
                forbid(c.end_time.is_some(), "endTime")?;
                forbid(c.window_advance.is_some(), "windowAdvance")?;
                Ok(WindowSpec::Sliding { window: window(c)? })
            }
            TimeWindowType::DailyTimeDeadline => {
                forbid(c.window.is_some(), "window")?;
                forbid(c.window_advance.is_some(), "windowAdvance")?;
                forbid(c.start_time.is_some(), "startTime")?;
                forbid(c.end_time.is_some(), "endTime")?;
                Ok(WindowSpec::DailyDeadline {
                    deadline: time(&c.deadline, "deadline")?,
                })
            }
            TimeWindowType::DailyTimeWindow => {
                forbid(c.window.is_some(), "window")?;
                forbid(c.window_advance.is_some(), "windowAdvance")?;
                forbid(c.deadline.is_some(), "deadline")?;
                let start = time(&c.start_time, "startTime")?;
                let end = time(&c.end_time, "endTime")?;
                if end <= start {
                    return Err(("endTime", "'endTime' must be after 'startTime'".to_string()));
                }
                Ok(WindowSpec::DailyWindow { start, end })
            }
        }
    }

    /// The fixed window `[start, end)` that `at` belongs to; `None` when `at` is outside every
    /// window. A sliding window has no fixed bounds: `Some` of the window ending at `at`.
    pub fn bounds(&self, at: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let midnight = at.date_naive().and_time(NaiveTime::MIN).and_utc();
        match *self {
            WindowSpec::Duration { window, advance } => {
                let len = window.num_milliseconds().max(1);
                let shifted = (at - advance).timestamp_millis();
                let start_ms = shifted.div_euclid(len) * len;
                let start = DateTime::<Utc>::from_timestamp_millis(start_ms)? + advance;
                Some((start, start + window))
            }
            WindowSpec::Sliding { window } => Some((at - window, at)),
            WindowSpec::DailyDeadline { deadline } => {
                let end = at.date_naive().and_time(deadline).and_utc();
                (at < end).then_some((midnight, end))
            }
            WindowSpec::DailyWindow { start, end } => {
                let s = at.date_naive().and_time(start).and_utc();
                let e = at.date_naive().and_time(end).and_utc();
                (s <= at && at < e).then_some((s, e))
            }
        }
    }
}

/// Checks the `value` / `values` rules of a filter (as Kestra's validator does): IN and NOT_IN
/// take `values` only, every other type `value` only.
pub fn check_filter(filter: &PreconditionFilter) -> Result<(), String> {
    let t = serde_json::to_value(filter.filter_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if filter.filter_type.takes_values() {
        if filter.values.is_none() {
            return Err(format!("`values` cannot be null for type {t}"));
        }
        if filter.value.is_some() {
            return Err(format!("`value` must be null for type {t}"));
        }
    } else {
        if filter.value.is_none() {
            return Err(format!("`value` cannot be null for type {t}"));
        }
        if filter.values.is_some() {
            return Err(format!("`values` must be null for type {t}"));
        }
    }
    if filter.filter_type == FilterType::Regex
        && let Some(v) = &filter.value
    {
        full_match_regex(v)?;
    }
    Ok(())
}

pub(crate) fn full_match_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        // The regex crate's message spans lines (the pattern, a caret, the error): keep the error.
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or_default();
        let reason = reason.trim().trim_start_matches("error: ");
        format!("invalid regular expression '{pattern}': {reason}")
    })
}
