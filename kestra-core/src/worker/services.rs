//! The seam through which tasks reach other executions, their logs and triggers: log.Fetch,
//! execution.Count, execution.PurgeExecutions, execution.Resume and trigger.Toggle.
//!
//! A worker never writes the repository itself. [`ExecutionServices`] reads through the
//! [`Repository`](crate::repository) traits and changes things the way the rest of the engine does:
//!
//! - deleting an execution takes [`Engine::delete_execution`](crate::runtime::Engine::delete_execution)'s
//!   path ([`delete_execution`]): rows deleted where the queue's units write the repository (JDBC), a
//!   tombstone through the queue to the indexer otherwise (Kafka + Elasticsearch);
//! - resuming publishes an [`ExecutionCommand::Resume`] for the executor;
//! - enabling or disabling a trigger claims its state through the scheduler's trigger seam
//!   ([`Queue::begin_triggers`]), as `kestra trigger unlock` does.
//!
//! On Kafka + Elasticsearch the repository lags the queue (and may be down): reads see what the
//! indexer stored so far.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::messages::ExecutionCommand;
use crate::model::{Execution, Level, LogEntry, MetricEntry, TriggerState, trigger_uid};
use crate::queue::{Queue, QueueError};
use crate::repository::{ExecutionQuery, Pageable, Repositories, RepositoryError};
use crate::runtime::flows::FlowSource;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The repository failed.
    #[error("repository: {0}")]
    Repository(#[from] RepositoryError),
    /// The queue failed.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The thing asked for does not exist (or is not visible yet).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done now (a trigger held by a scheduler, an execution not paused).
    #[error("{0}")]
    Conflict(String),
}

/// What tasks that read the repository or act on other executions and triggers are given
/// ([`RunContext::services`](crate::worker::RunContext::services)).
#[async_trait]
pub trait ExecutionServices: Send + Sync {
    /// An execution by id.
    async fn execution(&self, tenant: &str, id: &str) -> Result<Option<Execution>, ServicesError>;
    /// Every execution matching `query` (paged through internally, `page_size` at a time).
    async fn executions(
        &self,
        query: &ExecutionQuery,
        page_size: u32,
    ) -> Result<Vec<Execution>, ServicesError>;
    /// An execution's logs from `min_level` up, in emission order.
    async fn logs(
        &self,
        tenant: &str,
        execution_id: &str,
        min_level: Level,
    ) -> Result<Vec<LogEntry>, ServicesError>;
    /// An execution's metrics.
    async fn metrics(
        &self,
        tenant: &str,
        execution_id: &str,
    ) -> Result<Vec<MetricEntry>, ServicesError>;
    /// The `(namespace, id)` of every flow of the tenant that is not deleted.
    async fn flows(&self, tenant: &str) -> Result<Vec<(String, String)>, ServicesError>;
    /// Delete an ended execution, with its logs and metrics when asked, the way
    /// [`Engine::delete_execution`](crate::runtime::Engine::delete_execution) does.
    async fn delete_execution(
        &self,
        tenant: &str,
        id: &str,
        delete_logs: bool,
        delete_metrics: bool,
    ) -> Result<(), ServicesError>;
    /// Ask the executor to resume a paused execution with values for its `onResume` inputs.
    async fn resume(&self, id: &str, inputs: Map<String, Value>) -> Result<(), ServicesError>;
    /// Enable or disable a trigger (its scheduler state); returns the state saved.
    async fn set_trigger_enabled(
        &self,
        tenant: &str,
        namespace: &str,
        flow_id: &str,
        trigger_id: &str,
        enabled: bool,
    ) -> Result<TriggerState, ServicesError>;
}

/// [`ExecutionServices`] over a queue backend, its repositories and a flow source: what the
/// [`Engine`](crate::runtime::Engine) gives its worker, on JDBC and on Kafka + Elasticsearch alike.
#[derive(Clone)]
pub struct BackendServices {
    queue: Arc<dyn Queue>,
    repositories: Repositories,
    flows: Arc<dyn FlowSource>,
}

impl std::fmt::Debug for BackendServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendServices").finish_non_exhaustive()
    }
}

impl BackendServices {
    /// Services over `queue`, `repositories` and `flows`.
    pub fn new(
        queue: Arc<dyn Queue>,
        repositories: Repositories,
        flows: Arc<dyn FlowSource>,
    ) -> BackendServices {
        BackendServices {
            queue,
            repositories,
            flows,
        }
    }
}

