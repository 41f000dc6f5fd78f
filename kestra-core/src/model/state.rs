//! States of executions, task runs and attempts, with their timestamped history and the allowed
//! transitions.
//!
//! The JSON shape is Kestra's: `{"current": "RUNNING", "histories": [{"state": "CREATED", "date": ...}],
//! "startDate": ..., "endDate": ..., "duration": "PT1.5S"}`. `startDate`, `endDate` and `duration` are
//! derived from the history when serialising and ignored when reading.
//!
//! ## Transitions
//!
//! [`State::transition`] refuses moves that Kestra never makes, so that a stale or duplicated message
//! cannot move an entity backwards:
//! - nothing moves back to `CREATED`, and no state moves to itself;
//! - a terminal state (SUCCESS, WARNING, FAILED, KILLED, CANCELLED, RETRIED, SKIPPED) may only move to
//!   `RESTARTED` (restart of an execution or task run), and FAILED/WARNING/KILLED additionally to
//!   `RETRYING` (a retry planned for a finished attempt) or `RETRIED`;
//! - any other state may move to any state but `CREATED`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of Kestra's states.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateType {
    /// Created, not started yet.
    Created,
    /// Waiting for a concurrency slot.
    Queued,
    /// Running.
    Running,
    /// Paused (Pause task, or waiting for a resume).
    Paused,
    /// Restarted by a user; runs again.
    Restarted,
    /// A kill was asked; running parts are being stopped.
    Killing,
    /// Ended successfully.
    Success,
    /// Ended with warnings.
    Warning,
    /// Ended in failure.
    Failed,
    /// Ended by a kill.
    Killed,
    /// Cancelled (e.g. by a concurrency limit) before it ran.
    Cancelled,
    /// A retry is planned.
    Retrying,
    /// Ended and replaced by a retry (attempt or execution).
    Retried,
    /// Not run (`runIf` was false).
    Skipped,
    /// Re-sent to another worker after its worker died.
    Resubmitted,
}

impl StateType {
    /// Every state, in declaration order.
    pub const ALL: [StateType; 15] = [
        StateType::Created,
        StateType::Queued,
        StateType::Running,
        StateType::Paused,
        StateType::Restarted,
        StateType::Killing,
        StateType::Success,
        StateType::Warning,
        StateType::Failed,
        StateType::Killed,
        StateType::Cancelled,
        StateType::Retrying,
        StateType::Retried,
        StateType::Skipped,
        StateType::Resubmitted,
    ];

    /// Kestra's name, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateType::Created => "CREATED",
            StateType::Queued => "QUEUED",
            StateType::Running => "RUNNING",
            StateType::Paused => "PAUSED",
            StateType::Restarted => "RESTARTED",
            StateType::Killing => "KILLING",
            StateType::Success => "SUCCESS",
            StateType::Warning => "WARNING",
            StateType::Failed => "FAILED",
            StateType::Killed => "KILLED",
            StateType::Cancelled => "CANCELLED",
            StateType::Retrying => "RETRYING",
            StateType::Retried => "RETRIED",
            StateType::Skipped => "SKIPPED",
            StateType::Resubmitted => "RESUBMITTED",
        }
    }

    /// Terminal states: SUCCESS, WARNING, FAILED, KILLED, CANCELLED, RETRIED, SKIPPED.
    pub fn is_terminated(self) -> bool {
        matches!(
            self,
            StateType::Success
                | StateType::Warning
                | StateType::Failed
                | StateType::Killed
                | StateType::Cancelled
                | StateType::Retried
                | StateType::Skipped
        )
    }

    /// States in which an execution holds a concurrency slot / a schedule lock (not terminal, not queued).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            StateType::Running
                | StateType::Paused
                | StateType::Killing
                | StateType::Restarted
                | StateType::Retrying
                | StateType::Resubmitted
        )
    }

    /// FAILED, KILLED (the failure-like terminal states).
    pub fn is_failed(self) -> bool {
        matches!(self, StateType::Failed | StateType::Killed)
    }

    /// Whether `self -> to` is an allowed transition (see the module documentation).
    pub fn can_transition_to(self, to: StateType) -> bool {
        if to == StateType::Created || to == self {
            return false;
        }
        if self.is_terminated() {
            return match to {
                StateType::Restarted => true,
                StateType::Retrying | StateType::Retried => matches!(
                    self,
                    StateType::Failed | StateType::Warning | StateType::Killed
                ),
                _ => false,
            };
        }
        true
    }
}

