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
//!
//! One file per concern: [`claims`] (the queue's SQL: publish, claim, acknowledge, extend,
//! dead-letter, wake-ups), [`queue`] (the [`Queue`] implementation), [`broadcast`] (broadcast
//! topics), [`unit`] (the executor's [`UnitOfWork`]), [`batch`] (the executions a unit saves on
//! PostgreSQL and MySQL, written together at commit), [`executions`], [`flows`], [`logs`] (logs and
//! metrics), [`triggers`] (trigger repository and the scheduler's [`TriggerUnit`]), [`services`]
//! (service instances), [`task_runs`] (task runs stored apart from their execution) and
//! [`maintenance`] (broadcast purge, row counts, offline purge).

mod batch;
mod broadcast;
mod claims;
mod executions;
#[cfg(feature = "testkit")]
mod faults;
mod flows;
mod grouped;
mod logs;
mod maintenance;
mod queue;
mod services;
mod task_runs;
mod text;
mod triggers;
mod unit;

pub(crate) use maintenance::purge_offline;

use batch::{PendingSave, PendingSaves};
use broadcast::Broadcast;
/// Also used by the SQLite dialect's tests.
pub(crate) use claims::write_at_once;
use claims::{
    PgWith, Poll, RawTx, Wakeups, ack_in, ack_rows, begin_relaxed, claim_in, dead_letter_in,
    extend_rows, lock_claimed, pg_publish_statement, publish_in, push_ack, push_publish,
    push_publish_parts, push_text_publish, release_claimed, text_publish,
};
use executions::{
    ExecutionRow, IndexedColumns, check_range, parse_doc, push_execution_update,
    push_execution_upsert, push_labels_insert, push_like, push_namespace, tenant_of,
    upsert_execution_in,
};
use text::{Sql, TEXT_MAX, Text};
use triggers::JdbcTriggerUnit;
use unit::{Deferred, JdbcUnit};

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
    ConsumerGroup, Delivery, DeliveryTag, Envelope, ExecutionStamp, LoadedExecution, Queue,
    QueueCapabilities, QueueError, Recorder, Subscription, Topic, TriggerNotHeld, TriggerUnit,
    UnitOfWork, check_claimed, check_execution_len, check_publish, check_staged,
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
pub(crate) type Qb = QueryBuilder<Db>;

/// Rows per multi-row INSERT / ids per `IN (...)` list (well under every dialect's bind limit).
const CHUNK: usize = 500;
/// Lease of the rows a unit of work claims. The claim is committed on its own, before the unit's
/// transaction locks the rows (see [`queue`]), so the lease only matters when that transaction
/// ends without commit or rollback - the process died: the rows come back once it ends.
const UOW_LEASE: Duration = Duration::from_secs(5);
/// Broadcast rows are kept this long, then purged.
pub(crate) const BROADCAST_RETENTION: Duration = Duration::from_secs(60);
/// How often the maintenance task purges old broadcast rows.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);
/// Polling backoff bounds (the fallback wake-up, and the only one on MySQL). SQLite (one process,
/// woken by its publishers) and PostgreSQL (`LISTEN/NOTIFY` too) are woken on every publish: their
/// polls only catch what no wake-up announces (a row of another process sharing a SQLite file, a
/// lost notification, a lease that ended, a delay that came due), from 50 ms; MySQL polls from 5 ms.
const POLL_MIN: Duration = if matches!(FLAVOR, crate::common::Flavor::MySql) {
    Duration::from_millis(5)
} else {
    Duration::from_millis(50)
};
const POLL_MAX: Duration = Duration::from_millis(500);
/// At most this many keys with a live claim are excluded from a claim scan by name.
const BLOCKED_KEYS_MAX: usize = 1000;
/// Transient errors (deadlock, busy) are retried this many times.
const RETRIES: u32 = 5;

/// The transaction fault the testkit planned for one executor claim and its unit of work (see
/// [`crate::testkit`]); without the feature `testkit` a unit type, and no injection code.
#[cfg(feature = "testkit")]
type Fault = Option<crate::testkit::TxnPoint>;
/// See the `testkit` definition.
#[cfg(not(feature = "testkit"))]
type Fault = ();

/// Draw the fault of one executor claim (none without the feature `testkit`).
#[cfg(feature = "testkit")]
fn plan_fault() -> Fault {
    crate::testkit::plan_unit()
}

/// Draw the fault of one executor claim (none without the feature `testkit`).
#[cfg(not(feature = "testkit"))]
fn plan_fault() -> Fault {}

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

/// Push ` LIMIT n`, `n` bound.
///
/// On SQLite the limit is written `? + 0`: the bundled SQLite (3.51) plans a bare `LIMIT ?` with
/// its bound value, which marks the statement to be prepared again whenever that parameter
/// is bound - every execution, as sqlx binds every parameter each time. The claims' scans (up to
/// seven `LIMIT ?` in one statement) were parsed and planned again on every claim (about 9 % of
/// the SQLite connection threads' time in the 40-task benchmark, `perf`). An expression keeps the
/// one prepared plan: the scans walk an index in `id` order and stop at the limit either way.
fn push_limit(qb: &mut Qb, limit: i64) {
    qb.push(" LIMIT ").push_bind(limit);
    if matches!(FLAVOR, crate::common::Flavor::Sqlite) {
        qb.push(" + 0");
    }
}

/// The queue and repositories of one database.
pub(crate) struct Store {
    pub(crate) write: Pool<Db>,
    pub(crate) read: Pool<Db>,
    pub(crate) notifier: Arc<Notifier>,
    /// The largest payload (and execution document) accepted, in bytes.
    max_message_bytes: usize,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// SQLite: per (group, topics), the topics' wake-up count ([`Notifier::generation_of`]) read
    /// before the last claim that took every row there was to take; while it has not moved,
    /// nothing was published here since, and a consumer's first claim of a `begin`/`receive` waits
    /// for a wake-up (or its first poll) instead of reading an empty queue.
    caught_up: std::sync::Mutex<HashMap<(ConsumerGroup, Vec<Topic>), u64>>,
    /// The publishes waiting to be written together ([`grouped`]).
    publishes: Arc<grouped::PublishGroups>,
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
            caught_up: std::sync::Mutex::new(HashMap::new()),
            publishes: Arc::default(),
            _guard: guard,
        });
        let weak = Arc::downgrade(&store);
        store.add_task(tokio::spawn(maintenance::maintenance(weak)));
        store
    }

    /// Keep a background task; it is aborted when the store drops.
    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    /// Close the pools (pending units of work fail).
    pub(crate) async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}
