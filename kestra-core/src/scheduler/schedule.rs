//! Pure schedule logic, no I/O: the slots of a `Schedule` (cron) or `ScheduleOnDates` trigger, which
//! slot is due at a given instant under the recovery policy, the `trigger.*` variables of a slot and the
//! deterministic execution id of a slot.
//!
//! # Slots and state
//!
//! A [`Timetable`] lists instants ("slots"). The stored
//! [`TriggerState`](crate::model::TriggerState) keeps `next_execution_date`, the first slot the
//! scheduler has not handled yet, and `date`, the last slot it handled (fired, or consciously skipped by
//! the recovery policy, `lateMaximumDelay` or a false condition), so that `next_execution_date` is always
//! the slot after `date` when `date` is set. A new state starts at the first slot strictly after its
//! creation: nothing fires for the past.
//!
//! # Which slot fires ([`plan`])
//!
//! Given the pending slot `N` and `now`, the due slots are the slots in `[N, now]`. When there is one,
//! it is simply due (the scheduler is on time, or a little late). When there are several, the earlier
//! ones were *missed* (scheduler down, trigger disabled, previous execution still running) and
//! `recoverMissedSchedules` decides:
//! - `ALL` (default): every due slot fires, oldest first, one per evaluation step;
//! - `LAST`: only the most recent due slot fires; the older ones are skipped;
//! - `NONE`: none of the due slots fires; the schedule jumps to the first slot after `now`.
//!
//! `lateMaximumDelay`: a slot older than `now - lateMaximumDelay` never fires; the first slot within
//! the delay fires instead, or, if there is none, every due slot is skipped.
//!
//! # Time zones and daylight saving
//!
//! A cron is evaluated on the wall clock of its `timezone` (an IANA name). **Without `timezone`, UTC is
//! used** (Kestra uses the server's zone, which is UTC in its images; the flow validator makes the same
//! choice). Around daylight-saving changes the rule is croner's:
//! - a *fixed-time* cron (single second, minute and hour, e.g. `30 2 * * *`) fires once per matching
//!   day: a time inside a spring-forward gap fires at the first valid instant after the gap (Paris,
//!   2024-03-31: `30 2 * * *` fires at 03:00 CEST); a time inside a fall-back overlap fires once, at its
//!   first occurrence (02:30 CEST, not 02:30 CET);
//! - an *interval* cron (wildcards, steps, ranges or lists in the time fields, e.g. `30 * * * *`) follows
//!   real elapsed time: wall-clock times that do not exist in a gap are skipped, and both occurrences of
//!   a repeated time in an overlap fire (an hourly cron keeps firing every real hour).
//!
//! Nicknames: `@hourly`, `@daily`, `@midnight`, `@weekly` (Sunday), `@monthly`, `@yearly`, `@annually`.
//!
//! # Execution ids
//!
//! [`slot_execution_id`] derives the id of a slot's execution from (tenant, namespace, flow, trigger,
//! slot) with SHA-256, so that a scheduler that dies after queueing an execution but before recording
//! it re-queues the *same* id, which the executor de-duplicates: exactly one execution per slot. Such
//! ids are not time-ordered like the random ones of [`new_id`](crate::model::id::new_id).

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::flow::triggers::{RecoverMissedSchedules, Schedule};
use crate::flow::validate::parse_cron;
use crate::model::id::encode_base62;

/// Why a schedule cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("{0}")]
    InvalidCron(String),
    /// The time zone is not an IANA name.
    #[error("unknown time zone '{0}'")]
    InvalidTimezone(String),
    /// A date of `ScheduleOnDates` does not parse.
    #[error("invalid date '{value}': {message}")]
    InvalidDate {
        /// The text.
        value: String,
        /// Why.
        message: String,
    },
    /// The cron search failed (an instant out of range).
    #[error("cannot evaluate cron '{expression}': {message}")]
    Evaluation {
        /// The cron expression.
        expression: String,
        /// croner's message.
        message: String,
    },
}

/// The slots of a schedule trigger.
#[derive(Debug, Clone)]
pub enum Timetable {
    /// A cron evaluated on the wall clock of a time zone.
    Cron {
        /// The expression as written.
        expression: String,
        /// The parsed cron.
        cron: Box<croner::Cron>,
        /// The zone of the wall clock.
        timezone: Tz,
    },
    /// A fixed list of instants (sorted, without duplicates).
    Dates {
        /// The instants.
        dates: Vec<DateTime<Utc>>,
        /// The zone the variables are written in.
        timezone: Tz,
    },
}

/// Parse an optional IANA zone name; `None` is UTC.
pub fn parse_timezone(timezone: Option<&str>) -> Result<Tz, ScheduleError> {
    match timezone {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| ScheduleError::InvalidTimezone(name.to_string())),
    }
}

