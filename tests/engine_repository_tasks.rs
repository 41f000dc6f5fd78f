//! The core tasks that read the repository or act on other executions and triggers, run by the
//! real engine (executor, worker, indexer, scheduler) through the worker's `ExecutionServices`
//! seam: log.Fetch, execution.Count, execution.Resume, trigger.Toggle and
//! execution.PurgeExecutions. On SQLite, on PostgreSQL / MariaDB when their URLs are set (required
//! under CI=true), and with the feature `kafka` on Kafka + Elasticsearch
//! (`KESTRA_TEST_KAFKA_BROKERS`, `KESTRA_TEST_ELASTICSEARCH_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::Engine;
use kestra::core::inputs::RawInput;
use kestra::core::model::{Execution, StateType, TriggerState, trigger_uid};
use kestra::core::storage::InternalStorageExt;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn inputs(pairs: &[(&str, &str)]) -> IndexMap<String, RawInput> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), RawInput::Text(v.to_string())))
        .collect()
}

async fn run(engine: &Engine, ns: &str, flow: &str, pairs: &[(&str, &str)]) -> Execution {
    let e = engine.execute(ns, flow, inputs(pairs)).await.unwrap();
    engine.wait_for(&e.id, WAIT).await.unwrap()
}

fn output(e: &Execution, task: &str) -> Value {
    let run = e
        .task_run_list
        .iter()
        .find(|r| r.task_id == task)
        .unwrap_or_else(|| panic!("no task run {task}: {e:?}"));
    serde_json::to_value(run.outputs.clone().unwrap_or_default()).unwrap()
}

/// Polls `f` until it returns `Some` (the repository may lag the queue on Kafka + Elasticsearch).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn trigger_state(engine: &Engine, uid: &str) -> Option<TriggerState> {
    engine.repositories().triggers.find(uid).await.unwrap()
}

