//! A message whose processing kills the whole process, on Kafka + Elasticsearch (issue 16): the
//! same scenario as tests/hostile_crash.rs. The testkit fault point `kestra-testkit-fault:
//! executor-abort` calls `std::process::abort()` inside the executor's processing of an execution;
//! a real `kestra server standalone` child process on Kafka dies, and this test restarts it after
//! each crash, as a supervisor would. With `kestra.queue.max-delivery-attempts: 2` the server is
//! restarted at most 3 times: the batch that crashed first (not counted: a Kafka consumer cannot
//! tell that it was handed out), then the poison message alone, twice, counted through the
//! `delivery_attempts` topic. Then the message is a dead letter, its execution FAILED with
//! "crashed the executor" in its logs, and an execution started after it succeeds. Before,
//! every delivery on Kafka was a first one: the server crashed at every restart, forever.
//!
//! The same for the worker (`kestra-testkit-fault: worker-abort`, aborting when the worker is about
//! to run the task): its competing receive of jobs counts deliveries through the same topic, so the
//! job kills the server at most 3 times (the batch, then alone twice), then its task run is FAILED
//! with "its worker died (or abandoned it) each time" and the job dead-lettered. Before, the
//! worker's deliveries on Kafka were all first ones: a crash loop.
//!
//! Needs `KESTRA_TEST_KAFKA_BROKERS` and `KESTRA_TEST_ELASTICSEARCH_URL` (required under CI=true).
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use kestra::core::model::{Execution, Level, StateType, new_id};
use kestra::core::testkit::faults::{EXECUTOR_ABORT, FAULT_LABEL, WORKER_ABORT};
use kestra::kafka::KafkaQueue;
use kestra::kafka::elastic::ElasticRepositories;
use kestra::{Components, Engine};

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The settings the server and the test's client share.
struct Setup<'a> {
    brokers: &'a str,
    es: &'a str,
    prefix: &'a str,
    dir: &'a Path,
}

/// Start `kestra server standalone` on Kafka + Elasticsearch, appending its log to `log`.
fn start_server(s: &Setup<'_>, log: &Path) -> Server {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone"])
        .env_remove("KESTRA_CONFIG")
        .env("KESTRA_QUEUE_TYPE", "kafka")
        .env("KESTRA_REPOSITORY_TYPE", "elasticsearch")
        .env("KESTRA_KAFKA_BROKERS", s.brokers)
        .env("KESTRA_KAFKA_TOPIC_PREFIX", s.prefix)
        .env("KESTRA_KAFKA_PARTITIONS", "2")
        .env("KESTRA_ELASTICSEARCH_URL", s.es)
        .env("KESTRA_ELASTICSEARCH_INDEX_PREFIX", s.prefix)
        .env("KESTRA_DATA_DIR", s.dir.join("data"))
        .env("KESTRA_STORAGE_LOCAL_BASE_PATH", s.dir.join("storage"))
        .env("KESTRA_SERVER_PORT", "0")
        .env("KESTRA_QUEUE_MAX_DELIVERY_ATTEMPTS", "2")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Server(child)
}

