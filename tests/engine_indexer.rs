//! The indexer over a queue that delivers at least once (issue 9 item 7): a log line or a metric
//! point that reaches the indexer twice (a producer's retried publish, or a batch redelivered after
//! an indexer died between writing and acknowledging it) is stored once, because entries carry the
//! stable id they were given when emitted; two lines with equal content but their own ids are both
//! kept. And its lag: it grows while the repository refuses the writes, and falls to zero once caught
//! up. On SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures::StreamExt;

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

/// The indexer's lag (issue 10 item 3): while the repository refuses every write, the age of the
/// log line it holds grows, in its own figures and in the heartbeat it publishes; an indexer over
/// a repository that answers stores the line, and its lag falls back to zero once caught up.
async fn the_lag_grows_while_the_repository_is_down_and_falls_once_caught_up(url: &str) {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let (queue, repos) = (backend.queue(), backend.repositories());
    let execution_id = new_id();
    let published = chrono::Utc::now();
    let entry = line(&execution_id, "waits for the repository");
    queue
        .publish(vec![
            Envelope::json(Topic::Log, &execution_id, &entry).unwrap(),
        ])
        .await
        .unwrap();
    let config = IndexerConfig {
        poll_wait: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(200),
        // The stopped indexer's batch comes back to the next one when its lease ends.
        lease: Duration::from_secs(2),
        ..IndexerConfig::default()
    };

    // Down: every repository call fails; the indexer keeps the batch and retries it.
    let (down, refused) = kestra::core::testkit::unavailable::unavailable_repositories();
    let stuck = IndexerService::new(queue.clone(), &down, config.clone());
    let lag = stuck.lag();
    let mut heartbeats = queue.subscribe(Topic::Liveness).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stuck.run(shutdown.clone()));
    let log_lag = |lag: &kestra::core::indexer::IndexerLag| {
        lag.seconds().get(&Topic::Log).copied().unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log_lag(&lag) < 1.5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag never grew past 1.5 s while the repository was down: {:?}",
            lag.seconds()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused.calls() > 0, "the indexer tried the repository");
    let first = log_lag(&lag);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = log_lag(&lag);
    assert!(later >= first + 0.4, "the lag grows: {first} then {later}");
    let bound = (chrono::Utc::now() - published).num_milliseconds() as f64 / 1000.0 + 0.5;
    assert!(
        later <= bound,
        "the lag {later} s is the line's age (at most {bound} s)"
    );
    // Its heartbeat carries it (what `kestra sys services --json` and other webservers read).
    let instance = lag
        .instance()
        .expect("the running indexer names its instance")
        .to_string();
    let reported = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), heartbeats.next())
            .await
            .expect("a heartbeat within 10 s")
            .expect("the liveness broadcast goes on")
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        if value.to_string().contains(&instance)
            && let Some(s) = value
                .pointer("/instance/props/lagSeconds/log")
                .and_then(serde_json::Value::as_f64)
            && s >= 1.5
        {
            break s;
        }
    };
    assert!(reported >= 1.5, "{reported}");
    shutdown.cancel();
    running.await.unwrap();

    // Up: another indexer stores the line and reports no lag once the topic is empty.
    let indexer = IndexerService::new(queue.clone(), &repos, config);
    let lag = indexer.lag();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(indexer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = !repos
            .logs
            .find_by_execution("main", &execution_id, None, None)
            .await
            .unwrap()
            .is_empty();
        if stored && lag.seconds().get(&Topic::Log) == Some(&0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored: {stored}, lag: {:?}",
            lag.seconds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    backend.close().await;
}

common::on_each_database!(
    indexer_lag_grows_while_the_repository_is_down:
    the_lag_grows_while_the_repository_is_down_and_falls_once_caught_up
);
