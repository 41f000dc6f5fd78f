//! Log lines and metrics emitted by task runs and triggers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A generated default (a new id) is no default worth documenting, and would make the schema
/// differ at each call.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// Log level, ordered from the most verbose (`TRACE`) to the most severe (`ERROR`).
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
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info (default).
    #[default]
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

impl Level {
    /// Every level, most verbose first.
    pub const ALL: [Level; 5] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];

    /// Kestra's name, e.g. `INFO`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not a log level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level '{0}' (expected TRACE, DEBUG, INFO, WARN or ERROR)")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == upper || (upper == "WARNING" && *l == Level::Warn))
            .ok_or_else(|| UnknownLevel(s.to_string()))
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Stable id, given when the line is emitted: saving the same line again (a redelivered
    /// message) stores it once. A message without one (written before ids existed) gets a fresh id.
    #[serde(default = "crate::model::new_id")]
    #[schemars(transform = no_default)]
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Task id, for task logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Execution id, for execution logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Task run id, for task logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_run_id: Option<String>,
    /// Attempt number (0-based), for task logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_number: Option<u32>,
    /// Trigger id, for trigger logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
    /// When it was emitted.
    pub timestamp: DateTime<Utc>,
    /// Level.
    pub level: Level,
    /// Thread / source name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// The message.
    pub message: String,
}

/// Metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    /// A count.
    Counter,
    /// A duration in seconds.
    Timer,
}

/// One metric point emitted by a task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricEntry {
    /// Stable id, given when the point is emitted: saving the same point again (a redelivered
    /// message) stores it once. A message without one (written before ids existed) gets a fresh id.
    #[serde(default = "crate::model::new_id")]
    #[schemars(transform = no_default)]
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Execution id.
    pub execution_id: String,
    /// Task run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_run_id: Option<String>,
    /// Metric name.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub type_: MetricType,
    /// Value (seconds for timers).
    pub value: f64,
    /// Tags.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// When it was emitted.
    pub timestamp: DateTime<Utc>,
}
