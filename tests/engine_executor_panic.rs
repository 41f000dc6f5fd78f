//! A panic inside the executor's processing (a bug - armed here by the testkit fault point
//! `kestra-testkit-fault: executor-panic`, since no honest input makes `process` panic) neither
//! kills the executor nor loops: the unit is rolled back, and when it comes again the execution is
//! failed with the panic's message in its logs; other executions go on. On SQLite, PostgreSQL and
//! MariaDB (issue 16, item 1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::Engine;
use kestra::core::model::{Level, StateType};
use kestra::core::testkit::faults::{EXECUTOR_PANIC, FAULT_LABEL};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

async fn a_panicking_execution_fails_and_the_executor_goes_on(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("hostile.p{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage).start();
    engine
        .deploy(&format!(
            "id: poison\nnamespace: {ns}\nlabels:\n  {FAULT_LABEL}: {EXECUTOR_PANIC}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: never\n"
        ))
        .await
        .unwrap();
    engine
        .deploy(&format!(
            "id: fine\nnamespace: {ns}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: ok\n"
        ))
        .await
        .unwrap();
    let poison = engine
        .execute(&ns, "poison", IndexMap::new())
        .await
        .unwrap();
    let done = engine
        .wait_for(&poison.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Failed, "{done:?}");
    // The executor is alive: another execution runs to its end.
    let fine = engine.execute(&ns, "fine", IndexMap::new()).await.unwrap();
    let fine = engine
        .wait_for(&fine.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(fine.state.current(), StateType::Success, "{fine:?}");
    let mut logs = Vec::new();
    for _ in 0..50 {
        logs = engine
            .repositories()
            .logs
            .find_by_execution(&done.tenant_id, &done.id, Some(Level::Error), None)
            .await
            .unwrap();
        if logs
            .iter()
            .any(|l| l.message.contains("panic: testkit fault point"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logs.iter()
            .any(|l| l.message.contains("the executor could not process")
                && l.message.contains("panic: testkit fault point")),
        "the reason is in the execution's logs: {logs:?}"
    );
    engine.shutdown().await;
}

/// An execution failed by the executor outside its processing (here: a panic) gives back its
/// concurrency slot: with `limit: 1`, the second execution waits QUEUED behind the first, and starts
/// (then fails the same way) once the first is failed. Without the release it would stay QUEUED.
async fn a_failed_execution_releases_its_concurrency_slot(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("hostile.s{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage).start();
    engine
        .deploy(&format!(
            "id: poison\nnamespace: {ns}\nlabels:\n  {FAULT_LABEL}: {EXECUTOR_PANIC}\nconcurrency:\n  limit: 1\n  behavior: QUEUE\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: never\n"
        ))
        .await
        .unwrap();
    let first = engine
        .execute(&ns, "poison", IndexMap::new())
        .await
        .unwrap();
    let second = engine
        .execute(&ns, "poison", IndexMap::new())
        .await
        .unwrap();
    for id in [&first.id, &second.id] {
        let done = engine
            .wait_for(id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{id} ends (its slot was released): {e}"));
        assert_eq!(done.state.current(), StateType::Failed, "{done:?}");
    }
    engine.shutdown().await;
}

common::on_each_database!(
    executor_panic: a_panicking_execution_fails_and_the_executor_goes_on,
    a_failed_execution_releases_its_concurrency_slot
);
