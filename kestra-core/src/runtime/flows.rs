//! Flows for the orchestration path (executor and scheduler): the [`FlowSource`] seam, its
//! implementations ([`RepositoryFlowSource`] for JDBC, [`FlowStore`] for a store replayed from the
//! flow topic), the flow-topic message ([`flow_envelope`]), and the executor's [`FlowCache`] of
//! [`FlowIndex`]es by (tenant, namespace, id, revision).
//!
//! # The `FlowSource` contract
//!
//! The executor and the scheduler never read the flow repository (what the API and the UI read):
//! they read a [`FlowSource`], fed by the flow topic ([`Topic::Flow`]). Whoever stores a flow
//! revision (deploy, deletion) publishes the whole stored [`FlowRecord`] on that topic
//! ([`flow_envelope`]: YAML source, parsed flow, revision, labels, disabled and deleted flags,
//! update date), keyed by (tenant, namespace, id, revision).
//!
//! 1. **Eventually visible.** A revision published on the flow topic becomes visible through the
//!    source eventually, not necessarily at once: `Ok(None)` from [`FlowSource::find`] may mean
//!    "not yet". Callers that hold a reference to a flow (an execution of it) wait for it for a
//!    bounded grace period ([`crate::executor::service::ExecutorConfig::flow_grace`]) before they
//!    treat it as missing.
//! 2. **Caught up before serving.** A source answers only once it has caught up with what was
//!    published before it started (a replayed store must not answer "no flows" during its replay):
//!    an absence is only ever about recent publications.
//! 3. **Revisions are immutable**, so a revision, once seen, may be cached forever. The latest
//!    revision of a flow is the highest one published; when it is a deletion, the flow is gone (no
//!    revision of it is found, as in the repository).
//! 4. **Errors are transient.** `Err` means the source could not answer (backend down): the caller
//!    retries, it never concludes that a flow is absent.
//!
//! JDBC: [`RepositoryFlowSource`] reads the flows table, which is in the queue backend's own
//! database and written in the same call as the publication, so it never lags; the flow topic is
//! broadcast only and invalidates the executors' cached lists of flows with triggers. Kafka: a
//! compacted flow topic (key = tenant/namespace/id/revision, so every revision survives
//! compaction) replayed into a [`FlowStore`] per instance, which serves once the replay reached
//! the end offsets seen at start and then follows the topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::executor::FlowIndex;
use crate::flow::defaults::apply_plugin_defaults;
use crate::flow::model::Flow;
use crate::flow::registry::TaskRegistry;
use crate::queue::{Envelope, Queue, QueueError, Replayable, Replayed, Topic};
use crate::repository::{FlowRecord, FlowRepository, RepositoryError};

/// Where the executor and the scheduler get flows from. See the module documentation for the
/// contract (eventually visible, caught up before serving, immutable revisions, transient errors).
#[async_trait]
pub trait FlowSource: Send + Sync {
    /// A stored revision of a flow (the latest when `revision` is `None`). `Ok(None)` when the
    /// source does not show it: it does not exist, it was deleted, or it is not visible *yet*.
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<FlowRecord>, RepositoryError>;

    /// The latest revision of every flow of a tenant that is not deleted, sorted by namespace and id.
    async fn find_all(&self, tenant: &str) -> Result<Vec<FlowRecord>, RepositoryError>;
}

/// A [`FlowSource`] reading the flow repository. With the JDBC backend the flows table is in the
/// queue backend's database and written before the flow is published, so this source never lags.
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
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<FlowRecord>, RepositoryError> {
        self.repository.find(tenant, namespace, id, revision).await
    }

    async fn find_all(&self, tenant: &str) -> Result<Vec<FlowRecord>, RepositoryError> {
        self.repository.find_all(tenant).await
    }
}

/// The key of a flow revision on the flow topic: `tenant/namespace/id/revision` (every revision
/// has its own key, so a compacted topic keeps all of them).
pub fn flow_key(record: &FlowRecord) -> String {
    format!(
        "{}/{}/{}/{}",
        record.tenant_id, record.namespace, record.id, record.revision
    )
}

/// The flow-topic message of a stored flow revision: the whole [`FlowRecord`] as JSON (decode it
/// with `envelope.decode::<FlowRecord>()`), keyed by [`flow_key`]. Published by whoever stores a
/// revision, including deletions (`deleted: true`).
pub fn flow_envelope(record: &FlowRecord) -> Result<Envelope, QueueError> {
    Envelope::json(Topic::Flow, flow_key(record), record)
}

