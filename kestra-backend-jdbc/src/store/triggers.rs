//! Trigger state: the [`TriggerRepository`] (search, read, delete) and the scheduler's
//! [`TriggerUnit`] (one transaction over the due triggers it claims with `SKIP LOCKED`).

use super::*;

fn push_trigger_where(qb: &mut Qb, q: &TriggerQuery) {
    qb.push(" WHERE t.tenant_id = ")
        .push_bind(tenant_of(&q.tenant_id));
    if let Some(ns) = &q.namespace {
        push_namespace(qb, "t.namespace", ns);
    }
    if let Some(v) = &q.flow_id {
        qb.push(" AND t.flow_id = ").push_bind(v.clone());
    }
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        let p = like_contains(text);
        qb.push(" AND (");
        push_like(qb, "t.flow_id", &p);
        qb.push(" OR ");
        push_like(qb, "t.trigger_id", &p);
        qb.push(")");
    }
}

#[async_trait]
impl TriggerRepository for Store {
    async fn save(&self, t: &TriggerState) -> RepoResult<()> {
        let uid = t.uid();
        let doc = to_json("trigger", &uid, t)?;
        let mut qb = Qb::new(
            "INSERT INTO triggers (uid, tenant_id, namespace, flow_id, trigger_id, disabled, next_execution_date, updated, doc) VALUES (",
        );
        {
            let mut sep = qb.separated(", ");
            sep.push_bind(uid)
                .push_bind(t.tenant_id.clone())
                .push_bind(t.namespace.clone())
                .push_bind(t.flow_id.clone())
                .push_bind(t.trigger_id.clone())
                .push_bind(t.disabled)
                .push_bind(t.next_execution_date.map(to_ms))
                .push_bind(to_ms(t.updated_date))
                .push_bind(doc);
        }
        qb.push(")").push(FLAVOR.upsert(
            &["uid"],
            &[
                "tenant_id",
                "namespace",
                "flow_id",
                "trigger_id",
                "disabled",
                "next_execution_date",
                "updated",
                "doc",
            ],
        ));
        qb.build()
            .execute(&self.write)
            .await
            .map_err(repo_err("save trigger"))?;
        Ok(())
    }

    async fn find(&self, uid: &str) -> RepoResult<Option<TriggerState>> {
        let row = Qb::new("SELECT uid, doc FROM triggers WHERE uid = ")
            .push_bind(uid.to_string())
            .build()
            .fetch_optional(&self.read)
            .await
            .map_err(repo_err("find trigger"))?;
        row.map(|r| parse_doc(&r, "trigger", "uid", "find trigger"))
            .transpose()
    }

    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<TriggerState>> {
        let rows = Qb::new("SELECT t.uid, t.doc FROM triggers t WHERE t.tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" ORDER BY t.namespace, t.flow_id, t.trigger_id")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("list triggers"))?;
        rows.iter()
            .map(|r| parse_doc(r, "trigger", "uid", "list triggers"))
            .collect()
    }

    async fn search(
        &self,
        query: &TriggerQuery,
        page: &Pageable,
    ) -> RepoResult<Page<TriggerState>> {
        let (offset, limit) = page.check(TRIGGER_SORT_FIELDS)?;
        let order = order_by(
            &page.sort,
            TRIGGER_SORT_FIELDS,
            trigger_sort_column,
            "t.updated DESC, t.uid ASC",
            "t.uid ASC",
        )?;
        let (rows, total) = self
            .search_page(
                "t.uid, t.doc",
                "triggers t",
                |qb| push_trigger_where(qb, query),
                &order,
                (offset, limit),
                "search triggers",
            )
            .await?;
        let results = rows
            .iter()
            .map(|r| parse_doc(r, "trigger", "uid", "search triggers"))
            .collect::<RepoResult<Vec<_>>>()?;
        Ok(Page { results, total })
    }

    async fn delete(&self, uid: &str) -> RepoResult<()> {
        Qb::new("DELETE FROM triggers WHERE uid = ")
            .push_bind(uid.to_string())
            .build()
            .execute(&self.write)
            .await
            .map_err(repo_err("delete trigger"))?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------ trigger units

/// The scheduler's unit of work over trigger states ([`TriggerUnit`]): one database transaction.
/// A claim is a row lock of the transaction (`FOR UPDATE SKIP LOCKED`; SQLite: the single writer
/// holds the whole unit), so it lasts exactly as long as the unit.
pub(super) struct JdbcTriggerUnit {
    pub(super) max_message_bytes: usize,
    pub(super) notifier: Arc<Notifier>,
    /// `None` once committed.
    pub(super) tx: Option<Transaction<'static, Db>>,
    /// Uids claimed or created by this unit.
    pub(super) held: BTreeSet<String>,
    pub(super) published: BTreeSet<Topic>,
}

impl JdbcTriggerUnit {
    fn conn(&mut self) -> Result<&mut Conn, QueueError> {
        match self.tx.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(QueueError::Closed),
        }
    }

    fn check_held(&self, operation: &'static str, uid: &str) -> Result<(), QueueError> {
        if self.held.contains(uid) {
            Ok(())
        } else {
            Err(QueueError::backend(
                operation,
                TriggerNotHeld {
                    uid: uid.to_string(),
                },
            ))
        }
    }
}

impl Drop for JdbcTriggerUnit {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        // A dropped sqlx transaction is only rolled back when its connection is used again, and
        // until then its row locks keep other schedulers' claims away: roll back now.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(error) = tx.rollback().await {
                        tracing::debug!(%error, "cannot roll back a dropped trigger unit");
                    }
                });
            }
            Err(_) => drop(tx),
        }
    }
}

