//! `Engine::wait_for` without a repository poll per waiter (issue 15): the engine's executor
//! reports the executions that ended once its unit committed, and one task reads every pending
//! wait's execution with one query per interval as the fallback. Checked with a repository wrapper
//! that counts the reads: a wait returns on the notification alone (the fallback poll set to a
//! minute), 200 waits cost one query per interval, a timeout still reports the last state and
//! leaves no registration behind, and an execution run by another engine (another backend
//! connection, no notification of this one) is still seen. On SQLite always; on PostgreSQL and
//! MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use indexmap::IndexMap;
use kestra::core::model::{Execution, StateType};
use kestra::core::repository::{
    ExecutionQuery, ExecutionRepository, Page, Pageable, PurgeCount, RepoResult, Repositories,
};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine, EngineError};

/// The execution repository, counting its reads by id.
struct Counting {
    inner: Arc<dyn ExecutionRepository>,
    by_id: AtomicUsize,
    by_ids: AtomicUsize,
}

impl Counting {
    /// (`find_by_id` calls, `find_by_ids` calls) so far.
    fn reads(&self) -> (usize, usize) {
        (
            self.by_id.load(Ordering::SeqCst),
            self.by_ids.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl ExecutionRepository for Counting {
    async fn save(&self, execution: &Execution) -> RepoResult<()> {
        self.inner.save(execution).await
    }
    async fn save_batch(&self, executions: &[Execution]) -> RepoResult<()> {
        self.inner.save_batch(executions).await
    }
    async fn find_by_id(&self, tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        self.by_id.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_id(tenant, id).await
    }
    async fn find_by_ids(&self, tenant: &str, ids: &[String]) -> RepoResult<Vec<Execution>> {
        self.by_ids.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_ids(tenant, ids).await
    }
    async fn search(&self, query: &ExecutionQuery, page: &Pageable) -> RepoResult<Page<Execution>> {
        self.inner.search(query, page).await
    }
    async fn delete(&self, tenant: &str, id: &str) -> RepoResult<()> {
        self.inner.delete(tenant, id).await
    }
    async fn purge(&self, tenant: &str, id: &str) -> RepoResult<PurgeCount> {
        self.inner.purge(tenant, id).await
    }
}

/// The backend's repositories with the execution reads counted.
fn counted(backend: &JdbcBackend) -> (Repositories, Arc<Counting>) {
    let mut repositories = backend.repositories();
    let counting = Arc::new(Counting {
        inner: repositories.executions.clone(),
        by_id: AtomicUsize::new(0),
        by_ids: AtomicUsize::new(0),
    });
    repositories.executions = counting.clone();
    (repositories, counting)
}

/// An engine (every component) on `url` whose execution reads are counted, its fallback poll
/// every `poll`; the directory of its storage goes with the returned guard.
async fn counted_engine(
    url: &str,
    poll: Duration,
) -> (tempfile::TempDir, Arc<Engine>, Arc<Counting>) {
    let dir = tempfile::tempdir().unwrap();
    let backend = JdbcBackend::connect(url).await.unwrap();
    let (repositories, counting) = counted(&backend);
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Arc::new(
        Engine::builder(backend.queue(), repositories, storage)
            .wait_poll_interval(poll)
            .start(),
    );
    (dir, engine, counting)
}

const PAUSED: &str = "id: paused\nnamespace: {ns}\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n  - id: after\n    type: io.kestra.plugin.core.debug.Return\n    format: done\n";
const QUICK: &str = "id: quick\nnamespace: {ns}\ntasks:\n  - id: one\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ execution.id }}\"\n";

fn flow(template: &str, ns: &str) -> String {
    template.replace("{ns}", ns)
}

fn namespace() -> String {
    format!("wait.w{}", kestra::core::model::new_id().to_lowercase())
}

/// Until the stored execution is in `state` (read directly, not through `wait_for`).
async fn until_state(engine: &Engine, id: &str, state: StateType) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = engine.execution(id).await.unwrap();
        if e.as_ref().is_some_and(|e| e.state.current() == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} not {state} within 30 s: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A wait returns on the executor's report alone: the fallback poll is a minute away, the
/// execution ends (resumed) after the wait registered, and the wait reads the repository at most
/// once (when it registers).
async fn a_wait_returns_on_the_notification(url: &str) {
    let ns = namespace();
    let (_dir, engine, counting) = counted_engine(url, Duration::from_secs(60)).await;
    engine.deploy(&flow(PAUSED, &ns)).await.unwrap();
    let id = engine
        .execute(&ns, "paused", IndexMap::new())
        .await
        .unwrap()
        .id;
    until_state(&engine, &id, StateType::Paused).await;

    let (by_id, by_ids) = counting.reads();
    let waiting = {
        let engine = engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let done = engine.wait_for(&id, Duration::from_secs(50)).await;
            (done, start.elapsed())
        })
    };
    // Registered (and its first read done) before the execution goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.pending_waits() == 0 || counting.reads().1 == by_ids {
        assert!(Instant::now() < deadline, "the wait never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.resume(&id, Default::default()).await.unwrap();
    let (done, waited) = waiting.await.unwrap();
    let done = done.unwrap();
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    assert!(
        waited < Duration::from_secs(20),
        "the wait took {waited:?}: not woken by the executor's report (poll: 60 s)"
    );
    let (by_id_after, by_ids_after) = counting.reads();
    assert_eq!(by_id_after, by_id, "no direct read by the wait");
    assert_eq!(
        by_ids_after - by_ids,
        1,
        "one read when the wait registered, none after (the end was notified)"
    );
    assert_eq!(engine.pending_waits(), 0, "the ended wait unregistered");
    // The execution returned is the stored one.
    assert_eq!(Some(done), engine.execution(&id).await.unwrap());
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
}

/// 200 concurrent waits (ids never created) cost one repository query per poll interval, not one
/// per wait; they all time out with "not created yet" and leave no registration behind. A paused
/// execution's wait times out with its state.
async fn many_waits_share_one_query_per_interval(url: &str) {
    let ns = namespace();
    let (_dir, engine, counting) = counted_engine(url, Duration::from_millis(100)).await;
    engine.deploy(&flow(PAUSED, &ns)).await.unwrap();
    let paused = engine
        .execute(&ns, "paused", IndexMap::new())
        .await
        .unwrap()
        .id;
    until_state(&engine, &paused, StateType::Paused).await;

    let timeout = Duration::from_millis(2_500);
    let mut waits = Vec::new();
    for i in 0..200 {
        let engine = engine.clone();
        let id = format!("never-created-{i}-{}", kestra::core::model::new_id());
        waits.push(tokio::spawn(async move {
            (engine.wait_for(&id, timeout).await, id)
        }));
    }
    // Window: from 0.5 s to 1.5 s after the waits started, every wait registered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.pending_waits(), 200, "200 waits registered");
    let before = counting.reads();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = counting.reads();
    assert_eq!(after.0, before.0, "no wait reads the repository on its own");
    let polls = after.1 - before.1;
    assert!(
        (4..=15).contains(&polls),
        "one query per 100 ms interval for 200 waits over 1 s: {polls} queries"
    );
    for wait in waits {
        let (result, id) = wait.await.unwrap();
        match result {
            Err(EngineError::Timeout {
                id: timed_out,
                state,
                ..
            }) => {
                assert_eq!(timed_out, id);
                assert_eq!(state, "not created yet");
            }
            other => panic!("wait for {id}: expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(engine.pending_waits(), 0, "timed-out waits unregistered");

    // A paused execution: the timeout names its state.
    let start = Instant::now();
    match engine.wait_for(&paused, Duration::from_millis(300)).await {
        Err(EngineError::Timeout { state, .. }) => assert_eq!(state, "PAUSED"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // A wait whose future is dropped unregisters too.
    tokio::select! {
        _ = engine.wait_for(&paused, Duration::from_secs(60)) => panic!("the execution is paused"),
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    assert_eq!(engine.pending_waits(), 0, "a dropped wait unregistered");
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
}

/// New waits registering within a few milliseconds of each other are read together: 60 waits
/// registered one every millisecond (ids never created, poll a minute away) cost a handful of
/// reads, not one each; and a wait for an execution this engine saw end is answered with it.
async fn new_waits_are_read_together(url: &str) {
    let ns = namespace();
    let (_dir, engine, counting) = counted_engine(url, Duration::from_secs(60)).await;
    let before = counting.reads();
    let mut waits = Vec::new();
    for i in 0..60 {
        let engine = engine.clone();
        let id = format!("never-created-{i}-{}", kestra::core::model::new_id());
        waits.push(tokio::spawn(async move {
            engine.wait_for(&id, Duration::from_secs(2)).await
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.pending_waits() < 60 {
        assert!(Instant::now() < deadline, "the waits never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reads = counting.reads().1 - before.1;
    assert!(
        (1..=20).contains(&reads),
        "60 waits registered over about 60 ms: {reads} reads (one per wait without batching)"
    );
    for wait in waits {
        assert!(matches!(
            wait.await.unwrap(),
            Err(EngineError::Timeout { .. })
        ));
    }

    // Ended before its (second) wait: answered, as stored.
    engine.deploy(&flow(QUICK, &ns)).await.unwrap();
    let quick = engine
        .execute(&ns, "quick", IndexMap::new())
        .await
        .unwrap()
        .id;
    let first = engine
        .wait_for(&quick, Duration::from_secs(30))
        .await
        .unwrap();
    let again = engine
        .wait_for(&quick, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.state.current(), StateType::Success);
    assert_eq!(first, again);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
}

/// An execution run by another engine (its own backend connection: no notification reaches this
/// one, which runs no component) is seen by the fallback poll.
async fn an_end_elsewhere_is_seen_by_the_poll(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace();
    let runner_backend = JdbcBackend::connect(url).await.unwrap();
    let runner = Engine::builder(
        runner_backend.queue(),
        runner_backend.repositories(),
        Arc::new(LocalStorage::new(dir.path()).unwrap()),
    )
    .start();
    let backend = JdbcBackend::connect(url).await.unwrap();
    let (repositories, counting) = counted(&backend);
    let waiter = Engine::builder(
        backend.queue(),
        repositories,
        Arc::new(LocalStorage::new(dir.path()).unwrap()),
    )
    .components(Components::none())
    .wait_poll_interval(Duration::from_millis(100))
    .start();
    waiter.deploy(&flow(QUICK, &ns)).await.unwrap();
    waiter.deploy(&flow(PAUSED, &ns)).await.unwrap();
    // Quick: possibly ended before the wait registers.
    let quick = waiter
        .execute(&ns, "quick", IndexMap::new())
        .await
        .unwrap()
        .id;
    let done = waiter.wait_for(&quick, Duration::from_secs(30)).await;
    assert_eq!(done.unwrap().state.current(), StateType::Success);
    // Paused, then resumed while waited for: only the poll can see its end.
    let paused = waiter
        .execute(&ns, "paused", IndexMap::new())
        .await
        .unwrap()
        .id;
    until_state(&waiter, &paused, StateType::Paused).await;
    let before = counting.reads();
    let (done, ()) = tokio::join!(waiter.wait_for(&paused, Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        runner.resume(&paused, Default::default()).await.unwrap();
    });
    let done = done.unwrap();
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    let after = counting.reads();
    assert!(
        after.1 - before.1 >= 2,
        "seen by the poll: {:?} -> {:?}",
        before,
        after
    );
    waiter.shutdown().await;
    runner.shutdown().await;
}

common::on_each_database!(
    waits: a_wait_returns_on_the_notification,
    many_waits_share_one_query_per_interval,
    new_waits_are_read_together,
    an_end_elsewhere_is_seen_by_the_poll
);
