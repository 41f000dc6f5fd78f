//! The repositories ([`kestra_core::repository`]) on Elasticsearch: what the webserver reads when
//! the queue is Kafka, fed by the indexer.
//!
//! How each point of the repository contract is met:
//!
//! - **Indices.** One per entity, `{prefix}flows` (latest revision of each flow),
//!   `{prefix}flow_revisions`, `{prefix}executions`, `{prefix}logs`, `{prefix}metrics`,
//!   `{prefix}triggers`, `{prefix}service_instances` (prefix `kestra_` by default), created at
//!   [`ElasticRepositories::connect`] with explicit, `strict` mappings. Each document keeps the entity
//!   as JSON in a non-indexed `doc` object (an exact round trip) beside the keyword/date fields the
//!   filters and sorts use.
//! - **Text search** (`q`) is a case-insensitive substring match: a `wildcard` query with
//!   `case_insensitive` on keyword fields. Long texts (flow source, log message) are keywords up to
//!   8191 characters; longer values are matched by a phrase query on a `text` sub-field (whole
//!   words) instead.
//! - **Namespaces** match themselves and their children (`term` or `prefix` with `ns.`); labels are
//!   stored as `[key, value]` pairs rendered as JSON keywords, so every label filter is one exact
//!   `term`.
//! - **Pagination** is `from`/`size` with `track_total_hits`: page and total come from one reader
//!   (they agree). `from + size` is bounded by Elasticsearch's result window (10 000): a deeper page
//!   is an `InvalidQuery`. Lists without a page (`find_all`, an execution's logs) are read whole in
//!   `search_after` pages. Every sort ends with the document key, so equal values keep a stable order.
//! - **Versioned executions**: an execution is indexed with external versioning
//!   (`version_type=external_gte`, version = `metadata.version`): an older version is refused by
//!   Elasticsearch itself (a conflict, taken as "nothing changes"), an equal one replaces. A soft
//!   delete re-indexes the document with `deleted: true` at version [`DELETED_VERSION`] (2^62),
//!   which no later save can reach: deleted stays deleted, without a read-modify-write race.
//! - **Idempotent logs and metrics**: the document id is the entry's id, so a redelivered entry
//!   overwrites itself.
//! - **Flow revisions**: a revision is created with `op_type=create` on its own id (tenant,
//!   namespace, id, revision), which serialises concurrent saves: a loser's conflict makes it re-read
//!   the latest revision (realtime GETs) and try again. The latest revision is then indexed into
//!   `{prefix}flows` with external versioning by revision, so out-of-order updates keep the newest.
//! - **Read-your-writes**: every write (single or `_bulk`) is sent with `refresh=true` by default
//!   ([`ElasticOptions::refresh`]): when a write returns, searches see it. This costs one refresh
//!   per request (the indexer writes in batches, so per batch); `wait_for` waits for the periodic
//!   refresh instead (up to a second per write), `false` gives up read-your-writes. An execution
//!   is read by id as searches see it (`realtime=false`), so that what a reader finds by id a
//!   search finds too, also while the indexer's write is still refreshing.
//! - **Purge and `delete_by_execution`** read the matching ids and delete them with `_bulk` (the
//!   counts are the deleted items): `_delete_by_query` lives in the `reindex` module, which minimal
//!   distributions (the integ-test-zip the tests run on) do not carry.
//!
//! The client is `reqwest` + `serde_json` rather than the `elasticsearch` crate: every call here is
//! a JSON body on a handful of endpoints, the crate exists only as pre-releases (which would pin this
//! workspace to one server major and pull a second HTTP stack), and `reqwest` is already a
//! dependency of the workspace.

mod client;
mod repos;

use std::sync::Arc;
use std::time::Duration;

use kestra_core::repository::{RepoResult, Repositories, RepositoryError};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub use client::ElasticError;
use client::{Body, Client, backend};

/// The version a soft-deleted execution is stored with: no execution reaches it, so no later
/// save overwrites the deletion.
pub const DELETED_VERSION: u64 = 1 << 62;

/// When writes become visible to searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refresh {
    /// `refresh=true`: each write request refreshes the shards it touched (read-your-writes).
    #[default]
    Immediate,
    /// `refresh=wait_for`: each write waits for the next periodic refresh (read-your-writes, slower
    /// writes, less refresh work).
    WaitFor,
    /// `refresh=false`: writes become visible within the refresh interval (no read-your-writes).
    None,
}

