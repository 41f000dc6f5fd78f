//! The executor keeps the last execution it saved and reuses it, without decoding the stored
//! document again, while the stored document is still the one it wrote (issue 15: an execution
//! that grows with its task runs must not cost O(n^2) over a flow). It never acts on a stale copy:
//! an execution written by another executor, or by the repository with an unchanged version,
//! between two of its units is read again.
//!
//! Two executor services (A and B) share one JDBC backend; the test hands them units of work by
//! hand, so it knows which one processes each message. On SQLite always; on PostgreSQL and MariaDB
//! when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::core::executor::service::EXECUTOR_TOPICS;
use kestra::core::executor::{ExecutorConfig, ExecutorService};
use kestra::core::expression::{ExpressionEngine, ExpressionOptions};
use kestra::core::flow::registry::TaskRegistry;
use kestra::core::messages::ExecutionCommand;
use kestra::core::model::{Execution, Label, StateType};
use kestra::core::queue::{ConsumerGroup, Queue};
use kestra::core::runtime::flows::{FlowCache, RepositoryFlowSource};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine};

fn executor(backend: &JdbcBackend) -> ExecutorService {
    let source = Arc::new(RepositoryFlowSource::new(backend.repositories().flows));
    let flows = Arc::new(FlowCache::new(source, Arc::new(TaskRegistry::default())));
    ExecutorService::new(
        backend.queue(),
        flows,
        Arc::new(ExpressionEngine::new(ExpressionOptions::default())),
        ExecutorConfig::default(),
    )
}

/// Let `executor` process every executor message due, one unit after the other.
async fn drain(queue: &Arc<dyn Queue>, executor: &ExecutorService) {
    while let Some(unit) = queue
        .begin(
            ConsumerGroup::Executor,
            EXECUTOR_TOPICS,
            100,
            Duration::from_millis(300),
        )
        .await
        .unwrap()
    {
        executor.handle_unit(unit).await.unwrap();
    }
}

async fn send(queue: &Arc<dyn Queue>, command: ExecutionCommand) {
    queue
        .publish(vec![command.envelope().unwrap()])
        .await
        .unwrap();
}

fn labels(keys: &[&str]) -> Vec<Label> {
    keys.iter()
        .map(|k| Label {
            key: (*k).to_string(),
            value: "v".to_string(),
        })
        .collect()
}

/// The keys of the labels a user set (`system.*` labels stay through `SetLabels`).
fn label_keys(execution: &Execution) -> Vec<String> {
    execution
        .labels
        .iter()
        .filter(|l| !l.key.starts_with("system."))
        .map(|l| l.key.clone())
        .collect()
}

async fn stored(backend: &JdbcBackend, id: &str) -> Execution {
    let repositories = backend.repositories();
    let e = repositories
        .executions
        .find_by_id(kestra::core::model::DEFAULT_TENANT, id)
        .await
        .unwrap();
    e.unwrap_or_else(|| panic!("execution {id} is stored"))
}

/// The ids of the executions of namespace `ns` that the repository's label filter finds with the
/// label `key` (the label rows, written apart from the execution's document).
async fn with_label(backend: &JdbcBackend, ns: &str, key: &str) -> Vec<String> {
    let query = kestra::core::repository::ExecutionQuery {
        namespace: Some(ns.to_string()),
        labels: labels(&[key]),
        ..Default::default()
    };
    let page = backend
        .repositories()
        .executions
        .search(&query, &kestra::core::repository::Pageable::default())
        .await
        .unwrap();
    page.results.into_iter().map(|e| e.id).collect()
}

