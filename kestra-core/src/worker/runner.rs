//! What a runnable task is to the worker: the [`RunnableTask`] trait, what a run returns
//! ([`TaskOutput`], [`TaskError`]) and the [`RunnerRegistry`] that turns a flow's [`Task`] into a
//! runnable value by its `type` (and a polling [`Trigger`] into a [`PollingTrigger`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::expression::ExpressionError;
use crate::flow::model::{Task, Trigger};
use crate::flow::registry::{DecodeError, TaskRegistry, TaskType, TriggerType};
use crate::model::{StateType, TaskRun};
use crate::storage::StorageError;
use crate::worker::context::RunContext;
use crate::worker::polling::PollingTrigger;

/// A task that runs on a worker.
///
/// Implementations render their properties with the [`RunContext`] (`ctx.render(..)`), do their work,
/// log through `ctx.logger()` and return their outputs. They must watch
/// [`RunContext::cancellation`] in anything that waits (sleep, network, processes) and return
/// [`TaskError::Cancelled`] once it fires: it is how kill and `timeout` reach them.
#[async_trait]
pub trait RunnableTask: Send + Sync {
    /// Run one attempt.
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError>;
}

/// What a successful (or gracefully failed) run returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskOutput {
    /// The attempt's final state: SUCCESS (default), WARNING or FAILED (e.g. a script exiting non-zero
    /// still has outputs).
    pub state: Option<StateType>,
    /// Outputs, by name (`value`, `uri`, `exitCode`, ...).
    pub outputs: Map<String, Value>,
    /// Task runs created by the task on the worker (children of a WorkingDirectory), final.
    pub child_task_runs: Vec<TaskRun>,
}

impl TaskOutput {
    /// SUCCESS with no output.
    pub fn empty() -> TaskOutput {
        TaskOutput::default()
    }

    /// SUCCESS with these outputs.
    pub fn with_outputs(outputs: Map<String, Value>) -> TaskOutput {
        TaskOutput {
            outputs,
            ..TaskOutput::default()
        }
    }

    /// SUCCESS with one output.
    pub fn single(name: &str, value: Value) -> TaskOutput {
        let mut outputs = Map::new();
        outputs.insert(name.to_string(), value);
        TaskOutput::with_outputs(outputs)
    }

    /// The same output with another final state.
    pub fn in_state(mut self, state: StateType) -> TaskOutput {
        self.state = Some(state);
        self
    }

    /// The final state (SUCCESS unless set).
    pub fn final_state(&self) -> StateType {
        self.state.unwrap_or(StateType::Success)
    }
}

/// Why a run failed. The worker logs the message at ERROR and ends the attempt FAILED.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A property could not be rendered.
    #[error("{0}")]
    Expression(#[from] ExpressionError),
    /// Internal storage failed or refused access.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The task's properties do not decode (unknown type, bad shape).
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A rendered property has an unusable value.
    #[error("invalid property `{property}`: {message}")]
    InvalidProperty {
        /// The property.
        property: String,
        /// What is wrong.
        message: String,
    },
    /// The task itself decided to fail (Fail, Assert, HTTP status, ...).
    #[error("{0}")]
    Failed(String),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP exchange failed.
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The run was interrupted by kill or timeout.
    #[error("the task was interrupted")]
    Cancelled,
}

impl TaskError {
    /// An [`TaskError::InvalidProperty`].
    pub fn invalid(property: impl Into<String>, message: impl Into<String>) -> TaskError {
        TaskError::InvalidProperty {
            property: property.into(),
            message: message.into(),
        }
    }

    /// An [`TaskError::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> TaskError {
        TaskError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Builds a runnable value from a task definition (decoding its typed properties).
pub type RunnerConstructor =
    Arc<dyn Fn(&Task, &TaskRegistry) -> Result<Box<dyn RunnableTask>, DecodeError> + Send + Sync>;

/// Builds a polling trigger's evaluator from its definition (decoding its typed properties).
pub type PollingConstructor = Arc<
    dyn Fn(&Trigger, &TaskRegistry) -> Result<Box<dyn PollingTrigger>, DecodeError> + Send + Sync,
>;

/// Why a task cannot be run on this worker.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// No runner is registered for the type.
    #[error("task type '{0}' cannot run on a worker (no runner registered)")]
    NoRunner(String),
    /// No polling evaluator is registered for the trigger type.
    #[error(
        "trigger type '{0}' cannot be evaluated on a worker (not a registered polling trigger)"
    )]
    NoPollingTrigger(String),
    /// The properties do not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// Runnable task types by canonical name.