impl Refresh {
    fn param(self) -> &'static str {
        match self {
            Refresh::Immediate => "true",
            Refresh::WaitFor => "wait_for",
            Refresh::None => "false",
        }
    }

    /// Parse `true`/`immediate`, `wait_for`, `false`/`none`.
    pub fn parse(s: &str) -> Option<Refresh> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "immediate" => Some(Refresh::Immediate),
            "wait_for" | "wait-for" => Some(Refresh::WaitFor),
            "false" | "none" => Some(Refresh::None),
            _ => None,
        }
    }
}

/// Where and how the repositories live in Elasticsearch.
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    /// Base URL of the cluster, e.g. `http://127.0.0.1:9200`.
    pub url: String,
    /// Prefix of every index name (default `kestra_`).
    pub index_prefix: String,
    /// Primary shards of each index created (default 1).
    pub shards: u32,
    /// Replicas of each index created (default 0: right for one node; set 1+ on a cluster).
    pub replicas: u32,
    /// Refresh policy of writes (default [`Refresh::Immediate`]).
    pub refresh: Refresh,
    /// Timeout of each HTTP request (default 30 s).
    pub timeout: Duration,
}

impl ElasticOptions {
    /// Options for the cluster at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> ElasticOptions {
        ElasticOptions {
            url: url.into(),
            index_prefix: "kestra_".to_string(),
            shards: 1,
            replicas: 0,
            refresh: Refresh::Immediate,
            timeout: Duration::from_secs(30),
        }
    }

    /// With another index prefix.
    pub fn with_index_prefix(mut self, prefix: impl Into<String>) -> ElasticOptions {
        self.index_prefix = prefix.into();
        self
    }
}

/// Index names of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Indices {
    pub(crate) flows: String,
    pub(crate) flow_revisions: String,
    pub(crate) executions: String,
    pub(crate) logs: String,
    pub(crate) metrics: String,
    pub(crate) triggers: String,
    pub(crate) services: String,
}

impl Indices {
    fn new(prefix: &str) -> Indices {
        Indices {
            flows: format!("{prefix}flows"),
            flow_revisions: format!("{prefix}flow_revisions"),
            executions: format!("{prefix}executions"),
            logs: format!("{prefix}logs"),
            metrics: format!("{prefix}metrics"),
            triggers: format!("{prefix}triggers"),
            services: format!("{prefix}service_instances"),
        }
    }

    fn all(&self) -> [&str; 7] {
        [
            &self.flows,
            &self.flow_revisions,
            &self.executions,
            &self.logs,
            &self.metrics,
            &self.triggers,
            &self.services,
        ]
    }
}

/// The shared state of the repositories: client and index names.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) idx: Indices,
}

/// The six repositories on one Elasticsearch cluster (clones share the client).
#[derive(Clone, Debug)]
pub struct ElasticRepositories {
    inner: Arc<Inner>,
}

fn kw() -> Value {
    json!({"type": "keyword"})
}

/// A keyword for long texts, with a `text` sub-field for values past the keyword limit.
fn long_kw() -> Value {
    json!({"type": "keyword", "ignore_above": 8191, "fields": {"text": {"type": "text"}}})
}

fn date_nanos() -> Value {
    json!({"type": "date_nanos"})
}

fn date() -> Value {
    json!({"type": "date"})
}

fn mapping(properties: Value) -> Value {
    let mut p = properties;
    p["key"] = kw();
    p["tenantId"] = kw();
    p["doc"] = json!({"type": "object", "enabled": false});
    json!({"dynamic": "strict", "properties": p})
}

impl ElasticRepositories {
    /// Connect to the cluster and create the indices (with their mappings) that do not exist yet.
    pub async fn connect(options: ElasticOptions) -> RepoResult<ElasticRepositories> {
        let client = Client::new(&options.url, options.refresh.param(), options.timeout)
            .map_err(backend("connect to Elasticsearch"))?;
        let idx = Indices::new(&options.index_prefix);
        let repos = ElasticRepositories {
            inner: Arc::new(Inner { client, idx }),
        };
        repos.create_indices(&options).await?;
        tracing::info!(
            url = %options.url,
            prefix = %options.index_prefix,
            "Elasticsearch repositories ready"
        );
        Ok(repos)
    }

