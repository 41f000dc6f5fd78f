//! The engine (executor, worker, scheduler, indexer) on the Kafka queue, with SQLite repositories (the
//! Elasticsearch repositories are not there yet): executions of a two-task flow all end in SUCCESS,
//! each with its two task runs. Needs `KESTRA_TEST_KAFKA_BROKERS` (required under CI=true).
#![cfg(all(feature = "kafka", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kestra::Engine;
use kestra::core::model::{StateType, new_id};
use kestra::core::queue::Queue;
use kestra::jdbc::JdbcBackend;
use kestra::kafka::{KafkaOptions, KafkaQueue};
use kestra::storage::LocalStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_task_flow_on_kafka() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let options = KafkaOptions::new(brokers)
        .with_prefix(format!("kestra_engine_{}_", new_id()))
        .with_partitions(4);
    let queue: Arc<dyn Queue> = Arc::new(KafkaQueue::connect(options.clone()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let backend = JdbcBackend::connect(&common::sqlite_url(&dir))
        .await
        .unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
    let engine = Engine::builder(queue, backend.repositories(), storage).start();
    engine
        .deploy("id: two\nnamespace: company.kafka\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: a\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: b\n")
        .await
        .unwrap();
    const N: usize = 50;
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(
            engine
                .execute("company.kafka", "two", Default::default())
                .await
                .unwrap()
                .id,
        );
    }
    // Observed from Kafka: the executor state changelog (the repositories are not fed from Kafka
    // yet: that is the indexer's job, to come).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let executions = KafkaQueue::executions(&options).await.unwrap();
        let ended: Vec<_> = executions
            .iter()
            .filter(|e| ids.contains(&e.id) && e.state.is_terminated())
            .collect();
        if ended.len() == N {
            for e in ended {
                assert_eq!(e.state.current(), StateType::Success, "execution {}", e.id);
                assert_eq!(
                    e.task_run_list.len(),
                    2,
                    "execution {}: two task runs",
                    e.id
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} executions ended on Kafka within 90 s",
            ended.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "engine on Kafka: {N} executions of a 2-task flow ended in {:?}",
        start.elapsed()
    );
    engine.shutdown().await;
    backend.close().await;
    KafkaQueue::delete_topics(&options).await.unwrap();
}
