//! Trigger state: what the scheduler remembers about each trigger of each flow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The stored state of one trigger (`triggers` table / topic), keyed by
/// (tenant, namespace, flow id, trigger id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerState {
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Trigger id in the flow.
    pub trigger_id: String,
    /// Flow revision the state was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_revision: Option<i32>,
    /// Last slot that was evaluated (schedule: the date of the last fired slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<DateTime<Utc>>,
    /// When the trigger is next due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_execution_date: Option<DateTime<Utc>>,
    /// The running execution that holds the trigger's lock (when `allowConcurrent` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Since when a worker evaluates it (polling triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_running_date: Option<DateTime<Utc>>,
    /// Worker evaluating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Disabled by a user or by the system after an evaluation error.
    #[serde(default)]
    pub disabled: bool,
    /// The last evaluation error, shown to users when the system disabled the trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A running backfill, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Backfill>,
    /// Last update.
    pub updated_date: DateTime<Utc>,
}

impl TriggerState {
    /// The state of a trigger seen for the first time: nothing fired, nothing scheduled yet.
    pub fn new(
        tenant: &str,
        namespace: &str,
        flow_id: &str,
        trigger_id: &str,
        flow_revision: i32,
        now: DateTime<Utc>,
    ) -> TriggerState {
        TriggerState {
            tenant_id: tenant.to_string(),
            namespace: namespace.to_string(),
            flow_id: flow_id.to_string(),
            trigger_id: trigger_id.to_string(),
            flow_revision: Some(flow_revision),
            date: None,
            next_execution_date: None,
            execution_id: None,
            evaluate_running_date: None,
            worker_id: None,
            disabled: false,
            error: None,
            backfill: None,
            updated_date: now,
        }
    }

    /// Stable key `tenant_namespace_flow_trigger`, as Kestra's `Trigger.uid`.
    pub fn uid(&self) -> String {
        trigger_uid(
            &self.tenant_id,
            &self.namespace,
            &self.flow_id,
            &self.trigger_id,
        )
    }
}

/// The key of a trigger's state.
pub fn trigger_uid(tenant: &str, namespace: &str, flow_id: &str, trigger_id: &str) -> String {
    format!("{tenant}_{namespace}_{flow_id}_{trigger_id}")
}

/// A backfill over a past range of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backfill {
    /// First slot (inclusive).
    pub start: DateTime<Utc>,
    /// Last slot (exclusive); `None` = up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Next slot to fire.
    pub current_date: DateTime<Utc>,
    /// Paused by a user.
    #[serde(default)]
    pub paused: bool,
    /// Inputs for the backfilled executions.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Labels for the backfilled executions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<super::execution::Label>,
}
