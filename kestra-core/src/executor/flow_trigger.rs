//! The Flow trigger: when an execution ends (or pauses), start the flows whose
//! `io.kestra.plugin.core.trigger.Flow` trigger matches it. Pure: the runtime gives the ended execution
//! and the candidate flows, and publishes what this returns.
//!
//! Supported: `states` (default: terminal states and PAUSED), the conditions `ExecutionStatus`
//! (`in`, `notIn`), `ExecutionFlow` (`namespace`, `flowId`), `ExecutionNamespace` (`namespace`,
//! `comparison` EQUALS | PREFIX | SUFFIX, or the old `prefix: true`), `ExecutionLabels` (`labels`),
//! `Expression` (`expression`, rendered with `trigger.*`), their legacy names, and `preconditions`:
//! - each upstream flow (`flows[n]`: `namespace`, `flowId` (any flow of the namespace when absent),
//!   `states` (SUCCESS by default - Kestra accepts any state there), `labels`) is one condition;
//! - each `where` group (`id`, `operand` AND | OR, `filters [{field FLOW_ID | NAMESPACE | STATE |
//!   EXPRESSION | LABEL, type EQUAL_TO | NOT_EQUAL_TO | IN | NOT_IN | IS_TRUE | IS_FALSE | IS_NULL |
//!   IS_NOT_NULL | STARTS_WITH | ENDS_WITH | REGEX | CONTAINS, value | values}]`) is one condition,
//!   (see [`preconditions::where_matches`]; `LABEL` comes from Kestra's AdvancedExecutionsCondition);
//! - condition ids follow Kestra's numbering ([`preconditions::condition_ids`]);
//! - `timeWindow` and `resetOnSuccess`: see [`preconditions`].
//!
//! Evaluation happens in two pure steps. [`plan_flow_triggers`] checks states, conditions and which
//! precondition conditions the ended execution meets, at the time it reached its state
//! ([`event_time`]). A trigger without preconditions, or with a single condition met inside its
//! window, is *ready*. A trigger with several conditions is *pending*: its decision needs the
//! trigger's [`PreconditionState`], which belongs to the trigger's keyed stage, not to the unit
//! that ends the upstream execution. That unit publishes a [`PreconditionMessage`] on
//! [`Topic::FlowPrecondition`], keyed by the trigger ([`preconditions::state_key`]); the unit that
//! claims it loads the state (`load_state(preconditions::STATE_KIND, key)`), calls
//! [`preconditions::apply`], saves the new state and starts the execution if it fires. Checks of
//! one trigger are handled one at a time in publish order, so concurrent executors ending upstream
//! executions never lose a condition and a full set fires exactly once. [`triggered_executions`]
//! runs both steps against an in-memory map (tests, embedders).
//!
//! The triggered execution's `trigger.*` describes the execution that completed the set (Kestra
//! merges the outputs of every matched execution; not done here).
//!
//! A flow never triggers itself, and a chain of flow-triggered executions stops at
//! [`MAX_TRIGGER_DEPTH`] (the depth travels in the trigger variables).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::executor::preconditions::{
    self, PreconditionCheck, PreconditionState, WindowSpec, condition_ids, where_matches,
};
use crate::expression::ExpressionEngine;
use crate::flow::model::{Flow, Trigger};
use crate::flow::registry::TaskRegistry;
use crate::flow::triggers::FlowTrigger;
use crate::model::{Execution, ExecutionTrigger, Label, StateType};
use crate::queue::{Envelope, QueueError, Topic};

/// Canonical type name of the Flow trigger.
pub const FLOW_TRIGGER_TYPE: &str = "io.kestra.plugin.core.trigger.Flow";

/// Longest chain of flow-triggered executions.
pub const MAX_TRIGGER_DEPTH: u64 = 10;

/// An execution to start because of a Flow trigger, with its raw inputs (the runtime resolves them
/// against the flow's input definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggeredExecution {
    /// The new execution (inputs not resolved yet).
    pub execution: Execution,
    /// The trigger's `inputs`, rendered.
    pub inputs: Map<String, Value>,
}

