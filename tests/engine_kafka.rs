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

/// Issue 10 item 4 on Kafka: executor, worker and scheduler over repositories that all fail (as an
/// Elasticsearch that is down) run flows saved through the engine's API, from Kafka alone (flow
/// topic, trigger state topic, executor changelog; the deploys' read-your-writes copy into the
/// repository fails and is only logged); an engine started afterwards on a new queue
/// handle replays the flow topic and runs the flow too; an indexer started last over working
/// repositories brings them up to date: flow revisions, executions, trigger states.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_from_kafka_alone_and_the_indexer_catches_up() {
    use kestra::core::indexer::IndexerConfig;
    use kestra::core::runtime::Components;
    use kestra::core::scheduler::SchedulerConfig;
    use kestra::core::testkit::memory::MemoryRepositories;
    use kestra::core::testkit::unavailable::unavailable_repositories;

    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let options = KafkaOptions::new(brokers)
        .with_prefix(format!("kestra_alone_{}_", new_id()))
        .with_partitions(2);
    let queue: Arc<dyn Queue> = Arc::new(KafkaQueue::connect(options.clone()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
    let (down_repos, down) = unavailable_repositories();
    let engine = Engine::builder(queue.clone(), down_repos.clone(), storage.clone())
        .components(Components {
            indexer: false,
            ..Components::default()
        })
        .scheduler_config(SchedulerConfig {
            tick: Duration::from_millis(200),
            ..SchedulerConfig::default()
        })
        .start();
    let two = "id: two\nnamespace: company.alone\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: a\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: b\n";
    let ticker = "id: ticker\nnamespace: company.alone\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\ntriggers:\n  - id: each\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"* * * * * *\"\n    withSeconds: true\n    allowConcurrent: true\n";
    engine.deploy(two).await.unwrap();
    engine.deploy(ticker).await.unwrap();
    // A deploy (the API's write, not orchestration) also tries to copy the revision it published
    // into the repository for read-your-writes: one failed call each, only logged.
    let deploy_calls = down.calls();
    assert_eq!(
        deploy_calls, 2,
        "each deploy tried its read-your-writes copy once"
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            engine
                .execute("company.alone", "two", Default::default())
                .await
                .unwrap()
                .id,
        );
    }
    let ended = |executions: &[kestra::core::model::Execution], ids: &[String]| {
        executions
            .iter()
            .filter(|e| {
                ids.contains(&e.id)
                    && e.state.current() == StateType::Success
                    && e.task_run_list.len() == 2
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let executions = KafkaQueue::executions(&options).await.unwrap();
        let scheduled = executions
            .iter()
            .filter(|e| e.flow_id == "ticker" && e.state.current() == StateType::Success)
            .count();
        if ended(&executions, &ids) == ids.len() && scheduled >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with the repositories down: {} of {} executions ended, {scheduled} scheduled ones",
            ended(&executions, &ids),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown().await;
    assert_eq!(
        down.calls(),
        deploy_calls,
        "executor, worker and scheduler called no repository"
    );
    // Its consumers leave their groups (the next engine's take the partitions over).
    drop(queue);

    // Another process (a new queue handle) replays the flow topic and runs the flow.
    let other: Arc<dyn Queue> = Arc::new(KafkaQueue::open(options.clone()).unwrap());
    let engine = Engine::builder(other, down_repos, storage.clone())
        .components(Components {
            executor: true,
            worker: true,
            ..Components::none()
        })
        .start();
    let late = engine
        .execute("company.alone", "two", Default::default())
        .await
        .unwrap()
        .id;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended(
        &KafkaQueue::executions(&options).await.unwrap(),
        std::slice::from_ref(&late),
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the late engine did not run the flow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown().await;
    assert_eq!(
        down.calls(),
        deploy_calls,
        "executor, worker and scheduler called no repository"
    );
    ids.push(late);

    // The indexer, later, over working repositories.
    let repos = MemoryRepositories::new().repositories();
    let indexer_queue: Arc<dyn Queue> = Arc::new(KafkaQueue::open(options.clone()).unwrap());
    let indexer = Engine::builder(indexer_queue, repos.clone(), storage)
        .components(Components {
            indexer: true,
            ..Components::none()
        })
        .indexer_config(IndexerConfig {
            poll_wait: Duration::from_millis(50),
            ..IndexerConfig::default()
        })
        .start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flows = repos.flows.find_all("main").await.unwrap();
        let mut indexed = 0;
        for id in &ids {
            if repos
                .executions
                .find_by_id("main", id)
                .await
                .unwrap()
                .is_some_and(|e| e.state.current() == StateType::Success)
            {
                indexed += 1;
            }
        }
        let triggers = repos.triggers.find_all("main").await.unwrap();
        if flows.len() == 2 && indexed == ids.len() && triggers.len() == 1 {
            assert_eq!(triggers[0].flow_id, "ticker");
            assert_eq!(triggers[0].trigger_id, "each");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the indexer did not catch up: {} flows, {indexed} of {} executions, {} trigger states",
            flows.len(),
            ids.len(),
            triggers.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    indexer.shutdown().await;
    KafkaQueue::delete_topics(&options).await.unwrap();
}
