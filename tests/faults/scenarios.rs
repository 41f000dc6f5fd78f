//! The fault scenarios, each on its own [`Cluster`].

use std::time::{Duration, Instant};

use kestra::core::model::StateType;

use crate::harness::{Cluster, LEASE, LIVENESS_TIMEOUT, Signal, states};

const NS: &str = "faults";

/// A flow whose one shell task marks its start and end (the shell's pid) around a sleep.
fn slow_flow(cluster: &Cluster, id: &str, sleep_secs: u32) {
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
/// runs again on another worker and the execution ends. Thawed (SIGCONT), the zombie finishes its
/// copy (its shell ran on while it was frozen) and publishes a late result of the same attempt:
/// dropped. The execution keeps its one terminal state and no attempt gets a second result.
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
    let start = Instant::now();
    while dropped(c.procs[executor].log()) <= before_thaw {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the zombie's late result never reached the executor{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.procs[zombie].alive(), "the thawed worker runs on");
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
    // Let the survivors catch up and fire a few more slots.
    tokio::time::sleep(Duration::from_secs(5)).await;
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
