//! The Elasticsearch repositories against a real node (`scripts/services.sh` starts one and prints
//! `KESTRA_TEST_ELASTICSEARCH_URL`): the repository conformance suite of
//! `kestra_core::testkit::repository`, every check, on indices of a prefix of this run's own.
#![cfg(feature = "elasticsearch")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use kestra_backend_kafka::elastic::{ElasticOptions, ElasticRepositories};
use kestra_core::model::new_id;
use kestra_core::repository::{ExecutionQuery, Pageable, RepositoryError};
use kestra_core::testkit::repository as suite;

/// The URL from `KESTRA_TEST_ELASTICSEARCH_URL`; `None` (with a loud message) when unset, a panic
/// under `CI=true`.
fn url() -> Option<String> {
    match std::env::var("KESTRA_TEST_ELASTICSEARCH_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "KESTRA_TEST_ELASTICSEARCH_URL is not set under CI=true: run `eval \"$(scripts/services.sh)\"` first"
            );
            eprintln!(
                "\n!!!!! SKIPPED: KESTRA_TEST_ELASTICSEARCH_URL is not set; run `eval \"$(scripts/services.sh)\"` to test the Elasticsearch repositories !!!!!\n"
            );
            None
        }
    }
}

/// Repositories on indices of a fresh prefix.
async fn fresh(url: &str) -> ElasticRepositories {
    let options = ElasticOptions::new(url)
        .with_index_prefix(format!("kestra_test_{}_", new_id().to_lowercase()));
    ElasticRepositories::connect(options)
        .await
        .expect("connect to Elasticsearch and create the indices")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_conformance() {
    let Some(url) = url() else { return };
    let es = fresh(&url).await;
    let repos = es.repositories();
    let start = Instant::now();
    suite::run_all(&repos).await;
    // The indexer feeds flows to Elasticsearch from the flow topic.
    suite::flow_published_revisions(&repos).await;
    eprintln!(
        "repository conformance on Elasticsearch: whole suite in {:?}",
        start.elapsed()
    );
    es.delete_indices()
        .await
        .expect("delete this run's indices");
}

/// Connecting twice to the same prefix finds the indices (no error), and a page past the search
/// window is a clear `InvalidQuery`, not a backend error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_deep_page() {
    let Some(url) = url() else { return };
    let prefix = format!("kestra_test_{}_", new_id().to_lowercase());
    let es =
        ElasticRepositories::connect(ElasticOptions::new(&url).with_index_prefix(prefix.clone()))
            .await
            .expect("first connect");
    let again = ElasticRepositories::connect(ElasticOptions::new(&url).with_index_prefix(prefix))
        .await
        .expect("a second connect finds the indices");
    let r = again
        .repositories()
        .executions
        .search(&ExecutionQuery::default(), &Pageable::new(500, 25))
        .await;
    assert!(
        matches!(r, Err(RepositoryError::InvalidQuery(ref m)) if m.contains("10000")),
        "a page past the result window: expected InvalidQuery naming the limit, got {r:?}"
    );
    es.delete_indices()
        .await
        .expect("delete this run's indices");
}

/// A URL that is not http(s) is refused with an error naming it.
#[tokio::test]
async fn bad_url_is_a_clear_error() {
    let r = ElasticRepositories::connect(ElasticOptions::new("ftp://nowhere")).await;
    let Err(e) = r else {
        panic!("an ftp URL is refused")
    };
    let e = e.to_string();
    assert!(e.contains("ftp://nowhere"), "the error names the URL: {e}");
}
