//! # kestra-core
//!
//! The heart of the Kestra re-implementation: everything that does not depend on a particular backend.
//!
//! - [`model`]: executions, task runs, states, logs, metrics, trigger state, service instances.
//! - [`flow`]: the YAML flow language - model, task registry, parsing and validation.
//! - [`inputs`]: execution inputs parsed and validated against the flow's input declarations.
//! - [`expression`]: Pebble-compatible expressions rendered with strict undefined variables.
//! - [`queue`], [`repository`], [`storage`]: the three seams every backend implements.
//! - [`messages`]: what the executor, the workers and the schedulers send each other on the queue.
//! - [`liveness`]: heartbeats and the jobs workers hold, through the queue; the executor decides who is dead.
//! - The components, each in its own module: [`executor`] (the pure orchestration logic and the
//!   [`ExecutorService`](executor::ExecutorService)), [`worker`] (the [`Worker`](worker::Worker) and
//!   the task run context), [`scheduler`] (the [`SchedulerService`](scheduler::SchedulerService)) and
//!   [`indexer`] (the [`IndexerService`](indexer::IndexerService)); [`tasks`]: the core runnable tasks.
//! - [`runtime`]: the [`Engine`](runtime::Engine) that wires the components over one backend, and the
//!   flow source they read flows from.
//!
//! No database, Kafka or Elasticsearch type appears in this crate; backends implement its traits.

pub mod executor;
pub mod expression;
pub mod flow;
pub mod indexer;
pub mod inputs;
pub mod limits;
pub mod liveness;
pub mod messages;
pub mod model;
pub mod queue;
pub mod repository;
pub mod runtime;
pub mod scheduler;
pub mod storage;
pub mod tasks;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod worker;
