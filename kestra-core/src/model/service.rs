//! Service instances: every running component (executor, worker, scheduler, ...) registers itself and
//! sends heartbeats, so that peers can detect dead instances (and, e.g., resubmit a dead worker's jobs).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Kind of component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceType {
    /// Executor.
    Executor,
    /// Worker.
    Worker,
    /// Scheduler.
    Scheduler,
    /// Indexer.
    Indexer,
    /// Webserver.
    Webserver,
}

/// Lifecycle state of a service instance, with Kestra's names: `CREATED`, `RUNNING`,
/// `TERMINATING` (draining), then `TERMINATED_GRACEFULLY` or `TERMINATED_FORCED` for a stop, or
/// `DISCONNECTED` then `NOT_RUNNING` for an instance that fell silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    /// Starting.
    Created,
    /// Running and healthy.
    Running,
    /// Shutting down gracefully: finishing in-flight work (Kestra's `TERMINATING`).
    #[serde(rename = "TERMINATING", alias = "TERMINATING_GRACEFULLY")]
    TerminatingGracefully,
    /// Stopped after a graceful shutdown.
    TerminatedGracefully,
    /// Stopped when its drain limit was reached: it abandoned the jobs still running (the queue
    /// delivers them again).
    TerminatedForced,
    /// Not heard from within the liveness timeout: declared dead by the executor, which
    /// resubmits its jobs per strategy; `NOT_RUNNING` one termination grace period later. A
    /// heartbeat from it afterwards changes nothing (a worker that learns of it stops).
    Disconnected,
    /// Dead: disconnected for longer than the termination grace period.
    NotRunning,
    /// Cleaned up after being declared dead.
    Inactive,
}

impl ServiceState {
    /// Whether the instance runs (or is still draining).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            ServiceState::Created | ServiceState::Running | ServiceState::TerminatingGracefully
        )
    }

    /// Whether the executor declared it dead (`DISCONNECTED` or `NOT_RUNNING`).
    pub fn is_dead(self) -> bool {
        matches!(self, ServiceState::Disconnected | ServiceState::NotRunning)
    }
}

/// A running component instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstance {
    /// Instance id (base62).
    pub id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// State.
    pub state: ServiceState,
    /// Host name.
    pub hostname: String,
    /// Started at.
    pub created_date: DateTime<Utc>,
    /// Last heartbeat.
    pub updated_date: DateTime<Utc>,
    /// Free-form properties (worker group, concurrency, version, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub props: serde_json::Map<String, serde_json::Value>,
}
