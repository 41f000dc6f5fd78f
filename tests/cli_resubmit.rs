//! `kestra sys resubmit EXECUTION` as a real process on a SQLite data directory, with no engine
//! running: it publishes one `Resubmit` command per task attempt that waits for or runs on a
//! worker (and none for ended ones), names them, and refuses an ended or unknown execution with a
//! clear error.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kestra::core::messages::{ExecutionCommand, ExecutorEvent};
use kestra::core::model::{Execution, State, StateType, TaskRun, TaskRunAttempt};
use kestra::core::queue::{ConsumerGroup, Topic};
use kestra::jdbc::JdbcBackend;

fn resubmit(data: &Path, execution_id: &str, max: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kestra"));
    command
        .args(["sys", "resubmit", execution_id])
        .env("KESTRA_DATA_DIR", data)
        .env_remove("KESTRA_CONFIG")
        .env_remove("KESTRA_REPOSITORY_TYPE")
        .env_remove("KESTRA_QUEUE_TYPE")
        .env_remove("KESTRA_SERVER_WORKER_TASK_MAX_RESUBMISSIONS");
    if let Some(max) = max {
        command.env("KESTRA_SERVER_WORKER_TASK_MAX_RESUBMISSIONS", max);
    }
    command.output().unwrap()
}

fn run(execution: &Execution, task_id: &str, states: &[StateType], worker: &str) -> TaskRun {
    let mut run = TaskRun::new(execution, task_id);
    let mut attempt = State::new();
    for s in states {
        run.state.transition(*s).unwrap();
        attempt.transition(*s).unwrap();
    }
    run.attempts.push(TaskRunAttempt {
        state: attempt,
        log_file: None,
        worker_id: Some(worker.into()),
    });
    run
}

#[tokio::test]
async fn resubmit_publishes_the_running_attempts_without_an_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let url = format!("sqlite://{}/kestra.db?mode=rwc", data.display());
    let backend = JdbcBackend::connect(&url).await.unwrap();
    let mut execution = Execution::new("company.team", "hangs", 1);
    execution.state.transition(StateType::Running).unwrap();
    let done = run(
        &execution,
        "done",
        &[StateType::Running, StateType::Success],
        "w0",
    );
    let stuck = run(&execution, "stuck", &[StateType::Running], "worker-gone");
    execution.task_run_list = vec![done, stuck.clone()];
    backend
        .repositories()
        .executions
        .save(&execution)
        .await
        .unwrap();

    let out = resubmit(&data, &execution.id, Some("5"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("resubmitted 1 task attempt")
            && stdout.contains(&stuck.id)
            && stdout.contains("worker-gone"),
        "names what it resubmitted: {stdout}"
    );
    let deliveries = backend
        .queue()
        .receive(
            ConsumerGroup::Executor,
            Topic::ExecutionCommand,
            10,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let commands: Vec<ExecutionCommand> = deliveries
        .iter()
        .map(|d| match ExecutorEvent::decode(&d.envelope).unwrap() {
            ExecutorEvent::Command(c) => c,
            other => panic!("not a command: {other:?}"),
        })
        .collect();
    assert_eq!(
        commands,
        vec![ExecutionCommand::Resubmit {
            execution_id: execution.id.clone(),
            task_run_id: stuck.id.clone(),
            attempt: Some(1),
            worker_id: Some("worker-gone".into()),
            max_resubmissions: 5,
        }],
        "one command, for the running attempt only, with the configured maximum"
    );
    assert!(
        deliveries.iter().all(|d| d.envelope.key == execution.id),
        "keyed by execution"
    );

    // An ended execution: a clear error, nothing published.
    let mut ended = Execution::new("company.team", "done", 1);
    ended.state.transition(StateType::Running).unwrap();
    ended.state.transition(StateType::Success).unwrap();
    backend
        .repositories()
        .executions
        .save(&ended)
        .await
        .unwrap();
    let out = resubmit(&data, &ended.id, None);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&ended.id) && stderr.contains("SUCCESS"),
        "says why: {stderr}"
    );

    // An unknown execution: a clear error naming it.
    let out = resubmit(&data, "nope", None);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no execution 'nope'"), "{stderr}");
}
