//! The fault scenarios, each on its own [`Cluster`].

use std::time::{Duration, Instant};

use kestra::core::limits::MAX_LOG_LINE;
use kestra::core::messages::{WorkerTaskResult, execution_envelope};
use kestra::core::model::{Execution, LogEntry, StateType};
use kestra::core::queue::Envelope;

use crate::harness::{Cluster, LEASE, LIVENESS_TIMEOUT, Signal, states};
use crate::servers::{Engine, OwnServer};

const NS: &str = "faults";

/// A flow whose one shell task marks its start and end (the shell's pid) around a sleep.
pub(crate) fn slow_flow(cluster: &Cluster, id: &str, sleep_secs: u32) {
    let marks = cluster.marks();
    let m = marks.display();
    cluster.flow(
        id,
        &format!(
            r#"id: {id}
namespace: {NS}
tasks:
  - id: work
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - echo $$ >> {m}/{{{{ execution.id }}}}.started
      - sleep {sleep_secs}
      - echo $$ >> {m}/{{{{ execution.id }}}}.done
"#
        ),
    );
}

/// A worker SIGKILLed while its task runs: no result, no goodbye. Its job is delivered again after
/// its lease, to the worker started after it; the execution ends SUCCESS once and its one task run
/// has one attempt with one terminal result.
pub async fn worker_killed_mid_task(mut c: Cluster) {
    slow_flow(&c, "slow", 2);
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    let a = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    c.procs[a].kill();
    let killed = Instant::now();
    c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(40))
        .await;
    let started = c.mark_lines(&format!("{id}.started"));
    assert_eq!(
        started.len(),
        2,
        "the job ran on the killed worker, then once more on the new one: {started:?}{}",
        c.logs()
    );
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    // The killed worker's shell died with it (it would have written its end mark long before the
    // new worker's run ended): no script of a dead worker runs on beside the new attempt.
    let done = c.mark_lines(&format!("{id}.done"));
    assert!(
        !done.contains(&started[0]),
        "the shell {} of the killed worker died with it: done {done:?}",
        started[0]
    );
    assert!(
        killed.elapsed() < LEASE * 4 + Duration::from_secs(10),
        "resubmitted within a few leases: {:?}",
        killed.elapsed()
    );
    c.check_invariants(&ended);
    c.finish().await;
}

/// A worker SIGKILLed while its task runs, with `worker-task-restart-strategy: IMMEDIATELY` and a
/// lease far longer than the liveness timeout: the executor declares the worker dead and resubmits
/// its attempt before the queue would deliver the job again. The old attempt ends RESUBMITTED, the
/// new one (attempt 2, on the worker started after it) SUCCESS, and the execution ends once.
pub async fn worker_killed_mid_task_resubmitted(mut c: Cluster) {
    slow_flow(&c, "slow", 2);
    c.set_env("KESTRA_SERVER_WORKER_TASK_RESTART_STRATEGY", "IMMEDIATELY");
    c.set_env("KESTRA_WORKER_LEASE", "120s");
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    let a = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    c.procs[a].kill();
    let killed = Instant::now();
    c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(40))
        .await;
    assert!(
        killed.elapsed() < LIVENESS_TIMEOUT * 3 + Duration::from_secs(10),
        "resubmitted after the liveness timeout, not the 120 s lease: {:?}",
        killed.elapsed()
    );
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    let run = &ended[0].task_run_list[0];
    let attempts: Vec<StateType> = run.attempts.iter().map(|a| a.state.current()).collect();
    assert_eq!(
        attempts,
        vec![StateType::Resubmitted, StateType::Success],
        "the dead worker's attempt RESUBMITTED, the new one SUCCESS{}",
        c.logs()
    );
    assert!(
        run.state
            .histories()
            .iter()
            .any(|h| h.state == StateType::Resubmitted),
        "the task run went through RESUBMITTED"
    );
    let started = c.mark_lines(&format!("{id}.started"));
    assert_eq!(
        started.len(),
        2,
        "ran on the killed worker, then once as attempt 2: {started:?}"
    );
    c.check_invariants(&ended);
    c.finish().await;
}

