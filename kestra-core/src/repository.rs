//! The Repository seam: what the webserver and UI read (and the JDBC executor and the indexer write).
//!
//! One trait per entity: [`FlowRepository`], [`ExecutionRepository`], [`LogRepository`],
//! [`MetricRepository`], [`TriggerRepository`], [`ServiceInstanceRepository`], gathered in
//! [`Repositories`]. Every entity carries a tenant id (`main` by default).
//!
//! # Contract (checked by the conformance suite in `testkit`)
//!
//! - Searches filter with AND between criteria; text search (`q`) is a case-insensitive substring match
//!   on the fields each query documents. Namespace filters match the namespace and its children
//!   (`company` matches `company.team`).
//! - Pagination is 1-based (`page`, `size`); `total` counts all matches regardless of the page.
//! - Sorting accepts only the fields each repository allow-lists ([`EXECUTION_SORT_FIELDS`]
//!   etc.); any other field is [`RepositoryError::InvalidSort`]. Without a sort, results are newest
//!   first. Every query is parameterised; sort fields are matched against the allow-list before any SQL
//!   is built.
//! - Soft-deleted executions and flows are invisible to searches and lookups; flow revisions stay.
//! - Purging an execution removes it with its logs and metrics.
//!
//! # How the backends meet it
//!
//! JDBC stores each entity in a table with the JSON document plus indexed columns for the filters; on
//! Kafka the repositories live in Elasticsearch, fed by the indexer, and may lag the queue briefly.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    Execution, Label, Level, LogEntry, MetricEntry, ServiceInstance, StateType, TriggerState,
};

/// Sort fields allowed by [`FlowRepository::search`].
pub const FLOW_SORT_FIELDS: &[&str] = &["id", "namespace", "updated"];

/// Sort fields allowed by [`ExecutionRepository::search`].
pub const EXECUTION_SORT_FIELDS: &[&str] = &[
    "id",
    "namespace",
    "flowId",
    "state.current",
    "state.startDate",
    "state.endDate",
];

/// Sort fields allowed by [`LogRepository::search`].
pub const LOG_SORT_FIELDS: &[&str] = &["timestamp", "level", "namespace", "flowId"];

/// Sort fields allowed by [`TriggerRepository::search`].
pub const TRIGGER_SORT_FIELDS: &[&str] = &[
    "triggerId",
    "flowId",
    "namespace",
    "nextExecutionDate",
    "updatedDate",
];

/// Errors of the repository seam.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The entity does not exist.
    #[error("{entity} '{id}' not found")]
    NotFound {
        /// Entity kind (`flow`, `execution`, ...).
        entity: &'static str,
        /// Its id.
        id: String,
    },
    /// The sort field is not allowed.
    #[error("cannot sort on '{field}': allowed fields are {}", allowed.join(", "))]
    InvalidSort {
        /// Requested field.
        field: String,
        /// Allowed fields.
        allowed: &'static [&'static str],
    },
    /// A query parameter is invalid (page 0, size 0, bad date range, ...).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A stored document could not be read back.
    #[error("corrupt {entity} '{id}' in the repository: {source}")]
    Corrupt {
        /// Entity kind.
        entity: &'static str,
        /// Its id.
        id: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed.
    #[error("repository backend error during {operation}: {source}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RepositoryError {
    /// Wrap a backend error.
    pub fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> RepositoryError {
        RepositoryError::Backend {
            operation,
            source: Box::new(source),
        }
    }
}

/// Result alias for repositories.
pub type RepoResult<T> = Result<T, RepositoryError>;

/// A sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sort {
    /// Field name, e.g. `state.startDate` (must be allow-listed).
    pub field: String,
    /// Descending order.
    pub descending: bool,
}

impl Sort {
    /// Parse Kestra's `field:asc` / `field:desc` (default ascending).
    pub fn parse(s: &str) -> Sort {
        match s.rsplit_once(':') {
            Some((field, dir)) => Sort {
                field: field.to_string(),
                descending: dir.eq_ignore_ascii_case("desc"),
            },
            None => Sort {
                field: s.to_string(),
                descending: false,
            },
        }
    }

