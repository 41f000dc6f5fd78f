//! The engine scenario suite: every `tests/scenarios/*.yaml` file (a flow plus the result it must
//! produce, format in `tests/scenarios/README.md`) runs through the real engine - executor, worker,
//! indexer - on SQLite always, and on PostgreSQL and MariaDB when `KESTRA_TEST_POSTGRES_URL` /
//! `KESTRA_TEST_MYSQL_URL` are set (under `CI=true` they must be); with the features `s3`, `gcs`,
//! `azure`, once more on SQLite with the internal storage on MinIO, fake-gcs-server and Azurite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use indexmap::IndexMap;
use kestra::core::inputs::RawInput;
use kestra::core::model::{Execution, TaskRun};
use kestra::jdbc::JdbcBackend;
use kestra::{Engine, storage::LocalStorage};
use serde_json::Value;

struct Scenario {
    name: String,
    flow: String,
    expect: Value,
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn load_scenarios() -> Vec<Scenario> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .expect("tests/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let (flow, expect) = text
                .split_once("\n---\n")
                .unwrap_or_else(|| panic!("{}: expected two YAML documents", path.display()));
            let expect: Value = serde_saphyr::from_str(expect)
                .unwrap_or_else(|e| panic!("{}: expectations: {e}", path.display()));
            Scenario {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                flow: flow.to_string(),
                expect,
            }
        })
        .collect()
}

/// Subset match: maps recursively, lists and scalars equal, numbers numerically.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| equal(x, y))
        }
        _ => equal(expected, actual),
    }
}

fn equal(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => matches(e, a),
        _ => e == a,
    }
}

fn effective_value<'a>(execution: &'a Execution, run: &'a TaskRun) -> Option<&'a str> {
    let mut cur = Some(run);
    while let Some(r) = cur {
        if let Some(v) = &r.value {
            return Some(v);
        }
        cur = r
            .parent_task_run_id
            .as_deref()
            .and_then(|p| execution.task_run(p));
    }
    None
}

fn select<'a>(execution: &'a Execution, selector: &str) -> Vec<&'a TaskRun> {
    let (task_id, value) = match selector.split_once('[') {
        Some((t, rest)) => (t, Some(rest.strip_suffix(']').unwrap_or(rest))),
        None => (selector, None),
    };
    execution
        .task_run_list
        .iter()
        .filter(|r| r.task_id == task_id)
        .filter(|r| value.is_none() || effective_value(execution, r) == value)
        .collect()
}

