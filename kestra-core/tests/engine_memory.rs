//! The engine on the testkit's in-memory backend, whose units of work do not write the repository
//! (`QueueCapabilities::repository_in_unit` is false, as on Kafka + Elasticsearch): the executor
//! stages an `ExecutionChange` for each execution it saves, each with the next version, the indexer
//! writes them into the repository, and a delete reaches the repository as a tombstone through the
//! queue (issue 9 item 7).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra_core::indexer::IndexerConfig;
use kestra_core::messages::ExecutionChange;
use kestra_core::model::{DEFAULT_TENANT, StateType};
use kestra_core::queue::{Queue, Topic};
use kestra_core::runtime::{Components, Engine};
use kestra_core::testkit::memory::{MemoryQueue, MemoryRepositories, MemoryStorage};

const FLOW: &str = r#"
id: indexed
namespace: company.memory
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello from {{ flow.id }}
  - id: out
    type: io.kestra.plugin.core.debug.Return
    format: done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_follows_the_executor_through_the_indexer() {
    let queue = Arc::new(MemoryQueue::new());
    assert!(
        !queue.capabilities().repository_in_unit,
        "the in-memory queue keeps executions in its units"
    );
    let repos = MemoryRepositories::new().repositories();
    let engine = Engine::builder(queue.clone(), repos.clone(), Arc::new(MemoryStorage::new()))
        .components(Components {
            scheduler: false,
            ..Components::default()
        })
        .indexer_config(IndexerConfig {
            poll_wait: Duration::from_millis(20),
            ..IndexerConfig::default()
        })
        .start();
    engine.deploy(FLOW).await.unwrap();
    let created = engine
        .execute("company.memory", "indexed", IndexMap::new())
        .await
        .unwrap();
    // `wait_for` reads the repository, which only the indexer writes here.
    let done = engine
        .wait_for(&created.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    assert_eq!(done.task_run_list.len(), 2);

    // Every save of the executor was published once, versions 1, 2, 3, ... in order, and the
    // repository holds the last one.
    let versions: Vec<u64> = queue
        .published()
        .iter()
        .filter(|m| m.topic == Topic::ExecutionChange && m.key == created.id)
        .map(|m| match m.decode::<ExecutionChange>().unwrap() {
            ExecutionChange::Saved { execution } => execution.metadata.version,
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    assert!(versions.len() >= 2, "changes published: {versions:?}");
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(versions, expected, "one change per save, versions in order");
    assert_eq!(done.metadata.version, *versions.last().unwrap());

    // The log line reached the repository too; the delete travels as a tombstone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while repos
        .logs
        .find_by_execution(DEFAULT_TENANT, &created.id, None, None)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "no log indexed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine
        .delete_execution(&created.id, true, true)
        .await
        .unwrap();
    assert!(
        queue
            .published()
            .iter()
            .any(|m| m.topic == Topic::ExecutionChange
                && matches!(
                    m.decode::<ExecutionChange>(),
                    Ok(ExecutionChange::Deleted { .. })
                )),
        "the delete went through the queue"
    );
    assert_eq!(engine.execution(&created.id).await.unwrap(), None);
    assert!(
        repos
            .logs
            .find_by_execution(DEFAULT_TENANT, &created.id, None, None)
            .await
            .unwrap()
            .is_empty(),
        "its logs were deleted"
    );
    engine.shutdown().await;
}