fn names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn labels_match(wanted: Option<&Value>, execution: &Execution) -> bool {
    let pairs: Vec<(String, String)> = match wanted {
        None | Some(Value::Null) => return true,
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|l| {
                Some((
                    l.get("key")?.as_str()?.to_string(),
                    l.get("value")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        Some(_) => return false,
    };
    pairs
        .iter()
        .all(|(k, v)| execution.label(k) == Some(v.as_str()))
}

/// Depth of an execution in a chain of flow-triggered executions (0 if not flow-triggered).
pub fn trigger_depth(execution: &Execution) -> u64 {
    execution
        .trigger
        .as_ref()
        .filter(|t| t.type_ == FLOW_TRIGGER_TYPE)
        .and_then(|t| t.variables.get("depth"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Whether one condition holds for `ended`; `Err` for an unsupported condition type.
fn condition_holds(
    condition: &Value,
    ended: &Execution,
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, String> {
    let ty = condition
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let short = ty
        .rsplit('.')
        .next()
        .unwrap_or(ty)
        .trim_end_matches("Condition");
    let state = ended.state.current().as_str();
    match short {
        "ExecutionStatus" => {
            let inside = names(condition.get("in"));
            let outside = names(condition.get("notIn"));
            Ok((inside.is_empty() || inside.iter().any(|s| s == state))
                && !outside.iter().any(|s| s == state))
        }
        "ExecutionFlow" => Ok(condition.get("namespace").and_then(Value::as_str)
            == Some(ended.namespace.as_str())
            && condition.get("flowId").and_then(Value::as_str) == Some(ended.flow_id.as_str())),
        "ExecutionNamespace" => {
            let ns = condition
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let prefix = condition
                .get("prefix")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let comparison = condition
                .get("comparison")
                .and_then(Value::as_str)
                .unwrap_or(if prefix { "PREFIX" } else { "EQUALS" });
            Ok(match comparison {
                "PREFIX" => ended.namespace.starts_with(ns),
                "SUFFIX" => ended.namespace.ends_with(ns),
                _ => ended.namespace == ns,
            })
        }
        "ExecutionLabels" => Ok(labels_match(condition.get("labels"), ended)),
        "Expression" => {
            let text = condition
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or("false");
            let v = expr.render_typed(text, ctx).map_err(|e| e.to_string())?;
            Ok(!crate::executor::process::is_falsy(&v))
        }
        _ => Err(format!(
            "condition type '{ty}' is not supported by the Flow trigger yet"
        )),
    }
}

/// What `trigger.*` shows to the triggered execution (and to the trigger's `inputs`).
fn trigger_variables(ended: &Execution) -> Map<String, Value> {
    let mut v = Map::new();
    v.insert("executionId".into(), json!(ended.id));
    v.insert("namespace".into(), json!(ended.namespace));
    v.insert("flowId".into(), json!(ended.flow_id));
    v.insert("flowRevision".into(), json!(ended.flow_revision));
    v.insert("state".into(), json!(ended.state.current().as_str()));
    v.insert("depth".into(), json!(trigger_depth(ended) + 1));
    v
}

/// What one trigger makes of an ended execution.
enum Verdict {
    /// It does not fire.
    No,
    /// It fires now.
    Fire,
    /// It fires if its precondition state says so.
    Pending(PreconditionCheck),
}

/// Evaluate one trigger of `flow` for `ended` at time `at`.
fn evaluate(
    trigger: &Trigger,
    spec: &FlowTrigger,
    ended: &Execution,
    ctx: &Value,
    expr: &ExpressionEngine,
    at: DateTime<Utc>,
) -> Result<Verdict, String> {
    let state = ended.state.current();
    let states_ok = match &spec.states {
        Some(list) => list.iter().any(|s| s == state.as_str()),
        None => state.is_terminated() || state == StateType::Paused,
    };
    if !states_ok {
        return Ok(Verdict::No);
    }
    for c in &trigger.conditions {
        if !condition_holds(c, ended, ctx, expr)? {
            return Ok(Verdict::No);
        }
    }
    let Some(pre) = &spec.preconditions else {
        return Ok(Verdict::Fire);
    };
    let window = WindowSpec::from_config(pre.time_window.as_ref())
        .map_err(|(prop, m)| format!("preconditions.timeWindow.{prop}: {m}"))?;
    let upstream_flows = pre.flows.as_deref().unwrap_or_default();
    let groups = pre.where_filters.as_deref().unwrap_or_default();
    let (upstream_ids, group_ids) =
        condition_ids(upstream_flows.len(), groups.iter().map(|g| g.id.as_str()));
    let mut matched = Vec::new();
    for (up, id) in upstream_flows.iter().zip(&upstream_ids) {
        let flow_ok = up.namespace == ended.namespace
            && up.flow_id.as_ref().is_none_or(|f| *f == ended.flow_id);
        let state_ok = match &up.states {
            Some(list) => list.iter().any(|s| s == state.as_str()),
            None => state == StateType::Success,
        };
        if flow_ok && state_ok && labels_match(up.labels.as_ref(), ended) {
            matched.push(id.clone());
        }
    }
    if !groups.is_empty() {
        let filter_ctx = preconditions::filter_context(ended, &ctx["trigger"]);
        for (group, id) in groups.iter().zip(&group_ids) {
            if where_matches(group, ended, &filter_ctx, expr)
                .map_err(|e| format!("preconditions.where '{}': {e}", group.id))?
            {
                matched.push(id.clone());
            }
        }
    }
    let conditions = [upstream_ids, group_ids].concat();
    if conditions.is_empty() {
        return Ok(Verdict::Fire);
    }
    if matched.is_empty() || window.bounds(at).is_none() {
        return Ok(Verdict::No);
    }
    if conditions.len() == 1 {
        // One condition, met inside the window: nothing to remember.
        return Ok(Verdict::Fire);
    }
    let written = serde_json::to_value(pre).unwrap_or(Value::Null);
    Ok(Verdict::Pending(PreconditionCheck {
        conditions,
        matched,
        window,
        reset_on_success: pre.reset_on_success.unwrap_or(true),
        fingerprint: preconditions::fingerprint(&written),
    }))
}

/// A trigger whose preconditions need their stored state to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingTrigger {
    /// Executor-state key of the trigger's results ([`preconditions::state_key`]).
    pub key: String,
    /// What the ended execution met.
    pub check: PreconditionCheck,
    /// The execution to start if [`preconditions::apply`] says it fires.
    pub triggered: TriggeredExecution,
}

/// A pending trigger on its keyed stage (topic [`Topic::FlowPrecondition`], key = the trigger's
/// [`PendingTrigger::key`]): the unit that claims it applies the check to the trigger's stored
/// state and starts the execution if the set is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreconditionMessage {
    /// When the upstream execution reached its state: the time the check is evaluated at.
    pub at: DateTime<Utc>,
    /// The trigger's key, what the upstream execution met, and the execution to start.
    pub trigger: PendingTrigger,
}

impl PreconditionMessage {
    /// As a queue message keyed by the trigger.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::FlowPrecondition, &self.trigger.key, self)
    }
}

/// What the Flow triggers of the candidate flows make of one ended execution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowTriggerPlan {
    /// When the ended execution reached its state: the time preconditions are evaluated at.
    pub at: DateTime<Utc>,
    /// Executions to start now.
    pub ready: Vec<TriggeredExecution>,
    /// Triggers whose multi-condition preconditions decide with their stored state.
    pub pending: Vec<PendingTrigger>,
    /// (flow, trigger, reason) of triggers that could not be evaluated.
    pub problems: Vec<String>,
}

/// When `ended` reached its current state (its last state change), or `now` without history.
pub fn event_time(ended: &Execution, now: DateTime<Utc>) -> DateTime<Utc> {
    ended.state.histories().last().map_or(now, |h| h.date)
}

/// Evaluates the Flow triggers of `flows` for `ended`: which fire now, which depend on their
/// precondition state. `now` is used only when the execution has no state history.
pub fn plan_flow_triggers(
    ended: &Execution,
    flows: &[Arc<Flow>],
    registry: &TaskRegistry,
    expr: &ExpressionEngine,
    now: DateTime<Utc>,
) -> FlowTriggerPlan {
    let mut plan = FlowTriggerPlan {
        at: event_time(ended, now),
        ..FlowTriggerPlan::default()
    };
    if trigger_depth(ended) >= MAX_TRIGGER_DEPTH {
        plan.problems.push(format!(
            "execution {} is {MAX_TRIGGER_DEPTH} flow triggers deep: no further flow is triggered",
            ended.id
        ));
        return plan;
    }
    let variables = trigger_variables(ended);
    let mut trigger_ctx = variables.clone();
    trigger_ctx.insert("outputs".into(), Value::Object(ended.outputs.clone()));
    let ctx = json!({ "trigger": Value::Object(trigger_ctx) });
    for flow in flows {
        if flow.disabled
            || flow.deleted
            || (flow.namespace == ended.namespace && flow.id == ended.flow_id)
            || flow.tenant_id != ended.tenant_id
        {
            continue;
        }
        for trigger in &flow.triggers {
            let canonical = registry
                .resolve_trigger(&trigger.trigger_type)
                .map(|e| e.type_name);
            if trigger.disabled || canonical != Some(FLOW_TRIGGER_TYPE) {
                continue;
            }
            let where_ = format!("{}.{} trigger '{}'", flow.namespace, flow.id, trigger.id);
            let spec: FlowTrigger = match registry.decode_trigger(trigger) {
                Ok(s) => s,
                Err(e) => {
                    plan.problems.push(format!("{where_}: {e}"));
                    continue;
                }
            };
            let verdict = match evaluate(trigger, &spec, ended, &ctx, expr, plan.at) {
                Ok(Verdict::No) => continue,
                Err(e) => {
                    plan.problems.push(format!("{where_}: {e}"));
                    continue;
                }
                Ok(v) => v,
            };
            let mut inputs = Map::new();
            let mut failed = false;
            for (k, v) in spec.inputs.iter().flatten() {
                match expr.render_value(v, &ctx, true) {
                    Ok(v) => {
                        inputs.insert(k.clone(), v);
                    }
                    Err(e) => {
                        plan.problems.push(format!("{where_}: input '{k}': {e}"));
                        failed = true;
                    }
                }
            }
            if failed {
                continue;
            }
            let mut execution = Execution::new(
                flow.namespace.clone(),
                flow.id.clone(),
                flow.revision.unwrap_or(1),
            );
            execution.tenant_id = flow.tenant_id.clone();
            for l in flow.labels.iter().chain(trigger.labels.iter()) {
                execution
                    .labels
                    .push(Label::new(l.key.clone(), l.value.clone()));
            }
            execution.trigger = Some(ExecutionTrigger {
                id: trigger.id.clone(),
                type_: FLOW_TRIGGER_TYPE.to_string(),
                variables: variables.clone(),
            });
            let triggered = TriggeredExecution { execution, inputs };
            match verdict {
                Verdict::Pending(check) => plan.pending.push(PendingTrigger {
                    key: preconditions::state_key(
                        &flow.tenant_id,
                        &flow.namespace,
                        &flow.id,
                        &trigger.id,
                    ),
                    check,
                    triggered,
                }),
                _ => plan.ready.push(triggered),
            }
        }
    }
    plan
}

/// [`plan_flow_triggers`] then [`preconditions::apply`] on each pending trigger against `states`
/// (executor state by key, updated in place): the in-memory form of what the executor runtime does
/// inside its unit of work. Returns the executions to start and the problems.
pub fn triggered_executions(
    ended: &Execution,
    flows: &[Arc<Flow>],
    registry: &TaskRegistry,
    expr: &ExpressionEngine,
    now: DateTime<Utc>,
    states: &mut HashMap<String, PreconditionState>,
) -> (Vec<TriggeredExecution>, Vec<String>) {
    let plan = plan_flow_triggers(ended, flows, registry, expr, now);
    let mut out = plan.ready;
    for pending in plan.pending {
        let decision = preconditions::apply(states.remove(&pending.key), &pending.check, plan.at);
        if let Some(s) = decision.state {
            states.insert(pending.key.clone(), s);
        }
        if decision.fire {
            out.push(pending.triggered);
        }
    }
    (out, plan.problems)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::flow::parse::parse_flow;

    fn flow(yaml: &str) -> Arc<Flow> {
        let mut f = parse_flow(yaml, &TaskRegistry::default()).unwrap_or_else(|e| panic!("{e}"));
        f.revision = Some(1);
        Arc::new(f)
    }

    fn ended(ns: &str, id: &str, state: StateType) -> Execution {
        let mut e = Execution::new(ns, id, 1);
        e.state.transition(StateType::Running).unwrap();
        e.state.transition(state).unwrap();
        e
    }

    const TASKS: &str =
        "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n";

    fn fire(flows: &[Arc<Flow>], e: &Execution) -> Vec<String> {
        let (out, problems) = triggered_executions(
            e,
            flows,
            &TaskRegistry::default(),
            &ExpressionEngine::default(),
            Utc::now(),
            &mut HashMap::new(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        out.into_iter().map(|t| t.execution.flow_id).collect()
    }

    #[test]
    fn default_states_conditions_and_self_exclusion() {
        let any = flow(&format!(
            "id: any\nnamespace: ns\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n"
        ));
        let prefix = flow(&format!(
            "id: prefix\nnamespace: other\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionNamespace\n        namespace: company\n        comparison: PREFIX\n      - type: io.kestra.plugin.core.condition.ExecutionStatus\n        notIn: [FAILED]\n"
        ));
        let flows = vec![any.clone(), prefix];
        // Terminal states fire by default; RUNNING does not.
        assert_eq!(
            fire(&flows, &ended("company.team", "up", StateType::Success)),
            vec!["any", "prefix"]
        );
        assert_eq!(
            fire(&flows, &ended("company.team", "up", StateType::Failed)),
            vec!["any"]
        );
        let mut running = Execution::new("company.team", "up", 1);
        running.state.transition(StateType::Running).unwrap();
        assert!(fire(&flows, &running).is_empty());
        // A flow never triggers itself.
        assert!(fire(&[any], &ended("ns", "any", StateType::Success)).is_empty());
    }

    #[test]
    fn labels_expression_and_trigger_variables() {
        let f = flow(&format!(
            "id: down\nnamespace: ns\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionLabels\n        labels:\n          env: prod\n      - type: io.kestra.plugin.core.condition.Expression\n        expression: \"{{{{ trigger.flowId == 'up' }}}}\"\n"
        ));
        let mut e = ended("x", "up", StateType::Success);
        assert!(
            fire(std::slice::from_ref(&f), &e).is_empty(),
            "label missing"
        );
        e.labels.push(Label::new("env", "prod"));
        let (out, _) = triggered_executions(
            &e,
            &[f],
            &TaskRegistry::default(),
            &ExpressionEngine::default(),
            Utc::now(),
            &mut HashMap::new(),
        );
        assert_eq!(out.len(), 1);
        let t = out[0].execution.trigger.as_ref().unwrap();
        assert_eq!(t.variables["executionId"], e.id.as_str());
        assert_eq!(t.variables["state"], "SUCCESS");
        assert_eq!(t.variables["depth"], 1);
    }

    #[test]
    fn depth_cap_stops_trigger_storms() {
        let f = flow(&format!(
            "id: down\nnamespace: ns\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n"
        ));
        let mut e = ended("x", "up", StateType::Success);
        e.trigger = Some(ExecutionTrigger {
            id: "t".into(),
            type_: FLOW_TRIGGER_TYPE.into(),
            variables: json!({"depth": MAX_TRIGGER_DEPTH})
                .as_object()
                .cloned()
                .unwrap(),
        });
        let (out, problems) = triggered_executions(
            &e,
            &[f],
            &TaskRegistry::default(),
            &ExpressionEngine::default(),
            Utc::now(),
            &mut HashMap::new(),
        );
        assert!(out.is_empty());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_pending_trigger_travels_keyed_by_its_trigger() {
        let windows = [
            "",
            "      timeWindow:\n        type: SLIDING_WINDOW\n        window: PT2H\n",
            "      timeWindow:\n        type: DURATION_WINDOW\n        window: PT1H\n        windowAdvance: PT5M\n",
            "      timeWindow:\n        type: DAILY_TIME_DEADLINE\n        deadline: \"23:59:59\"\n",
            "      timeWindow:\n        type: DAILY_TIME_WINDOW\n        startTime: \"00:00:00\"\n        endTime: \"23:59:59\"\n",
        ];
        for window in windows {
            let f = flow(&format!(
                "id: down\nnamespace: ns\n{TASKS}triggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    preconditions:\n      id: both\n      flows:\n        - namespace: ns\n          flowId: a\n        - namespace: ns\n          flowId: b\n{window}"
            ));
            let e = ended("ns", "a", StateType::Success);
            let plan = plan_flow_triggers(
                &e,
                &[f],
                &TaskRegistry::default(),
                &ExpressionEngine::default(),
                Utc::now(),
            );
            assert!(
                plan.ready.is_empty() && plan.problems.is_empty(),
                "{window}"
            );
            let pending = plan.pending.into_iter().next().unwrap();
            assert_eq!(pending.key, "main|ns|down|t");
            let message = PreconditionMessage {
                at: plan.at,
                trigger: pending,
            };
            let envelope = message.envelope().unwrap();
            assert_eq!(envelope.topic, Topic::FlowPrecondition);
            assert_eq!(envelope.key, "main|ns|down|t");
            assert_eq!(
                envelope.decode::<PreconditionMessage>().unwrap(),
                message,
                "{window}"
            );
        }
    }
}
