//! The executor's [`UnitOfWork`]: one transaction over the rows it claimed, the executions and keyed
//! state it loads and saves, and the messages it stages.

use super::task_runs::{StoredRuns, complete_in, encode, write_in};
use super::*;

/// One database transaction over claimed rows (see the module documentation). Executions and
/// executor state are read and written only under the keys of `deliveries`.
pub(super) struct JdbcUnit {
    pub(super) max_message_bytes: usize,
    pub(super) notifier: Arc<Notifier>,
    pub(super) write: Pool<Db>,
    /// `None` once committed.
    pub(super) tx: Option<Transaction<'static, Db>>,
    /// The token of the committed claim of `deliveries`.
    pub(super) token: String,
    /// Set once the transaction committed (a failed or missing commit releases the claim).
    pub(super) committed: bool,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) dead: HashSet<i64>,
    pub(super) published: BTreeSet<Topic>,
    /// SQLite: the messages staged by [`UnitOfWork::publish`], inserted at commit in the call
    /// that acknowledges the claimed rows (see [`claims::push_publish`](super::claims)).
    pub(super) staged: Vec<Envelope>,
    /// The task runs stored for each execution this unit loaded or saved, as of that load or
    /// save: what its next save diffs against ([`super::task_runs`]).
    pub(super) stored: HashMap<String, Arc<StoredRuns>>,
    /// The testkit's planned transaction fault (see [`crate::testkit`]).
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub(super) fault: Fault,
}

impl JdbcUnit {
    fn conn(&mut self) -> Result<&mut Conn, QueueError> {
        match self.tx.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(QueueError::Closed),
        }
    }

    /// Fail the transaction here when the testkit planned its fault at `point`.
    #[cfg(feature = "testkit")]
    async fn fault_point(
        &mut self,
        point: crate::testkit::TxnPoint,
        operation: &'static str,
    ) -> Result<(), QueueError> {
        if self.fault != Some(point) {
            return Ok(());
        }
        self.fault = None;
        let conn = self.conn()?;
        super::faults::inject(conn, point)
            .await
            .map_err(queue_err(operation))
    }
}

impl Drop for JdbcUnit {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Dropping the transaction rolls it back; the claim was committed before it (with its
        // delivery attempt): release it, so that the rows are claimable again at once, and wake
        // the consumers.
        drop(self.tx.take());
        let ids: Vec<i64> = self.deliveries.iter().map(|d| d.tag.offset).collect();
        let topics: BTreeSet<Topic> = self.deliveries.iter().map(|d| d.envelope.topic).collect();
        let pool = self.write.clone();
        let notifier = self.notifier.clone();
        let token = std::mem::take(&mut self.token);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(error) = release_claimed(&pool, &ids, &token).await {
                    tracing::debug!(%error, "cannot release the claim of a rolled-back unit of work; its messages come back when the lease ends");
                }
                for t in topics {
                    notifier.notify(t);
                }
            });
        }
    }
}

#[async_trait]
impl UnitOfWork for JdbcUnit {
    fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    async fn load_execution(&mut self, id: &str) -> Result<Option<Execution>, QueueError> {
        Ok(match self.load_execution_unless(id, None).await? {
            LoadedExecution::Loaded(execution, _) => Some(*execution),
            LoadedExecution::Missing | LoadedExecution::Unchanged => None,
        })
    }

    async fn load_execution_unless(
        &mut self,
        id: &str,
        known: Option<&ExecutionStamp>,
    ) -> Result<LoadedExecution, QueueError> {
        check_claimed(&self.deliveries, || "load execution".into(), id)?;
        #[cfg(feature = "testkit")]
        self.fault_point(crate::testkit::TxnPoint::Load, "load_execution")
            .await?;
        let conn = self.conn()?;
        let row = Qb::new("SELECT doc, task_runs, revision FROM executions WHERE id = ")
            .push_bind(id.to_string())
            .push(FLAVOR.for_update())
            .build()
            .fetch_optional(&mut *conn)
            .await
            .map_err(queue_err("load_execution"))?;
        let Some(row) = row else {
            self.stored.remove(id);
            return Ok(LoadedExecution::Missing);
        };
        let revision: String = get(&row, "revision").map_err(queue_err("load_execution"))?;
        // The revision, read under the row lock, is written anew by every write of the row,
        // whoever makes it (another executor, the repository, a delete): equal revisions, equal
        // execution, whatever its version.
        if let Some(known) = known.and_then(ExecutionStamp::get::<StoredRuns>)
            && !revision.is_empty()
            && known.revision == revision
        {
            self.stored.insert(id.to_string(), known);
            return Ok(LoadedExecution::Unchanged);
        }
        let doc: String = get(&row, "doc").map_err(queue_err("load_execution"))?;
        let count: Option<i64> = get(&row, "task_runs").map_err(queue_err("load_execution"))?;
        let (execution, stored) = complete_in(conn, id, &doc, count, revision)
            .await
            .map_err(|e| e.into_queue("load_execution"))?;
        let len = doc.len() + stored.sizes.iter().sum::<usize>();
        let stored = Arc::new(stored);
        self.stored.insert(id.to_string(), stored.clone());
        Ok(LoadedExecution::Loaded(
            Box::new(execution),
            Some(stored.stamp(len)),
        ))
    }

    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError> {
        self.save_execution_stamped(&mut execution.clone())
            .await
            .map(|_| ())
    }

