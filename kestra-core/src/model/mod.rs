//! The runtime model: executions, task runs, states, logs, metrics, trigger state and service
//! instances. The flow *definition* model lives in [`crate::flow`].

pub mod execution;
pub mod id;
pub mod log;
pub mod service;
pub mod state;
pub mod trigger;

pub use execution::{
    DEFAULT_TENANT, Execution, ExecutionKind, ExecutionMetadata, ExecutionTrigger, Label, TaskRun,
    TaskRunAttempt, system_labels,
};
pub use id::new_id;
pub use log::{Level, LogEntry, MetricEntry, MetricType};
pub use service::{ServiceInstance, ServiceState, ServiceType};
pub use state::{InvalidTransition, State, StateHistory, StateType};
pub use trigger::{Backfill, TriggerState, trigger_uid};
