//! [`unavailable_repositories`]: repositories that fail every call, as a repository whose server is
//! down would (Elasticsearch stopped, a database unreachable). Not a database mock: nothing answers,
//! so a component that still works with them provably does not read or write the repository.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::model::{Execution, Level, LogEntry, MetricEntry, ServiceInstance, TriggerState};
use crate::repository::{
    ExecutionQuery, ExecutionRepository, FlowQuery, FlowRecord, FlowRepository, LogQuery,
    LogRepository, MetricRepository, Page, Pageable, PurgeCount, RepoResult, Repositories,
    RepositoryError, SaveOutcome, ServiceInstanceRepository, TriggerQuery, TriggerRepository,
};

/// Every call fails with [`RepositoryError::Backend`]; counts the calls it refused.
#[derive(Debug, Default)]
pub struct Unavailable {
    calls: AtomicU64,
}

impl Unavailable {
    /// How many calls were refused so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail<T>(&self, operation: &'static str) -> RepoResult<T> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(RepositoryError::backend(
            operation,
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the repository is unavailable",
            ),
        ))
    }
}

/// Repositories that all fail every call, and the counter of refused calls they share.
pub fn unavailable_repositories() -> (Repositories, Arc<Unavailable>) {
    let down = Arc::new(Unavailable::default());
    let repos = Repositories {
        flows: down.clone(),
        executions: down.clone(),
        logs: down.clone(),
        metrics: down.clone(),
        triggers: down.clone(),
        services: down.clone(),
    };
    (repos, down)
}

#[async_trait]
impl FlowRepository for Unavailable {
    async fn save(&self, _: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)> {
        self.fail("save flow")
    }
    async fn find(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>> {
        self.fail("find flow")
    }
    async fn revisions(&self, _: &str, _: &str, _: &str) -> RepoResult<Vec<FlowRecord>> {
        self.fail("flow revisions")
    }
    async fn delete(&self, _: &str, _: &str, _: &str) -> RepoResult<FlowRecord> {
        self.fail("delete flow")
    }
    async fn search(&self, _: &FlowQuery, _: &Pageable) -> RepoResult<Page<FlowRecord>> {
        self.fail("search flows")
    }
    async fn find_all(&self, _: &str) -> RepoResult<Vec<FlowRecord>> {
        self.fail("list flows")
    }
    async fn distinct_namespaces(&self, _: &str) -> RepoResult<Vec<String>> {
        self.fail("list namespaces")
    }
    async fn put_revision(&self, _: &FlowRecord) -> RepoResult<()> {
        self.fail("put flow revision")
    }
}

#[async_trait]
impl ExecutionRepository for Unavailable {
    async fn save(&self, _: &Execution) -> RepoResult<()> {
        self.fail("save execution")
    }
    async fn find_by_id(&self, _: &str, _: &str) -> RepoResult<Option<Execution>> {
        self.fail("find execution")
    }
    async fn find_by_ids(&self, _: &str, _: &[String]) -> RepoResult<Vec<Execution>> {
        self.fail("find executions")
    }
    async fn search(&self, _: &ExecutionQuery, _: &Pageable) -> RepoResult<Page<Execution>> {
        self.fail("search executions")
    }
    async fn delete(&self, _: &str, _: &str) -> RepoResult<()> {
        self.fail("delete execution")
    }
    async fn purge(&self, _: &str, _: &str) -> RepoResult<PurgeCount> {
        self.fail("purge execution")
    }
}

#[async_trait]
impl LogRepository for Unavailable {
    async fn save_batch(&self, _: &[LogEntry]) -> RepoResult<()> {
        self.fail("save logs")
    }
    async fn find_by_execution(
        &self,
        _: &str,
        _: &str,
        _: Option<Level>,
        _: Option<&str>,
    ) -> RepoResult<Vec<LogEntry>> {
        self.fail("find logs")
    }
    async fn search(&self, _: &LogQuery, _: &Pageable) -> RepoResult<Page<LogEntry>> {
        self.fail("search logs")
    }
    async fn delete_by_execution(&self, _: &str, _: &str) -> RepoResult<u64> {
        self.fail("delete logs")
    }
}

#[async_trait]
impl MetricRepository for Unavailable {
    async fn save_batch(&self, _: &[MetricEntry]) -> RepoResult<()> {
        self.fail("save metrics")
    }
    async fn find_by_execution(&self, _: &str, _: &str) -> RepoResult<Vec<MetricEntry>> {
        self.fail("find metrics")
    }
    async fn delete_by_execution(&self, _: &str, _: &str) -> RepoResult<u64> {
        self.fail("delete metrics")
    }
}

#[async_trait]
impl TriggerRepository for Unavailable {
    async fn save(&self, _: &TriggerState) -> RepoResult<()> {
        self.fail("save trigger")
    }
    async fn find(&self, _: &str) -> RepoResult<Option<TriggerState>> {
        self.fail("find trigger")
    }
    async fn find_all(&self, _: &str) -> RepoResult<Vec<TriggerState>> {
        self.fail("list triggers")
    }
    async fn search(&self, _: &TriggerQuery, _: &Pageable) -> RepoResult<Page<TriggerState>> {
        self.fail("search triggers")
    }
    async fn delete(&self, _: &str) -> RepoResult<()> {
        self.fail("delete trigger")
    }
}

#[async_trait]
impl ServiceInstanceRepository for Unavailable {
    async fn save(&self, _: &ServiceInstance) -> RepoResult<()> {
        self.fail("save service instance")
    }
    async fn find_by_id(&self, _: &str) -> RepoResult<Option<ServiceInstance>> {
        self.fail("find service instance")
    }
    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>> {
        self.fail("list service instances")
    }
    async fn delete(&self, _: &str) -> RepoResult<()> {
        self.fail("delete service instance")
    }
}