async fn file_lines(engine: &Engine, uri: &str) -> Vec<Value> {
    let path = kestra::core::storage::StoragePath::parse(uri).unwrap();
    let bytes = engine
        .storage()
        .as_ref()
        .get_bytes("main", &path)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every task on one engine, in a namespace of its own.
async fn tasks_through_the_seam(engine: &Engine, ns: &str) {
    // Two executions of a flow that logs at INFO and WARN in two tasks.
    engine
        .deploy(&format!(
            "id: talk\nnamespace: {ns}\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hello from a\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    level: WARN\n    message: careful from b\n"
        ))
        .await
        .unwrap();
    let talk1 = run(engine, ns, "talk", &[]).await;
    let talk2 = run(engine, ns, "talk", &[]).await;
    assert_eq!(talk1.state.current(), StateType::Success);
    for id in [&talk1.id, &talk2.id] {
        eventually("the talk logs are stored", || async {
            let logs = engine
                .repositories()
                .logs
                .find_by_execution("main", id, None, None)
                .await
                .unwrap();
            (logs.len() >= 2).then_some(())
        })
        .await;
    }

    // log.Fetch: by level, by task, and none from another flow's filter.
    engine
        .deploy(&format!(
            "id: fetcher\nnamespace: {ns}\ninputs:\n  - id: target\n    type: STRING\ntasks:\n  - id: warn_only\n    type: io.kestra.plugin.core.log.Fetch\n    namespace: {ns}\n    flowId: talk\n    executionId: \"{{{{ inputs.target }}}}\"\n    level: WARN\n  - id: task_a\n    type: io.kestra.plugin.core.log.Fetch\n    namespace: {ns}\n    flowId: talk\n    executionId: \"{{{{ inputs.target }}}}\"\n    tasksId: [a]\n  - id: wrong_flow\n    type: io.kestra.plugin.core.log.Fetch\n    executionId: \"{{{{ inputs.target }}}}\"\n"
        ))
        .await
        .unwrap();
    let fetched = run(engine, ns, "fetcher", &[("target", &talk1.id)]).await;
    assert_eq!(fetched.state.current(), StateType::Success, "{fetched:?}");
    let warn = output(&fetched, "warn_only");
    assert_eq!(warn["size"], json!(1), "{warn}");
    let lines = file_lines(engine, warn["uri"].as_str().unwrap()).await;
    assert!(warn["uri"].as_str().unwrap().ends_with(".ion"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["message"], json!("careful from b"));
    assert_eq!(lines[0]["level"], json!("WARN"));
    assert_eq!(lines[0]["executionId"], json!(talk1.id));
    let a = output(&fetched, "task_a");
    assert_eq!(a["size"], json!(1), "{a}");
    let lines = file_lines(engine, a["uri"].as_str().unwrap()).await;
    assert_eq!(lines[0]["message"], json!("hello from a"));
    // Without namespace/flowId, Fetch looks in the current flow (fetcher): talk's logs are not it.
    assert_eq!(output(&fetched, "wrong_flow")["size"], json!(0));

    // execution.Count: per listed flow (0 included), kept by the expression.
    engine
        .deploy(&format!(
            "id: counter\nnamespace: {ns}\ntasks:\n  - id: some\n    type: io.kestra.plugin.core.execution.Count\n    flows:\n      - namespace: {ns}\n        flowId: talk\n      - namespace: {ns}\n        flowId: silent\n    states: [SUCCESS]\n    startDate: \"{{{{ now() | dateAdd(-1, 'HOURS') }}}}\"\n    expression: \"{{{{ count >= 1 }}}}\"\n  - id: none\n    type: io.kestra.plugin.core.execution.Count\n    flows:\n      - namespace: {ns}\n        flowId: talk\n      - namespace: {ns}\n        flowId: silent\n    startDate: \"{{{{ now() | dateAdd(-1, 'HOURS') }}}}\"\n    expression: \"{{{{ count == 0 }}}}\"\n  - id: by_namespace\n    type: io.kestra.plugin.core.execution.Count\n    namespaces: [{ns}]\n    states: [SUCCESS]\n    startDate: \"{{{{ now() | dateAdd(-1, 'HOURS') }}}}\"\n    expression: \"{{{{ count >= 2 }}}}\"\n"
        ))
        .await
        .unwrap();
    let counted = run(engine, ns, "counter", &[]).await;
    assert_eq!(counted.state.current(), StateType::Success, "{counted:?}");
    let some = output(&counted, "some");
    assert_eq!(
        some["results"],
        json!([{"namespace": ns, "flowId": "talk", "count": 2}]),
        "{some}"
    );
    assert_eq!(some["total"], json!(2));
    let none = output(&counted, "none");
    assert_eq!(
        none["results"],
        json!([{"namespace": ns, "flowId": "silent", "count": 0}]),
        "{none}"
    );
    assert_eq!(none["total"], json!(0));
    let by_ns = output(&counted, "by_namespace");
    assert_eq!(
        by_ns["results"],
        json!([{"namespace": ns, "flowId": "talk", "count": 2}]),
        "{by_ns}"
    );

    // Count without flows or namespaces fails and says why.
    engine
        .deploy(&format!(
            "id: bad_counter\nnamespace: {ns}\ntasks:\n  - id: c\n    type: io.kestra.plugin.core.execution.Count\n    startDate: \"2024-01-01T00:00:00Z\"\n    expression: \"{{{{ true }}}}\"\n"
        ))
        .await
        .unwrap();
    let bad = run(engine, ns, "bad_counter", &[]).await;
    assert_eq!(bad.state.current(), StateType::Failed);
    eventually("the Count error is logged", || async {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution("main", &bad.id, None, None)
            .await
            .unwrap();
        logs.iter()
            .any(|l| l.message.contains("list of flows or namespaces"))
            .then_some(())
    })
    .await;

    // execution.Resume: another flow's paused execution, with its onResume input.
    engine
        .deploy(&format!(
            "id: waiting\nnamespace: {ns}\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n    onResume:\n      - id: note\n        type: STRING\n  - id: after\n    type: io.kestra.plugin.core.debug.Return\n    format: \"resumed with {{{{ outputs.hold.onResume.note }}}}\"\n"
        ))
        .await
        .unwrap();
    let waiting = engine.execute(ns, "waiting", inputs(&[])).await.unwrap();
    eventually("the execution pauses", || async {
        let e = engine.execution(&waiting.id).await.unwrap()?;
        (e.state.current() == StateType::Paused).then_some(())
    })
    .await;
    engine
        .deploy(&format!(
            "id: resumer\nnamespace: {ns}\ninputs:\n  - id: target\n    type: STRING\ntasks:\n  - id: resume\n    type: io.kestra.plugin.core.execution.Resume\n    namespace: {ns}\n    flowId: waiting\n    executionId: \"{{{{ inputs.target }}}}\"\n    inputs:\n      note: from the task\n"
        ))
        .await
        .unwrap();
    let resumer = run(engine, ns, "resumer", &[("target", &waiting.id)]).await;
    assert_eq!(resumer.state.current(), StateType::Success, "{resumer:?}");
    let resumed = engine.wait_for(&waiting.id, WAIT).await.unwrap();
    assert_eq!(resumed.state.current(), StateType::Success, "{resumed:?}");
    assert_eq!(
        output(&resumed, "after")["value"],
        json!("resumed with from the task")
    );
    // Resuming an execution that is not paused fails.
    let again = run(engine, ns, "resumer", &[("target", &waiting.id)]).await;
    assert_eq!(again.state.current(), StateType::Failed);

    // trigger.Toggle: disable then enable a schedule through the scheduler's trigger state.
    engine
        .deploy(&format!(
            "id: scheduled\nnamespace: {ns}\ntasks:\n  - id: x\n    type: io.kestra.plugin.core.log.Log\n    message: tick\ntriggers:\n  - id: yearly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 0 1 1 *\"\n"
        ))
        .await
        .unwrap();
    let uid = trigger_uid("main", ns, "scheduled", "yearly");
    let before = eventually("the scheduler creates the trigger state", || {
        trigger_state(engine, &uid)
    })
    .await;
    assert!(!before.disabled);
    engine
        .deploy(&format!(
            "id: toggler\nnamespace: {ns}\ninputs:\n  - id: enabled\n    type: BOOLEAN\ntasks:\n  - id: toggle\n    type: io.kestra.plugin.core.trigger.Toggle\n    namespace: {ns}\n    flowId: scheduled\n    trigger: yearly\n    enabled: \"{{{{ inputs.enabled }}}}\"\n  - id: missing\n    type: io.kestra.plugin.core.trigger.Toggle\n    flowId: no-such-flow\n    trigger: yearly\n    allowFailure: true\n"
        ))
        .await
        .unwrap();
    let off = run(engine, ns, "toggler", &[("enabled", "false")]).await;
    assert_eq!(
        off.task_run_list
            .iter()
            .find(|r| r.task_id == "toggle")
            .unwrap()
            .state
            .current(),
        StateType::Success,
        "{off:?}"
    );
    eventually("the trigger is disabled", || async {
        trigger_state(engine, &uid).await.filter(|t| t.disabled)
    })
    .await;
    let on = run(engine, ns, "toggler", &[("enabled", "true")]).await;
    assert_ne!(on.state.current(), StateType::Failed, "{on:?}");
    eventually("the trigger is enabled again", || async {
        trigger_state(engine, &uid).await.filter(|t| !t.disabled)
    })
    .await;
    // A flow that does not exist is an error (allowFailure: the execution ends WARNING).
    assert_eq!(on.state.current(), StateType::Warning, "{on:?}");

    // execution.PurgeExecutions: talk's two ended executions go, with their logs.
    engine
        .deploy(&format!(
            "id: purger\nnamespace: {ns}\ntasks:\n  - id: purge\n    type: io.kestra.plugin.core.execution.PurgeExecutions\n    namespace: {ns}\n    flowId: talk\n    endDate: \"{{{{ now() }}}}\"\n    states: [SUCCESS]\n"
        ))
        .await
        .unwrap();
    let purged = run(engine, ns, "purger", &[]).await;
    assert_eq!(purged.state.current(), StateType::Success, "{purged:?}");
    let counts = output(&purged, "purge");
    assert_eq!(counts["executionsCount"], json!(2), "{counts}");
    assert_eq!(counts["logsCount"], json!(4), "{counts}");
    for id in [&talk1.id, &talk2.id] {
        eventually("the purged execution is gone", || async {
            engine.execution(id).await.unwrap().is_none().then_some(())
        })
        .await;
        eventually("its logs are gone", || async {
            engine
                .repositories()
                .logs
                .find_by_execution("main", id, None, None)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        })
        .await;
    }
    // Other flows' executions stay.
    assert!(engine.execution(&waiting.id).await.unwrap().is_some());
}

async fn on_jdbc(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage).start();
    let ns = format!("repo.t{}", kestra::core::model::new_id().to_lowercase());
    tasks_through_the_seam(&engine, &ns).await;
    engine.shutdown().await;
}

common::on_each_database!(repository_tasks: on_jdbc);

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_tasks_on_kafka_and_elasticsearch() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(es) = common::service_url("KESTRA_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = kestra::core::model::new_id().to_lowercase();
    let config = kestra::config::Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers),
        ("kestra.kafka.topic-prefix", format!("kestra_rt_{run}_")),
        ("kestra.kafka.partitions", "2".to_string()),
        ("kestra.elasticsearch.url", es),
        (
            "kestra.elasticsearch.index-prefix",
            format!("kestra_rt_{run}_"),
        ),
        ("kestra.data-dir", dir.path().display().to_string()),
    ]);
    let engine = kestra::engine(&config).await.unwrap().start();
    tasks_through_the_seam(&engine, &format!("repo.k{run}")).await;
    engine.shutdown().await;
}
