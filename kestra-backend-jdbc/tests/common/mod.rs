//! Shared helpers of the per-database test files: where the services are, a fresh database per test,
//! and the backend-specific checks (killed consumers, malformed rows, a 100,000-message load, the
//! offline purge) that every dialect runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kestra_backend_jdbc::{JdbcBackend, purge_queue};
use kestra_core::model::new_id;
use kestra_core::queue::{ConsumerGroup, DeliveryTag, Envelope, Queue, Topic};
use kestra_core::testkit;
use serde_json::json;

/// The URL of a service from `var`; `None` (with a loud message) when unset, a panic under `CI=true`.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set under CI=true: run `eval \"$(scripts/services.sh)\"` first"
            );
            eprintln!(
                "\n!!!!! SKIPPED: {var} is not set; run `eval \"$(scripts/services.sh)\"` to test this database !!!!!\n"
            );
            None
        }
    }
}

/// A private SQLite file URL in a fresh temporary folder (kept for the process lifetime).
pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("kestra-jdbc-test-{}", new_id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}/kestra.db?mode=rwc", dir.display())
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let head = head.rsplit_once('/').map(|(h, _)| h).unwrap_or(head);
    format!("{head}/{name}{query}")
}

/// Create a fresh database next to the one of `base` (PostgreSQL or MySQL) and return its URL.
pub async fn fresh_database(base: &str) -> String {
    use sqlx::{AssertSqlSafe, Connection};
    let name = format!("kestra_t_{}", new_id().to_lowercase());
    if base.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
    } else {
        let mut conn = sqlx::MySqlConnection::connect(&base.replacen("mariadb:", "mysql:", 1))
            .await
            .expect("connect to MySQL");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    with_database(base, &name)
}

/// Drop a database made by [`fresh_database`] (best effort).
pub async fn drop_database(base: &str, url: &str) {
    use sqlx::{AssertSqlSafe, Connection};
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    if !name.starts_with("kestra_t_") {
        return;
    }
    if base.starts_with("postgres") {
        if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    } else if let Ok(mut conn) = sqlx::MySqlConnection::connect(base).await {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&mut conn)
            .await;
    }
}