    async fn save_execution_stamped(
        &mut self,
        execution: &mut Execution,
    ) -> Result<Option<ExecutionStamp>, QueueError> {
        self.save_execution_changed(execution, None).await
    }

    async fn save_execution_changed(
        &mut self,
        execution: &mut Execution,
        changed: Option<&[usize]>,
    ) -> Result<Option<ExecutionStamp>, QueueError> {
        check_claimed(&self.deliveries, || "save execution".into(), &execution.id)?;
        // Only the task runs that differ from the stored ones are encoded and written.
        let before = self.stored.get(&execution.id).cloned();
        let encoded =
            encode(execution, before.as_deref(), changed).map_err(|source| QueueError::Encode {
                topic: Topic::Execution,
                source,
            })?;
        let len = encoded.document_len();
        check_execution_len(&execution.id, len, self.max_message_bytes)?;
        #[cfg(feature = "testkit")]
        self.fault_point(crate::testkit::TxnPoint::Save, "save_execution")
            .await?;
        let conn = self.conn()?;
        // What is stored once this unit commits (a second save in this unit diffs against it).
        let stored = Arc::new(
            write_in(conn, execution, encoded)
                .await
                .map_err(queue_err("save_execution"))?,
        );
        self.stored.insert(execution.id.clone(), stored.clone());
        Ok(Some(stored.stamp(len)))
    }

    async fn load_state(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, QueueError> {
        check_claimed(&self.deliveries, || format!("load state {kind}"), key)?;
        let conn = self.conn()?;
        // Make sure the row exists before locking it: `SELECT ... FOR UPDATE` on a missing row locks
        // nothing (READ COMMITTED on MySQL, any isolation on PostgreSQL), so two executors could both
        // create the entry and one would overwrite the other. The no-op upsert creates a `null`
        // placeholder or locks the existing row; a concurrent unit waits on the key until we commit.
        // SQLite needs none: a unit's transaction holds the database's write lock from its start
        // (`BEGIN IMMEDIATE`), so no other unit writes until it commits.
        if FLAVOR != crate::common::Flavor::Sqlite {
            let mut placeholder =
                Qb::new("INSERT INTO executor_state (kind, state_key, updated, doc) VALUES (");
            placeholder
                .push_bind(kind.to_string())
                .push(", ")
                .push_bind(key.to_string())
                .push(", ")
                .push_bind(now_ms())
                .push(", 'null')")
                .push(FLAVOR.upsert(&["kind", "state_key"], &["kind"]));
            placeholder
                .build()
                .execute(&mut *conn)
                .await
                .map_err(queue_err("load_state"))?;
        }
        let row = Qb::new("SELECT doc FROM executor_state WHERE kind = ")
            .push_bind(kind.to_string())
            .push(" AND state_key = ")
            .push_bind(key.to_string())
            .push(FLAVOR.for_update())
            .build()
            .fetch_optional(&mut *conn)
            .await
            .map_err(queue_err("load_state"))?;
        let Some(row) = row else { return Ok(None) };
        let doc: String = get(&row, "doc").map_err(queue_err("load_state"))?;
        serde_json::from_str::<serde_json::Value>(&doc)
            .map(|v| if v.is_null() { None } else { Some(v) })
            .map_err(|source| QueueError::Decode {
                topic: Topic::Execution,
                key: format!("{kind}/{key}"),
                source,
            })
    }

    async fn save_state(
        &mut self,
        kind: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), QueueError> {
        check_claimed(&self.deliveries, || format!("save state {kind}"), key)?;
        let err = queue_err("save_state");
        let conn = self.conn()?;
        match value {
            None => {
                Qb::new("DELETE FROM executor_state WHERE kind = ")
                    .push_bind(kind.to_string())
                    .push(" AND state_key = ")
                    .push_bind(key.to_string())
                    .build()
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
            }
            Some(v) => {
                let mut qb =
                    Qb::new("INSERT INTO executor_state (kind, state_key, updated, doc) VALUES (");
                qb.push_bind(kind.to_string())
                    .push(", ")
                    .push_bind(key.to_string())
                    .push(", ")
                    .push_bind(now_ms())
                    .push(", ")
                    .push_bind(v.to_string())
                    .push(")")
                    .push(FLAVOR.upsert(&["kind", "state_key"], &["updated", "doc"]));
                qb.build().execute(&mut *conn).await.map_err(err)?;
            }
        }
        Ok(())
    }

    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        check_staged(&messages, self.max_message_bytes)?;
        self.published.extend(messages.iter().map(|m| m.topic));
        if FLAVOR == crate::common::Flavor::Sqlite {
            // Nothing in the unit reads them back: they are inserted at commit, with the
            // acknowledgement (one call).
            self.staged.extend(messages);
            return Ok(());
        }
        let conn = self.conn()?;
        publish_in(conn, &messages)
            .await
            .map_err(queue_err("publish"))?;
        Ok(())
    }

