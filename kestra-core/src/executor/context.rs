//! The expression context of an execution and of one of its task runs: the variables Pebble
//! expressions see (`flow`, `execution`, `task`, `taskrun`, `parent`, `parents`, `outputs`, `tasks`,
//! `inputs`, `trigger`, `labels`, `vars`). `envs`, `globals` and `kestra` are added by the
//! expression engine itself.
//!
//! Outputs and states of task runs inside loops are keyed by their loop values, outermost first:
//! `outputs.<task id>.<outer value>.<inner value>.<output>` and `tasks.<task id>.<value>.state`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::executor::index::{FlowIndex, Flowable, NodeKind};
use crate::model::{Execution, TaskRun};

/// The loop values of a task run, outermost first: the values carried by its ForEach ancestors, then
/// its own value.
pub fn loop_values(execution: &Execution, index: &FlowIndex, run: &TaskRun) -> Vec<String> {
    loop_values_by(index, run, |id| execution.task_run(id))
}

/// [`loop_values`] with the task runs found by `by_id` (an index, when called for every task run).
pub(crate) fn loop_values_by<'e>(
    index: &FlowIndex,
    run: &TaskRun,
    by_id: impl Fn(&str) -> Option<&'e TaskRun>,
) -> Vec<String> {
    let mut values = Vec::new();
    if let Some(v) = &run.value {
        values.push(v.clone());
    }
    let mut parent_id = run.parent_task_run_id.clone();
    while let Some(pid) = parent_id {
        let Some(parent) = by_id(&pid) else {
            break;
        };
        let is_loop = matches!(
            index.node(&parent.task_id).map(|n| &n.kind),
            Some(NodeKind::Flowable(f)) if matches!(**f, Flowable::ForEach { .. })
        );
        if is_loop && let Some(v) = &parent.value {
            values.push(v.clone());
        }
        parent_id = parent.parent_task_run_id.clone();
    }
    // `values` now holds own value then outer loop values: dedupe consecutive repeats (a child
    // inherits its loop's value) and reverse to outermost first.
    values.reverse();
    values.dedup();
    values
}

/// Set `target.<task_id>.<keys...>` to `leaf`, creating the objects on the way.
pub(crate) fn insert_nested(
    target: &mut Map<String, Value>,
    task_id: &str,
    keys: &[String],
    leaf: Value,
) {
    if keys.is_empty() {
        target.insert(task_id.to_string(), leaf);
        return;
    }
    let mut cur = target
        .entry(task_id.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    for k in keys {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    *cur = leaf;
}

/// The variables of the execution, without task-specific ones.
pub fn execution_context(execution: &Execution, index: &FlowIndex) -> Map<String, Value> {
    let mut ctx = execution_context_without_runs(execution, index);
    add_runs(&mut ctx, execution, index);
    ctx
}

/// [`execution_context`] without `outputs` and `tasks` (what other task runs did): its size does
/// not grow with the number of task runs.
pub fn execution_context_without_runs(
    execution: &Execution,
    index: &FlowIndex,
) -> Map<String, Value> {
    let flow = &index.flow;
    let mut ctx = Map::new();
    ctx.insert(
        "flow".into(),
        json!({
            "id": flow.id,
            "namespace": flow.namespace,
            "revision": execution.flow_revision,
            "tenantId": execution.tenant_id,
        }),
    );
    let mut exec = json!({
        "id": execution.id,
        "startDate": execution.state.start_date(),
        "state": execution.state.current().as_str(),
    });
    if let Some(o) = &execution.original_id {
        exec["originalId"] = json!(o);
    } else {
        exec["originalId"] = json!(execution.id);
    }
    ctx.insert("execution".into(), exec);
    ctx.insert("inputs".into(), Value::Object(execution.inputs.clone()));
    let vars: Map<String, Value> = flow
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ctx.insert("vars".into(), Value::Object(vars));
    let labels: Map<String, Value> = execution
        .labels
        .iter()
        .map(|l| (l.key.clone(), json!(l.value)))
        .collect();
    ctx.insert("labels".into(), Value::Object(labels));
    if let Some(t) = &execution.trigger {
        ctx.insert("trigger".into(), Value::Object(t.variables.clone()));
    }
    ctx
}

/// Adds `outputs` and `tasks` to an execution's context.
fn add_runs(ctx: &mut Map<String, Value>, execution: &Execution, index: &FlowIndex) {
    let mut outputs = Map::new();
    let mut states = Map::new();
    // Task runs by id (the first of an id, as `Execution::task_run`): finding each run's loop
    // values does not scan the list, so the context costs O(n) in the number of task runs.
    let mut by_id: HashMap<&str, &TaskRun> = HashMap::with_capacity(execution.task_run_list.len());
    for run in &execution.task_run_list {
        by_id.entry(run.id.as_str()).or_insert(run);
    }
    for run in &execution.task_run_list {
        let keys = if run.value.is_some() {
            loop_values_by(index, run, |id| by_id.get(id).copied())
        } else {
            Vec::new()
        };
        if let Some(o) = &run.outputs {
            insert_nested(&mut outputs, &run.task_id, &keys, Value::Object(o.clone()));
        }
        insert_nested(
            &mut states,
            &run.task_id,
            &keys,
            json!({"state": run.state.current().as_str()}),
        );
    }
    ctx.insert("outputs".into(), Value::Object(outputs));
    ctx.insert("tasks".into(), Value::Object(states));
}

/// The variables for one task run: the execution's plus `task`, `taskrun`, `parent`, `parents`.
pub fn task_run_context(
    base: &Map<String, Value>,
    execution: &Execution,
    index: &FlowIndex,
    run: &TaskRun,
) -> Value {
    let mut ctx = base.clone();
    let type_name = index
        .node(&run.task_id)
        .map(|n| n.task.task_type.clone())
        .unwrap_or_default();
    ctx.insert("task".into(), json!({"id": run.task_id, "type": type_name}));
    let mut taskrun = json!({
        "id": run.id,
        "startDate": run.state.start_date(),
        // As Kestra's: the attempts made before this one (0 on the first, the attempts kept by a
        // restart count), not the attempt being started.
        "attemptsCount": run.attempts.iter().filter(|a| a.state.is_terminated()).count(),
    });
    if let Some(p) = &run.parent_task_run_id {
        taskrun["parentId"] = json!(p);
    }
    if let Some(v) = &run.value {
        taskrun["value"] = json!(v);
    }
    if let Some(i) = run.iteration {
        taskrun["iteration"] = json!(i);
    }
    ctx.insert("taskrun".into(), taskrun);
    // parents: enclosing task runs, innermost first, each {taskrun: {value}, outputs}.
    let mut parents = Vec::new();
    let mut parent_id = run.parent_task_run_id.clone();
    while let Some(pid) = parent_id {
        let Some(parent) = execution.task_run(&pid) else {
            break;
        };
        let mut tr = json!({"id": parent.id});
        if let Some(v) = &parent.value {
            tr["value"] = json!(v);
        }
        parents.push(json!({
            "taskrun": tr,
            "outputs": parent.outputs.clone().map(Value::Object).unwrap_or(Value::Null),
        }));
        parent_id = parent.parent_task_run_id.clone();
    }
    if let Some(first) = parents.first() {
        ctx.insert("parent".into(), first.clone());
    }
    ctx.insert("parents".into(), Value::Array(parents));
    Value::Object(ctx)
}
