//! Fault points compiled into the components for tests only (feature `testkit`): a test marks an
//! execution with the label [`FAULT_LABEL`] and the component named by its value fails in the way
//! the value says, where no honest input could make it fail. Without the feature these points do
//! not exist.

use crate::messages::{ExecutorEvent, WorkerTask};
use crate::model::Execution;

/// The label key that arms a fault point for the executions carrying it.
pub const FAULT_LABEL: &str = "kestra-testkit-fault";

/// The label value that makes the executor panic inside its processing of the execution's
/// messages once the execution is RUNNING (see `ExecutorService`: the panic is caught, the unit
/// rolled back, and the execution failed with the panic's message when its unit comes again).
/// Not before: an execution of a concurrency-limited flow then holds its slot when it fails.
pub const EXECUTOR_PANIC: &str = "executor-panic";

/// The label value that makes the executor abort the whole process (`std::process::abort`)
/// inside its processing of the execution's messages, as a stack overflow or an OOM kill would:
/// nothing is caught, the unit's transaction dies with the process, and the message is delivered
/// again after a restart until `kestra.queue.max-delivery-attempts` sets it aside.
pub const EXECUTOR_ABORT: &str = "executor-abort";

/// Panics when `execution` carries [`FAULT_LABEL`] = [`EXECUTOR_PANIC`] and is RUNNING; aborts
/// the process when it carries [`FAULT_LABEL`] = [`EXECUTOR_ABORT`] (in any state).
pub fn executor_panic_point(execution: Option<&Execution>, event: &ExecutorEvent) {
    let execution = execution.or(match event {
        ExecutorEvent::Execution(e) => Some(&**e),
        _ => None,
    });
    let armed = |value: &str| {
        execution.is_some_and(|e| {
            e.labels
                .iter()
                .any(|l| l.key == FAULT_LABEL && l.value == value)
        })
    };
    if armed(EXECUTOR_ABORT) {
        tracing::error!("testkit fault point: the executor aborts the process on this execution");
        std::process::abort();
    }
    let running = execution.is_some_and(|e| e.state.current() == crate::model::StateType::Running);
    if running && armed(EXECUTOR_PANIC) {
        panic!("testkit fault point: the executor panics on this execution");
    }
}

/// The label value that makes the worker abort the whole process (`std::process::abort`) when it
/// is about to run a task of the execution: the job is never acknowledged, and it is delivered
/// again (after its lease) until `kestra.queue.max-delivery-attempts` fails the task run.
pub const WORKER_ABORT: &str = "worker-abort";

/// Aborts the process when the execution of `task` carries [`FAULT_LABEL`] = [`WORKER_ABORT`]
/// (read from the job's expression context, `labels`).
pub fn worker_abort_point(task: &WorkerTask) {
    let armed = task
        .context
        .get("labels")
        .and_then(|labels| labels.get(FAULT_LABEL))
        .and_then(serde_json::Value::as_str)
        == Some(WORKER_ABORT);
    if armed {
        tracing::error!("testkit fault point: the worker aborts the process on this task");
        std::process::abort();
    }
}