impl fmt::Display for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of Kestra's states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state '{0}' (expected one of CREATED, QUEUED, RUNNING, PAUSED, RESTARTED, KILLING, SUCCESS, WARNING, FAILED, KILLED, CANCELLED, RETRYING, RETRIED, SKIPPED, RESUBMITTED)"
)]
pub struct UnknownState(pub String);

impl FromStr for StateType {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StateType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state transition {from} -> {to} is not allowed")]
pub struct InvalidTransition {
    /// Current state.
    pub from: StateType,
    /// Requested state.
    pub to: StateType,
}

/// One entry of a state history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateHistory {
    /// The state entered.
    pub state: StateType,
    /// When it was entered (UTC).
    #[serde(serialize_with = "serialize_date")]
    pub date: DateTime<Utc>,
}

/// Serialise a UTC date exactly as chrono's `Serialize` does (RFC 3339 with `Z`, the fraction of a
/// second in 0, 3, 6 or 9 digits, chrono's `SecondsFormat::AutoSi`), without going through its
/// general formatter: every state history entry of every task run is written each time an
/// execution is saved, and chrono's formatting was most of the cost of that. Dates chrono writes
/// differently (a year outside 0-9999, a leap second) are left to chrono.
pub fn serialize_date<S: serde::Serializer>(
    date: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format_date(date, &mut buf) {
        Some(text) => serializer.serialize_str(text),
        None => date.serialize(serializer),
    }
}

/// [`serialize_date`] of an optional date (`None` as chrono's `Option` gives it: `null`).
pub fn serialize_option_date<S: serde::Serializer>(
    date: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match date {
        Some(date) => serialize_date(date, serializer),
        None => serializer.serialize_none(),
    }
}

/// `date` as chrono writes it, into `buf`; `None` for the dates this fast path leaves to chrono.
fn format_date<'a>(date: &DateTime<Utc>, buf: &'a mut [u8; 30]) -> Option<&'a str> {
    use chrono::{Datelike, Timelike};
    let year = date.year();
    let nano = date.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return None;
    }
    fn digits(buf: &mut [u8], mut value: u32) {
        for b in buf.iter_mut().rev() {
            // `value % 10` is a digit.
            *b = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    digits(&mut buf[0..4], year.unsigned_abs());
    buf[4] = b'-';
    digits(&mut buf[5..7], date.month());
    buf[7] = b'-';
    digits(&mut buf[8..10], date.day());
    buf[10] = b'T';
    digits(&mut buf[11..13], date.hour());
    buf[13] = b':';
    digits(&mut buf[14..16], date.minute());
    buf[16] = b':';
    digits(&mut buf[17..19], date.second());
    let mut len = 19;
    if nano != 0 {
        let (value, width) = if nano.is_multiple_of(1_000_000) {
            (nano / 1_000_000, 3)
        } else if nano.is_multiple_of(1_000) {
            (nano / 1_000, 6)
        } else {
            (nano, 9)
        };
        buf[19] = b'.';
        digits(&mut buf[20..20 + width], value);
        len = 20 + width;
    }
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..=len]).ok()
}

/// A current state and its timestamped history (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    current: StateType,
    histories: Vec<StateHistory>,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

impl State {
    /// A new state: CREATED now.
    pub fn new() -> State {
        State::new_at(StateType::Created, Utc::now())
    }

    /// A state starting in `state` at `date`.
    pub fn new_at(state: StateType, date: DateTime<Utc>) -> State {
        State {
            current: state,
            histories: vec![StateHistory { state, date }],
        }
    }

