//! Kestra's own Python clients, unchanged, against our engine and webserver:
//!
//! - the `kestra` library (PyPI) inside a script task: `Kestra.outputs`, `Kestra.counter`,
//!   `Kestra.timer` and `Kestra.logger()` print the `::{...}::` protocol, and the worker records the
//!   outputs (`vars`), the metrics and the log lines as Kestra's worker does;
//! - the published API client `kestrapy` (PyPI): `tests/clients/kestrapy_roundtrip.py` creates a
//!   flow, triggers an execution with an input and a file, follows it, reads its logs and downloads
//!   its output file, over a real socket with basic authentication - only the base URL and the
//!   credentials are ours.
//!
//! Needs `KESTRA_TEST_PYTHON`, a Python with both packages (`scripts/services/python.sh` makes the
//! venv and prints it): skipped with a loud message without it, a failure under CI=true. On SQLite,
//! and on PostgreSQL / MariaDB when their URLs are set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use kestra::Engine;
use kestra::core::model::{Level, MetricType, StateType};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn engine(url: &str, dir: &Path) -> Arc<Engine> {
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.join("storage")).unwrap());
    Arc::new(Engine::builder(backend.queue(), backend.repositories(), storage).start())
}

fn python() -> Option<String> {
    common::service_url("KESTRA_TEST_PYTHON")
}

/// The `kestra` library in a python.Script task whose `beforeCommands` activate the venv (as a
/// Kestra user does with a venv) and in a python.Commands task calling the venv's python.
async fn kestra_library_in_script_tasks(url: &str) {
    let Some(python) = python() else { return };
    let venv_bin = Path::new(&python).parent().unwrap().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(url, dir.path()).await;
    let ns = format!("clients.t{}", kestra::core::model::new_id().to_lowercase());
    let script = r#"
from kestra import Kestra
Kestra.outputs({"rows": 3, "name": "kestra", "nested": {"list": [1, 2]}})
Kestra.counter("processed", 3, {"source": "script"})
Kestra.timer("duration", 1.25)
Kestra.timer("measured", lambda: sum(range(1000)))
Kestra.logger().warning("from the library")
"#;
    let indented: String = script
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>();
    engine
        .deploy(&format!(
            "id: lib\nnamespace: {ns}\ntasks:\n  - id: script\n    type: io.kestra.plugin.scripts.python.Script\n    beforeCommands:\n      - . {venv_bin}/activate\n    script: |\n{indented}  - id: commands\n    type: io.kestra.plugin.scripts.python.Commands\n    inputFiles:\n      main.py: |\n{more}    commands:\n      - {python} main.py\n  - id: use\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.script.vars.rows }}}} {{{{ outputs.script.vars.nested.list[1] }}}} {{{{ outputs.commands.vars.total }}}}\"\n",
            more = "        from kestra import Kestra\n        Kestra.outputs({\"total\": 42})\n        Kestra.counter(\"lines\", 7)\n"
        ))
        .await
        .unwrap();
    let e = engine.execute(&ns, "lib", IndexMap::new()).await.unwrap();
    let done = engine.wait_for(&e.id, WAIT).await.unwrap();
    assert_eq!(done.state.current(), StateType::Success, "{done:?}");
    let outputs = |task: &str| {
        let run = done
            .task_run_list
            .iter()
            .find(|r| r.task_id == task)
            .unwrap();
        serde_json::to_value(run.outputs.clone().unwrap_or_default()).unwrap()
    };
    assert_eq!(
        outputs("script")["vars"],
        json!({"rows": 3, "name": "kestra", "nested": {"list": [1, 2]}})
    );
    assert_eq!(outputs("script")["exitCode"], json!(0));
    assert_eq!(outputs("commands")["vars"], json!({"total": 42}));
    assert_eq!(outputs("use")["value"], json!("3 2 42"));

    // Metrics and log lines reach the repository through the queue and the indexer.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = engine
            .repositories()
            .metrics
            .find_by_execution("main", &e.id)
            .await
            .unwrap();
        if metrics.len() >= 4 || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name}: {metrics:?}"))
    };
    let processed = metric("processed");
    assert_eq!(processed.type_, MetricType::Counter);
    assert_eq!(processed.value, 3.0);
    assert_eq!(
        processed.tags.get("source").map(String::as_str),
        Some("script")
    );
    assert_eq!(processed.task_id.as_deref(), Some("script"));
    let duration = metric("duration");
    assert_eq!(duration.type_, MetricType::Timer);
    assert_eq!(
        duration.value, 1.25,
        "timers are in seconds, as the library sends them"
    );
    let measured = metric("measured");
    assert_eq!(measured.type_, MetricType::Timer);
    assert!(
        measured.value >= 0.0 && measured.value < 60.0,
        "{measured:?}"
    );
    let lines = metric("lines");
    assert_eq!((lines.type_, lines.value), (MetricType::Counter, 7.0));
    assert_eq!(lines.task_id.as_deref(), Some("commands"));

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution("main", &e.id, None, None)
            .await
            .unwrap();
        if logs
            .iter()
            .any(|l| l.level == Level::Warn && l.message.contains("from the library"))
        {
            // The protocol lines themselves are not logged.
            assert!(
                !logs.iter().any(|l| l.message.contains("::{")),
                "a protocol line was logged: {logs:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the library's WARN line never arrived: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Arc::try_unwrap(engine).ok().unwrap().shutdown().await;
}

/// `kestrapy` against the webserver over a real socket.
#[cfg(feature = "webserver")]
async fn kestrapy_against_the_webserver(url: &str) {
    use kestra::webserver::{Auth, BasicAuth, Webserver};
    use tokio_util::sync::CancellationToken;

    const USER: &str = "admin@kestra.io";
    const PASSWORD: &str = "k3stra-clients";
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(url, dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = Webserver::builder(engine.clone())
        .auth(Auth::Basic(BasicAuth::new(USER, PASSWORD).unwrap()))
        .build();
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
    let ns = format!("clients.k{}", kestra::core::model::new_id().to_lowercase());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kestrapy_roundtrip.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{address}"))
        .arg(USER)
        .arg(PASSWORD)
        .arg(&ns)
        .env("PYTHONWARNINGS", "ignore")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the kestrapy script did not finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kestrapy round trip failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "ok: created flow",
        "ok: created execution",
        "ok: followed to SUCCESS",
        "ok: output file kestra:///",
        "log lines",
        "ok: downloaded the output file",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    Arc::try_unwrap(engine).ok().unwrap().shutdown().await;
}

common::on_each_database!(kestra_library: kestra_library_in_script_tasks);
#[cfg(feature = "webserver")]
common::on_each_database!(kestrapy: kestrapy_against_the_webserver);
