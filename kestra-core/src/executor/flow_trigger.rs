//! The Flow trigger: when an execution ends (or pauses), start the flows whose
//! `io.kestra.plugin.core.trigger.Flow` trigger matches it. Pure: the runtime gives the ended execution
//! and the candidate flows, and publishes what this returns.
//!
//! Supported: `states` (default: terminal states and PAUSED), the conditions `ExecutionStatus`
//! (`in`, `notIn`), `ExecutionFlow` (`namespace`, `flowId`), `ExecutionNamespace` (`namespace`,
//! `comparison` EQUALS | PREFIX | SUFFIX, or the old `prefix: true`), `ExecutionLabels` (`labels`),
//! `Expression` (`expression`, rendered with `trigger.*`), their legacy names, and `preconditions`
//! with ONE upstream flow (matched like a condition on namespace, flowId, states and labels).
//! Not yet: preconditions over several flows (they need a time-window state) and `where` filters: such
//! triggers never fire, and the reason is logged.
//!
//! A flow never triggers itself, and a chain of flow-triggered executions stops at
//! [`MAX_TRIGGER_DEPTH`] (the depth travels in the trigger variables).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::expression::ExpressionEngine;
use crate::flow::model::{Flow, Trigger};
use crate::flow::registry::TaskRegistry;
use crate::flow::triggers::FlowTrigger;
use crate::model::{Execution, ExecutionTrigger, Label, StateType};

/// Canonical type name of the Flow trigger.
pub const FLOW_TRIGGER_TYPE: &str = "io.kestra.plugin.core.trigger.Flow";

/// Longest chain of flow-triggered executions.
pub const MAX_TRIGGER_DEPTH: u64 = 10;

/// An execution to start because of a Flow trigger, with its raw inputs (the runtime resolves them
/// against the flow's input definitions).
#[derive(Debug, Clone, PartialEq)]
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

/// Evaluate one trigger of `flow` for `ended`: `Ok(true)` when it fires.
fn fires(
    trigger: &Trigger,
    spec: &FlowTrigger,
    ended: &Execution,
    ctx: &Value,
    expr: &ExpressionEngine,
) -> Result<bool, String> {
    let state = ended.state.current();
    let states_ok = match &spec.states {
        Some(list) => list.iter().any(|s| s == state.as_str()),
        None => state.is_terminated() || state == StateType::Paused,
    };
    if !states_ok {
        return Ok(false);
    }
    for c in &trigger.conditions {
        if !condition_holds(c, ended, ctx, expr)? {
            return Ok(false);
        }
    }
    if let Some(pre) = &spec.preconditions {
        if pre.where_filters.as_ref().is_some_and(|w| !w.is_empty()) {
            return Err("preconditions with 'where' filters are not supported yet".into());
        }
        if let Some(flows) = &pre.flows {
            if flows.len() > 1 {
                return Err("preconditions over several flows are not supported yet".into());
            }
            if let Some(up) = flows.first() {
                let flow_ok = up.namespace == ended.namespace
                    && up.flow_id.as_ref().is_none_or(|f| *f == ended.flow_id);
                let up_states = up
                    .states
                    .clone()
                    .unwrap_or_else(|| vec!["SUCCESS".to_string()]);
                let state_ok = up_states.iter().any(|s| s == state.as_str());
                if !(flow_ok && state_ok && labels_match(up.labels.as_ref(), ended)) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// The executions that Flow triggers of `flows` start because `ended` reached its current state.
/// The second list holds (flow, trigger, reason) for triggers that could not be evaluated.
pub fn triggered_executions(
    ended: &Execution,
    flows: &[Arc<Flow>],
    registry: &TaskRegistry,
    expr: &ExpressionEngine,
) -> (Vec<TriggeredExecution>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if trigger_depth(ended) >= MAX_TRIGGER_DEPTH {
        problems.push(format!(
            "execution {} is {MAX_TRIGGER_DEPTH} flow triggers deep: no further flow is triggered",
            ended.id
        ));
        return (out, problems);
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
                    problems.push(format!("{where_}: {e}"));
                    continue;
                }
            };
            match fires(trigger, &spec, ended, &ctx, expr) {
                Ok(false) => continue,
                Err(e) => {
                    problems.push(format!("{where_}: {e}"));
                    continue;
                }
                Ok(true) => {}
            }
            let mut inputs = Map::new();
            let mut failed = false;
            for (k, v) in spec.inputs.iter().flatten() {
                match expr.render_value(v, &ctx, true) {
                    Ok(v) => {
                        inputs.insert(k.clone(), v);
                    }
                    Err(e) => {
                        problems.push(format!("{where_}: input '{k}': {e}"));
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
            out.push(TriggeredExecution { execution, inputs });
        }
    }
    (out, problems)
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
        );
        assert!(out.is_empty());
        assert_eq!(problems.len(), 1);
    }
}