/// As [`worker_killed_mid_task_resubmitted`], with a lease that runs out after the resubmission:
/// the queue delivers the dead worker's job (attempt 1) again once the execution has ended with
/// attempt 2. The worker that starts that stale copy is told to stop it: it never finishes.
pub async fn stale_copy_of_a_resubmitted_attempt_is_stopped(mut c: Cluster) {
    slow_flow(&c, "slow", 4);
    c.set_env("KESTRA_SERVER_WORKER_TASK_RESTART_STRATEGY", "IMMEDIATELY");
    c.set_env("KESTRA_WORKER_LEASE", "12s");
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    let a = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    c.procs[a].kill();
    let b = c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(40))
        .await;
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    let attempts: Vec<StateType> = ended[0].task_run_list[0]
        .attempts
        .iter()
        .map(|a| a.state.current())
        .collect();
    assert_eq!(
        attempts,
        vec![StateType::Resubmitted, StateType::Success],
        "{}",
        c.logs()
    );
    // The lease runs out: the stale copy of attempt 1 starts on the living worker...
    let started = c
        .wait_mark(&format!("{id}.started"), 3, Duration::from_secs(30))
        .await;
    // ...and is stopped: its shell never finishes, well after it would have. (The killed
    // worker's own shell died with it; attempt 2 does finish.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    let done = c.mark_lines(&format!("{id}.done"));
    assert!(
        !done.contains(&started[2]),
        "the stale copy (shell {}) was stopped before its end: done {done:?}{}",
        started[2],
        c.logs()
    );
    assert!(
        c.procs[b].log().contains("stopping a resubmitted attempt"),
        "the worker says why{}",
        c.logs()
    );
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(
        after.state.histories(),
        ended[0].state.histories(),
        "the stale copy changed nothing"
    );
    c.check_invariants(&[after]);
    c.finish().await;
}

/// A worker frozen (SIGSTOP) while its task runs, past the liveness timeout and its lease: the job
/// runs again on another worker and the execution ends. Thawed (SIGCONT), the zombie finds the
/// executor's verdict (DISCONNECTED): it abandons what it holds and stops, its process exiting
/// with an error for a supervisor to start it again (as Kestra's workers do). A late result of
/// its copy (its shell ran on while it was frozen), if it still goes out, is dropped. The
/// execution keeps its one terminal state and no attempt gets a second result.
pub async fn zombie_worker_result_dropped(mut c: Cluster) {
    slow_flow(&c, "slow", 2);
    // At debug, the executor says which events it ignored and why.
    let executor = c.start_logging(
        "executor",
        true,
        "info,kestra_core::executor::service=debug",
    );
    c.wait_flow(NS, "slow").await;
    let zombie = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    let first = c
        .wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    c.procs[zombie].signal(Signal::Stop);
    c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(40))
        .await;
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    let before = ended[0].clone();
    // The zombie's own shell went on while it was frozen: its copy is done, its result unsent.
    let done = c
        .wait_mark(&format!("{id}.done"), 2, Duration::from_secs(10))
        .await;
    assert!(
        done.contains(&first[0]),
        "the zombie's copy finished: {done:?} (started {first:?})"
    );
    assert!(
        LEASE > LIVENESS_TIMEOUT,
        "frozen past both the liveness timeout and the lease"
    );
    // The zombie publishes its late result when thawed; the executor drops it (said at debug).
    let dropped = |log: String| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("execution_id={id}"))
                    && l.contains("event for a terminated execution; dropped")
            })
            .count()
    };
    let before_thaw = dropped(c.procs[executor].log());
    c.procs[zombie].signal(Signal::Cont);
    let exit = c.procs[zombie].wait_exit(Duration::from_secs(20));
    let log = c.procs[zombie].log();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the thawed worker stops with an error once it learns it was declared dead: {exit:?}{}",
        c.logs()
    );
    assert!(
        log.contains("this worker was declared dead by the executor"),
        "it says why: {log}"
    );
    // Its late result, if it went out before the verdict was read, was dropped.
    let late = dropped(c.procs[executor].log()) > before_thaw;
    eprintln!("[faults] the zombie's late result reached the executor and was dropped: {late}");
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(
        after.state.histories(),
        before.state.histories(),
        "the late result changed the ended execution"
    );
    assert_eq!(
        after.task_run_list.len(),
        before.task_run_list.len(),
        "the late result added a task run"
    );
    for (a, b) in after.task_run_list.iter().zip(&before.task_run_list) {
        assert_eq!(
            a.attempts.len(),
            b.attempts.len(),
            "the late result added an attempt"
        );
        assert_eq!(
            a.state.histories(),
            b.state.histories(),
            "the late result changed a task run"
        );
    }
    c.check_invariants(&[after]);
    c.finish().await;
}

/// A worker SIGTERMed while a task runs drains: the task finishes (once), its result is published,
/// and the process exits 0. No other worker runs.
pub async fn worker_drains_on_sigterm(mut c: Cluster) {
    slow_flow(&c, "slow", 2);
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    let w = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    c.procs[w].signal(Signal::Term);
    let status = c.procs[w].wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the worker drains and exits 0 on SIGTERM: {status:?}{}",
        c.logs()
    );
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    assert_eq!(
        c.mark_lines(&format!("{id}.started")).len(),
        1,
        "the drained task ran once"
    );
    assert_eq!(c.mark_lines(&format!("{id}.done")).len(), 1);
    c.check_invariants(&ended);
    c.finish().await;
}

