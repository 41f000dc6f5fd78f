//! What the Kafka fault tests share: the broker of `scripts/services.sh`, and the check that a run of
//! 2-task executions lost and doubled nothing.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashSet;

use kestra_core::model::{Execution, StateType};

/// The shared broker (`KESTRA_TEST_KAFKA_BROKERS`), or `None` (loudly; a panic under CI=true).
pub fn brokers() -> Option<String> {
    match std::env::var("KESTRA_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "KESTRA_TEST_KAFKA_BROKERS is not set under CI=true: run `eval \"$(scripts/services.sh)\"` first"
            );
            eprintln!(
                "\n!!!!! SKIPPED: KESTRA_TEST_KAFKA_BROKERS is not set; run `eval \"$(scripts/services.sh)\"` to test the Kafka backend !!!!!\n"
            );
            None
        }
    }
}

/// How many of `ids` have ended in `executions`.
pub fn ended(executions: &[Execution], ids: &HashSet<String>) -> usize {
    executions
        .iter()
        .filter(|e| ids.contains(&e.id) && e.state.is_terminated())
        .count()
}

/// None lost, none doubled: `executions` (the executor state) holds exactly the started `ids` of
/// flow `two` (`n` of them), each SUCCESS, ended once, with two task runs, each SUCCESS once.
pub fn assert_each_ended_once(executions: &[Execution], ids: &HashSet<String>, n: usize) {
    let mine: Vec<&Execution> = executions.iter().filter(|e| ids.contains(&e.id)).collect();
    assert_eq!(
        mine.len(),
        n,
        "every execution is in the executor state, once"
    );
    assert_eq!(
        executions.iter().filter(|e| e.flow_id == "two").count(),
        n,
        "no execution was created twice"
    );
    for e in &mine {
        assert_eq!(e.state.current(), StateType::Success, "execution {}", e.id);
        let ends = e
            .state
            .histories()
            .iter()
            .filter(|h| h.state.is_terminated())
            .count();
        assert_eq!(ends, 1, "execution {} ended once: {:?}", e.id, e.state);
        assert_eq!(e.task_run_list.len(), 2, "execution {}", e.id);
        for tr in &e.task_run_list {
            let successes = tr
                .state
                .histories()
                .iter()
                .filter(|h| h.state == StateType::Success)
                .count();
            assert_eq!(
                successes, 1,
                "task run {} of {}: {:?}",
                tr.id, e.id, tr.state
            );
        }
    }
}
