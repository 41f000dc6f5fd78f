//! Fault points compiled into the components for tests only (feature `testkit`): a test marks an
//! execution with the label [`FAULT_LABEL`] and the component named by its value fails in the way
//! the value says, where no honest input could make it fail. Without the feature these points do
//! not exist.

use crate::messages::ExecutorEvent;
use crate::model::Execution;

/// The label key that arms a fault point for the executions carrying it.
pub const FAULT_LABEL: &str = "kestra-testkit-fault";

/// The label value that makes the executor panic inside its processing of the execution's
/// messages once the execution is RUNNING (see `ExecutorService`: the panic is caught, the unit
/// rolled back, and the execution failed with the panic's message when its unit comes again).
/// Not before: an execution of a concurrency-limited flow then holds its slot when it fails.
pub const EXECUTOR_PANIC: &str = "executor-panic";

/// Panics when `execution` carries [`FAULT_LABEL`] = [`EXECUTOR_PANIC`] and is RUNNING.
pub fn executor_panic_point(execution: Option<&Execution>, event: &ExecutorEvent) {
    let execution = execution.or(match event {
        ExecutorEvent::Execution(e) => Some(&**e),
        _ => None,
    });
    if execution.is_some_and(|e| {
        e.state.current() == crate::model::StateType::Running
            && e.labels
                .iter()
                .any(|l| l.key == FAULT_LABEL && l.value == EXECUTOR_PANIC)
    }) {
        panic!("testkit fault point: the executor panics on this execution");
    }
}
