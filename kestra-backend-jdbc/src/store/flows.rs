//! The [`FlowRepository`]: flow revisions, the latest revision of each flow, and the search.

use super::*;

const FLOW_COLUMNS: &str = "f.tenant_id, f.namespace, f.flow_id, f.revision, f.deleted, f.disabled, f.updated, f.labels, f.source, f.doc";

fn flow_from_row(row: &DbRow, operation: &'static str) -> RepoResult<FlowRecord> {
    let e = repo_err(operation);
    let namespace: String = get(row, "namespace").map_err(&e)?;
    let id: String = get(row, "flow_id").map_err(&e)?;
    let full_id = format!("{namespace}.{id}");
    let doc: String = get(row, "doc").map_err(&e)?;
    let labels: String = get(row, "labels").map_err(&e)?;
    Ok(FlowRecord {
        tenant_id: get(row, "tenant_id").map_err(&e)?,
        revision: get(row, "revision").map_err(&e)?,
        flow: serde_json::from_str(&doc).map_err(corrupt("flow", &full_id))?,
        source: get(row, "source").map_err(&e)?,
        labels: serde_json::from_str::<Vec<Label>>(&labels).map_err(corrupt("flow", &full_id))?,
        disabled: get(row, "disabled").map_err(&e)?,
        deleted: get(row, "deleted").map_err(&e)?,
        updated: from_ms(get(row, "updated").map_err(&e)?),
        namespace,
        id,
    })
}

async fn insert_flow_in(conn: &mut Conn, r: &FlowRecord) -> RepoResult<()> {
    let err = repo_err("save flow");
    let full_id = format!("{}.{}", r.namespace, r.id);
    Qb::new("UPDATE flows SET is_latest = FALSE WHERE tenant_id = ")
        .push_bind(r.tenant_id.clone())
        .push(" AND namespace = ")
        .push_bind(r.namespace.clone())
        .push(" AND flow_id = ")
        .push_bind(r.id.clone())
        .push(" AND is_latest = TRUE")
        .build()
        .execute(&mut *conn)
        .await
        .map_err(&err)?;
    let mut qb = Qb::new(
        "INSERT INTO flows (tenant_id, namespace, flow_id, revision, is_latest, deleted, disabled, updated, labels, source, doc) VALUES (",
    );
    {
        let mut sep = qb.separated(", ");
        sep.push_bind(r.tenant_id.clone())
            .push_bind(r.namespace.clone())
            .push_bind(r.id.clone())
            .push_bind(r.revision)
            .push_bind(true)
            .push_bind(r.deleted)
            .push_bind(r.disabled)
            .push_bind(to_ms(r.updated))
            .push_bind(to_json("flow", &full_id, &r.labels)?)
            .push_bind(r.source.clone())
            .push_bind(to_json("flow", &full_id, &r.flow)?);
    }
    qb.push(")");
    qb.build().execute(&mut *conn).await.map_err(&err)?;
    Qb::new("DELETE FROM flow_labels WHERE tenant_id = ")
        .push_bind(r.tenant_id.clone())
        .push(" AND namespace = ")
        .push_bind(r.namespace.clone())
        .push(" AND flow_id = ")
        .push_bind(r.id.clone())
        .build()
        .execute(&mut *conn)
        .await
        .map_err(&err)?;
    if !r.deleted {
        for chunk in r.labels.chunks(CHUNK) {
            let mut qb = Qb::new(
                "INSERT INTO flow_labels (tenant_id, namespace, flow_id, label_key, label_value) ",
            );
            qb.push_values(chunk, |mut b, l| {
                b.push_bind(r.tenant_id.clone())
                    .push_bind(r.namespace.clone())
                    .push_bind(r.id.clone())
                    .push_bind(l.key.clone())
                    .push_bind(l.value.clone());
            });
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
    }
    Ok(())
}

async fn latest_flow_in(
    conn: &mut Conn,
    tenant: &str,
    namespace: &str,
    id: &str,
    lock: bool,
) -> RepoResult<Option<FlowRecord>> {
    let mut qb = Qb::new(format!(
        "SELECT {FLOW_COLUMNS} FROM flows f WHERE f.is_latest = TRUE AND f.tenant_id = "
    ));
    qb.push_bind(tenant.to_string())
        .push(" AND f.namespace = ")
        .push_bind(namespace.to_string())
        .push(" AND f.flow_id = ")
        .push_bind(id.to_string());
    if lock {
        qb.push(FLAVOR.for_update());
    }
    let row = qb
        .build()
        .fetch_optional(&mut *conn)
        .await
        .map_err(repo_err("find flow"))?;
    row.map(|r| flow_from_row(&r, "find flow")).transpose()
}

fn push_flow_where(qb: &mut Qb, q: &FlowQuery) {
    qb.push(" WHERE f.is_latest = TRUE AND f.deleted = FALSE AND f.tenant_id = ")
        .push_bind(tenant_of(&q.tenant_id));
    if let Some(ns) = &q.namespace {
        push_namespace(qb, "f.namespace", ns);
    }
    for l in &q.labels {
        qb.push(" AND EXISTS (SELECT 1 FROM flow_labels fl WHERE fl.tenant_id = f.tenant_id AND fl.namespace = f.namespace AND fl.flow_id = f.flow_id AND fl.label_key = ")
            .push_bind(l.key.clone())
            .push(" AND fl.label_value = ")
            .push_bind(l.value.clone())
            .push(")");
    }
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        let p = like_contains(text);
        qb.push(" AND (");
        push_like(qb, "f.flow_id", &p);
        qb.push(" OR ");
        push_like(qb, "f.namespace", &p);
        qb.push(" OR ");
        push_like(qb, "f.source", &p);
        qb.push(")");
    }
}