pub async fn connect(url: &str) -> JdbcBackend {
    JdbcBackend::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The queue conformance suite, with two backends (two pools) on one database as the consumers.
pub async fn queue_suite(url: &str) {
    let a = connect(url).await;
    let b = connect(url).await;
    let queues: Vec<Arc<dyn Queue>> = vec![a.queue(), b.queue()];
    let next = AtomicUsize::new(0);
    testkit::queue::run_all_with(&move || {
        queues[next.fetch_add(1, Ordering::Relaxed) % queues.len()].clone()
    })
    .await;
    let stats = a.queue_stats().await.expect("stats");
    assert!(stats.queued < 50, "queue table not drained: {stats:?}");
}

/// The repository conformance suite.
pub async fn repository_suite(url: &str) {
    let backend = connect(url).await;
    testkit::repository::run_all(&backend.repositories()).await;
}

fn payload(seq: u64) -> Envelope {
    Envelope::json(Topic::Execution, "exec-1", &json!({ "seq": seq })).expect("json")
}

/// A consumer killed between claim and commit (its task aborted while it holds the unit): the message
/// is delivered again, the staged state of the dead unit is gone, and it is processed once.
pub async fn killed_consumer_is_redelivered_and_processed_once(backend: &JdbcBackend) {
    let queue = backend.queue();
    let key = format!("killed-{}", new_id());
    queue
        .publish(vec![
            Envelope::json(Topic::Execution, &key, &json!({"seq": 1})).unwrap(),
        ])
        .await
        .unwrap();
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (queue, key) = (queue.clone(), key.clone());
        tokio::spawn(async move {
            let mut unit = queue
                .begin(
                    ConsumerGroup::Executor,
                    &[Topic::Execution],
                    10,
                    Duration::from_secs(10),
                )
                .await
                .unwrap()
                .expect("a unit");
            unit.save_state("processed", &key, Some(&json!(1)))
                .await
                .unwrap();
            let _ = claimed_tx.send(unit.deliveries().len());
            std::future::pending::<()>().await;
            unit.commit().await.unwrap();
        })
    };
    assert_eq!(claimed_rx.await.unwrap(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let mut unit = queue
        .begin(
            ConsumerGroup::Executor,
            &[Topic::Execution],
            10,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .expect("the message comes back");
    assert_eq!(unit.deliveries().len(), 1);
    assert_eq!(unit.deliveries()[0].envelope.key, key);
    assert_eq!(
        unit.load_state("processed", &key).await.unwrap(),
        None,
        "the killed unit's staged state was rolled back"
    );
    unit.save_state("processed", &key, Some(&json!(1)))
        .await
        .unwrap();
    unit.commit().await.unwrap();

    let again = queue
        .begin(
            ConsumerGroup::Executor,
            &[Topic::Execution],
            10,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(
        again.is_none(),
        "the message was processed once and acknowledged"
    );
    let mut check = queue
        .begin(
            ConsumerGroup::Executor,
            &[Topic::Execution],
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(check.is_none());
    check.take();
}

/// A competing consumer that dies without acknowledging: after the lease the message is delivered
/// again with a higher attempt number, then acknowledged once and gone.
pub async fn expired_lease_is_redelivered_once(backend: &JdbcBackend) {
    let queue = backend.queue();
    queue.publish(vec![payload(7)]).await.unwrap();
    let lease = Duration::from_millis(300);
    let first = queue
        .receive(
            ConsumerGroup::Executor,
            Topic::Execution,
            10,
            lease,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    let second = queue
        .receive(
            ConsumerGroup::Executor,
            Topic::Execution,
            10,
            lease,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "redelivered after the lease");
    assert_eq!(second[0].tag, first[0].tag);
    assert_eq!(second[0].attempt, 2);
    queue
        .ack(ConsumerGroup::Executor, &[second[0].tag])
        .await
        .unwrap();
    let third = queue
        .receive(
            ConsumerGroup::Executor,
            Topic::Execution,
            10,
            lease,
            Duration::from_millis(700),
        )
        .await
        .unwrap();
    assert!(third.is_empty(), "acknowledged: never delivered again");
}

/// After `insert_malformed` put a row with a non-JSON payload for (log, indexer, key `bad-row`)
/// straight into the queue table, a consumer that decodes what it receives sets the bad row aside with
/// `dead_letter` and keeps going: it gets the good messages around it, the bad row is in the dead-letter
/// table and never delivered again.
pub async fn malformed_row_is_dead_lettered(
    backend: &JdbcBackend,
    insert_malformed: impl std::future::Future<Output = ()>,
) {
    let queue = backend.queue();
    let before = backend.queue_stats().await.unwrap();
    queue
        .publish(vec![
            Envelope::json(Topic::Log, "good-1", &json!({"n": 1})).unwrap(),
        ])
        .await
        .unwrap();
    insert_malformed.await;
    queue
        .publish(vec![
            Envelope::json(Topic::Log, "good-2", &json!({"n": 2})).unwrap(),
        ])
        .await
        .unwrap();
    let (good, bad) = consume_decoding(&*queue, 2, Duration::from_secs(10)).await;
    assert_eq!(good, vec!["good-1".to_string(), "good-2".to_string()]);
    assert_eq!(bad, vec!["bad-row".to_string()]);
    let after = backend.queue_stats().await.unwrap();
    assert_eq!(
        after.dead_letters,
        before.dead_letters + 1,
        "the malformed row is a dead letter"
    );
    assert_eq!(after.queued, 0);
    // The consumer goes on, and the bad row never comes back.
    queue
        .publish(vec![
            Envelope::json(Topic::Log, "good-3", &json!({"n": 3})).unwrap(),
        ])
        .await
        .unwrap();
    let (good, bad) = consume_decoding(&*queue, 1, Duration::from_secs(5)).await;
    assert_eq!(good, vec!["good-3".to_string()]);
    assert!(bad.is_empty());
}

/// An indexer-like consumer of (indexer, log): decodes each delivery, dead-letters what does not
/// decode, acknowledges the rest; stops after `want` good ones or `within`. Returns (good keys, bad keys).
async fn consume_decoding(
    queue: &dyn Queue,
    want: usize,
    within: Duration,
) -> (Vec<String>, Vec<String>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + within;
    while good.len() < want && Instant::now() < deadline {
        let got = queue
            .receive(
                ConsumerGroup::Indexer,
                Topic::Log,
                10,
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await
            .expect("receive");
        let mut tags = Vec::new();
        for d in got {
            match d.envelope.decode::<serde_json::Value>() {
                Ok(_) => {
                    tags.push(d.tag);
                    good.push(d.envelope.key.clone());
                }
                Err(e) => {
                    queue
                        .dead_letter(&d, &e.to_string())
                        .await
                        .expect("dead_letter");
                    bad.push(d.envelope.key.clone());
                }
            }
        }
        queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
    }
    (good, bad)
}

/// A row the backend cannot even read (inserted by `insert_unreadable` for (log, indexer)) is set
/// aside as a dead letter by the backend itself, and the consumer still gets the next message.
pub async fn unreadable_row_is_dead_lettered(
    backend: &JdbcBackend,
    insert_unreadable: impl std::future::Future<Output = ()>,
) {
    let queue = backend.queue();
    let before = backend.queue_stats().await.unwrap();
    insert_unreadable.await;
    queue
        .publish(vec![
            Envelope::json(Topic::Log, "after", &json!({"n": 1})).unwrap(),
        ])
        .await
        .unwrap();
    let (good, bad) = consume_decoding(&*queue, 1, Duration::from_secs(10)).await;
    assert_eq!(good, vec!["after".to_string()]);
    assert!(bad.is_empty());
    let after = backend.queue_stats().await.unwrap();
    assert_eq!(after.dead_letters, before.dead_letters + 1);
    assert_eq!(after.queued, 0);
}

/// 100,000 messages published in batches of 1,000 and consumed in batches of 500 by two competing
/// consumers: each arrives once, and the queue table is back near empty.
pub async fn load_100k(backend: &JdbcBackend) {
    const N: u64 = 100_000;
    let queue = backend.queue();
    let start = Instant::now();
    let publisher = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for batch in 0..(N / 1_000) {
                let messages: Vec<Envelope> = (batch * 1_000..(batch + 1) * 1_000)
                    .map(|i| {
                        Envelope::json(Topic::Log, format!("k{}", i % 64), &json!({"i": i}))
                            .unwrap()
                    })
                    .collect();
                queue.publish(messages).await.unwrap();
            }
        })
    };
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let got = queue
                        .receive(
                            ConsumerGroup::Indexer,
                            Topic::Log,
                            500,
                            Duration::from_secs(60),
                            Duration::from_millis(500),
                        )
                        .await
                        .unwrap();
                    if got.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    let tags: Vec<DeliveryTag> = got.iter().map(|d| d.tag).collect();
                    for d in &got {
                        let v: serde_json::Value = d.envelope.decode().unwrap();
                        seen.push(v["i"].as_u64().unwrap());
                    }
                    queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
                }
                seen
            })
        })
        .collect();
    publisher.await.unwrap();
    let mut all = HashSet::new();
    let mut total = 0;
    for c in consumers {
        let seen = c.await.unwrap();
        total += seen.len();
        all.extend(seen);
    }
    let elapsed = start.elapsed();
    eprintln!("load_100k: {N} messages published and consumed in {elapsed:?}");
    assert_eq!(total as u64, N, "every message delivered exactly once");
    assert_eq!(all.len() as u64, N);
    let stats = backend.queue_stats().await.unwrap();
    assert!(stats.queued < 10, "queue table back near empty: {stats:?}");
    backend.purge_broadcast().await.unwrap();
}