impl Timetable {
    /// The timetable of a cron (5 fields, 6 with `with_seconds`, or a nickname) in `timezone` (UTC when
    /// `None`).
    pub fn cron(
        expression: &str,
        with_seconds: bool,
        timezone: Option<&str>,
    ) -> Result<Timetable, ScheduleError> {
        let timezone = parse_timezone(timezone)?;
        // croner knows every nickname but `@midnight`, which is `@daily`.
        let normalized = if expression.trim().eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            expression
        };
        let cron = parse_cron(normalized, with_seconds).map_err(ScheduleError::InvalidCron)?;
        Ok(Timetable::Cron {
            expression: expression.to_string(),
            cron: Box::new(cron),
            timezone,
        })
    }

    /// The timetable of a `Schedule` trigger.
    pub fn of_schedule(schedule: &Schedule) -> Result<Timetable, ScheduleError> {
        Timetable::cron(
            &schedule.cron,
            schedule.with_seconds,
            schedule.timezone.as_deref(),
        )
    }

    /// The timetable of a list of ISO-8601 dates: with an offset (`2024-01-01T10:00:00+01:00`), or
    /// local to `timezone` (`2024-01-01T10:00:00`, `2024-01-01`; UTC when `None`).
    pub fn dates<S: AsRef<str>>(
        dates: &[S],
        timezone: Option<&str>,
    ) -> Result<Timetable, ScheduleError> {
        let timezone = parse_timezone(timezone)?;
        let mut parsed = dates
            .iter()
            .map(|d| parse_date_in(d.as_ref(), timezone))
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        Ok(Timetable::Dates {
            dates: parsed,
            timezone,
        })
    }

    /// The zone the slot variables are written in.
    pub fn timezone(&self) -> Tz {
        match self {
            Timetable::Cron { timezone, .. } | Timetable::Dates { timezone, .. } => *timezone,
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        self.search(t, false, croner::Direction::Forward)
    }

    /// The first slot at or after `t`.
    pub fn next_at_or_after(
        &self,
        t: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        self.search(t, true, croner::Direction::Forward)
    }

    /// The last slot strictly before `t`.
    pub fn previous_before(
        &self,
        t: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        self.search(t, false, croner::Direction::Backward)
    }

    /// The last slot at or before `t`.
    pub fn latest_at_or_before(
        &self,
        t: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        self.search(t, true, croner::Direction::Backward)
    }

    fn search(
        &self,
        t: DateTime<Utc>,
        inclusive: bool,
        direction: croner::Direction,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        match self {
            Timetable::Cron {
                expression,
                cron,
                timezone,
            } => {
                let local = t.with_timezone(timezone);
                let found = match direction {
                    croner::Direction::Forward => cron.find_next_occurrence(&local, inclusive),
                    croner::Direction::Backward => cron.find_previous_occurrence(&local, inclusive),
                };
                match found {
                    Ok(slot) => Ok(Some(slot.with_timezone(&Utc))),
                    // No occurrence within croner's search horizon: the cron never fires again.
                    Err(croner::errors::CronError::TimeSearchLimitExceeded) => Ok(None),
                    Err(e) => Err(ScheduleError::Evaluation {
                        expression: expression.clone(),
                        message: e.to_string(),
                    }),
                }
            }
            Timetable::Dates { dates, .. } => Ok(match direction {
                croner::Direction::Forward => {
                    let i = dates.partition_point(|d| if inclusive { *d < t } else { *d <= t });
                    dates.get(i).copied()
                }
                croner::Direction::Backward => {
                    let i = dates.partition_point(|d| if inclusive { *d <= t } else { *d < t });
                    i.checked_sub(1).and_then(|i| dates.get(i)).copied()
                }
            }),
        }
    }

    /// A slot written as Kestra does: ISO-8601 with the offset of the timetable's zone (`Z` in UTC).
    pub fn format(&self, slot: DateTime<Utc>) -> String {
        slot.with_timezone(&self.timezone())
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// The `trigger.*` variables of a slot: `date`, `next` and `previous` (the neighbouring slots of
    /// the timetable, absent when there is none).
    pub fn variables(&self, slot: DateTime<Utc>) -> Result<Map<String, Value>, ScheduleError> {
        let mut vars = Map::new();
        vars.insert("date".into(), Value::String(self.format(slot)));
        if let Some(next) = self.next_after(slot)? {
            vars.insert("next".into(), Value::String(self.format(next)));
        }
        if let Some(previous) = self.previous_before(slot)? {
            vars.insert("previous".into(), Value::String(self.format(previous)));
        }
        Ok(vars)
    }
}

/// Parse an ISO-8601 date with an offset, or local to `timezone`. A local time inside a
/// spring-forward gap is moved past the gap; one inside an overlap takes its first occurrence.
pub fn parse_date_in(text: &str, timezone: Tz) -> Result<DateTime<Utc>, ScheduleError> {
    let text = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(text) {
        return Ok(d.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .map_err(|e| ScheduleError::InvalidDate {
            value: text.to_string(),
            message: e.to_string(),
        })?;
    local_to_utc(naive, timezone).ok_or_else(|| ScheduleError::InvalidDate {
        value: text.to_string(),
        message: format!("no such local time in {timezone}"),
    })
}

fn local_to_utc(naive: NaiveDateTime, timezone: Tz) -> Option<DateTime<Utc>> {
    if let Some(d) = timezone.from_local_datetime(&naive).earliest() {
        return Some(d.with_timezone(&Utc));
    }
    // In a gap: the first valid instant after it (gaps are at most a few hours).
    (1..=4 * 60).find_map(|m| {
        timezone
            .from_local_datetime(&(naive + chrono::Duration::minutes(m)))
            .earliest()
            .map(|d| {
                let minute_start = d.with_timezone(&Utc);
                minute_start - chrono::Duration::seconds(i64::from(chrono::Timelike::second(&d)))
            })
    })
}

/// How missed slots are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryPolicy {
    /// `recoverMissedSchedules` (ALL by default).
    pub recover: RecoverMissedSchedules,
    /// `lateMaximumDelay`: slots older than `now - delay` never fire.
    pub late_maximum_delay: Option<chrono::Duration>,
}

impl RecoveryPolicy {
    /// The policy of a `Schedule` trigger.
    pub fn of_schedule(schedule: &Schedule) -> RecoveryPolicy {
        RecoveryPolicy {
            recover: schedule.recover_missed_schedules.unwrap_or_default(),
            late_maximum_delay: schedule
                .late_maximum_delay
                .as_ref()
                .and_then(|d| chrono::Duration::from_std(d.duration()).ok()),
        }
    }
}

/// What to do with a trigger at one evaluation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing is due; the pending slot is `next` (`None`: the timetable is exhausted).
    Wait {
        /// The first slot not handled yet.
        next: Option<DateTime<Utc>>,
    },
    /// Fire `slot`; afterwards the pending slot is `next`.
    Fire {
        /// The slot to fire.
        slot: DateTime<Utc>,
        /// Due slots before `slot` that are skipped (LAST, `lateMaximumDelay`).
        skipped_before: bool,
        /// The slot after `slot`.
        next: Option<DateTime<Utc>>,
    },
    /// Skip every due slot up to `through` (NONE, or all too late); the pending slot becomes `next`.
    Skip {
        /// The last skipped slot (it becomes the state's `date`).
        through: DateTime<Utc>,
        /// The slot after `through`.
        next: Option<DateTime<Utc>>,
    },
}

/// Decide what a trigger whose first unhandled slot is `pending` does at `now`. See the module
/// documentation for the rules.
pub fn plan(
    timetable: &Timetable,
    policy: RecoveryPolicy,
    pending: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Plan, ScheduleError> {
    // `pending` is normally a slot; if the timetable changed under it, realign on the next real slot.
    let Some(first) = timetable.next_at_or_after(pending)? else {
        return Ok(Plan::Wait { next: None });
    };
    if first > now {
        return Ok(Plan::Wait { next: Some(first) });
    }
    // `first <= now`, so a latest due slot exists and is >= first.
    let latest = timetable.latest_at_or_before(now)?.unwrap_or(first);
    let missed = first < latest;
    let mut slot = match (missed, policy.recover) {
        (false, _) | (true, RecoverMissedSchedules::All) => first,
        (true, RecoverMissedSchedules::Last) => latest,
        (true, RecoverMissedSchedules::None) => {
            return Ok(Plan::Skip {
                through: latest,
                next: timetable.next_after(latest)?,
            });
        }
    };
    if let Some(delay) = policy.late_maximum_delay {
        let oldest_allowed = now - delay;
        if slot < oldest_allowed {
            match timetable.next_at_or_after(oldest_allowed)? {
                Some(s) if s <= now => slot = s,
                _ => {
                    return Ok(Plan::Skip {
                        through: latest,
                        next: timetable.next_after(latest)?,
                    });
                }
            }
        }
    }
    Ok(Plan::Fire {
        slot,
        skipped_before: slot > first,
        next: timetable.next_after(slot)?,
    })
}

/// The id of the execution of a slot: SHA-256 of (tenant, namespace, flow, trigger, slot and, for a
/// backfill, the backfill's id), as 22 base62 characters. The same slot always gets the same id.
pub fn slot_execution_id(
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    slot: DateTime<Utc>,
    backfill_id: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    for part in [tenant, namespace, flow_id, trigger_id] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(slot.timestamp_micros().to_be_bytes());
    if let Some(b) = backfill_id {
        hasher.update([1u8]);
        hasher.update(b.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    encode_base62(u128::from_be_bytes(bytes))
}