/// Delete an execution (soft) with its logs and metrics when asked: rows deleted where the queue's
/// units write the repository (JDBC); otherwise a tombstone
/// ([`ExecutionChange::Deleted`](crate::messages::ExecutionChange)) through the queue to the
/// indexer, then a wait (up to 5 s) until the repository no longer shows the execution.
pub async fn delete_execution(
    queue: &dyn Queue,
    repositories: &Repositories,
    tenant: &str,
    id: &str,
    delete_logs: bool,
    delete_metrics: bool,
) -> Result<(), ServicesError> {
    if queue.capabilities().repository_in_unit {
        repositories.executions.delete(tenant, id).await?;
        if delete_logs {
            repositories.logs.delete_by_execution(tenant, id).await?;
        }
        if delete_metrics {
            repositories.metrics.delete_by_execution(tenant, id).await?;
        }
        return Ok(());
    }
    let tombstone = crate::messages::ExecutionChange::Deleted {
        tenant_id: tenant.to_string(),
        execution_id: id.to_string(),
        delete_logs,
        delete_metrics,
    };
    queue.publish(vec![tombstone.envelope()?]).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while repositories
        .executions
        .find_by_id(tenant, id)
        .await?
        .is_some()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Enable or disable a trigger through the scheduler's trigger seam: claim its state (waiting up to
/// `wait` for a scheduler that holds it in a unit of work), set `disabled`, save and commit. A
/// trigger without a state (flow not deployed, or no scheduler ever saw it) is
/// [`ServicesError::NotFound`].
pub async fn set_trigger_enabled(
    queue: &dyn Queue,
    repositories: &Repositories,
    uid: &str,
    enabled: bool,
    wait: Duration,
) -> Result<TriggerState, ServicesError> {
    let started = tokio::time::Instant::now();
    loop {
        let mut unit = queue.begin_triggers().await?;
        let Some(mut state) = unit.claim(uid).await? else {
            drop(unit);
            // Not claimable: unknown, or held by a scheduler's unit of work right now.
            if started.elapsed() >= wait {
                return Err(if repositories.triggers.find(uid).await?.is_some() {
                    ServicesError::Conflict(format!(
                        "trigger {uid} is held by a scheduler for more than {wait:?}; try again"
                    ))
                } else {
                    ServicesError::NotFound(format!(
                        "trigger {uid} has no state: is its flow deployed and a scheduler running?"
                    ))
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        state.disabled = !enabled;
        if enabled {
            // A trigger the scheduler disabled for an error starts clean.
            state.error = None;
        }
        state.updated_date = chrono::Utc::now();
        unit.save(&state).await?;
        unit.commit().await?;
        tracing::info!(trigger = %uid, enabled, "trigger toggled");
        return Ok(state);
    }
}

#[async_trait]
impl ExecutionServices for BackendServices {
    async fn execution(&self, tenant: &str, id: &str) -> Result<Option<Execution>, ServicesError> {
        Ok(self.repositories.executions.find_by_id(tenant, id).await?)
    }

    async fn executions(
        &self,
        query: &ExecutionQuery,
        page_size: u32,
    ) -> Result<Vec<Execution>, ServicesError> {
        let size = page_size.clamp(1, 1000);
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let found = self
                .repositories
                .executions
                .search(query, &Pageable::new(page, size))
                .await?;
            let n = found.results.len();
            all.extend(found.results);
            if n < size as usize || all.len() as u64 >= found.total {
                return Ok(all);
            }
            page += 1;
        }
    }

    async fn logs(
        &self,
        tenant: &str,
        execution_id: &str,
        min_level: Level,
    ) -> Result<Vec<LogEntry>, ServicesError> {
        Ok(self
            .repositories
            .logs
            .find_by_execution(tenant, execution_id, Some(min_level), None)
            .await?)
    }

    async fn metrics(
        &self,
        tenant: &str,
        execution_id: &str,
    ) -> Result<Vec<MetricEntry>, ServicesError> {
        Ok(self
            .repositories
            .metrics
            .find_by_execution(tenant, execution_id)
            .await?)
    }

    async fn flows(&self, tenant: &str) -> Result<Vec<(String, String)>, ServicesError> {
        Ok(self
            .flows
            .find_all(tenant)
            .await?
            .into_iter()
            .map(|f| (f.namespace, f.id))
            .collect())
    }

    async fn delete_execution(
        &self,
        tenant: &str,
        id: &str,
        delete_logs: bool,
        delete_metrics: bool,
    ) -> Result<(), ServicesError> {
        delete_execution(
            self.queue.as_ref(),
            &self.repositories,
            tenant,
            id,
            delete_logs,
            delete_metrics,
        )
        .await
    }

    async fn resume(&self, id: &str, inputs: Map<String, Value>) -> Result<(), ServicesError> {
        let cmd = ExecutionCommand::Resume {
            execution_id: id.to_string(),
            task_run_id: None,
            inputs,
        };
        self.queue.publish(vec![cmd.envelope()?]).await?;
        Ok(())
    }

    async fn set_trigger_enabled(
        &self,
        tenant: &str,
        namespace: &str,
        flow_id: &str,
        trigger_id: &str,
        enabled: bool,
    ) -> Result<TriggerState, ServicesError> {
        let uid = trigger_uid(tenant, namespace, flow_id, trigger_id);
        set_trigger_enabled(
            self.queue.as_ref(),
            &self.repositories,
            &uid,
            enabled,
            Duration::from_secs(10),
        )
        .await
    }
}
