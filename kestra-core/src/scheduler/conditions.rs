//! Conditions of schedule triggers, evaluated when a slot fires: the kinds that make sense without
//! looking at other executions.
//!
//! Supported (`io.kestra.plugin.core.condition.*`, their `...Condition` aliases and the legacy
//! `io.kestra.core.models.conditions.types.*Condition` names): `DayWeek`, `DayWeekInMonth`, `Weekend`,
//! `Not` (none of its `conditions` holds), `Or` (one of them holds), `DateTimeBetween` (`after` and
//! `before` inclusive, as Kestra), `TimeBetween` (exclusive, times with an offset compared as instants
//! of one day, as Java's `OffsetTime`), `Expression`.
//!
//! Every condition tests `date` (default `{{ trigger.date }}`, the slot in the schedule's zone); string
//! properties are rendered with the context first. Any other condition type, or a condition missing a
//! required property, is a [`ConditionError`]: the scheduler disables the trigger with that message.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Weekday};
use serde_json::Value;

use crate::expression::ExpressionEngine;

/// Why a condition cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The scheduler does not know this condition type.
    #[error("condition type '{0}' is not supported on schedule triggers")]
    Unsupported(String),
    /// A condition is malformed (missing or invalid property).
    #[error("condition {kind}: {message}")]
    Invalid {
        /// Condition kind (`DayWeek`).
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A property could not be rendered.
    #[error("condition {kind}: cannot render '{template}': {message}")]
    Render {
        /// Condition kind.
        kind: &'static str,
        /// The template.
        template: String,
        /// The engine's message.
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    DayWeek,
    DayWeekInMonth,
    Weekend,
    Not,
    Or,
    DateTimeBetween,
    TimeBetween,
    Expression,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DayWeek => "DayWeek",
            Kind::DayWeekInMonth => "DayWeekInMonth",
            Kind::Weekend => "Weekend",
            Kind::Not => "Not",
            Kind::Or => "Or",
            Kind::DateTimeBetween => "DateTimeBetween",
            Kind::TimeBetween => "TimeBetween",
            Kind::Expression => "Expression",
        }
    }

    fn of(type_name: &str) -> Option<Kind> {
        let short = type_name
            .strip_prefix("io.kestra.plugin.core.condition.")
            .or_else(|| type_name.strip_prefix("io.kestra.core.models.conditions.types."))?;
        let short = short.strip_suffix("Condition").unwrap_or(short);
        Some(match short {
            "DayWeek" => Kind::DayWeek,
            "DayWeekInMonth" => Kind::DayWeekInMonth,
            "Weekend" => Kind::Weekend,
            "Not" => Kind::Not,
            "Or" => Kind::Or,
            "DateTimeBetween" => Kind::DateTimeBetween,
            "TimeBetween" => Kind::TimeBetween,
            "Expression" => Kind::Expression,
            _ => return None,
        })
    }
}

/// Check that every condition (nested ones included) is of a supported kind and well formed enough to
/// be evaluated, without evaluating it.
pub fn check_conditions(conditions: &[Value]) -> Result<(), ConditionError> {
    for c in conditions {
        let kind = kind_of(c)?;
        if matches!(kind, Kind::Not | Kind::Or) {
            check_conditions(&sub_conditions(kind, c)?)?;
        }
    }
    Ok(())
}

