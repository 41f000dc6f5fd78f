//! Limits that involve several components and a restart, through the real engine:
//! - a flow with `concurrency.limit: 1` (QUEUE) run 500 times through three executors never has two
//!   executions running at once, and every execution ends SUCCESS, in creation order of start;
//! - with `behavior: CANCEL`, executions over the limit end CANCELLED and none overlap;
//! - a retry scheduled before a full restart of the engine still happens after it;
//! - a task running 2.5 times longer than the worker's job lease runs once (the lease is renewed);
//! - a restarted execution of a limited flow waits (QUEUED) for the slot held by another one.
//!
//! On SQLite always; on PostgreSQL and MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::core::inputs::RawInput;
use kestra::core::model::{Execution, StateType};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine};

async fn engine(url: &str, storage: &std::path::Path, components: Components) -> Engine {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(storage).unwrap());
    Engine::builder(backend.queue(), backend.repositories(), storage)
        .components(components)
        .start()
}

/// The RUNNING interval of an execution: from its first RUNNING to its end.
fn running_interval(
    e: &Execution,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let start = e
        .state
        .histories()
        .iter()
        .find(|h| h.state == StateType::Running)?
        .date;
    Some((start, e.state.end_date()?))
}

fn assert_no_overlap(executions: &[Execution]) {
    let mut intervals: Vec<_> = executions.iter().filter_map(running_interval).collect();
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two executions ran at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

async fn concurrency(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("limits.t{}", kestra::core::model::new_id().to_lowercase());
    let none = Components::none();
    // Three executors, one worker + indexer, all on the same database.
    let mut executors = Vec::new();
    for _ in 0..3 {
        executors.push(
            engine(
                url,
                dir.path(),
                Components {
                    executor: true,
                    ..none
                },
            )
            .await,
        );
    }
    let front = engine(
        url,
        dir.path(),
        Components {
            worker: true,
            indexer: true,
            ..none
        },
    )
    .await;

    for (id, behavior, n) in [("queued", "QUEUE", 500usize), ("cancelled", "CANCEL", 40)] {
        front
            .deploy(&format!("id: {id}\nnamespace: {ns}\nconcurrency:\n  limit: 1\n  behavior: {behavior}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ execution.id }}}}\"\n"))
            .await
            .unwrap();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(front.execute(&ns, id, IndexMap::new()).await.unwrap().id);
        }
        let mut done = Vec::with_capacity(n);
        for id in &ids {
            done.push(front.wait_for(id, Duration::from_secs(300)).await.unwrap());
        }
        assert_no_overlap(&done);
        let succeeded = done
            .iter()
            .filter(|e| e.state.current() == StateType::Success)
            .count();
        let cancelled = done
            .iter()
            .filter(|e| e.state.current() == StateType::Cancelled)
            .count();
        if behavior == "QUEUE" {
            assert_eq!(succeeded, n, "every queued execution runs");
        } else {
            assert!(succeeded >= 1, "at least the first one runs");
            assert_eq!(
                succeeded + cancelled,
                n,
                "the others are cancelled, none fails"
            );
        }
    }
    front.shutdown().await;
    for e in executors {
        e.shutdown().await;
    }
}

async fn retry_survives_restart(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("limits.r{}", kestra::core::model::new_id().to_lowercase());
    let flag = dir.path().join("flag");
    let first = engine(url, dir.path(), Components::default()).await;
    first
        .deploy(&format!("id: later\nnamespace: {ns}\ntasks:\n  - id: check\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"test -f {}\"]\n    retry:\n      type: constant\n      interval: PT3S\n      maxAttempts: 2\n", flag.display()))
        .await
        .unwrap();
    let e = first.execute(&ns, "later", IndexMap::new()).await.unwrap();
    // Wait for the first attempt to fail and the retry to be scheduled, then stop everything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cur = first.execution(&e.id).await.unwrap();
        if cur.as_ref().is_some_and(|c| {
            c.task_run_list
                .iter()
                .any(|r| r.state.current() == StateType::Retrying)
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry was never scheduled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.shutdown().await;
    std::fs::write(&flag, b"second attempt passes").unwrap();
    // A brand-new engine (new connections, new components) on the same database.
    let second = engine(url, dir.path(), Components::default()).await;
    let done = second
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    assert_eq!(done.task_run_list[0].attempts.len(), 2);
    second.shutdown().await;
}

async fn long_task_outlives_its_lease(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("limits.l{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let worker = kestra::core::worker::WorkerConfig {
        lease: Duration::from_secs(2),
        lease_renewal: Duration::from_millis(400),
        ..Default::default()
    };
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage)
        .worker_config(worker)
        .start();
    let runs = dir.path().join("runs");
    engine
        .deploy(&format!("id: long\nnamespace: {ns}\ntasks:\n  - id: slow\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"echo run >> {}\", \"sleep 5\"]\n", runs.display()))
        .await
        .unwrap();
    let e = engine.execute(&ns, "long", IndexMap::new()).await.unwrap();
    let done = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    // Without renewals the job would have been delivered again after 2 s and run a second time.
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        lines.lines().count(),
        1,
        "the 5 s task ran more than once: {lines:?}"
    );
    engine.shutdown().await;
}

async fn restart_takes_a_slot(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("limits.s{}", kestra::core::model::new_id().to_lowercase());
    let flag = dir.path().join("flag");
    let engine = engine(url, dir.path(), Components::default()).await;
    engine
        .deploy(&format!("id: one\nnamespace: {ns}\nconcurrency:\n  limit: 1\ninputs:\n  - id: mode\n    type: STRING\ntasks:\n  - id: t\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"if [ {{{{ inputs.mode }}}} = hold ]; then sleep 2; else test -f {}; fi\"]\n", flag.display()))
        .await
        .unwrap();
    let mode = |m: &str| IndexMap::from([("mode".to_string(), RawInput::Text(m.to_string()))]);
    let first = engine.execute(&ns, "one", mode("check")).await.unwrap();
    let first = engine
        .wait_for(&first.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(first.state.current(), StateType::Failed, "no flag yet");
    let holder = engine.execute(&ns, "one", mode("hold")).await.unwrap();
    wait_state(&engine, &holder.id, StateType::Running).await;
    std::fs::write(&flag, b"now it passes").unwrap();
    engine.restart(&first.id).await.unwrap();
    wait_state(&engine, &first.id, StateType::Queued).await;
    let holder = engine
        .wait_for(&holder.id, Duration::from_secs(30))
        .await
        .unwrap();
    let restarted = engine
        .wait_for(&first.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(holder.state.current(), StateType::Success);
    assert_eq!(restarted.state.current(), StateType::Success);
    let running_again = restarted
        .state
        .histories()
        .iter()
        .rev()
        .find(|h| h.state == StateType::Running)
        .unwrap()
        .date;
    assert!(
        running_again >= holder.state.end_date().unwrap(),
        "the restart ran only once the slot was free"
    );
    engine.shutdown().await;
}

/// Wait until the execution is in `state` (at most 20 s).
async fn wait_state(engine: &Engine, id: &str, state: StateType) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let current = engine
            .execution(id)
            .await
            .unwrap()
            .map(|e| e.state.current());
        if current == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "execution {id} never reached {state} (is {current:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

common::on_each_database!(
    limits:
    concurrency,
    retry_survives_restart,
    long_task_outlives_its_lease,
    restart_takes_a_slot
);