/// Two executors share the load; one is SIGKILLed while executions are in flight. The other takes
/// over (a killed executor's unit of work never committed): every execution ends SUCCESS, once.
pub async fn executor_killed_under_load(mut c: Cluster) {
    c.flow(
        "quick",
        &format!(
            r#"id: quick
namespace: {NS}
tasks:
  - id: one
    type: io.kestra.plugin.core.debug.Return
    format: "one {{{{ execution.id }}}}"
  - id: two
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.one.value }}}} two"
  - id: three
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ outputs.two.value }}}}"
"#
        ),
    );
    let first = c.start("executor", true);
    c.wait_flow(NS, "quick").await;
    c.start("executor", false);
    c.start("worker", false);
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(c.execute(NS, "quick").await);
    }
    // Kill the first executor once executions are moving, before they are all done.
    let start = Instant::now();
    loop {
        let seen = c.executions_of(NS).await;
        if seen.iter().any(|e| e.state.current() != StateType::Created) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no execution moved{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.procs[first].kill();
    let ended = c.wait_ended(&ids, Duration::from_secs(60)).await;
    assert!(
        ended
            .iter()
            .all(|e| e.state.current() == StateType::Success),
        "every execution succeeds: {:?}",
        states(&ended)
    );
    for e in &ended {
        assert_eq!(e.task_run_list.len(), 3, "three task runs in {}", e.id);
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

/// Two schedulers on a 2-second schedule; around several fire times one of them is SIGKILLed and a
/// new one started. Every slot from the first to the last fired is fired exactly once (the slot's
/// date is the execution's `trigger.date`), and every execution ends once.
pub async fn scheduler_killed_at_fire_time(mut c: Cluster) {
    c.flow(
        "ticking",
        &format!(
            r#"id: ticking
namespace: {NS}
triggers:
  - id: every2s
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
    recoverMissedSchedules: ALL
tasks:
  - id: tick
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ trigger.date }}}}"
"#
        ),
    );
    c.start("executor", true);
    c.wait_flow(NS, "ticking").await;
    c.start("worker", false);
    let mut schedulers = vec![c.start("scheduler", false), c.start("scheduler", false)];
    // Kill a scheduler right around four fire times (alternating which one), starting a new one.
    let mut boundary = chrono::Utc::now();
    for round in 0..4i64 {
        // The next even second at least 300 ms after the previous one, then -60..+60 ms around it.
        let from = boundary.max(chrono::Utc::now()) + chrono::Duration::milliseconds(300);
        let next_even = (from.timestamp() / 2 + 1) * 2;
        boundary = chrono::DateTime::from_timestamp(next_even, 0).expect("a timestamp");
        let at = boundary + chrono::Duration::milliseconds(-60 + round * 40);
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let slot = usize::try_from(round % 2).expect("0 or 1");
        let victim = schedulers.remove(slot);
        c.procs[victim].kill();
        schedulers.insert(slot, c.start("scheduler", false));
    }
    // Let the survivors catch up and fire a few more slots: at least 5 in all (within 30 s: on a
    // loaded machine the first execution, which holds the trigger until it ends, may be slow).
    let catch_up = Instant::now();
    while c.executions_of(NS).await.len() < 5 && catch_up.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for s in schedulers {
        c.procs[s].kill();
    }
    let fired = c.executions_of(NS).await;
    let ids: Vec<String> = fired.iter().map(|e| e.id.clone()).collect();
    let ended = c.wait_ended(&ids, Duration::from_secs(30)).await;
    let mut slots: Vec<chrono::DateTime<chrono::Utc>> = ended
        .iter()
        .map(|e| {
            let date = e
                .trigger
                .as_ref()
                .and_then(|t| t.variables.get("date"))
                .and_then(|d| d.as_str())
                .unwrap_or_else(|| panic!("execution {} has no trigger.date", e.id));
            chrono::DateTime::parse_from_rfc3339(date)
                .unwrap_or_else(|err| panic!("trigger.date '{date}' of {}: {err}", e.id))
                .with_timezone(&chrono::Utc)
        })
        .collect();
    slots.sort();
    assert!(
        slots.len() >= 5,
        "the schedule fired through the kills: {slots:?}{}",
        c.logs()
    );
    for pair in slots.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap != chrono::Duration::zero(),
            "slot {} fired twice: {slots:?}",
            pair[0]
        );
        assert_eq!(
            gap,
            chrono::Duration::seconds(2),
            "slot(s) between {} and {} lost: {slots:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        ended
            .iter()
            .all(|e| e.state.current() == StateType::Success),
        "{:?}",
        states(&ended)
    );
    c.check_invariants(&ended);
    c.finish().await;
}