fn trigger_of(row: &DbRow, operation: &'static str) -> Result<TriggerState, QueueError> {
    parse_doc(row, "trigger", "uid", operation).map_err(|e| QueueError::backend(operation, e))
}

/// The columns of a trigger state row, in the order of [`push_trigger_values`].
const TRIGGER_COLUMNS: &str =
    "uid, tenant_id, namespace, flow_id, trigger_id, disabled, next_execution_date, updated, doc";

fn push_trigger_values(qb: &mut Qb, t: &TriggerState, doc: String) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    sep.push_bind(t.uid())
        .push_bind(t.tenant_id.clone())
        .push_bind(t.namespace.clone())
        .push_bind(t.flow_id.clone())
        .push_bind(t.trigger_id.clone())
        .push_bind(t.disabled)
        .push_bind(t.next_execution_date.map(to_ms))
        .push_bind(to_ms(t.updated_date))
        .push_bind(doc);
    qb.push(")");
}

fn trigger_json(operation: &'static str, t: &TriggerState) -> Result<String, QueueError> {
    serde_json::to_string(t)
        .map_err(|source| QueueError::Encode {
            topic: Topic::Trigger,
            source,
        })
        .map_err(|e| QueueError::backend(operation, e))
}

#[async_trait]
impl TriggerUnit for JdbcTriggerUnit {
    async fn states(&mut self, tenant: &str) -> Result<Vec<TriggerState>, QueueError> {
        let conn = self.conn()?;
        let rows = Qb::new("SELECT t.uid, t.doc FROM triggers t WHERE t.tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" ORDER BY t.uid")
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(queue_err("list trigger states"))?;
        rows.iter()
            .map(|r| trigger_of(r, "list trigger states"))
            .collect()
    }

    async fn claim_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TriggerState>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let err = queue_err("claim due triggers");
        let held: Vec<String> = self.held.iter().cloned().collect();
        let conn = self.conn()?;
        let mut qb = Qb::new(
            "SELECT t.uid, t.doc FROM triggers t WHERE t.disabled = FALSE AND t.next_execution_date IS NOT NULL AND t.next_execution_date <= ",
        );
        qb.push_bind(to_ms(now));
        if !held.is_empty() {
            // This unit's own locks do not make it skip a row: name what it holds already.
            qb.push(" AND t.uid NOT IN ");
            push_in(&mut qb, held);
        }
        qb.push(" ORDER BY t.next_execution_date, t.uid");
        push_limit(&mut qb, i64::try_from(limit).unwrap_or(i64::MAX));
        qb.push(FLAVOR.skip_locked("t"));
        let rows = qb.build().fetch_all(&mut *conn).await.map_err(&err)?;
        let claimed = rows
            .iter()
            .map(|r| trigger_of(r, "claim due triggers"))
            .collect::<Result<Vec<_>, _>>()?;
        self.held.extend(claimed.iter().map(TriggerState::uid));
        Ok(claimed)
    }

