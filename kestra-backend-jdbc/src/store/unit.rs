//! The executor's [`UnitOfWork`]: one transaction over the rows it claimed, the executions and keyed
//! state it loads and saves, and the messages it stages.
//!
//! SQLite defers the transaction ([`Deferred`]): SQLite has a single writer, and a transaction
//! open from the unit's start held it while the executor processed the messages - every other
//! write (the worker's results, the next claims, new executions) waited for the executor's CPU
//! work. A deferred unit reads on a reader connection, keeps its writes as statements, and at
//! commit checks under the write lock that nothing it read changed since (the revisions of the
//! executions it read, its claim of the rows) before it writes everything: two calls on the
//! writer per unit. Executor state needs no check of its own: only a unit that holds the claim of
//! its key writes it, and a unit whose claim lapsed is refused by the claim check.

use super::task_runs::{StoredRuns, complete_in, encode_owned, push_write, stage_write, write_in};
use super::*;

/// SQLite's deferred unit (see the module documentation): what its transaction will check and
/// write when it commits, or when it needs the transaction sooner ([`JdbcUnit::materialize`]: a
/// read of something it wrote, a write that does not fit in one call, a dead letter).
pub(super) struct Deferred {
    /// The statements of the writes so far, each ended by `; `.
    writes: Qb,
    /// Whether `writes` holds a statement.
    any: bool,
    /// The executions read: id and revision (`None`: there was none), checked at commit.
    read: Vec<(String, Option<String>)>,
    /// The executions (id) and state entries (kind and key) written.
    written: HashSet<(String, String)>,
}

impl Deferred {
    pub(super) fn new() -> Deferred {
        Deferred {
            writes: Qb::new(""),
            any: false,
            read: Vec::new(),
            written: HashSet::new(),
        }
    }
}

/// The written-set entry of an execution.
fn execution_entry(id: &str) -> (String, String) {
    (String::new(), id.to_string())
}

/// Push, onto `qb`, the statement that reads the revisions of the executions of `read` (if any),
/// ended by `; `.
fn push_revisions(qb: &mut Qb, read: &[(String, Option<String>)]) {
    if read.is_empty() {
        return;
    }
    qb.push("SELECT id, revision FROM executions WHERE id IN ");
    push_in(qb, read.iter().map(|(id, _)| id.clone()));
    qb.push("; ");
}

/// Which execution of `read` changed since it was read, given the `rows` of
/// [`push_revisions`] (rows without a revision column are ignored): a detail for
/// [`QueueError::Fenced`].
fn changed_since(read: &[(String, Option<String>)], rows: &[DbRow]) -> Option<String> {
    let now: HashMap<String, Option<String>> = rows
        .iter()
        .filter_map(|row| {
            let id: String = get(row, "id").ok()?;
            let revision: Option<String> = get(row, "revision").ok()?;
            Some((id, revision))
        })
        .collect();
    read.iter().find_map(|(id, then)| {
        let current = now.get(id).cloned().flatten();
        let missing_then = then.is_none();
        let missing_now = !now.contains_key(id);
        (missing_then != missing_now || (!missing_now && current != *then)).then(|| {
            format!(
                "execution {id} was written by another writer (an API call) after this unit read it"
            )
        })
    })
}

/// The refusal of a unit some of whose claimed rows are claimed by another consumer now.
fn rows_lost(held: u64, ids: usize) -> QueueError {
    QueueError::Fenced {
        detail: format!(
            "{} of the unit's {} queue rows are claimed by another consumer now (their lease ended)",
            ids as u64 - held.min(ids as u64),
            ids
        ),
    }
}