/// The database server (PostgreSQL or MariaDB, `kind` `postgres` or `mysql`: a server of the
/// scenario's own, never the shared one) SIGKILLed while 20 executions run through an executor,
/// two workers and an indexer (separate processes) once the first execution has ended, and started again on the
/// same data 4 s later (`FAULTS_DB_DOWN_SECS`): longer than a worker's retries to publish a result
/// and than its job lease. The kestra processes are not restarted: they reconnect by themselves. Every execution ends SUCCESS once
/// with its three task runs, none lost, none doubled, and every process still runs.
pub async fn database_restart_under_load(kind: &'static str) {
    let engine = if kind == "postgres" {
        Engine::Postgres
    } else {
        Engine::MariaDb
    };
    let Some(mut server) = tokio::task::spawn_blocking(move || OwnServer::start(engine))
        .await
        .expect("start the database server")
    else {
        return;
    };
    let mut c = Cluster::at(kind, &server.url()).await;
    c.flow(
        "steady",
        &format!(
            r#"id: steady
namespace: {NS}
tasks:
  - id: one
    type: io.kestra.plugin.core.debug.Return
    format: "one {{{{ execution.id }}}}"
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: three
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.one.value }}}} three"
"#
        ),
    );
    c.start("executor", true);
    c.wait_flow(NS, "steady").await;
    c.start("worker", false);
    c.start("worker", false);
    c.start("indexer", false);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(c.execute(NS, "steady").await);
    }
    // Kill the server once the first execution has ended, the others running or waiting.
    let start = Instant::now();
    loop {
        let seen = c.executions_of(NS).await;
        if seen.iter().any(|e| e.state.is_terminated()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no execution moved{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = c.executions_of(NS).await;
    let ended_before = before.iter().filter(|e| e.state.is_terminated()).count();
    assert!(
        ended_before < ids.len(),
        "executions in flight when the server is killed"
    );
    server.kill();
    let killed = Instant::now();
    let down: u64 = std::env::var("FAULTS_DB_DOWN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    tokio::time::sleep(Duration::from_secs(down)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.run();
        server
    })
    .await
    .expect("restart the database server");
    let restarted = Instant::now();
    let ended = c.wait_ended(&ids, Duration::from_secs(90)).await;
    eprintln!(
        "[faults] {kind} restarted {:?} after the kill; {ended_before} of {} executions had ended before it, all ended {:?} after the restart",
        restarted - killed,
        ids.len(),
        restarted.elapsed()
    );
    assert!(
        ended
            .iter()
            .all(|e| e.state.current() == StateType::Success),
        "every execution succeeds across the restart: {:?}{}\n----- database server -----\n{}",
        states(&ended),
        c.logs(),
        server.output()
    );
    for e in &ended {
        assert_eq!(e.task_run_list.len(), 3, "three task runs in {}", e.id);
    }
    c.check_invariants(&ended);
    let all = c.executions_of(NS).await;
    assert_eq!(
        all.len(),
        ids.len(),
        "no execution lost, doubled or from nowhere"
    );
    for p in &c.procs {
        let log = p.log();
        let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();
        eprintln!(
            "[faults] {}: {} WARN and {} ERROR lines across the restart",
            p.name,
            count(" WARN "),
            count(" ERROR ")
        );
        for line in log
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .take(3)
            .chain(log.lines().filter(|l| l.contains(" WARN ")).take(3))
        {
            eprintln!("[faults]   {}", line.chars().take(300).collect::<String>());
        }
    }
    let names: Vec<String> = c.procs.iter().map(|p| p.name.clone()).collect();
    for (p, name) in c.procs.iter_mut().zip(names) {
        assert!(
            p.alive(),
            "{name} reconnected by itself and still runs{}",
            c_logs_of(p)
        );
    }
    c.finish().await;
    drop(server);
}

fn c_logs_of(p: &crate::harness::Proc) -> String {
    let log = p.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Lines of the executor's debug log about `id` saying an event was ignored or dropped.
fn ignored_events(log: &str, id: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(&format!("execution_id={id}"))
                && (l.contains("event ignored") || l.contains("; dropped"))
        })
        .count()
}

/// A worker result as the executor stored it: task run `task_id` of `e`, its last attempt, in
/// `state` (with `outputs`).
fn result_of(
    e: &Execution,
    task_id: &str,
    state: StateType,
    outputs: Option<serde_json::Map<String, serde_json::Value>>,
) -> WorkerTaskResult {
    let run = e
        .task_run_list
        .iter()
        .find(|r| r.task_id == task_id)
        .unwrap_or_else(|| panic!("task run {task_id} in {}", e.id));
    attempt_result(e, task_id, run.attempts.len(), state, outputs)
}

