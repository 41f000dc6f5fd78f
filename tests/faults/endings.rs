//! Fault scenarios about how executions end: trigger locks released on every ending, a worker
//! that dies while its execution is being killed, a job emitted while no worker runs.

use std::time::{Duration, Instant};

use kestra::core::messages::ExecutionCommand;
use kestra::core::model::{Execution, StateType, trigger_uid};
use kestra::core::runtime::flows::flow_envelope;

use crate::harness::{Cluster, LEASE, LIVENESS_TIMEOUT, states};

const NS: &str = "faults";

/// Ask the executor to kill `id`, as the API and `Engine::kill` do.
async fn kill_execution(c: &Cluster, id: &str) {
    let command = ExecutionCommand::Kill {
        execution_id: id.to_string(),
    };
    c.queue()
        .publish(vec![command.envelope().expect("an envelope")])
        .await
        .expect("publish a kill");
}

/// The schedule slot of an execution its trigger started (`trigger.date`).
fn slot(e: &Execution) -> Option<chrono::DateTime<chrono::Utc>> {
    let date = e.trigger.as_ref()?.variables.get("date")?.as_str()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(date)
            .unwrap_or_else(|err| panic!("trigger.date '{date}' of {}: {err}", e.id))
            .with_timezone(&chrono::Utc),
    )
}

/// The executions of `flow` its schedule started, oldest slot first.
fn scheduled<'a>(all: &'a [Execution], flow: &str) -> Vec<&'a Execution> {
    let mut out: Vec<&Execution> = all
        .iter()
        .filter(|e| e.flow_id == flow && e.trigger.is_some())
        .collect();
    out.sort_by_key(|e| slot(e));
    out
}

/// A flow whose trigger fires every second, `tasks` (YAML, indented by two) and `extra` (flow
/// properties) as given.
fn ticking_flow(c: &Cluster, id: &str, extra: &str, tasks: &str) {
    c.flow(
        id,
        &format!(
            r#"id: {id}
namespace: {NS}
{extra}triggers:
  - id: tick
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "* * * * * *"
    withSeconds: true
    recoverMissedSchedules: NONE
tasks:
{tasks}"#
        ),
    );
}

/// A shell task that marks its start, then waits while the file `<marks>/<hold>` exists.
fn holding_task(c: &Cluster, hold: &str) -> String {
    let m = c.marks().display().to_string();
    format!(
        r#"  - id: hold
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - echo {{{{ execution.id }}}} >> {m}/{{{{ flow.id }}}}.started
      - while [ -f {m}/{hold} ]; do sleep 0.1; done
"#
    )
}

