//! The engine against a queue that refuses a unit of work or a message (the Queue contract's
//! `TooLarge` and `Fenced`), through the real engine on a JDBC backend:
//! - a task output bigger than the queue's maximum message size ends the execution FAILED with an
//!   ERROR log naming the topic, key and size, and later executions still run - whether the
//!   worker's result is the oversized message or the results fit and the execution document does
//!   not (the executor's unit of work is refused);
//! - the executor's units of work fenced ten times in a row (a zombie's commits) are dropped and
//!   redone by the "new owner" without the error backoff: the execution ends SUCCESS promptly and
//!   each task ran once.
//!
//! On SQLite always; on PostgreSQL and MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use kestra::Engine;
use kestra::core::inputs::RawInput;
use kestra::core::model::{Execution, StateType};
use kestra::core::queue::Queue;
use kestra::core::testkit::queue::FencingQueue;
use kestra::jdbc::{JdbcBackend, JdbcOptions};
use kestra::storage::LocalStorage;

/// The maximum message size of these tests.
const MAX: usize = 64 * 1024;

fn engine(backend: &JdbcBackend, queue: Arc<dyn Queue>, dir: &std::path::Path) -> Engine {
    let storage = Arc::new(LocalStorage::new(dir).unwrap());
    Engine::builder(queue, backend.repositories(), storage).start()
}

/// The executor's log lines of an execution, waiting up to 20 s for one that contains `needle`.
async fn wait_for_log(engine: &Engine, execution: &Execution, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let messages: Vec<String> = engine
            .repositories()
            .logs
            .find_by_execution(&execution.tenant_id, &execution.id, None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        if messages.iter().any(|m| m.contains(needle)) || Instant::now() > deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn too_large(url: &str) {
    let backend = JdbcBackend::connect_with(
        url,
        JdbcOptions {
            max_message_bytes: MAX,
            ..JdbcOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&backend, backend.queue(), dir.path());
    let ns = format!("refusals.t{}", kestra::core::model::new_id().to_lowercase());
    for (id, format) in [
        // The worker's result carries an output of 2 x 40 kB: over the maximum.
        ("doubled", "{{ inputs.chunk }}{{ inputs.chunk }}"),
        // The result (40 kB) fits; the execution with the input and the output (80 kB) does not.
        ("echoed", "{{ inputs.chunk }}"),
    ] {
        engine
            .deploy(&format!(
                "id: {id}\nnamespace: {ns}\ninputs:\n  - id: chunk\n    type: STRING\ntasks:\n  - id: out\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{format}\"\n"
            ))
            .await
            .unwrap();
    }
    let chunk = |n: usize| {
        let mut inputs = IndexMap::new();
        inputs.insert(
            "chunk".to_string(),
            RawInput::Json(serde_json::json!("x".repeat(n))),
        );
        inputs
    };

    let doubled = engine.execute(&ns, "doubled", chunk(40_000)).await.unwrap();
    let doubled = engine
        .wait_for(&doubled.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(doubled.state.current(), StateType::Failed, "{doubled:?}");
    assert_eq!(
        doubled.task_run_list[0].state.current(),
        StateType::Failed,
        "the task whose result is too large fails"
    );
    let logs = wait_for_log(&engine, &doubled, "too large").await;
    assert!(
        logs.iter().any(|m| m
            .contains("message too large for the queue: topic worker_task_result")
            && m.contains(&doubled.id)
            && m.contains("maximum 65536 bytes")),
        "an ERROR log names the topic, key and size: {logs:?}"
    );

    let echoed = engine.execute(&ns, "echoed", chunk(40_000)).await.unwrap();
    let echoed = engine
        .wait_for(&echoed.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(echoed.state.current(), StateType::Failed, "{echoed:?}");
    assert!(
        echoed.task_run_list.iter().all(|t| t.state.is_terminated()),
        "no task run is left unfinished: {:?}",
        echoed.task_run_list
    );
    let logs = wait_for_log(&engine, &echoed, "too large").await;
    assert!(
        logs.iter().any(
            |m| m.contains("too large for the queue (topic execution, key ")
                && m.contains(&echoed.id)
                && m.contains("maximum 65536 bytes")
        ),
        "the executor's ERROR log names the topic, key and size: {logs:?}"
    );

    // The queue did not stall: small executions of both flows still run.
    for id in ["doubled", "echoed"] {
        let small = engine.execute(&ns, id, chunk(10)).await.unwrap();
        let small = engine
            .wait_for(&small.id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(small.state.current(), StateType::Success, "{small:?}");
    }
    engine.shutdown().await;
}

async fn fenced(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fencing = Arc::new(FencingQueue::new(backend.queue(), 10));
    let engine = engine(&backend, fencing.clone(), dir.path());
    let ns = format!("refusals.t{}", kestra::core::model::new_id().to_lowercase());
    engine
        .deploy(&format!(
            "id: two\nnamespace: {ns}\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: a\n  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: b\n"
        ))
        .await
        .unwrap();
    let start = Instant::now();
    let execution = engine.execute(&ns, "two", IndexMap::new()).await.unwrap();
    let done = engine
        .wait_for(&execution.id, Duration::from_secs(60))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    assert_eq!(fencing.fenced(), 10, "every fence was met");
    // Handled as an error, ten refusals would back off 50 ms doubling to 5 s: over 20 s.
    assert!(
        elapsed < Duration::from_secs(10),
        "fenced units are dropped and redone without backoff, took {elapsed:?}"
    );
    assert_eq!(done.task_run_list.len(), 2);
    for task_run in &done.task_run_list {
        assert_eq!(
            task_run.attempts.len(),
            1,
            "a fenced unit's worker jobs were never published: each task ran once"
        );
    }
    engine.shutdown().await;
}

// One test per database running both checks in turn: run at once on a shared server database, the
// other check's worker took this one's job (with its own message limit) and CI saw it succeed.
common::on_each_database!(refusals: too_large, fenced);
