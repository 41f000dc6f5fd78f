//! The executor killed at each step of its unit of work (issue 14), with the fault points of
//! `kestra::core::testkit::faults::UnitFault` (compiled only with the feature `testkit`).
//!
//! The contract (DESIGN.md, the atomicity rule): consuming a unit's messages, saving its
//! executions and keyed states and publishing its messages commit together or not at all. So an
//! executor that dies at any step before its commit leaves nothing of the unit behind: its
//! messages come back (after the claim's lease) and are processed again, and the worker jobs it
//! had staged were never visible, so no task attempt runs twice. One that dies after its commit
//! loses nothing. In both cases every execution ends SUCCESS once with its outputs, and each task
//! attempt ran exactly once (the at-least-once allowance of worker jobs is for dead workers, not
//! for dead executors).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use kestra::core::model::{Execution, StateType};

use crate::harness::{Cluster, states};

const NS: &str = "faults";

/// The steps, as `KESTRA_TESTKIT_EXECUTOR_ABORT_AT` names them, in the unit's order.
const STEPS: [&str; 6] = [
    "claimed",
    "loaded",
    "processed",
    "saved",
    "published",
    "committed",
];

/// Executions started while each armed executor runs.
const PER_STEP: usize = 3;

/// SIGABRT: what `std::process::abort` ends the process with.
const SIGABRT: i32 = 6;

/// One worker; for each step in turn an executor armed to abort at that step (once: a marker file
/// of its own) while [`PER_STEP`] executions of a flow of three tasks run: a Return, a shell that
/// fails its first attempt and is retried, a shell that combines their outputs (the shells leave a
/// mark line per run). The executor dies by SIGABRT, the next one (armed
/// at the next step) takes over, and a last, unarmed one finishes. Then every execution ended
/// SUCCESS once with its outputs, each shell attempt ran exactly once (mark lines: two of `work`,
/// one of `last`), the invariants hold, and no execution was lost or made twice.
pub async fn executor_killed_at_each_step(mut c: Cluster) {
    let m = c.marks().display().to_string();
    c.flow(
        "stepped",
        &format!(
            r#"id: stepped
namespace: {NS}
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "first {{{{ execution.id }}}}"
  - id: work
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    retry:
      type: constant
      interval: PT1S
      maxAttempts: 2
    commands:
      - echo $$ >> {m}/{{{{ execution.id }}}}.work
      - if [ ! -f {m}/{{{{ execution.id }}}}.failed ]; then touch {m}/{{{{ execution.id }}}}.failed; exit 1; fi
      - echo '::{{"outputs":{{"word":"middle"}}}}::'
  - id: last
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - echo $$ >> {m}/{{{{ execution.id }}}}.last
      - echo '::{{"outputs":{{"value":"{{{{ outputs.first.value }}}} {{{{ outputs.work.vars.word }}}} last"}}}}::'
"#
        ),
    );
    c.start("worker", false);
    let mut ids = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        let at = Instant::now();
        let marker = c.dir.path().join(format!("aborted-{step}"));
        c.set_env("KESTRA_TESTKIT_EXECUTOR_ABORT_AT", step);
        c.set_env("KESTRA_TESTKIT_ABORT_ONCE", &marker.display().to_string());
        let executor = c.start("executor", n == 0);
        if n == 0 {
            c.wait_flow(NS, "stepped").await;
        }
        for _ in 0..PER_STEP {
            ids.push(c.execute(NS, "stepped").await);
        }
        let status = c.procs[executor].wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some(),
            "the executor armed at '{step}' never aborted{}",
            c.logs()
        );
        let status = status.unwrap();
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "the executor armed at '{step}' ended by abort: {status:?}{}",
            c.logs()
        );
        assert!(marker.exists(), "the abort-once marker of '{step}' made");
        let log = c.procs[executor].log();
        assert!(
            log.contains("testkit fault point: the executor aborts the process at this step")
                && log.contains(&format!("step=\"{step}\"")),
            "the executor said where it aborted ('{step}'){}",
            c.logs()
        );
        let line = log
            .lines()
            .find(|l| l.contains("testkit fault point: the executor aborts"))
            .unwrap_or_default();
        eprintln!(
            "[faults] executor aborted at '{step}' after {:?}: {}",
            at.elapsed(),
            line.split("step=").nth(1).unwrap_or(line)
        );
    }
    // The last executor keeps the last step's settings: its marker exists, so it goes on (the
    // cross-process "once") and finishes what the aborted units left.
    let last = c.start("executor", false);
    let ended = c.wait_ended(&ids, Duration::from_secs(90)).await;
    assert!(
        c.procs[last].alive(),
        "the last executor runs on{}",
        c.logs()
    );
    assert!(
        ended
            .iter()
            .all(|e| e.state.current() == StateType::Success),
        "every execution succeeds: {:?}{}",
        states(&ended),
        c.logs()
    );
    for e in &ended {
        check_execution(&c, e);
    }
    c.check_invariants(&ended);
    let all = c.executions_of(NS).await;
    assert_eq!(
        all.len(),
        ids.len(),
        "no execution appeared twice or from nowhere"
    );
    c.finish().await;
}

/// One ended execution of `stepped`: its three task runs, each shell attempt ran once (one mark
/// line each), its last output made of the others'.
fn check_execution(c: &Cluster, e: &Execution) {
    let id = &e.id;
    let tasks: Vec<&str> = e.task_run_list.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(tasks, ["first", "work", "last"], "the task runs of {id}");
    let attempts = |task: &str| -> Vec<StateType> {
        e.task_run_list
            .iter()
            .find(|r| r.task_id == task)
            .map(|r| r.attempts.iter().map(|a| a.state.current()).collect())
            .unwrap_or_default()
    };
    assert_eq!(attempts("first"), [StateType::Success], "first of {id}");
    assert_eq!(
        attempts("work"),
        [StateType::Failed, StateType::Success],
        "work of {id}: failed once, retried once"
    );
    assert_eq!(attempts("last"), [StateType::Success], "last of {id}");
    let runs = c.mark_lines(&format!("{id}.work"));
    assert_eq!(
        runs.len(),
        2,
        "each attempt of work ran exactly once in {id}: {runs:?}"
    );
    let runs = c.mark_lines(&format!("{id}.last"));
    assert_eq!(runs.len(), 1, "last ran exactly once in {id}: {runs:?}");
    let value = e
        .task_run_list
        .iter()
        .find(|r| r.task_id == "last")
        .and_then(|r| r.outputs.as_ref())
        .and_then(|o| o.get("vars"))
        .and_then(|v| v.get("value"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    assert_eq!(
        value.as_deref(),
        Some(format!("first {id} middle last").as_str()),
        "the outputs of {id} went through"
    );
}