    /// Check the field against an allow-list.
    pub fn check(&self, allowed: &'static [&'static str]) -> RepoResult<()> {
        if allowed.contains(&self.field.as_str()) {
            Ok(())
        } else {
            Err(RepositoryError::InvalidSort {
                field: self.field.clone(),
                allowed,
            })
        }
    }
}

/// Page request (1-based page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pageable {
    /// Page number, from 1.
    pub page: u32,
    /// Page size, from 1.
    pub size: u32,
    /// Sort keys (empty: newest first).
    pub sort: Vec<Sort>,
}

impl Default for Pageable {
    fn default() -> Self {
        Pageable {
            page: 1,
            size: 25,
            sort: Vec::new(),
        }
    }
}

impl Pageable {
    /// Page `page` of size `size`, unsorted.
    pub fn new(page: u32, size: u32) -> Pageable {
        Pageable {
            page,
            size,
            sort: Vec::new(),
        }
    }

    /// With a sort key.
    pub fn sorted(mut self, field: &str, descending: bool) -> Pageable {
        self.sort.push(Sort {
            field: field.to_string(),
            descending,
        });
        self
    }

    /// Validate page and size and the sort fields; returns (offset, limit).
    pub fn check(&self, allowed: &'static [&'static str]) -> RepoResult<(u64, u64)> {
        if self.page == 0 || self.size == 0 {
            return Err(RepositoryError::InvalidQuery(format!(
                "page and size start at 1 (got page={}, size={})",
                self.page, self.size
            )));
        }
        for s in &self.sort {
            s.check(allowed)?;
        }
        Ok((
            u64::from(self.page - 1) * u64::from(self.size),
            u64::from(self.size),
        ))
    }
}

/// A page of results: `{"results": [...], "total": N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The page's items.
    pub results: Vec<T>,
    /// Number of matches in total.
    pub total: u64,
}

/// A stored flow revision with its YAML source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// Tenant.
    pub tenant_id: String,
    /// Namespace.
    pub namespace: String,
    /// Flow id.
    pub id: String,
    /// Revision, from 1.
    pub revision: i32,
    /// The parsed flow as JSON (the `flow` module's `Flow` serialised).
    pub flow: serde_json::Value,
    /// The YAML source as the user wrote it.
    pub source: String,
    /// Flow labels (for search).
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Disabled flag of the flow.
    #[serde(default)]
    pub disabled: bool,
    /// Soft-deleted (this revision records the deletion).
    #[serde(default)]
    pub deleted: bool,
    /// When this revision was saved.
    pub updated: DateTime<Utc>,
}

/// Flow search criteria.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Tenant (default `main`).
    pub tenant_id: Option<String>,
    /// Text: matches id, namespace, description and source.
    pub q: Option<String>,
    /// Namespace (and children).
    pub namespace: Option<String>,
    /// All these labels.
    pub labels: Vec<Label>,
}

/// What saving a flow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// A new revision was stored.
    Created,
    /// A new revision of an existing flow was stored.
    Updated,
    /// The source is identical to the last revision: nothing stored.
    Unchanged,
}

