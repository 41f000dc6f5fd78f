//! The queue and the repositories over one dialect's pools. This file is compiled once per enabled
//! dialect (as `sqlite::store`, `postgres::store`, `mysql::store`): the parent module supplies the
//! sqlx database type `Db`, the SQL flavour `FLAVOR` and `begin_write`, and the few statements that
//! differ are chosen by `FLAVOR`.
//!
//! Pools: `write` carries every write and every transaction, `read` the repository searches. On SQLite
//! `write` has exactly one connection (the single writer: claims never deadlock, `BEGIN IMMEDIATE`) and
//! `read` several (WAL readers); on PostgreSQL and MySQL both are the same pool. A [`UnitOfWork`] holds
//! a pooled connection for its whole life, so the pool must be larger than the number of concurrent
//! units plus the other traffic (see `JdbcOptions::max_connections`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kestra_core::model::{
    Execution, Label, Level, LogEntry, MetricEntry, ServiceInstance, TriggerState,
};
use kestra_core::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueCapabilities, QueueError, Recorder,
    Subscription, Topic, TriggerNotHeld, TriggerUnit, UnitOfWork, check_claimed,
    check_execution_size, check_publish, check_staged,
};
use kestra_core::repository::{
    EXECUTION_SORT_FIELDS, ExecutionQuery, ExecutionRepository, FLOW_SORT_FIELDS, FlowQuery,
    FlowRecord, FlowRepository, LOG_SORT_FIELDS, LogQuery, LogRepository, MetricRepository, Page,
    Pageable, PurgeCount, RepoResult, RepositoryError, SaveOutcome, ServiceInstanceRepository,
    TRIGGER_SORT_FIELDS, TriggerQuery, TriggerRepository,
};
use sqlx::{Pool, QueryBuilder, Row, Transaction};
use tokio::task::JoinHandle;

use super::{Db, FLAVOR, begin_write};
use crate::common::{
    LIKE_ESCAPE, Notifier, duration_ms, execution_sort_column, flow_sort_column, from_ms,
    level_rank, like_children, like_contains, log_sort_column, now_ms, order_by, to_ms,
    trigger_sort_column,
};
use crate::error::JdbcError;

type Conn = <Db as sqlx::Database>::Connection;
type DbRow = <Db as sqlx::Database>::Row;
type Qb = QueryBuilder<Db>;

/// Rows per multi-row INSERT / ids per `IN (...)` list (well under every dialect's bind limit).
const CHUNK: usize = 500;
/// Lease of the rows a unit of work claims (they are also locked by its transaction).
const UOW_LEASE: Duration = Duration::from_secs(60);
/// Broadcast rows are kept this long, then purged.
pub(crate) const BROADCAST_RETENTION: Duration = Duration::from_secs(60);
/// How often the maintenance task purges old broadcast rows.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);
/// Polling backoff bounds (the fallback wake-up, and the only one on MySQL).
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(500);
/// At most this many keys with a live claim are excluded from a claim scan by name.
const BLOCKED_KEYS_MAX: usize = 1000;
/// Transient errors (deadlock, busy) are retried this many times.
const RETRIES: u32 = 5;

fn queue_err(operation: &'static str) -> impl Fn(sqlx::Error) -> QueueError {
    move |source| QueueError::backend(operation, JdbcError::Database { operation, source })
}

fn repo_err(operation: &'static str) -> impl Fn(sqlx::Error) -> RepositoryError {
    move |source| RepositoryError::backend(operation, JdbcError::Database { operation, source })
}

/// Deadlocks and serialization failures (SQLSTATE 40001 / 40P01; MySQL reports its deadlocks as
/// 40001) and SQLite's busy/locked codes: worth a retry.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "261" | "517")
        ),
        _ => false,
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1))).await;
}

fn get<T>(row: &DbRow, column: &str) -> Result<T, sqlx::Error>
where
    for<'r> T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get(column)
}

fn corrupt(entity: &'static str, id: &str) -> impl FnOnce(serde_json::Error) -> RepositoryError {
    let id = id.to_string();
    move |source| RepositoryError::Corrupt { entity, id, source }
}

fn to_json<T: serde::Serialize>(entity: &'static str, id: &str, value: &T) -> RepoResult<String> {
    serde_json::to_string(value).map_err(corrupt(entity, id))
}

/// Push `(v1, v2, ...)` binds separated by commas.
fn push_in<T>(qb: &mut Qb, values: impl IntoIterator<Item = T>)
where
    for<'t> T: sqlx::Encode<'t, Db> + sqlx::Type<Db>,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    qb.push(")");
}

