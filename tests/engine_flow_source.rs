//! The executor reads flows from a `FlowSource` that may lag behind a deploy or fail, through the
//! real engine on SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under
//! CI=true):
//! - an execution whose flow the source does not show yet waits for it and ends SUCCESS;
//! - an execution whose flow never shows up fails with "flow ... not found" after the grace period;
//! - a list of flows with triggers that fails once does not lose a Flow trigger's execution;
//! - the flow topic carries the whole stored record, enough to run an executor from a store fed
//!   by the topic alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indexmap::IndexMap;
use kestra::core::executor::ExecutorConfig;
use kestra::core::messages::execution_envelope;
use kestra::core::model::{Execution, StateType};
use kestra::core::queue::Topic;
use kestra::core::repository::{ExecutionQuery, FlowRecord, Pageable};
use kestra::core::runtime::Components;
use kestra::core::runtime::flows::{FlowSource, FlowStore, RepositoryFlowSource};
use kestra::core::testkit::flows::TestFlowSource;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Engine, EngineBuilder};

/// Everything but the scheduler (it would list flows too, and the test counts the lists).
fn components() -> Components {
    Components {
        scheduler: false,
        ..Components::default()
    }
}

async fn builder(url: &str, storage_dir: &std::path::Path) -> (JdbcBackend, EngineBuilder) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(storage_dir).unwrap());
    let builder = Engine::builder(backend.queue(), backend.repositories(), storage);
    (backend, builder)
}

fn returning(ns: &str, id: &str) -> String {
    format!(
        "id: {id}\nnamespace: {ns}\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: {id}\n"
    )
}

fn triggered_by(ns: &str, id: &str, upstream: &str) -> String {
    format!(
        "id: {id}\nnamespace: {ns}\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: \"after {{{{ trigger.flowId }}}}\"\ntriggers:\n  - id: after\n    type: io.kestra.plugin.core.trigger.Flow\n    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionFlow\n        namespace: {ns}\n        flowId: {upstream}\n"
    )
}

async fn run(engine: &Engine, ns: &str, flow_id: &str) -> Execution {
    let e = engine.execute(ns, flow_id, IndexMap::new()).await.unwrap();
    engine
        .wait_for(&e.id, Duration::from_secs(60))
        .await
        .unwrap()
}

/// The executions of `ns.flow_id` once there are `expected` (60 s at most).
async fn wait_executions(
    engine: &Engine,
    ns: &str,
    flow_id: &str,
    expected: u64,
) -> Vec<Execution> {
    let query = ExecutionQuery {
        namespace: Some(ns.to_string()),
        flow_id: Some(flow_id.to_string()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let page = engine
            .repositories()
            .executions
            .search(&query, &Pageable::new(1, 50))
            .await
            .unwrap();
        if page.total >= expected {
            assert_eq!(page.total, expected, "{flow_id}: too many executions");
            return page.results;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{flow_id}: {} executions after 60s, expected {expected}",
            page.total
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lagging_source(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!(
        "flowsource.t{}",
        kestra::core::model::new_id().to_lowercase()
    );
    let (backend, builder) = builder(url, dir.path()).await;
    let source = Arc::new(TestFlowSource::new(Arc::new(RepositoryFlowSource::new(
        backend.repositories().flows.clone(),
    ))));
    let grace = Duration::from_secs(3);
    let engine = builder
        .components(components())
        .flow_source(source.clone())
        .executor_config(ExecutorConfig {
            flow_grace: grace,
            ..ExecutorConfig::default()
        })
        .start();

    // Deployed, but the executor's source shows it only 1.5 s later: the execution waits.
    engine.deploy(&returning(&ns, "late")).await.unwrap();
    source.hide(&ns, "late", Duration::from_millis(1500));
    let done = run(&engine, &ns, "late").await;
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    assert!(source.hidden_answers() > 0, "the lag was never seen");

    // A flow that never shows up: the execution fails once the grace period is over, with the
    // reason in its logs.
    let orphan = Execution::new(&ns, "never", 1);
    let published = Instant::now();
    engine
        .queue()
        .publish(vec![execution_envelope(&orphan).unwrap()])
        .await
        .unwrap();
    let failed = engine
        .wait_for(&orphan.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(failed.state.current(), StateType::Failed);
    assert!(
        published.elapsed() >= grace - Duration::from_millis(500),
        "failed after {:?}, before the grace period ({grace:?})",
        published.elapsed()
    );
    let expected = format!("flow {ns}.never revision Some(1) not found");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution("main", &orphan.id, None, None)
            .await
            .unwrap();
        if logs.iter().any(|l| l.message.contains(&expected)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log '{expected}' in {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The list of flows with triggers fails once when the upstream execution ends: the unit is
    // retried, and the downstream execution is started all the same.
    engine.deploy(&returning(&ns, "up")).await.unwrap();
    engine
        .deploy(&triggered_by(&ns, "down", "up"))
        .await
        .unwrap();
    source.fail_lists(1);
    let up = run(&engine, &ns, "up").await;
    assert_eq!(up.state.current(), StateType::Success);
    let down = wait_executions(&engine, &ns, "down", 1).await;
    let down = engine
        .wait_for(&down[0].id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(down.state.current(), StateType::Success, "{down:?}");
    assert_eq!(source.failed_lists(), 1, "the list never failed");
    engine.shutdown().await;
}

/// An executor whose only flow source is a store fed by the flow topic.
async fn topic_fed_store(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!(
        "flowsource.t{}",
        kestra::core::model::new_id().to_lowercase()
    );
    let (backend, builder) = builder(url, dir.path()).await;
    let store = Arc::new(FlowStore::new());
    let mut topic = backend.queue().subscribe(Topic::Flow).await.unwrap();
    let records = {
        let store = store.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<FlowRecord>();
        tokio::spawn(async move {
            while let Some(Ok(message)) = topic.next().await {
                let record: FlowRecord = message.decode().unwrap();
                store.apply(record.clone());
                let _ = tx.send(record);
            }
        });
        rx
    };
    let mut records = records;
    let engine = builder
        .components(components())
        .flow_source(store.clone())
        .start();
    let source = returning(&ns, "fed");
    let (flow, _) = engine.deploy(&source).await.unwrap();
    let done = run(&engine, &ns, "fed").await;
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");

    // The message was the whole stored record.
    let record = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = records.recv().await.unwrap();
            if r.namespace == ns {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(record.id, "fed");
    assert_eq!(record.revision, 1);
    assert_eq!(Some(record.revision), flow.revision);
    assert_eq!(record.source, source);
    assert!(!record.deleted);
    let stored = store
        .find("main", &ns, "fed", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, record);
    engine.shutdown().await;
}

async fn suite(url: &str) {
    lagging_source(url).await;
    topic_fed_store(url).await;
}

common::on_each_database!(flow_source: suite);
