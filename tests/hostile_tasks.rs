//! Hostile task output (issue 16), through the worker and the engine: a script printing megabytes
//! without a newline, an oversized `::{...}::` message, a huge log message, outputs over the
//! worker's limit, background processes left behind by a script, and `inputFiles` written
//! through a symbolic link out of a WorkingDirectory.
//!
//! The engine cases run on SQLite always; on PostgreSQL and MariaDB when their URLs are set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Value, json};

use kestra::Engine;
use kestra::core::flow::TaskRegistry;
use kestra::core::flow::model::Task;
use kestra::core::limits::MAX_LOG_LINE;
use kestra::core::model::{Level, StateType};
use kestra::core::worker::{MemorySink, RunContext, RunnerRegistry, TaskError, TaskOutput};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

async fn run(task: Value) -> (Result<TaskOutput, TaskError>, MemorySink) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let task: Task = serde_json::from_value(task).unwrap();
    let (mut ctx, sink) = RunContext::for_test(task.clone(), json!({}), storage);
    let runnable = RunnerRegistry::core()
        .build(&task, &TaskRegistry::default())
        .unwrap();
    (runnable.run(&mut ctx).await, sink)
}

fn shell(commands: Value) -> Value {
    json!({"id": "sh", "type": "io.kestra.plugin.scripts.shell.Commands",
           "taskRunner": {"type": "io.kestra.plugin.core.runner.Process"}, "commands": commands})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_without_newline_is_logged_truncated_with_a_marker() {
    // 5 MiB on one line: read in bounded pieces, one log row of at most MAX_LOG_LINE + marker
    let (result, sink) = run(shell(json!([
        "head -c 5242880 /dev/zero | tr '\\0' 'a'; echo; echo after"
    ])))
    .await;
    let output = result.unwrap();
    assert_eq!(output.outputs["exitCode"], json!(0));
    let logs = sink.logs();
    let long = logs
        .iter()
        .find(|l| l.message.starts_with("aaa"))
        .expect("the long line is logged");
    assert!(
        long.message.len() < MAX_LOG_LINE + 100,
        "{}",
        long.message.len()
    );
    assert!(
        long.message
            .ends_with(&format!("[truncated: 5242880 bytes, limit {MAX_LOG_LINE}]")),
        "{}",
        &long.message[long.message.len() - 80..]
    );
    assert!(logs.iter().any(|l| l.message == "after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_protocol_message_fails_the_task_with_its_size() {
    let size = 2 * MAX_LOG_LINE;
    let script = format!(
        "printf '::{{\"outputs\":{{\"big\":\"'; head -c {size} /dev/zero | tr '\\0' 'a'; printf '\"}}}}::\\n'"
    );
    let (result, _sink) = run(shell(json!([script]))).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("bytes is over the limit of"), "{err}");
    // the prefix `::{"outputs":{"big":"` and the suffix `"}}::`
    assert!(err.contains(&format!("{} bytes", size + 26)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_log_message_is_truncated() {
    let (result, sink) = run(json!({
        "id": "log", "type": "io.kestra.plugin.core.log.Log",
        "message": "{{ 'é' * 1000000 }}"
    }))
    .await;
    result.unwrap();
    let logs = sink.logs();
    let entry = logs.iter().find(|l| l.level == Level::Info).unwrap();
    assert!(entry.message.len() <= MAX_LOG_LINE);
    assert!(
        entry.message.contains("[truncated: 2000000 bytes"),
        "marker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_process_does_not_outlive_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-alive");
    let script = format!("(sleep 1; touch {}) &\necho started", marker.display());
    let (result, _sink) = run(shell(json!([script]))).await;
    assert_eq!(result.unwrap().outputs["exitCode"], json!(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the background process survived its task");
}

async fn outputs_over_the_limit_fail_the_task(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("hostile.o{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage)
        .worker_config(kestra::core::worker::WorkerConfig {
            max_output_size: 10_000,
            ..Default::default()
        })
        .start();
    engine
        .deploy(&format!("id: big\nnamespace: {ns}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ range(1, 5000) | join(',') }}}}\"\n"))
        .await
        .unwrap();
    engine
        .deploy(&format!("id: small\nnamespace: {ns}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: ok\n"))
        .await
        .unwrap();
    let big = engine.execute(&ns, "big", IndexMap::new()).await.unwrap();
    let done = engine
        .wait_for(&big.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Failed);
    assert!(done.task_run_list[0].outputs.is_none());
    let small = engine.execute(&ns, "small", IndexMap::new()).await.unwrap();
    let done_small = engine
        .wait_for(&small.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done_small.state.current(), StateType::Success);
    // the reason, with the size, is in the execution's logs
    let mut found = false;
    for _ in 0..50 {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution(&done.tenant_id, &done.id, Some(Level::Error), None)
            .await
            .unwrap();
        if logs.iter().any(|l| {
            l.message.contains("outputs are too large")
                && l.message.contains("over the limit of 10000 bytes")
        }) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "no error log naming the size");
    engine.shutdown().await;
}

/// In a WorkingDirectory, a task creates symbolic links out of the directory; a later task's
/// `inputFiles` must not write through them (the path check used to be textual only).
async fn input_files_do_not_follow_links_out_of_the_working_directory(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let ns = format!("hostile.w{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage).start();
    let out = outside.path().display();
    let flow = format!(
        r#"id: wd
namespace: {ns}
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: links
        type: io.kestra.plugin.scripts.shell.Commands
        taskRunner: {{type: io.kestra.plugin.core.runner.Process}}
        commands: ["ln -s {out} escape", "ln -s {out}/file.txt file.txt"]
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        taskRunner: {{type: io.kestra.plugin.core.runner.Process}}
        inputFiles:
          escape/pwned.txt: pwned
        commands: ["true"]
"#
    );
    engine.deploy(&flow).await.unwrap();
    let e = engine.execute(&ns, "wd", IndexMap::new()).await.unwrap();
    let done = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Failed);
    assert!(
        !outside.path().join("pwned.txt").exists(),
        "inputFiles wrote through a link out of the working directory"
    );
    engine.shutdown().await;
}

common::on_each_database!(
    hostile_engine:
    outputs_over_the_limit_fail_the_task,
    input_files_do_not_follow_links_out_of_the_working_directory
);