async fn run_one(engine: &Engine, scenario: &Scenario) -> Result<(), String> {
    let e = &scenario.expect;
    if let Some(Value::Array(flows)) = e.get("flows") {
        for f in flows {
            let path = scenarios_dir().join(f.as_str().unwrap_or_default());
            let source = std::fs::read_to_string(&path)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            engine
                .deploy(&source)
                .await
                .map_err(|err| format!("deploy {}: {err}", path.display()))?;
        }
    }
    if let Some(expected) = e.get("refused").and_then(|v| v.as_str()) {
        // A flow Kestra refuses: deploying it fails, with a message naming the problem.
        return match engine.deploy(&scenario.flow).await {
            Ok(_) => Err(format!(
                "deployed, expected a refusal containing {expected:?}"
            )),
            Err(err) if err.to_string().contains(expected) => Ok(()),
            Err(err) => Err(format!("refused with {err}, expected {expected:?}")),
        };
    }
    let (flow, _) = engine
        .deploy(&scenario.flow)
        .await
        .map_err(|err| format!("deploy: {err}"))?;
    let mut inputs = IndexMap::new();
    if let Some(Value::Object(m)) = e.get("inputs") {
        for (k, v) in m {
            inputs.insert(k.clone(), RawInput::Json(v.clone()));
        }
    }
    let created = engine
        .execute(&flow.namespace, &flow.id, inputs)
        .await
        .map_err(|err| format!("execute: {err}"))?;
    let execution = engine
        .wait_for(&created.id, Duration::from_secs(60))
        .await
        .map_err(|err| format!("wait: {err}"))?;
    let mut problems = Vec::new();
    if let Some(max) = e.get("maxDurationMs").and_then(|v| v.as_u64()) {
        // The execution's own duration (created -> ended), not the harness's wall clock.
        let took = execution
            .state
            .duration(chrono::Utc::now())
            .num_milliseconds();
        if took > max as i64 {
            // When each task run was created, started and ended, in ms from the execution's start.
            let start = execution.state.start_date().unwrap_or_default();
            let ms = |d: Option<chrono::DateTime<chrono::Utc>>| {
                d.map_or(-1, |d| (d - start).num_milliseconds())
            };
            let timeline: Vec<String> = execution
                .task_run_list
                .iter()
                .map(|r| {
                    format!(
                        "{} {}/{}/{}",
                        r.task_id,
                        ms(r.state.start_date()),
                        ms(r.state
                            .last_date_of(kestra::core::model::StateType::Running)),
                        ms(r.state.end_date())
                    )
                })
                .collect();
            problems.push(format!(
                "took {took} ms, expected at most {max} ms (created/running/ended: {})",
                timeline.join(", ")
            ));
        }
    }
    let state = execution.state.current().as_str();
    if let Some(expected) = e.get("state").and_then(|v| v.as_str())
        && expected != state
    {
        problems.push(format!("state {state}, expected {expected}"));
    }
    if let Some(n) = e.get("taskRunCount").and_then(|v| v.as_u64())
        && execution.task_run_list.len() as u64 != n
    {
        let ids: Vec<String> = execution
            .task_run_list
            .iter()
            .map(|r| {
                format!(
                    "{}{}={}",
                    r.task_id,
                    r.value
                        .as_ref()
                        .map(|v| format!("[{v}]"))
                        .unwrap_or_default(),
                    r.state.current()
                )
            })
            .collect();
        problems.push(format!(
            "taskRunCount {}, expected {n}: {}",
            execution.task_run_list.len(),
            ids.join(", ")
        ));
    }
    if let Some(Value::Object(runs)) = e.get("taskRuns") {
        for (selector, spec) in runs {
            if selector == "absent" {
                for s in spec
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                {
                    if !select(&execution, s).is_empty() {
                        problems.push(format!("task run {s} exists, expected absent"));
                    }
                }
                continue;
            }
            let found = select(&execution, selector);
            if found.len() != 1 {
                problems.push(format!(
                    "selector {selector} matches {} task runs",
                    found.len()
                ));
                continue;
            }
            let run = found[0];
            if let Some(s) = spec.get("state").and_then(|v| v.as_str())
                && run.state.current().as_str() != s
            {
                problems.push(format!(
                    "{selector}: state {}, expected {s}",
                    run.state.current()
                ));
            }
            if let Some(n) = spec.get("attempts").and_then(|v| v.as_u64())
                && run.attempts.len() as u64 != n
            {
                problems.push(format!(
                    "{selector}: {} attempts, expected {n}",
                    run.attempts.len()
                ));
            }
            if let Some(Value::Array(expected)) = spec.get("history") {
                let actual: Vec<&str> = run
                    .state
                    .histories()
                    .iter()
                    .map(|h| h.state.as_str())
                    .collect();
                let expected: Vec<&str> = expected.iter().filter_map(|v| v.as_str()).collect();
                if actual != expected {
                    problems.push(format!(
                        "{selector}: history {actual:?}, expected {expected:?}"
                    ));
                }
            }
            if let Some(o) = spec.get("outputs") {
                let actual = run
                    .outputs
                    .clone()
                    .map(Value::Object)
                    .unwrap_or(Value::Null);
                if !matches(o, &actual) {
                    problems.push(format!("{selector}: outputs {actual}, expected {o}"));
                }
            }
        }
    }
    if let Some(o) = e.get("outputs") {
        let actual = Value::Object(execution.outputs.clone());
        if !matches(o, &actual) {
            problems.push(format!("flow outputs {actual}, expected {o}"));
        }
    }
    if let Some(Value::Object(expected)) = e.get("labels") {
        for (key, value) in expected {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !execution
                .labels
                .iter()
                .any(|l| &l.key == key && l.value == value)
            {
                problems.push(format!(
                    "no label {key}={value} (labels: {:?})",
                    execution.labels
                ));
            }
        }
    }
    for key in e
        .get("noLabels")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
    {
        if execution.labels.iter().any(|l| l.key == key) {
            problems.push(format!("label {key} exists, expected none"));
        }
    }
    let wanted: Vec<String> = e
        .get("logs")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let unwanted: Vec<String> = e
        .get("noLogs")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !wanted.is_empty() || !unwanted.is_empty() {
        // Logs reach the repository through the indexer, asynchronously: wait for them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut messages: Vec<String>;
        loop {
            messages = engine
                .repositories()
                .logs
                .find_by_execution("main", &execution.id, None, None)
                .await
                .map_err(|err| err.to_string())?
                .into_iter()
                .map(|l| l.message)
                .collect();
            let missing = wanted
                .iter()
                .any(|w| !messages.iter().any(|m| m.contains(w.as_str())));
            if !missing || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for w in &wanted {
            if !messages.iter().any(|m| m.contains(w.as_str())) {
                problems.push(format!("no log line contains {w:?} (logs: {messages:?})"));
            }
        }
        for u in &unwanted {
            if messages.iter().any(|m| m.contains(u.as_str())) {
                problems.push(format!("a log line contains {u:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n    "))
    }
}

/// The scenario suite on the database of `url` (named by the URL's scheme in the messages).
async fn suite(url: &str) {
    run_suite(url, url.split(':').next().unwrap_or("database")).await;
}

async fn run_suite(url: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
    run_suite_on(url, label, storage).await;
}

/// One suite at a time: each already runs 16 scenarios at once, and the timing scenarios must not
/// starve on a 2-core machine because six suites (databases and object stores) share it.
static ONE_SUITE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_suite_on(
    url: &str,
    label: &str,
    storage: Arc<dyn kestra::core::storage::InternalStorage>,
) {
    let _turn = ONE_SUITE_AT_A_TIME.lock().await;
    let backend = JdbcBackend::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    run_engine_suite(backend.queue(), backend.repositories(), storage, label).await;
}

/// The whole suite on an engine over `queue` and `repositories` (the caller holds the turn).
async fn run_engine_suite(
    queue: Arc<dyn kestra::core::queue::Queue>,
    repositories: kestra::core::repository::Repositories,
    storage: Arc<dyn kestra::core::storage::InternalStorage>,
    label: &str,
) {
    // Slots for every task that the 16 scenarios running at once may run together (the timing
    // scenarios must never wait for a free slot).
    let worker = kestra::core::worker::WorkerConfig {
        concurrency: 64,
        ..Default::default()
    };
    let engine = Arc::new(
        Engine::builder(queue, repositories, storage)
            .worker_config(worker)
            .start(),
    );
    let scenarios = load_scenarios();
    assert!(
        scenarios.len() >= 80,
        "expected at least 80 scenarios, found {}",
        scenarios.len()
    );
    let started = std::time::Instant::now();
    let results: Vec<(String, Result<(), String>)> = futures::stream::iter(scenarios)
        .map(|s| {
            let engine = engine.clone();
            async move {
                let r = run_one(&engine, &s).await;
                (s.name, r)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}:\n    {e}")))
        .collect();
    eprintln!(
        "{label}: {} scenarios, {} passed, {} failed in {:.1}s",
        results.len(),
        results.len() - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "{label}: {} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

common::on_each_database!(scenarios: suite);

/// The whole suite on the Kafka queue with the Elasticsearch repositories (configured as
/// `kestra.queue.type: kafka`, `kestra.repository.type: elasticsearch`, fresh topic and index
/// prefixes), when `KESTRA_TEST_KAFKA_BROKERS` and `KESTRA_TEST_ELASTICSEARCH_URL` are set
/// (required under CI=true).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_kafka_elasticsearch() {
    let Some(brokers) = common::service_url("KESTRA_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(es) = common::service_url("KESTRA_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let _turn = ONE_SUITE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "kestra_scenarios_{}_",
        kestra::core::model::new_id().to_ascii_lowercase()
    );
    let config = kestra::config::Config::from_pairs([
        ("kestra.queue.type", "kafka".to_string()),
        ("kestra.repository.type", "elasticsearch".to_string()),
        ("kestra.kafka.brokers", brokers),
        ("kestra.kafka.topic-prefix", prefix.clone()),
        ("kestra.kafka.partitions", "4".to_string()),
        ("kestra.elasticsearch.url", es),
        ("kestra.elasticsearch.index-prefix", prefix),
        ("kestra.data-dir", dir.path().display().to_string()),
    ]);
    let backend = kestra::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("kafka + elasticsearch: {e}"));
    run_engine_suite(
        backend.queue,
        backend.repositories,
        backend.storage,
        "kafka + elasticsearch",
    )
    .await;
    kestra::kafka::KafkaQueue::delete_topics(&config.kafka_options().unwrap())
        .await
        .unwrap();
    kestra::kafka::elastic::ElasticRepositories::connect(config.elastic_options().unwrap())
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
}

/// The whole suite once on `storage.type: <kind>` (configured with Kestra's keys plus a fresh prefix),
/// when the service variable is set: catches any code that assumes a local path.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
async fn run_suite_on_object_storage(kind: &str, service_var: &str, keys: &[(&str, &str)]) {
    let Some(endpoint) = common::service_url(service_var) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let mut pairs = vec![
        ("kestra.storage.type".to_string(), kind.to_string()),
        (format!("kestra.storage.{kind}.endpoint"), endpoint),
        (
            format!("kestra.storage.{kind}.prefix"),
            format!(
                "scenarios-{}",
                kestra::core::model::new_id().to_ascii_lowercase()
            ),
        ),
    ];
    for (key, value) in keys {
        // A value starting with `$` names an environment variable.
        let value = match value.strip_prefix('$') {
            Some(name) => var(name),
            None => value.to_string(),
        };
        pairs.push((format!("kestra.storage.{kind}.{key}"), value));
    }
    let config = kestra::config::Config::from_pairs(pairs);
    let storage = kestra::open_storage(&config)
        .await
        .unwrap_or_else(|e| panic!("{kind} storage: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(&dir);
    run_suite_on(&url, &format!("sqlite + {kind} storage"), storage).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_sqlite_on_s3_storage() {
    run_suite_on_object_storage(
        "s3",
        "KESTRA_TEST_S3_ENDPOINT",
        &[
            ("bucket", "$KESTRA_TEST_S3_BUCKET"),
            ("region", "$KESTRA_TEST_S3_REGION"),
            ("accessKey", "$KESTRA_TEST_S3_ACCESS_KEY"),
            ("secretKey", "$KESTRA_TEST_S3_SECRET_KEY"),
        ],
    )
    .await;
}

#[cfg(feature = "gcs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_sqlite_on_gcs_storage() {
    run_suite_on_object_storage(
        "gcs",
        "KESTRA_TEST_GCS_ENDPOINT",
        &[("bucket", "$KESTRA_TEST_GCS_BUCKET"), ("anonymous", "true")],
    )
    .await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_sqlite_on_azure_storage() {
    run_suite_on_object_storage(
        "azure",
        "KESTRA_TEST_AZURE_ENDPOINT",
        &[
            ("container", "$KESTRA_TEST_AZURE_CONTAINER"),
            ("shared-key-account-name", "$KESTRA_TEST_AZURE_ACCOUNT"),
            (
                "shared-key-account-access-key",
                "$KESTRA_TEST_AZURE_ACCESS_KEY",
            ),
        ],
    )
    .await;
}
