//! Liveness goes through the queue, not the repository (issue 9 item 8): the engine runs only an
//! executor, over repositories that fail every call (as an Elasticsearch that is down would); a
//! worker started beside it heartbeats, records the job it takes in the same step as it takes
//! it, and once it dies (its task aborted: no goodbye) the executor declares it DISCONNECTED with
//! the job it held, while the executor itself, still beating, is never declared dead. Observed on
//! the liveness topic as the indexer group sees it. On SQLite, and on PostgreSQL / MariaDB when
//! their URLs are set (required under CI=true). And the purge: stopped and dead instances are
//! forgotten (their rows deleted) once `kestra.server.service.purge.retention` has passed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use kestra::Engine;
use kestra::core::executor::ExecutorConfig;
use kestra::core::expression::ExpressionEngine;
use kestra::core::flow::parse::parse_flow;
use kestra::core::flow::registry::TaskRegistry;
use kestra::core::liveness::{LivenessConfig, LivenessMessage};
use kestra::core::messages::execution_envelope;
use kestra::core::model::{Execution, ServiceState, ServiceType, new_id};
use kestra::core::queue::{ConsumerGroup, Queue, Topic};
use kestra::core::repository::FlowRecord;
use kestra::core::runtime::Components;
use kestra::core::runtime::flows::FlowStore;
use kestra::core::testkit::unavailable::unavailable_repositories;
use kestra::core::worker::{RunnerRegistry, Worker, WorkerConfig};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

