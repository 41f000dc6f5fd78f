//! The indexer over a queue that delivers at least once (issue 9 item 7): a log line or a metric
//! point that reaches the indexer twice (a producer's retried publish, or a batch redelivered after
//! an indexer died between writing and acknowledging it) is stored once, because entries carry the
//! stable id they were given when emitted; two lines with equal content but their own ids are both
//! kept. On SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use kestra::core::indexer::{IndexerConfig, IndexerService};
use kestra::core::model::{Level, LogEntry, MetricEntry, MetricType, new_id};
use kestra::core::queue::{Envelope, Topic};
use kestra::jdbc::JdbcBackend;
use tokio_util::sync::CancellationToken;

fn line(execution_id: &str, message: &str) -> LogEntry {
    LogEntry {
        id: new_id(),
        tenant_id: "main".into(),
        namespace: "company.indexer".into(),
        flow_id: "redelivered".into(),
        task_id: Some("t".into()),
        execution_id: Some(execution_id.into()),
        task_run_id: Some("tr".into()),
        attempt_number: Some(0),
        trigger_id: None,
        timestamp: chrono::Utc::now(),
        level: Level::Info,
        thread: None,
        message: message.into(),
    }
}

async fn redelivered_entries_are_stored_once(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let (queue, repos) = (backend.queue(), backend.repositories());
    let execution_id = new_id();
    let a = line(&execution_id, "same text");
    let b = line(&execution_id, "same text");
    let point = MetricEntry {
        id: new_id(),
        tenant_id: "main".into(),
        namespace: "company.indexer".into(),
        flow_id: "redelivered".into(),
        task_id: Some("t".into()),
        execution_id: execution_id.clone(),
        task_run_id: Some("tr".into()),
        name: "rows".into(),
        type_: MetricType::Counter,
        value: 3.0,
        tags: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    let log = |e: &LogEntry| Envelope::json(Topic::Log, &execution_id, e).unwrap();
    let metric = Envelope::json(Topic::Metric, &execution_id, &point).unwrap();
    // `a` and the metric twice in one publish, `a` once more in another: three deliveries of one line.
    queue
        .publish(vec![log(&a), log(&a), metric.clone(), metric.clone()])
        .await
        .unwrap();
    queue.publish(vec![log(&a), log(&b), metric]).await.unwrap();

    let shutdown = CancellationToken::new();
    let indexer = IndexerService::new(
        queue.clone(),
        &repos,
        IndexerConfig {
            poll_wait: Duration::from_millis(50),
            ..IndexerConfig::default()
        },
    );
    let running = tokio::spawn(indexer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while repos
        .logs
        .find_by_execution("main", &execution_id, None, None)
        .await
        .unwrap()
        .len()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the indexer stored the log lines"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // On shutdown the indexer drains what is left on its topics.
    shutdown.cancel();
    running.await.unwrap();

    let logs = repos
        .logs
        .find_by_execution("main", &execution_id, None, None)
        .await
        .unwrap();
    let mut ids: Vec<String> = logs.iter().map(|l| l.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(
        ids, expected,
        "a line delivered three times is stored once; an equal line with its own id is kept"
    );
    let metrics = repos
        .metrics
        .find_by_execution("main", &execution_id)
        .await
        .unwrap();
    assert_eq!(
        metrics,
        vec![point],
        "a metric delivered three times is stored once"
    );
    backend.close().await;
}

common::on_each_database!(
    redelivered_logs_and_metrics_are_stored_once:
    redelivered_entries_are_stored_once
);
