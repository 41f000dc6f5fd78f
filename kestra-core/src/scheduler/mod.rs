//! The scheduler: starts executions of flows from their `Schedule` and `ScheduleOnDates` triggers and
//! from their polling triggers (`io.kestra.plugin.core.http.Trigger`, ...: it sends their evaluations
//! to the workers every `interval` and starts the executions the results ask for), runs backfills,
//! holds a trigger's lock while its execution runs, recovers missed slots, and lets several
//! schedulers run at once.
//!
//! - [`clock`]: [`Clock`], [`SystemClock`], [`ManualClock`].
//! - [`schedule`]: pure slot logic (cron, time zones, daylight saving, recovery, execution ids).
//! - [`conditions`]: trigger conditions evaluated at fire time.
//! - [`service`]: [`SchedulerService`], one evaluation step ([`SchedulerService::tick`]) and its loop.
//! - [`polling`]: polling triggers: evaluations sent to workers, results applied.
//! - [`backfill`](mod@backfill): the backfill API ([`backfill()`]).
//!
//! The scheduler is written against the [`Queue`](crate::queue::Queue) and a
//! [`FlowSource`](crate::runtime::flows::FlowSource) only: it reads no repository. Trigger state
//! lives behind the queue backend ([`Queue::begin_triggers`](crate::queue::Queue::begin_triggers)):
//! each step is one [`TriggerUnit`](crate::queue::TriggerUnit) that claims the triggers it works on,
//! stages their new states with the executions and evaluation jobs it starts, and commits all of it
//! at once. The executor tells the schedulers that an execution a trigger started ended with a
//! [`TriggerEvent`](crate::messages::TriggerEvent) on
//! [`Topic::Trigger`](crate::queue::Topic::Trigger), keyed by trigger uid. Several instances share
//! the work through the claims; exactly one execution is created per slot because a slot's execution
//! id is derived from the slot ([`schedule::slot_execution_id`]), it is queued in the commit that
//! moves the trigger past the slot, and the executor ignores a creation message for an execution it
//! already knows. A polling trigger's evaluation is sent under the trigger's claim (one per due
//! date), and its execution id is derived from the evaluation's date in the same way.

pub mod backfill;
pub mod clock;
pub mod conditions;
pub mod polling;
pub mod schedule;
pub mod service;

pub use backfill::{BackfillRequest, backfill};
pub use clock::{Clock, ManualClock, SystemClock};
pub use service::{FiredSlot, SchedulerConfig, SchedulerService, TickReport};

use crate::queue::QueueError;
use crate::repository::RepositoryError;

/// Errors of the scheduler's backends and API. Problems of one trigger (bad cron, unknown condition,
/// inputs that do not render) are not errors of the scheduler: they disable that trigger with a message
/// in its state.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A repository failed.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A stored flow cannot be read.
    #[error("flow {namespace}.{id}: {message}")]
    Flow {
        /// Namespace.
        namespace: String,
        /// Flow id.
        id: String,
        /// Why.
        message: String,
    },
    /// The trigger does not exist or is not a schedule trigger.
    #[error("no schedule trigger '{trigger_id}' in flow {namespace}.{flow_id}")]
    TriggerNotFound {
        /// Namespace.
        namespace: String,
        /// Flow id.
        flow_id: String,
        /// Trigger id.
        trigger_id: String,
    },
    /// A request is invalid (backfill range, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request conflicts with the trigger's state (a backfill already runs, ...).
    #[error("conflict: {0}")]
    Conflict(String),
}