    /// Rebuild a state from a stored history (the last entry is current). `None` if empty.
    pub fn from_histories(histories: Vec<StateHistory>) -> Option<State> {
        let current = histories.last()?.state;
        Some(State { current, histories })
    }

    /// The current state.
    pub fn current(&self) -> StateType {
        self.current
    }

    /// The history, oldest first; the last entry is the current state.
    pub fn histories(&self) -> &[StateHistory] {
        &self.histories
    }

    /// Move to `to` now, if allowed.
    pub fn transition(&mut self, to: StateType) -> Result<(), InvalidTransition> {
        self.transition_at(to, Utc::now())
    }

    /// Move to `to` at `date`, if allowed.
    pub fn transition_at(
        &mut self,
        to: StateType,
        date: DateTime<Utc>,
    ) -> Result<(), InvalidTransition> {
        if !self.current.can_transition_to(to) {
            return Err(InvalidTransition {
                from: self.current,
                to,
            });
        }
        self.current = to;
        self.histories.push(StateHistory { state: to, date });
        Ok(())
    }

    /// Whether the current state is terminal.
    pub fn is_terminated(&self) -> bool {
        self.current.is_terminated()
    }

    /// Date of the first history entry.
    pub fn start_date(&self) -> Option<DateTime<Utc>> {
        self.histories.first().map(|h| h.date)
    }

    /// Date of the last history entry, when the state is terminal.
    pub fn end_date(&self) -> Option<DateTime<Utc>> {
        if self.is_terminated() {
            self.histories.last().map(|h| h.date)
        } else {
            None
        }
    }

    /// When the state last became `state`, if ever.
    pub fn last_date_of(&self, state: StateType) -> Option<DateTime<Utc>> {
        self.histories
            .iter()
            .rev()
            .find(|h| h.state == state)
            .map(|h| h.date)
    }

    /// Time from start to end (or to `now` if not terminal).
    pub fn duration(&self, now: DateTime<Utc>) -> chrono::Duration {
        let start = self.start_date().unwrap_or(now);
        let end = self.end_date().unwrap_or(now);
        end - start
    }
}

/// Format a duration as ISO-8601 (`PT1.5S`, `PT2M3S`, `PT0S`), as Kestra prints them.
pub fn format_iso_duration(d: chrono::Duration) -> String {
    let negative = d < chrono::Duration::zero();
    let d = if negative { -d } else { d };
    let total_ms = d.num_milliseconds();
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms % 3_600_000) / 60_000;
    let millis = total_ms % 60_000;
    // Written into one string (this runs for every state of every task run an execution saves).
    use std::fmt::Write as _;
    let mut out = String::with_capacity(16);
    out.push_str(if negative { "-PT" } else { "PT" });
    if hours > 0 {
        let _ = write!(out, "{hours}H");
    }
    if minutes > 0 {
        let _ = write!(out, "{minutes}M");
    }
    if millis > 0 || (hours == 0 && minutes == 0) {
        let secs = millis / 1000;
        let frac = millis % 1000;
        let _ = write!(out, "{secs}");
        if frac != 0 {
            // Milliseconds as a fraction, trailing zeros dropped: 0.5, 0.05, 0.123.
            let (mut frac, mut width) = (frac, 3);
            while frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            let _ = write!(out, ".{frac:0width$}");
        }
        out.push('S');
    }
    out
}

/// A state as serialised: the current state, its history, and the start, end and duration derived
/// from the history.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct StateOut<'a> {
    /// The current state.
    current: StateType,
    /// Every state reached, oldest first, with its date.
    histories: &'a [StateHistory],
    /// Date of the first state.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_option_date"
    )]
    start_date: Option<DateTime<Utc>>,
    /// Date of the terminal state, once reached.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_option_date"
    )]
    end_date: Option<DateTime<Utc>>,
    /// ISO-8601 duration from the start to the end (or to the last state so far).
    duration: String,
}

