//! The [`LogRepository`] and the [`MetricRepository`]: entries appended with stable ids (a
//! redelivery does not duplicate them), searched and purged.

use super::*;

fn push_log_where(qb: &mut Qb, q: &LogQuery) {
    qb.push(" WHERE l.tenant_id = ")
        .push_bind(tenant_of(&q.tenant_id));
    if let Some(ns) = &q.namespace {
        push_namespace(qb, "l.namespace", ns);
    }
    if let Some(v) = &q.flow_id {
        qb.push(" AND l.flow_id = ").push_bind(v.clone());
    }
    if let Some(v) = &q.execution_id {
        qb.push(" AND l.execution_id = ").push_bind(v.clone());
    }
    if let Some(v) = &q.task_run_id {
        qb.push(" AND l.task_run_id = ").push_bind(v.clone());
    }
    if let Some(level) = q.min_level {
        qb.push(" AND l.lvl >= ").push_bind(level_rank(level));
    }
    if let Some(d) = q.start_date {
        qb.push(" AND l.ts >= ").push_bind(to_ms(d));
    }
    if let Some(d) = q.end_date {
        qb.push(" AND l.ts <= ").push_bind(to_ms(d));
    }
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        qb.push(" AND ");
        push_like(qb, "l.message", &like_contains(text));
    }
}

fn docs<T: serde::de::DeserializeOwned>(
    rows: &[DbRow],
    entity: &'static str,
    operation: &'static str,
) -> RepoResult<Vec<T>> {
    rows.iter()
        .map(|r| {
            let doc: String = get(r, "doc").map_err(repo_err(operation))?;
            serde_json::from_str(&doc).map_err(|source| RepositoryError::Corrupt {
                entity,
                id: get::<i64>(r, "id")
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                source,
            })
        })
        .collect()
}

/// The end of a log/metric INSERT that skips rows whose `entry_id` is already stored (a redelivered
/// entry, or the same entry twice in one batch): each entry is stored once.
fn ignore_duplicate_entry_ids() -> &'static str {
    match FLAVOR {
        crate::common::Flavor::MySql => " ON DUPLICATE KEY UPDATE entry_id = entry_id",
        _ => " ON CONFLICT (entry_id) DO NOTHING",
    }
}

#[async_trait]
impl LogRepository for Store {
    async fn save_batch(&self, logs: &[LogEntry]) -> RepoResult<()> {
        let docs = logs
            .iter()
            .map(|l| to_json("log", l.execution_id.as_deref().unwrap_or(""), l))
            .collect::<RepoResult<Vec<String>>>()?;
        let rows: Vec<(&LogEntry, String)> = logs.iter().zip(docs).collect();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = Qb::new(
                "INSERT INTO logs (entry_id, tenant_id, namespace, flow_id, task_id, execution_id, task_run_id, trigger_id, lvl, ts, message, doc) ",
            );
            qb.push_values(chunk, |mut b, (l, doc)| {
                b.push_bind(l.id.clone())
                    .push_bind(l.tenant_id.clone())
                    .push_bind(l.namespace.clone())
                    .push_bind(l.flow_id.clone())
                    .push_bind(l.task_id.clone())
                    .push_bind(l.execution_id.clone())
                    .push_bind(l.task_run_id.clone())
                    .push_bind(l.trigger_id.clone())
                    .push_bind(level_rank(l.level))
                    .push_bind(to_ms(l.timestamp))
                    .push_bind(l.message.clone())
                    .push_bind(doc.clone());
            });
            qb.push(ignore_duplicate_entry_ids());
            qb.build()
                .execute(&self.write)
                .await
                .map_err(repo_err("save logs"))?;
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
        let mut qb = Qb::new("SELECT l.id, l.doc FROM logs l WHERE l.tenant_id = ");
        qb.push_bind(tenant.to_string())
            .push(" AND l.execution_id = ")
            .push_bind(execution_id.to_string());
        if let Some(level) = min_level {
            qb.push(" AND l.lvl >= ").push_bind(level_rank(level));
        }
        if let Some(t) = task_run_id {
            qb.push(" AND l.task_run_id = ").push_bind(t.to_string());
        }
        qb.push(" ORDER BY l.ts ASC, l.id ASC");
        let rows = qb
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("find logs"))?;
        docs(&rows, "log", "find logs")
    }

    async fn search(&self, query: &LogQuery, page: &Pageable) -> RepoResult<Page<LogEntry>> {
        let (offset, limit) = page.check(LOG_SORT_FIELDS)?;
        check_range(query.start_date, query.end_date)?;
        let order = order_by(
            &page.sort,
            LOG_SORT_FIELDS,
            log_sort_column,
            "l.ts DESC, l.id DESC",
            "l.id ASC",
        )?;
        let (rows, total) = self
            .search_page(
                "l.id, l.doc",
                "logs l",
                |qb| push_log_where(qb, query),
                &order,
                (offset, limit),
                "search logs",
            )
            .await?;
        Ok(Page {
            results: docs(&rows, "log", "search logs")?,
            total,
        })
    }

    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64> {
        let done = Qb::new("DELETE FROM logs WHERE tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND execution_id = ")
            .push_bind(execution_id.to_string())
            .build()
            .execute(&self.write)
            .await
            .map_err(repo_err("delete logs"))?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl MetricRepository for Store {
    async fn save_batch(&self, metrics: &[MetricEntry]) -> RepoResult<()> {
        let docs = metrics
            .iter()
            .map(|m| to_json("metric", &m.execution_id, m))
            .collect::<RepoResult<Vec<String>>>()?;
        let rows: Vec<(&MetricEntry, String)> = metrics.iter().zip(docs).collect();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = Qb::new(
                "INSERT INTO metrics (entry_id, tenant_id, namespace, flow_id, execution_id, task_run_id, name, ts, doc) ",
            );
            qb.push_values(chunk, |mut b, (m, doc)| {
                b.push_bind(m.id.clone())
                    .push_bind(m.tenant_id.clone())
                    .push_bind(m.namespace.clone())
                    .push_bind(m.flow_id.clone())
                    .push_bind(m.execution_id.clone())
                    .push_bind(m.task_run_id.clone())
                    .push_bind(m.name.clone())
                    .push_bind(to_ms(m.timestamp))
                    .push_bind(doc.clone());
            });
            qb.push(ignore_duplicate_entry_ids());
            qb.build()
                .execute(&self.write)
                .await
                .map_err(repo_err("save metrics"))?;
        }
        Ok(())
    }

    async fn find_by_execution(
        &self,
        tenant: &str,
        execution_id: &str,
    ) -> RepoResult<Vec<MetricEntry>> {
        let rows = Qb::new("SELECT m.id, m.doc FROM metrics m WHERE m.tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND m.execution_id = ")
            .push_bind(execution_id.to_string())
            .push(" ORDER BY m.ts ASC, m.id ASC")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("find metrics"))?;
        docs(&rows, "metric", "find metrics")
    }

    async fn delete_by_execution(&self, tenant: &str, execution_id: &str) -> RepoResult<u64> {
        let done = Qb::new("DELETE FROM metrics WHERE tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND execution_id = ")
            .push_bind(execution_id.to_string())
            .build()
            .execute(&self.write)
            .await
            .map_err(repo_err("delete metrics"))?;
        Ok(done.rows_affected())
    }
}