    async fn claim(&mut self, uid: &str) -> Result<Option<TriggerState>, QueueError> {
        let err = queue_err("claim trigger");
        let already = self.held.contains(uid);
        let conn = self.conn()?;
        let mut qb = Qb::new("SELECT t.uid, t.doc FROM triggers t WHERE t.uid = ");
        qb.push_bind(uid.to_string());
        if !already {
            qb.push(FLAVOR.skip_locked("t"));
        }
        let row = qb.build().fetch_optional(&mut *conn).await.map_err(&err)?;
        let Some(row) = row else { return Ok(None) };
        let state = trigger_of(&row, "claim trigger")?;
        self.held.insert(uid.to_string());
        Ok(Some(state))
    }

    async fn create(&mut self, state: &TriggerState) -> Result<bool, QueueError> {
        let uid = state.uid();
        let doc = trigger_json("create trigger", state)?;
        let conn = self.conn()?;
        let mut qb = Qb::new(match FLAVOR {
            crate::common::Flavor::MySql => "INSERT IGNORE INTO triggers (",
            _ => "INSERT INTO triggers (",
        });
        qb.push(TRIGGER_COLUMNS).push(") VALUES ");
        push_trigger_values(&mut qb, state, doc);
        if FLAVOR != crate::common::Flavor::MySql {
            qb.push(" ON CONFLICT (uid) DO NOTHING");
        }
        let done = qb
            .build()
            .execute(&mut *conn)
            .await
            .map_err(queue_err("create trigger"))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.held.insert(uid);
        Ok(true)
    }

    async fn save(&mut self, t: &TriggerState) -> Result<(), QueueError> {
        let uid = t.uid();
        self.check_held("save trigger", &uid)?;
        let doc = trigger_json("save trigger", t)?;
        let conn = self.conn()?;
        Qb::new("UPDATE triggers SET disabled = ")
            .push_bind(t.disabled)
            .push(", next_execution_date = ")
            .push_bind(t.next_execution_date.map(to_ms))
            .push(", updated = ")
            .push_bind(to_ms(t.updated_date))
            .push(", doc = ")
            .push_bind(doc)
            .push(" WHERE uid = ")
            .push_bind(uid)
            .build()
            .execute(&mut *conn)
            .await
            .map_err(queue_err("save trigger"))?;
        Ok(())
    }

    async fn delete(&mut self, uid: &str) -> Result<(), QueueError> {
        self.check_held("delete trigger", uid)?;
        let conn = self.conn()?;
        Qb::new("DELETE FROM triggers WHERE uid = ")
            .push_bind(uid.to_string())
            .build()
            .execute(&mut *conn)
            .await
            .map_err(queue_err("delete trigger"))?;
        Ok(())
    }

    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        check_publish(&messages, self.max_message_bytes)?;
        let notifier = self.notifier.clone();
        let conn = self.conn()?;
        publish_in(conn, &messages, &notifier)
            .await
            .map_err(queue_err("publish"))?;
        self.published.extend(messages.iter().map(|m| m.topic));
        Ok(())
    }

    async fn ack(&mut self, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        let conn = self.conn()?;
        for chunk in tags.chunks(CHUNK) {
            let mut qb = Qb::new("DELETE FROM queue WHERE group_name = ");
            qb.push_bind(ConsumerGroup::Scheduler.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().map(|t| t.offset));
            qb.build()
                .execute(&mut *conn)
                .await
                .map_err(queue_err("ack"))?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), QueueError> {
        let Some(tx) = self.tx.take() else {
            return Err(QueueError::Closed);
        };
        tx.commit().await.map_err(queue_err("commit triggers"))?;
        for t in std::mem::take(&mut self.published) {
            self.notifier.notify(t);
        }
        Ok(())
    }
}
