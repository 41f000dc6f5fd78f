//! The repository traits on the indices of [`super::Inner`].

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use kestra_core::model::{
    Execution, Label, Level, LogEntry, MetricEntry, ServiceInstance, TriggerState,
};
use kestra_core::repository::{
    EXECUTION_SORT_FIELDS, ExecutionQuery, ExecutionRepository, FLOW_SORT_FIELDS, FlowQuery,
    FlowRecord, FlowRepository, LOG_SORT_FIELDS, LogQuery, LogRepository, MetricRepository, Page,
    Pageable, PurgeCount, RepoResult, RepositoryError, SaveOutcome, ServiceInstanceRepository,
    TRIGGER_SORT_FIELDS, TriggerQuery, TriggerRepository,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::client::{
    Body, ElasticError, MAX_RESULT_WINDOW, backend, date, doc_id, hits, namespace_query,
    text_query, total,
};
use super::{DELETED_VERSION, Inner};

/// Attempts of a flow save that keeps losing the race for its revision.
const FLOW_SAVE_ATTEMPTS: usize = 64;

/// The repositories (one value implements every trait).
pub(crate) struct Repos {
    pub(crate) inner: Arc<Inner>,
}

/// A document key from its parts (a JSON array: unambiguous whatever the parts hold).
fn key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

fn tenant_of(t: &Option<String>) -> &str {
    t.as_deref().unwrap_or("main")
}

fn label_kw(l: &Label) -> String {
    key(&[&l.key, &l.value])
}

fn level_rank(level: Level) -> u8 {
    Level::ALL.iter().position(|l| *l == level).unwrap_or(0) as u8
}

fn to_doc<T: Serialize>(entity: &'static str, value: &T) -> RepoResult<Value> {
    serde_json::to_value(value).map_err(|source| RepositoryError::Corrupt {
        entity,
        id: String::new(),
        source,
    })
}

fn from_doc<T: DeserializeOwned>(entity: &'static str, source: &Value) -> RepoResult<T> {
    serde_json::from_value(source["doc"].clone()).map_err(|e| RepositoryError::Corrupt {
        entity,
        id: source["key"].as_str().unwrap_or("?").to_string(),
        source: e,
    })
}

fn from_docs<T: DeserializeOwned>(entity: &'static str, sources: &[Value]) -> RepoResult<Vec<T>> {
    sources.iter().map(|s| from_doc(entity, s)).collect()
}

fn filter(clauses: Vec<Value>) -> Value {
    json!({"bool": {"filter": clauses}})
}

/// The search body of one page: validated page and sort (allow-listed, then mapped to index
/// fields), the default sort when none is given, the document key last.
fn page_body(
    query: Value,
    page: &Pageable,
    allowed: &'static [&'static str],
    field: fn(&str) -> &'static str,
    default: (&'static str, bool),
) -> RepoResult<Value> {
    let (from, size) = page.check(allowed)?;
    if from + size > MAX_RESULT_WINDOW {
        return Err(RepositoryError::InvalidQuery(format!(
            "page {} of size {} reaches past the {MAX_RESULT_WINDOW} results a search can page \
             through: narrow the search",
            page.page, page.size
        )));
    }
    let order = |desc: bool| if desc { "desc" } else { "asc" };
    let mut sort: Vec<Value> = if page.sort.is_empty() {
        vec![json!({default.0: {"order": order(default.1)}})]
    } else {
        page.sort
            .iter()
            .map(|s| json!({field(&s.field): {"order": order(s.descending)}}))
            .collect()
    };
    sort.push(json!({"key": "asc"}));
    Ok(json!({
        "query": query,
        "from": from,
        "size": size,
        "sort": sort,
        "track_total_hits": true,
    }))
}

impl Repos {
    fn c(&self) -> &super::client::Client {
        &self.inner.client
    }

    async fn page<T: DeserializeOwned>(
        &self,
        index: &str,
        entity: &'static str,
        body: Value,
    ) -> RepoResult<Page<T>> {
        let r = self
            .c()
            .search(index, body)
            .await
            .map_err(backend("search"))?;
        let results = hits(&r)
            .iter()
            .map(|h| from_doc(entity, &h["_source"]))
            .collect::<RepoResult<Vec<T>>>()?;
        Ok(Page {
            results,
            total: total(&r),
        })
    }

    /// PUT a document; `Ok(false)` on a version conflict (409).
    async fn put(
        &self,
        operation: &'static str,
        index: &str,
        id: &str,
        doc: Value,
        params: &[(&str, &str)],
    ) -> RepoResult<bool> {
        let id = &*doc_id(id);
        let mut query = vec![("refresh", self.c().refresh)];
        query.extend_from_slice(params);
        let r = self
            .c()
            .send(
                Method::PUT,
                &[index, "_doc", id],
                &query,
                Some(Body::Json(doc)),
            )
            .await
            .map_err(backend(operation))?;
        if r.status == StatusCode::CONFLICT {
            return Ok(false);
        }
        if !r.status.is_success() {
            return Err(RepositoryError::backend(
                operation,
                ElasticError::Status {
                    method: Method::PUT,
                    path: format!("{index}/_doc/{id}"),
                    status: r.status,
                    body: r.body.to_string(),
                },
            ));
        }
        Ok(true)
    }

    /// DELETE a document; whether it existed.
    async fn delete_doc(&self, operation: &'static str, index: &str, id: &str) -> RepoResult<bool> {
        let id = &*doc_id(id);
        let r = self
            .c()
            .send(
                Method::DELETE,
                &[index, "_doc", id],
                &[("refresh", self.c().refresh)],
                None,
            )
            .await
            .map_err(backend(operation))?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !r.status.is_success() {
            return Err(RepositoryError::backend(
                operation,
                ElasticError::Status {
                    method: Method::DELETE,
                    path: format!("{index}/_doc/{id}"),
                    status: r.status,
                    body: r.body.to_string(),
                },
            ));
        }
        Ok(true)
    }

    /// Delete every document of `index` matching `query` (ids read, then a `_bulk` delete); the
    /// number deleted.
    async fn delete_matching(
        &self,
        operation: &'static str,
        index: &str,
        query: Value,
    ) -> RepoResult<u64> {
        let docs = self
            .c()
            .search_all(index, query, json!([{"key": "asc"}]))
            .await
            .map_err(backend(operation))?;
        let mut lines = String::new();
        for d in &docs {
            let id = doc_id(d["key"].as_str().unwrap_or_default());
            lines.push_str(&json!({"delete": {"_id": id}}).to_string());
            lines.push('\n');
        }
        let results = self
            .c()
            .bulk(index, lines, false)
            .await
            .map_err(backend(operation))?;
        Ok(results.iter().filter(|r| *r == "deleted").count() as u64)
    }

    // ------------------------------------------------------------------------------------ flows

    fn flow_key(tenant: &str, ns: &str, id: &str) -> String {
        key(&[tenant, ns, id])
    }

    fn revision_key(tenant: &str, ns: &str, id: &str, revision: i32) -> String {
        key(&[tenant, ns, id, &revision.to_string()])
    }

    /// The latest revision of a flow (deleted or not), read with realtime GETs: the `flows` document,
    /// then the revisions after it (written by a concurrent save, or by a save that stopped before
    /// updating `flows`).
    async fn latest_flow(
        &self,
        tenant: &str,
        ns: &str,
        id: &str,
    ) -> RepoResult<Option<FlowRecord>> {
        let idx = &self.inner.idx;
        let mut latest: Option<FlowRecord> = match self
            .c()
            .get(&idx.flows, &Self::flow_key(tenant, ns, id))
            .await
            .map_err(backend("read a flow"))?
        {
            Some(s) => Some(from_doc("flow", &s)?),
            None => None,
        };
        loop {
            let next = latest.as_ref().map_or(1, |l| l.revision + 1);
            match self
                .c()
                .get(
                    &idx.flow_revisions,
                    &Self::revision_key(tenant, ns, id, next),
                )
                .await
                .map_err(backend("read a flow revision"))?
            {
                Some(s) => latest = Some(from_doc("flow", &s)?),
                None => return Ok(latest),
            }
        }
    }

    fn flow_doc(r: &FlowRecord) -> RepoResult<Value> {
        Ok(json!({
            "key": Self::flow_key(&r.tenant_id, &r.namespace, &r.id),
            "tenantId": r.tenant_id,
            "namespace": r.namespace,
            "id": r.id,
            "revision": r.revision,
            "description": r.flow.get("description").and_then(Value::as_str).unwrap_or(""),
            "source": r.source,
            "labels": r.labels.iter().map(label_kw).collect::<Vec<_>>(),
            "deleted": r.deleted,
            "updated": date(r.updated),
            "doc": to_doc("flow", r)?,
        }))
    }

    /// Store `record` as the next revision after `latest` (`false`: another save took it first),
    /// then make it the latest.
    async fn store_revision(&self, record: &FlowRecord) -> RepoResult<bool> {
        let idx = &self.inner.idx;
        let rkey = Self::revision_key(
            &record.tenant_id,
            &record.namespace,
            &record.id,
            record.revision,
        );
        let doc = json!({
            "key": rkey,
            "tenantId": record.tenant_id,
            "namespace": record.namespace,
            "id": record.id,
            "revision": record.revision,
            "deleted": record.deleted,
            "updated": date(record.updated),
            "doc": to_doc("flow", record)?,
        });
        if !self
            .put(
                "store a flow revision",
                &idx.flow_revisions,
                &rkey,
                doc,
                &[("op_type", "create")],
            )
            .await?
        {
            return Ok(false);
        }
        let version = record.revision.max(0).to_string();
        // A conflict here means a newer revision is already the latest: nothing to do.
        self.put(
            "store the latest flow revision",
            &idx.flows,
            &Self::flow_key(&record.tenant_id, &record.namespace, &record.id),
            Self::flow_doc(record)?,
            &[("version", &version), ("version_type", "external_gte")],
        )
        .await?;
        Ok(true)
    }

    fn flow_filter(&self, tenant: &str) -> Vec<Value> {
        vec![
            json!({"term": {"tenantId": tenant}}),
            json!({"term": {"deleted": false}}),
        ]
    }

    async fn live_flows(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>> {
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.flows,
                filter(self.flow_filter(tenant)),
                json!([{"namespace": "asc"}, {"id": "asc"}, {"key": "asc"}]),
            )
            .await
            .map_err(backend("list flows"))?;
        from_docs("flow", &docs)
    }
}

#[async_trait]
impl FlowRepository for Repos {
    async fn save(&self, mut record: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)> {
        for _ in 0..FLOW_SAVE_ATTEMPTS {
            let latest = self
                .latest_flow(&record.tenant_id, &record.namespace, &record.id)
                .await?;
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
            if self.store_revision(&record).await? {
                tracing::debug!(
                    namespace = %record.namespace, id = %record.id, revision = record.revision,
                    "flow revision stored"
                );
                return Ok((record, outcome));
            }
        }
        Err(RepositoryError::InvalidQuery(format!(
            "flow {}.{}: {FLOW_SAVE_ATTEMPTS} concurrent saves kept taking its next revision; try again",
            record.namespace, record.id
        )))
    }

    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>> {
        let Some(latest) = self
            .latest_flow(tenant, namespace, id)
            .await?
            .filter(|l| !l.deleted)
        else {
            return Ok(None);
        };
        match revision {
            None => Ok(Some(latest)),
            Some(r) if r == latest.revision => Ok(Some(latest)),
            Some(r) => match self
                .c()
                .get(
                    &self.inner.idx.flow_revisions,
                    &Self::revision_key(tenant, namespace, id, r),
                )
                .await
                .map_err(backend("read a flow revision"))?
            {
                Some(s) => Ok(Some(from_doc("flow", &s)?)),
                None => Ok(None),
            },
        }
    }

    async fn revisions(&self, tenant: &str, ns: &str, id: &str) -> RepoResult<Vec<FlowRecord>> {
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.flow_revisions,
                filter(vec![
                    json!({"term": {"tenantId": tenant}}),
                    json!({"term": {"namespace": ns}}),
                    json!({"term": {"id": id}}),
                ]),
                json!([{"revision": "asc"}, {"key": "asc"}]),
            )
            .await
            .map_err(backend("list flow revisions"))?;
        from_docs("flow", &docs)
    }

    /// The revision document is created once (`op_type=create`: a redelivery finds it and leaves it),
    /// then the latest-flow document is written with the revision as its external version
    /// (`external_gte`: an equal revision rewrites it, an older one replayed late is refused), also
    /// when the revision existed already (a replay after a put that stopped between the two writes).
    async fn put_revision(&self, record: &FlowRecord) -> RepoResult<()> {
        if !self.store_revision(record).await? {
            let version = record.revision.max(0).to_string();
            self.put(
                "store the latest flow revision",
                &self.inner.idx.flows,
                &Self::flow_key(&record.tenant_id, &record.namespace, &record.id),
                Self::flow_doc(record)?,
                &[("version", &version), ("version_type", "external_gte")],
            )
            .await?;
        }
        Ok(())
    }

    async fn delete(&self, tenant: &str, ns: &str, id: &str) -> RepoResult<FlowRecord> {
        for _ in 0..FLOW_SAVE_ATTEMPTS {
            let Some(mut l) = self
                .latest_flow(tenant, ns, id)
                .await?
                .filter(|l| !l.deleted)
            else {
                return Err(RepositoryError::NotFound {
                    entity: "flow",
                    id: format!("{ns}.{id}"),
                });
            };
            l.revision += 1;
            l.deleted = true;
            l.updated = Utc::now();
            if self.store_revision(&l).await? {
                return Ok(l);
            }
        }
        Err(RepositoryError::InvalidQuery(format!(
            "flow {ns}.{id}: {FLOW_SAVE_ATTEMPTS} concurrent saves kept taking its next revision; try again"
        )))
    }

    async fn search(&self, q: &FlowQuery, page: &Pageable) -> RepoResult<Page<FlowRecord>> {
        let mut clauses = self.flow_filter(tenant_of(&q.tenant_id));
        if let Some(ns) = &q.namespace {
            clauses.push(namespace_query("namespace", ns));
        }
        for l in &q.labels {
            clauses.push(json!({"term": {"labels": label_kw(l)}}));
        }
        if let Some(t) = &q.q {
            clauses.push(text_query(
                t,
                &["id", "namespace", "description"],
                &["source"],
            ));
        }
        let body = page_body(
            filter(clauses),
            page,
            FLOW_SORT_FIELDS,
            |f| match f {
                "id" => "id",
                "namespace" => "namespace",
                _ => "updated",
            },
            ("updated", true),
        )?;
        self.page(&self.inner.idx.flows, "flow", body).await
    }

    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>> {
        self.live_flows(tenant).await
    }

    async fn distinct_namespaces(&self, tenant: &str) -> RepoResult<Vec<String>> {
        let mut v: Vec<String> = self
            .live_flows(tenant)
            .await?
            .into_iter()
            .map(|f| f.namespace)
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------- executions

/// The size at which a batch (executions, logs, metrics) is sent as one `_bulk` request and the rest
/// in others: well under Elasticsearch's `http.max_content_length` (100 MB), whatever the batch holds
/// (an execution document may be up to a queue message, 1 MiB by default; a log line up to 1 MiB),
/// so that a batch the indexer retries can never be refused for its size forever.
const BULK_BYTES: usize = 8 * 1024 * 1024;

fn execution_doc(e: &Execution) -> RepoResult<Value> {
    Ok(json!({
        "key": key(&[&e.tenant_id, &e.id]),
        "tenantId": e.tenant_id,
        "id": e.id,
        "namespace": e.namespace,
        "flowId": e.flow_id,
        "stateCurrent": e.current().to_string(),
        "startDate": e.state.start_date().map(date),
        "endDate": e.state.end_date().map(date),
        "labels": e.labels.iter().map(label_kw).collect::<Vec<_>>(),
        "labelValues": e.labels.iter().map(|l| l.value.clone()).collect::<Vec<_>>(),
        "parentId": e.parent_id,
        "deleted": e.deleted,
        "doc": to_doc("execution", e)?,
    }))
}

#[async_trait]
impl ExecutionRepository for Repos {
    async fn save(&self, e: &Execution) -> RepoResult<()> {
        let version = if e.deleted {
            DELETED_VERSION
        } else {
            e.metadata.version.min(DELETED_VERSION - 1)
        }
        .to_string();
        let stored = self
            .put(
                "save an execution",
                &self.inner.idx.executions,
                &key(&[&e.tenant_id, &e.id]),
                execution_doc(e)?,
                &[("version", &version), ("version_type", "external_gte")],
            )
            .await?;
        if !stored {
            tracing::debug!(id = %e.id, version = e.metadata.version, "older execution version ignored");
        }
        Ok(())
    }

    /// `_bulk` requests of at most about [`BULK_BYTES`] each; each document versioned as in
    /// [`save`](Self::save) (`external_gte`), so an older version in the batch or in the index
    /// loses (its conflict is expected, not an error).
    async fn save_batch(&self, executions: &[Execution]) -> RepoResult<()> {
        let mut lines = String::new();
        let mut older = 0;
        for (i, e) in executions.iter().enumerate() {
            let version = if e.deleted {
                DELETED_VERSION
            } else {
                e.metadata.version.min(DELETED_VERSION - 1)
            };
            let action = json!({"index": {
                "_id": doc_id(&key(&[&e.tenant_id, &e.id])),
                "version": version,
                "version_type": "external_gte",
            }});
            lines.push_str(&action.to_string());
            lines.push('\n');
            lines.push_str(&execution_doc(e)?.to_string());
            lines.push('\n');
            if lines.len() >= BULK_BYTES || i + 1 == executions.len() {
                let results = self
                    .c()
                    .bulk(&self.inner.idx.executions, std::mem::take(&mut lines), true)
                    .await
                    .map_err(backend("save executions"))?;
                older += results.iter().filter(|r| *r == "conflict").count();
            }
        }
        if older > 0 {
            tracing::debug!(older, "older execution versions ignored");
        }
        Ok(())
    }

    /// Read as searches see it (not realtime): an execution (or a version of it) found by id is
    /// found by a search too. The realtime GET could show a version indexed but not yet refreshed
    /// (the indexer's write still refreshing), and an API client reading one then searching would
    /// not find what it just read.
    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        match self
            .c()
            .get_searchable(&self.inner.idx.executions, &key(&[tenant, id]))
            .await
            .map_err(backend("read an execution"))?
        {
            Some(s) if s["deleted"] != Value::Bool(true) => Ok(Some(from_doc("execution", &s)?)),
            _ => Ok(None),
        }
    }

    /// One search per 500 ids: what searches see, as [`find_by_id`](Self::find_by_id) reads.
    async fn find_by_ids(&self, tenant: &str, ids: &[String]) -> RepoResult<Vec<Execution>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let body = json!({
                "query": filter(vec![
                    json!({"term": {"tenantId": tenant}}),
                    json!({"term": {"deleted": false}}),
                    json!({"terms": {"id": chunk}}),
                ]),
                "size": chunk.len(),
            });
            let page: Page<Execution> = self
                .page(&self.inner.idx.executions, "execution", body)
                .await?;
            found.extend(page.results);
        }
        Ok(found)
    }

    async fn search(&self, q: &ExecutionQuery, page: &Pageable) -> RepoResult<Page<Execution>> {
        let mut clauses = vec![
            json!({"term": {"tenantId": tenant_of(&q.tenant_id)}}),
            json!({"term": {"deleted": false}}),
        ];
        if let Some(ns) = &q.namespace {
            clauses.push(namespace_query("namespace", ns));
        }
        if let Some(f) = &q.flow_id {
            clauses.push(json!({"term": {"flowId": f}}));
        }
        if !q.states.is_empty() {
            let states: Vec<String> = q.states.iter().map(ToString::to_string).collect();
            clauses.push(json!({"terms": {"stateCurrent": states}}));
        }
        if q.start_date.is_some() || q.end_date.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(d) = q.start_date {
                range.insert("gte".into(), json!(date(d)));
            }
            if let Some(d) = q.end_date {
                range.insert("lte".into(), json!(date(d)));
            }
            clauses.push(json!({"range": {"startDate": range}}));
        }
        for l in &q.labels {
            clauses.push(json!({"term": {"labels": label_kw(l)}}));
        }
        if let Some(p) = &q.parent_id {
            clauses.push(json!({"term": {"parentId": p}}));
        }
        if let Some(t) = &q.q {
            clauses.push(text_query(
                t,
                &["id", "namespace", "flowId", "labelValues"],
                &[],
            ));
        }
        let body = page_body(
            filter(clauses),
            page,
            EXECUTION_SORT_FIELDS,
            |f| match f {
                "id" => "id",
                "namespace" => "namespace",
                "flowId" => "flowId",
                "state.current" => "stateCurrent",
                "state.startDate" => "startDate",
                _ => "endDate",
            },
            ("startDate", true),
        )?;
        self.page(&self.inner.idx.executions, "execution", body)
            .await
    }

    async fn delete(&self, tenant: &str, id: &str) -> RepoResult<()> {
        let index = &self.inner.idx.executions;
        let k = key(&[tenant, id]);
        let Some(s) = self
            .c()
            .get(index, &k)
            .await
            .map_err(backend("read an execution"))?
        else {
            return Ok(());
        };
        let mut e: Execution = from_doc("execution", &s)?;
        e.deleted = true;
        // At DELETED_VERSION: no later save of this execution can overwrite the deletion.
        let version = DELETED_VERSION.to_string();
        self.put(
            "soft-delete an execution",
            index,
            &k,
            execution_doc(&e)?,
            &[("version", &version), ("version_type", "external_gte")],
        )
        .await?;
        Ok(())
    }

    async fn purge(&self, tenant: &str, id: &str) -> RepoResult<PurgeCount> {
        let executions = u64::from(
            self.delete_doc(
                "purge an execution",
                &self.inner.idx.executions,
                &key(&[tenant, id]),
            )
            .await?,
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

// ---------------------------------------------------------------------------- logs and metrics

fn bulk_index(lines: &mut String, id: &str, doc: &Value) {
    lines.push_str(&json!({"index": {"_id": doc_id(id)}}).to_string());
    lines.push('\n');
    lines.push_str(&doc.to_string());
    lines.push('\n');
}

fn by_execution(tenant: &str, execution_id: &str) -> Vec<Value> {
    vec![
        json!({"term": {"tenantId": tenant}}),
        json!({"term": {"executionId": execution_id}}),
    ]
}

#[async_trait]
impl LogRepository for Repos {
    async fn save_batch(&self, logs: &[LogEntry]) -> RepoResult<()> {
        let mut lines = String::new();
        for l in logs {
            let doc = json!({
                "key": l.id,
                "tenantId": l.tenant_id,
                "namespace": l.namespace,
                "flowId": l.flow_id,
                "executionId": l.execution_id,
                "taskRunId": l.task_run_id,
                "level": level_rank(l.level),
                "timestamp": date(l.timestamp),
                "message": l.message,
                "doc": to_doc("log", l)?,
            });
            bulk_index(&mut lines, &l.id, &doc);
            if lines.len() >= BULK_BYTES {
                self.c()
                    .bulk(&self.inner.idx.logs, std::mem::take(&mut lines), false)
                    .await
                    .map_err(backend("save logs"))?;
            }
        }
        self.c()
            .bulk(&self.inner.idx.logs, lines, false)
            .await
            .map_err(backend("save logs"))?;
        Ok(())
    }

    async fn find_by_execution(
        &self,
        tenant: &str,
        execution_id: &str,
        min_level: Option<Level>,
        task_run_id: Option<&str>,
    ) -> RepoResult<Vec<LogEntry>> {
        let mut clauses = by_execution(tenant, execution_id);
        if let Some(m) = min_level {
            clauses.push(json!({"range": {"level": {"gte": level_rank(m)}}}));
        }
        if let Some(tr) = task_run_id {
            clauses.push(json!({"term": {"taskRunId": tr}}));
        }
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.logs,
                filter(clauses),
                json!([{"timestamp": "asc"}, {"key": "asc"}]),
            )
            .await
            .map_err(backend("read an execution's logs"))?;
        from_docs("log", &docs)
    }

    async fn search(&self, q: &LogQuery, page: &Pageable) -> RepoResult<Page<LogEntry>> {
        let mut clauses = vec![json!({"term": {"tenantId": tenant_of(&q.tenant_id)}})];
        if let Some(ns) = &q.namespace {
            clauses.push(namespace_query("namespace", ns));
        }
        if let Some(f) = &q.flow_id {
            clauses.push(json!({"term": {"flowId": f}}));
        }
        if let Some(x) = &q.execution_id {
            clauses.push(json!({"term": {"executionId": x}}));
        }
        if let Some(tr) = &q.task_run_id {
            clauses.push(json!({"term": {"taskRunId": tr}}));
        }
        if let Some(m) = q.min_level {
            clauses.push(json!({"range": {"level": {"gte": level_rank(m)}}}));
        }
        if q.start_date.is_some() || q.end_date.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(d) = q.start_date {
                range.insert("gte".into(), json!(date(d)));
            }
            if let Some(d) = q.end_date {
                range.insert("lte".into(), json!(date(d)));
            }
            clauses.push(json!({"range": {"timestamp": range}}));
        }
        if let Some(t) = &q.q {
            clauses.push(text_query(t, &[], &["message"]));
        }
        let body = page_body(
            filter(clauses),
            page,
            LOG_SORT_FIELDS,
            |f| match f {
                "level" => "level",
                "namespace" => "namespace",
                "flowId" => "flowId",
                _ => "timestamp",
            },
            ("timestamp", true),
        )?;
        self.page(&self.inner.idx.logs, "log", body).await
    }

    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64> {
        self.delete_matching(
            "delete an execution's logs",
            &self.inner.idx.logs,
            filter(by_execution(tenant, execution_id)),
        )
        .await
    }
}

