//! The [`ExecutionRepository`]: execution rows, their search filters and pages.

use super::task_runs::{encode_all, fetch_executions, new_revision, write_in};
use super::*;

/// The indexed columns of an execution's row, as its writes compute them from the execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexedColumns {
    tenant_id: String,
    namespace: String,
    flow_id: String,
    state_current: &'static str,
    start_date: i64,
    parent_id: Option<String>,
}

impl IndexedColumns {
    pub(super) fn of(e: &Execution) -> IndexedColumns {
        let start = e
            .state
            .start_date()
            .unwrap_or(e.metadata.original_created_date);
        IndexedColumns {
            tenant_id: e.tenant_id.clone(),
            namespace: e.namespace.clone(),
            flow_id: e.flow_id.clone(),
            state_current: e.current().as_str(),
            start_date: to_ms(start),
            parent_id: e.parent_id.clone(),
        }
    }
}

/// Push the update of an existing execution row whose indexed columns ([`IndexedColumns`]) keep
/// their stored values: only the other columns are set. SQLite rewrites the entry of every index
/// on a column an `UPDATE` sets, changed or not: the upsert of [`push_execution_upsert`] writes 6
/// pages of an execution with 5 indexes, this one 1 (measured on the WAL). The caller knows the
/// row exists (read or written under its lock, or checked at commit by its revision).
pub(super) fn push_execution_update(
    qb: &mut Qb,
    e: &Execution,
    doc: String,
    task_runs: Option<i64>,
    revision: &str,
) {
    qb.push("UPDATE executions SET end_date = ")
        .push_bind(e.state.end_date().map(to_ms))
        .push(", deleted = ")
        .push_bind(e.deleted)
        .push(", updated = ")
        .push_bind(now_ms())
        .push(", version = ")
        .push_bind(version_column(e))
        .push(", task_runs = ")
        .push_bind(task_runs)
        .push(", revision = ")
        .push_bind(revision.to_string())
        .push(", doc = ")
        .push_bind(doc)
        .push(" WHERE id = ")
        .push_bind(e.id.clone());
}

/// The columns of an execution's row as a write stores them ([`push_execution_rows`]).
pub(super) struct ExecutionRow {
    id: String,
    indexed: IndexedColumns,
    end_date: Option<i64>,
    deleted: bool,
    version: i64,
    task_runs: Option<i64>,
    revision: String,
    doc: String,
}

impl ExecutionRow {
    /// The row of `e`, with `doc` its document without its task runs, `task_runs` their number
    /// and `revision` the row's new revision.
    pub(super) fn of(e: &Execution, doc: String, task_runs: Option<i64>, revision: &str) -> Self {
        Self::with(e, IndexedColumns::of(e), doc, task_runs, revision)
    }