/// As [`result_of`], for attempt `n` (from 1) of the task run.
fn attempt_result(
    e: &Execution,
    task_id: &str,
    n: usize,
    state: StateType,
    outputs: Option<serde_json::Map<String, serde_json::Value>>,
) -> WorkerTaskResult {
    let run = e
        .task_run_list
        .iter()
        .find(|r| r.task_id == task_id)
        .unwrap_or_else(|| panic!("task run {task_id} in {}", e.id));
    let attempt = &run.attempts[n - 1];
    WorkerTaskResult {
        execution_id: e.id.clone(),
        task_run_id: run.id.clone(),
        attempt: u32::try_from(n).expect("a few attempts"),
        state,
        attempt_state: attempt.state.clone(),
        outputs,
        child_task_runs: Vec::new(),
        worker_id: attempt.worker_id.clone(),
    }
}

fn forged() -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut outputs = serde_json::Map::new();
    outputs.insert("value".into(), serde_json::json!("forged"));
    Some(outputs)
}

/// Publish `messages` straight into the queue, as a broker delivering them twice or late would.
async fn inject(c: &Cluster, messages: Vec<Envelope>) {
    c.queue()
        .publish(messages)
        .await
        .expect("publish the injected messages");
}

/// Wait until the executor's log shows `n` more ignored or dropped events of `id` than `before`.
async fn wait_ignored(c: &Cluster, executor: usize, id: &str, before: usize, n: usize) {
    let start = Instant::now();
    loop {
        let seen = ignored_events(&c.procs[executor].log(), id);
        if seen >= before + n {
            eprintln!(
                "[faults] the executor ignored the {n} injected messages of {id} ({} lines)",
                seen - before
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the executor ignored {} of the {n} injected messages{}",
            seen - before,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages delivered twice and out of order, published straight into the queue while the
/// cluster runs. While the execution's second task runs: the first task's SUCCESS result twice
/// (with forged outputs), its RUNNING after its SUCCESS, the second task's RUNNING again, a result
/// for an attempt that does not exist, and the execution's creation message again. After the
/// execution ended: every result of its task runs again (RUNNING after SUCCESS, SUCCESS twice with
/// forged outputs) and the creation message. Each is ignored (the executor says so at debug): the
/// execution ends SUCCESS once with the outputs its worker produced, each task run has one attempt
/// with one terminal result, and nothing changes after the end. Then the same for a task run that
/// fails once and is retried ([`retried_attempt_results_twice`]).
pub async fn messages_delivered_twice_and_out_of_order(mut c: Cluster) {
    let m = c.marks().display().to_string();
    c.flow(
        "gated",
        &format!(
            r#"id: gated
namespace: {NS}
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "first {{{{ execution.id }}}}"
  - id: gate
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - echo $$ >> {m}/{{{{ execution.id }}}}.started
      - while [ ! -f {m}/{{{{ execution.id }}}}.go ]; do sleep 0.1; done
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.first.value }}}} last"
"#
        ),
    );
    retried_flow(&c);
    let executor = c.start_logging(
        "executor",
        true,
        "info,kestra_core::executor::service=debug",
    );
    c.wait_flow(NS, "gated").await;
    c.wait_flow(NS, "retried").await;
    c.start("worker", false);
    let id = c.execute(NS, "gated").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    // The gate's RUNNING is recorded once its shell runs (it wrote its mark).
    let start = Instant::now();
    let running = loop {
        let e = c.execution(&id).await.expect("the execution");
        if e.task_run_list
            .iter()
            .any(|r| r.task_id == "gate" && r.state.current() == StateType::Running)
        {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gate never RUNNING: {:?}{}",
            e.task_run_list,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = running
        .task_run_list
        .iter()
        .find(|r| r.task_id == "first")
        .expect("the first task run")
        .clone();
    assert_eq!(first.state.current(), StateType::Success);
    let mut creation = Execution::new(NS, "gated", 1);
    creation.id = id.clone();
    let first_success = result_of(&running, "first", StateType::Success, forged());
    let mut first_running = result_of(&running, "first", StateType::Running, None);
    first_running.attempt_state = kestra::core::model::State::new_at(
        StateType::Running,
        chrono::Utc::now() - chrono::Duration::hours(1),
    );
    let gate_running = result_of(&running, "gate", StateType::Running, None);
    let mut gate_future = result_of(&running, "gate", StateType::Failed, None);
    gate_future.attempt = 2;
    let before = ignored_events(&c.procs[executor].log(), &id);
    inject(
        &c,
        vec![
            first_success.envelope().expect("an envelope"),
            first_success.envelope().expect("an envelope"),
            first_running.envelope().expect("an envelope"),
            gate_running.envelope().expect("an envelope"),
            gate_future.envelope().expect("an envelope"),
            execution_envelope(&creation).expect("an envelope"),
        ],
    )
    .await;
    wait_ignored(&c, executor, &id, before, 6).await;
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(
        after.state.current(),
        StateType::Running,
        "the execution runs on"
    );
    let gate = |e: &Execution| {
        e.task_run_list
            .iter()
            .find(|r| r.task_id == "gate")
            .expect("the gate")
            .clone()
    };
    assert_eq!(
        gate(&after).state.histories(),
        gate(&running).state.histories(),
        "the gate's run is unchanged"
    );
    // Open the gate: the execution goes on to its end.
    std::fs::write(c.marks().join(format!("{id}.go")), "").expect("open the gate");
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    let ended = ended[0].clone();
    assert_eq!(ended.state.current(), StateType::Success, "{}", c.logs());
    let output = |e: &Execution, task: &str| {
        e.task_run_list
            .iter()
            .find(|r| r.task_id == task)
            .and_then(|r| r.outputs.as_ref())
            .and_then(|o| o.get("value"))
            .cloned()
    };
    assert_eq!(
        output(&ended, "first"),
        Some(serde_json::json!(format!("first {id}"))),
        "the first task keeps its worker's output"
    );
    assert_eq!(
        output(&ended, "last"),
        Some(serde_json::json!(format!("first {id} last"))),
        "the next task saw the worker's output, not a forged one"
    );
    assert_eq!(ended.task_run_list.len(), 3);
    for run in &ended.task_run_list {
        assert_eq!(run.attempts.len(), 1, "one attempt of {}", run.task_id);
        assert_eq!(run.state.current(), StateType::Success, "{}", run.task_id);
    }
    assert_eq!(
        c.mark_lines(&format!("{id}.started")).len(),
        1,
        "the gate ran once"
    );
    // After the end: the results again, late and out of order.
    let before = ignored_events(&c.procs[executor].log(), &id);
    let mut late = Vec::new();
    for task in ["first", "gate", "last"] {
        let mut running = result_of(&ended, task, StateType::Running, None);
        running.attempt_state = kestra::core::model::State::new_at(
            StateType::Running,
            chrono::Utc::now() - chrono::Duration::hours(1),
        );
        let success = result_of(&ended, task, StateType::Success, forged());
        late.push(success.envelope().expect("an envelope"));
        late.push(running.envelope().expect("an envelope"));
        late.push(success.envelope().expect("an envelope"));
    }
    late.push(execution_envelope(&creation).expect("an envelope"));
    let n = late.len();
    inject(&c, late).await;
    wait_ignored(&c, executor, &id, before, n).await;
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(
        after.state.histories(),
        ended.state.histories(),
        "the late messages changed the ended execution"
    );
    assert_eq!(after.task_run_list.len(), ended.task_run_list.len());
    for (a, b) in after.task_run_list.iter().zip(&ended.task_run_list) {
        assert_eq!(a.state.histories(), b.state.histories(), "{}", a.task_id);
        assert_eq!(a.attempts.len(), b.attempts.len(), "{}", a.task_id);
        assert_eq!(a.outputs, b.outputs, "{}", a.task_id);
    }
    assert_eq!(
        c.executions_of(NS).await.len(),
        1,
        "the creation message again made no second execution"
    );
    c.check_invariants(&[after]);
    retried_attempt_results_twice(&c, executor).await;
    c.finish().await;
}

/// A flow whose one task fails its first attempt and is retried 2 s later.
fn retried_flow(c: &Cluster) {
    let m = c.marks().display().to_string();
    c.flow(
        "retried",
        &format!(
            r#"id: retried
namespace: {NS}
tasks:
  - id: flaky
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    retry:
      type: constant
      interval: PT2S
      maxAttempts: 2
    commands:
      - echo $$ >> {m}/{{{{ execution.id }}}}.flaky
      - if [ -f {m}/{{{{ execution.id }}}}.failed ]; then exit 0; fi; touch {m}/{{{{ execution.id }}}}.failed; exit 1
"#
        ),
    );
}

/// The messages of [`messages_delivered_twice_and_out_of_order`] for a task run that fails once
/// and is retried ([`retried_flow`]): while its retry waits, the failed attempt's result twice and
/// its RUNNING again; after the end, both attempts' results again. The task run ends with two
/// attempts, FAILED then SUCCESS, each with one terminal result, and the task ran twice.
async fn retried_attempt_results_twice(c: &Cluster, executor: usize) {
    let id = c.execute(NS, "retried").await;
    let start = Instant::now();
    let waiting = loop {
        let e = c.execution(&id).await;
        if let Some(e) = e.filter(|e| {
            e.task_run_list
                .first()
                .is_some_and(|r| r.state.current() == StateType::Retrying)
        }) {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the flaky task never RETRYING{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed = attempt_result(&waiting, "flaky", 1, StateType::Failed, None);
    let mut running = attempt_result(&waiting, "flaky", 1, StateType::Running, None);
    running.attempt_state = kestra::core::model::State::new_at(
        StateType::Running,
        chrono::Utc::now() - chrono::Duration::hours(1),
    );
    let before = ignored_events(&c.procs[executor].log(), &id);
    inject(
        c,
        vec![
            failed.envelope().expect("an envelope"),
            running.envelope().expect("an envelope"),
            failed.envelope().expect("an envelope"),
        ],
    )
    .await;
    wait_ignored(c, executor, &id, before, 3).await;
    let ended = c.wait_one(&id, Duration::from_secs(30)).await;
    assert_eq!(ended.state.current(), StateType::Success, "{}", c.logs());
    let run = &ended.task_run_list[0];
    let attempts: Vec<StateType> = run.attempts.iter().map(|a| a.state.current()).collect();
    assert_eq!(
        attempts,
        vec![StateType::Failed, StateType::Success],
        "the duplicates of the failed attempt started no third attempt{}",
        c.logs()
    );
    assert_eq!(c.mark_lines(&format!("{id}.flaky")).len(), 2, "ran twice");
    let before = ignored_events(&c.procs[executor].log(), &id);
    inject(
        c,
        vec![
            failed.envelope().expect("an envelope"),
            attempt_result(&ended, "flaky", 2, StateType::Success, forged())
                .envelope()
                .expect("an envelope"),
            attempt_result(&ended, "flaky", 2, StateType::Failed, None)
                .envelope()
                .expect("an envelope"),
        ],
    )
    .await;
    wait_ignored(c, executor, &id, before, 3).await;
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(after.state.histories(), ended.state.histories());
    assert_eq!(after.task_run_list, ended.task_run_list, "nothing changed");
    c.check_invariants(&[after]);
}

/// The logs of execution `id` in the repository, once at least `n` lines are there.
async fn logs_of(c: &Cluster, id: &str, n: usize) -> Vec<LogEntry> {
    let start = Instant::now();
    loop {
        let logs = c
            .repositories()
            .logs
            .find_by_execution("main", id, None, None)
            .await
            .unwrap_or_else(|e| panic!("read the logs of {id}: {e}"));
        if logs.len() >= n {
            return logs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} log lines of {id}, expected {n}{}",
            logs.len(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Oversized data on real processes (an executor, a worker and an indexer; default limits):
/// - a task whose output is 12 MiB (`Return`; an expression renders at most 16 MiB, so a 25 MiB
///   output cannot come from one) fails, its log naming the size, the limit
///   (10 MiB) and its key `kestra.limits.task.max-output-size`; its outputs are dropped;
/// - a 9 MiB output, under that limit but over the queue's (8 MiB on JDBC): the result is refused
///   by the queue and the task fails, the log naming the size and `kestra.queue.max-message-size`;
/// - a 25 MiB file a script writes is offloaded to the internal storage (SUCCESS, the output is
///   its `kestra://` URI, the stored file whole);
/// - a 5 MiB log line, from a script's output and from a `Log` task, is stored cut to 1 MiB with
///   the truncation marker naming its size; the script's next line is logged.
///
/// The worker, executor and indexer keep going: a normal execution after them succeeds, and the
/// processes still run.
pub async fn large_output_and_log_line(mut c: Cluster) {
    c.flow(
        "bigout",
        &format!(
            r#"id: bigout
namespace: {NS}
tasks:
  - id: big
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ 'x' * 12582912 }}}}"
"#
        ),
    );
    c.flow(
        "midout",
        &format!(
            r#"id: midout
namespace: {NS}
tasks:
  - id: mid
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ 'z' * 9437184 }}}}"
"#
        ),
    );
    c.flow(
        "bigfile",
        &format!(
            r#"id: bigfile
namespace: {NS}
tasks:
  - id: write
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    outputFiles:
      - big.bin
    commands:
      - head -c 26214400 /dev/urandom > big.bin
"#
        ),
    );
    c.flow(
        "loud",
        &format!(
            r#"id: loud
namespace: {NS}
tasks:
  - id: shout
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - head -c 5242880 /dev/zero | tr '\0' 'a'; echo; echo after
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ 'b' * 5242880 }}}}"
"#
        ),
    );
    c.flow(
        "quick",
        &format!(
            r#"id: quick
namespace: {NS}
tasks:
  - id: one
    type: io.kestra.plugin.core.debug.Return
    format: "still here"
"#
        ),
    );
    let executor = c.start("executor", true);
    for flow in ["bigout", "midout", "bigfile", "loud", "quick"] {
        c.wait_flow(NS, flow).await;
    }
    let worker = c.start("worker", false);
    // The logs reach the repository through the indexer.
    let indexer = c.start("indexer", false);
    let mut all = Vec::new();
    let step = Instant::now();
    let lap = |what: &str| eprintln!("[faults] {what} after {:?}", step.elapsed());

    // 12 MiB of outputs: over the output limit (10 MiB).
    let id = c.execute(NS, "bigout").await;
    let e = c.wait_one(&id, Duration::from_secs(60)).await;
    all.push(e.clone());
    assert_eq!(e.state.current(), StateType::Failed, "{}", c.logs());
    assert_eq!(e.task_run_list[0].state.current(), StateType::Failed);
    assert!(e.task_run_list[0].outputs.is_none(), "outputs dropped");
    let logs = logs_of(&c, &id, 1).await;
    let line = logs
        .iter()
        .map(|l| l.message.as_str())
        .find(|m| m.contains("outputs are too large"))
        .unwrap_or_else(|| panic!("the reason is logged: {logs:?}"));
    let size: usize = line
        .split("too large: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the size is named: {line}"));
    assert!(size > 12_582_912, "the size is the output's: {line}");
    assert!(
        line.contains("over the limit of 10485760 bytes")
            && line.contains("kestra.limits.task.max-output-size"),
        "the limit and its key are named: {line}"
    );

    lap("12 MiB output failed");
    // 9 MiB: under the output limit, over the queue's maximum message.
    let id = c.execute(NS, "midout").await;
    let e = c.wait_one(&id, Duration::from_secs(60)).await;
    all.push(e.clone());
    assert_eq!(e.state.current(), StateType::Failed, "{}", c.logs());
    let logs = logs_of(&c, &id, 1).await;
    assert!(
        logs.iter().any(|l| l
            .message
            .contains("message too large for the queue: topic worker_task_result")
            && l.message.contains("maximum 8388608 bytes")
            && l.message.contains("kestra.queue.max-message-size")),
        "the queue's refusal names the topic, the size, the limit and its key: {:?}",
        logs.iter().map(|l| &l.message).collect::<Vec<_>>()
    );

    lap("9 MiB result refused");
    // A 25 MiB file: offloaded to the internal storage.
    let id = c.execute(NS, "bigfile").await;
    let e = c.wait_one(&id, Duration::from_secs(60)).await;
    all.push(e.clone());
    assert_eq!(e.state.current(), StateType::Success, "{}", c.logs());
    let uri = e.task_run_list[0]
        .outputs
        .as_ref()
        .and_then(|o| o.get("outputFiles"))
        .and_then(|f| f.get("big.bin"))
        .and_then(|u| u.as_str())
        .unwrap_or_else(|| {
            panic!(
                "the file's URI in the outputs: {:?}",
                e.task_run_list[0].outputs
            )
        })
        .to_string();
    assert!(uri.starts_with("kestra://"), "{uri}");
    let stored = find_file(&c.dir.path().join("data"), "big.bin");
    assert!(
        stored
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == 26_214_400)),
        "the 25 MiB file is stored whole: {stored:?}"
    );

    lap("25 MiB file offloaded");
    // 5 MiB log lines: cut to 1 MiB with the marker.
    let id = c.execute(NS, "loud").await;
    let e = c.wait_one(&id, Duration::from_secs(60)).await;
    all.push(e.clone());
    assert_eq!(e.state.current(), StateType::Success, "{}", c.logs());
    let logs = logs_of(&c, &id, 3).await;
    let marker = format!("[truncated: 5242880 bytes, limit {MAX_LOG_LINE}]");
    for (task, start) in [("shout", "aaaa"), ("say", "bbbb")] {
        let line = logs
            .iter()
            .find(|l| l.task_id.as_deref() == Some(task) && l.message.starts_with(start))
            .unwrap_or_else(|| panic!("the long line of {task} is stored"));
        assert!(
            line.message.len() <= MAX_LOG_LINE && line.message.ends_with(&marker),
            "{task}: {} bytes ending {:?}",
            line.message.len(),
            &line.message[line.message.len().saturating_sub(60)..]
        );
    }
    assert!(
        logs.iter()
            .any(|l| l.task_id.as_deref() == Some("shout") && l.message == "after"),
        "the line after the long one is logged"
    );

    lap("5 MiB log lines stored");
    // The consumers keep going.
    let id = c.execute(NS, "quick").await;
    let e = c.wait_one(&id, Duration::from_secs(30)).await;
    all.push(e.clone());
    assert_eq!(e.state.current(), StateType::Success, "{}", c.logs());
    assert!(c.procs[executor].alive(), "the executor runs on");
    assert!(c.procs[worker].alive(), "the worker runs on");
    assert!(c.procs[indexer].alive(), "the indexer runs on");
    c.check_invariants(&all);
    assert_eq!(c.executions_of(NS).await.len(), all.len());
    c.finish().await;
}

/// Files named `name` under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(name))
            {
                found.push(path);
            }
        }
    }
    found
}
