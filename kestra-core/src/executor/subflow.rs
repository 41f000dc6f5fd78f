//! Subflow executions (of a Subflow task or of one ForEachItem batch): what the parent's executor
//! asks for, how the child is completed, and the result that travels back.
//!
//! `process` is pure and has no flow repository, so a Subflow task run produces a
//! [`SubflowRequest`]: the child execution with its id, parent, trigger, system and inherited labels
//! and schedule date already decided, plus the rendered (not yet validated) inputs and the task's
//! labels. The runtime, in the same unit of work, resolves the child flow revision, validates the
//! inputs against it and composes the labels ([`complete_child`]), then publishes the child on
//! [`Topic::Execution`](crate::queue::Topic::Execution). If that fails (no such flow, disabled flow,
//! invalid inputs) it publishes a failed [`SubflowExecutionResult`] carrying the reason instead, so
//! the parent's task run ends FAILED through the same path as a finished child.
//!
//! When a child execution ends, [`result_for_parent`] gives the result the runtime publishes on
//! [`Topic::SubflowExecutionResult`](crate::queue::Topic::SubflowExecutionResult) (key = parent id).
//!
//! Labels of the child (Kestra's `ExecutableUtils.subflowExecution`): the child flow's labels, then
//! the parent's non-system labels when `inheritLabels` (those whose key the child flow defines are
//! left out), then the task's `labels`, then the parent's `system.*` labels (its
//! `system.correlationId` included).
//!
//! Depth: a child's trigger carries `subflowDepth`; a Subflow task whose child would be deeper than
//! [`MAX_SUBFLOW_DEPTH`] fails instead of creating it (recursion storms).

use serde_json::{Map, Value};

use crate::executor::for_each_item;
use crate::flow::model::Flow;
use crate::messages::SubflowExecutionResult;
use crate::model::{Execution, Label, StateType};

/// The Subflow trigger type of child executions.
pub const SUBFLOW_TRIGGER_TYPE: &str = "io.kestra.plugin.core.flow.Subflow";

/// The child's trigger variable holding its Subflow task's (deprecated) `outputs` mapping: when the
/// child flow declares no outputs, the child renders this mapping in its own context when it ends
/// (Kestra's `Subflow.createSubflowExecutionResult`), and its values become the outputs sent back.
pub const SUBFLOW_OUTPUTS_VARIABLE: &str = "subflowOutputs";

/// Deepest allowed chain of subflow executions.
pub const MAX_SUBFLOW_DEPTH: u64 = 10;

/// A child execution to create, as decided by `process`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubflowRequest {
    /// The child (CREATED): id, namespace, flow id, parent, trigger, system and inherited labels,
    /// schedule date. `flow_revision` is 0 until the runtime resolves it.
    pub execution: Execution,
    /// The requested revision (`None`: the latest).
    pub revision: Option<i32>,
    /// Rendered inputs, validated by the runtime against the child flow.
    pub inputs: Map<String, Value>,
    /// The task's rendered `labels`.
    pub task_labels: Vec<Label>,
    /// The parent's Subflow task run.
    pub parent_task_run_id: String,
}

impl SubflowRequest {
    /// The result to send to the parent when the child cannot be created.
    pub fn failure(&self, message: impl Into<String>) -> SubflowExecutionResult {
        SubflowExecutionResult {
            parent_execution_id: self.execution.parent_id.clone().unwrap_or_default(),
            parent_task_run_id: self.parent_task_run_id.clone(),
            child_execution_id: self.execution.id.clone(),
            state: StateType::Failed,
            outputs: Map::new(),
            error: Some(message.into()),
            iteration: batch_iteration(&self.execution),
        }
    }
}

fn upsert(labels: &mut Vec<Label>, label: Label) {
    match labels.iter_mut().find(|l| l.key == label.key) {
        Some(l) => l.value = label.value,
        None => labels.push(label),
    }
}

/// The child execution of `request` for the resolved `flow` (revision and labels; inputs are set
/// by the caller after validation).
pub fn complete_child(request: &SubflowRequest, flow: &Flow) -> Execution {
    let mut child = request.execution.clone();
    child.flow_revision = flow.revision.unwrap_or(1);
    let mut labels: Vec<Label> = flow
        .labels
        .iter()
        .map(|l| Label::new(l.key.clone(), l.value.clone()))
        .collect();
    let (system, inherited): (Vec<Label>, Vec<Label>) = request
        .execution
        .labels
        .iter()
        .cloned()
        .partition(|l| l.key.starts_with("system."));
    for l in inherited {
        if !flow.labels.iter().any(|f| f.key == l.key) {
            upsert(&mut labels, l);
        }
    }
    for l in &request.task_labels {
        if !l.key.starts_with("system.") {
            upsert(&mut labels, l.clone());
        }
    }
    for l in system {
        upsert(&mut labels, l);
    }
    child.labels = labels;
    child
}

/// The subflow depth of an execution (0 for an execution that is not a subflow child).
pub fn depth(execution: &Execution) -> u64 {
    execution
        .trigger
        .as_ref()
        .filter(|t| is_child_trigger(&t.type_))
        .map(|t| {
            t.variables
                .get("subflowDepth")
                .and_then(Value::as_u64)
                .unwrap_or(1)
        })
        .unwrap_or(0)
}

/// The result to send to the parent of a terminated subflow child, if it is one.
pub fn result_for_parent(child: &Execution) -> Option<SubflowExecutionResult> {
    if !child.state.is_terminated() {
        return None;
    }
    let trigger = child.trigger.as_ref()?;
    if !is_child_trigger(&trigger.type_) {
        return None;
    }
    let parent = child.parent_id.clone()?;
    let task_run = trigger.variables.get("taskRunId")?.as_str()?.to_string();
    Some(SubflowExecutionResult {
        parent_execution_id: parent,
        parent_task_run_id: task_run,
        child_execution_id: child.id.clone(),
        state: child.current(),
        outputs: child.outputs.clone(),
        error: None,
        iteration: batch_iteration(child),
    })
}

/// Whether a trigger type marks a child execution (of a Subflow or a ForEachItem batch).
fn is_child_trigger(type_: &str) -> bool {
    type_ == SUBFLOW_TRIGGER_TYPE || type_ == for_each_item::ITEMS_TYPE
}

/// The batch of a ForEachItem child execution (from 0), `None` for other executions.
pub fn batch_iteration(child: &Execution) -> Option<u32> {
    let trigger = child.trigger.as_ref()?;
    if trigger.type_ != for_each_item::ITEMS_TYPE {
        return None;
    }
    let i = trigger.variables.get("taskRunIteration")?.as_u64()?;
    u32::try_from(i).ok()
}

/// The parent task run's state for a child that ended in `child` (Kestra's
/// `ExecutableUtils.guessState`, before allowFailure/allowWarning): with `transmitFailed`, a
/// FAILED, KILLED or WARNING child gives its state; anything else gives SUCCESS.
pub fn parent_state(child: StateType, transmit_failed: bool) -> StateType {
    if transmit_failed
        && matches!(
            child,
            StateType::Failed | StateType::Killed | StateType::Warning
        )
    {
        child
    } else {
        StateType::Success
    }
}