/// One database transaction over claimed rows (see the module documentation). Executions and
/// executor state are read and written only under the keys of `deliveries`.
pub(super) struct JdbcUnit {
    pub(super) max_message_bytes: usize,
    pub(super) notifier: Arc<Notifier>,
    pub(super) write: Pool<Db>,
    /// The readers (a deferred unit reads there).
    pub(super) read: Pool<Db>,
    /// The open transaction; `None` once committed, and while the unit is deferred.
    pub(super) tx: Option<Transaction<'static, Db>>,
    /// SQLite: the deferred unit until its transaction opens (see the module documentation).
    pub(super) deferred: Option<Deferred>,
    /// The token of the committed claim of `deliveries`.
    pub(super) token: String,
    /// Set once the transaction committed (a failed or missing commit releases the claim).
    pub(super) committed: bool,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) dead: HashSet<i64>,
    pub(super) published: BTreeSet<Topic>,
    /// SQLite and PostgreSQL: the messages staged by [`UnitOfWork::publish`], inserted at commit
    /// with the acknowledgement of the claimed rows - SQLite in the same call
    /// ([`claims::push_publish`](super::claims)), PostgreSQL in the same statement when it fits
    /// ([`JdbcUnit::write_together`]; else [`publish_in`] before the acknowledgement).
    pub(super) staged: Vec<Envelope>,
    /// The task runs stored for each execution this unit loaded or saved, as of that load or
    /// save: what its next save diffs against ([`super::task_runs`]).
    pub(super) stored: HashMap<String, Arc<StoredRuns>>,
    /// The testkit's planned transaction fault (see [`crate::testkit`]).
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub(super) fault: Fault,
    /// Executions found not stored by [`UnitOfWork::prefetch_executions`] (and not saved by this
    /// unit since), whose load answers `Missing` without reading again.
    pub(super) missing: HashSet<String>,
    /// PostgreSQL and MySQL: the revisions of the executions [`UnitOfWork::prefetch_executions`]
    /// locked (and this unit has not saved since): a load given a stamp of that revision answers
    /// `Unchanged` without a read.
    pub(super) revisions: HashMap<String, String>,
    /// PostgreSQL and MySQL: the executions this unit loaded as not stored (and has not saved
    /// since): their first write inserts the row ([`super::batch`]).
    pub(super) created: HashSet<String>,
    /// PostgreSQL and MySQL: the executions saved and not written yet, written at commit.
    pub(super) pending: PendingSaves,
}

