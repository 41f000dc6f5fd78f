//! A scheduler keeps firing while the repository is unavailable: the engine runs only its scheduler,
//! over repositories that fail every call (as an Elasticsearch that is down would) and a flow source
//! that does not read them (as the flow topic of the Kafka backend). A Schedule trigger firing every
//! second still creates its executions, observed on the queue; the trigger state lives behind the
//! queue backend. On SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under
//! CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kestra::Engine;
use kestra::core::flow::parse::parse_flow;
use kestra::core::flow::registry::TaskRegistry;
use kestra::core::model::{Execution, new_id};
use kestra::core::queue::Topic;
use kestra::core::repository::FlowRecord;
use kestra::core::runtime::Components;
use kestra::core::runtime::flows::FlowStore;
use kestra::core::scheduler::SchedulerConfig;
use kestra::core::testkit::unavailable::unavailable_repositories;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

async fn keeps_firing(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let queue = backend.queue();
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let tenant = format!("down-{}", new_id().to_lowercase());
    let id = format!("every_second_{}", new_id().to_lowercase());
    let source = format!(
        "id: {id}\nnamespace: company.down\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\ntriggers:\n  - id: each\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"* * * * * *\"\n    withSeconds: true\n    allowConcurrent: true\n"
    );
    let mut flow = parse_flow(&source, &TaskRegistry::default()).unwrap();
    flow.tenant_id = tenant.clone();
    flow.revision = Some(1);

    // The flow as the flow topic carries it, in the in-memory store a Kafka backend replays it into.
    let store = Arc::new(FlowStore::new());
    store.apply(FlowRecord {
        tenant_id: tenant.clone(),
        namespace: flow.namespace.clone(),
        id: flow.id.clone(),
        revision: 1,
        flow: serde_json::to_value(&flow).unwrap(),
        source: source.clone(),
        labels: Vec::new(),
        disabled: false,
        deleted: false,
        updated: chrono::Utc::now(),
    });

    let mut executions = queue.subscribe(Topic::Execution).await.unwrap();
    let (repositories, down) = unavailable_repositories();
    let engine = Engine::builder(queue.clone(), repositories, storage)
        .components(Components {
            scheduler: true,
            ..Components::none()
        })
        .flow_source(store)
        .scheduler_config(SchedulerConfig {
            tick: Duration::from_millis(200),
            tenants: vec![tenant.clone()],
            ..SchedulerConfig::default()
        })
        .start();

    let mut fired = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fired.len() < 3 {
        let next = tokio::time::timeout_at(deadline, executions.next()).await;
        let Ok(Some(message)) = next else {
            panic!(
                "the scheduler stopped firing with the repository down: {} executions of {id} seen",
                fired.len()
            );
        };
        let Ok(execution) = message.unwrap().decode::<Execution>() else {
            continue;
        };
        if execution.tenant_id == tenant && execution.flow_id == id {
            assert_eq!(
                execution.trigger.as_ref().map(|t| t.id.as_str()),
                Some("each")
            );
            fired.insert(execution.id);
        }
    }
    engine.shutdown().await;
    assert_eq!(down.calls(), 0, "the scheduler never called the repository");
    // The trigger's state is behind the queue backend: remove it.
    let mut unit = queue.begin_triggers().await.unwrap();
    for state in unit.states(&tenant).await.unwrap() {
        assert_eq!(state.flow_id, id);
        if unit.claim(&state.uid()).await.unwrap().is_some() {
            unit.delete(&state.uid()).await.unwrap();
        }
    }
    unit.commit().await.unwrap();
    backend.close().await;
}

common::on_each_database!(scheduler_keeps_firing_while_the_repository_is_unavailable: keeps_firing);