/// The offline purge works on a database whose engine is not running: dead letters go.
pub async fn offline_purge(url: &str, backend: JdbcBackend) {
    let queue = backend.queue();
    queue.publish(vec![payload(1)]).await.unwrap();
    let got = queue
        .receive(
            ConsumerGroup::Executor,
            Topic::Execution,
            1,
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    queue.dead_letter(&got[0], "poison").await.unwrap();
    assert_eq!(backend.queue_stats().await.unwrap().dead_letters, 1);
    backend.close().await;
    drop(backend);
    let report = purge_queue(url).await.expect("offline purge");
    assert_eq!(report.dead_letters, 1);
    let again = connect(url).await;
    assert_eq!(again.queue_stats().await.unwrap().dead_letters, 0);
}

/// The trigger unit suite of the testkit ([`testkit::triggers::run_all`]): the scheduler's claims,
/// writes under claims and all-or-nothing commits.
pub async fn trigger_unit_suite(url: &str) {
    let backend = connect(url).await;
    testkit::triggers::run_all(backend.queue()).await;
    backend.close().await;
}

/// The scheduler scenarios of the testkit ([`testkit::scheduler::run_all`]): the service behaviour by
/// behaviour (cron, lock, recovery, conditions, ScheduleOnDates, backfill, stopAfter, broken triggers,
/// polling triggers), two schedulers over 200 cron slots (exactly one execution per slot), a
/// scheduler killed mid-run, and two schedulers sharing polling triggers.
pub async fn scheduler_suite(url: &str) {
    let backend = connect(url).await;
    testkit::scheduler::run_all(&backend.repositories(), backend.queue()).await;
    backend.close().await;
}

/// The checks every server database runs, each on a fresh database of the service named by the
/// environment variable `$var` (skipped with a loud message when unset, a failure under `CI=true`,
/// [`service_url`]): `with_db` plus the tests `queue_conformance`, `repository_conformance`,
/// `killed_consumer`, `load_test`, `purge_offline`, `trigger_unit_conformance` and
/// `scheduler_scenarios`. The dialect's file adds what needs its own SQL. (SQLite has checks of
/// its own, on files and in memory: `sqlite.rs` does not use it.)
#[allow(unused_macros)]
macro_rules! server_database_tests {
    ($var:expr) => {
        /// Run `check` on a fresh database of the service, then drop it.
        async fn with_db<F, Fut>(check: F)
        where
            F: FnOnce(String) -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            let Some(base) = service_url($var) else {
                return;
            };
            let url = fresh_database(&base).await;
            check(url.clone()).await;
            drop_database(&base, &url).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn queue_conformance() {
            with_db(|url| async move { queue_suite(&url).await }).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn repository_conformance() {
            with_db(|url| async move { repository_suite(&url).await }).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn task_runs_apart() {
            with_db(|url| async move { task_runs_stored_apart(&url).await }).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn killed_consumer() {
            with_db(|url| async move {
                let backend = connect(&url).await;
                killed_consumer_is_redelivered_and_processed_once(&backend).await;
                expired_lease_is_redelivered_once(&backend).await;
                backend.close().await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn load_test() {
            with_db(|url| async move {
                let backend = connect(&url).await;
                load_100k(&backend).await;
                backend.close().await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn purge_offline() {
            with_db(|url| async move {
                let backend = connect(&url).await;
                offline_purge(&url, backend).await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn trigger_unit_conformance() {
            with_db(|url| async move { trigger_unit_suite(&url).await }).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn scheduler_scenarios() {
            with_db(|url| async move { scheduler_suite(&url).await }).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn prefetched_missing_is_fenced() {
            with_db(|url| async move {
                let backend = connect(&url).await;
                prefetched_missing_is_fenced_by_a_create(&backend).await;
                backend.close().await;
            })
            .await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use server_database_tests;

/// Publish `e` on the execution topic of `backend`.
pub async fn publish_execution(
    backend: &kestra_backend_jdbc::JdbcBackend,
    e: &kestra_core::model::Execution,
) {
    backend
        .queue()
        .publish(vec![kestra_core::messages::execution_envelope(e).unwrap()])
        .await
        .unwrap();
}

/// The executor's next unit of work over the execution topic (panics if none comes within 5 s).
pub async fn execution_unit(
    backend: &kestra_backend_jdbc::JdbcBackend,
) -> Box<dyn kestra_core::queue::UnitOfWork> {
    use kestra_core::queue::{ConsumerGroup, Topic};
    backend
        .queue()
        .begin(
            ConsumerGroup::Executor,
            &[Topic::Execution],
            10,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap()
        .expect("a unit claims the published message")
}

/// After a fenced unit: the stored execution is the API's write `by_api` (its labels), and its
/// flow revision is still `flow_revision` (nothing of the fenced unit is written).
pub async fn assert_api_write_stands(
    backend: &kestra_backend_jdbc::JdbcBackend,
    by_api: &kestra_core::model::Execution,
    flow_revision: i32,
) {
    let stored = backend
        .repositories()
        .executions
        .find_by_id(&by_api.tenant_id, &by_api.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.labels, by_api.labels, "the API's write stands");
    assert_eq!(
        stored.flow_revision, flow_revision,
        "nothing of the fenced unit is written"
    );
}

/// An execution that a unit's prefetch found not stored, and that the API stores before the unit
/// commits, refuses the unit (fenced) instead of being overwritten - SQLite's deferred unit checks
/// it under the write lock, PostgreSQL and MySQL insert the row instead of replacing it; the
/// message comes back and the next unit, prefetching again, loads the API's execution.
pub async fn prefetched_missing_is_fenced_by_a_create(backend: &JdbcBackend) {
    use kestra_core::model::Execution;
    use kestra_core::queue::QueueError;
    let repo = backend.repositories().executions;
    let e = Execution::new("test.prefetch", "flow", 1);
    publish_execution(backend, &e).await;
    let mut unit = execution_unit(backend).await;
    unit.prefetch_executions(&[(e.id.clone(), None)])
        .await
        .unwrap();
    let mut by_api = e.clone();
    by_api
        .labels
        .push(kestra_core::model::Label::new("by", "api"));
    repo.save(&by_api).await.unwrap();
    assert_eq!(
        unit.load_execution(&e.id).await.unwrap(),
        None,
        "the load answers what the prefetch found"
    );
    let mut created = e.clone();
    created.flow_revision = 7;
    unit.save_execution(&created).await.unwrap();
    assert!(
        matches!(unit.commit().await, Err(QueueError::Fenced { .. })),
        "a unit whose prefetched-missing execution was created meanwhile is fenced"
    );
    assert_api_write_stands(backend, &by_api, 1).await;
    // Its message is claimable again at once.
    let mut unit = execution_unit(backend).await;
    unit.prefetch_executions(&[(e.id.clone(), None)])
        .await
        .unwrap();
    let loaded = unit.load_execution(&e.id).await.unwrap();
    assert_eq!(
        loaded.map(|l| l.labels),
        Some(by_api.labels),
        "the next unit loads the API's execution"
    );
    unit.commit().await.unwrap();
}

/// Two columns of the rows `sql` (ended by the bound `execution_id`'s placeholder) selects, in
/// `order`, on whichever database a [`Raw`] holds.
macro_rules! rows_of {
    ($raw:expr, $sql:expr, $order:expr, $id:expr, ($a:ty, $ca:expr), ($b:ty, $cb:expr)) => {{
        use sqlx::Row;
        macro_rules! fetch {
            ($pool:expr, $placeholder:expr) => {{
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{}{} ORDER BY {}",
                    $sql, $placeholder, $order
                )))
                .bind($id.to_string())
                .fetch_all($pool)
                .await
                .unwrap();
                rows.iter()
                    .map(|r| (r.get::<$a, _>($ca), r.get::<$b, _>($cb)))
                    .collect()
            }};
        }
        match $raw {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => fetch!(pool, "?"),
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => fetch!(pool, "$1"),
            #[cfg(feature = "mysql")]
            Raw::MySql(pool) => fetch!(pool, "?"),
        }
    }};
}

/// Raw SQL on a test database, to look under the backend (placeholders are `?` on every dialect).
pub enum Raw {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite") {
            return Raw::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap());
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres") {
            return Raw::Postgres(sqlx::PgPool::connect(url).await.unwrap());
        }
        #[cfg(feature = "mysql")]
        {
            return Raw::MySql(
                sqlx::MySqlPool::connect(&url.replacen("mariadb:", "mysql:", 1))
                    .await
                    .unwrap(),
            );
        }
        #[allow(unreachable_code)]
        {
            panic!("no dialect enabled for {url}")
        }
    }

    /// Run `sql` with text binds; the number of rows it changed.
    pub async fn exec(&self, sql: &str, binds: &[&str]) -> u64 {
        use sqlx::AssertSqlSafe;
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => {
                let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                q.execute(pool).await.unwrap().rows_affected()
            }
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => {
                let mut n = 0;
                let sql: String = sql
                    .chars()
                    .map(|c| {
                        if c == '?' {
                            n += 1;
                            format!("${n}")
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                q.execute(pool).await.unwrap().rows_affected()
            }
            #[cfg(feature = "mysql")]
            Raw::MySql(pool) => {
                let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                q.execute(pool).await.unwrap().rows_affected()
            }
        }
    }

    /// The task runs stored apart for `execution_id`: `(pos, doc)` in position order.
    pub async fn task_runs(&self, execution_id: &str) -> Vec<(i64, String)> {
        rows_of!(
            self,
            "SELECT pos, doc FROM execution_task_runs WHERE execution_id = ",
            "pos",
            execution_id,
            (i64, "pos"),
            (String, "doc")
        )
    }

    /// The label rows of `execution_id`: `(key, value)` in key order.
    pub async fn labels(&self, execution_id: &str) -> Vec<(String, String)> {
        rows_of!(
            self,
            "SELECT label_key, label_value FROM execution_labels WHERE execution_id = ",
            "label_key",
            execution_id,
            (String, "label_key"),
            (String, "label_value")
        )
    }
}

/// Task runs are stored apart from their execution's row: the repository writes and reads them, a
/// unit of work rewrites only those that changed (a row changed under it, with the revision kept,
/// is left as it is), a row written before the split (task runs in its document) is read whole and
/// split when written again, and a purge removes them.
pub async fn task_runs_stored_apart(url: &str) {
    use kestra_core::model::{Execution, TaskRun};
    use kestra_core::queue::LoadedExecution;
    let backend = connect(url).await;
    let raw = Raw::connect(url).await;
    let repo = backend.repositories().executions;
    let queue = backend.queue();
    let mut e = Execution::new("test.split", "flow", 1);
    for i in 0..4 {
        let run = TaskRun::new(&e, format!("t{i}"));
        e.task_run_list.push(run);
    }
    repo.save(&e).await.unwrap();
    let rows = raw.task_runs(&e.id).await;
    assert_eq!(
        rows.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        repo.find_by_id(&e.tenant_id, &e.id).await.unwrap(),
        Some(e.clone())
    );

    // A unit saves it and keeps the stamp; a task run row is changed under it (revision kept).
    let unit_of = |queue: Arc<dyn Queue>, e: Execution| async move {
        queue
            .publish(vec![kestra_core::messages::execution_envelope(&e).unwrap()])
            .await
            .unwrap();
        queue
            .begin(
                ConsumerGroup::Executor,
                &[Topic::Execution],
                10,
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .expect("the execution's message is claimed")
    };
    let mut unit = unit_of(queue.clone(), e.clone()).await;
    let mut loaded = unit.load_execution(&e.id).await.unwrap().unwrap();
    let stamp = unit
        .save_execution_stamped(&mut loaded)
        .await
        .unwrap()
        .expect("a JDBC unit gives a stamp");
    unit.commit().await.unwrap();
    let mut tampered = e.task_run_list[2].clone();
    tampered.value = Some("changed under the backend".into());
    let changed = raw
        .exec(
            "UPDATE execution_task_runs SET doc = ? WHERE execution_id = ? AND pos = 2",
            &[&serde_json::to_string(&tampered).unwrap(), &e.id],
        )
        .await;
    assert_eq!(changed, 1);
    let mut unit = unit_of(queue.clone(), e.clone()).await;
    let loaded = unit
        .load_execution_unless(&e.id, Some(&stamp))
        .await
        .unwrap();
    assert!(
        matches!(loaded, LoadedExecution::Unchanged),
        "same revision: unchanged, {loaded:?}"
    );
    let mut next = e.clone();
    next.task_run_list[0].value = Some("changed by the unit".into());
    unit.save_execution_stamped(&mut next).await.unwrap();
    unit.commit().await.unwrap();
    let found = repo.find_by_id(&e.tenant_id, &e.id).await.unwrap().unwrap();
    assert_eq!(found.task_run_list[0], next.task_run_list[0]);
    assert_eq!(
        found.task_run_list[2], tampered,
        "the unchanged task run was not written again"
    );

    // A row written before the split: its task runs in its document.
    let mut legacy = Execution::new("test.split", "legacy", 1);
    for i in 0..3 {
        let run = TaskRun::new(&legacy, format!("l{i}"));
        legacy.task_run_list.push(run);
    }
    repo.save(&legacy).await.unwrap();
    raw.exec(
        "UPDATE executions SET doc = ?, task_runs = NULL, revision = '' WHERE id = ?",
        &[&serde_json::to_string(&legacy).unwrap(), &legacy.id],
    )
    .await;
    raw.exec(
        "DELETE FROM execution_task_runs WHERE execution_id = ?",
        &[&legacy.id],
    )
    .await;
    assert_eq!(
        repo.find_by_id(&legacy.tenant_id, &legacy.id)
            .await
            .unwrap(),
        Some(legacy.clone())
    );
    let page = repo
        .search(
            &kestra_core::repository::ExecutionQuery {
                namespace: Some("test.split".into()),
                ..Default::default()
            },
            &kestra_core::repository::Pageable::default(),
        )
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    let listed = page.results.iter().find(|x| x.id == legacy.id).unwrap();
    assert_eq!(listed.task_run_list, legacy.task_run_list);
    let mut unit = unit_of(queue.clone(), legacy.clone()).await;
    let mut loaded = unit.load_execution(&legacy.id).await.unwrap().unwrap();
    assert_eq!(loaded.task_run_list, legacy.task_run_list);
    loaded.task_run_list.truncate(2);
    unit.save_execution_stamped(&mut loaded).await.unwrap();
    unit.commit().await.unwrap();
    assert_eq!(
        raw.task_runs(&legacy.id).await.len(),
        2,
        "split when written"
    );
    assert_eq!(
        repo.find_by_id(&legacy.tenant_id, &legacy.id)
            .await
            .unwrap(),
        Some(loaded)
    );

    // A unit's first save of an execution never stored writes its row, labels and task runs (on
    // SQLite in the unit's one deferred call); a later save that changes a label rewrites them.
    let mut fresh = Execution::new("test.split", "labelled", 1);
    fresh.labels = vec![
        kestra_core::model::Label::new("team", "a"),
        kestra_core::model::Label::new("system.correlationId", fresh.id.clone()),
    ];
    let run = TaskRun::new(&fresh, "f0");
    fresh.task_run_list.push(run);
    let mut unit = unit_of(queue.clone(), fresh.clone()).await;
    assert_eq!(unit.load_execution(&fresh.id).await.unwrap(), None);
    let mut saved = fresh.clone();
    unit.save_execution_stamped(&mut saved).await.unwrap();
    unit.commit().await.unwrap();
    let labels = |team: &str| {
        vec![
            ("system.correlationId".to_string(), fresh.id.clone()),
            ("team".to_string(), team.to_string()),
        ]
    };
    assert_eq!(raw.labels(&fresh.id).await, labels("a"), "first save");
    assert_eq!(raw.task_runs(&fresh.id).await.len(), 1);
    assert_eq!(
        repo.find_by_id(&fresh.tenant_id, &fresh.id).await.unwrap(),
        Some(saved.clone())
    );
    let mut unit = unit_of(queue.clone(), saved.clone()).await;
    let mut relabelled = unit.load_execution(&fresh.id).await.unwrap().unwrap();
    relabelled.labels[0].value = "b".into();
    unit.save_execution_stamped(&mut relabelled).await.unwrap();
    unit.commit().await.unwrap();
    assert_eq!(raw.labels(&fresh.id).await, labels("b"), "label changed");
    assert_eq!(
        repo.find_by_id(&fresh.tenant_id, &fresh.id).await.unwrap(),
        Some(relabelled)
    );

    // A purge removes the task runs too.
    repo.purge(&e.tenant_id, &e.id).await.unwrap();
    assert!(raw.task_runs(&e.id).await.is_empty());
    assert_eq!(repo.find_by_id(&e.tenant_id, &e.id).await.unwrap(), None);
    backend.close().await;
}
