//! In-memory repositories ([`MemoryRepositories`]) for tests.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::model::{Execution, Level, LogEntry, MetricEntry, ServiceInstance, TriggerState};
use crate::repository::{
    EXECUTION_SORT_FIELDS, ExecutionQuery, ExecutionRepository, FLOW_SORT_FIELDS, FlowQuery,
    FlowRecord, FlowRepository, LOG_SORT_FIELDS, LogQuery, LogRepository, MetricRepository, Page,
    Pageable, PurgeCount, RepoResult, Repositories, RepositoryError, SaveOutcome,
    ServiceInstanceRepository, TRIGGER_SORT_FIELDS, TriggerQuery, TriggerRepository,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn in_ns(ns: &str, filter: &Option<String>) -> bool {
    filter
        .as_ref()
        .is_none_or(|f| ns == f || ns.starts_with(&format!("{f}.")))
}

fn has(text: &str, q: &str) -> bool {
    text.to_lowercase().contains(&q.to_lowercase())
}

fn tenant_of(t: &Option<String>) -> &str {
    t.as_deref().unwrap_or("main")
}

/// Sort with `key(field)` values, then page.
fn page_of<T: Clone>(
    mut items: Vec<T>,
    page: &Pageable,
    allowed: &'static [&'static str],
    default: &dyn Fn(&T, &T) -> Ordering,
    key: &dyn Fn(&T, &str) -> String,
) -> RepoResult<Page<T>> {
    let (offset, limit) = page.check(allowed)?;
    if page.sort.is_empty() {
        items.sort_by(default);
    } else {
        items.sort_by(|a, b| {
            for s in &page.sort {
                let o = key(a, &s.field).cmp(&key(b, &s.field));
                let o = if s.descending { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let total = items.len() as u64;
    let results = items
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(Page { results, total })
}

/// Every repository in memory, behind one lock per kind (clones share the store).
#[derive(Default)]
struct Mem {
    flows: Mutex<Vec<FlowRecord>>,
    executions: Mutex<HashMap<(String, String), Execution>>,
    logs: Mutex<Vec<LogEntry>>,
    metrics: Mutex<Vec<MetricEntry>>,
    triggers: Mutex<HashMap<String, TriggerState>>,
    services: Mutex<HashMap<String, ServiceInstance>>,
}

impl Mem {
    fn latest(&self, tenant: &str, ns: &str, id: &str) -> Option<FlowRecord> {
        lock(&self.flows)
            .iter()
            .filter(|f| f.tenant_id == tenant && f.namespace == ns && f.id == id)
            .max_by_key(|f| f.revision)
            .cloned()
    }
    fn live_flows(&self, tenant: &str) -> Vec<FlowRecord> {
        let mut keys: Vec<(String, String)> = lock(&self.flows)
            .iter()
            .filter(|f| f.tenant_id == tenant)
            .map(|f| (f.namespace.clone(), f.id.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|(ns, id)| self.latest(tenant, &ns, &id))
            .filter(|f| !f.deleted)
            .collect()
    }
}

#[async_trait]
impl FlowRepository for Mem {
    async fn save(&self, mut record: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)> {
        // Read and insert under one lock: concurrent saves get distinct revisions.
        let mut flows = lock(&self.flows);
        let latest = flows
            .iter()
            .filter(|f| {
                f.tenant_id == record.tenant_id
                    && f.namespace == record.namespace
                    && f.id == record.id
            })
            .max_by_key(|f| f.revision)
            .cloned();
        let outcome = match &latest {
            Some(l) if !l.deleted && l.source == record.source => {
                return Ok((l.clone(), SaveOutcome::Unchanged));
            }
            Some(_) => SaveOutcome::Updated,
            None => SaveOutcome::Created,
        };
        record.revision = latest.map_or(1, |l| l.revision + 1);
        record.updated = Utc::now();
        record.deleted = false;
        flows.push(record.clone());
        Ok((record, outcome))
    }
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>> {
        if self.latest(tenant, namespace, id).is_none_or(|l| l.deleted) {
            return Ok(None);
        }
        Ok(lock(&self.flows)
            .iter()
            .filter(|f| f.tenant_id == tenant && f.namespace == namespace && f.id == id)
            .filter(|f| revision.is_none_or(|r| f.revision == r))
            .max_by_key(|f| f.revision)
            .cloned())
    }
    async fn put_revision(&self, record: &FlowRecord) -> RepoResult<()> {
        let mut flows = lock(&self.flows);
        let exists = flows.iter().any(|f| {
            f.tenant_id == record.tenant_id
                && f.namespace == record.namespace
                && f.id == record.id
                && f.revision == record.revision
        });
        if !exists {
            flows.push(record.clone());
        }
        Ok(())
    }
    async fn revisions(&self, tenant: &str, ns: &str, id: &str) -> RepoResult<Vec<FlowRecord>> {
        let mut revisions: Vec<FlowRecord> = lock(&self.flows)
            .iter()
            .filter(|f| f.tenant_id == tenant && f.namespace == ns && f.id == id)
            .cloned()
            .collect();
        // Published revisions may arrive out of order; the list is by revision.
        revisions.sort_by_key(|f| f.revision);
        Ok(revisions)
    }
    async fn delete(&self, tenant: &str, ns: &str, id: &str) -> RepoResult<FlowRecord> {
        let Some(mut l) = self.latest(tenant, ns, id).filter(|l| !l.deleted) else {
            return Err(RepositoryError::NotFound {
                entity: "flow",
                id: id.to_string(),
            });
        };
        l.revision += 1;
        l.deleted = true;
        lock(&self.flows).push(l.clone());
        Ok(l)
    }
    async fn search(&self, q: &FlowQuery, page: &Pageable) -> RepoResult<Page<FlowRecord>> {
        let items: Vec<FlowRecord> = self
            .live_flows(tenant_of(&q.tenant_id))
            .into_iter()
            .filter(|f| in_ns(&f.namespace, &q.namespace))
            .filter(|f| q.labels.iter().all(|l| f.labels.contains(l)))
            .filter(|f| {
                q.q.as_ref().is_none_or(|t| {
                    has(&f.id, t)
                        || has(&f.namespace, t)
                        || has(&f.source, t)
                        || has(f.flow["description"].as_str().unwrap_or(""), t)
                })
            })
            .collect();
        page_of(
            items,
            page,
            FLOW_SORT_FIELDS,
            &|a, b| b.updated.cmp(&a.updated),
            &|f, field| match field {
                "id" => f.id.clone(),
                "namespace" => f.namespace.clone(),
                _ => f.updated.to_rfc3339(),
            },
        )
    }
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>> {
        Ok(self.live_flows(tenant))
    }
    async fn distinct_namespaces(&self, tenant: &str) -> RepoResult<Vec<String>> {
        let mut v: Vec<String> = self
            .live_flows(tenant)
            .into_iter()
            .map(|f| f.namespace)
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}

fn date_key(d: Option<DateTime<Utc>>) -> String {
    d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[async_trait]
impl ExecutionRepository for Mem {
    async fn save(&self, e: &Execution) -> RepoResult<()> {
        let mut executions = lock(&self.executions);
        let key = (e.tenant_id.clone(), e.id.clone());
        let mut e = e.clone();
        if let Some(stored) = executions.get(&key) {
            if stored.metadata.version > e.metadata.version {
                return Ok(());
            }
            e.deleted |= stored.deleted;
        }
        executions.insert(key, e);
        Ok(())
    }
    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        Ok(lock(&self.executions)
            .get(&(tenant.to_string(), id.to_string()))
            .filter(|e| !e.deleted)
            .cloned())
    }
    async fn find_by_ids(&self, tenant: &str, ids: &[String]) -> RepoResult<Vec<Execution>> {
        let executions = lock(&self.executions);
        Ok(ids
            .iter()
            .filter_map(|id| executions.get(&(tenant.to_string(), id.clone())))
            .filter(|e| !e.deleted)
            .cloned()
            .collect())
    }
    async fn search(&self, q: &ExecutionQuery, page: &Pageable) -> RepoResult<Page<Execution>> {
        let items: Vec<Execution> = lock(&self.executions)
            .values()
            .filter(|e| !e.deleted && e.tenant_id == tenant_of(&q.tenant_id))
            .filter(|e| in_ns(&e.namespace, &q.namespace))
            .filter(|e| q.flow_id.as_ref().is_none_or(|f| &e.flow_id == f))
            .filter(|e| q.states.is_empty() || q.states.contains(&e.current()))
            .filter(|e| {
                let s = e.state.start_date();
                q.start_date.is_none_or(|d| s >= Some(d)) && q.end_date.is_none_or(|d| s <= Some(d))
            })
            .filter(|e| q.labels.iter().all(|l| e.labels.contains(l)))
            .filter(|e| q.parent_id.is_none() || e.parent_id == q.parent_id)
            .filter(|e| {
                q.q.as_ref().is_none_or(|t| {
                    has(&e.id, t)
                        || has(&e.namespace, t)
                        || has(&e.flow_id, t)
                        || e.labels.iter().any(|l| has(&l.value, t))
                })
            })
            .cloned()
            .collect();
        page_of(
            items,
            page,
            EXECUTION_SORT_FIELDS,
            &|a, b| b.state.start_date().cmp(&a.state.start_date()),
            &|e, field| match field {
                "id" => e.id.clone(),
                "namespace" => e.namespace.clone(),
                "flowId" => e.flow_id.clone(),
                "state.current" => e.current().to_string(),
                "state.startDate" => date_key(e.state.start_date()),
                _ => date_key(e.state.end_date()),
            },
        )
    }
    async fn delete(&self, tenant: &str, id: &str) -> RepoResult<()> {
        if let Some(e) = lock(&self.executions).get_mut(&(tenant.to_string(), id.to_string())) {
            e.deleted = true;
        }
        Ok(())
    }
    async fn purge(&self, tenant: &str, id: &str) -> RepoResult<PurgeCount> {
        let executions = u64::from(
            lock(&self.executions)
                .remove(&(tenant.to_string(), id.to_string()))
                .is_some(),
        );
        let logs = LogRepository::delete_by_execution(self, tenant, id).await?;
        let metrics = MetricRepository::delete_by_execution(self, tenant, id).await?;
        Ok(PurgeCount {
            executions,
            logs,
            metrics,
        })
    }
}

#[async_trait]
impl LogRepository for Mem {
    async fn save_batch(&self, logs: &[LogEntry]) -> RepoResult<()> {
        let mut stored = lock(&self.logs);
        for l in logs {
            if !stored.iter().any(|s| s.id == l.id) {
                stored.push(l.clone());
            }
        }
        Ok(())
    }
    async fn find_by_execution(
        &self,
        tenant: &str,
        execution_id: &str,
        min_level: Option<Level>,
        task_run_id: Option<&str>,
    ) -> RepoResult<Vec<LogEntry>> {
        let mut v: Vec<LogEntry> = lock(&self.logs)
            .iter()
            .filter(|l| l.tenant_id == tenant && l.execution_id.as_deref() == Some(execution_id))
            .filter(|l| min_level.is_none_or(|m| l.level >= m))
            .filter(|l| task_run_id.is_none() || l.task_run_id.as_deref() == task_run_id)
            .cloned()
            .collect();
        v.sort_by_key(|l| l.timestamp);
        Ok(v)
    }
    async fn search(&self, q: &LogQuery, page: &Pageable) -> RepoResult<Page<LogEntry>> {
        let items: Vec<LogEntry> = lock(&self.logs)
            .iter()
            .filter(|l| l.tenant_id == tenant_of(&q.tenant_id))
            .filter(|l| in_ns(&l.namespace, &q.namespace))
            .filter(|l| q.flow_id.as_ref().is_none_or(|f| &l.flow_id == f))
            .filter(|l| q.execution_id.is_none() || l.execution_id == q.execution_id)
            .filter(|l| q.task_run_id.is_none() || l.task_run_id == q.task_run_id)
            .filter(|l| q.min_level.is_none_or(|m| l.level >= m))
            .filter(|l| q.start_date.is_none_or(|d| l.timestamp >= d))
            .filter(|l| q.end_date.is_none_or(|d| l.timestamp <= d))
            .filter(|l| q.q.as_ref().is_none_or(|t| has(&l.message, t)))
            .cloned()
            .collect();
        page_of(
            items,
            page,
            LOG_SORT_FIELDS,
            &|a, b| b.timestamp.cmp(&a.timestamp),
            &|l, field| match field {
                "level" => l.level.to_string(),
                "namespace" => l.namespace.clone(),
                "flowId" => l.flow_id.clone(),
                _ => date_key(Some(l.timestamp)),
            },
        )
    }
    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64> {
        let mut logs = lock(&self.logs);
        let before = logs.len();
        logs.retain(|l| {
            !(l.tenant_id == tenant && l.execution_id.as_deref() == Some(execution_id))
        });
        Ok((before - logs.len()) as u64)
    }
}

#[async_trait]
impl MetricRepository for Mem {
    async fn save_batch(&self, metrics: &[MetricEntry]) -> RepoResult<()> {
        let mut stored = lock(&self.metrics);
        for m in metrics {
            if !stored.iter().any(|s| s.id == m.id) {
                stored.push(m.clone());
            }
        }
        Ok(())
    }
    async fn find_by_execution(&self, tenant: &str, id: &str) -> RepoResult<Vec<MetricEntry>> {
        Ok(lock(&self.metrics)
            .iter()
            .filter(|m| m.tenant_id == tenant && m.execution_id == id)
            .cloned()
            .collect())
    }
    async fn delete_by_execution(&self, tenant: &str, id: &str) -> RepoResult<u64> {
        let mut metrics = lock(&self.metrics);
        let before = metrics.len();
        metrics.retain(|m| !(m.tenant_id == tenant && m.execution_id == id));
        Ok((before - metrics.len()) as u64)
    }
}

#[async_trait]
impl TriggerRepository for Mem {
    async fn save(&self, trigger: &TriggerState) -> RepoResult<()> {
        lock(&self.triggers).insert(trigger.uid(), trigger.clone());
        Ok(())
    }
    async fn find(&self, uid: &str) -> RepoResult<Option<TriggerState>> {
        Ok(lock(&self.triggers).get(uid).cloned())
    }
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<TriggerState>> {
        Ok(lock(&self.triggers)
            .values()
            .filter(|t| t.tenant_id == tenant)
            .cloned()
            .collect())
    }
    async fn search(&self, q: &TriggerQuery, page: &Pageable) -> RepoResult<Page<TriggerState>> {
        let items: Vec<TriggerState> = lock(&self.triggers)
            .values()
            .filter(|t| t.tenant_id == tenant_of(&q.tenant_id))
            .filter(|t| in_ns(&t.namespace, &q.namespace))
            .filter(|t| q.flow_id.as_ref().is_none_or(|f| &t.flow_id == f))
            .filter(|t| {
                q.q.as_ref()
                    .is_none_or(|s| has(&t.flow_id, s) || has(&t.trigger_id, s))
            })
            .cloned()
            .collect();
        page_of(
            items,
            page,
            TRIGGER_SORT_FIELDS,
            &|a, b| b.updated_date.cmp(&a.updated_date),
            &|t, field| match field {
                "triggerId" => t.trigger_id.clone(),
                "flowId" => t.flow_id.clone(),
                "namespace" => t.namespace.clone(),
                "nextExecutionDate" => date_key(t.next_execution_date),
                _ => date_key(Some(t.updated_date)),
            },
        )
    }
    async fn delete(&self, uid: &str) -> RepoResult<()> {
        lock(&self.triggers).remove(uid);
        Ok(())
    }
}

#[async_trait]
impl ServiceInstanceRepository for Mem {
    async fn save(&self, instance: &ServiceInstance) -> RepoResult<()> {
        lock(&self.services).insert(instance.id.clone(), instance.clone());
        Ok(())
    }
    async fn find_by_id(&self, id: &str) -> RepoResult<Option<ServiceInstance>> {
        Ok(lock(&self.services).get(id).cloned())
    }
    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>> {
        Ok(lock(&self.services).values().cloned().collect())
    }
    async fn delete(&self, id: &str) -> RepoResult<()> {
        lock(&self.services).remove(id);
        Ok(())
    }
}

/// The six repositories in memory, for tests: they pass the repository conformance suite
/// ([`crate::testkit::repository`]), nothing is persisted, and every [`repositories`](Self::repositories)
/// of one value (and of its clones) shares the same store.
#[derive(Clone, Default)]
pub struct MemoryRepositories {
    mem: Arc<Mem>,
}

impl MemoryRepositories {
    /// An empty store.
    pub fn new() -> MemoryRepositories {
        MemoryRepositories::default()
    }

    /// The repositories over this store.
    pub fn repositories(&self) -> Repositories {
        let mem = self.mem.clone();
        Repositories {
            flows: mem.clone(),
            executions: mem.clone(),
            logs: mem.clone(),
            metrics: mem.clone(),
            triggers: mem.clone(),
            services: mem,
        }
    }
}