/// The flow of a stored record, with the record's revision and tenant.
pub fn read_flow_record(record: &FlowRecord) -> Result<Flow, RepositoryError> {
    let mut flow: Flow =
        serde_json::from_value(record.flow.clone()).map_err(|source| RepositoryError::Corrupt {
            entity: "flow",
            id: format!("{}.{}", record.namespace, record.id),
            source,
        })?;
    flow.revision = Some(record.revision);
    flow.tenant_id = record.tenant_id.clone();
    Ok(flow)
}

type FlowId = (String, String, String);

/// An in-memory [`FlowSource`] filled with the records of the flow topic ([`FlowStore::apply`]):
/// the local store a log-based backend replays its compacted flow topic into. Applying is
/// idempotent and order-insensitive (the latest revision is the highest one applied), and it
/// answers as the repository does: a flow whose latest revision is a deletion is not found, in
/// any revision.
pub struct FlowStore {
    flows: RwLock<HashMap<FlowId, BTreeMap<i32, FlowRecord>>>,
    /// Whether the store has caught up with the flow topic (contract point 2): until then
    /// [`FlowSource`] calls answer a transient error.
    caught_up: tokio::sync::watch::Sender<bool>,
}

impl Default for FlowStore {
    fn default() -> Self {
        FlowStore {
            flows: RwLock::default(),
            caught_up: tokio::sync::watch::Sender::new(true),
        }
    }
}

impl FlowStore {
    /// An empty store that serves at once (filled by hand with [`FlowStore::apply`]).
    pub fn new() -> Self {
        FlowStore::default()
    }

