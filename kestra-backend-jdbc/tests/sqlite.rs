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
