//! Polling triggers on the worker: the [`PollingTrigger`] trait a polling trigger type implements and
//! [`evaluate_trigger`], one evaluation of a [`WorkerTrigger`] job into its [`WorkerTriggerResult`].
//!
//! The scheduler decides *when* a polling trigger is evaluated (every `interval`, one evaluation at a
//! time, see [`crate::scheduler`]); a worker does the evaluation because only workers touch user
//! infrastructure. The trigger's properties are rendered like a task's, with a [`RunContext`] whose
//! task is the trigger (id, type, properties) and whose variables are the job's context (`flow`).
//! Its log lines are published as trigger logs (`triggerId`, no execution).
//!
//! # Adding a polling trigger of your own
//!
//! The property struct implements [`TriggerType`](crate::flow::TriggerType) with a
//! [`DEFAULT_INTERVAL`](crate::flow::TriggerType::DEFAULT_INTERVAL) and [`PollingTrigger`];
//! register it in the [`TaskRegistry`] (validation, interval) and in the workers' [`RunnerRegistry`] (evaluation):
//!
//! ```
//! use async_trait::async_trait;
//! use kestra_core::flow::{TaskRegistry, TriggerType};
//! use kestra_core::worker::{PollingTrigger, RunContext, RunnerRegistry, TaskError};
//! use serde_json::{Map, Value};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(rename_all = "camelCase", deny_unknown_fields)]
//! struct FileAppeared {
//!     path: String,
//!     interval: Option<String>,
//! }
//!
//! impl TriggerType for FileAppeared {
//!     const TYPE: &'static str = "com.example.FileAppeared";
//!     const DEFAULT_INTERVAL: Option<std::time::Duration> =
//!         Some(std::time::Duration::from_secs(30));
//! }
//!
//! #[async_trait]
//! impl PollingTrigger for FileAppeared {
//!     async fn evaluate(&self, ctx: &mut RunContext) -> Result<Option<Map<String, Value>>, TaskError> {
//!         let path = ctx.render(&self.path)?;
//!         if !std::path::Path::new(&path).exists() {
//!             return Ok(None);
//!         }
//!         let mut variables = Map::new();
//!         variables.insert("path".into(), Value::String(path));
//!         Ok(Some(variables))
//!     }
//! }
//!
//! let mut triggers = TaskRegistry::default();
//! triggers.register_trigger::<FileAppeared>();
//! let mut runners = RunnerRegistry::core();
//! runners.register_polling::<FileAppeared>();
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::expression::ExpressionEngine;
use crate::flow::model::Task;
use crate::flow::registry::TaskRegistry;
use crate::messages::{WorkerTrigger, WorkerTriggerResult};
use crate::model::{LogEntry, MetricEntry, State, StateType, TaskRun};
use crate::storage::InternalStorage;
use crate::worker::context::{RunContext, TelemetrySink};
use crate::worker::runner::{RunnerRegistry, TaskError};

/// A trigger evaluated on a worker every `interval`.
///
/// Implementations render their properties with the [`RunContext`], look at the outside world and
/// say whether an execution starts: `Ok(Some(variables))` starts one whose `trigger` variables are
/// `variables`; `Ok(None)` starts nothing this time; an error is logged on the trigger and starts
/// nothing. They must watch [`RunContext::cancellation`] in anything that waits (worker shutdown).
#[async_trait]
pub trait PollingTrigger: Send + Sync {
    /// Evaluate once.
    async fn evaluate(&self, ctx: &mut RunContext)
    -> Result<Option<Map<String, Value>>, TaskError>;
}

/// Turns log lines of an evaluation into trigger logs (`triggerId`, no execution, task run or task)
/// and drops metrics (a metric belongs to an execution).
struct TriggerSink {
    trigger_id: String,
    inner: Arc<dyn TelemetrySink>,
}

impl TelemetrySink for TriggerSink {
    fn log(&self, mut entry: LogEntry) {
        entry.execution_id = None;
        entry.task_run_id = None;
        entry.task_id = None;
        entry.attempt_number = None;
        entry.trigger_id = Some(self.trigger_id.clone());
        self.inner.log(entry);
    }
    fn metric(&self, _entry: MetricEntry) {}
}

/// What [`evaluate_trigger`] runs with.
#[derive(Clone)]
pub struct TriggerEvaluator {
    /// Internal storage (read by expressions such as `read()` and `kv()`).
    pub storage: Arc<dyn InternalStorage>,
    /// Expression engine.
    pub expr: Arc<ExpressionEngine>,
    /// Task and trigger types.
    pub task_registry: Arc<TaskRegistry>,
    /// Runnable tasks and polling triggers.
    pub runners: Arc<RunnerRegistry>,
    /// Where trigger logs go.
    pub sink: Arc<dyn TelemetrySink>,
    /// Cancelled when the worker gives up (shutdown).
    pub cancel: CancellationToken,
    /// The evaluating worker's id.
    pub worker_id: Option<String>,
}

/// Evaluate one polling-trigger job. Never fails: an evaluation error (unknown type, bad
/// properties, render error, unreachable URI) is logged on the trigger and returned in
/// [`WorkerTriggerResult::error`].
pub async fn evaluate_trigger(job: &WorkerTrigger, with: &TriggerEvaluator) -> WorkerTriggerResult {
    let mut result = WorkerTriggerResult::answering(job, with.worker_id.clone());
    let task = Task {
        id: job.trigger.id.clone(),
        task_type: job.trigger.trigger_type.clone(),
        description: None,
        retry: None,
        timeout: None,
        disabled: false,
        log_level: None,
        log_to_file: false,
        allow_failure: false,
        allow_warning: false,
        run_if: None,
        worker_group: None,
        properties: job.trigger.properties.clone(),
    };
    // The evaluation has no execution: its "task run" only carries the flow's identity.
    let task_run = TaskRun {
        id: String::new(),
        tenant_id: job.tenant_id.clone(),
        execution_id: String::new(),
        namespace: job.namespace.clone(),
        flow_id: job.flow_id.clone(),
        task_id: job.trigger.id.clone(),
        parent_task_run_id: None,
        value: None,
        iteration: None,
        attempts: Vec::new(),
        outputs: None,
        state: State::new_at(StateType::Running, Utc::now()),
        dynamic: false,
    };
    let sink: Arc<dyn TelemetrySink> = Arc::new(TriggerSink {
        trigger_id: job.trigger.id.clone(),
        inner: with.sink.clone(),
    });
    let mut builder =
        RunContext::builder(task, task_run, job.context.clone(), with.storage.clone())
            .expression_engine(with.expr.clone())
            .sink(sink)
            .cancellation(with.cancel.child_token())
            .registries(with.task_registry.clone(), with.runners.clone());
    if let Some(id) = &with.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let mut ctx = builder.build();
    let outcome = match with
        .runners
        .build_polling(&job.trigger, &with.task_registry)
    {
        Ok(trigger) => trigger.evaluate(&mut ctx).await,
        Err(e) => Err(TaskError::Failed(e.to_string())),
    };
    match outcome {
        Ok(variables) => {
            if variables.is_none() {
                ctx.logger().debug("evaluation: nothing to start");
            }
            result.variables = variables;
        }
        Err(e) => {
            let message = e.to_string();
            ctx.logger()
                .error(format!("trigger evaluation failed: {message}"));
            result.error = Some(message);
        }
    }
    result
}
