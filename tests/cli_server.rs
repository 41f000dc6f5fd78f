//! `kestra server standalone` as a real process: a retry scheduled before the process is killed
//! (SIGKILL, no drain) still runs after the process starts again on the same data directory, and
//! SIGTERM stops the server gracefully.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestra::core::model::StateType;

/// A flow started by a seconds schedule (the server has no API yet); `stopAfter: [SUCCESS]` and the
/// trigger lock keep it to one execution. Its task fails on the first attempt (leaving a marker)
/// and succeeds on the retry, writing the attempt count of its task run.
fn flow(work: &Path) -> String {
    let w = work.display();
    format!(
        r#"id: retry-across-restart
namespace: tests.cli
triggers:
  - id: once
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
    recoverMissedSchedules: NONE
    stopAfter: [SUCCESS]
tasks:
  - id: flaky
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - if [ -f {w}/failed-once ]; then echo {{{{ execution.id }}}} > {w}/done; else echo {{{{ execution.id }}}} > {w}/failed-once; exit 1; fi
    retry:
      type: constant
      interval: PT6S
      maxAttempts: 3
"#
    )
}

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Server {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(data: &Path, flows: &Path, log: &Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kestra"))
        .args(["server", "standalone", "--flows"])
        .env("KESTRA_SERVER_PORT", "0")
        .arg(flows)
        .env("KESTRA_DATA_DIR", data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Server(child)
}

fn wait_for_file(path: &Path, timeout: Duration, logs: &[&Path]) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        if start.elapsed() > timeout {
            let logs: Vec<String> = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            panic!(
                "{} never appeared; server logs:\n{}",
                path.display(),
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_retry_scheduled_before_a_crash_runs_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flows, work) = (
        dir.path().join("data"),
        dir.path().join("flows"),
        dir.path().join("work"),
    );
    for d in [&data, &flows, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(flows.join("flow.yaml"), flow(&work)).unwrap();
    let (log1, log2) = (dir.path().join("first.log"), dir.path().join("second.log"));

    let mut first = start(&data, &flows, &log1);
    let failed = wait_for_file(&work.join("failed-once"), Duration::from_secs(60), &[&log1]);
    // Wait until the executor has recorded the failed attempt and scheduled the retry (the task
    // run is RETRYING), reading the process's database, then crash the process (the retry is due
    // 6 s after the failure).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config =
        kestra::config::Config::from_pairs([("kestra.data-dir", data.display().to_string())]);
    let backend = runtime.block_on(kestra::connect(&config)).unwrap();
    let start_wait = Instant::now();
    loop {
        let execution = runtime
            .block_on(backend.repositories.executions.find_by_id("main", &failed))
            .unwrap();
        let retrying = execution.as_ref().is_some_and(|e| {
            e.task_run_list
                .iter()
                .any(|r| r.task_id == "flaky" && r.state.current() == StateType::Retrying)
        });
        if retrying {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(5),
            "the failed attempt was not recorded in time: {execution:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    assert!(
        !work.join("done").exists(),
        "the retry must not have run before the crash"
    );

    let mut second = start(&data, &flows, &log2);
    let done = wait_for_file(&work.join("done"), Duration::from_secs(60), &[&log1, &log2]);
    assert_eq!(
        done, failed,
        "the retry belongs to the execution whose first attempt failed before the crash"
    );
    let start_wait = Instant::now();
    let execution = loop {
        let execution = runtime
            .block_on(backend.repositories.executions.find_by_id("main", &failed))
            .unwrap()
            .unwrap();
        if execution.state.current() == StateType::Success {
            break execution;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "the execution did not end SUCCESS: {execution:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM (what service managers send) stops the server gracefully, exit status 0.
    let pid = second.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "SIGTERM did not stop the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let flaky = execution
        .task_run_list
        .iter()
        .find(|r| r.task_id == "flaky")
        .unwrap();
    assert_eq!(flaky.attempts.len(), 2, "{flaky:?}");
}
