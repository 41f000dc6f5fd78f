//! Fault points compiled into the components for tests only (feature `testkit`): a test marks an
//! execution with the label [`FAULT_LABEL`] and the component named by its value fails in the way
//! the value says, where no honest input could make it fail. Without the feature these points do
//! not exist.
//!
//! The executor's unit of work has one more kind of point, armed by the process's environment
//! rather than by a label ([`UnitFault`]): `KESTRA_TESTKIT_EXECUTOR_ABORT_AT=<step>` makes the
//! executor abort the process (`std::process::abort`: like a SIGKILL, nothing caught, nothing
//! flushed) at that [`UnitStep`] of the first unit that holds the final result of a task attempt
//! (SUCCESS, FAILED, ...), every message of it delivered for the first time: the crash falls
//! mid-execution, in a unit that stages the next task's job, a retry or the execution's end, and
//! no message is crashed on twice. With `KESTRA_TESTKIT_ABORT_ONCE=<path>` it aborts only if it can create that file (a
//! new one): a process restarted with the same settings goes on (a cross-process "once").

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::messages::{ExecutorEvent, WorkerTask, WorkerTaskResult};
use crate::model::Execution;
use crate::queue::{Delivery, Topic};

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

/// The environment variable naming the [`UnitStep`] at which the executor aborts.
pub const EXECUTOR_ABORT_AT_ENV: &str = "KESTRA_TESTKIT_EXECUTOR_ABORT_AT";

/// The environment variable naming the marker file that makes a fault point trip once across
/// processes (it trips only if it creates the file).
pub const ABORT_ONCE_ENV: &str = "KESTRA_TESTKIT_ABORT_ONCE";

/// A step of the executor's unit of work (`ExecutorService::process_unit`), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitStep {
    /// The unit's messages are claimed (`Queue::begin` returned), nothing loaded yet.
    Claimed,
    /// The first execution of the unit is loaded from the unit, not processed yet.
    Loaded,
    /// Every message is processed: the new states and the outgoing messages are staged in
    /// memory, nothing written.
    Processed,
    /// The executions and the keyed states are saved in the unit, nothing published.
    Saved,
    /// The outgoing messages are published in the unit, not committed.
    Published,
    /// The unit is committed; the executor's cache is not updated yet.
    Committed,
}

impl UnitStep {
    /// Every step, in order.
    pub const ALL: [UnitStep; 6] = [
        UnitStep::Claimed,
        UnitStep::Loaded,
        UnitStep::Processed,
        UnitStep::Saved,
        UnitStep::Published,
        UnitStep::Committed,
    ];

    /// Its name in [`EXECUTOR_ABORT_AT_ENV`]: `claimed`, `loaded`, `processed`, `saved`,
    /// `published`, `committed`.
    pub fn name(self) -> &'static str {
        match self {
            UnitStep::Claimed => "claimed",
            UnitStep::Loaded => "loaded",
            UnitStep::Processed => "processed",
            UnitStep::Saved => "saved",
            UnitStep::Published => "published",
            UnitStep::Committed => "committed",
        }
    }

    /// The step named `name` (see [`UnitStep::name`]).
    pub fn parse(name: &str) -> Option<UnitStep> {
        UnitStep::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The settings of the executor's step points, read from the environment once per process.
struct StepSettings {
    at: Option<UnitStep>,
    once: Option<PathBuf>,
}

fn step_settings() -> &'static StepSettings {
    static SETTINGS: OnceLock<StepSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let at = std::env::var(EXECUTOR_ABORT_AT_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| {
                let step = UnitStep::parse(v.trim());
                if step.is_none() {
                    tracing::error!(
                        value = %v,
                        "testkit: {EXECUTOR_ABORT_AT_ENV} is not one of claimed, loaded, processed, saved, published, committed; no fault point armed"
                    );
                }
                step
            });
        let once = std::env::var_os(ABORT_ONCE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(step) = at {
            tracing::warn!(
                step = step.name(),
                once = ?once,
                "testkit fault point armed: the executor aborts at this step of a unit with a final task result"
            );
        }
        StepSettings { at, once }
    })
}

/// The step fault point of one unit of work: armed when [`EXECUTOR_ABORT_AT_ENV`] names a step
/// and the unit holds the final result of a task attempt, every message of it delivered for the
/// first time.
#[derive(Debug, Clone)]
pub struct UnitFault {
    at: Option<UnitStep>,
    /// The keys (execution ids) of the armed unit's messages, for the log line.
    keys: Vec<String>,
}

impl UnitFault {
    /// The fault point of the unit that claimed `deliveries`.
    pub fn new(deliveries: &[Delivery]) -> UnitFault {
        let settings = step_settings();
        let armed = settings.at.is_some()
            && deliveries.iter().any(|d| {
                d.envelope.topic == Topic::WorkerTaskResult
                    && d.envelope
                        .decode::<WorkerTaskResult>()
                        .is_ok_and(|r| r.state.is_terminated())
            })
            && deliveries.iter().all(|d| d.attempt <= 1);
        if !armed {
            return UnitFault {
                at: None,
                keys: Vec::new(),
            };
        }
        let mut keys: Vec<String> = deliveries.iter().map(|d| d.envelope.key.clone()).collect();
        keys.sort();
        keys.dedup();
        UnitFault {
            at: settings.at,
            keys,
        }
    }

    /// Aborts the process when this unit is armed at `step` (and, with [`ABORT_ONCE_ENV`], the
    /// marker file did not exist yet: it is created first).
    pub fn at(&self, step: UnitStep) {
        if self.at != Some(step) {
            return;
        }
        if let Some(marker) = &step_settings().once {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return,
                Err(e) => {
                    tracing::error!(marker = %marker.display(), error = %e, "testkit: cannot create the abort-once marker; not aborting");
                    return;
                }
            }
        }
        tracing::error!(
            step = step.name(),
            keys = ?self.keys,
            "testkit fault point: the executor aborts the process at this step of its unit of work"
        );
        std::process::abort();
    }
}
