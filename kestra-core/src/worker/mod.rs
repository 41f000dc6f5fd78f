//! The worker: runs task attempts sent by the executor and polling-trigger evaluations sent by the
//! scheduler, and reports their results.
//!
//! - [`service`]: the [`Worker`] loop over the [`Queue`](crate::queue::Queue) (receive jobs, run
//!   them with bounded concurrency, publish results then acknowledge, follow kill broadcasts,
//!   graceful shutdown).
//! - [`runner`]: the [`RunnableTask`] trait every runnable task implements, [`TaskOutput`],
//!   [`TaskError`] and the [`RunnerRegistry`] (type name -> runnable).
//! - [`context`]: the [`RunContext`] a task runs with (rendering, logger, metrics, storage scoped to
//!   the execution, working directory, cancellation) and the worker's expression host.
//! - [`polling`]: polling triggers evaluated on workers ([`PollingTrigger`], [`evaluate_trigger`]).
//! - [`attempt`]: one attempt in isolation (timeout, kill, panic -> FAILED).
//! - [`kv`]: the key-value store kept in internal storage.
//! - [`files`]: working-directory file helpers (`inputFiles`, `outputFiles`).
//! - [`services`]: [`ExecutionServices`], the seam through which tasks read other executions,
//!   logs and triggers and act on them (through the queue, never writing the repository).
//!
//! The core tasks themselves live in [`crate::tasks`].
//!
//! # Adding a task of your own
//!
//! A task type is a serde struct of its properties that implements both
//! [`TaskType`](crate::flow::TaskType) (name, kind) and [`RunnableTask`]. Register it in the
//! [`TaskRegistry`](crate::flow::TaskRegistry) used to parse and validate flows *and* in the
//! [`RunnerRegistry`] given to the workers:
//!
//! ```
//! use async_trait::async_trait;
//! use kestra_core::flow::{TaskKind, TaskRegistry, TaskType};
//! use kestra_core::worker::{RunContext, RunnableTask, RunnerRegistry, TaskError, TaskOutput};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(rename_all = "camelCase", deny_unknown_fields)]
//! struct Greet {
//!     name: String,
//! }
//!
//! impl TaskType for Greet {
//!     const TYPE: &'static str = "com.example.Greet";
//!     const KIND: TaskKind = TaskKind::Runnable;
//! }
//!
//! #[async_trait]
//! impl RunnableTask for Greet {
//!     async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
//!         let name = ctx.render(&self.name)?;
//!         ctx.logger().info(format!("hello {name}"));
//!         Ok(TaskOutput::single("greeting", format!("hello {name}").into()))
//!     }
//! }
//!
//! let mut tasks = TaskRegistry::default();
//! tasks.register::<Greet>();
//! let mut runners = RunnerRegistry::core();
//! runners.register::<Greet>();
//! ```

pub mod attempt;
pub mod context;
pub mod files;
pub mod kv;
pub mod polling;
pub mod runner;
pub mod service;
pub mod services;

pub use attempt::{AttemptEnd, AttemptResult, run_attempt};
pub use context::{
    MemorySink, RunContext, RunContextBuilder, RunIdentity, TaskLogger, TelemetrySink,
};
pub use kv::{KvEntry, KvError, KvStore};
pub use polling::{PollingTrigger, TriggerEvaluator, evaluate_trigger};
pub use runner::{RunnableTask, RunnerError, RunnerRegistry, TaskError, TaskOutput};
pub use service::{Worker, WorkerConfig};
pub use services::{BackendServices, ExecutionServices, ServicesError};
