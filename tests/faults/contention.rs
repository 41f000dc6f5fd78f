//! Three executors with injected serialization failures and deadlocks: the executors' claims and
//! units of work fail now and then with a real transient database error (the testkit's
//! `KESTRA_TESTKIT_TXN_FAULTS`, see `kestra_backend_jdbc::testkit`), so the backend's error
//! classification, retries, rollbacks and claim releases run under contention; every execution
//! still ends once, nothing is lost or doubled, and the concurrency limit holds.

use std::time::Duration;

use kestra::core::model::{Execution, StateType};
use kestra::jdbc::testkit::{INJECTED, TXN_FAULTS_ENV};

use crate::harness::{Cluster, most_at_once, states};

const NS: &str = "faults";

/// The probability that an executor claim fails somewhere in its life (one draw per claim).
const PROBABILITY: &str = "0.3";
/// What an executor logs when a unit of work failed (it is rolled back and processed again).
const UNIT_FAILED: &str = "executor unit of work failed; retrying";
/// The concurrency limit of the `limited` flow.
const LIMIT: usize = 2;

/// The flows, their executions and how many task runs each execution ends with.
const FLOWS: &[(&str, usize, usize, &str)] = &[
    (
        "steps",
        18,
        3,
        r#"tasks:
  - id: one
    type: io.kestra.plugin.core.debug.Return
    format: "one {{ execution.id }}"
  - id: two
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.one.value }} two"
  - id: three
    type: io.kestra.plugin.core.log.Log
    message: "{{ outputs.two.value }}"
"#,
    ),
    (
        "fan",
        16,
        5,
        r#"tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: left
        type: io.kestra.plugin.core.debug.Return
        format: left
      - id: middle
        type: io.kestra.plugin.core.log.Log
        message: middle
      - id: right
        type: io.kestra.plugin.core.debug.Return
        format: right
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.left.value }} {{ outputs.right.value }}"
"#,
    ),
    (
        "limited",
        14,
        1,
        r#"concurrency:
  limit: 2
  behavior: QUEUE
tasks:
  - id: hold
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.2S
"#,
    ),
];

/// Three executors and two workers, every executor claim failing with probability
/// [`PROBABILITY`] (at the claim, after locking the claimed rows, before a load, before a save or
/// at commit; PostgreSQL and MariaDB raise the error themselves, SQLite's busy error is built in
/// the process): every execution ends SUCCESS once with all its task runs, none is lost or
/// doubled, the `limited` flow never ran more than [`LIMIT`] at once, and failures were really
/// injected (counted from the processes' logs).
pub async fn executors_with_transaction_faults(mut c: Cluster) {
    for (id, _, _, tasks) in FLOWS {
        c.flow(id, &format!("id: {id}\nnamespace: {NS}\n{tasks}"));
    }
    // The workers are not armed (the faults live in the executor's claims and units only).
    c.start("worker", false);
    c.start("worker", false);
    c.set_env(TXN_FAULTS_ENV, PROBABILITY);
    let executors = [
        c.start("executor", true),
        c.start("executor", false),
        c.start("executor", false),
    ];
    for (id, _, _, _) in FLOWS {
        c.wait_flow(NS, id).await;
    }
    let mut ids = Vec::new();
    let most = FLOWS.iter().map(|(_, n, _, _)| *n).max().unwrap_or(0);
    for round in 0..most {
        for (id, n, _, _) in FLOWS {
            if round < *n {
                ids.push(c.execute(NS, id).await);
            }
        }
    }
    let ended = c.wait_ended(&ids, Duration::from_secs(120)).await;
    assert!(
        ended
            .iter()
            .all(|e| e.state.current() == StateType::Success),
        "every execution succeeds: {:?}{}",
        states(&ended),
        c.logs()
    );
    for e in &ended {
        let (_, _, runs, _) = FLOWS
            .iter()
            .find(|(id, _, _, _)| *id == e.flow_id)
            .expect("a known flow");
        assert_eq!(
            e.task_run_list.len(),
            *runs,
            "{} task runs in {} ({}): {:?}",
            runs,
            e.id,
            e.flow_id,
            e.task_run_list
                .iter()
                .map(|r| &r.task_id)
                .collect::<Vec<_>>()
        );
    }
    c.check_invariants(&ended);
    let all = c.executions_of(NS).await;
    assert_eq!(
        all.len(),
        ids.len(),
        "no execution appeared twice or from nowhere"
    );
    let limited: Vec<Execution> = ended
        .iter()
        .filter(|e| e.flow_id == "limited")
        .cloned()
        .collect();
    let at_once = most_at_once(&limited);
    assert!(
        at_once <= LIMIT,
        "{at_once} executions of the limited flow ran at once (limit {LIMIT})"
    );
    // The faults really happened, in every executor, at several places.
    let mut by_point = std::collections::BTreeMap::new();
    let mut per_executor = Vec::new();
    let mut failed_units = Vec::new();
    for &i in &executors {
        let log = c.procs[i].log();
        failed_units.extend(
            log.lines()
                .filter(|l| l.contains(UNIT_FAILED))
                .map(str::to_string),
        );
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(INJECTED)).collect();
        per_executor.push(lines.len());
        for line in lines {
            let point = line
                .split("point=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("?")
                .trim_matches('"')
                .to_string();
            *by_point.entry(point).or_insert(0usize) += 1;
        }
    }
    let injected: usize = per_executor.iter().sum();
    eprintln!(
        "[faults] {} executions ended; {injected} transaction failures injected (per executor {per_executor:?}, by place {by_point:?}), {} units failed and were processed again; limited flow at most {at_once} at once",
        ended.len(),
        failed_units.len()
    );
    assert!(
        injected > 0 && by_point.len() >= 2,
        "transaction failures were injected at several places: {by_point:?}{}",
        c.logs()
    );
    // A failure at the claim or right after it was classified transient and retried inside
    // `Queue::begin` (a failure there that is not retried fails `begin`, logged by the executor).
    let begin_failed: Vec<&String> = failed_units
        .iter()
        .filter(|l| l.contains("during begin") || l.contains("during receive"))
        .collect();
    assert!(
        begin_failed.is_empty(),
        "the claim's transient failures are retried by `begin`: {begin_failed:#?}"
    );
    // A failure inside a unit (load, save, commit) failed the unit, which was rolled back and
    // processed again (the injected error is the database's, with its transient code).
    let in_unit: usize = ["load", "save", "commit"]
        .iter()
        .map(|p| by_point.get(*p).copied().unwrap_or(0))
        .sum();
    // Genuine conflicts between the three executors (a real deadlock on MariaDB) may fail units
    // too: they must be transient ones, handled the same way; the injected ones are counted.
    let (injected_units, genuine): (Vec<&String>, Vec<&String>) =
        failed_units.iter().partition(|l| l.contains("injected"));
    assert!(
        genuine.iter().all(|l| {
            [
                "(40001)",
                "(40P01)",
                "Deadlock found",
                "deadlock detected",
                "could not serialize",
                "database is locked",
            ]
            .iter()
            .any(|k| l.contains(k))
        }),
        "units failed only by transient conflicts besides the injected ones: {genuine:#?}"
    );
    assert_eq!(
        injected_units.len(),
        in_unit,
        "one failed unit per failure injected inside a unit: {injected_units:#?}"
    );
    if let Some(sample) = failed_units.first() {
        eprintln!("[faults] e.g. {sample}");
    }
    c.finish().await;
}