impl schemars::JsonSchema for State {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "State".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <StateOut<'static> as schemars::JsonSchema>::json_schema(generator)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateIn {
    current: StateType,
    #[serde(default)]
    histories: Vec<StateHistory>,
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let end = self
            .end_date()
            .or_else(|| self.histories.last().map(|h| h.date));
        let duration = match (self.start_date(), end) {
            (Some(s), Some(e)) => format_iso_duration(e - s),
            _ => "PT0S".to_string(),
        };
        StateOut {
            current: self.current,
            histories: &self.histories,
            start_date: self.start_date(),
            end_date: self.end_date(),
            duration,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = StateIn::deserialize(deserializer)?;
        let mut histories = raw.histories;
        if histories.last().map(|h| h.state) != Some(raw.current) {
            // A state written without history (hand-written JSON): record the current state with the
            // epoch date so that the value stays consistent.
            histories.push(StateHistory {
                state: raw.current,
                date: DateTime::<Utc>::UNIX_EPOCH,
            });
        }
        Ok(State {
            current: raw.current,
            histories,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast date format is chrono's, byte for byte: whole seconds, milli-, micro- and
    /// nanoseconds, the bounds of the years it handles, and the dates it leaves to chrono.
    #[test]
    fn dates_are_written_as_chrono_writes_them() {
        let mut dates: Vec<DateTime<Utc>> = Vec::new();
        for (secs, nanos) in [
            (0, 0),
            (1_767_225_600, 0),
            (1_767_225_600, 5_000_000),
            (1_767_225_600, 120_000_000),
            (1_767_225_600, 999_000_000),
            (1_767_225_600, 1_000),
            (1_767_225_600, 123_456_000),
            (1_767_225_600, 1),
            (1_767_225_600, 999_999_999),
            (1_767_225_600, 100_000_001),
            (951_782_400, 7_000_007),
            (-62_167_219_200, 0),           // 0000-01-01
            (253_402_300_799, 999_000_000), // 9999-12-31T23:59:59.999
            (253_402_300_800, 0),           // 10000-01-01: chrono's own path
            (-62_167_219_201, 0),           // year -1: chrono's own path
        ] {
            dates.push(DateTime::from_timestamp(secs, nanos).expect("a valid date"));
        }
        // A pseudo-random spread over the years 0 to 9999.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 315_537_897_600) as i64 - 62_167_219_200;
            let nanos = match x % 4 {
                0 => 0,
                1 => ((x >> 8) % 1_000) as u32 * 1_000_000,
                2 => ((x >> 8) % 1_000_000) as u32 * 1_000,
                _ => ((x >> 8) % 1_000_000_000) as u32,
            };
            dates.push(DateTime::from_timestamp(secs, nanos).expect("a valid date"));
        }
        // A leap second (chrono's own path).
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .expect("a leap second")
            .and_utc();
        dates.push(leap);
        for date in dates {
            let mut out = Vec::new();
            serialize_date(&date, &mut serde_json::Serializer::new(&mut out)).expect("serialised");
            let chrono = serde_json::to_string(&date).expect("serialised");
            assert_eq!(String::from_utf8_lossy(&out), chrono, "{date:?}");
            let history = StateHistory {
                state: StateType::Running,
                date,
            };
            let json = serde_json::to_string(&history).expect("serialised");
            assert_eq!(json, format!(r#"{{"state":"RUNNING","date":{chrono}}}"#));
            let back: StateHistory = serde_json::from_str(&json).expect("parsed");
            assert_eq!(back, history);
        }
    }

    #[test]
    fn names_round_trip() {
        for t in StateType::ALL {
            assert_eq!(t.as_str().parse::<StateType>(), Ok(t));
            assert_eq!(
                serde_json::to_value(t).ok(),
                Some(serde_json::json!(t.as_str()))
            );
        }
        assert!("DONE".parse::<StateType>().is_err());
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<_> = StateType::ALL
            .into_iter()
            .filter(|t| t.is_terminated())
            .collect();
        assert_eq!(
            terminal,
            vec![
                StateType::Success,
                StateType::Warning,
                StateType::Failed,
                StateType::Killed,
                StateType::Cancelled,
                StateType::Retried,
                StateType::Skipped
            ]
        );
    }

    #[test]
    fn transitions_are_enforced() {
        let mut s = State::new();
        assert!(s.transition(StateType::Running).is_ok());
        assert!(s.transition(StateType::Success).is_ok());
        assert_eq!(
            s.transition(StateType::Running),
            Err(InvalidTransition {
                from: StateType::Success,
                to: StateType::Running
            })
        );
        assert!(s.transition(StateType::Created).is_err());
        assert!(s.transition(StateType::Restarted).is_ok());
        assert!(s.transition(StateType::Running).is_ok());
        assert!(
            s.transition(StateType::Running).is_err(),
            "no self transition"
        );
        assert!(s.transition(StateType::Failed).is_ok());
        assert!(s.transition(StateType::Retrying).is_ok());
        assert_eq!(s.histories().len(), 7);
        assert_eq!(s.current(), StateType::Retrying);
    }

    #[test]
    fn json_shape_and_round_trip() -> Result<(), serde_json::Error> {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map_err(serde::de::Error::custom)?;
        let t0 = t0.with_timezone(&Utc);
        let mut s = State::new_at(StateType::Created, t0);
        s.transition_at(StateType::Running, t0 + chrono::Duration::milliseconds(500))
            .ok();
        s.transition_at(
            StateType::Success,
            t0 + chrono::Duration::milliseconds(1500),
        )
        .ok();
        let json = serde_json::to_value(&s)?;
        assert_eq!(json["current"], "SUCCESS");
        assert_eq!(json["duration"], "PT1.5S");
        assert_eq!(json["startDate"], "2026-01-01T00:00:00Z");
        assert_eq!(json["endDate"], "2026-01-01T00:00:01.500Z");
        assert_eq!(json["histories"][1]["state"], "RUNNING");
        let back: State = serde_json::from_value(json)?;
        assert_eq!(back, s);
        Ok(())
    }

    #[test]
    fn iso_durations() {
        assert_eq!(format_iso_duration(chrono::Duration::zero()), "PT0S");
        assert_eq!(
            format_iso_duration(chrono::Duration::milliseconds(1500)),
            "PT1.5S"
        );
        assert_eq!(
            format_iso_duration(chrono::Duration::seconds(3723)),
            "PT1H2M3S"
        );
        assert_eq!(
            format_iso_duration(chrono::Duration::milliseconds(20)),
            "PT0.02S"
        );
    }

    /// The one-string formatter gives what the former one (a `format!` per part) gave.
    #[test]
    fn iso_durations_as_before() {
        fn former(d: chrono::Duration) -> String {
            let negative = d < chrono::Duration::zero();
            let d = if negative { -d } else { d };
            let total_ms = d.num_milliseconds();
            let hours = total_ms / 3_600_000;
            let minutes = (total_ms % 3_600_000) / 60_000;
            let millis = total_ms % 60_000;
            let mut out = String::from(if negative { "-PT" } else { "PT" });
            if hours > 0 {
                out.push_str(&format!("{hours}H"));
            }
            if minutes > 0 {
                out.push_str(&format!("{minutes}M"));
            }
            if millis > 0 || (hours == 0 && minutes == 0) {
                let secs = millis / 1000;
                let frac = millis % 1000;
                if frac == 0 {
                    out.push_str(&format!("{secs}S"));
                } else {
                    let f = format!("{frac:03}");
                    out.push_str(&format!("{secs}.{}S", f.trim_end_matches('0')));
                }
            }
            out
        }
        let samples = (0..130_000)
            .chain((0..2_000).map(|i| i * 3_599_917))
            .chain([86_400_000 * 400 + 1, i64::from(i32::MAX)]);
        for ms in samples {
            for d in [
                chrono::Duration::milliseconds(ms),
                chrono::Duration::milliseconds(-ms),
            ] {
                assert_eq!(format_iso_duration(d), former(d), "{ms} ms");
            }
        }
    }
}