    /// An empty store that answers a transient error until [`FlowStore::mark_caught_up`]: the
    /// store [`follow_flows`] replays the flow topic into.
    pub fn replaying() -> Self {
        FlowStore {
            flows: RwLock::default(),
            caught_up: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The replay reached what was published before it started: serve from now on.
    pub fn mark_caught_up(&self) {
        self.caught_up.send_replace(true);
    }

    /// Whether the store serves (caught up with the flow topic).
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Wait until the store serves, at most `timeout`; false if it did not catch up in time.
    pub async fn wait_caught_up(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|ready| *ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn check_caught_up(&self) -> Result<(), RepositoryError> {
        if self.is_caught_up() {
            return Ok(());
        }
        Err(RepositoryError::backend(
            "read the flow store",
            std::io::Error::other("the flow store has not caught up with the flow topic yet"),
        ))
    }

    /// The highest revision of a flow seen on the topic, a deletion included (what the next
    /// revision follows).
    pub fn latest_revision(&self, tenant: &str, namespace: &str, id: &str) -> Option<FlowRecord> {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        flows
            .get(&(tenant.to_string(), namespace.to_string(), id.to_string()))
            .and_then(|revisions| revisions.values().next_back().cloned())
    }

    /// Record a revision read from the flow topic (a redelivered one replaces itself).
    pub fn apply(&self, record: FlowRecord) {
        let id = (
            record.tenant_id.clone(),
            record.namespace.clone(),
            record.id.clone(),
        );
        let mut flows = self.flows.write().unwrap_or_else(|e| e.into_inner());
        flows.entry(id).or_default().insert(record.revision, record);
    }
}

#[async_trait]
impl FlowSource for FlowStore {
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> Result<Option<FlowRecord>, RepositoryError> {
        self.check_caught_up()?;
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_string(), namespace.to_string(), id.to_string());
        let Some(revisions) = flows.get(&key) else {
            return Ok(None);
        };
        if revisions.values().next_back().is_none_or(|r| r.deleted) {
            return Ok(None);
        }
        let found = match revision {
            Some(r) => revisions.get(&r),
            None => revisions.values().next_back(),
        };
        Ok(found.filter(|r| !r.deleted).cloned())
    }

    async fn find_all(&self, tenant: &str) -> Result<Vec<FlowRecord>, RepositoryError> {
        self.check_caught_up()?;
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<FlowRecord> = flows
            .iter()
            .filter(|((t, _, _), _)| t == tenant)
            .filter_map(|(_, revisions)| revisions.values().next_back())
            .filter(|r| !r.deleted)
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        Ok(out)
    }
}

/// Replay the flow topic into `store` and follow it until `shutdown` ([`Queue::replay`] of
/// [`Replayable::Flows`]): the store serves once the replay caught up. A broken replay (broker
/// down) is started again after a pause; records are applied idempotently. `on_change` is called
/// for each record applied after the catch-up (the executor's cache of flows with triggers is
/// invalidated with it).
pub async fn follow_flows(
    queue: Arc<dyn Queue>,
    store: Arc<FlowStore>,
    on_change: Option<Arc<dyn Fn() + Send + Sync>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    let mut pause = std::time::Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut stream = match queue.replay(Replayable::Flows).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot replay the flow topic; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(Replayed::CaughtUp)) => {
                    pause = std::time::Duration::from_millis(100);
                    store.mark_caught_up();
                    tracing::debug!("flow store caught up with the flow topic");
                }
                Some(Ok(Replayed::Record {
                    key,
                    payload: Some(payload),
                })) => match serde_json::from_slice::<FlowRecord>(&payload) {
                    Ok(record) => {
                        store.apply(record);
                        if store.is_caught_up()
                            && let Some(f) = &on_change
                        {
                            f();
                        }
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "malformed flow record ignored"),
                },
                Some(Ok(Replayed::Record { payload: None, .. })) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "flow topic replay failed; starting it again");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Why a flow could not be provided to the executor.
#[derive(Debug, thiserror::Error)]
pub enum FlowCacheError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] RepositoryError),
    /// The flow revision does not exist (or the source does not show it yet).
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

    /// The latest revision of every flow of a tenant that has triggers (re-read at most once per
    /// second). An error of the source is returned, never an empty list: flow triggers must not
    /// be skipped because the list could not be read. A stored flow that cannot be read is left
    /// out with a warning.
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
        let mut out = Vec::new();
        for record in self.source.find_all(tenant).await? {
            let has_triggers = record
                .flow
                .get("triggers")
                .and_then(|t| t.as_array())
                .is_some_and(|t| !t.is_empty());
            if !has_triggers {
                continue;
            }
            match read_flow_record(&record) {
                Ok(flow) => out.push(Arc::new(flow)),
                Err(e) => tracing::warn!(
                    namespace = %record.namespace, flow = %record.id,
                    "stored flow cannot be read, its triggers are ignored: {e}"
                ),
            }
        }
        let flows = Arc::new(out);
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
        let record = self
            .source
            .find(tenant, namespace, id, revision)
            .await?
            .ok_or_else(|| FlowCacheError::NotFound {
                namespace: namespace.to_string(),
                id: id.to_string(),
                revision,
            })?;
        Ok(Arc::new(read_flow_record(&record)?))
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
        let flow = self.flow(tenant, namespace, id, Some(revision)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, revision: i32, deleted: bool) -> FlowRecord {
        FlowRecord {
            tenant_id: "main".into(),
            namespace: "tests".into(),
            id: id.into(),
            revision,
            flow: serde_json::json!({"id": id, "namespace": "tests", "tasks": []}),
            source: format!("id: {id}\nnamespace: tests\n# revision {revision}\n"),
            labels: Vec::new(),
            disabled: false,
            deleted,
            updated: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_flow_store_answers_like_the_repository() -> Result<(), RepositoryError> {
        let store = FlowStore::new();
        assert!(store.find("main", "tests", "a", None).await?.is_none());
        // Out of order and redelivered: the latest revision is the highest.
        store.apply(record("a", 2, false));
        store.apply(record("a", 1, false));
        store.apply(record("a", 2, false));
        store.apply(record("b", 1, false));
        let latest = store.find("main", "tests", "a", None).await?;
        assert_eq!(latest.map(|r| r.revision), Some(2));
        let first = store.find("main", "tests", "a", Some(1)).await?;
        assert_eq!(
            first.map(|r| r.source),
            Some("id: a\nnamespace: tests\n# revision 1\n".to_string())
        );
        assert!(store.find("main", "tests", "a", Some(7)).await?.is_none());
        assert!(store.find("other", "tests", "a", None).await?.is_none());
        let all: Vec<(String, i32)> = store
            .find_all("main")
            .await?
            .into_iter()
            .map(|r| (r.id, r.revision))
            .collect();
        assert_eq!(all, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
        // A deletion (a revision of its own) hides every revision of the flow.
        store.apply(record("a", 3, true));
        assert!(store.find("main", "tests", "a", None).await?.is_none());
        assert!(store.find("main", "tests", "a", Some(2)).await?.is_none());
        let all: Vec<String> = store
            .find_all("main")
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(all, vec!["b".to_string()]);
        // Deployed again after the deletion: the new revision is visible.
        store.apply(record("a", 4, false));
        let again = store.find("main", "tests", "a", None).await?;
        assert_eq!(again.map(|r| r.revision), Some(4));
        Ok(())
    }

    #[test]
    fn the_flow_message_carries_the_whole_record() -> Result<(), QueueError> {
        let stored = record("a", 3, true);
        let envelope = flow_envelope(&stored)?;
        assert_eq!(envelope.topic, Topic::Flow);
        assert_eq!(envelope.key, "main/tests/a/3");
        assert_eq!(envelope.decode::<FlowRecord>()?, stored);
        Ok(())
    }
}