/// True if every condition holds for the slot described by `ctx` (which holds `trigger.date`).
pub fn evaluate_conditions(
    conditions: &[Value],
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, ConditionError> {
    for c in conditions {
        if !evaluate_condition(c, ctx, expr)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn kind_of(condition: &Value) -> Result<Kind, ConditionError> {
    let type_name = condition
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Kind::of(type_name).ok_or_else(|| ConditionError::Unsupported(type_name.to_string()))
}

fn sub_conditions(kind: Kind, condition: &Value) -> Result<Vec<Value>, ConditionError> {
    match condition.get("conditions") {
        Some(Value::Array(list)) if !list.is_empty() => Ok(list.clone()),
        _ => Err(ConditionError::Invalid {
            kind: kind.name(),
            message: "'conditions' must be a non-empty list".into(),
        }),
    }
}

/// Evaluate one condition.
pub fn evaluate_condition(
    condition: &Value,
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, ConditionError> {
    let kind = kind_of(condition)?;
    let prop = |name: &str| -> Result<Option<String>, ConditionError> {
        match condition.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                expr.render(s, ctx)
                    .map(Some)
                    .map_err(|e| ConditionError::Render {
                        kind: kind.name(),
                        template: s.clone(),
                        message: e.to_string(),
                    })
            }
            Some(other) => Ok(Some(other.to_string())),
        }
    };
    let required = |name: &str| -> Result<String, ConditionError> {
        prop(name)?.ok_or_else(|| ConditionError::Invalid {
            kind: kind.name(),
            message: format!("'{name}' is required"),
        })
    };
    let date = || -> Result<DateTime<FixedOffset>, ConditionError> {
        let text = match prop("date")? {
            Some(d) => d,
            None => ctx
                .pointer("/trigger/date")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ConditionError::Invalid {
                    kind: kind.name(),
                    message: "no 'date' and no trigger.date".into(),
                })?,
        };
        parse_zoned(&text).ok_or_else(|| ConditionError::Invalid {
            kind: kind.name(),
            message: format!("'{text}' is not an ISO-8601 date"),
        })
    };
    let invalid = |message: String| ConditionError::Invalid {
        kind: kind.name(),
        message,
    };
    match kind {
        Kind::DayWeek => {
            let day = parse_weekday(&required("dayOfWeek")?).map_err(invalid)?;
            Ok(date()?.weekday() == day)
        }
        Kind::DayWeekInMonth => {
            let day = parse_weekday(&required("dayOfWeek")?).map_err(invalid)?;
            let which = required("dayInMonth")?;
            let local = date()?.date_naive();
            let nth = match which.to_ascii_uppercase().as_str() {
                "FIRST" => 1,
                "SECOND" => 2,
                "THIRD" => 3,
                "FOURTH" => 4,
                "LAST" => 0,
                other => {
                    return Err(invalid(format!(
                        "unknown dayInMonth '{other}' (FIRST, SECOND, THIRD, FOURTH, LAST)"
                    )));
                }
            };
            let target = if nth == 0 {
                last_weekday_of_month(local, day)
            } else {
                NaiveDate::from_weekday_of_month_opt(local.year(), local.month(), day, nth)
            };
            Ok(target == Some(local))
        }
        Kind::Weekend => Ok(matches!(date()?.weekday(), Weekday::Sat | Weekday::Sun)),
        Kind::Not => {
            for c in sub_conditions(kind, condition)? {
                if evaluate_condition(&c, ctx, expr)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Kind::Or => {
            for c in sub_conditions(kind, condition)? {
                if evaluate_condition(&c, ctx, expr)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Kind::DateTimeBetween => {
            let current = date()?;
            let bound = |name: &str| -> Result<Option<DateTime<FixedOffset>>, ConditionError> {
                prop(name)?
                    .map(|t| {
                        parse_zoned(&t)
                            .ok_or_else(|| invalid(format!("'{name}' = '{t}' is not a date-time")))
                    })
                    .transpose()
            };
            let (after, before) = (bound("after")?, bound("before")?);
            if after.is_none() && before.is_none() {
                return Err(invalid("needs 'after' or 'before'".into()));
            }
            Ok(after.is_none_or(|a| current >= a) && before.is_none_or(|b| current <= b))
        }
        Kind::TimeBetween => {
            let current = date()?;
            let current = seconds_of_day(current.time(), current.offset().local_minus_utc());
            let bound = |name: &str| -> Result<Option<i64>, ConditionError> {
                prop(name)?
                    .map(|t| {
                        parse_offset_time(&t)
                            .ok_or_else(|| invalid(format!("'{name}' = '{t}' is not a time")))
                    })
                    .transpose()
            };
            let (after, before) = (bound("after")?, bound("before")?);
            if after.is_none() && before.is_none() {
                return Err(invalid("needs 'after' or 'before'".into()));
            }
            Ok(after.is_none_or(|a| current > a) && before.is_none_or(|b| current < b))
        }
        Kind::Expression => {
            let expression = condition
                .get("expression")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("'expression' is required".into()))?;
            expr.evaluate_condition(expression, ctx)
                .map_err(|e| ConditionError::Render {
                    kind: kind.name(),
                    template: expression.to_string(),
                    message: e.to_string(),
                })
        }
    }
}

/// Seconds of the day in UTC terms (may fall outside 0..86400), as Java's `OffsetTime` compares.
fn seconds_of_day(time: NaiveTime, offset_seconds: i32) -> i64 {
    use chrono::Timelike;
    i64::from(time.num_seconds_from_midnight()) - i64::from(offset_seconds)
}

fn parse_offset_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let (time, offset) = if let Some(t) = text.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = text.rfind(['+', '-']) {
        let (t, o) = text.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (h, m) = o[1..].split_once(':').unwrap_or((&o[1..], "0"));
        let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
        (t, sign * secs)
    } else {
        (text, 0)
    };
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(time, "%H:%M"))
        .ok()?;
    Some(seconds_of_day(time, offset))
}

/// An ISO-8601 date-time with offset; without one, UTC; a bare date is its midnight UTC.
pub fn parse_zoned(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(text) {
        return Some(d);
    }
    // `2024-01-01T10:00:00+01:00[Europe/Paris]` (Java's ZonedDateTime).
    if let Some((head, _)) = text.split_once('[')
        && let Ok(d) = DateTime::parse_from_rfc3339(head)
    {
        return Some(d);
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(NaiveTime::MIN))
        })?;
    Some(naive.and_utc().fixed_offset())
}

fn parse_weekday(text: &str) -> Result<Weekday, String> {
    text.trim()
        .parse::<Weekday>()
        .map_err(|_| format!("unknown dayOfWeek '{text}' (MONDAY ... SUNDAY)"))
}

fn last_weekday_of_month(date: NaiveDate, day: Weekday) -> Option<NaiveDate> {
    let (y, m) = (date.year(), date.month());
    let first_next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)?
    };
    let last = first_next.pred_opt()?;
    let back = (7 + last.weekday().num_days_from_monday() - day.num_days_from_monday()) % 7;
    last.checked_sub_days(chrono::Days::new(u64::from(back)))
}