    /// The repositories as trait objects.
    pub fn repositories(&self) -> Repositories {
        let r = Arc::new(repos::Repos {
            inner: self.inner.clone(),
        });
        Repositories {
            flows: r.clone(),
            executions: r.clone(),
            logs: r.clone(),
            metrics: r.clone(),
            triggers: r.clone(),
            services: r,
        }
    }

    /// Delete every index of this prefix (tests clean up with it).
    pub async fn delete_indices(&self) -> RepoResult<()> {
        let c = &self.inner.client;
        for index in self.inner.idx.all() {
            let r = c
                .send(Method::DELETE, &[index], &[], None)
                .await
                .map_err(backend("delete an index"))?;
            if !r.status.is_success() && r.status != StatusCode::NOT_FOUND {
                return Err(RepositoryError::backend(
                    "delete an index",
                    ElasticError::Status {
                        method: Method::DELETE,
                        path: index.to_string(),
                        status: r.status,
                        body: r.body.to_string(),
                    },
                ));
            }
        }
        Ok(())
    }

    async fn create_indices(&self, options: &ElasticOptions) -> RepoResult<()> {
        let idx = &self.inner.idx;
        let labels = kw();
        let mappings: [(&str, Value); 7] = [
            (
                &idx.flows,
                mapping(json!({
                    "namespace": kw(), "id": kw(), "revision": {"type": "integer"},
                    "description": kw(), "source": long_kw(), "labels": labels,
                    "deleted": {"type": "boolean"}, "updated": date(),
                })),
            ),
            (
                &idx.flow_revisions,
                mapping(json!({
                    "namespace": kw(), "id": kw(), "revision": {"type": "integer"},
                    "deleted": {"type": "boolean"}, "updated": date(),
                })),
            ),
            (
                &idx.executions,
                mapping(json!({
                    "id": kw(), "namespace": kw(), "flowId": kw(), "stateCurrent": kw(),
                    "startDate": date_nanos(), "endDate": date_nanos(), "labels": kw(),
                    "labelValues": kw(), "parentId": kw(), "deleted": {"type": "boolean"},
                })),
            ),
            (
                &idx.logs,
                mapping(json!({
                    "namespace": kw(), "flowId": kw(), "executionId": kw(), "taskRunId": kw(),
                    "level": {"type": "byte"}, "timestamp": date_nanos(), "message": long_kw(),
                })),
            ),
            (
                &idx.metrics,
                mapping(json!({
                    "namespace": kw(), "flowId": kw(), "executionId": kw(), "timestamp": date_nanos(),
                })),
            ),
            (
                &idx.triggers,
                mapping(json!({
                    "namespace": kw(), "flowId": kw(), "triggerId": kw(),
                    "nextExecutionDate": date(), "updatedDate": date(),
                })),
            ),
            (&idx.services, mapping(json!({"updatedDate": date()}))),
        ];
        let c = &self.inner.client;
        for (index, mappings) in mappings {
            let r = c
                .send(Method::HEAD, &[index], &[], None)
                .await
                .map_err(backend("check an index"))?;
            if r.status.is_success() {
                continue;
            }
            let body = json!({
                "settings": {
                    "number_of_shards": options.shards,
                    "number_of_replicas": options.replicas,
                },
                "mappings": mappings,
            });
            let r = c
                .send(Method::PUT, &[index], &[], Some(Body::Json(body)))
                .await
                .map_err(backend("create an index"))?;
            let raced = r.status == StatusCode::BAD_REQUEST
                && r.body["error"]["type"] == "resource_already_exists_exception";
            if !r.status.is_success() && !raced {
                return Err(RepositoryError::backend(
                    "create an index",
                    ElasticError::Status {
                        method: Method::PUT,
                        path: index.to_string(),
                        status: r.status,
                        body: r.body.to_string(),
                    },
                ));
            }
            tracing::debug!(index, "created Elasticsearch index");
        }
        // New indices: wait until their primaries are allocated.
        let names = idx.all().join(",");
        c.ok(
            Method::GET,
            &["_cluster", "health", &names],
            &[("wait_for_status", "yellow"), ("timeout", "30s")],
            None,
        )
        .await
        .map_err(backend("wait for the indices"))?;
        Ok(())
    }
}
