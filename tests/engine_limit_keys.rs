//! The limits of docs/operations.md ("Limits (hostile input)") set from the configuration reach
//! the engine `kestra::engine` builds: `kestra.limits.expression.max-value-size`,
//! `kestra.limits.task.max-output-size`, `kestra.queue.max-message-size`,
//! `kestra.limits.execution.max-task-runs`, `kestra.queue.max-delivery-attempts` and
//! `kestra.repository.sqlite.initialize-empty`; bad values are refused naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kestra::config::Config;
use kestra::core::model::StateType;

/// A SQLite engine in `dir` with the extra configuration `pairs`.
async fn engine(dir: &tempfile::TempDir, pairs: &[(&str, &str)]) -> kestra::Engine {
    let mut all = vec![(
        "kestra.data-dir".to_string(),
        dir.path().display().to_string(),
    )];
    all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_pairs(all);
    kestra::engine(&config).await.unwrap().start()
}

/// Runs a one-task flow (`task` is its YAML, indented for the list) and returns the ended
/// execution's state with every task-run log line and attempt message joined.
async fn run(engine: &kestra::Engine, id: &str, task: &str) -> (StateType, String) {
    engine
        .deploy(&format!(
            "id: {id}\nnamespace: company.limits\ntasks:\n{task}"
        ))
        .await
        .unwrap();
    let execution = engine
        .execute("company.limits", id, Default::default())
        .await
        .unwrap();
    let done = engine
        .wait_for(&execution.id, Duration::from_secs(60))
        .await
        .unwrap();
    // Logs reach the repository through the indexer, after the end: wait for an ERROR line of a
    // failed execution, at most 5 s.
    let mut text = String::new();
    for _ in 0..50 {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution("main", &execution.id, None, None)
            .await
            .unwrap();
        text = logs
            .iter()
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
            .join("\n");
        if done.state.current() != StateType::Failed
            || logs
                .iter()
                .any(|l| l.level == kestra::core::model::Level::Error)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (done.state.current(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_smaller_expression_value_size_fails_the_task_naming_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &[("kestra.limits.expression.max-value-size", "1KB")]).await;
    // 2,000 numbers joined: about 8.9 KB, over 1 KB; the same flow with 100 numbers passes.
    let (state, logs) = run(
        &engine,
        "big",
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ range(1, 2000) | join(',') }}\"\n",
    )
    .await;
    assert_eq!(state, StateType::Failed, "{logs}");
    assert!(logs.contains("1024"), "the limit is named: {logs}");
    let (state, logs) = run(
        &engine,
        "small",
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ range(1, 100) | join(',') }}\"\n",
    )
    .await;
    assert_eq!(state, StateType::Success, "{logs}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_smaller_task_output_size_fails_the_task_naming_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &[("kestra.limits.task.max-output-size", "2KB")]).await;
    // About 8.9 KB of output: under the expression limit (16 MiB), over the output limit.
    let (state, logs) = run(
        &engine,
        "wide",
        "  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ range(1, 2000) | join(',') }}\"\n",
    )
    .await;
    assert_eq!(state, StateType::Failed, "{logs}");
    assert!(logs.contains("2048"), "the limit is named: {logs}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_smaller_task_run_limit_fails_the_execution_naming_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &[("kestra.limits.execution.max-task-runs", "20")]).await;
    // A ForEach over 30 values, all at once: 1 + 30 iterations' task runs, over 20.
    let each = |values: usize| {
        format!(
            "  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: \"{{{{ range(1, {values}) }}}}\"\n    concurrencyLimit: 0\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ taskrun.value }}}}\"\n"
        )
    };
    let (state, logs) = run(&engine, "wide", &each(30)).await;
    assert_eq!(state, StateType::Failed, "{logs}");
    assert!(
        logs.contains("task 'r' (in 'each')")
            && logs.contains("over the limit of 20 task runs per execution")
            && logs.contains("kestra.limits.execution.max-task-runs"),
        "the limit, its key and the task are named: {logs}"
    );
    let (state, logs) = run(&engine, "narrow", &each(5)).await;
    assert_eq!(state, StateType::Success, "{logs}");
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_limit_values_are_refused_naming_the_key() {
    for (key, value, expected) in [
        (
            "kestra.limits.expression.max-value-size",
            "16 parsecs",
            "unknown unit",
        ),
        ("kestra.limits.task.max-output-size", "0", "is zero"),
        (
            "kestra.queue.max-message-size",
            "99999999999GB",
            "too large",
        ),
        ("kestra.limits.expression.fuel", "0", "positive"),
        (
            "kestra.repository.sqlite.initialize-empty",
            "perhaps",
            "perhaps",
        ),
        (
            "kestra.limits.execution.max-task-runs",
            "lots",
            "not a non-negative integer",
        ),
        (
            "kestra.queue.max-delivery-attempts",
            "99999999999",
            "too large",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_pairs([
            (
                "kestra.data-dir".to_string(),
                dir.path().display().to_string(),
            ),
            (key.to_string(), value.to_string()),
        ]);
        let error = match kestra::engine(&config).await {
            Ok(_) => panic!("{key}: {value} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(key), "{key}: {error}");
        assert!(error.contains(expected), "{key}: {error}");
    }
}

#[tokio::test]
async fn an_empty_sqlite_file_is_initialised_only_when_the_key_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kestra.db"), b"").unwrap();
    let config = |initialize: &str| {
        Config::from_pairs([
            (
                "kestra.data-dir".to_string(),
                dir.path().display().to_string(),
            ),
            (
                "kestra.repository.sqlite.initialize-empty".to_string(),
                initialize.to_string(),
            ),
        ])
    };
    let refused = match kestra::engine(&config("false")).await {
        Ok(_) => panic!("an empty database file was opened"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("kestra.db"), "{refused}");
    let engine = kestra::engine(&config("true")).await.unwrap().start();
    engine.shutdown().await;
    assert!(
        std::fs::metadata(dir.path().join("kestra.db"))
            .unwrap()
            .len()
            > 0,
        "initialised"
    );
}