/// Poll every 200 ms until `done` holds on the executions of the namespace (at most `timeout`).
async fn wait_until(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Execution]) -> bool,
) -> Vec<Execution> {
    let start = Instant::now();
    loop {
        let all = c.executions_of(NS).await;
        if done(&all) {
            return all;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}: {:?}{}",
            states(&all),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the trigger of `flow` fired again after `n` executions ended in `state`: at least
/// `n + 1` scheduled executions, the first `n` ended in `state`.
fn fired_after(all: &[Execution], flow: &str, state: StateType, n: usize) -> bool {
    let runs = scheduled(all, flow);
    runs.len() > n && runs[..n].iter().all(|e| e.state.current() == state)
}

/// Trigger locks released on every ending. Schedule triggers firing every second (no concurrent
/// executions: each execution holds its trigger's lock, the `executionId` of the trigger's
/// state, until the executor reports its end), whose executions end:
///
/// - SUCCESS (`ok`) and FAILED (`failing`);
/// - KILLED (`killed`: a shell that runs until the test kills the execution through the engine's
///   kill command);
/// - CANCELLED by the flow's concurrency limit (`limited`, `limit: 1, behavior: CANCEL`, while an
///   execution started by hand holds the slot), then SUCCESS once it ended;
/// - with the flow deleted while one runs (`deleted`): the scheduler forgets the trigger, the
///   flow deployed again fires again, before and after the old execution ends;
/// - across a scheduler restart (`restart`): the execution holding the lock ends while no
///   scheduler runs; the new scheduler reads the end from the queue and fires again.
///
/// After each ending, the trigger fires again; no slot fires twice; every execution ends once.
pub async fn trigger_locks_released_on_every_ending(mut c: Cluster) {
    let m = c.marks().display().to_string();
    ticking_flow(
        &c,
        "ok",
        "",
        "  - id: hi\n    type: io.kestra.plugin.core.debug.Return\n    format: hi\n",
    );
    ticking_flow(
        &c,
        "failing",
        "",
        "  - id: no\n    type: io.kestra.plugin.core.execution.Fail\n    errorMessage: no\n",
    );
    ticking_flow(&c, "killed", "", &holding_task(&c, "killed.hold"));
    ticking_flow(
        &c,
        "limited",
        "concurrency:\n  limit: 1\n  behavior: CANCEL\n",
        &holding_task(&c, "limited.hold"),
    );
    ticking_flow(&c, "deleted", "", &holding_task(&c, "deleted.hold"));
    ticking_flow(&c, "restart", "", &holding_task(&c, "restart.hold"));
    for hold in ["killed", "limited", "deleted", "restart"] {
        std::fs::write(format!("{m}/{hold}.hold"), "").expect("a hold file");
    }
    c.start("executor", true);
    for flow in ["ok", "failing", "killed", "limited", "deleted", "restart"] {
        c.wait_flow(NS, flow).await;
    }
    c.start("worker", false);
    // The concurrency slot of `limited` is taken by an execution started by hand.
    let blocker = c.execute(NS, "limited").await;
    c.wait_mark("limited.started", 1, Duration::from_secs(30))
        .await;
    let mut scheduler = c.start("scheduler", false);

    let uid = |flow: &str| trigger_uid("main", NS, flow, "tick");
    let mut killed_ids: Vec<String> = Vec::new();
    let mut limited_released = false;
    let mut deleted = DeletionStep::Waiting;
    let start = Instant::now();
    loop {
        let all = c.executions_of(NS).await;
        // `killed`: kill each scheduled execution once its shell runs.
        let started = c.mark_lines("killed.started");
        for e in scheduled(&all, "killed") {
            if !e.state.is_terminated() && started.contains(&e.id) && !killed_ids.contains(&e.id) {
                kill_execution(&c, &e.id).await;
                killed_ids.push(e.id.clone());
            }
        }
        // `limited`: the limit holds; once two scheduled executions were cancelled by it, the
        // execution started by hand ends.
        let limited = scheduled(&all, "limited");
        let running = all
            .iter()
            .filter(|e| e.flow_id == "limited" && e.state.current() == StateType::Running)
            .count();
        assert!(
            running <= 1,
            "limit 1 held: {running} running: {:?}",
            states(&all)
        );
        let cancelled = limited
            .iter()
            .filter(|e| e.state.current() == StateType::Cancelled)
            .count();
        if cancelled >= 2 && !limited_released {
            std::fs::remove_file(format!("{m}/limited.hold")).expect("release the blocker");
            limited_released = true;
        }
        let first_success = limited
            .iter()
            .position(|e| e.state.current() == StateType::Success);
        let limited_done =
            cancelled >= 2 && first_success.is_some_and(|first| limited.len() > first + 1);
        // `deleted`: see [`DeletionStep`].
        deleted = deleted.step(&c, &all, &uid("deleted")).await;
        let done = fired_after(&all, "ok", StateType::Success, 2)
            && fired_after(&all, "failing", StateType::Failed, 2)
            && fired_after(&all, "killed", StateType::Killed, 2)
            && limited_done
            && matches!(deleted, DeletionStep::Done);
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "every trigger fired again after each ending: not after 90 s ({deleted:?}, limited released {limited_released}): {:?}{}",
            all.iter()
                .map(|e| (e.flow_id.as_str(), slot(e), e.state.current()))
                .collect::<Vec<_>>(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `restart`: its first execution has held the lock all along (no second one fired).
    let all = c.executions_of(NS).await;
    let held = scheduled(&all, "restart");
    assert_eq!(
        held.len(),
        1,
        "one execution while the lock is held: {:?}",
        states(&all)
    );
    let r1 = held[0].id.clone();
    let state = trigger_state(&c, &uid("restart")).await;
    assert_eq!(
        state.execution_id.as_deref(),
        Some(r1.as_str()),
        "the lock is the running execution's id: {state:?}"
    );
    // It ends while no scheduler runs: its end waits in the queue.
    c.procs[scheduler].kill();
    std::fs::remove_file(format!("{m}/restart.hold")).expect("release restart");
    c.wait_ended(std::slice::from_ref(&r1), Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = trigger_state(&c, &uid("restart")).await;
    assert_eq!(
        state.execution_id.as_deref(),
        Some(r1.as_str()),
        "no scheduler: the lock stays until one reads the end: {state:?}"
    );
    scheduler = c.start("scheduler", false);
    let all = wait_until(
        &c,
        "restart fired again after the scheduler restart",
        Duration::from_secs(30),
        |all| scheduled(all, "restart").len() >= 2,
    )
    .await;
    let state = trigger_state(&c, &uid("restart")).await;
    assert_ne!(
        state.execution_id.as_deref(),
        Some(r1.as_str()),
        "the ended execution's lock released: {state:?}"
    );
    drop(all);

    // The end: no more fires; whatever still runs is killed; every execution ends once.
    c.procs[scheduler].kill();
    let all = c.executions_of(NS).await;
    for e in &all {
        if !e.state.is_terminated() && e.flow_id == "killed" {
            kill_execution(&c, &e.id).await;
        }
    }
    let ids: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    let ended = c.wait_ended(&ids, Duration::from_secs(40)).await;
    for flow in ["ok", "failing", "killed", "limited", "deleted", "restart"] {
        let runs = scheduled(&ended, flow);
        let mut slots: Vec<_> = runs
            .iter()
            .map(|e| (e.flow_revision > 1, slot(e)))
            .collect();
        slots.dedup();
        assert_eq!(
            slots.len(),
            runs.len(),
            "{flow}: one execution per slot: {:?}",
            runs.iter().map(|e| slot(e)).collect::<Vec<_>>()
        );
    }
    for flow in ["ok", "failing", "killed", "limited", "deleted", "restart"] {
        let runs: Vec<String> = scheduled(&ended, flow)
            .iter()
            .map(|e| format!("r{}:{}", e.flow_revision, e.state.current().as_str()))
            .collect();
        eprintln!("[faults] {flow}: {}", runs.join(" "));
    }
    let expect = |flow: &str, allowed: &[StateType]| {
        for e in scheduled(&ended, flow) {
            assert!(
                allowed.contains(&e.state.current()),
                "{flow}: {} ended {:?}, expected one of {allowed:?}",
                e.id,
                e.state.current()
            );
        }
    };
    expect("ok", &[StateType::Success]);
    expect("failing", &[StateType::Failed]);
    expect("killed", &[StateType::Killed]);
    expect("limited", &[StateType::Cancelled, StateType::Success]);
    expect("restart", &[StateType::Success]);
    let blocker = ended.iter().find(|e| e.id == blocker).expect("the blocker");
    assert_eq!(blocker.state.current(), StateType::Success);
    c.check_invariants(&ended);
    c.finish().await;
}

/// The trigger state of `uid` (it must exist).
async fn trigger_state(c: &Cluster, uid: &str) -> kestra::core::model::TriggerState {
    c.repositories()
        .triggers
        .find(uid)
        .await
        .unwrap_or_else(|e| panic!("read trigger {uid}: {e}"))
        .unwrap_or_else(|| panic!("trigger {uid} has a state"))
}

/// The steps of `deleted` in [`trigger_locks_released_on_every_ending`].
#[derive(Debug)]
enum DeletionStep {
    /// Until its first execution runs; then the flow is deleted.
    Waiting,
    /// Deleted while `0` runs: until the scheduler forgets the trigger; then deployed again.
    Deleted(String),
    /// Deployed again: until it fires while `0` still runs (no lock: a new trigger); then
    /// both are released.
    Redeployed(String),
    /// Both released (`0` the old one, `1` the first of the new revision): until both ended and
    /// the trigger fired after the second.
    Released(String, String),
    /// Done.
    Done,
}

impl DeletionStep {
    async fn step(self, c: &Cluster, all: &[Execution], uid: &str) -> DeletionStep {
        let flows = &c.repositories().flows;
        let m = c.marks().display().to_string();
        match self {
            DeletionStep::Waiting => {
                let started = c.mark_lines("deleted.started");
                let Some(first) = scheduled(all, "deleted")
                    .into_iter()
                    .find(|e| started.contains(&e.id))
                else {
                    return DeletionStep::Waiting;
                };
                let record = flows
                    .delete("main", NS, "deleted")
                    .await
                    .expect("delete the flow");
                c.queue()
                    .publish(vec![flow_envelope(&record).expect("an envelope")])
                    .await
                    .expect("publish the deletion");
                DeletionStep::Deleted(first.id.clone())
            }
            DeletionStep::Deleted(old) => {
                let state = c.repositories().triggers.find(uid).await.expect("read");
                if state.is_some() {
                    return DeletionStep::Deleted(old);
                }
                let first = flows
                    .revisions("main", NS, "deleted")
                    .await
                    .expect("revisions")
                    .into_iter()
                    .next()
                    .expect("revision 1");
                let (stored, _) = flows.save(first).await.expect("deploy again");
                c.queue()
                    .publish(vec![flow_envelope(&stored).expect("an envelope")])
                    .await
                    .expect("publish the flow");
                DeletionStep::Redeployed(old)
            }
            DeletionStep::Redeployed(old) => {
                let Some(new) = scheduled(all, "deleted")
                    .into_iter()
                    .find(|e| e.flow_revision > 1)
                else {
                    return DeletionStep::Redeployed(old);
                };
                std::fs::remove_file(format!("{m}/deleted.hold")).expect("release deleted");
                DeletionStep::Released(old, new.id.clone())
            }
            DeletionStep::Released(old, new) => {
                let runs = scheduled(all, "deleted");
                let ended = |id: &str| runs.iter().any(|e| e.id == id && e.state.is_terminated());
                let new_slot = runs.iter().find(|e| e.id == new).and_then(|e| slot(e));
                let after = runs
                    .iter()
                    .any(|e| e.flow_revision > 1 && slot(e) > new_slot);
                if ended(&old) && ended(&new) && after {
                    DeletionStep::Done
                } else {
                    DeletionStep::Released(old, new)
                }
            }
            DeletionStep::Done => DeletionStep::Done,
        }
    }
}

/// A worker SIGKILLed right after its execution was asked to be killed, before it could report
/// the kill (`worker-task-restart-strategy: IMMEDIATELY`, so both the executor's resubmission
/// when the worker is declared dead and the queue's redelivery after the lease could run the task
/// again). The execution ends KILLED once; its task run is not resubmitted (one attempt, KILLED).
/// The queue delivers the dead worker's job again after its lease, to a worker started after the
/// kill signal (a broadcast it never saw): that copy is stopped as soon as it reports that it
/// started, it never runs to its end (its 3 s shell would, long before the next repeat of the
/// kill signal).
pub async fn worker_dies_while_its_execution_is_killed(mut c: Cluster) {
    crate::scenarios::slow_flow(&c, "slow", 3);
    c.set_env("KESTRA_SERVER_WORKER_TASK_RESTART_STRATEGY", "IMMEDIATELY");
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    let a = c.start("worker", false);
    let id = c.execute(NS, "slow").await;
    c.wait_mark(&format!("{id}.started"), 1, Duration::from_secs(30))
        .await;
    kill_execution(&c, &id).await;
    c.procs[a].kill();
    let b = c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(40))
        .await;
    assert_eq!(ended[0].state.current(), StateType::Killed, "{}", c.logs());
    // Past the liveness timeout and two leases: nothing ran to its end, nothing changed.
    tokio::time::sleep(LIVENESS_TIMEOUT + LEASE * 2).await;
    let after = c.execution(&id).await.expect("the execution");
    assert_eq!(
        after.state.histories(),
        ended[0].state.histories(),
        "ended once{}",
        c.logs()
    );
    let started = c.mark_lines(&format!("{id}.started"));
    let done = c.mark_lines(&format!("{id}.done"));
    eprintln!("[faults] shells started {started:?}, finished {done:?}");
    if started.len() > 1 {
        // Stopped by the kill broadcast again at once (the execution was still KILLING) or by a
        // stop of its attempt (it had ended).
        let log = c.procs[b].log();
        assert!(
            log.contains("one of an ended execution")
                || log.contains("killing running task attempts"),
            "the worker that started the copy says why it stops it{}",
            c.logs()
        );
    }
    assert!(
        done.is_empty(),
        "no copy of the killed task ran to its end: started {started:?}, finished {done:?}{}",
        c.logs()
    );
    let attempts: Vec<Vec<StateType>> = after
        .task_run_list
        .iter()
        .map(|r| r.attempts.iter().map(|a| a.state.current()).collect())
        .collect();
    assert_eq!(
        attempts,
        vec![vec![StateType::Killed]],
        "one attempt, killed, not resubmitted{}",
        c.logs()
    );
    c.check_invariants(&[after]);
    c.finish().await;
}

/// Worker jobs published while no worker runs (only an executor and a scheduler): one of the two
/// executions is killed before any worker claimed its job (it ends KILLED at once, without a
/// worker). Past a lease, a worker starts: the other job runs once and its execution ends SUCCESS;
/// the killed execution's job never runs to its end (its job is still queued: the new worker may
/// start it, and is told to stop it at once) and the killed execution does not change.
pub async fn job_emitted_and_never_claimed(mut c: Cluster) {
    // The killed execution's copy is stopped once the worker reports it started (a round trip
    // through the executor): 8 s leaves room for that on a loaded 2-core machine (3 s did not,
    // once, with a release build beside the suite).
    crate::scenarios::slow_flow(&c, "slow", 8);
    c.start("executor", true);
    c.wait_flow(NS, "slow").await;
    c.start("scheduler", false);
    let doomed = c.execute(NS, "slow").await;
    let waiting = c.execute(NS, "slow").await;
    // Both jobs emitted: their task runs exist.
    wait_until(&c, "the jobs emitted", Duration::from_secs(30), |all| {
        [&doomed, &waiting].iter().all(|id| {
            all.iter()
                .any(|e| &&e.id == id && !e.task_run_list.is_empty())
        })
    })
    .await;
    kill_execution(&c, &doomed).await;
    let killed = c
        .wait_ended(std::slice::from_ref(&doomed), Duration::from_secs(30))
        .await;
    assert_eq!(killed[0].state.current(), StateType::Killed, "{}", c.logs());
    // Unclaimed past a lease.
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    assert!(
        c.mark_lines(&format!("{waiting}.started")).is_empty(),
        "no worker yet"
    );
    let worker = c.start("worker", false);
    let ended = c
        .wait_ended(std::slice::from_ref(&waiting), Duration::from_secs(30))
        .await;
    assert_eq!(ended[0].state.current(), StateType::Success, "{}", c.logs());
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        c.mark_lines(&format!("{waiting}.started")).len(),
        1,
        "the waiting job ran once"
    );
    // The killed execution's job is still in the queue (nothing takes it out when the executor
    // kills an execution whose job no worker claimed) and the new worker never saw the kill
    // signal: it may start it, and is told to stop it as soon as it reports so. It never runs
    // to its end.
    let doomed_started = c.mark_lines(&format!("{doomed}.started"));
    let doomed_done = c.mark_lines(&format!("{doomed}.done"));
    eprintln!(
        "[faults] killed before claimed: shells started {doomed_started:?}, finished {doomed_done:?}"
    );
    assert!(
        doomed_done.is_empty(),
        "the killed execution's job never ran to its end: started {doomed_started:?}, finished {doomed_done:?}{}",
        c.logs()
    );
    if !doomed_started.is_empty() {
        assert!(
            c.procs[worker].log().contains("one of an ended execution"),
            "the worker says why it stops it{}",
            c.logs()
        );
    }
    let both = vec![
        c.execution(&doomed).await.expect("doomed"),
        c.execution(&waiting).await.expect("waiting"),
    ];
    assert_eq!(
        both[0].state.histories(),
        killed[0].state.histories(),
        "the killed execution ended once"
    );
    c.check_invariants(&both);
    c.finish().await;
}
