//! The backfill API: replay the slots of a `Schedule` trigger over a past range.
//!
//! [`backfill()`] validates the range (`start < end <= now`), stores a
//! [`Backfill`] on the trigger's state and makes the trigger due; the scheduler then fires every slot
//! in `[start, end)` in order, one per evaluation step, with the backfill's inputs and labels plus
//! `system.backfill=true`, and clears the backfill after the last one. Each backfill gets a
//! `system.backfillId` label (a fresh id, also part of its executions' ids), so that backfilling a
//! range again creates new executions while a scheduler restart never duplicates one.
//!
//! The state is written in a [`TriggerUnit`](crate::queue::TriggerUnit) of the queue backend, under
//! the trigger's claim, so a scheduler never overwrites it: while a scheduler holds the trigger
//! (it is being evaluated), the request is tried again a few times, then refused as a conflict.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::SchedulerError;
use super::schedule::Timetable;
use super::service::BACKFILL_ID_LABEL;
use crate::flow::Flow;
use crate::flow::registry::{TaskRegistry, TriggerType};
use crate::flow::triggers::Schedule;
use crate::model::{Backfill, Label, TriggerState, new_id, trigger_uid};
use crate::queue::Queue;
use crate::runtime::flows::FlowSource;

/// How many times a backfill tries to claim a trigger a scheduler holds, and how long it waits
/// between tries.
const CLAIM_TRIES: u32 = 40;
const CLAIM_PAUSE: Duration = Duration::from_millis(50);

/// What to backfill.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackfillRequest {
    /// First slot (inclusive).
    pub start: DateTime<Utc>,
    /// End (exclusive); `None`: now.
    pub end: Option<DateTime<Utc>>,
    /// Inputs of the backfilled executions (override the trigger's).
    pub inputs: Map<String, Value>,
    /// Labels of the backfilled executions (`system.*` keys are ignored).
    pub labels: Vec<Label>,
}

/// Start a backfill on the `Schedule` trigger `trigger_id` of a flow. Fails if the range is invalid or
/// empty, if the trigger is not a schedule, or if a backfill already runs on it. Returns the stored
/// state.
#[allow(clippy::too_many_arguments)]
pub async fn backfill(
    flows: &dyn FlowSource,
    queue: &dyn Queue,
    registry: &TaskRegistry,
    now: DateTime<Utc>,
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    request: BackfillRequest,
) -> Result<TriggerState, SchedulerError> {
    let end = request.end.unwrap_or(now);
    if request.start >= end {
        return Err(SchedulerError::InvalidRequest(format!(
            "backfill start {} must be before its end {end}",
            request.start
        )));
    }
    if end > now {
        return Err(SchedulerError::InvalidRequest(format!(
            "backfill end {end} is in the future (now is {now})"
        )));
    }
    let not_found = || SchedulerError::TriggerNotFound {
        namespace: namespace.to_string(),
        flow_id: flow_id.to_string(),
        trigger_id: trigger_id.to_string(),
    };
    let record = flows
        .find(tenant, namespace, flow_id, None)
        .await?
        .ok_or_else(not_found)?;
    let revision = record.revision;
    let mut flow: Flow = serde_json::from_value(record.flow).map_err(|e| SchedulerError::Flow {
        namespace: namespace.to_string(),
        id: flow_id.to_string(),
        message: e.to_string(),
    })?;
    flow.revision = Some(revision);
    let flow =
        crate::flow::apply_plugin_defaults(&flow, registry).map_err(|e| SchedulerError::Flow {
            namespace: namespace.to_string(),
            id: flow_id.to_string(),
            message: e.to_string(),
        })?;
    let trigger = flow
        .triggers
        .iter()
        .find(|t| t.id == trigger_id)
        .ok_or_else(not_found)?;
    let is_schedule = registry
        .resolve_trigger(&trigger.trigger_type)
        .is_some_and(|e| e.type_name == Schedule::TYPE);
    if !is_schedule {
        return Err(not_found());
    }
    let schedule = registry
        .decode_trigger::<Schedule>(trigger)
        .map_err(|e| SchedulerError::InvalidRequest(e.to_string()))?;
    let timetable = Timetable::of_schedule(&schedule)
        .map_err(|e| SchedulerError::InvalidRequest(e.to_string()))?;
    let first = timetable
        .next_at_or_after(request.start)
        .map_err(|e| SchedulerError::InvalidRequest(e.to_string()))?
        .filter(|s| *s < end)
        .ok_or_else(|| {
            SchedulerError::InvalidRequest(format!(
                "no slot of '{}' between {} and {end}",
                schedule.cron, request.start
            ))
        })?;

    let uid = trigger_uid(tenant, namespace, flow_id, trigger_id);
    let mut labels: Vec<Label> = request
        .labels
        .into_iter()
        .filter(|l| !l.key.starts_with("system."))
        .collect();
    labels.push(Label::new(BACKFILL_ID_LABEL, new_id()));
    let backfill = Backfill {
        start: request.start,
        end: Some(end),
        current_date: first,
        paused: false,
        inputs: request.inputs,
        labels,
    };
    for _ in 0..CLAIM_TRIES {
        let mut unit = queue.begin_triggers().await?;
        let (mut state, exists) = match unit.claim(&uid).await? {
            Some(s) => (s, true),
            None => (
                TriggerState::new(tenant, namespace, flow_id, trigger_id, revision, now),
                false,
            ),
        };
        if state.backfill.is_some() {
            return Err(SchedulerError::Conflict(format!(
                "a backfill already runs on trigger {uid}"
            )));
        }
        state.backfill = Some(backfill.clone());
        // Due at once: the scheduler fires the backfill's slots, then resumes the regular schedule
        // after the trigger's last handled slot (`date`).
        state.next_execution_date = Some(now);
        state.updated_date = now;
        if exists {
            unit.save(&state).await?;
        } else if !unit.create(&state).await? {
            // It exists and a scheduler holds it: try again once the scheduler's step ends.
            drop(unit);
            tokio::time::sleep(CLAIM_PAUSE).await;
            continue;
        }
        unit.commit().await?;
        return Ok(state);
    }
    Err(SchedulerError::Conflict(format!(
        "trigger {uid} is held by a scheduler; try again"
    )))
}
