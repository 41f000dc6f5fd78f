//! Running one attempt of a task in isolation: in its own Tokio task (a panic becomes a FAILED
//! attempt, never a crashed worker), bounded by the task's `timeout`, stopped by kill, with a grace
//! period for the task to clean up (kill its processes) before it is aborted.

use std::time::Duration;

use serde_json::{Map, Value};
use tracing::Instrument;

use crate::flow::duration::IsoDuration;
use crate::model::{StateType, TaskRun};
use crate::worker::context::{RunContext, TaskLogger};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

/// How long a cancelled task gets to return before it is aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How an attempt ended.
#[derive(Debug)]
pub enum AttemptEnd {
    /// The task returned its output (its own state inside).
    Finished(TaskOutput),
    /// The task returned an error.
    Errored(TaskError),
    /// The task panicked.
    Panicked(String),
    /// The timeout (as written in the flow) elapsed first.
    TimedOut(String),
    /// The run was cancelled from outside (kill, shutdown).
    Killed,
}

/// The result of an attempt, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// Final state of the attempt.
    pub state: StateType,
    /// Outputs, if the task returned some.
    pub outputs: Option<Map<String, Value>>,
    /// Task runs created on the worker.
    pub child_task_runs: Vec<TaskRun>,
}

impl AttemptEnd {
    /// The attempt's result; errors, panics and timeouts are logged at ERROR on `logger`.
    pub fn into_result(self, logger: &TaskLogger) -> AttemptResult {
        let failed = |message: String| {
            logger.error(message);
            AttemptResult {
                state: StateType::Failed,
                outputs: None,
                child_task_runs: Vec::new(),
            }
        };
        match self {
            AttemptEnd::Finished(out) => AttemptResult {
                state: out.final_state(),
                outputs: Some(out.outputs),
                child_task_runs: out.child_task_runs,
            },
            AttemptEnd::Errored(e) => failed(e.to_string()),
            AttemptEnd::Panicked(m) => failed(format!("the task panicked: {m}")),
            AttemptEnd::TimedOut(t) => failed(format!("Timeout after {t}")),
            AttemptEnd::Killed => AttemptResult {
                state: StateType::Killed,
                outputs: None,
                child_task_runs: Vec::new(),
            },
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `runnable` with `ctx` in a spawned task. The context's cancellation token is the "kill"
/// signal: when it fires, the attempt ends [`AttemptEnd::Killed`]. `timeout` (the task's) cancels
/// only this attempt and ends it [`AttemptEnd::TimedOut`]. Either way the task gets `grace` to
/// return before it is aborted.
pub async fn run_attempt(
    runnable: Box<dyn RunnableTask>,
    mut ctx: RunContext,
    timeout: Option<&IsoDuration>,
    grace: Duration,
) -> AttemptEnd {
    let kill = ctx.cancellation().clone();
    let token = kill.child_token();
    ctx.set_cancellation(token.clone());
    let span = tracing::info_span!(
        "task_attempt",
        execution_id = %ctx.identity().execution_id,
        task_run_id = %ctx.identity().task_run_id,
        task_id = %ctx.identity().task_id,
        attempt = ctx.identity().attempt,
    );
    let mut handle = tokio::spawn(
        async move {
            let result = runnable.run(&mut ctx).await;
            drop(ctx);
            result
        }
        .instrument(span),
    );
    let limit = timeout.map(|t| (t.duration(), t.as_str().to_string()));
    let sleep = async {
        match &limit {
            Some((d, _)) => tokio::time::sleep(*d).await,
            None => std::future::pending::<()>().await,
        }
    };
    let end = tokio::select! {
        joined = &mut handle => {
            return match joined {
                Ok(_) if kill.is_cancelled() => AttemptEnd::Killed,
                Ok(Ok(out)) => AttemptEnd::Finished(out),
                Ok(Err(e)) => AttemptEnd::Errored(e),
                Err(e) if e.is_panic() => AttemptEnd::Panicked(panic_message(e.into_panic())),
                Err(_) => AttemptEnd::Killed,
            };
        }
        _ = sleep => {
            token.cancel();
            AttemptEnd::TimedOut(limit.map(|(_, s)| s).unwrap_or_default())
        }
        _ = kill.cancelled() => AttemptEnd::Killed,
    };
    if tokio::time::timeout(grace, &mut handle).await.is_err() {
        tracing::warn!("task did not stop within {grace:?} after cancellation; aborting it");
        handle.abort();
    }
    end
}