/// Flows with revisions and source.
#[async_trait]
pub trait FlowRepository: Send + Sync {
    /// Store a new revision if the source differs from the latest one (revision = latest + 1, also after
    /// a deletion). The record's `revision` and `updated` are set by the repository; returns the stored
    /// (or unchanged latest) record.
    async fn save(&self, record: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)>;
    /// The latest revision (or the given one) of a non-deleted flow.
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>>;
    /// Every revision of a flow, oldest first (deletions included).
    async fn revisions(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
    ) -> RepoResult<Vec<FlowRecord>>;
    /// Soft-delete a flow (a deletion revision is recorded; history stays). Errors if absent.
    async fn delete(&self, tenant: &str, namespace: &str, id: &str) -> RepoResult<FlowRecord>;
    /// Search the latest revisions of non-deleted flows.
    async fn search(&self, query: &FlowQuery, page: &Pageable) -> RepoResult<Page<FlowRecord>>;
    /// Latest revision of every non-deleted flow of a tenant (for caches).
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>>;
    /// Distinct namespaces of non-deleted flows, sorted.
    async fn distinct_namespaces(&self, tenant: &str) -> RepoResult<Vec<String>>;
    /// Store a revision exactly as published on the flow topic (revision, deletion flag and date
    /// kept): the indexer's write where flows travel through the queue
    /// ([`QueueCapabilities::repository_in_unit`](crate::queue::QueueCapabilities) false).
    /// Idempotent: a revision already stored is left as it is. The default refuses (a repository
    /// that only ever serves a queue writing it in its units, e.g. JDBC with its own queue).
    async fn put_revision(&self, record: &FlowRecord) -> RepoResult<()> {
        Err(RepositoryError::backend(
            "put flow revision",
            std::io::Error::other(format!(
                "this flow repository cannot store the published revision {} of {}.{}",
                record.revision, record.namespace, record.id
            )),
        ))
    }
}

/// Execution search criteria.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionQuery {
    /// Tenant (default `main`).
    pub tenant_id: Option<String>,
    /// Text: matches id, namespace, flow id and label values.
    pub q: Option<String>,
    /// Namespace (and children).
    pub namespace: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// Any of these states.
    pub states: Vec<StateType>,
    /// Started at or after.
    pub start_date: Option<DateTime<Utc>>,
    /// Started at or before.
    pub end_date: Option<DateTime<Utc>>,
    /// All these labels.
    pub labels: Vec<Label>,
    /// Children of this execution.
    pub parent_id: Option<String>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeCount {
    /// Executions removed.
    pub executions: u64,
    /// Log lines removed.
    pub logs: u64,
    /// Metrics removed.
    pub metrics: u64,
}

/// Executions.
#[async_trait]
pub trait ExecutionRepository: Send + Sync {
    /// Insert or replace an execution (the indexer, from
    /// [`ExecutionChange`](crate::messages::ExecutionChange) messages; the JDBC executor writes
    /// through its unit of work instead). Versioned: when the stored execution has a newer
    /// `metadata.version`, nothing changes (an older document never overwrites a newer one); an
    /// equal version replaces it, so a redelivery is harmless. A soft-deleted execution stays
    /// deleted.
    async fn save(&self, execution: &Execution) -> RepoResult<()>;
    /// [`save`](Self::save) several executions, with the same versioned semantics for each (the
    /// indexer's batches). The default saves them one by one; a backend with a bulk write
    /// (Elasticsearch's `_bulk`) does it in one request. Several versions of one execution may be
    /// in `executions`: the newest stays, whatever their order.
    async fn save_batch(&self, executions: &[Execution]) -> RepoResult<()> {
        for execution in executions {
            self.save(execution).await?;
        }
        Ok(())
    }
    /// An execution by id (not soft-deleted).
    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>>;
    /// The executions of `ids` that exist and are not soft-deleted, in any order (an unknown id is
    /// left out), as [`find_by_id`](Self::find_by_id) sees each. [`Engine::wait_for`] polls every
    /// pending execution of an engine with one call, so a backend answers it with one request (or
    /// a few for thousands of ids); the default asks `find_by_id` for each id.
    ///
    /// [`Engine::wait_for`]: crate::runtime::Engine::wait_for
    async fn find_by_ids(&self, tenant: &str, ids: &[String]) -> RepoResult<Vec<Execution>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.find_by_id(tenant, id).await? {
                found.push(e);
            }
        }
        Ok(found)
    }
    /// Search.
    async fn search(&self, query: &ExecutionQuery, page: &Pageable) -> RepoResult<Page<Execution>>;
    /// Soft-delete an execution (it disappears from search and lookups).
    async fn delete(&self, tenant: &str, id: &str) -> RepoResult<()>;
    /// Remove an execution with its logs and metrics for good.
    async fn purge(&self, tenant: &str, id: &str) -> RepoResult<PurgeCount>;
}

