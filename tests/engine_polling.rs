//! Polling triggers through the real engine (scheduler + worker + executor + indexer): a flow with an
//! `io.kestra.plugin.core.http.Trigger` polls a local HTTP server every second; once the server's
//! answer satisfies `responseCondition`, an execution starts with the response in `trigger`. On
//! SQLite, and on PostgreSQL / MariaDB when their URLs are set (required under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kestra::core::model::StateType;
use kestra::core::repository::{ExecutionQuery, Pageable};
use kestra::core::scheduler::SchedulerConfig;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Engine, EngineBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many requests the status server answered "not ready" before answering "ready".
const NOT_READY: usize = 2;

/// A local HTTP server answering `{"ready": false}` to its first [`NOT_READY`] requests, then
/// `{"ready": true, "request": n}`. Returns its URL and its request counter.
async fn status_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                // A GET without a body: read up to the end of the headers.
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let body = if n <= NOT_READY {
                    r#"{"ready": false}"#.to_string()
                } else {
                    format!(r#"{{"ready": true, "request": {n}}}"#)
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/status"), requests)
}

async fn builder(url: &str, storage_dir: &std::path::Path) -> EngineBuilder {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(storage_dir).unwrap());
    Engine::builder(backend.queue(), backend.repositories(), storage)
}

async fn suite(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("polling.t{}", kestra::core::model::new_id().to_lowercase());
    let (uri, requests) = status_server().await;
    let engine = builder(url, dir.path())
        .await
        .scheduler_config(SchedulerConfig {
            tick: Duration::from_millis(200),
            ..SchedulerConfig::default()
        })
        .start();
    engine
        .deploy(&format!(
            r#"id: poller
namespace: {ns}
tasks:
  - id: body
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ trigger.body }}}}"
triggers:
  - id: status
    type: io.kestra.plugin.core.http.Trigger
    uri: {uri}
    interval: PT1S
    responseCondition: "{{{{ response.statusCode == 200 and fromJson(response.body).ready }}}}"
"#
        ))
        .await
        .unwrap();

    let query = ExecutionQuery {
        namespace: Some(ns.clone()),
        flow_id: Some("poller".into()),
        states: vec![StateType::Success],
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let started = loop {
        let page = engine
            .repositories()
            .executions
            .search(&query, &Pageable::new(1, 10))
            .await
            .unwrap();
        if let Some(e) = page.results.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no execution started by the polling trigger ({} requests served)",
            requests.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        requests.load(Ordering::SeqCst) > NOT_READY,
        "the server was polled until it was ready"
    );
    let trigger = started.trigger.as_ref().expect("trigger variables");
    assert_eq!(trigger.id, "status");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.http.Trigger");
    assert_eq!(trigger.variables["code"], 200);
    assert_eq!(trigger.variables["uri"], uri.as_str());
    let body = trigger.variables["body"].as_str().unwrap().to_string();
    assert!(
        body.starts_with(r#"{"ready": true"#),
        "only a ready answer starts an execution: {body}"
    );
    let run = started
        .task_run_list
        .iter()
        .find(|r| r.task_id == "body")
        .unwrap();
    assert_eq!(
        run.outputs.as_ref().unwrap()["value"],
        body.as_str(),
        "trigger.body is available to the tasks"
    );

    // Every execution the trigger started (it keeps polling) saw a ready answer.
    let all = ExecutionQuery {
        states: Vec::new(),
        ..query
    };
    let page = engine
        .repositories()
        .executions
        .search(&all, &Pageable::new(1, 100))
        .await
        .unwrap();
    for e in &page.results {
        let body = e.trigger.as_ref().unwrap().variables["body"]
            .as_str()
            .unwrap();
        assert!(body.contains(r#""ready": true"#), "{body}");
    }

    // Leave no polling flow behind in a shared database.
    engine
        .repositories()
        .flows
        .delete("main", &ns, "poller")
        .await
        .unwrap();
    engine.shutdown().await;
}

common::on_each_database!(polling: suite);
