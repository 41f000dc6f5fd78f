//! The JDBC backend on MySQL/MariaDB (`KESTRA_TEST_MYSQL_URL`, from `scripts/services.sh`): the
//! conformance suites and the backend-specific checks, each in a fresh database.
#![cfg(feature = "mysql")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const VAR: &str = "KESTRA_TEST_MYSQL_URL";

/// Run `check` on a fresh database of the service, then drop it.
async fn with_db<F, Fut>(check: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(base) = service_url(VAR) else { return };
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
async fn malformed_row() {
    with_db(|url| async move {
        let backend = connect(&url).await;
        malformed_row_is_dead_lettered(&backend, async {
            let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
            sqlx::query("INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) VALUES ('log', 'indexer', 'bad-row', ?, 0, 0)")
                .bind(b"{not json".to_vec())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        })
        .await;
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