async fn state_of(engine: &Engine, id: &str) -> Option<Execution> {
    engine
        .repositories()
        .executions
        .find_by_id("main", id)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_aborts_the_server_is_dead_lettered_on_kafka() {
    crash_loop(EXECUTOR_ABORT, "crashed the executor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_aborts_the_server_fails_its_task_run_on_kafka() {
    crash_loop(WORKER_ABORT, "its worker died (or abandoned it) each time").await;
}

/// A flow whose execution carries the fault label `fault` kills the server 2 or 3 times, then its
/// execution is FAILED with `reason` (and the key) in its ERROR logs, its message dead-lettered;
/// an execution started next succeeds on the server still up.
async fn crash_loop(fault: &str, reason: &str) {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(es) = common::service_url("KESTRA_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let started = Instant::now();
    let run = new_id().to_lowercase();
    let prefix = format!("kestra_crash_{run}_");
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        brokers: &brokers,
        es: &es,
        prefix: &prefix,
        dir: dir.path(),
    };
    let log = dir.path().join("server.log");
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let config = kestra::config::Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers.clone()),
        ("kestra.kafka.topic-prefix", prefix.clone()),
        ("kestra.kafka.partitions", "2".to_string()),
        ("kestra.elasticsearch.url", es.clone()),
        ("kestra.elasticsearch.index-prefix", prefix.clone()),
        (
            "kestra.data-dir",
            dir.path().join("client").display().to_string(),
        ),
        (
            "kestra.storage.local.base-path",
            dir.path().join("storage").display().to_string(),
        ),
    ]);
    // A client only: the components run in the server process.
    let backend = kestra::connect(&config).await.unwrap();
    let engine = Engine::builder(backend.queue, backend.repositories, backend.storage)
        .components(Components::none())
        .start();
    let ns = "hostile.kafka";
    engine
        .deploy(&format!(
            "id: poison\nnamespace: {ns}\nlabels:\n  {FAULT_LABEL}: {fault}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: never\n"
        ))
        .await
        .unwrap();
    engine
        .deploy(&format!(
            "id: fine\nnamespace: {ns}\ntasks:\n  - id: ret\n    type: io.kestra.plugin.core.debug.Return\n    format: ok\n"
        ))
        .await
        .unwrap();
    let poison = engine.execute(ns, "poison", IndexMap::new()).await.unwrap();

    let mut server = start_server(&setup, &log);
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    let failed = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert_eq!(
                status.signal(),
                Some(6),
                "the server died of the fault point's abort (SIGABRT), not of something else: \
                 {status:?}\n{}",
                server_log()
            );
            crashes += 1;
            eprintln!("server crash {crashes} after {:?}", started.elapsed());
            assert!(
                crashes <= 3,
                "the server crashed a fourth time ({fault}): the poison message was delivered \
                 again past kestra.queue.max-delivery-attempts (2) + the batch it first crashed \
                 in\n{}",
                server_log()
            );
            server = start_server(&setup, &log);
        }
        if let Some(e) = state_of(&engine, &poison.id).await
            && e.state.is_terminated()
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the poison execution did not end ({crashes} crashes)\n{}",
            server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.state.current(), StateType::Failed, "{failed:?}");
    if fault == WORKER_ABORT {
        let runs = &failed.task_run_list;
        assert!(
            runs.len() == 1 && runs[0].state.current() == StateType::Failed,
            "its one task run is FAILED: {runs:?}"
        );
    }
    assert!(
        (2..=3).contains(&crashes),
        "the message crashed the server max-delivery-attempts times (plus the batch it first \
         crashed in): {crashes}"
    );

    // An execution started after it succeeds; the server is still up.
    let again = engine.execute(ns, "fine", IndexMap::new()).await.unwrap();
    let again = engine
        .wait_for(&again.id, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(
        again.state.current(),
        StateType::Success,
        "{again:?}\n{}",
        server_log()
    );
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still running\n{}",
        server_log()
    );

    // The reason is in the failed execution's logs (indexed into Elasticsearch by the server).
    let mut logs = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        logs = engine
            .repositories()
            .logs
            .find_by_execution(&failed.tenant_id, &failed.id, Some(Level::Error), None)
            .await
            .unwrap();
        if logs.iter().any(|l| l.message.contains(reason)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        logs.iter().any(|l| l.message.contains(reason)
            && l.message.contains("2 times")
            && l.message.contains("kestra.queue.max-delivery-attempts")),
        "the reason is in the execution's logs: {logs:?}"
    );
    // The message itself is set aside.
    let options = config.kafka_options().unwrap();
    let dead = kestra::kafka::admin::count_dead_letters(&options)
        .await
        .unwrap();
    assert!(dead >= 1, "the poison message is a dead letter ({dead})");
    eprintln!(
        "poison execution on Kafka ({fault}): {crashes} crashes, FAILED and dead-lettered; whole \
         test in {:?}",
        started.elapsed()
    );
    drop(server);
    engine.shutdown().await;
    KafkaQueue::delete_topics(&options).await.unwrap();
    ElasticRepositories::connect(config.elastic_options().unwrap())
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
}
