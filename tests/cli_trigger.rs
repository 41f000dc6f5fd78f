//! `kestra trigger unlock` as a real process on a SQLite data directory, with no engine running: a
//! trigger locked by an execution that will never end (and by a lost worker's evaluation) is
//! released, the rest of its state kept; a second unlock says it is not locked; an unknown trigger
//! is a clear error naming it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use kestra::core::model::TriggerState;
use kestra::jdbc::JdbcBackend;

fn unlock(data: &Path, trigger: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["trigger", "unlock"])
        .args(trigger)
        .env("KESTRA_DATA_DIR", data)
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_REPOSITORY_TYPE")
        .env_remove("KESTRA_QUEUE_TYPE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn unlock_releases_a_stuck_trigger_without_an_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let url = format!("sqlite://{}/kestra.db?mode=rwc", data.display());
    let backend = JdbcBackend::connect(&url).await.unwrap();
    let now = chrono::Utc::now();
    let mut state = TriggerState::new("main", "company.team", "nightly", "every-minute", 3, now);
    state.date = Some(now);
    state.next_execution_date = Some(now + chrono::Duration::minutes(1));
    state.execution_id = Some("lost-execution".into());
    state.evaluate_running_date = Some(now);
    state.worker_id = Some("worker-gone".into());
    let mut unit = backend.queue().begin_triggers().await.unwrap();
    assert!(unit.create(&state).await.unwrap());
    unit.commit().await.unwrap();

    let out = unlock(&data, &["company.team", "nightly", "every-minute"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("unlocked")
            && stdout.contains("execution lost-execution")
            && stdout.contains("worker-gone"),
        "says what it released: {stdout}"
    );
    let stored = backend
        .repositories()
        .triggers
        .find(&state.uid())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.execution_id, None);
    assert_eq!(stored.evaluate_running_date, None);
    assert_eq!(stored.worker_id, None);
    assert_eq!(
        stored.next_execution_date, state.next_execution_date,
        "the schedule is kept"
    );
    assert_eq!(stored.date, state.date);
    assert_eq!(stored.flow_revision, Some(3));

    let again = unlock(&data, &["company.team", "nightly", "every-minute"]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("is not locked"),
        "{again:?}"
    );

    let unknown = unlock(&data, &["company.team", "nightly", "evry-minute"]);
    assert!(!unknown.status.success(), "{unknown:?}");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no trigger 'evry-minute' of flow company.team.nightly"),
        "names the unknown trigger: {stderr}"
    );
    backend.close().await;
}
