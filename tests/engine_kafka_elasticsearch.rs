//! The engine as `kestra.queue.type: kafka` + `kestra.repository.type: elasticsearch` configure it
//! (through [`kestra::engine`], what `kestra server standalone` runs): a two-task flow runs to
//! SUCCESS, and the execution, its task runs and its logs are found in Elasticsearch, where the
//! indexer put them. Needs `KESTRA_TEST_KAFKA_BROKERS` and `KESTRA_TEST_ELASTICSEARCH_URL` (required
//! under CI=true).
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use kestra::core::model::{StateType, new_id};
use kestra::core::repository::{ExecutionQuery, Pageable};
use kestra::kafka::KafkaQueue;
use kestra::kafka::elastic::ElasticRepositories;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_runs_on_kafka_and_is_found_in_elasticsearch() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(es) = common::service_url("KESTRA_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = new_id().to_lowercase();
    let config = kestra::config::Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers),
        ("kestra.kafka.topic-prefix", format!("kestra_es_{run}_")),
        ("kestra.kafka.partitions", "2".to_string()),
        ("kestra.elasticsearch.url", es),
        (
            "kestra.elasticsearch.index-prefix",
            format!("kestra_es_{run}_"),
        ),
        ("kestra.data-dir", dir.path().display().to_string()),
    ]);
    let start = Instant::now();
    let engine = kestra::engine(&config).await.unwrap().start();
    engine
        .deploy("id: two\nnamespace: company.es\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hello from a\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: hello from b\n")
        .await
        .unwrap();
    let execution = engine
        .execute("company.es", "two", Default::default())
        .await
        .unwrap();
    // `wait_for` polls the repositories: Elasticsearch, fed by the indexer.
    let done = engine
        .wait_for(&execution.id, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    assert_eq!(done.task_run_list.len(), 2, "two task runs: {done:?}");
    let repos = engine.repositories();
    let page = repos
        .executions
        .search(
            &ExecutionQuery {
                flow_id: Some("two".into()),
                ..Default::default()
            },
            &Pageable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        page.results
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec![execution.id.clone()],
        "the execution is found by a search in Elasticsearch"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = repos
            .logs
            .find_by_execution("main", &execution.id, None, None)
            .await
            .unwrap();
        if logs.iter().any(|l| l.message.contains("hello from b")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task logs never reached Elasticsearch: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "engine on Kafka + Elasticsearch: start, deploy, run to SUCCESS, logs indexed in {:?}",
        start.elapsed()
    );
    engine.shutdown().await;
    KafkaQueue::delete_topics(&config.kafka_options().unwrap())
        .await
        .unwrap();
    ElasticRepositories::connect(config.elastic_options().unwrap())
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
}

/// The Kafka queue goes with the Elasticsearch repositories only: another pairing is refused at
/// start with an error naming both keys (no service needed).
#[tokio::test]
async fn kafka_with_another_repository_is_refused() {
    for (queue, repository) in [("kafka", "sqlite"), ("postgres", "elasticsearch")] {
        let config = kestra::config::Config::from_pairs([
            ("kestra.queue.type", queue),
            ("kestra.repository.type", repository),
        ]);
        let Err(e) = kestra::connect(&config).await else {
            panic!("queue {queue} with repository {repository} must be refused")
        };
        let e = e.to_string();
        assert!(
            e.contains("kestra.queue.type: kafka") && e.contains("elasticsearch"),
            "{queue} + {repository}: {e}"
        );
    }
}
