//! Flow trigger `preconditions` over several conditions: time windows and the per-trigger state
//! that remembers which conditions upstream executions already met.
//!
//! Every upstream flow and every `where` group is one condition, with Kestra's ids: `condition_<n>`
//! for the n-th upstream flow, then `condition_<n>_<group id>` for the where groups, counting on
//! ([`condition_ids`]). A trigger fires when all of its
//! conditions have been met by executions inside the current [`WindowSpec`]. What has been met is a
//! [`PreconditionState`] kept in executor state ([`STATE_KIND`], one entry per trigger,
//! [`state_key`]) and owned by the trigger's keyed stage: the unit that ends an upstream execution
//! publishes a [`PreconditionCheck`] on [`Topic::FlowPrecondition`](crate::queue::Topic), keyed by
//! the trigger, and the unit that claims it loads, decides and saves. Two executors ending two
//! upstream executions at once publish two checks on one key, handled one after the other: no
//! condition is lost and a full set fires exactly once.
//!
//! Everything here is pure: [`apply`] maps (stored state, the conditions an ended execution met, its
//! time) to (new state, fire or not). The time is the upstream execution's last state change, so a
//! redelivered message decides the same way.
//!
//! Windows (UTC):
//! - `DURATION_WINDOW` (default; `window` PT24H by default): fixed windows of `window`, aligned on
//!   the Unix epoch and shifted by `windowAdvance` (PT1D: midnight to midnight; PT1H: each hour). A
//!   new window starts empty; an execution that belongs to an older window than the stored one
//!   (late delivery) does not count.
//! - `SLIDING_WINDOW` (`window`, PT24H by default): a condition counts if it was met less than
//!   `window` before the execution being evaluated.
//! - `DAILY_TIME_DEADLINE` (`deadline`): from midnight until `deadline`, each day; later executions
//!   do not count.
//! - `DAILY_TIME_WINDOW` (`startTime`, `endTime`): between the two times, each day; executions
//!   outside do not count.
//!
//! After firing, `resetOnSuccess` (default true) clears the results, so the next full set fires
//! again; with `false` the window stays satisfied until it ends and every further execution that
//! meets a condition fires again (as in Kestra).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expression::ExpressionEngine;
use crate::flow::triggers::{
    FilterField, FilterOperand, FilterType, PreconditionFilter, WhereFilter,
};
use crate::model::Execution;

use crate::flow::preconditions::full_match_regex;
pub use crate::flow::preconditions::{WindowSpec, check_filter, parse_time_of_day};

/// The executor-state kind holding precondition results.
pub const STATE_KIND: &str = "flow_preconditions";

/// The executor-state key of one trigger's results: `<tenant>|<namespace>|<flow id>|<trigger id>`.
pub fn state_key(tenant: &str, namespace: &str, flow_id: &str, trigger_id: &str) -> String {
    format!("{tenant}|{namespace}|{flow_id}|{trigger_id}")
}

/// A stable fingerprint (FNV-1a, hex) of a trigger's preconditions as written.
pub fn fingerprint(preconditions: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in preconditions.to_string().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The condition ids of `flows` upstream flows and of the `where` groups with these ids, as Kestra
/// numbers them: `condition_1`..`condition_<flows>`, then `condition_<n>_<group id>`.
pub fn condition_ids<'a>(
    flows: usize,
    groups: impl IntoIterator<Item = &'a str>,
) -> (Vec<String>, Vec<String>) {
    let upstream = (1..=flows).map(|n| format!("condition_{n}")).collect();
    let groups = groups
        .into_iter()
        .enumerate()
        .map(|(i, id)| format!("condition_{}_{id}", flows + i + 1))
        .collect();
    (upstream, groups)
}

/// What one trigger's preconditions have seen: the conditions met in the current window, with the
/// time each was last met.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionState {
    /// Identifies the preconditions the results belong to; results of an edited trigger are dropped.
    #[serde(default)]
    pub fingerprint: String,
    /// Start of the fixed window (absent for a sliding window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// End (exclusive) of the fixed window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Condition id -> when an execution last met it.
    #[serde(default)]
    pub results: BTreeMap<String, DateTime<Utc>>,
}

/// One ended execution seen by one trigger's preconditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreconditionCheck {
    /// Every condition id of the trigger.
    pub conditions: Vec<String>,
    /// The ids the ended execution meets (not empty).
    pub matched: Vec<String>,
    /// The window.
    pub window: WindowSpec,
    /// `resetOnSuccess` (true by default).
    pub reset_on_success: bool,
    /// Identifies the preconditions (see [`PreconditionState::fingerprint`]).
    pub fingerprint: String,
}

/// The outcome of [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct PreconditionDecision {
    /// The state to store (`None`: delete the entry).
    pub state: Option<PreconditionState>,
    /// Whether the stored state must be written.
    pub changed: bool,
    /// Whether the trigger fires.
    pub fire: bool,
    /// Why the execution did not count, if it did not.
    pub skipped: Option<String>,
}