impl Store {
    /// One attempt of [`FlowRepository::save`], in one transaction.
    async fn save_flow_once(
        &self,
        mut record: FlowRecord,
    ) -> RepoResult<(FlowRecord, SaveOutcome)> {
        let err = repo_err("save flow");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        let latest = latest_flow_in(
            &mut tx,
            &record.tenant_id,
            &record.namespace,
            &record.id,
            true,
        )
        .await?;
        let outcome = match &latest {
            Some(l) if !l.deleted && l.source == record.source => {
                // End the transaction now: a dropped one is only rolled back when its connection
                // goes back to the pool, and holds its locks until then.
                tx.rollback().await.map_err(&err)?;
                return Ok((l.clone(), SaveOutcome::Unchanged));
            }
            Some(l) if !l.deleted => SaveOutcome::Updated,
            _ => SaveOutcome::Created,
        };
        record.revision = latest.map(|l| l.revision + 1).unwrap_or(1);
        record.updated = from_ms(now_ms());
        record.deleted = false;
        insert_flow_in(&mut tx, &record).await?;
        tx.commit().await.map_err(&err)?;
        Ok((record, outcome))
    }
}

#[async_trait]
impl FlowRepository for Store {
    async fn save(&self, record: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)> {
        // Two first saves of one flow both find no row to lock, and one of them then hits the
        // primary key (PostgreSQL, MySQL; MySQL may report a deadlock instead). The transaction
        // rolled back, so saving again is safe: the retry sees the other save's revision.
        let mut attempt = 0;
        loop {
            match self.save_flow_once(record.clone()).await {
                Err(e) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(flow = %record.id, attempt, "flow save failed, retrying: {e}");
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
    }
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>> {
        let mut conn = self.read.acquire().await.map_err(repo_err("find flow"))?;
        let latest = latest_flow_in(&mut conn, tenant, namespace, id, false).await?;
        let latest = match latest {
            Some(l) if !l.deleted => l,
            _ => return Ok(None),
        };
        let Some(revision) = revision.filter(|r| *r != latest.revision) else {
            return Ok(Some(latest));
        };
        let row = Qb::new(format!(
            "SELECT {FLOW_COLUMNS} FROM flows f WHERE f.deleted = FALSE AND f.tenant_id = "
        ))
        .push_bind(tenant.to_string())
        .push(" AND f.namespace = ")
        .push_bind(namespace.to_string())
        .push(" AND f.flow_id = ")
        .push_bind(id.to_string())
        .push(" AND f.revision = ")
        .push_bind(revision)
        .build()
        .fetch_optional(&mut *conn)
        .await
        .map_err(repo_err("find flow"))?;
        row.map(|r| flow_from_row(&r, "find flow")).transpose()
    }

    async fn revisions(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
    ) -> RepoResult<Vec<FlowRecord>> {
        let rows = Qb::new(format!(
            "SELECT {FLOW_COLUMNS} FROM flows f WHERE f.tenant_id = "
        ))
        .push_bind(tenant.to_string())
        .push(" AND f.namespace = ")
        .push_bind(namespace.to_string())
        .push(" AND f.flow_id = ")
        .push_bind(id.to_string())
        .push(" ORDER BY f.revision ASC")
        .build()
        .fetch_all(&self.read)
        .await
        .map_err(repo_err("flow revisions"))?;
        rows.iter()
            .map(|r| flow_from_row(r, "flow revisions"))
            .collect()
    }

    async fn delete(&self, tenant: &str, namespace: &str, id: &str) -> RepoResult<FlowRecord> {
        let err = repo_err("delete flow");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        let latest = latest_flow_in(&mut tx, tenant, namespace, id, true).await?;
        let Some(mut record) = latest.filter(|l| !l.deleted) else {
            return Err(RepositoryError::NotFound {
                entity: "flow",
                id: format!("{namespace}.{id}"),
            });
        };
        record.revision += 1;
        record.deleted = true;
        record.updated = from_ms(now_ms());
        insert_flow_in(&mut tx, &record).await?;
        tx.commit().await.map_err(&err)?;
        Ok(record)
    }

    async fn search(&self, query: &FlowQuery, page: &Pageable) -> RepoResult<Page<FlowRecord>> {
        let (offset, limit) = page.check(FLOW_SORT_FIELDS)?;
        let order = order_by(
            &page.sort,
            FLOW_SORT_FIELDS,
            flow_sort_column,
            "f.updated DESC, f.namespace ASC, f.flow_id ASC",
            "f.namespace ASC, f.flow_id ASC",
        )?;
        let (rows, total) = self
            .search_page(
                FLOW_COLUMNS,
                "flows f",
                |qb| push_flow_where(qb, query),
                &order,
                (offset, limit),
                "search flows",
            )
            .await?;
        let results = rows
            .iter()
            .map(|r| flow_from_row(r, "search flows"))
            .collect::<RepoResult<Vec<_>>>()?;
        Ok(Page { results, total })
    }

    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>> {
        let rows = Qb::new(format!("SELECT {FLOW_COLUMNS} FROM flows f WHERE f.is_latest = TRUE AND f.deleted = FALSE AND f.tenant_id = "))
            .push_bind(tenant.to_string())
            .push(" ORDER BY f.namespace, f.flow_id")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("list flows"))?;
        rows.iter()
            .map(|r| flow_from_row(r, "list flows"))
            .collect()
    }

    async fn distinct_namespaces(&self, tenant: &str) -> RepoResult<Vec<String>> {
        let rows = Qb::new("SELECT DISTINCT f.namespace AS namespace FROM flows f WHERE f.is_latest = TRUE AND f.deleted = FALSE AND f.tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" ORDER BY namespace")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("list namespaces"))?;
        rows.iter()
            .map(|r| get(r, "namespace").map_err(repo_err("list namespaces")))
            .collect()
    }
}