#[async_trait]
impl MetricRepository for Repos {
    async fn save_batch(&self, metrics: &[MetricEntry]) -> RepoResult<()> {
        let mut lines = String::new();
        for m in metrics {
            let doc = json!({
                "key": m.id,
                "tenantId": m.tenant_id,
                "namespace": m.namespace,
                "flowId": m.flow_id,
                "executionId": m.execution_id,
                "timestamp": date(m.timestamp),
                "doc": to_doc("metric", m)?,
            });
            bulk_index(&mut lines, &m.id, &doc);
            if lines.len() >= BULK_BYTES {
                self.c()
                    .bulk(&self.inner.idx.metrics, std::mem::take(&mut lines), false)
                    .await
                    .map_err(backend("save metrics"))?;
            }
        }
        self.c()
            .bulk(&self.inner.idx.metrics, lines, false)
            .await
            .map_err(backend("save metrics"))?;
        Ok(())
    }

    async fn find_by_execution(&self, tenant: &str, id: &str) -> RepoResult<Vec<MetricEntry>> {
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.metrics,
                filter(by_execution(tenant, id)),
                json!([{"timestamp": "asc"}, {"key": "asc"}]),
            )
            .await
            .map_err(backend("read an execution's metrics"))?;
        from_docs("metric", &docs)
    }

    async fn delete_by_execution(&self, tenant: &str, id: &str) -> RepoResult<u64> {
        self.delete_matching(
            "delete an execution's metrics",
            &self.inner.idx.metrics,
            filter(by_execution(tenant, id)),
        )
        .await
    }
}

