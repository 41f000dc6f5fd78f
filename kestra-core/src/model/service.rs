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

/// Lifecycle state of a service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    /// Starting.
    Created,
    /// Running and healthy.
    Running,
    /// Shutting down gracefully; finishing in-flight work.
    TerminatingGracefully,
    /// Stopped after a graceful shutdown.
    TerminatedGracefully,
    /// Missed its heartbeats: considered dead by its peers.
    NotRunning,
    /// Cleaned up after being declared dead.
    Inactive,
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
