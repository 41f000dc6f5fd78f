//! The JDBC backend on PostgreSQL (`KESTRA_TEST_POSTGRES_URL`, from `scripts/services.sh`): the
//! conformance suites and the backend-specific checks, each in a fresh database.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

server_database_tests!("KESTRA_TEST_POSTGRES_URL");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_row() {
    with_db(|url| async move {
        let backend = connect(&url).await;
        malformed_row_is_dead_lettered(&backend, async {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query("INSERT INTO queue (topic, group_name, msg_key, payload, visible_at, created_at) VALUES ('log', 'indexer', 'bad-row', $1, 0, 0)")
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