// ------------------------------------------------------------------------------------ triggers

#[async_trait]
impl TriggerRepository for Repos {
    async fn save(&self, t: &TriggerState) -> RepoResult<()> {
        let uid = t.uid();
        let doc = json!({
            "key": uid,
            "tenantId": t.tenant_id,
            "namespace": t.namespace,
            "flowId": t.flow_id,
            "triggerId": t.trigger_id,
            "nextExecutionDate": t.next_execution_date.map(date),
            "updatedDate": date(t.updated_date),
            "doc": to_doc("trigger", t)?,
        });
        self.put("save a trigger", &self.inner.idx.triggers, &uid, doc, &[])
            .await?;
        Ok(())
    }

    async fn find(&self, uid: &str) -> RepoResult<Option<TriggerState>> {
        match self
            .c()
            .get(&self.inner.idx.triggers, uid)
            .await
            .map_err(backend("read a trigger"))?
        {
            Some(s) => Ok(Some(from_doc("trigger", &s)?)),
            None => Ok(None),
        }
    }

    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<TriggerState>> {
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.triggers,
                filter(vec![json!({"term": {"tenantId": tenant}})]),
                json!([{"key": "asc"}]),
            )
            .await
            .map_err(backend("list triggers"))?;
        from_docs("trigger", &docs)
    }

    async fn search(&self, q: &TriggerQuery, page: &Pageable) -> RepoResult<Page<TriggerState>> {
        let mut clauses = vec![json!({"term": {"tenantId": tenant_of(&q.tenant_id)}})];
        if let Some(ns) = &q.namespace {
            clauses.push(namespace_query("namespace", ns));
        }
        if let Some(f) = &q.flow_id {
            clauses.push(json!({"term": {"flowId": f}}));
        }
        if let Some(t) = &q.q {
            clauses.push(text_query(t, &["flowId", "triggerId"], &[]));
        }
        let body = page_body(
            filter(clauses),
            page,
            TRIGGER_SORT_FIELDS,
            |f| match f {
                "triggerId" => "triggerId",
                "flowId" => "flowId",
                "namespace" => "namespace",
                "nextExecutionDate" => "nextExecutionDate",
                _ => "updatedDate",
            },
            ("updatedDate", true),
        )?;
        self.page(&self.inner.idx.triggers, "trigger", body).await
    }

    async fn delete(&self, uid: &str) -> RepoResult<()> {
        self.delete_doc("delete a trigger", &self.inner.idx.triggers, uid)
            .await?;
        Ok(())
    }
}

