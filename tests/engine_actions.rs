//! Kill, restart, replay and graceful shutdown through the real engine (executor + worker +
//! indexer) on SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::core::model::StateType;
use kestra::core::model::execution::system_labels;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Engine, EngineBuilder};

async fn builder(url: &str, storage_dir: &std::path::Path) -> EngineBuilder {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(storage_dir).unwrap());
    Engine::builder(backend.queue(), backend.repositories(), storage)
}

async fn wait_state(engine: &Engine, id: &str, task_id: &str, state: StateType) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = engine.execution(id).await.unwrap()
            && e.task_run_list
                .iter()
                .any(|r| r.task_id == task_id && r.state.current() == state)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{task_id} never reached {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn suite(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let unique = kestra::core::model::new_id().to_lowercase();
    let ns = format!("actions.t{unique}");
    let engine = builder(url, dir.path()).await.start();

    // Kill: a running shell task is stopped, the task after it never runs.
    engine
        .deploy(&format!("id: sleepy\nnamespace: {ns}\ntasks:\n  - id: nap\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"sleep 30\"]\n  - id: after\n    type: io.kestra.plugin.core.log.Log\n    message: never\n"))
        .await
        .unwrap();
    let e = engine
        .execute(&ns, "sleepy", IndexMap::new())
        .await
        .unwrap();
    wait_state(&engine, &e.id, "nap", StateType::Running).await;
    let started = std::time::Instant::now();
    engine.kill(&e.id).await.unwrap();
    let killed = engine
        .wait_for(&e.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(killed.state.current(), StateType::Killed);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "kill took {:?}",
        started.elapsed()
    );
    assert_eq!(killed.task_run_list.len(), 1);
    assert_eq!(killed.task_run_list[0].state.current(), StateType::Killed);

    // Restart: same execution id, the failed task runs again with a new attempt.
    let flag = dir.path().join(format!("flag-{unique}"));
    engine
        .deploy(&format!("id: flaky\nnamespace: {ns}\ntasks:\n  - id: ok\n    type: io.kestra.plugin.core.log.Log\n    message: first\n  - id: check\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"test -f {}\"]\n", flag.display()))
        .await
        .unwrap();
    let e = engine.execute(&ns, "flaky", IndexMap::new()).await.unwrap();
    let failed = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(failed.state.current(), StateType::Failed);
    std::fs::write(&flag, b"now it passes").unwrap();
    engine.restart(&e.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let cur = engine.execution(&e.id).await.unwrap().unwrap();
        if cur.state.current() == StateType::Success {
            break cur;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "restart never succeeded: {}",
            cur.state.current()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let check = restarted
        .task_run_list
        .iter()
        .find(|r| r.task_id == "check")
        .unwrap();
    assert_eq!(check.attempts.len(), 2);
    let ok = restarted
        .task_run_list
        .iter()
        .find(|r| r.task_id == "ok")
        .unwrap();
    assert_eq!(
        ok.attempts.len(),
        1,
        "successful task runs are not run again"
    );
    assert_eq!(restarted.metadata.attempt_number, 2);
    assert_eq!(restarted.label(system_labels::RESTARTED), Some("true"));

    // Restart of a failed ForEachItem (RETRY_FAILED): its failed child executions are restarted.
    let batch_flag = dir.path().join(format!("batch-flag-{unique}"));
    engine
        .deploy(&format!("id: batchchild\nnamespace: {ns}\ntasks:\n  - id: check\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: [\"test -f {}\"]\n", batch_flag.display()))
        .await
        .unwrap();
    engine
        .deploy(&format!("id: batches\nnamespace: {ns}\ntasks:\n  - id: write\n    type: io.kestra.plugin.core.storage.Write\n    content: \"a\\nb\\n\"\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEachItem\n    items: \"{{{{ outputs.write.uri }}}}\"\n    namespace: {ns}\n    flowId: batchchild\n"))
        .await
        .unwrap();
    let e = engine
        .execute(&ns, "batches", IndexMap::new())
        .await
        .unwrap();
    let failed = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(failed.state.current(), StateType::Failed);
    std::fs::write(&batch_flag, b"now the batches pass").unwrap();
    engine.restart(&e.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let cur = engine.execution(&e.id).await.unwrap().unwrap();
        if cur.state.current() == StateType::Success {
            break cur;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ForEachItem restart never succeeded: {}",
            cur.state.current()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let each = restarted
        .task_run_list
        .iter()
        .find(|r| r.task_id == "each")
        .unwrap();
    let outputs = each.outputs.clone().unwrap();
    assert_eq!(outputs["numberOfBatches"], 2);
    assert_eq!(outputs["iterations"]["SUCCESS"], 2);

    // Replay: a new execution from a chosen task run; earlier task runs are kept.
    engine
        .deploy(&format!("id: three\nnamespace: {ns}\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: A\n  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.a.value }}}}B\"\n  - id: c\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.b.value }}}}C\"\n"))
        .await
        .unwrap();
    let e = engine.execute(&ns, "three", IndexMap::new()).await.unwrap();
    let original = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(original.state.current(), StateType::Success);
    let b = original
        .task_run_list
        .iter()
        .find(|r| r.task_id == "b")
        .unwrap();
    let replay = engine.replay(&original.id, &b.id).await.unwrap();
    assert_ne!(replay.id, original.id);
    let replayed = engine
        .wait_for(&replay.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(replayed.state.current(), StateType::Success);
    assert_eq!(replayed.original_id.as_deref(), Some(original.id.as_str()));
    assert_eq!(
        replayed.label(system_labels::REPLAY),
        Some(original.id.as_str())
    );
    let a_run = replayed
        .task_run_list
        .iter()
        .find(|r| r.task_id == "a")
        .unwrap();
    assert_eq!(
        a_run.id, original.task_run_list[0].id,
        "task runs before the replay point are kept"
    );
    let c_run = replayed
        .task_run_list
        .iter()
        .find(|r| r.task_id == "c")
        .unwrap();
    assert_eq!(c_run.outputs.as_ref().unwrap()["value"], "ABC");

    // Schedule: the engine's scheduler fires a 6-field cron (every second) and the execution runs.
    engine
        .deploy(&format!("id: ticker\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ trigger.date }}}}\"\ntriggers:\n  - id: every-second\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"* * * * * *\"\n    withSeconds: true\n"))
        .await
        .unwrap();
    let query = kestra::core::repository::ExecutionQuery {
        namespace: Some(ns.clone()),
        flow_id: Some("ticker".into()),
        states: vec![StateType::Success],
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let fired = loop {
        let page = engine
            .repositories()
            .executions
            .search(&query, &kestra::core::repository::Pageable::new(1, 10))
            .await
            .unwrap();
        if let Some(e) = page.results.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule never fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let trigger = fired.trigger.as_ref().expect("trigger info");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.trigger.Schedule");
    assert!(trigger.variables.contains_key("date"));

    // Backfill: three past hourly slots fire, in order, with the backfill's inputs.
    engine
        .deploy(&format!("id: hourly\nnamespace: {ns}\ninputs:\n  - id: tag\n    type: STRING\n    defaults: live\ntasks:\n  - id: h\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ inputs.tag }}}} {{{{ trigger.date }}}}\"\ntriggers:\n  - id: every-hour\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 * * * *\"\n"))
        .await
        .unwrap();
    let hour = chrono::Duration::hours(1);
    let now = chrono::Utc::now();
    let end = now
        - chrono::Duration::seconds(
            i64::from(chrono::Timelike::minute(&now)) * 60
                + i64::from(chrono::Timelike::second(&now)),
        );
    let request = kestra::core::scheduler::BackfillRequest {
        start: end - hour * 3,
        end: Some(end),
        inputs: serde_json::json!({"tag": "backfilled"})
            .as_object()
            .cloned()
            .unwrap(),
        labels: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The scheduler creates the trigger's state on its first pass over the new flow.
        match engine
            .backfill(&ns, "hourly", "every-hour", request.clone())
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "backfill refused: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let query = kestra::core::repository::ExecutionQuery {
        namespace: Some(ns.clone()),
        flow_id: Some("hourly".into()),
        states: vec![StateType::Success],
        // Only the backfilled ones (a live hourly slot may fire if the test crosses an hour).
        labels: vec![kestra::core::model::Label::new("system.backfill", "true")],
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let filled = loop {
        let page = engine
            .repositories()
            .executions
            .search(&query, &kestra::core::repository::Pageable::new(1, 10))
            .await
            .unwrap();
        if page.total >= 3 {
            break page.results;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill fired {} of 3 slots",
            page.total
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(filled.len(), 3);
    for e in &filled {
        let value = e.task_run_list[0].outputs.as_ref().unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(value.starts_with("backfilled "), "{value}");
    }

    // Flow trigger: a downstream flow starts when the upstream one succeeds, with trigger.* and
    // inputs rendered from the upstream execution.
    engine
        .deploy(&format!("id: upstream\nnamespace: {ns}\ntasks:\n  - id: u\n    type: io.kestra.plugin.core.debug.Return\n    format: up\noutputs:\n  - id: greeting\n    type: STRING\n    value: \"{{{{ outputs.u.value }}}}\"\n"))
        .await
        .unwrap();
    engine
        .deploy(&format!("id: downstream\nnamespace: {ns}\ninputs:\n  - id: from\n    type: STRING\ntasks:\n  - id: d\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ inputs.from }}}} {{{{ trigger.executionId }}}}\"\ntriggers:\n  - id: after-upstream\n    type: io.kestra.plugin.core.trigger.Flow\n    inputs:\n      from: \"{{{{ trigger.outputs.greeting }}}}\"\n    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionFlow\n        namespace: {ns}\n        flowId: upstream\n      - type: io.kestra.plugin.core.condition.ExecutionStatus\n        in: [SUCCESS]\n"))
        .await
        .unwrap();
    let up = engine
        .execute(&ns, "upstream", IndexMap::new())
        .await
        .unwrap();
    let up = engine
        .wait_for(&up.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(up.state.current(), StateType::Success);
    let query = kestra::core::repository::ExecutionQuery {
        namespace: Some(ns.clone()),
        flow_id: Some("downstream".into()),
        states: vec![StateType::Success],
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let down = loop {
        let page = engine
            .repositories()
            .executions
            .search(&query, &kestra::core::repository::Pageable::new(1, 10))
            .await
            .unwrap();
        if let Some(e) = page.results.into_iter().next() {
            assert_eq!(page.total, 1, "exactly one downstream execution");
            break e;
        }
        if tokio::time::Instant::now() >= deadline {
            let all = kestra::core::repository::ExecutionQuery {
                namespace: Some(ns.clone()),
                ..Default::default()
            };
            let seen = engine
                .repositories()
                .executions
                .search(&all, &kestra::core::repository::Pageable::new(1, 100))
                .await
                .unwrap();
            let seen: Vec<String> = seen
                .results
                .iter()
                .map(|e| format!("{} {} {}", e.flow_id, e.id, e.state.current()))
                .collect();
            panic!("the flow trigger never fired; executions of the namespace: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trigger = down.trigger.as_ref().unwrap();
    assert_eq!(trigger.type_, "io.kestra.plugin.core.trigger.Flow");
    assert_eq!(trigger.variables["executionId"], up.id.as_str());
    assert_eq!(
        down.task_run_list[0].outputs.as_ref().unwrap()["value"],
        format!("up {}", up.id)
    );

    // Webhook trigger: the engine API behind /executions/webhook/{ns}/{id}/{key}.
    engine
        .deploy(&format!("id: hooked\nnamespace: {ns}\ninputs:\n  - id: who\n    type: STRING\ntasks:\n  - id: h\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ inputs.who }}}} {{{{ trigger.body.n }}}} {{{{ trigger.parameters.p[0] }}}}\"\ntriggers:\n  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: s3cr3t\n    wait: true\n    inputs:\n      who: \"{{{{ trigger.body.name }}}}\"\n"))
        .await
        .unwrap();
    let request = kestra::core::runtime::WebhookRequest {
        body: serde_json::json!({"name": "ada", "n": 7}),
        parameters: serde_json::json!({"p": ["q"]})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    let wrong = engine.webhook(&ns, "hooked", "nope", request.clone()).await;
    assert!(
        matches!(wrong, Err(kestra::EngineError::WebhookNotFound { .. })),
        "{wrong:?}"
    );
    let (e, response) = engine
        .webhook(&ns, "hooked", "s3cr3t", request)
        .await
        .unwrap();
    assert!(response.wait);
    let done = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    assert_eq!(
        done.trigger.as_ref().unwrap().type_,
        "io.kestra.plugin.core.trigger.Webhook"
    );
    assert_eq!(
        done.task_run_list[0].outputs.as_ref().unwrap()["value"],
        "ada 7 q"
    );
    // A key written as an expression is rendered (flow variables, functions) before matching.
    engine
        .deploy(&format!("id: hooked-expr\nnamespace: {ns}\ntasks:\n  - id: h\n    type: io.kestra.plugin.core.log.Log\n    message: hooked\ntriggers:\n  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: \"{{{{ flow.id }}}}-{{{{ 'k' | upper }}}}\"\n"))
        .await
        .unwrap();
    let literal = engine
        .webhook(
            &ns,
            "hooked-expr",
            "{{ flow.id }}-{{ 'k' | upper }}",
            Default::default(),
        )
        .await;
    assert!(
        matches!(literal, Err(kestra::EngineError::WebhookNotFound { .. })),
        "the unrendered key does not match: {literal:?}"
    );
    let (e, _) = engine
        .webhook(&ns, "hooked-expr", "hooked-expr-K", Default::default())
        .await
        .unwrap();
    let done = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);

    // Graceful shutdown: a task finishing during the drain still has its result applied; a new
    // engine on the same database finishes the execution.
    engine
        .deploy(&format!("id: drain\nnamespace: {ns}\ntasks:\n  - id: slow\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT1S\n  - id: next\n    type: io.kestra.plugin.core.log.Log\n    message: after restart\n"))
        .await
        .unwrap();
    let e = engine.execute(&ns, "drain", IndexMap::new()).await.unwrap();
    wait_state(&engine, &e.id, "slow", StateType::Running).await;
    engine.shutdown().await;
    let engine = builder(url, dir.path()).await.start();
    let during = engine.execution(&e.id).await.unwrap().unwrap();
    let slow = during
        .task_run_list
        .iter()
        .find(|r| r.task_id == "slow")
        .unwrap();
    assert_eq!(
        slow.state.current(),
        StateType::Success,
        "the drained result was applied before stopping"
    );
    let done = engine
        .wait_for(&e.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state.current(), StateType::Success);
    engine.shutdown().await;
}

common::on_each_database!(actions: suite);