const BEAT: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Every liveness message of `ids` seen so far, as the indexer group receives them.
async fn seen(queue: &dyn Queue, ids: &[&str], into: &mut Vec<LivenessMessage>) {
    let got = queue
        .receive(
            ConsumerGroup::Indexer,
            Topic::Liveness,
            500,
            Duration::from_secs(30),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    for d in got {
        if ids.contains(&d.envelope.key.as_str()) {
            into.push(d.envelope.decode().unwrap());
        }
    }
    queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
}

async fn dead_worker_is_declared(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let queue = backend.queue();
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let id = format!("sleepy_{}", new_id().to_lowercase());
    let source = format!(
        "id: {id}\nnamespace: company.liveness\ntasks:\n  - id: nap\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT60S\n"
    );
    let mut flow = parse_flow(&source, &TaskRegistry::default()).unwrap();
    flow.revision = Some(1);
    let store = Arc::new(FlowStore::new());
    store.apply(FlowRecord {
        tenant_id: flow.tenant_id.clone(),
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

    let started = chrono::Utc::now();
    let (repositories, down) = unavailable_repositories();
    let engine = Engine::builder(queue.clone(), repositories, storage.clone())
        .components(Components {
            executor: true,
            ..Components::none()
        })
        .flow_source(store)
        .executor_config(ExecutorConfig {
            liveness: LivenessConfig {
                heartbeat_interval: BEAT,
                timeout: TIMEOUT,
                ..LivenessConfig::default()
            },
            ..ExecutorConfig::default()
        })
        .start();

    let worker_id = format!("worker-live-{}", new_id());
    let worker = Worker::new(
        WorkerConfig {
            id: worker_id.clone(),
            // The queue of a server database is shared with earlier tests: a job they left behind
            // may be taken too, and must not keep this test's job waiting.
            concurrency: 4,
            heartbeat_interval: BEAT,
            ..WorkerConfig::default()
        },
        queue.clone(),
        storage,
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let running = tokio::spawn(worker.run(tokio_util::sync::CancellationToken::new()));

    let execution = Execution::new(&flow.namespace, &flow.id, 1);
    queue
        .publish(vec![execution_envelope(&execution).unwrap()])
        .await
        .unwrap();

    // The worker heartbeats and records the job it takes.
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no JobsTaken record of worker {worker_id}: {messages:?}"
        );
        seen(queue.as_ref(), &[&worker_id], &mut messages).await;
        let taken = messages.iter().find_map(|m| match m {
            LivenessMessage::JobsTaken { jobs, .. } => jobs
                .iter()
                .find(|j| j.execution_id.as_deref() == Some(execution.id.as_str()))
                .cloned(),
            _ => None,
        });
        if let Some(job) = taken {
            break job;
        }
    };
    // Its first heartbeat is published by a task of its own: it may come after the job record.
    while !messages.iter().any(|m| {
        matches!(m, LivenessMessage::Heartbeat { instance }
            if instance.type_ == ServiceType::Worker && instance.state == ServiceState::Running)
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker heartbeats: {messages:?}"
        );
        seen(queue.as_ref(), &[&worker_id], &mut messages).await;
    }

    // It dies holding the job: no final heartbeat, no result.
    running.abort();
    let _ = running.await;
    let died = tokio::time::Instant::now();
    let declared = loop {
        assert!(
            died.elapsed() < TIMEOUT + Duration::from_secs(20),
            "worker {worker_id} never declared dead: {messages:?}"
        );
        seen(queue.as_ref(), &[&worker_id], &mut messages).await;
        let declared = messages.iter().find_map(|m| match m {
            LivenessMessage::Declared { instance, jobs } => Some((instance.clone(), jobs.clone())),
            _ => None,
        });
        if let Some(d) = declared {
            break d;
        }
    };
    assert!(
        died.elapsed() >= TIMEOUT - Duration::from_millis(200),
        "declared dead after {:?}, before the liveness timeout",
        died.elapsed()
    );
    assert_eq!(declared.0.state, ServiceState::Disconnected);
    assert!(
        declared.1.iter().any(|j| j.key == job.key),
        "the verdict names the job the dead worker held: {:?}",
        declared.1
    );

    // The executor beats on and is never declared dead (its id is only known from its heartbeats).
    let mut all = Vec::new();
    let watch = tokio::time::Instant::now();
    while watch.elapsed() < TIMEOUT * 2 {
        let got = queue
            .receive(
                ConsumerGroup::Indexer,
                Topic::Liveness,
                500,
                Duration::from_secs(30),
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        queue
            .ack(
                ConsumerGroup::Indexer,
                &got.iter().map(|d| d.tag).collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        all.extend(
            got.into_iter()
                .map(|d| d.envelope.decode::<LivenessMessage>().unwrap()),
        );
    }
    // This engine's executor: the one that started with this test (each test has its database).
    let executors: Vec<String> = all
        .iter()
        .filter_map(|m| match m {
            LivenessMessage::Heartbeat { instance }
                if instance.type_ == ServiceType::Executor
                    && instance.state == ServiceState::Running
                    && instance.created_date >= started =>
            {
                Some(instance.id.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        !executors.is_empty(),
        "the executor heartbeats through the queue"
    );
    let executor_declared = all.iter().any(|m| {
        matches!(m, LivenessMessage::Declared { instance, .. }
        if executors.contains(&instance.id))
    });
    assert!(!executor_declared, "a living executor was declared dead");

    engine.shutdown().await;
    assert_eq!(down.calls(), 0, "liveness never called the repository");
    backend.close().await;
}

common::on_each_database!(a_dead_worker_is_declared_through_the_queue: dead_worker_is_declared);

/// `kestra.server.service.purge.retention` (Kestra's key): an instance that stopped gracefully and
/// one declared dead are listed in the service instance repository (by the indexer) with their
/// last state, then forgotten once the retention has passed - their rows deleted - while the
/// living executor stays listed.
async fn stopped_instances_are_purged(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let (queue, repositories) = (backend.queue(), backend.repositories());
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let engine = Engine::builder(queue.clone(), repositories.clone(), storage)
        .components(Components {
            executor: true,
            indexer: true,
            ..Components::none()
        })
        .executor_config(ExecutorConfig {
            liveness: LivenessConfig {
                heartbeat_interval: BEAT,
                timeout: TIMEOUT,
                // DISCONNECTED, then NOT_RUNNING half a second later.
                grace_period: Duration::from_millis(500),
                retention: Duration::from_secs(2),
            },
            ..ExecutorConfig::default()
        })
        .start();
    let instance = |id: &str, state: ServiceState| kestra::core::model::ServiceInstance {
        id: id.to_string(),
        type_: ServiceType::Worker,
        state,
        hostname: "test".into(),
        created_date: chrono::Utc::now(),
        updated_date: chrono::Utc::now(),
        props: serde_json::Map::new(),
    };
    let beat = |i: kestra::core::model::ServiceInstance| {
        LivenessMessage::Heartbeat { instance: i }
            .envelope()
            .unwrap()
    };
    let graceful = format!("worker-graceful-{}", new_id());
    let dead = format!("worker-dead-{}", new_id());
    queue
        .publish(vec![
            beat(instance(&graceful, ServiceState::Running)),
            beat(instance(&dead, ServiceState::Running)),
        ])
        .await
        .unwrap();
    queue
        .publish(vec![beat(instance(
            &graceful,
            ServiceState::TerminatedGracefully,
        ))])
        .await
        .unwrap();
    let state_of = |id: String| {
        let services = repositories.services.clone();
        async move { services.find_by_id(&id).await.unwrap().map(|i| i.state) }
    };
    // Listed with their last state first: the graceful one stopped, the silent one declared dead.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (g, d) = (
            state_of(graceful.clone()).await,
            state_of(dead.clone()).await,
        );
        if g == Some(ServiceState::TerminatedGracefully) && d == Some(ServiceState::NotRunning) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed as stopped and dead: {g:?} / {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then purged, once the retention has passed.
    let listed_at = tokio::time::Instant::now();
    loop {
        let (g, d) = (
            state_of(graceful.clone()).await,
            state_of(dead.clone()).await,
        );
        if g.is_none() && d.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < listed_at + Duration::from_secs(30),
            "never purged: {g:?} / {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not before the retention (2 s from the verdict, which was before the listing).
    assert!(
        listed_at.elapsed() >= Duration::from_secs(1),
        "purged {:?} after being listed: before its retention",
        listed_at.elapsed()
    );
    // The executor, alive, is still listed.
    let all = repositories.services.find_all().await.unwrap();
    assert!(
        all.iter()
            .any(|i| i.type_ == ServiceType::Executor && i.state == ServiceState::Running),
        "the living executor stays listed: {all:?}"
    );
    engine.shutdown().await;
    backend.close().await;
}

common::on_each_database!(stopped_instances_are_purged_after_the_retention: stopped_instances_are_purged);
