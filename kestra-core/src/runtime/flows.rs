//! Flows for the executor: a cache of [`FlowIndex`]es by (tenant, namespace, id, revision), filled
//! from a [`FlowSource`]. Revisions are immutable, so an entry never goes stale.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::executor::FlowIndex;
use crate::flow::defaults::apply_plugin_defaults;
use crate::flow::model::Flow;
use crate::flow::registry::TaskRegistry;
use crate::repository::{FlowRepository, RepositoryError};

/// Where the executor gets flow revisions from.
#[async_trait]
pub trait FlowSource: Send + Sync {
    /// A flow revision (the latest when `revision` is `None`); `None` if it does not exist.
    async fn flow(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<Arc<Flow>>, RepositoryError>;

    /// The latest revision of every flow of a tenant that has at least one trigger of `trigger_type`
    /// (canonical or alias spelling is the caller's concern; the default implementation returns
    /// every flow with triggers).
    async fn flows_with_triggers(&self, tenant: &str) -> Result<Vec<Arc<Flow>>, RepositoryError>;
}

/// A [`FlowSource`] reading the flow repository (JDBC: the same database as the queue).
pub struct RepositoryFlowSource {
    repository: Arc<dyn FlowRepository>,
}

impl RepositoryFlowSource {
    /// Read flows from `repository`.
    pub fn new(repository: Arc<dyn FlowRepository>) -> Self {
        RepositoryFlowSource { repository }
    }
}

#[async_trait]
impl FlowSource for RepositoryFlowSource {
    async fn flow(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<Arc<Flow>>, RepositoryError> {
        let Some(record) = self
            .repository
            .find(tenant, namespace, id, revision)
            .await?
        else {
            return Ok(None);
        };
        let mut flow: Flow = serde_json::from_value(record.flow.clone()).map_err(|source| {
            RepositoryError::Corrupt {
                entity: "flow",
                id: format!("{namespace}.{id}"),
                source,
            }
        })?;
        flow.revision = Some(record.revision);
        Ok(Some(Arc::new(flow)))
    }

    async fn flows_with_triggers(&self, tenant: &str) -> Result<Vec<Arc<Flow>>, RepositoryError> {
        let mut out = Vec::new();
        for record in self.repository.find_all(tenant).await? {
            let has_triggers = record
                .flow
                .get("triggers")
                .and_then(|t| t.as_array())
                .is_some_and(|t| !t.is_empty());
            if !has_triggers {
                continue;
            }
            match serde_json::from_value::<Flow>(record.flow.clone()) {
                Ok(mut flow) => {
                    flow.revision = Some(record.revision);
                    out.push(Arc::new(flow));
                }
                Err(e) => tracing::warn!(
                    namespace = %record.namespace, flow = %record.id,
                    "stored flow cannot be read, its triggers are ignored: {e}"
                ),
            }
        }
        Ok(out)
    }
}

/// Why a flow could not be provided to the executor.
#[derive(Debug, thiserror::Error)]
pub enum FlowCacheError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] RepositoryError),
    /// The flow revision does not exist.
    #[error("flow {namespace}.{id} revision {revision:?} not found")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
        /// Revision.
        revision: Option<i32>,
    },
    /// The flow cannot be indexed (plugin defaults or tasks invalid).
    #[error("flow {namespace}.{id} cannot run: {message}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Id.
        id: String,
        /// Why.
        message: String,
    },
}

type Key = (String, String, String, i32);

/// How long the list of flows with triggers is reused before being read again.
const TRIGGER_FLOWS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

type TriggerFlows = (std::time::Instant, Arc<Vec<Arc<Flow>>>);

/// Indexed flows by revision, shared by the executor's units of work.
pub struct FlowCache {
    source: Arc<dyn FlowSource>,
    registry: Arc<TaskRegistry>,
    entries: RwLock<HashMap<Key, Arc<FlowIndex>>>,
    trigger_flows: RwLock<HashMap<String, TriggerFlows>>,
    /// Bumped by every invalidation: a read of the flows with triggers that started before an
    /// invalidation may return what it read, but never caches it (it may predate the change).
    trigger_generation: std::sync::atomic::AtomicU64,
}

impl FlowCache {
    /// A cache over `source`.
    pub fn new(source: Arc<dyn FlowSource>, registry: Arc<TaskRegistry>) -> Self {
        FlowCache {
            source,
            registry,
            entries: RwLock::new(HashMap::new()),
            trigger_flows: RwLock::new(HashMap::new()),
            trigger_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The flows of a tenant that have triggers (re-read at most once per second).
    pub async fn flows_with_triggers(
        &self,
        tenant: &str,
    ) -> Result<Arc<Vec<Arc<Flow>>>, FlowCacheError> {
        if let Some((at, flows)) = self
            .trigger_flows
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
            && at.elapsed() < TRIGGER_FLOWS_TTL
        {
            return Ok(flows);
        }
        let generation = self.trigger_generation.load(Ordering::SeqCst);
        let flows = Arc::new(self.source.flows_with_triggers(tenant).await?);
        if let Ok(mut m) = self.trigger_flows.write()
            && self.trigger_generation.load(Ordering::SeqCst) == generation
        {
            m.insert(
                tenant.to_string(),
                (std::time::Instant::now(), flows.clone()),
            );
        }
        Ok(flows)
    }

    /// Forget the cached lists of flows with triggers (a flow changed).
    pub fn invalidate_trigger_flows(&self) {
        self.trigger_generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.trigger_flows.write() {
            m.clear();
        }
    }

    /// The task registry.
    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }

    /// A flow revision as stored (the latest when `revision` is `None`), e.g. a subflow's.
    pub async fn flow(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Arc<Flow>, FlowCacheError> {
        self.source
            .flow(tenant, namespace, id, revision)
            .await?
            .ok_or_else(|| FlowCacheError::NotFound {
                namespace: namespace.to_string(),
                id: id.to_string(),
                revision,
            })
    }

    /// The indexed flow revision (plugin defaults applied).
    pub async fn index(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: i32,
    ) -> Result<Arc<FlowIndex>, FlowCacheError> {
        let key = (
            tenant.to_string(),
            namespace.to_string(),
            id.to_string(),
            revision,
        );
        if let Some(hit) = self.entries.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        let flow = self
            .source
            .flow(tenant, namespace, id, Some(revision))
            .await?
            .ok_or_else(|| FlowCacheError::NotFound {
                namespace: namespace.to_string(),
                id: id.to_string(),
                revision: Some(revision),
            })?;
        let invalid = |message: String| FlowCacheError::Invalid {
            namespace: namespace.to_string(),
            id: id.to_string(),
            message,
        };
        let flow =
            apply_plugin_defaults(&flow, &self.registry).map_err(|e| invalid(e.to_string()))?;
        let index = Arc::new(
            FlowIndex::new(Arc::new(flow), &self.registry).map_err(|e| invalid(e.to_string()))?,
        );
        if let Ok(mut m) = self.entries.write() {
            m.insert(key, index.clone());
        }
        Ok(index)
    }
}
