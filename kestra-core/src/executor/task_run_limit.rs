//! The cap on task runs per execution (issue 16: "the number of task runs in one execution"):
//! a flowable that would take an execution past [`DEFAULT_MAX_TASK_RUNS`] task runs (a ForEach
//! over a huge list, nested loops, a Parallel of many branches) fails the execution with an
//! error naming the limit and the task, instead of growing its document (saved at every state
//! change) without bound. Kestra has no such count; its bound is the size of the execution
//! message (about 1 MB), which this engine also enforces ([`crate::queue::QueueError::TooLarge`]);
//! the count fails earlier and says why.

use chrono::Utc;

use crate::executor::concurrency::SlotRequest;
use crate::executor::process::Outcome;
use crate::model::{Level, LogEntry, StateType};

/// Default of [`crate::executor::ExecutorConfig::max_task_runs`]
/// (`kestra.limits.execution.max-task-runs`): 10,000 task runs.
pub const DEFAULT_MAX_TASK_RUNS: usize = 10_000;

/// `outcome` unchanged when its execution has at most `max` task runs (or `max` is 0: no limit);
/// otherwise the execution FAILED: the task runs past the limit are never created, the
/// unfinished ones FAILED, its running attempts killed, nothing new dispatched, and an ERROR log
/// naming the count, the limit, its key and the task that went past it (and its parent).
pub fn cap_task_runs(mut outcome: Outcome, max: usize) -> Outcome {
    let count = outcome.execution.task_run_list.len();
    if max == 0 || count <= max {
        return outcome;
    }
    let execution = &mut outcome.execution;
    let first_over = &execution.task_run_list[max];
    let parent = first_over
        .parent_task_run_id
        .as_deref()
        .and_then(|p| execution.task_run_list.iter().find(|t| t.id == p))
        .map(|t| format!(" (in '{}')", t.task_id))
        .unwrap_or_default();
    let reason = format!(
        "execution failed: task '{}'{parent} would bring it to {count} task runs, over the limit \
         of {max} task runs per execution (kestra.limits.execution.max-task-runs)",
        first_over.task_id
    );
    tracing::error!(execution_id = %execution.id, "{reason}");
    execution.task_run_list.truncate(max);
    for task_run in execution.task_run_list.iter_mut() {
        if !task_run.state.is_terminated() {
            // A refused transition keeps its state (it cannot fail from there).
            let _ = task_run.state.transition(StateType::Failed);
        }
    }
    if execution.state.transition(StateType::Failed).is_ok() {
        outcome.slot = SlotRequest::Release;
    }
    outcome.logs.push(LogEntry {
        id: crate::model::new_id(),
        tenant_id: execution.tenant_id.clone(),
        namespace: execution.namespace.clone(),
        flow_id: execution.flow_id.clone(),
        task_id: None,
        execution_id: Some(execution.id.clone()),
        task_run_id: None,
        attempt_number: None,
        trigger_id: None,
        timestamp: Utc::now(),
        level: Level::Error,
        thread: Some("executor".into()),
        message: reason,
    });
    outcome.changed = true;
    outcome.kill_broadcast = true;
    outcome.worker_tasks.clear();
    outcome.delays.clear();
    outcome.subflow_requests.clear();
    outcome.new_executions.clear();
    outcome.restart_executions.clear();
    outcome
}
