//! The JDBC backend on SQLite: the conformance suites and the backend-specific checks.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance() {
    queue_suite(&sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_conformance() {
    repository_suite(&sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_runs_apart() {
    task_runs_stored_apart(&sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_conformance_in_memory() {
    repository_suite("sqlite::memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_consumer() {
    let backend = connect("sqlite::memory:").await;
    killed_consumer_is_redelivered_and_processed_once(&backend).await;
    expired_lease_is_redelivered_once(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_row() {
    let url = sqlite_url();
    let backend = connect(&url).await;
    malformed_row_is_dead_lettered(&backend, async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) VALUES ('log', 'indexer', 'bad-row', ?, 0, 0)")
            .bind(b"{not json".to_vec())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreadable_row() {
    let url = sqlite_url();
    let backend = connect(&url).await;
    unreadable_row_is_dead_lettered(&backend, async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        // SQLite's type affinity lets a BLOB into the TEXT key column: the row cannot be read back.
        sqlx::query("INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) VALUES ('log', 'indexer', X'FFFE', X'7B7D', 0, 0)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_test() {
    let backend = connect(&sqlite_url()).await;
    load_100k(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_offline() {
    let url = sqlite_url();
    let backend = connect(&url).await;
    offline_purge(&url, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trigger_unit_conformance() {
    trigger_unit_suite(&sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_scenarios() {
    scheduler_suite(&sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_scenarios_in_memory() {
    scheduler_suite("sqlite::memory:").await;
}

/// An execution that a deferred unit's prefetch found not stored, and that the API stores before
/// the unit commits, refuses the unit (fenced) instead of being overwritten (the SQLite run of
/// [`prefetched_missing_is_fenced_by_a_create`]; every dialect runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deferred_unit_prefetched_missing_is_fenced_by_a_create() {
    let backend = connect(&sqlite_url()).await;
    prefetched_missing_is_fenced_by_a_create(&backend).await;
}

/// SQLite's unit of work opens its transaction only when it commits (the single writer is not
/// held while the executor processes): an API write of an execution the unit read, between its
/// read and its commit, refuses the unit (fenced) instead of being overwritten, and the unit's
/// message is claimable again. A unit that reads what it wrote sees its own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deferred_unit_is_fenced_by_a_write_after_its_read() {
    use kestra_core::model::Execution;
    use kestra_core::queue::{LoadedExecution, QueueError};
    let backend = connect(&sqlite_url()).await;
    let repo = backend.repositories().executions;
    let e = Execution::new("test.deferred", "flow", 1);
    repo.save(&e).await.unwrap();
    publish_execution(&backend, &e).await;
    let mut unit = execution_unit(&backend).await;
    let mut loaded = unit.load_execution(&e.id).await.unwrap().expect("saved");
    // The API writes it meanwhile (a new revision).
    let mut by_api = e.clone();
    by_api
        .labels
        .push(kestra_core::model::Label::new("by", "api"));
    repo.save(&by_api).await.unwrap();
    loaded.flow_revision = 7;
    unit.save_execution(&loaded).await.unwrap();
    match unit.commit().await {
        Err(QueueError::Fenced { detail }) => {
            assert!(
                detail.contains(&e.id),
                "the detail names the execution: {detail}"
            )
        }
        other => panic!("expected the unit to be fenced, got {other:?}"),
    }
    assert_api_write_stands(&backend, &by_api, 1).await;

    // Its message comes back at once (the claim is released); this unit reads its own write.
    let mut unit = execution_unit(&backend).await;
    let mut loaded = unit.load_execution(&e.id).await.unwrap().expect("saved");
    assert_eq!(loaded.labels, by_api.labels);
    loaded.flow_revision = 8;
    unit.save_execution(&loaded).await.unwrap();
    let again = unit.load_execution(&e.id).await.unwrap().expect("saved");
    assert_eq!(again.flow_revision, 8, "a unit reads what it wrote");
    let mut stamped = again.clone();
    stamped.flow_revision = 9;
    let stamp = unit
        .save_execution_stamped(&mut stamped)
        .await
        .unwrap()
        .expect("SQLite gives a stamp");
    unit.commit().await.unwrap();
    let stored = repo.find_by_id(&e.tenant_id, &e.id).await.unwrap().unwrap();
    assert_eq!(stored.flow_revision, 9);

    // A stamp is taken as the stored execution without a read: the commit checks it. The API
    // writes after the stamp; a unit given the stale stamp is fenced, and nothing of it written.
    let mut by_api = stored.clone();
    by_api
        .labels
        .push(kestra_core::model::Label::new("by", "api-2"));
    repo.save(&by_api).await.unwrap();
    publish_execution(&backend, &e).await;
    let mut unit = execution_unit(&backend).await;
    assert!(matches!(
        unit.load_execution_unless(&e.id, Some(&stamp))
            .await
            .unwrap(),
        LoadedExecution::Unchanged
    ));
    stamped.flow_revision = 10;
    unit.save_execution(&stamped).await.unwrap();
    assert!(
        matches!(unit.commit().await, Err(QueueError::Fenced { .. })),
        "a unit that took a stale stamp is fenced"
    );
    assert_api_write_stands(&backend, &by_api, 9).await;
    // Without the stamp, the next unit reads the API's write.
    let mut unit = execution_unit(&backend).await;
    match unit.load_execution_unless(&e.id, None).await.unwrap() {
        LoadedExecution::Loaded(loaded, _) => assert_eq!(loaded.labels, by_api.labels),
        _ => panic!("expected the execution to be loaded"),
    }
    unit.commit().await.unwrap();
}