///
/// [`RunnerRegistry::core`] holds every core runnable task. An embedding application adds its own
/// task in two registries, because validation and execution are separate:
///
/// ```ignore
/// // 1. flow validation and decoding: the property struct implements TaskType
/// task_registry.register::<MyTask>();
/// // 2. execution on workers: the same struct implements RunnableTask
/// runners.register::<MyTask>();
/// ```
///
/// Polling triggers are registered here too ([`RunnerRegistry::register_polling`]), see
/// [`crate::worker::polling`].
///
/// Names are resolved through the [`TaskRegistry`] (so legacy aliases find the canonical runner).
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    runners: HashMap<String, RunnerConstructor>,
    polling: HashMap<String, PollingConstructor>,
}

impl std::fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.runners.keys().collect();
        names.sort();
        let mut polling: Vec<&String> = self.polling.keys().collect();
        polling.sort();
        f.debug_struct("RunnerRegistry")
            .field("types", &names)
            .field("polling_triggers", &polling)
            .finish()
    }
}

impl RunnerRegistry {
    /// A registry with no runner.
    pub fn empty() -> RunnerRegistry {
        RunnerRegistry::default()
    }

    /// A registry with every core runnable task and polling trigger.
    pub fn core() -> RunnerRegistry {
        let mut registry = RunnerRegistry::empty();
        crate::tasks::register_core_runners(&mut registry);
        registry
    }

    /// Registers the polling trigger `T` under [`TriggerType::TYPE`]: its properties are decoded
    /// with [`TaskRegistry::decode_trigger`].
    pub fn register_polling<T: TriggerType + PollingTrigger>(&mut self) -> &mut Self {
        let constructor: PollingConstructor = Arc::new(|trigger, registry| {
            Ok(Box::new(registry.decode_trigger::<T>(trigger)?) as Box<dyn PollingTrigger>)
        });
        self.polling.insert(T::TYPE.to_string(), constructor);
        self
    }

    /// Builds the evaluator of a polling trigger.
    pub fn build_polling(
        &self,
        trigger: &Trigger,
        registry: &TaskRegistry,
    ) -> Result<Box<dyn PollingTrigger>, RunnerError> {
        let canonical = registry
            .resolve_trigger(&trigger.trigger_type)
            .map_or(trigger.trigger_type.as_str(), |e| e.type_name);
        let constructor = self
            .polling
            .get(canonical)
            .ok_or_else(|| RunnerError::NoPollingTrigger(trigger.trigger_type.clone()))?;
        Ok(constructor(trigger, registry)?)
    }

    /// Registers `T` (a [`TaskType`] that is also a [`RunnableTask`]) under [`TaskType::TYPE`]: its
    /// properties are decoded with [`TaskRegistry::decode`].
    pub fn register<T: TaskType + RunnableTask>(&mut self) -> &mut Self {
        self.register_with(T::TYPE, |task, registry| {
            Ok(Box::new(registry.decode::<T>(task)?) as Box<dyn RunnableTask>)
        })
    }

    /// Registers a constructor under a canonical type name (for types whose runner is not the
    /// property struct itself, e.g. one struct shared by several names).
    pub fn register_with<F>(&mut self, type_name: &str, constructor: F) -> &mut Self
    where
        F: Fn(&Task, &TaskRegistry) -> Result<Box<dyn RunnableTask>, DecodeError>
            + Send
            + Sync
            + 'static,
    {
        self.runners
            .insert(type_name.to_string(), Arc::new(constructor));
        self
    }

    /// Whether a runner exists for this type (or alias).
    pub fn contains(&self, type_name: &str, registry: &TaskRegistry) -> bool {
        let canonical = registry.canonical(type_name).unwrap_or(type_name);
        self.runners.contains_key(canonical)
    }

    /// Builds the runnable value of a task.
    pub fn build(
        &self,
        task: &Task,
        registry: &TaskRegistry,
    ) -> Result<Box<dyn RunnableTask>, RunnerError> {
        let canonical = registry
            .canonical(&task.task_type)
            .unwrap_or(task.task_type.as_str());
        let constructor = self
            .runners
            .get(canonical)
            .ok_or_else(|| RunnerError::NoRunner(task.task_type.clone()))?;
        Ok(constructor(task, registry)?)
    }
}
