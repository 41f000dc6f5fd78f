//! The backfill API: replay the slots of a `Schedule` trigger over a past range.
//!
//! [`backfill()`] validates the range (`start < end <= now`), stores a
//! [`Backfill`] on the trigger's state and makes the trigger due; the scheduler then fires every slot
//! in `[start, end)` in order, one per evaluation step, with the backfill's inputs and labels plus
//! `system.backfill=true`, and clears the backfill after the last one. Each backfill gets a
//! `system.backfillId` label (a fresh id, also part of its executions' ids), so that backfilling a
//! range again creates new executions while a scheduler restart never duplicates one.
//!
//! The state is written with [`TriggerRepository::save`]: a scheduler that holds a claim on the trigger
//! at that very moment may overwrite it when it releases (the repository has no compare-and-set); the
//! caller then sees no backfill on the trigger and can ask again.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::SchedulerError;
use super::schedule::Timetable;
use super::service::BACKFILL_ID_LABEL;
use crate::flow::model::Flow;
use crate::flow::registry::{TaskRegistry, TriggerType};
use crate::flow::triggers::Schedule;
use crate::model::{Backfill, Label, TriggerState, new_id, trigger_uid};
use crate::repository::{FlowRepository, TriggerRepository};

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
    flows: &dyn FlowRepository,
    triggers: &dyn TriggerRepository,
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
    let flow: Flow =
        serde_json::from_value(record.flow.clone()).map_err(|e| SchedulerError::Flow {
            namespace: namespace.to_string(),
            id: flow_id.to_string(),
            message: e.to_string(),
        })?;
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
    let mut state = match triggers.find(&uid).await? {
        Some(s) => s,
        None => TriggerState::new(tenant, namespace, flow_id, trigger_id, record.revision, now),
    };
    if state.backfill.is_some() {
        return Err(SchedulerError::Conflict(format!(
            "a backfill already runs on trigger {uid}"
        )));
    }
    let mut labels: Vec<Label> = request
        .labels
        .into_iter()
        .filter(|l| !l.key.starts_with("system."))
        .collect();
    labels.push(Label::new(BACKFILL_ID_LABEL, new_id()));
    state.backfill = Some(Backfill {
        start: request.start,
        end: Some(end),
        current_date: first,
        paused: false,
        inputs: request.inputs,
        labels,
    });
    // Due at once: the scheduler fires the backfill's slots, then resumes the regular schedule after
    // the trigger's last handled slot (`date`).
    state.next_execution_date = Some(now);
    state.updated_date = now;
    triggers.save(&state).await?;
    Ok(state)
}
