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
    pub date: DateTime<Utc>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    start_date: Option<DateTime<Utc>>,
    /// Date of the terminal state, once reached.
    #[serde(skip_serializing_if = "Option::is_none")]
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
}