    async fn dead_letter(&mut self, tag: DeliveryTag, reason: &str) -> Result<(), QueueError> {
        let Some(d) = self.deliveries.iter().find(|d| d.tag == tag).cloned() else {
            return Err(QueueError::LeaseLost { tag });
        };
        let conn = self.conn()?;
        dead_letter_in(
            conn,
            d.tag.offset,
            d.envelope.topic.as_str(),
            d.group.as_str(),
            Some(&d.envelope.key),
            Some(&d.envelope.payload),
            reason,
        )
        .await
        .map_err(queue_err("dead_letter"))?;
        self.dead.insert(tag.offset);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), QueueError> {
        let err = queue_err("commit");
        let ids: Vec<i64> = self
            .deliveries
            .iter()
            .map(|d| d.tag.offset)
            .filter(|id| !self.dead.contains(id))
            .collect();
        let token = self.token.clone();
        let staged = std::mem::take(&mut self.staged);
        let conn = self.conn()?;
        // Only rows still claimed by this unit are deleted; a row claimed by another consumer
        // since (its lease ended) refuses the unit, which is rolled back: the other consumer
        // processes the message. On PostgreSQL/MySQL the rows were locked when the unit began
        // (`lock_claimed`); on SQLite this is the check (see `Store::begin`), and the staged
        // messages are inserted in the same call when they fit (their rows counted apart).
        let mut together = Qb::new("");
        let inserted = if ids.len() <= CHUNK {
            push_publish(&mut together, &staged)
        } else {
            None
        };
        if inserted.is_none() {
            publish_in(&mut *conn, &staged).await.map_err(&err)?;
        }
        let mut deleted = 0;
        for (i, chunk) in ids.chunks(CHUNK).enumerate() {
            let mut own = Qb::new("");
            let qb = if i == 0 && inserted.is_some() {
                &mut together
            } else {
                &mut own
            };
            qb.push("DELETE FROM queue WHERE claimed_by = ");
            qb.push_bind(token.clone()).push(" AND id IN ");
            push_in(qb, chunk.iter().copied());
            deleted += qb
                .build()
                .execute(&mut *conn)
                .await
                .map_err(&err)?
                .rows_affected();
        }
        if ids.is_empty() && inserted.is_some_and(|n| n > 0) {
            together.build().execute(&mut *conn).await.map_err(&err)?;
        } else if let Some(n) = inserted
            && !ids.is_empty()
        {
            deleted = deleted.saturating_sub(n);
        }
        if deleted != ids.len() as u64 {
            return Err(QueueError::Fenced {
                detail: format!(
                    "{} of the unit's {} queue rows are claimed by another consumer now (their lease ended)",
                    ids.len() as u64 - deleted,
                    ids.len()
                ),
            });
        }
        #[cfg(feature = "testkit")]
        self.fault_point(crate::testkit::TxnPoint::Commit, "commit")
            .await?;
        let Some(tx) = self.tx.take() else {
            return Err(QueueError::Closed);
        };
        tx.commit().await.map_err(&err)?;
        self.committed = true;
        for t in std::mem::take(&mut self.published) {
            self.notifier.notify(t);
        }
        Ok(())
    }
}
