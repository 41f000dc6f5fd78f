//! Flow trigger preconditions over two upstream flows through the real engine on SQLite, and on
//! PostgreSQL / MariaDB when their URLs are set (required under CI=true): the downstream flow runs
//! exactly once after both upstream flows succeeded, not again for one of them alone, and exactly
//! once per round when the two upstream executions end at the same time on two executors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::core::executor::ExecutorConfig;
use kestra::core::model::StateType;
use kestra::core::repository::{ExecutionQuery, Pageable};
use kestra::core::runtime::Components;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Engine, EngineBuilder};

async fn builder(url: &str, storage_dir: &std::path::Path) -> EngineBuilder {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(storage_dir).unwrap());
    Engine::builder(backend.queue(), backend.repositories(), storage)
}

/// One message per unit of work, so that two executors really process two executions at once.
fn one_at_a_time() -> ExecutorConfig {
    ExecutorConfig {
        batch_size: 1,
        ..ExecutorConfig::default()
    }
}

fn upstream(ns: &str, id: &str) -> String {
    format!(
        "id: {id}\nnamespace: {ns}\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: {id}\n"
    )
}

fn joined(ns: &str, id: &str, a: &str, b: &str) -> String {
    format!(
        "id: {id}\nnamespace: {ns}\ntasks:\n  - id: j\n    type: io.kestra.plugin.core.debug.Return\n    format: \"after {{{{ trigger.flowId }}}}\"\ntriggers:\n  - id: after-both\n    type: io.kestra.plugin.core.trigger.Flow\n    preconditions:\n      id: both\n      flows:\n        - namespace: {ns}\n          flowId: {a}\n          states: [SUCCESS]\n        - namespace: {ns}\n          flowId: {b}\n          states: [SUCCESS]\n"
    )
}

/// Executions of `ns.flow_id`, whatever their state.
async fn count(engine: &Engine, ns: &str, flow_id: &str) -> u64 {
    let query = ExecutionQuery {
        namespace: Some(ns.to_string()),
        flow_id: Some(flow_id.to_string()),
        ..Default::default()
    };
    engine
        .repositories()
        .executions
        .search(&query, &Pageable::new(1, 50))
        .await
        .unwrap()
        .total
}

async fn run(engine: &Engine, ns: &str, flow_id: &str) {
    let e = engine.execute(ns, flow_id, IndexMap::new()).await.unwrap();
    let done = engine
        .wait_for(&e.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success, "{flow_id}");
}

async fn wait_count(engine: &Engine, ns: &str, flow_id: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(engine, ns, flow_id).await;
        assert!(
            n <= expected,
            "{flow_id}: {n} executions, expected {expected}"
        );
        if n == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{flow_id}: {n} executions after 60s, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long enough for a wrongly fired trigger to show up, and for executors to see a deployed trigger.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn suite(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let unique = kestra::core::model::new_id().to_lowercase();
    let ns = format!("preconditions.t{unique}");
    let engine = builder(url, dir.path())
        .await
        .executor_config(one_at_a_time())
        .start();
    for source in [
        upstream(&ns, "a"),
        upstream(&ns, "b"),
        joined(&ns, "joined", "a", "b"),
    ] {
        engine.deploy(&source).await.unwrap();
    }
    // Executors see new Flow triggers within a second (cached list of flows with triggers).
    settle().await;

    // A alone does not trigger; A then B triggers exactly once.
    run(&engine, &ns, "a").await;
    settle().await;
    assert_eq!(count(&engine, &ns, "joined").await, 0, "A alone fired");
    run(&engine, &ns, "b").await;
    wait_count(&engine, &ns, "joined", 1).await;
    // The results were reset: A again is not a full set.
    run(&engine, &ns, "a").await;
    settle().await;
    assert_eq!(count(&engine, &ns, "joined").await, 1, "A again fired");

    // A and B end at the same time, on two executors: one downstream execution per round.
    for source in [
        upstream(&ns, "ra"),
        upstream(&ns, "rb"),
        joined(&ns, "raced", "ra", "rb"),
    ] {
        engine.deploy(&source).await.unwrap();
    }
    let second = builder(url, dir.path())
        .await
        .components(Components {
            executor: true,
            ..Components::none()
        })
        .executor_config(one_at_a_time())
        .start();
    settle().await;
    const ROUNDS: u64 = 10;
    for round in 1..=ROUNDS {
        tokio::join!(run(&engine, &ns, "ra"), run(&engine, &ns, "rb"));
        wait_count(&engine, &ns, "raced", round).await;
    }
    settle().await;
    assert_eq!(count(&engine, &ns, "raced").await, ROUNDS);
    second.shutdown().await;
    engine.shutdown().await;
}

common::on_each_database!(preconditions: suite);