/// The queue and repositories of one database.
pub(crate) struct Store {
    pub(crate) write: Pool<Db>,
    pub(crate) read: Pool<Db>,
    pub(crate) notifier: Arc<Notifier>,
    /// The largest payload (and execution document) accepted, in bytes.
    max_message_bytes: usize,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Kept alive as long as the store (e.g. the temporary file of an in-memory SQLite database).
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Store {
    /// A store over migrated pools; starts the broadcast purge task.
    pub(crate) fn new(
        write: Pool<Db>,
        read: Pool<Db>,
        notifier: Arc<Notifier>,
        guard: Option<Box<dyn std::any::Any + Send + Sync>>,
        max_message_bytes: usize,
    ) -> Arc<Store> {
        let store = Arc::new(Store {
            write,
            read,
            notifier,
            max_message_bytes,
            tasks: std::sync::Mutex::new(Vec::new()),
            _guard: guard,
        });
        let weak = Arc::downgrade(&store);
        store.add_task(tokio::spawn(maintenance(weak)));
        store
    }

    /// Keep a background task; it is aborted when the store drops.
    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    /// Delete broadcast rows older than the retention; returns how many.
    pub(crate) async fn purge_broadcast(&self) -> Result<u64, sqlx::Error> {
        let cutoff = now_ms() - duration_ms(BROADCAST_RETENTION);
        let done = Qb::new("DELETE FROM queue_broadcast WHERE created_at < ")
            .push_bind(cutoff)
            .build()
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    /// Row counts of the queue tables.
    pub(crate) async fn stats(&self) -> Result<crate::QueueStats, sqlx::Error> {
        let mut counts = [0u64; 3];
        for (slot, table) in
            counts
                .iter_mut()
                .zip(["queue", "queue_dead_letter", "queue_broadcast"])
        {
            let row = Qb::new(format!("SELECT COUNT(*) AS c FROM {table}"))
                .build()
                .fetch_one(&self.read)
                .await?;
            *slot = u64::try_from(get::<i64>(&row, "c")?).unwrap_or(0);
        }
        Ok(crate::QueueStats {
            queued: counts[0],
            dead_letters: counts[1],
            broadcast: counts[2],
        })
    }

    /// Close the pools (pending units of work fail).
    pub(crate) async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Offline queue maintenance on a raw pool (no migrations, no engine): drop dead letters, expired
/// broadcast rows and rows of unknown topics or groups, then compact the tables.
pub(crate) async fn purge_offline(pool: &Pool<Db>) -> Result<crate::PurgeReport, sqlx::Error> {
    let dead_letters = Qb::new("DELETE FROM queue_dead_letter")
        .build()
        .execute(pool)
        .await?
        .rows_affected();
    let broadcast = Qb::new("DELETE FROM queue_broadcast WHERE created_at < ")
        .push_bind(now_ms() - duration_ms(BROADCAST_RETENTION))
        .build()
        .execute(pool)
        .await?
        .rows_affected();
    let mut qb = Qb::new("DELETE FROM queue WHERE topic NOT IN ");
    push_in(&mut qb, Topic::ALL.iter().map(|t| t.as_str()));
    qb.push(" OR group_name NOT IN ");
    push_in(&mut qb, ConsumerGroup::ALL.iter().map(|g| g.as_str()));
    let unroutable = qb.build().execute(pool).await?.rows_affected();
    let compact = match FLAVOR {
        crate::common::Flavor::Sqlite => "VACUUM",
        crate::common::Flavor::Postgres => {
            "VACUUM ANALYZE queue, queue_broadcast, queue_dead_letter"
        }
        crate::common::Flavor::MySql => "OPTIMIZE TABLE queue, queue_broadcast, queue_dead_letter",
    };
    Qb::new(compact).build().execute(pool).await?;
    Ok(crate::PurgeReport {
        dead_letters,
        broadcast,
        unroutable,
    })
}

async fn maintenance(store: Weak<Store>) {
    loop {
        tokio::time::sleep(MAINTENANCE_EVERY).await;
        let Some(store) = store.upgrade() else { return };
        if let Err(error) = store.purge_broadcast().await {
            tracing::warn!(%error, "cannot purge old broadcast rows");
        }
    }
}

// ------------------------------------------------------------------------------------------ queue SQL

/// Insert the rows of `messages`: one queue row per consumer group of its topic, one broadcast row,
/// and (PostgreSQL) a `NOTIFY` per topic, delivered when the transaction commits.
async fn publish_in(conn: &mut Conn, messages: &[Envelope]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let rows: Vec<(&Envelope, ConsumerGroup)> = messages
        .iter()
        .flat_map(|m| m.topic.groups().iter().map(move |g| (m, *g)))
        .collect();
    for chunk in rows.chunks(CHUNK) {
        let mut qb = Qb::new(
            "INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) ",
        );
        qb.push_values(chunk, |mut b, (m, g)| {
            b.push_bind(m.topic.as_str())
                .push_bind(g.as_str())
                .push_bind(m.key.clone())
                .push_bind(m.payload.to_vec())
                .push_bind(m.deliver_at.map(to_ms).unwrap_or(now))
                .push_bind(now);
        });
        qb.build().execute(&mut *conn).await?;
    }
    for chunk in messages.chunks(CHUNK) {
        let mut qb = Qb::new("INSERT INTO queue_broadcast (topic, msg_key, payload, created_at) ");
        qb.push_values(chunk, |mut b, m| {
            b.push_bind(m.topic.as_str())
                .push_bind(m.key.clone())
                .push_bind(m.payload.to_vec())
                .push_bind(now);
        });
        qb.build().execute(&mut *conn).await?;
    }
    if FLAVOR == crate::common::Flavor::Postgres {
        let topics: BTreeSet<Topic> = messages.iter().map(|m| m.topic).collect();
        for topic in topics {
            Qb::new("SELECT pg_notify('kestra_queue', ")
                .push_bind(topic.as_str())
                .push(")")
                .build()
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Set a queue row aside as a dead letter (with what is known of it) and delete it.
#[allow(clippy::too_many_arguments)]
async fn dead_letter_in(
    conn: &mut Conn,
    id: i64,
    topic: &str,
    group: &str,
    key: Option<&str>,
    payload: Option<&[u8]>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    Qb::new("INSERT INTO queue_dead_letter (original_id, topic, group_name, msg_key, payload, reason, created_at) VALUES (")
        .push_bind(id)
        .push(", ")
        .push_bind(topic.to_string())
        .push(", ")
        .push_bind(group.to_string())
        .push(", ")
        .push_bind(key.map(str::to_string))
        .push(", ")
        .push_bind(payload.map(<[u8]>::to_vec))
        .push(", ")
        .push_bind(reason.to_string())
        .push(", ")
        .push_bind(now_ms())
        .push(")")
        .build()
        .execute(&mut *conn)
        .await?;
    Qb::new("DELETE FROM queue WHERE id = ")
        .push_bind(id)
        .build()
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A claimable row read by the claim query.
struct Candidate {
    id: i64,
    topic: Topic,
    key: String,
    payload: Vec<u8>,
    attempts: i32,
}

/// Claim up to `max` due rows of `topics` for `group` inside the caller's transaction: lock them
/// (`FOR UPDATE SKIP LOCKED`; SQLite: the transaction is the single writer), keep only rows whose
/// older due rows of the same key are claimed here too (per-key ordering), set malformed rows aside as
/// dead letters, and mark the rest claimed by `token` until `now + lease`.
async fn claim_in(
    conn: &mut Conn,
    group: ConsumerGroup,
    topics: &[Topic],
    max: usize,
    lease: Duration,
    token: &str,
) -> Result<Vec<Delivery>, sqlx::Error> {
    if topics.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    let now = now_ms();
    // One indexed scan per topic (in id order), filling the batch; the first topic rotates so that
    // no topic of a multi-topic unit starves the others. Keys with a live claim are skipped up front
    // (an optimisation only: the ordering check below is what guarantees per-key order).
    // Keys with a live claim, for every topic at once (one query instead of one per topic).
    let mut blocked_by_topic: HashMap<String, Vec<String>> = HashMap::new();
    let mut blocked_query = Qb::new("SELECT DISTINCT topic, msg_key FROM queue WHERE topic IN ");
    push_in(
        &mut blocked_query,
        topics.iter().map(|t| t.as_str().to_string()),
    );
    for row in blocked_query
        .push(" AND group_name = ")
        .push_bind(group.as_str())
        .push(" AND claimed_until > ")
        .push_bind(now)
        .push(" LIMIT ")
        .push_bind((BLOCKED_KEYS_MAX + 1) as i64)
        .build()
        .fetch_all(&mut *conn)
        .await?
    {
        let topic: String = get(&row, "topic")?;
        let key: String = get(&row, "msg_key")?;
        blocked_by_topic.entry(topic).or_default().push(key);
    }
    let too_many_blocked =
        blocked_by_topic.values().map(Vec::len).sum::<usize>() > BLOCKED_KEYS_MAX;
    let mut rows = Vec::new();
    let first = usize::try_from(now).unwrap_or(0) % topics.len();
    for i in 0..topics.len() {
        let remaining = max.saturating_sub(rows.len());
        if remaining == 0 {
            break;
        }
        let topic = topics[(first + i) % topics.len()];
        let blocked: Vec<String> = if too_many_blocked {
            Vec::new()
        } else {
            blocked_by_topic.remove(topic.as_str()).unwrap_or_default()
        };
        let mut qb = Qb::new(
            "SELECT q.id, q.topic, q.msg_key, q.payload, q.attempts FROM queue q WHERE q.topic = ",
        );
        qb.push_bind(topic.as_str())
            .push(" AND q.group_name = ")
            .push_bind(group.as_str())
            .push(" AND q.visible_at <= ")
            .push_bind(now)
            .push(" AND (q.claimed_until IS NULL OR q.claimed_until <= ")
            .push_bind(now)
            .push(")");
        if !blocked.is_empty() {
            qb.push(" AND q.msg_key NOT IN ");
            push_in(&mut qb, blocked);
        }
        qb.push(" ORDER BY q.id LIMIT ")
            .push_bind(i64::try_from(remaining).unwrap_or(i64::MAX))
            .push(FLAVOR.skip_locked("q"));
        rows.extend(qb.build().fetch_all(&mut *conn).await?);
    }

    let mut candidates = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = get(&row, "id")?;
        let topic: Option<String> = get(&row, "topic").ok();
        let key: Option<String> = get(&row, "msg_key").ok();
        let payload: Option<Vec<u8>> = get(&row, "payload").ok();
        let attempts: i32 = get(&row, "attempts").unwrap_or(0);
        let parsed = topic.as_deref().map(str::parse::<Topic>);
        // A payload that is not what its consumer expects is the consumer's to dead-letter; a row
        // that cannot even be read (e.g. a key that is not text) is set aside here.
        let problem = match (&parsed, &key, &payload) {
            (Some(Ok(_)), Some(_), Some(_)) => None,
            (Some(Err(e)), _, _) => Some(e.to_string()),
            _ => Some("unreadable queue row (topic, key or payload of the wrong type)".to_string()),
        };
        match (problem, parsed, key, payload) {
            (None, Some(Ok(topic)), Some(key), Some(payload)) => candidates.push(Candidate {
                id,
                topic,
                key,
                payload,
                attempts,
            }),
            (problem, _, key, payload) => {
                let reason = problem.unwrap_or_else(|| "unreadable row".to_string());
                tracing::warn!(id, %reason, group = group.as_str(), "queue row set aside as a dead letter");
                dead_letter_in(
                    conn,
                    id,
                    topic.as_deref().unwrap_or("?"),
                    group.as_str(),
                    key.as_deref(),
                    payload.as_deref(),
                    &reason,
                )
                .await?;
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }

    // Per-key order: read (without locks, committed state) every due row of the candidates' keys up
    // to the newest candidate. A candidate is handed out only if every older row of its key in that
    // list is a candidate handed out in this same batch (older rows claimed elsewhere, locked by
    // another transaction or skipped block it).
    let mut by_topic: BTreeMap<Topic, (BTreeSet<String>, i64)> = BTreeMap::new();
    for c in &candidates {
        let entry = by_topic.entry(c.topic).or_default();
        entry.0.insert(c.key.clone());
        entry.1 = entry.1.max(c.id);
    }
    let candidate_ids: HashSet<i64> = candidates.iter().map(|c| c.id).collect();
    let mut blocked_keys: HashSet<(Topic, String)> = HashSet::new();
    let mut accepted: HashSet<i64> = HashSet::new();
    for (topic, (keys, newest)) in by_topic {
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(CHUNK) {
            let mut qb = Qb::new("SELECT id, msg_key FROM queue WHERE topic = ");
            qb.push_bind(topic.as_str())
                .push(" AND group_name = ")
                .push_bind(group.as_str())
                .push(" AND visible_at <= ")
                .push_bind(now)
                .push(" AND id <= ")
                .push_bind(newest)
                .push(" AND msg_key IN ");
            push_in(&mut qb, chunk.iter().cloned());
            qb.push(" ORDER BY id");
            for row in qb.build().fetch_all(&mut *conn).await? {
                let id: i64 = get(&row, "id")?;
                let key: String = get(&row, "msg_key")?;
                let slot = (topic, key);
                if blocked_keys.contains(&slot) {
                    continue;
                }
                if candidate_ids.contains(&id) {
                    accepted.insert(id);
                } else {
                    blocked_keys.insert(slot);
                }
            }
        }
    }
    let claimed: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| accepted.contains(&c.id))
        .collect();
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = Qb::new("UPDATE queue SET claimed_by = ");
    qb.push_bind(token.to_string())
        .push(", claimed_until = ")
        .push_bind(now + duration_ms(lease))
        .push(", attempts = attempts + 1 WHERE id IN ");
    push_in(&mut qb, claimed.iter().map(|c| c.id));
    qb.build().execute(&mut *conn).await?;
    Ok(claimed
        .into_iter()
        .map(|c| Delivery {
            tag: DeliveryTag {
                topic: c.topic,
                partition: 0,
                offset: c.id,
            },
            group,
            envelope: Envelope {
                topic: c.topic,
                key: c.key,
                payload: Bytes::from(c.payload),
                deliver_at: None,
            },
            attempt: u32::try_from(c.attempts).unwrap_or(0) + 1,
        })
        .collect())
}

/// The row ids of `tags` by topic (JDBC tags have partition 0; others are unknown here).
fn ids_by_topic(tags: &[DeliveryTag]) -> BTreeMap<Topic, Vec<i64>> {
    let mut by_topic: BTreeMap<Topic, Vec<i64>> = BTreeMap::new();
    for t in tags.iter().filter(|t| t.partition == 0) {
        by_topic.entry(t.topic).or_default().push(t.offset);
    }
    by_topic
}

/// Delete acknowledged rows (a tag matches its row by topic and id), one statement per batch.
async fn ack_rows(
    pool: &Pool<Db>,
    group: ConsumerGroup,
    tags: &[DeliveryTag],
) -> Result<(), sqlx::Error> {
    let by_topic = ids_by_topic(tags);
    if by_topic.is_empty() {
        return Ok(());
    }
    let mut tx = begin_write(pool).await?;
    relaxed_commit(&mut tx).await?;
    for (topic, ids) in &by_topic {
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("DELETE FROM queue WHERE group_name = ");
            qb.push_bind(group.as_str())
                .push(" AND topic = ")
                .push_bind(topic.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().copied());
            qb.build().execute(&mut *tx).await?;
        }
    }
    tx.commit().await
}

/// Move the lease end of claimed rows to `until`; returns the tags that are still queued (held).
async fn extend_rows(
    pool: &Pool<Db>,
    group: ConsumerGroup,
    tags: &[DeliveryTag],
    until: i64,
) -> Result<HashSet<DeliveryTag>, sqlx::Error> {
    let mut held = HashSet::new();
    let by_topic = ids_by_topic(tags);
    if by_topic.is_empty() {
        return Ok(held);
    }
    let mut tx = begin_write(pool).await?;
    relaxed_commit(&mut tx).await?;
    for (topic, ids) in &by_topic {
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("UPDATE queue SET claimed_until = ");
            qb.push_bind(until)
                .push(" WHERE claimed_by IS NOT NULL AND group_name = ")
                .push_bind(group.as_str())
                .push(" AND topic = ")
                .push_bind(topic.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().copied());
            qb.build().execute(&mut *tx).await?;
            let mut qb = Qb::new("SELECT id FROM queue WHERE group_name = ");
            qb.push_bind(group.as_str())
                .push(" AND topic = ")
                .push_bind(topic.as_str())
                .push(" AND id IN ");
            push_in(&mut qb, chunk.iter().copied());
            let rows: Vec<(i64,)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            held.extend(rows.into_iter().map(|(id,)| DeliveryTag {
                topic: *topic,
                partition: 0,
                offset: id,
            }));
        }
    }
    tx.commit().await?;
    Ok(held)
}

/// PostgreSQL: do not wait for the WAL flush when this transaction commits. Only for claims and
/// acknowledgements of competing receives, whose loss in a crash means a redelivery (allowed:
/// at-least-once), never for publishes or units of work.
async fn relaxed_commit(conn: &mut Conn) -> Result<(), sqlx::Error> {
    if FLAVOR == crate::common::Flavor::Postgres {
        Qb::new("SET LOCAL synchronous_commit = off")
            .build()
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Wake-ups of `topics`, armed before a claim attempt so that a publish between the attempt and the
/// wait is not missed.
struct Wakeups<'a> {
    waits: Vec<std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

impl<'a> Wakeups<'a> {
    fn arm(notifier: &'a Notifier, topics: &[Topic]) -> Wakeups<'a> {
        let mut waits: Vec<_> = topics
            .iter()
            .map(|t| Box::pin(notifier.topic(*t).notified()))
            .collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        Wakeups { waits }
    }

    /// Wait for a wake-up, at most `timeout`. Returns true if woken.
    async fn wait(self, timeout: Duration) -> bool {
        if self.waits.is_empty() {
            tokio::time::sleep(timeout).await;
            return false;
        }
        tokio::select! {
            _ = futures::future::select_all(self.waits) => true,
            _ = tokio::time::sleep(timeout) => false,
        }
    }
}

/// Adaptive polling: 5 ms doubling to 500 ms while idle, back to 5 ms on activity.
struct Poll {
    deadline: Instant,
    delay: Duration,
}

impl Poll {
    fn new(wait: Duration) -> Poll {
        Poll {
            deadline: Instant::now() + wait,
            delay: POLL_MIN,
        }
    }

    /// Wait for the next attempt; false when the deadline has passed.
    async fn next(&mut self, wakeups: Wakeups<'_>) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let woken = wakeups.wait(self.delay.min(self.deadline - now)).await;
        self.delay = if woken {
            POLL_MIN
        } else {
            (self.delay * 2).min(POLL_MAX)
        };
        true
    }
}

// ------------------------------------------------------------------------------------------ Queue

impl Store {
    async fn publish_once(&self, messages: &[Envelope]) -> Result<(), sqlx::Error> {
        let mut tx = begin_write(&self.write).await?;
        publish_in(&mut tx, messages).await?;
        tx.commit().await
    }

    async fn claim_once(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut tx = begin_write(&self.write).await?;
        relaxed_commit(&mut tx).await?;
        let got = claim_in(&mut tx, group, &[topic], max, lease, token).await?;
        tx.commit().await?;
        Ok(got)
    }

    /// One attempt of a recorded claim (contract point 12): claim, derive and check the records,
    /// publish them and commit, in one transaction. A refused record rolls the claim back (the
    /// inner error); a database error is the outer one.
    async fn claim_recorded_once(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        token: &str,
        record: &Recorder,
    ) -> Result<Result<Vec<Delivery>, QueueError>, sqlx::Error> {
        let mut tx = begin_write(&self.write).await?;
        let got = claim_in(&mut tx, group, &[topic], max, lease, token).await?;
        if got.is_empty() {
            // Nothing claimed, but rows the claim set aside as dead letters stay set aside (as in
            // `claim_once`).
            tx.commit().await?;
            return Ok(Ok(got));
        }
        let records = match record(&got)
            .and_then(|r| check_publish(&r, self.max_message_bytes).map(|()| r))
        {
            Ok(r) => r,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        publish_in(&mut tx, &records).await?;
        tx.commit().await?;
        self.wake(records.iter().map(|m| m.topic));
        Ok(Ok(got))
    }

    fn wake(&self, topics: impl IntoIterator<Item = Topic>) {
        let distinct: BTreeSet<Topic> = topics.into_iter().collect();
        for t in distinct {
            self.notifier.notify(t);
        }
    }
}

#[async_trait]
impl Queue for Store {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities {
            lease_timers: true,
            max_message_bytes: self.max_message_bytes,
        }
    }

    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        check_publish(&messages, self.max_message_bytes)?;
        let mut attempt = 0;
        loop {
            match self.publish_once(&messages).await {
                Ok(()) => break,
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("publish")(e)),
            }
        }
        self.wake(messages.iter().map(|m| m.topic));
        Ok(())
    }

    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        loop {
            let wakeups = Wakeups::arm(&self.notifier, &[topic]);
            match self.claim_once(group, topic, max, lease, &token).await {
                Ok(got) if !got.is_empty() => return Ok(got),
                Ok(_) => {}
                Err(e) if attempt < RETRIES && is_transient(&e) => attempt += 1,
                Err(e) => return Err(queue_err("receive")(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn receive_recorded(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        lease: Duration,
        wait: Duration,
        record: &Recorder,
    ) -> Result<Vec<Delivery>, QueueError> {
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        loop {
            let wakeups = Wakeups::arm(&self.notifier, &[topic]);
            match self
                .claim_recorded_once(group, topic, max, lease, &token, record)
                .await
            {
                Ok(Ok(got)) if !got.is_empty() => return Ok(got),
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => return Err(refused),
                Err(e) if attempt < RETRIES && is_transient(&e) => attempt += 1,
                Err(e) => return Err(queue_err("receive_recorded")(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, group: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        let mut attempt = 0;
        loop {
            match ack_rows(&self.write, group, tags).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("ack")(e)),
            }
        }
    }

    async fn extend_lease(
        &self,
        group: ConsumerGroup,
        tags: &[DeliveryTag],
        lease: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        let mut attempt = 0;
        let held = loop {
            match extend_rows(&self.write, group, tags, now_ms() + duration_ms(lease)).await {
                Ok(held) => break held,
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(queue_err("extend_lease")(e)),
            }
        };
        Ok(tags.iter().filter(|t| !held.contains(t)).copied().collect())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let err = queue_err("dead_letter");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        dead_letter_in(
            &mut tx,
            delivery.tag.offset,
            delivery.envelope.topic.as_str(),
            delivery.group.as_str(),
            Some(&delivery.envelope.key),
            Some(&delivery.envelope.payload),
            reason,
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        let start: i64 = Qb::new("SELECT COALESCE(MAX(id), 0) AS m FROM queue_broadcast")
            .build()
            .fetch_one(&self.write)
            .await
            .and_then(|row| get(&row, "m"))
            .map_err(queue_err("subscribe"))?;
        let state = Broadcast {
            pool: self.read.clone(),
            notifier: self.notifier.clone(),
            topic,
            floor: start,
            delivered: BTreeSet::new(),
            window: VecDeque::new(),
            buffer: VecDeque::new(),
            last_fetch: Instant::now(),
            delay: POLL_MIN,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn begin(
        &self,
        group: ConsumerGroup,
        topics: &[Topic],
        max: usize,
        wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        let err = queue_err("begin");
        let token = kestra_core::model::new_id();
        let mut poll = Poll::new(wait);
        let mut attempt = 0;
        loop {
            let wakeups = Wakeups::arm(&self.notifier, topics);
            let mut tx = begin_write(&self.write).await.map_err(&err)?;
            match claim_in(&mut tx, group, topics, max, UOW_LEASE, &token).await {
                Ok(deliveries) if !deliveries.is_empty() => {
                    return Ok(Some(Box::new(JdbcUnit {
                        max_message_bytes: self.max_message_bytes,
                        notifier: self.notifier.clone(),
                        write: self.write.clone(),
                        tx: Some(tx),
                        deliveries,
                        dead: HashSet::new(),
                        published: BTreeSet::new(),
                    })));
                }
                Ok(_) => {
                    // Nothing claimable: commit any dead letters set aside by the claim.
                    tx.commit().await.map_err(&err)?;
                }
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    drop(tx);
                    attempt += 1;
                }
                Err(e) => return Err(err(e)),
            }
            if !poll.next(wakeups).await {
                return Ok(None);
            }
        }
    }

    async fn begin_triggers(&self) -> Result<Box<dyn TriggerUnit>, QueueError> {
        let tx = begin_write(&self.write)
            .await
            .map_err(queue_err("begin_triggers"))?;
        Ok(Box::new(JdbcTriggerUnit {
            max_message_bytes: self.max_message_bytes,
            notifier: self.notifier.clone(),
            tx: Some(tx),
            held: BTreeSet::new(),
            published: BTreeSet::new(),
        }))
    }
}

// ------------------------------------------------------------------------------------------ broadcast

/// How long a PostgreSQL/MySQL subscriber re-reads recent offsets: ids come from a sequence, and a
/// transaction that took a lower id may commit after one that took a higher id (a busy executor unit
/// of work can take seconds). Rows committed later than this after a higher id are missed, which is
/// why kill signals are also repeated by the executor.
const GAP_WINDOW: Duration = Duration::from_secs(5);
const BROADCAST_PAGE: usize = 1000;

struct Broadcast {
    pool: Pool<Db>,
    notifier: Arc<Notifier>,
    topic: Topic,
    /// Every row at or below this offset has been seen (or given up on).
    floor: i64,
    /// Offsets above `floor` already delivered.
    delivered: BTreeSet<i64>,
    /// When each offset above `floor` was delivered.
    window: VecDeque<(Instant, i64)>,
    buffer: VecDeque<Envelope>,
    last_fetch: Instant,
    delay: Duration,
}

impl Broadcast {
    async fn next(&mut self) -> Option<Result<Envelope, QueueError>> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            let lagged = self.last_fetch.elapsed() > BROADCAST_RETENTION;
            let notifier = self.notifier.clone();
            let wakeups = Wakeups::arm(&notifier, &[self.topic]);
            match self.fetch().await {
                Ok(_) if lagged => return Some(Err(QueueError::Lagged { missed: 0 })),
                Ok(0) => {}
                Ok(_) => {
                    self.delay = POLL_MIN;
                    continue;
                }
                Err(sqlx::Error::PoolClosed) => return None,
                Err(e) => return Some(Err(queue_err("subscribe")(e))),
            }
            let woken = wakeups.wait(self.delay).await;
            self.delay = if woken {
                POLL_MIN
            } else {
                (self.delay * 2).min(POLL_MAX)
            };
        }
    }

    /// Read new rows into the buffer; returns how many.
    async fn fetch(&mut self) -> Result<usize, sqlx::Error> {
        self.last_fetch = Instant::now();
        let windowed = FLAVOR != crate::common::Flavor::Sqlite;
        if windowed {
            while let Some((at, id)) = self.window.front().copied() {
                if at.elapsed() < GAP_WINDOW {
                    break;
                }
                self.floor = self.floor.max(id);
                self.window.pop_front();
            }
            self.delivered = self.delivered.split_off(&(self.floor + 1));
        }
        let mut page_floor = self.floor;
        let mut count = 0;
        loop {
            let rows = Qb::new("SELECT id, msg_key, payload FROM queue_broadcast WHERE topic = ")
                .push_bind(self.topic.as_str())
                .push(" AND id > ")
                .push_bind(page_floor)
                .push(" ORDER BY id LIMIT ")
                .push_bind(BROADCAST_PAGE as i64)
                .build()
                .fetch_all(&self.pool)
                .await?;
            let n = rows.len();
            for row in rows {
                let id: i64 = get(&row, "id")?;
                page_floor = page_floor.max(id);
                if windowed && !self.delivered.insert(id) {
                    continue;
                }
                if windowed {
                    self.window.push_back((Instant::now(), id));
                }
                let key: String = get(&row, "msg_key")?;
                let payload: Vec<u8> = get(&row, "payload")?;
                self.buffer
                    .push_back(Envelope::new(self.topic, key, payload));
                count += 1;
            }
            if n < BROADCAST_PAGE {
                break;
            }
        }
        if !windowed {
            self.floor = page_floor;
        }
        Ok(count)
    }
}

// ------------------------------------------------------------------------------------------ unit of work

/// One database transaction over claimed rows (see the module documentation). Executions and
/// executor state are read and written only under the keys of `deliveries`.
struct JdbcUnit {
    max_message_bytes: usize,
    notifier: Arc<Notifier>,
    write: Pool<Db>,
    /// `None` once committed.
    tx: Option<Transaction<'static, Db>>,
    deliveries: Vec<Delivery>,
    dead: HashSet<i64>,
    published: BTreeSet<Topic>,
}

impl JdbcUnit {
    fn conn(&mut self) -> Result<&mut Conn, QueueError> {
        match self.tx.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(QueueError::Closed),
        }
    }
}

impl Drop for JdbcUnit {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        // Dropping the transaction rolls it back: the rows are claimable again. Count the delivery
        // attempt (it was rolled back with the rest) and wake the consumers once the locks are gone.
        drop(tx);
        let ids: Vec<i64> = self.deliveries.iter().map(|d| d.tag.offset).collect();
        let topics: BTreeSet<Topic> = self.deliveries.iter().map(|d| d.envelope.topic).collect();
        let pool = self.write.clone();
        let notifier = self.notifier.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for chunk in ids.chunks(CHUNK) {
                    let mut qb = Qb::new("UPDATE queue SET attempts = attempts + 1 WHERE id IN ");
                    push_in(&mut qb, chunk.iter().copied());
                    if let Err(error) = qb.build().execute(&pool).await {
                        tracing::debug!(%error, "cannot count a rolled-back delivery attempt");
                    }
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
        check_claimed(&self.deliveries, || "load execution".into(), id)?;
        let conn = self.conn()?;
        let row = Qb::new("SELECT doc FROM executions WHERE id = ")
            .push_bind(id.to_string())
            .push(FLAVOR.for_update())
            .build()
            .fetch_optional(&mut *conn)
            .await
            .map_err(queue_err("load_execution"))?;
        let Some(row) = row else { return Ok(None) };
        let doc: String = get(&row, "doc").map_err(queue_err("load_execution"))?;
        serde_json::from_str(&doc)
            .map(Some)
            .map_err(|source| QueueError::Decode {
                topic: Topic::Execution,
                key: id.to_string(),
                source,
            })
    }

    async fn save_execution(&mut self, execution: &Execution) -> Result<(), QueueError> {
        check_claimed(&self.deliveries, || "save execution".into(), &execution.id)?;
        let doc = serde_json::to_string(execution).map_err(|source| QueueError::Encode {
            topic: Topic::Execution,
            source,
        })?;
        check_execution_size(&execution.id, doc.as_bytes(), self.max_message_bytes)?;
        let conn = self.conn()?;
        upsert_execution_in(conn, execution, doc)
            .await
            .map_err(queue_err("save_execution"))
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
        let conn = self.conn()?;
        publish_in(conn, &messages)
            .await
            .map_err(queue_err("publish"))?;
        self.published.extend(messages.iter().map(|m| m.topic));
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
        let conn = self.conn()?;
        for chunk in ids.chunks(CHUNK) {
            let mut qb = Qb::new("DELETE FROM queue WHERE id IN ");
            push_in(&mut qb, chunk.iter().copied());
            qb.build().execute(&mut *conn).await.map_err(&err)?;
        }
        let Some(tx) = self.tx.take() else {
            return Err(QueueError::Closed);
        };
        tx.commit().await.map_err(&err)?;
        for t in std::mem::take(&mut self.published) {
            self.notifier.notify(t);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------ executions

/// Insert or replace an execution row and its labels (inside the caller's transaction or not).
async fn upsert_execution_in(
    conn: &mut Conn,
    e: &Execution,
    doc: String,
) -> Result<(), sqlx::Error> {
    let start = e
        .state
        .start_date()
        .unwrap_or(e.metadata.original_created_date);
    let mut qb = Qb::new(
        "INSERT INTO executions (id, tenant_id, namespace, flow_id, state_current, start_date, end_date, parent_id, deleted, updated, doc) VALUES (",
    );
    {
        let mut sep = qb.separated(", ");
        sep.push_bind(e.id.clone())
            .push_bind(e.tenant_id.clone())
            .push_bind(e.namespace.clone())
            .push_bind(e.flow_id.clone())
            .push_bind(e.current().as_str())
            .push_bind(to_ms(start))
            .push_bind(e.state.end_date().map(to_ms))
            .push_bind(e.parent_id.clone())
            .push_bind(e.deleted)
            .push_bind(now_ms())
            .push_bind(doc);
    }
    qb.push(")").push(FLAVOR.upsert(
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
            "doc",
        ],
    ));
    qb.build().execute(&mut *conn).await?;
    Qb::new("DELETE FROM execution_labels WHERE execution_id = ")
        .push_bind(e.id.clone())
        .build()
        .execute(&mut *conn)
        .await?;
    for chunk in e.labels.chunks(CHUNK) {
        let mut qb = Qb::new(
            "INSERT INTO execution_labels (execution_id, tenant_id, label_key, label_value) ",
        );
        qb.push_values(chunk, |mut b, l| {
            b.push_bind(e.id.clone())
                .push_bind(e.tenant_id.clone())
                .push_bind(l.key.clone())
                .push_bind(l.value.clone());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

fn tenant_of(t: &Option<String>) -> String {
    t.clone()
        .unwrap_or_else(|| kestra_core::model::DEFAULT_TENANT.to_string())
}

/// `AND (col = ns OR col LIKE 'ns.%')`: a namespace and its children, segment-wise.
fn push_namespace(qb: &mut Qb, column: &str, namespace: &str) {
    qb.push(format!(" AND ({column} = "))
        .push_bind(namespace.to_string())
        .push(format!(" OR {column} LIKE "))
        .push_bind(like_children(namespace))
        .push(LIKE_ESCAPE)
        .push(")");
}

/// `LOWER(col) LIKE pattern ESCAPE '!'`.
fn push_like(qb: &mut Qb, column: &str, pattern: &str) {
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

fn check_range(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> RepoResult<()> {
    match (start, end) {
        (Some(s), Some(e)) if s > e => Err(RepositoryError::InvalidQuery(format!(
            "start date {s} is after end date {e}"
        ))),
        _ => Ok(()),
    }
}

fn push_page(qb: &mut Qb, offset: u64, limit: u64) {
    qb.push(" LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .push(" OFFSET ")
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
    async fn search_page(
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

fn parse_doc<T: serde::de::DeserializeOwned>(
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
        let doc = to_json("execution", &execution.id, execution)?;
        let err = repo_err("save execution");
        let mut tx = begin_write(&self.write).await.map_err(&err)?;
        upsert_execution_in(&mut tx, execution, doc)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        let row = Qb::new("SELECT id, doc FROM executions WHERE deleted = FALSE AND tenant_id = ")
            .push_bind(tenant.to_string())
            .push(" AND id = ")
            .push_bind(id.to_string())
            .build()
            .fetch_optional(&self.read)
            .await
            .map_err(repo_err("find execution"))?;
        row.map(|r| parse_doc(&r, "execution", "id", "find execution"))
            .transpose()
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
                "e.id, e.doc",
                "executions e",
                |qb| push_execution_where(qb, query),
                &order,
                (offset, limit),
                "search executions",
            )
            .await?;
        let results = rows
            .iter()
            .map(|r| parse_doc(r, "execution", "id", "search executions"))
            .collect::<RepoResult<Vec<Execution>>>()?;
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
        let mut execution: Execution = parse_doc(&row, "execution", "id", "delete execution")?;
        execution.deleted = true;
        let doc = to_json("execution", id, &execution)?;
        Qb::new("UPDATE executions SET deleted = TRUE, doc = ")
            .push_bind(doc)
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

// ------------------------------------------------------------------------------------------ flows

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

// ------------------------------------------------------------------------------------------ logs, metrics

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

// ------------------------------------------------------------------------------------------ triggers

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
struct JdbcTriggerUnit {
    max_message_bytes: usize,
    notifier: Arc<Notifier>,
    /// `None` once committed.
    tx: Option<Transaction<'static, Db>>,
    /// Uids claimed or created by this unit.
    held: BTreeSet<String>,
    published: BTreeSet<Topic>,
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
        qb.push(" ORDER BY t.next_execution_date, t.uid LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(FLAVOR.skip_locked("t"));
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
        let conn = self.conn()?;
        publish_in(conn, &messages)
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

// ------------------------------------------------------------------------------------------ services

fn service_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[async_trait]
impl ServiceInstanceRepository for Store {
    async fn save(&self, s: &ServiceInstance) -> RepoResult<()> {
        let doc = to_json("service instance", &s.id, s)?;
        let mut qb = Qb::new(
            "INSERT INTO service_instances (id, service_type, state, updated, doc) VALUES (",
        );
        {
            let mut sep = qb.separated(", ");
            sep.push_bind(s.id.clone())
                .push_bind(service_name(&s.type_))
                .push_bind(service_name(&s.state))
                .push_bind(to_ms(s.updated_date))
                .push_bind(doc);
        }
        qb.push(")")
            .push(FLAVOR.upsert(&["id"], &["service_type", "state", "updated", "doc"]));
        qb.build()
            .execute(&self.write)
            .await
            .map_err(repo_err("save service instance"))?;
        Ok(())
    }

    async fn find_by_id(&self, id: &str) -> RepoResult<Option<ServiceInstance>> {
        let row = Qb::new("SELECT id, doc FROM service_instances WHERE id = ")
            .push_bind(id.to_string())
            .build()
            .fetch_optional(&self.read)
            .await
            .map_err(repo_err("find service instance"))?;
        row.map(|r| parse_doc(&r, "service instance", "id", "find service instance"))
            .transpose()
    }

    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>> {
        let rows = Qb::new("SELECT id, doc FROM service_instances ORDER BY id")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("list service instances"))?;
        rows.iter()
            .map(|r| parse_doc(r, "service instance", "id", "list service instances"))
            .collect()
    }

    async fn delete(&self, id: &str) -> RepoResult<()> {
        Qb::new("DELETE FROM service_instances WHERE id = ")
            .push_bind(id.to_string())
            .build()
            .execute(&self.write)
            .await
            .map_err(repo_err("delete service instance"))?;
        Ok(())
    }
}
