//! The executor: Kestra's orchestration logic.
//!
//! - [`process`](process::process) is pure: (stored execution, event, flow, now) -> [`Outcome`]
//!   (new execution state, worker jobs, delayed commands, kill broadcast, logs). It never touches a
//!   queue, a database or a clock.
//! - [`index`] resolves a flow once ([`FlowIndex`]) so that `process` does not re-decode task
//!   properties; [`context`] builds the expression variables; what travels on the queue is defined
//!   in [`messages`](crate::messages).
//! - [`service`]: the [`ExecutorService`] component that feeds `process` from
//!   [`Queue::begin`](crate::queue::Queue::begin) units of work (beside the [`Worker`](crate::worker::Worker),
//!   the [`SchedulerService`](crate::scheduler::SchedulerService) and the
//!   [`IndexerService`](crate::indexer::IndexerService)).

pub mod concurrency;
pub mod context;
pub mod flow_trigger;
pub mod for_each_item;
pub mod index;
pub mod preconditions;
pub mod process;
pub mod replay;
pub mod service;
pub mod subflow;
pub mod task_run_limit;

pub use index::{FlowIndex, IndexError};
pub use process::{Outcome, RunPositions, Walk, process, process_keeping, process_walking};
pub use service::{ExecutionCacheStats, ExecutorConfig, ExecutorService};