/// Log search criteria.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Tenant (default `main`).
    pub tenant_id: Option<String>,
    /// Text: matches the message.
    pub q: Option<String>,
    /// Namespace (and children).
    pub namespace: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// Execution id.
    pub execution_id: Option<String>,
    /// Task run id.
    pub task_run_id: Option<String>,
    /// This level and more severe.
    pub min_level: Option<Level>,
    /// From (inclusive).
    pub start_date: Option<DateTime<Utc>>,
    /// To (inclusive).
    pub end_date: Option<DateTime<Utc>>,
}

/// Log lines.
#[async_trait]
pub trait LogRepository: Send + Sync {
    /// Store log lines.
    async fn save_batch(&self, logs: &[LogEntry]) -> RepoResult<()>;
    /// An execution's logs in emission order, optionally for one task run and from a minimum level.
    async fn find_by_execution(
        &self,
        tenant: &str,
        execution_id: &str,
        min_level: Option<Level>,
        task_run_id: Option<&str>,
    ) -> RepoResult<Vec<LogEntry>>;
    /// Search (default order: newest first).
    async fn search(&self, query: &LogQuery, page: &Pageable) -> RepoResult<Page<LogEntry>>;
    /// Delete an execution's logs; returns how many.
    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64>;
}

/// Metrics.
#[async_trait]
pub trait MetricRepository: Send + Sync {
    /// Store metrics.
    async fn save_batch(&self, metrics: &[MetricEntry]) -> RepoResult<()>;
    /// An execution's metrics in emission order.
    async fn find_by_execution(
        &self,
        tenant: &str,
        execution_id: &str,
    ) -> RepoResult<Vec<MetricEntry>>;
    /// Delete an execution's metrics; returns how many.
    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64>;
}

/// Trigger search criteria.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerQuery {
    /// Tenant (default `main`).
    pub tenant_id: Option<String>,
    /// Text: matches flow id and trigger id.
    pub q: Option<String>,
    /// Namespace (and children).
    pub namespace: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
}

/// Trigger state as the API and UI read it. The schedulers never read or write it: they keep trigger
/// state behind the queue backend ([`Queue::begin_triggers`](crate::queue::Queue::begin_triggers));
/// JDBC reads the same table, Kafka an index the indexer feeds from the trigger state topic.
#[async_trait]
pub trait TriggerRepository: Send + Sync {
    /// Insert or replace a trigger state (keyed by its uid): the indexer's write, and tests'.
    async fn save(&self, trigger: &TriggerState) -> RepoResult<()>;
    /// A trigger state by uid.
    async fn find(&self, uid: &str) -> RepoResult<Option<TriggerState>>;
    /// Every trigger state of a tenant.
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<TriggerState>>;
    /// Search.
    async fn search(&self, query: &TriggerQuery, page: &Pageable)
    -> RepoResult<Page<TriggerState>>;
    /// Delete a trigger state (the indexer's write, and tests').
    async fn delete(&self, uid: &str) -> RepoResult<()>;
}

/// Service instances (heartbeats).
#[async_trait]
pub trait ServiceInstanceRepository: Send + Sync {
    /// Insert or replace an instance.
    async fn save(&self, instance: &ServiceInstance) -> RepoResult<()>;
    /// An instance by id.
    async fn find_by_id(&self, id: &str) -> RepoResult<Option<ServiceInstance>>;
    /// Every instance.
    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>>;
    /// Delete an instance.
    async fn delete(&self, id: &str) -> RepoResult<()>;
}

/// All repositories of a backend, as trait objects.
#[derive(Clone)]
pub struct Repositories {
    /// Flows.
    pub flows: std::sync::Arc<dyn FlowRepository>,
    /// Executions.
    pub executions: std::sync::Arc<dyn ExecutionRepository>,
    /// Logs.
    pub logs: std::sync::Arc<dyn LogRepository>,
    /// Metrics.
    pub metrics: std::sync::Arc<dyn MetricRepository>,
    /// Triggers.
    pub triggers: std::sync::Arc<dyn TriggerRepository>,
    /// Service instances.
    pub services: std::sync::Arc<dyn ServiceInstanceRepository>,
}