impl JdbcUnit {
    fn conn(&mut self) -> Result<&mut Conn, QueueError> {
        match self.tx.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(QueueError::Closed),
        }
    }

    /// Whether saves are staged and written at commit ([`super::batch`]): a unit with a
    /// transaction on PostgreSQL or MySQL (SQLite's writes go in one call already).
    fn batches(&self) -> bool {
        FLAVOR != crate::common::Flavor::Sqlite && self.deferred.is_none()
    }

    /// Write the staged saves now (a read of one of them, a second save, the commit).
    async fn write_pending(&mut self) -> Result<(), QueueError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.write(self.conn()?).await
    }

    /// Whether the deferred unit wrote `entry` (then a read of it needs the transaction).
    fn wrote(&self, entry: &(String, String)) -> bool {
        self.deferred
            .as_ref()
            .is_some_and(|d| d.written.contains(entry))
    }

    /// Open the deferred unit's transaction now: check that nothing it read changed, then run its
    /// writes so far in it; the unit goes on as a unit with a transaction. Nothing if it has one.
    async fn materialize(&mut self) -> Result<(), QueueError> {
        let Some(mut deferred) = self.deferred.take() else {
            return Ok(());
        };
        let err = queue_err("begin");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        for chunk in deferred.read.chunks(CHUNK) {
            let mut qb = Qb::new("");
            push_revisions(&mut qb, chunk);
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(&err)?;
            if let Some(detail) = changed_since(chunk, &rows) {
                return Err(QueueError::Fenced { detail });
            }
        }
        if deferred.any {
            deferred
                .writes
                .build()
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        self.tx = Some(tx);
        Ok(())
    }

    /// Commit a deferred unit: under the write lock, check its claim and what it read, then write
    /// everything and commit - two calls on the writer (see [`RawTx`]).
    async fn commit_deferred(
        &mut self,
        deferred: Deferred,
        ids: &[i64],
        staged: &[Envelope],
    ) -> Result<(), QueueError> {
        let err = queue_err("commit");
        let mut raw = RawTx::acquire(&self.write).await.map_err(&err)?;
        let mut check = Qb::new("BEGIN IMMEDIATE; ");
        push_revisions(&mut check, &deferred.read);
        check
            .push("SELECT COUNT(*) AS held FROM queue WHERE claimed_by = ")
            .push_bind(self.token.clone())
            .push(" AND id IN ");
        push_in(&mut check, ids.iter().copied());
        let rows = raw.fetch(&mut check).await.map_err(&err)?;
        let held = rows
            .iter()
            .find_map(|row| get::<i64>(row, "held").ok())
            .unwrap_or(0);
        if let Some(detail) = changed_since(&deferred.read, &rows) {
            raw.rollback().await;
            return Err(QueueError::Fenced { detail });
        }
        if u64::try_from(held).unwrap_or(0) != ids.len() as u64 {
            raw.rollback().await;
            return Err(rows_lost(u64::try_from(held).unwrap_or(0), ids.len()));
        }
        #[cfg(feature = "testkit")]
        if self.fault == Some(crate::testkit::TxnPoint::Commit) {
            self.fault = None;
            raw.rollback().await;
            return Err(err(super::faults::injected(
                crate::testkit::TxnPoint::Commit,
            )));
        }
        let mut writes = deferred.writes;
        if push_publish(&mut writes, staged).is_none() {
            // Too many rows for one statement: the writes so far, then the publish, apart.
            raw.execute(&mut writes).await.map_err(&err)?;
            publish_in(raw.conn().map_err(&err)?, staged, &self.notifier)
                .await
                .map_err(&err)?;
            writes = Qb::new("");
        }
        writes
            .push("DELETE FROM queue WHERE claimed_by = ")
            .push_bind(self.token.clone())
            .push(" AND id IN ");
        push_in(&mut writes, ids.iter().copied());
        writes.push("; ");
        raw.commit(writes).await.map_err(&err)?;
        Ok(())
    }

    /// PostgreSQL: the commit's writes - the staged saves, the staged messages and the deletion
    /// of the unit's queue rows `ids` - in one statement ([`PgWith`]; a statement per table and
    /// one for the deletion otherwise, each a round trip). `false`, with nothing written, when they
    /// do not fit in one: the caller writes them apart. The rows of `ids` were locked when the
    /// unit began; one claimed by another consumer since (its lease ended) refuses the unit.
    async fn write_together(
        &mut self,
        ids: &[i64],
        staged: &[Envelope],
    ) -> Result<bool, QueueError> {
        let err = queue_err("commit");
        let mut with = PgWith::new();
        if !push_publish_parts(&mut with, staged, &self.notifier.echo_mark()) {
            return Ok(false);
        }
        let created = if self.pending.is_empty() {
            Vec::new()
        } else {
            match self.pending.push_parts(&mut with) {
                Some(created) => created,
                None => return Ok(false),
            }
        };
        let qb = with.counted_part("acked");
        qb.push("DELETE FROM queue WHERE claimed_by = ")
            .push_bind(self.token.clone())
            .push(" AND id IN ");
        push_in(qb, ids.iter().copied());
        qb.push(" RETURNING 1");
        let Some(mut qb) = with.finish() else {
            return Ok(false);
        };
        let row = qb
            .build()
            .fetch_one(&mut *self.conn()?)
            .await
            .map_err(|e| batch::fenced_if_stored(e, &created).unwrap_or_else(&err))?;
        let deleted = u64::try_from(get::<i64>(&row, "acked").map_err(&err)?).unwrap_or(0);
        if deleted != ids.len() as u64 {
            return Err(rows_lost(deleted, ids.len()));
        }
        Ok(true)
    }

    /// MySQL: the commit's writes - the staged saves, the staged messages and the deletion of
    /// the unit's queue rows `ids` - in one text query ([`Text`]; a statement each otherwise,
    /// each a round trip), the `COMMIT` left to the caller. `false`, with nothing written, when
    /// they do not fit in one: the caller writes them apart. The rows of `ids` were locked when
    /// the unit began; one claimed by another consumer since (its lease ended) refuses the unit.
    async fn write_text(&mut self, ids: &[i64], staged: &[Envelope]) -> Result<bool, QueueError> {
        use futures::TryStreamExt;
        let err = queue_err("commit");
        let mut text = Text::default();
        if !push_text_publish(&mut text, staged, None) {
            return Ok(false);
        }
        let created = if self.pending.is_empty() {
            Vec::new()
        } else {
            match self.pending.push_text(&mut text) {
                Some(created) => created,
                None => return Ok(false),
            }
        };
        text.sql("DELETE FROM queue WHERE claimed_by = ")
            .text(&self.token)
            .sql(" AND id IN ")
            .ints(ids);
        // Each statement's result in turn: the last one is the deletion's.
        let results: Vec<_> = sqlx::raw_sql(sqlx::AssertSqlSafe(text.0))
            .fetch_many(&mut *self.conn()?)
            .try_collect()
            .await
            .map_err(|e| batch::fenced_if_stored(e, &created).unwrap_or_else(&err))?;
        let deleted = results
            .iter()
            .rev()
            .find_map(|r| match r {
                sqlx::Either::Left(done) => Some(done.rows_affected()),
                sqlx::Either::Right(_) => None,
            })
            .unwrap_or(0);
        if deleted != ids.len() as u64 {
            return Err(rows_lost(deleted, ids.len()));
        }
        Ok(true)
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
        if self.deferred.is_some() {
            return Err(queue_err(operation)(super::faults::injected(point)));
        }
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
        if self.wrote(&execution_entry(id)) {
            self.materialize().await?;
        }
        if self.pending.contains(id) {
            self.write_pending().await?;
        }
        // A deferred unit takes a known stamp as the stored execution without reading it: its
        // commit checks the revision under the write lock (a read now would check it too soon to
        // matter), and a unit fenced for it finds no stamp when its messages come back (the
        // executor's cache gives an execution to one unit at a time and keeps it only once
        // committed), so it reads then. One call on a reader saved per execution per unit.
        if let Some(deferred) = self.deferred.as_mut()
            && let Some(known) = known.and_then(ExecutionStamp::get::<StoredRuns>)
            && !known.revision.is_empty()
        {
            deferred
                .read
                .push((id.to_string(), Some(known.revision.clone())));
            self.stored.insert(id.to_string(), known);
            return Ok(LoadedExecution::Unchanged);
        }
        // A unit with a transaction locked the rows it prefetched: a stamp of the revision read
        // then describes the stored execution.
        if let Some(known) = known.and_then(ExecutionStamp::get::<StoredRuns>)
            && !known.revision.is_empty()
            && self.revisions.get(id) == Some(&known.revision)
        {
            self.stored.insert(id.to_string(), known);
            return Ok(LoadedExecution::Unchanged);
        }
        let read = if self.missing.remove(id) {
            Read::Missing
        } else if self.deferred.is_some() {
            let mut reader = self
                .read
                .acquire()
                .await
                .map_err(queue_err("load_execution"))?;
            read_execution(&mut reader, id, known).await?
        } else {
            read_execution(self.conn()?, id, known).await?
        };
        if let Some(deferred) = self.deferred.as_mut() {
            deferred.read.push((id.to_string(), read.revision()));
        }
        Ok(match read {
            Read::Missing => {
                // Nothing to delete when it is first written: no label or task run rows (the row
                // is checked still missing at commit on SQLite, and inserted, not replaced, on
                // PostgreSQL and MySQL; the unit holds the execution's key: no other executor
                // writes it meanwhile).
                if self.batches() {
                    self.created.insert(id.to_string());
                }
                self.stored
                    .insert(id.to_string(), Arc::new(StoredRuns::nothing()));
                LoadedExecution::Missing
            }
            Read::Unchanged(known) => {
                self.stored.insert(id.to_string(), known);
                LoadedExecution::Unchanged
            }
            Read::Loaded(execution, stored, len) => {
                self.stored.insert(id.to_string(), stored.clone());
                LoadedExecution::Loaded(execution, Some(stored.stamp(len)))
            }
        })
    }

    async fn prefetch_executions(
        &mut self,
        executions: &[(String, Option<ExecutionStamp>)],
    ) -> Result<(), QueueError> {
        for (id, _) in executions {
            check_claimed(&self.deliveries, || "prefetch executions".into(), id)?;
        }
        // A deferred unit reads on a reader which of them are stored, except those it holds a
        // stamp of (their loads take the stamp, see `load_execution_unless`): a stored one is
        // read when it is loaded; a missing one is checked still missing at commit. A unit with
        // a transaction locks the stored ones (`FOR UPDATE`) and keeps their revisions; a missing
        // row locks nothing, and is inserted, not replaced, at commit ([`super::batch`]). An
        // execution this unit wrote is left to its load (its row is not written yet, or read in
        // the unit's transaction).
        let deferred = self.deferred.is_some();
        let ids: Vec<String> = executions
            .iter()
            .filter(|(id, known)| {
                let stamped = known
                    .as_ref()
                    .and_then(ExecutionStamp::get::<StoredRuns>)
                    .is_some_and(|k| !k.revision.is_empty());
                let left_to_load = (deferred && stamped)
                    || self.wrote(&execution_entry(id))
                    || self.pending.contains(id);
                !left_to_load
            })
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let err = queue_err("prefetch_executions");
        let mut reader = match self.deferred {
            Some(_) => Some(self.read.acquire().await.map_err(&err)?),
            None => None,
        };
        let conn = match reader.as_mut() {
            Some(reader) => &mut **reader,
            None => self.conn()?,
        };
        let mut stored = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("SELECT id, revision FROM executions WHERE id IN ");
            push_in(&mut qb, chunk.iter().cloned());
            qb.push(" ORDER BY id").push(FLAVOR.for_update());
            let rows: Vec<(String, Option<String>)> = qb
                .build_query_as()
                .fetch_all(&mut *conn)
                .await
                .map_err(&err)?;
            stored.extend(rows);
        }
        for id in ids {
            match stored.remove(&id) {
                None => {
                    self.missing.insert(id);
                }
                Some(Some(revision)) if !deferred && !revision.is_empty() => {
                    self.revisions.insert(id, revision);
                }
                Some(_) => {}
            }
        }
        Ok(())
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
        // Written here: a later load reads it (in this unit's writes), whatever a prefetch found.
        self.missing.remove(&execution.id);
        self.revisions.remove(&execution.id);
        if self.pending.contains(&execution.id) {
            self.write_pending().await?;
        }
        // Only the task runs that differ from the stored ones are encoded and written; what is
        // stored is taken (updated in place when nothing else holds it) and put back once written
        // (an error here drops the unit).
        let before = self.stored.remove(&execution.id);
        let encoded =
            encode_owned(execution, before, changed).map_err(|source| QueueError::Encode {
                topic: Topic::Execution,
                source,
            })?;
        let len = encoded.document_len();
        check_execution_len(&execution.id, len, self.max_message_bytes)?;
        #[cfg(feature = "testkit")]
        self.fault_point(crate::testkit::TxnPoint::Save, "save_execution")
            .await?;
        let encoded = match self.deferred.as_mut() {
            Some(deferred) => match push_write(&mut deferred.writes, execution, encoded) {
                Ok(stored) => {
                    deferred.any = true;
                    deferred.written.insert(execution_entry(&execution.id));
                    let stored = Arc::new(stored);
                    self.stored.insert(execution.id.clone(), stored.clone());
                    return Ok(Some(stored.stamp(len)));
                }
                Err(encoded) => {
                    self.materialize().await?;
                    encoded
                }
            },
            None => encoded,
        };
        if self.batches() {
            let created = self.created.remove(&execution.id);
            let stored = Arc::new(stage_write(&mut self.pending, execution, encoded, created));
            self.stored.insert(execution.id.clone(), stored.clone());
            return Ok(Some(stored.stamp(len)));
        }
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
        if self.wrote(&(kind.to_string(), key.to_string())) {
            self.materialize().await?;
        }
        let mut reader = match self.deferred {
            Some(_) => Some(self.read.acquire().await.map_err(queue_err("load_state"))?),
            None => None,
        };
        let conn = match reader.as_mut() {
            Some(reader) => &mut **reader,
            None => self.conn()?,
        };
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
        if let Some(deferred) = self.deferred.as_mut() {
            push_save_state(&mut deferred.writes, kind, key, value);
            deferred.writes.push("; ");
            deferred.any = true;
            deferred.written.insert((kind.to_string(), key.to_string()));
            return Ok(());
        }
        let conn = self.conn()?;
        let mut qb = Qb::new("");
        push_save_state(&mut qb, kind, key, value);
        qb.build().execute(&mut *conn).await.map_err(err)?;
        Ok(())
    }

    async fn publish(&mut self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        check_staged(&messages, self.max_message_bytes)?;
        self.published.extend(messages.iter().map(|m| m.topic));
        // Nothing in the unit reads them back: they are inserted at commit, with the
        // acknowledgement (SQLite: in one call; PostgreSQL: in one statement; MySQL: in one text
        // query).
        self.staged.extend(messages);
        Ok(())
    }

    async fn dead_letter(&mut self, tag: DeliveryTag, reason: &str) -> Result<(), QueueError> {
        let Some(d) = self.deliveries.iter().find(|d| d.tag == tag).cloned() else {
            return Err(QueueError::LeaseLost { tag });
        };
        self.materialize().await?;
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
        if let Some(deferred) = self.deferred.take() {
            if ids.len() <= CHUNK && deferred.read.len() <= CHUNK && !ids.is_empty() {
                self.commit_deferred(deferred, &ids, &staged).await?;
                self.committed = true;
                for t in std::mem::take(&mut self.published) {
                    self.notifier.notify(t);
                }
                return Ok(());
            }
            self.deferred = Some(deferred);
            self.materialize().await?;
        }
        let together = !ids.is_empty()
            && ids.len() <= CHUNK
            && match FLAVOR {
                crate::common::Flavor::Postgres => self.write_together(&ids, &staged).await?,
                crate::common::Flavor::MySql => self.write_text(&ids, &staged).await?,
                crate::common::Flavor::Sqlite => false,
            };
        if !together {
            self.write_pending().await?;
            let notifier = self.notifier.clone();
            let conn = self.conn()?;
            // Only rows still claimed by this unit are deleted; a row claimed by another consumer
            // since (its lease ended) refuses the unit, which is rolled back: the other consumer
            // processes the message. On PostgreSQL/MySQL the rows were locked when the unit began
            // (`lock_claimed`); on SQLite this is the check (see `Store::begin`), and the staged
            // messages are inserted in the same call when they fit (their rows counted apart).
            let mut together = Qb::new("");
            // SQLite runs the statements of one string in turn; elsewhere each is its own call.
            let inserted = if FLAVOR == crate::common::Flavor::Sqlite && ids.len() <= CHUNK {
                push_publish(&mut together, &staged)
            } else {
                None
            };
            if inserted.is_none() {
                publish_in(&mut *conn, &staged, &notifier)
                    .await
                    .map_err(&err)?;
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
                return Err(rows_lost(deleted, ids.len()));
            }
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

/// What [`read_execution`] found.
enum Read {
    Missing,
    /// The revision of the execution the caller knows (its stored task runs).
    Unchanged(Arc<StoredRuns>),
    /// The execution, its stored task runs and its document's length.
    Loaded(Box<Execution>, Arc<StoredRuns>, usize),
}

impl Read {
    /// The revision read (`None`: no execution).
    fn revision(&self) -> Option<String> {
        match self {
            Read::Missing => None,
            Read::Unchanged(stored) | Read::Loaded(_, stored, _) => Some(stored.revision.clone()),
        }
    }
}

/// Read execution `id` on `conn` (locked `FOR UPDATE` where there are locks), unless its revision
/// is `known`'s.
async fn read_execution(
    conn: &mut Conn,
    id: &str,
    known: Option<&ExecutionStamp>,
) -> Result<Read, QueueError> {
    let row = Qb::new("SELECT doc, task_runs, revision FROM executions WHERE id = ")
        .push_bind(id.to_string())
        .push(FLAVOR.for_update())
        .build()
        .fetch_optional(&mut *conn)
        .await
        .map_err(queue_err("load_execution"))?;
    let Some(row) = row else {
        return Ok(Read::Missing);
    };
    let revision: String = get(&row, "revision").map_err(queue_err("load_execution"))?;
    // The revision, read under the row lock, is written anew by every write of the row,
    // whoever makes it (another executor, the repository, a delete): equal revisions, equal
    // execution, whatever its version.
    if let Some(known) = known.and_then(ExecutionStamp::get::<StoredRuns>)
        && !revision.is_empty()
        && known.revision == revision
    {
        return Ok(Read::Unchanged(known));
    }
    let doc: String = get(&row, "doc").map_err(queue_err("load_execution"))?;
    let count: Option<i64> = get(&row, "task_runs").map_err(queue_err("load_execution"))?;
    let (execution, stored) = complete_in(conn, id, &doc, count, revision)
        .await
        .map_err(|e| e.into_queue("load_execution"))?;
    let len = doc.len() + stored.sizes.iter().sum::<usize>();
    Ok(Read::Loaded(Box::new(execution), Arc::new(stored), len))
}

/// Push the statement of [`UnitOfWork::save_state`] onto `qb` (no `; `).
fn push_save_state(qb: &mut Qb, kind: &str, key: &str, value: Option<&serde_json::Value>) {
    match value {
        None => {
            qb.push("DELETE FROM executor_state WHERE kind = ")
                .push_bind(kind.to_string())
                .push(" AND state_key = ")
                .push_bind(key.to_string());
        }
        Some(v) => {
            qb.push("INSERT INTO executor_state (kind, state_key, updated, doc) VALUES (")
                .push_bind(kind.to_string())
                .push(", ")
                .push_bind(key.to_string())
                .push(", ")
                .push_bind(now_ms())
                .push(", ")
                .push_bind(v.to_string())
                .push(")")
                .push(FLAVOR.upsert(&["kind", "state_key"], &["updated", "doc"]));
        }
    }
}
