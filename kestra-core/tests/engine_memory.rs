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

/// Issue 10 item 4 on the in-memory backend: with repositories that fail every call, flows saved
/// through the engine's API travel through the queue alone (the flow topic the engine replays),
/// the executor and the worker run them, and nothing touches the repository; an indexer started
/// later over working repositories brings them up to date (flow revisions, executions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_run_from_the_queue_alone_and_the_indexer_catches_up() {
    use kestra_core::repository::SaveOutcome;
    use kestra_core::testkit::unavailable::unavailable_repositories;

    let queue = Arc::new(MemoryQueue::new());
    let (down_repos, down) = unavailable_repositories();
    let engine = Engine::builder(queue.clone(), down_repos, Arc::new(MemoryStorage::new()))
        .components(Components {
            executor: true,
            worker: true,
            ..Components::none()
        })
        .start();
    let (flow, outcome) = engine.deploy(FLOW).await.unwrap();
    assert_eq!((flow.revision, outcome), (Some(1), SaveOutcome::Created));
    let (_, again) = engine.deploy(FLOW).await.unwrap();
    assert_eq!(again, SaveOutcome::Unchanged, "same source, same revision");
    let changed = FLOW.replace("format: done", "format: done again");
    let (flow, outcome) = engine.deploy(&changed).await.unwrap();
    assert_eq!((flow.revision, outcome), (Some(2), SaveOutcome::Updated));
    // A deploy that publishes a revision (the API's write, not orchestration) also tries to copy
    // it into the repository for read-your-writes: one failed call each, only logged.
    assert_eq!(
        down.calls(),
        2,
        "the two published revisions tried their copy"
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            engine
                .execute("company.memory", "indexed", IndexMap::new())
                .await
                .unwrap()
                .id,
        );
    }
    // Observed on the queue: the last change of each execution is a terminal SUCCESS of
    // revision 2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let published = queue.published();
        let ended = ids
            .iter()
            .filter(|id| {
                published
                    .iter()
                    .filter(|m| m.topic == Topic::ExecutionChange && &m.key == *id)
                    .filter_map(|m| match m.decode::<ExecutionChange>() {
                        Ok(ExecutionChange::Saved { execution }) => Some(execution),
                        _ => None,
                    })
                    .any(|e| {
                        e.state.current() == StateType::Success
                            && e.flow_revision == 2
                            && e.task_run_list.len() == 2
                    })
            })
            .count();
        if ended == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ended} of {} executions ended with the repository down",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A deletion travels the same way: the flow can no longer be executed.
    engine
        .delete_flow("company.memory", "indexed")
        .await
        .unwrap();
    assert!(
        engine
            .execute("company.memory", "indexed", IndexMap::new())
            .await
            .is_err(),
        "a deleted flow cannot be executed"
    );
    engine.shutdown().await;
    assert_eq!(
        down.calls(),
        3,
        "executor and worker called no repository (the 3 calls: the copies of 2 deploys and 1 deletion)"
    );

    // The indexer, later, over working repositories.
    let repos = MemoryRepositories::new().repositories();
    let indexer = Engine::builder(queue.clone(), repos.clone(), Arc::new(MemoryStorage::new()))
        .components(Components {
            indexer: true,
            ..Components::none()
        })
        .indexer_config(IndexerConfig {
            poll_wait: Duration::from_millis(20),
            ..IndexerConfig::default()
        })
        .start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let revisions = repos
            .flows
            .revisions(DEFAULT_TENANT, "company.memory", "indexed")
            .await
            .unwrap();
        let mut indexed = 0;
        for id in &ids {
            if repos
                .executions
                .find_by_id(DEFAULT_TENANT, id)
                .await
                .unwrap()
                .is_some_and(|e| e.state.current() == StateType::Success)
            {
                indexed += 1;
            }
        }
        if revisions.len() == 3 && indexed == ids.len() {
            let shape: Vec<(i32, bool)> =
                revisions.iter().map(|r| (r.revision, r.deleted)).collect();
            assert_eq!(shape, vec![(1, false), (2, false), (3, true)]);
            assert_eq!(revisions[1].source, changed);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the indexer did not catch up: {} flow revisions, {indexed} executions",
            revisions.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        repos
            .flows
            .find(DEFAULT_TENANT, "company.memory", "indexed", None)
            .await
            .unwrap()
            .is_none(),
        "the deletion was indexed"
    );
    indexer.shutdown().await;
}