// --------------------------------------------------------------------------- service instances

#[async_trait]
impl ServiceInstanceRepository for Repos {
    async fn save(&self, s: &ServiceInstance) -> RepoResult<()> {
        let doc = json!({
            "key": s.id,
            "tenantId": "",
            "updatedDate": date(s.updated_date),
            "doc": to_doc("service instance", s)?,
        });
        self.put(
            "save a service instance",
            &self.inner.idx.services,
            &s.id,
            doc,
            &[],
        )
        .await?;
        Ok(())
    }

    async fn find_by_id(&self, id: &str) -> RepoResult<Option<ServiceInstance>> {
        match self
            .c()
            .get(&self.inner.idx.services, id)
            .await
            .map_err(backend("read a service instance"))?
        {
            Some(s) => Ok(Some(from_doc("service instance", &s)?)),
            None => Ok(None),
        }
    }

    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>> {
        let docs = self
            .c()
            .search_all(
                &self.inner.idx.services,
                json!({"match_all": {}}),
                json!([{"key": "asc"}]),
            )
            .await
            .map_err(backend("list service instances"))?;
        from_docs("service instance", &docs)
    }

    async fn delete(&self, id: &str) -> RepoResult<()> {
        self.delete_doc("delete a service instance", &self.inner.idx.services, id)
            .await?;
        Ok(())
    }
}