/// Records that an execution at time `at` met `check.matched`, and decides whether the trigger
/// fires. Pure.
pub fn apply(
    stored: Option<PreconditionState>,
    check: &PreconditionCheck,
    at: DateTime<Utc>,
) -> PreconditionDecision {
    let unchanged = |stored: Option<PreconditionState>, why: String| PreconditionDecision {
        state: stored,
        changed: false,
        fire: false,
        skipped: Some(why),
    };
    let Some((start, end)) = check.window.bounds(at) else {
        return unchanged(
            stored,
            format!("{at} is outside the precondition time window"),
        );
    };
    let original = stored.clone();
    let stored = stored.filter(|s| s.fingerprint == check.fingerprint);
    let mut state = match (&check.window, stored.clone()) {
        (WindowSpec::Sliding { .. }, Some(mut s)) => {
            s.results.retain(|_, met| *met > start);
            s
        }
        (WindowSpec::Sliding { .. }, None) => PreconditionState::default(),
        (_, Some(s)) if s.start == Some(start) => s,
        (_, Some(s)) if s.start.is_some_and(|old| start < old) => {
            return unchanged(
                Some(s),
                format!("{at} belongs to a window older than the current one"),
            );
        }
        (_, _) => PreconditionState {
            start: Some(start),
            end: Some(end),
            ..PreconditionState::default()
        },
    };
    state.fingerprint = check.fingerprint.clone();
    for id in &check.matched {
        let entry = state.results.entry(id.clone()).or_insert(at);
        if *entry < at {
            *entry = at;
        }
    }
    let fire = check
        .conditions
        .iter()
        .all(|c| state.results.contains_key(c));
    let state = if fire && check.reset_on_success {
        None
    } else {
        Some(state)
    };
    PreconditionDecision {
        changed: state != original,
        state,
        fire,
        skipped: None,
    }
}

/// The context a `where` filter's EXPRESSION is rendered with: `flow`, `execution`, `labels`,
/// `inputs`, `outputs` (task outputs by task id) of the upstream execution, and `trigger`.
pub fn filter_context(ended: &Execution, trigger: &Value) -> Value {
    let mut outputs = serde_json::Map::new();
    for run in &ended.task_run_list {
        if let Some(o) = &run.outputs {
            outputs.insert(run.task_id.clone(), Value::Object(o.clone()));
        }
    }
    let labels: serde_json::Map<String, Value> = ended
        .labels
        .iter()
        .map(|l| (l.key.clone(), Value::String(l.value.clone())))
        .collect();
    serde_json::json!({
        "flow": {"id": ended.flow_id, "namespace": ended.namespace, "revision": ended.flow_revision,
                 "tenantId": ended.tenant_id},
        "execution": {"id": ended.id, "state": ended.state.current().as_str(),
                      "startDate": ended.state.start_date()},
        "labels": labels,
        "inputs": ended.inputs,
        "outputs": outputs,
        "trigger": trigger,
    })
}

/// Whether `ended` passes the `where` group (its `ctx` from [`filter_context`]). `Err` for a
/// filter that cannot be evaluated (missing value, bad regex, expression error).
pub fn where_matches(
    group: &WhereFilter,
    ended: &Execution,
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, String> {
    let mut results = group
        .filters
        .iter()
        .map(|f| filter_matches(f, ended, ctx, expr));
    match group.operand.unwrap_or_default() {
        FilterOperand::And => {
            for r in results.by_ref() {
                if !r? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        FilterOperand::Or => {
            for r in results.by_ref() {
                if r? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

fn filter_matches(
    filter: &PreconditionFilter,
    ended: &Execution,
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, String> {
    check_filter(filter)?;
    let value = filter.value.as_deref().unwrap_or_default();
    let field: Option<String> = match filter.field {
        FilterField::FlowId => Some(ended.flow_id.clone()),
        FilterField::Namespace => Some(ended.namespace.clone()),
        FilterField::State => Some(ended.state.current().as_str().to_string()),
        FilterField::Expression => {
            let rendered = expr.render_typed(value, ctx).map_err(|e| e.to_string())?;
            match rendered {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            }
        }
        FilterField::Label => {
            let key = value.split_once(':').map_or(value, |(k, _)| k);
            ended
                .labels
                .iter()
                .find(|l| l.key == key)
                .map(|l| format!("{}:{}", l.key, l.value))
        }
    };
    let values = filter.values.as_deref().unwrap_or_default();
    let truthy = |f: &Option<String>| {
        f.as_ref()
            .is_some_and(|s| !crate::executor::process::is_falsy(&Value::String(s.clone())))
    };
    Ok(match filter.filter_type {
        FilterType::EqualTo => field.as_deref() == Some(value),
        FilterType::NotEqualTo => field.as_deref() != Some(value),
        FilterType::In => field.as_ref().is_some_and(|f| values.contains(f)),
        FilterType::NotIn => !field.as_ref().is_some_and(|f| values.contains(f)),
        FilterType::IsTrue => truthy(&field),
        FilterType::IsFalse => !truthy(&field),
        FilterType::IsNull => field.is_none(),
        FilterType::IsNotNull => field.is_some(),
        FilterType::StartsWith => field.is_some_and(|f| f.starts_with(value)),
        FilterType::EndsWith => field.is_some_and(|f| f.ends_with(value)),
        FilterType::Regex => {
            let re = full_match_regex(value)?;
            field.is_some_and(|f| re.is_match(&f))
        }
        FilterType::Contains => field.is_some_and(|f| f.contains(value)),
    })
}