    /// [`ExecutionRow::of`] given `e`'s indexed columns, computed already.
    pub(super) fn with(
        e: &Execution,
        indexed: IndexedColumns,
        doc: String,
        task_runs: Option<i64>,
        revision: &str,
    ) -> Self {
        ExecutionRow {
            id: e.id.clone(),
            indexed,
            end_date: e.state.end_date().map(to_ms),
            deleted: e.deleted,
            version: version_column(e),
            task_runs,
            revision: revision.to_string(),
            doc,
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn tenant(&self) -> &str {
        &self.indexed.tenant_id
    }

    /// The bytes it binds, about (what bounds a statement of several rows).
    pub(super) fn len(&self) -> usize {
        self.doc.len() + 256
    }
}

/// Push the insert of `rows` (at least one, at most [`CHUNK`]) into `executions` onto `qb` (no
/// `; `); with `upsert`, a row whose id is stored replaces it, else that id fails the statement.
pub(super) fn push_execution_rows<S: Sql>(
    qb: &mut S,
    rows: impl IntoIterator<Item = ExecutionRow>,
    upsert: bool,
) {
    let now = now_ms();
    qb.sql(
        "INSERT INTO executions (id, tenant_id, namespace, flow_id, state_current, start_date, end_date, parent_id, deleted, updated, version, task_runs, revision, doc) VALUES ",
    );
    for (i, row) in rows.into_iter().enumerate() {
        let IndexedColumns {
            tenant_id,
            namespace,
            flow_id,
            state_current,
            start_date,
            parent_id,
        } = row.indexed;
        qb.sql(if i == 0 { "(" } else { ", (" })
            .text(&row.id)
            .sql(", ")
            .text(&tenant_id)
            .sql(", ")
            .text(&namespace)
            .sql(", ")
            .text(&flow_id)
            .sql(", ")
            .text(state_current)
            .sql(", ")
            .int(start_date)
            .sql(", ")
            .opt_int(row.end_date)
            .sql(", ")
            .opt_text(parent_id.as_deref())
            .sql(", ")
            .boolean(row.deleted)
            .sql(", ")
            .int(now)
            .sql(", ")
            .int(row.version)
            .sql(", ")
            .opt_int(row.task_runs)
            .sql(", ")
            .text(&row.revision)
            .sql(", ")
            .text(&row.doc)
            .sql(")");
    }
    if upsert {
        qb.sql(&FLAVOR.upsert(
            &["id"],
            &[
                "tenant_id",
                "namespace",
                "flow_id",
                "state_current",
                "start_date",
                "end_date",
                "parent_id",
                "deleted",
                "updated",
                "version",
                "task_runs",
                "revision",
                "doc",
            ],
        ));
    }
}

/// Push the upsert of an execution row (see [`upsert_execution_in`]) onto `qb`.
pub(super) fn push_execution_upsert(
    qb: &mut Qb,
    e: &Execution,
    doc: String,
    task_runs: Option<i64>,
    revision: &str,
) {
    push_execution_rows(qb, [ExecutionRow::of(e, doc, task_runs, revision)], true);
}

/// Insert or replace an execution row and its labels (inside the caller's transaction or not).
///
/// `doc` is the execution's document without its task runs, `task_runs` their number (they are
/// written apart, see [`super::task_runs`]) and `revision` the new random revision of the row.
/// The label rows are rewritten unless `labels_changed` is false (they are those stored); those
/// stored are deleted first unless `labels_stored` is false (none are).
pub(super) async fn upsert_execution_in(
    conn: &mut Conn,
    e: &Execution,
    doc: String,
    task_runs: Option<i64>,
    revision: &str,
    labels_changed: bool,
    labels_stored: bool,
) -> Result<(), sqlx::Error> {
    let mut qb = Qb::new("");
    push_execution_upsert(&mut qb, e, doc, task_runs, revision);
    qb.build().execute(&mut *conn).await?;
    if !labels_changed {
        return Ok(());
    }
    if labels_stored {
        Qb::new("DELETE FROM execution_labels WHERE execution_id = ")
            .push_bind(e.id.clone())
            .build()
            .execute(&mut *conn)
            .await?;
    }
    for chunk in e.labels.chunks(CHUNK) {
        let mut qb = Qb::new("");
        push_labels_insert(&mut qb, e, chunk);
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Push the insert of `labels` (some of `e`'s, at most [`CHUNK`], at least one) as rows of
/// `execution_labels` onto `qb` (no `; `).
pub(super) fn push_labels_insert(qb: &mut Qb, e: &Execution, labels: &[Label]) {
    push_label_rows(
        qb,
        labels
            .iter()
            .map(|l| (e.id.clone(), e.tenant_id.clone(), l.clone())),
    );
}

/// Push the insert of label rows `(execution id, tenant, label)` (at most [`CHUNK`], at least
/// one) into `execution_labels` onto `qb` (no `; `).
pub(super) fn push_label_rows<S: Sql>(
    qb: &mut S,
    rows: impl IntoIterator<Item = (String, String, Label)>,
) {
    qb.sql(
        "INSERT INTO execution_labels (execution_id, tenant_id, label_key, label_value) VALUES ",
    );
    for (i, (id, tenant, l)) in rows.into_iter().enumerate() {
        qb.sql(if i == 0 { "(" } else { ", (" })
            .text(&id)
            .sql(", ")
            .text(&tenant)
            .sql(", ")
            .text(&l.key)
            .sql(", ")
            .text(&l.value)
            .sql(")");
    }
}

/// `metadata.version` as the column stores it (BIGINT; a version past `i64::MAX` saturates).
fn version_column(e: &Execution) -> i64 {
    i64::try_from(e.metadata.version).unwrap_or(i64::MAX)
}

pub(super) fn tenant_of(t: &Option<String>) -> String {
    t.clone()
        .unwrap_or_else(|| kestra_core::model::DEFAULT_TENANT.to_string())
}

/// `AND (col = ns OR col LIKE 'ns.%')`: a namespace and its children, segment-wise.
pub(super) fn push_namespace(qb: &mut Qb, column: &str, namespace: &str) {
    qb.push(format!(" AND ({column} = "))
        .push_bind(namespace.to_string())
        .push(format!(" OR {column} LIKE "))
        .push_bind(like_children(namespace))
        .push(LIKE_ESCAPE)
        .push(")");
}

/// `LOWER(col) LIKE pattern ESCAPE '!'`.
pub(super) fn push_like(qb: &mut Qb, column: &str, pattern: &str) {
    qb.push(format!("LOWER({column}) LIKE "))
        .push_bind(pattern.to_string())
        .push(LIKE_ESCAPE);
}

fn push_execution_where(qb: &mut Qb, q: &ExecutionQuery) {
    qb.push(" WHERE e.deleted = FALSE AND e.tenant_id = ")
        .push_bind(tenant_of(&q.tenant_id));
    if let Some(ns) = &q.namespace {
        push_namespace(qb, "e.namespace", ns);
    }
    if let Some(flow) = &q.flow_id {
        qb.push(" AND e.flow_id = ").push_bind(flow.clone());
    }
    if !q.states.is_empty() {
        qb.push(" AND e.state_current IN ");
        push_in(qb, q.states.iter().map(|s| s.as_str()));
    }
    if let Some(d) = q.start_date {
        qb.push(" AND e.start_date >= ").push_bind(to_ms(d));
    }
    if let Some(d) = q.end_date {
        qb.push(" AND e.start_date <= ").push_bind(to_ms(d));
    }
    if let Some(p) = &q.parent_id {
        qb.push(" AND e.parent_id = ").push_bind(p.clone());
    }
    for l in &q.labels {
        qb.push(" AND EXISTS (SELECT 1 FROM execution_labels l WHERE l.execution_id = e.id AND l.label_key = ")
            .push_bind(l.key.clone())
            .push(" AND l.label_value = ")
            .push_bind(l.value.clone())
            .push(")");
    }
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        let p = like_contains(text);
        qb.push(" AND (");
        push_like(qb, "e.id", &p);
        qb.push(" OR ");
        push_like(qb, "e.namespace", &p);
        qb.push(" OR ");
        push_like(qb, "e.flow_id", &p);
        qb.push(" OR EXISTS (SELECT 1 FROM execution_labels l WHERE l.execution_id = e.id AND ");
        push_like(qb, "l.label_value", &p);
        qb.push("))");
    }
}

pub(super) fn check_range(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> RepoResult<()> {
    match (start, end) {
        (Some(s), Some(e)) if s > e => Err(RepositoryError::InvalidQuery(format!(
            "start date {s} is after end date {e}"
        ))),
        _ => Ok(()),
    }
}

fn push_page(qb: &mut Qb, offset: u64, limit: u64) {
    push_limit(qb, i64::try_from(limit).unwrap_or(i64::MAX));
    qb.push(" OFFSET ")
        .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
}

async fn count(pool: &Pool<Db>, qb: &mut Qb, operation: &'static str) -> RepoResult<u64> {
    let row = qb
        .build()
        .fetch_one(pool)
        .await
        .map_err(repo_err(operation))?;
    let c: i64 = get(&row, "c").map_err(repo_err(operation))?;
    Ok(u64::try_from(c).unwrap_or(0))
}

impl Store {
    /// One page of `SELECT columns FROM from WHERE ... ORDER BY ... LIMIT/OFFSET` and the total
    /// number of matching rows. The total comes from the page's own statement (`COUNT(*) OVER ()`,
    /// one snapshot: they agree even while rows are being written); only a later page past the end,
    /// which has no row to carry it, counts separately.
    pub(super) async fn search_page(
        &self,
        columns: &str,
        from: &str,
        push_where: impl Fn(&mut Qb),
        order: &str,
        (offset, limit): (u64, u64),
        operation: &'static str,
    ) -> RepoResult<(Vec<DbRow>, u64)> {
        let mut qb = Qb::new(format!(
            "SELECT {columns}, COUNT(*) OVER () AS total_rows FROM {from}"
        ));
        push_where(&mut qb);
        qb.push(order);
        push_page(&mut qb, offset, limit);
        let rows = qb
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err(operation))?;
        let total = match rows.first() {
            // The first page is empty: nothing matches.
            None if offset == 0 => 0,
            Some(row) => {
                let c: i64 = get(row, "total_rows").map_err(repo_err(operation))?;
                u64::try_from(c).unwrap_or(0)
            }
            None => {
                let mut qb = Qb::new(format!("SELECT COUNT(*) AS c FROM {from}"));
                push_where(&mut qb);
                count(&self.read, &mut qb, operation).await?
            }
        };
        Ok((rows, total))
    }
}

pub(super) fn parse_doc<T: serde::de::DeserializeOwned>(
    row: &DbRow,
    entity: &'static str,
    id_column: &str,
    operation: &'static str,
) -> RepoResult<T> {
    let doc: String = get(row, "doc").map_err(repo_err(operation))?;
    serde_json::from_str(&doc).map_err(|source| RepositoryError::Corrupt {
        entity,
        id: get::<String>(row, id_column).unwrap_or_default(),
        source,
    })
}

#[async_trait]
impl ExecutionRepository for Store {
    async fn save(&self, execution: &Execution) -> RepoResult<()> {
        let err = repo_err("save execution");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        // Versioned: the stored row (locked) wins when newer; a deleted one stays deleted.
        let stored = Qb::new("SELECT version, deleted FROM executions WHERE id = ")
            .push_bind(execution.id.clone())
            .push(FLAVOR.for_update())
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
        let mut execution = std::borrow::Cow::Borrowed(execution);
        if let Some(row) = stored {
            let version: i64 = row.try_get("version").map_err(&err)?;
            let deleted: bool = row.try_get("deleted").map_err(&err)?;
            if version > version_column(&execution) {
                return tx.commit().await.map_err(&err);
            }
            if deleted {
                execution.to_mut().deleted = true;
            }
        }
        let encoded = encode_all(&execution).map_err(corrupt("execution", &execution.id))?;
        write_in(&mut tx, &execution, encoded).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        let found = fetch_executions(&self.read, tenant, &[id.to_string()])
            .await
            .map_err(|e| e.into_repo("find execution"))?;
        Ok(found.into_iter().next())
    }

    async fn find_by_ids(&self, tenant: &str, ids: &[String]) -> RepoResult<Vec<Execution>> {
        // One statement per 500 ids (bind parameters stay far below every dialect's limit).
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            found.extend(
                fetch_executions(&self.read, tenant, chunk)
                    .await
                    .map_err(|e| e.into_repo("find executions"))?,
            );
        }
        Ok(found)
    }

    async fn search(&self, query: &ExecutionQuery, page: &Pageable) -> RepoResult<Page<Execution>> {
        let (offset, limit) = page.check(EXECUTION_SORT_FIELDS)?;
        check_range(query.start_date, query.end_date)?;
        let order = order_by(
            &page.sort,
            EXECUTION_SORT_FIELDS,
            execution_sort_column,
            "e.start_date DESC, e.id DESC",
            "e.id ASC",
        )?;
        let (rows, total) = self
            .search_page(
                "e.id",
                "executions e",
                |qb| push_execution_where(qb, query),
                &order,
                (offset, limit),
                "search executions",
            )
            .await?;
        let ids = rows
            .iter()
            .map(|r| get::<String>(r, "id"))
            .collect::<Result<Vec<String>, _>>()
            .map_err(repo_err("search executions"))?;
        // The page's executions with their task runs (a second statement: one deleted in between
        // is left out of the page).
        let mut by_id: HashMap<String, Execution> =
            fetch_executions(&self.read, &tenant_of(&query.tenant_id), &ids)
                .await
                .map_err(|e| e.into_repo("search executions"))?
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect();
        let results = ids.iter().filter_map(|id| by_id.remove(id)).collect();
        Ok(Page { results, total })
    }

    async fn delete(&self, tenant: &str, id: &str) -> RepoResult<()> {
        let err = repo_err("delete execution");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        let row = Qb::new("SELECT id, doc FROM executions WHERE deleted = FALSE AND tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND id = ")
            .push_bind(id.to_string())
            .push(FLAVOR.for_update())
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
        let Some(row) = row else {
            return Err(RepositoryError::NotFound {
                entity: "execution",
                id: id.to_string(),
            });
        };
        // The row's document only: its task runs (stored apart, or in it before migration 0004)
        // are kept as they are.
        let mut execution: Execution = parse_doc(&row, "execution", "id", "delete execution")?;
        execution.deleted = true;
        let doc = to_json("execution", id, &execution)?;
        Qb::new("UPDATE executions SET deleted = TRUE, doc = ")
            .push_bind(doc)
            .push(", revision = ")
            .push_bind(new_revision())
            .push(", updated = ")
            .push_bind(now_ms())
            .push(" WHERE id = ")
            .push_bind(id.to_string())
            .build()
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn purge(&self, tenant: &str, id: &str) -> RepoResult<PurgeCount> {
        let err = repo_err("purge execution");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        let mut counts = PurgeCount::default();
        Qb::new("DELETE FROM execution_task_runs WHERE execution_id IN (SELECT id FROM executions WHERE tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND id = ")
            .push_bind(id.to_string())
            .push(")")
            .build()
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        for (table, slot) in [
            ("logs", &mut counts.logs),
            ("metrics", &mut counts.metrics),
            ("executions", &mut counts.executions),
        ] {
            let id_column = if table == "executions" {
                "id"
            } else {
                "execution_id"
            };
            let done = Qb::new(format!("DELETE FROM {table} WHERE tenant_id = "))
                .push_bind(tenant.to_string())
                .push(format!(" AND {id_column} = "))
                .push_bind(id.to_string())
                .build()
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            *slot = done.rows_affected();
        }
        Qb::new("DELETE FROM execution_labels WHERE tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND execution_id = ")
            .push_bind(id.to_string())
            .build()
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(counts)
    }
}
