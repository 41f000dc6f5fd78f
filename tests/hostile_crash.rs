//! A message whose processing kills the whole process (issue 16, item 1): the testkit fault point
//! `kestra-testkit-fault: executor-abort` calls `std::process::abort()` inside the executor's
//! processing of an execution, as a stack overflow or an OOM kill would - nothing can catch it. A
//! real `kestra server standalone` child process dies, and this test restarts it after each
//! crash, as a supervisor would. With `kestra.queue.max-delivery-attempts: 2`, the message crashes
//! the server exactly twice; the third delivery sets it aside as a dead letter and fails its
//! execution with "crashed the executor 2 times" in its logs. An execution started next to it
//! succeeds, and the server is still up afterwards and runs a new one. On SQLite, PostgreSQL and
//! MariaDB. Before, the claim's delivery count was rolled back with the crashed transaction: the
//! server crashed at every restart, forever.
//!
//! The same for the worker (`kestra-testkit-fault: worker-abort`, aborting when the worker is about
//! to run the task; job lease 3 s): the job kills the server twice, then its task run is FAILED with
//! "its worker died ... 2 times" and the job dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use kestra::core::model::{Execution, Level, StateType};
use kestra::core::testkit::faults::{EXECUTOR_ABORT, FAULT_LABEL, WORKER_ABORT};
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;
use kestra::{Components, Engine};

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `kestra server standalone` on the database of `url`, appending its log to `log`.
fn start_server(url: &str, dir: &Path, log: &Path) -> Server {
    let kind = url.split(':').next().unwrap();
    let kind = if kind == "mariadb" { "mysql" } else { kind };
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone"])
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_QUEUE_TYPE")
        .env("KESTRA_REPOSITORY_TYPE", kind)
        .env(format!("DATASOURCES_{}_URL", kind.to_uppercase()), url)
        .env("KESTRA_DATA_DIR", dir.join("data"))
        .env("KESTRA_STORAGE_LOCAL_BASE_PATH", dir.join("storage"))
        .env("KESTRA_SERVER_PORT", "0")
        .env("KESTRA_QUEUE_MAX_DELIVERY_ATTEMPTS", "2")
        .env("KESTRA_WORKER_LEASE", "PT3S")
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

async fn a_message_that_aborts_the_server_is_dead_lettered(url: &str) {
    crash_loop(url, EXECUTOR_ABORT, "crashed the executor 2 times").await;
}

async fn a_job_that_aborts_the_server_fails_its_task_run(url: &str) {
    crash_loop(
        url,
        WORKER_ABORT,
        "its worker died (or abandoned it) each time",
    )
    .await;
}

/// A flow whose executions carry the fault label `fault` kills the server twice, then its
/// execution is FAILED with `reason` (and `delivered 2 times` / `2 times`) in its ERROR logs.
async fn crash_loop(url: &str, fault: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ns = format!("hostile.c{}", kestra::core::model::new_id().to_lowercase());
    let backend = JdbcBackend::connect(url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
    // A client only: the components run in the server process.
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage)
        .components(Components::none())
        .start();
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
    let fine = engine.execute(&ns, "fine", IndexMap::new()).await.unwrap();
    let poison = engine
        .execute(&ns, "poison", IndexMap::new())
        .await
        .unwrap();

    let mut server = start_server(url, dir.path(), &log);
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
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
            assert!(
                crashes <= 2,
                "the server crashed a third time: the message was delivered again past \
                 kestra.queue.max-delivery-attempts (2)\n{}",
                server_log()
            );
            server = start_server(url, dir.path(), &log);
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.state.current(), StateType::Failed, "{failed:?}");
    assert_eq!(
        crashes, 2,
        "the message crashed the server exactly max-delivery-attempts times"
    );

    // The execution started next to it ran to its end; the server is up and runs a new one.
    let fine = engine
        .wait_for(&fine.id, Duration::from_secs(60))
        .await
        .unwrap();
    if fine.state.current() != StateType::Success {
        let logs = engine
            .repositories()
            .logs
            .find_by_execution(&fine.tenant_id, &fine.id, None, None)
            .await
            .unwrap();
        panic!(
            "the execution next to the poison one ended {:?}: {fine:?}\nlogs: {logs:?}\n{}",
            fine.state.current(),
            server_log()
        );
    }
    let again = engine.execute(&ns, "fine", IndexMap::new()).await.unwrap();
    let again = engine
        .wait_for(&again.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.state.current(), StateType::Success, "{again:?}");
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still running\n{}",
        server_log()
    );

    // The reason is in the failed execution's logs (written by the server's indexer).
    let mut logs = Vec::new();
    for _ in 0..100 {
        logs = engine
            .repositories()
            .logs
            .find_by_execution(&failed.tenant_id, &failed.id, Some(Level::Error), None)
            .await
            .unwrap();
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logs.iter().any(|l| l.message.contains(reason)
            && l.message.contains("2 times")
            && l.message.contains("kestra.queue.max-delivery-attempts")),
        "the reason is in the execution's logs: {logs:?}"
    );
    // The message itself is set aside, not acknowledged.
    let stats = backend.queue_stats().await.unwrap();
    assert_eq!(
        stats.dead_letters,
        1,
        "one dead letter: the poison message\n{}",
        server_log()
    );
    drop(server);
    engine.shutdown().await;
}

common::on_each_database!(abort_in_executor: a_message_that_aborts_the_server_is_dead_lettered);
common::on_each_database!(abort_in_worker: a_job_that_aborts_the_server_fails_its_task_run);