async fn a_copy_written_elsewhere_is_read_again(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("cache.c{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let queue = backend.queue();
    // No component of its own: the engine deploys and starts; A and B execute.
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(queue.clone(), backend.repositories(), storage)
        .components(Components::none())
        .start();
    engine
        .deploy(&format!(
            "id: cached\nnamespace: {ns}\ntasks:\n  - id: first\n    type: io.kestra.plugin.core.flow.Pause\n  - id: second\n    type: io.kestra.plugin.core.flow.Pause\n  - id: last\n    type: io.kestra.plugin.core.debug.Return\n    format: done\n"
        ))
        .await
        .unwrap();
    let (a, b) = (executor(&backend), executor(&backend));
    let execution = engine
        .execute(&ns, "cached", IndexMap::new())
        .await
        .unwrap();
    let id = execution.id.clone();

    // A starts it: paused on `first`.
    drain(&queue, &a).await;
    let v1 = stored(&backend, &id).await;
    assert_eq!(v1.state.current(), StateType::Paused, "{v1:?}");
    assert_eq!(a.execution_cache_stats().hits, 0);

    // A again, nothing written in between: its own copy is reused.
    send(
        &queue,
        ExecutionCommand::SetLabels {
            execution_id: id.clone(),
            labels: labels(&["one"]),
        },
    )
    .await;
    drain(&queue, &a).await;
    let v2 = stored(&backend, &id).await;
    assert_eq!(label_keys(&v2), ["one"]);
    assert_eq!(with_label(&backend, &ns, "one").await, [id.as_str()]);
    assert_eq!(v2.metadata.version, v1.metadata.version + 1);
    let stats = a.execution_cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 0), "A reused its copy");

    // B (another executor) writes it; A's next unit must read B's execution, not its copy.
    send(
        &queue,
        ExecutionCommand::SetLabels {
            execution_id: id.clone(),
            labels: labels(&["two"]),
        },
    )
    .await;
    drain(&queue, &b).await;
    send(
        &queue,
        ExecutionCommand::Resume {
            execution_id: id.clone(),
            task_run_id: None,
            inputs: Default::default(),
        },
    )
    .await;
    drain(&queue, &a).await;
    let v4 = stored(&backend, &id).await;
    assert_eq!(label_keys(&v4), ["two"], "B's labels kept: {v4:?}");
    // The label rows follow (a save that keeps the labels does not rewrite them; one that
    // changes them does).
    assert_eq!(with_label(&backend, &ns, "two").await, [id.as_str()]);
    assert!(with_label(&backend, &ns, "one").await.is_empty());
    assert_eq!(v4.metadata.version, v2.metadata.version + 2, "{v4:?}");
    assert_eq!(v4.state.current(), StateType::Paused, "paused on `second`");
    let stats = a.execution_cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1), "A read B's write");

    // The repository rewrites it with the same version: A must not trust the version.
    let mut rewritten = v4.clone();
    rewritten.labels = labels(&["three"]);
    backend
        .repositories()
        .executions
        .save(&rewritten)
        .await
        .unwrap();
    assert_eq!(label_keys(&stored(&backend, &id).await), ["three"]);
    send(
        &queue,
        ExecutionCommand::Resume {
            execution_id: id.clone(),
            task_run_id: None,
            inputs: Default::default(),
        },
    )
    .await;
    drain(&queue, &a).await;
    let v5 = stored(&backend, &id).await;
    assert_eq!(label_keys(&v5), ["three"], "the rewrite kept: {v5:?}");
    assert_eq!(v5.metadata.version, v4.metadata.version + 1);
    assert_eq!(v5.state.current(), StateType::Running, "{v5:?}");
    assert!(
        v5.task_run_list.iter().any(|t| t.task_id == "last"),
        "`last` was created: {v5:?}"
    );
    let stats = a.execution_cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 2), "A read the rewrite");

    // Nothing written since: A's copy serves again.
    send(
        &queue,
        ExecutionCommand::SetLabels {
            execution_id: id.clone(),
            labels: labels(&["four"]),
        },
    )
    .await;
    drain(&queue, &a).await;
    let v6 = stored(&backend, &id).await;
    assert_eq!(label_keys(&v6), ["four"]);
    assert_eq!(v6.metadata.version, v5.metadata.version + 1);
    assert_eq!(v6.task_run_list, v5.task_run_list);
    let stats = a.execution_cache_stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (2, 2),
        "A reused its copy again"
    );
    engine.shutdown().await;
}

common::on_each_database!(execution_cache: a_copy_written_elsewhere_is_read_again);
