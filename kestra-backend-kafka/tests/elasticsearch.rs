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

/// Keys over Elasticsearch's 512-byte `_id` limit (a very long tenant, namespace and id) still
/// have their documents: saved, found, listed as revisions, deleted - and two such keys that
/// differ only at their end stay two documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_the_id_limit_are_stored() {
    use kestra_core::model::Execution;
    use kestra_core::repository::FlowRecord;
    let Some(url) = url() else { return };
    let es = fresh(&url).await;
    let repos = es.repositories();
    let tenant = "t".repeat(400);
    let namespace = format!("company.{}", "n".repeat(150));
    let flow = |id: &str| FlowRecord {
        tenant_id: tenant.clone(),
        namespace: namespace.clone(),
        id: id.to_string(),
        revision: 0,
        flow: serde_json::json!({"id": id, "namespace": namespace, "tasks": []}),
        source: format!("id: {id}\nnamespace: {namespace}\ntasks: []\n"),
        labels: Vec::new(),
        disabled: false,
        deleted: false,
        updated: chrono::Utc::now(),
    };
    let (a, b) = (
        format!("{}a", "f".repeat(99)),
        format!("{}b", "f".repeat(99)),
    );
    repos
        .flows
        .save(flow(&a))
        .await
        .expect("save a long-keyed flow");
    repos
        .flows
        .save(flow(&b))
        .await
        .expect("save its near twin");
    let found = repos
        .flows
        .find(&tenant, &namespace, &a, None)
        .await
        .expect("find")
        .expect("the long-keyed flow is found");
    assert_eq!(found.id, a);
    assert_eq!(
        repos
            .flows
            .revisions(&tenant, &namespace, &b)
            .await
            .expect("revisions")
            .len(),
        1
    );
    repos
        .flows
        .delete(&tenant, &namespace, &a)
        .await
        .expect("delete");
    assert!(
        repos
            .flows
            .find(&tenant, &namespace, &b, None)
            .await
            .expect("find the twin")
            .is_some(),
        "deleting one key leaves its near twin"
    );

    let mut execution = Execution::new(namespace.clone(), b.clone(), 1);
    execution.tenant_id = tenant.clone();
    execution.id = format!("{}x", "e".repeat(300));
    repos.executions.save(&execution).await.expect("save");
    let back = repos
        .executions
        .find_by_id(&tenant, &execution.id)
        .await
        .expect("find")
        .expect("the long-keyed execution is found");
    assert_eq!(back.id, execution.id);
    repos
        .executions
        .purge(&tenant, &execution.id)
        .await
        .expect("purge");
    assert!(
        repos
            .executions
            .find_by_id(&tenant, &execution.id)
            .await
            .expect("find after purge")
            .is_none()
    );
    es.delete_indices()
        .await
        .expect("delete this run's indices");
}
