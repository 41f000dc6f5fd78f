//! Resubmission of a dead worker's attempt (issue 14), on the executor's pure `process` and the
//! liveness stage's pure `resubmit_commands`: the old attempt ends RESUBMITTED and a new attempt is
//! dispatched; never for an ended or killed execution; a late result of the old attempt is dropped;
//! past the maximum the task run fails with a clear error; the strategies decide when.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kestra_core::executor::FlowIndex;
use kestra_core::executor::process::{Outcome, process};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::liveness::{
    HeldJob, LivenessState, RestartStrategy, ResubmitConfig, resubmit_commands,
};
use kestra_core::messages::{ExecutionCommand, ExecutorEvent, WorkerTask, WorkerTaskResult};
use kestra_core::model::{Execution, ServiceInstance, ServiceState, ServiceType, State, StateType};

const FLOW: &str = "id: f\nnamespace: tests.resubmit\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n";

struct Sim {
    index: FlowIndex,
    expr: ExpressionEngine,
    execution: Execution,
}

impl Sim {
    /// The flow started: its one job is dispatched and returned.
    fn dispatched() -> (Sim, WorkerTask) {
        let registry = TaskRegistry::default();
        let flow = parse_flow(FLOW, &registry).unwrap();
        let index = FlowIndex::new(Arc::new(flow), &registry).unwrap();
        let execution = Execution::new(index.flow.namespace.clone(), index.flow.id.clone(), 1);
        let mut sim = Sim {
            index,
            expr: ExpressionEngine::default(),
            execution: execution.clone(),
        };
        let mut out = sim.apply(None, ExecutorEvent::Execution(Box::new(execution)));
        assert_eq!(out.worker_tasks.len(), 1);
        let job = out.worker_tasks.remove(0);
        sim.execution = out.execution;
        (sim, job)
    }

    fn apply(&self, current: Option<Execution>, event: ExecutorEvent) -> Outcome {
        process(&self.index, &self.expr, Utc::now(), current, &event).expect("an outcome")
    }

    /// Apply `event` to the current execution and keep the result.
    fn step(&mut self, event: ExecutorEvent) -> Outcome {
        let out = self.apply(Some(self.execution.clone()), event);
        self.execution = out.execution.clone();
        out
    }

    fn running(&mut self, job: &WorkerTask, worker: &str) {
        let r = WorkerTaskResult::running(
            job,
            State::new_at(StateType::Running, Utc::now()),
            Some(worker.into()),
        );
        let out = self.step(ExecutorEvent::WorkerResult(Box::new(r)));
        assert!(out.ignored.is_none(), "{:?}", out.ignored);
    }

    fn result(job: &WorkerTask, state: StateType) -> ExecutorEvent {
        let mut attempt_state = State::new();
        attempt_state.transition(StateType::Running).unwrap();
        attempt_state.transition(state).unwrap();
        ExecutorEvent::WorkerResult(Box::new(WorkerTaskResult {
            execution_id: job.task_run.execution_id.clone(),
            task_run_id: job.task_run.id.clone(),
            attempt: job.attempt,
            state,
            attempt_state,
            outputs: None,
            child_task_runs: Vec::new(),
            worker_id: Some("w".into()),
        }))
    }

    fn resubmit(&self, job: &WorkerTask, max: u32) -> ExecutorEvent {
        ExecutorEvent::Command(ExecutionCommand::Resubmit {
            execution_id: self.execution.id.clone(),
            task_run_id: job.task_run.id.clone(),
            attempt: Some(job.attempt),
            worker_id: Some("dead-worker".into()),
            max_resubmissions: max,
        })
    }

    fn attempts(&self) -> Vec<StateType> {
        self.execution.task_run_list[0]
            .attempts
            .iter()
            .map(|a| a.state.current())
            .collect()
    }
}

#[test]
fn a_running_attempt_is_marked_resubmitted_and_a_new_attempt_is_dispatched() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    let out = sim.step(sim.resubmit(&job, 3));
    assert!(out.ignored.is_none(), "{:?}", out.ignored);
    assert!(out.changed);
    assert_eq!(out.worker_tasks.len(), 1, "a new job");
    let again = &out.worker_tasks[0];
    assert_eq!(again.attempt, 2);
    assert_eq!(again.key(), format!("{}/2", job.task_run.id));
    assert_eq!(
        sim.attempts(),
        vec![StateType::Resubmitted, StateType::Created]
    );
    let run = &sim.execution.task_run_list[0];
    assert_eq!(run.current(), StateType::Resubmitted, "waits for a worker");
    assert!(
        out.logs
            .iter()
            .any(|l| l.message.contains("dead-worker") && l.message.contains("resubmitted")),
        "a WARN line says why: {:?}",
        out.logs
    );
    // The new attempt runs and succeeds; the execution ends SUCCESS.
    let again = again.clone();
    sim.running(&again, "worker-2");
    sim.step(Sim::result(&again, StateType::Success));
    assert_eq!(
        sim.attempts(),
        vec![StateType::Resubmitted, StateType::Success]
    );
    assert_eq!(sim.execution.current(), StateType::Success);
}

#[test]
fn an_attempt_never_started_by_its_dead_worker_is_resubmitted_too() {
    let (mut sim, job) = Sim::dispatched();
    let out = sim.step(sim.resubmit(&job, 3));
    assert!(out.ignored.is_none(), "{:?}", out.ignored);
    assert_eq!(out.worker_tasks.len(), 1);
    assert_eq!(
        sim.attempts(),
        vec![StateType::Resubmitted, StateType::Created]
    );
}

#[test]
fn a_late_result_of_the_resubmitted_attempt_is_dropped() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    sim.step(sim.resubmit(&job, 3));
    let before = sim.execution.clone();
    let out = sim.apply(Some(before.clone()), Sim::result(&job, StateType::Success));
    assert!(!out.changed, "the zombie's result changes nothing");
    assert!(
        out.ignored.as_deref().is_some_and(|w| w.contains("stale")),
        "{:?}",
        out.ignored
    );
    assert_eq!(out.execution, before);
    // Its late RUNNING too.
    let running = WorkerTaskResult::running(
        &job,
        State::new_at(StateType::Running, Utc::now()),
        Some("dead-worker".into()),
    );
    let out = sim.apply(Some(before), ExecutorEvent::WorkerResult(Box::new(running)));
    assert!(!out.changed);
}

#[test]
fn a_worker_starting_a_stale_copy_of_the_resubmitted_attempt_is_told_to_stop_it() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    sim.step(sim.resubmit(&job, 3));
    // The old job, delivered again by the queue, is started by another worker.
    let running = WorkerTaskResult::running(
        &job,
        State::new_at(StateType::Running, Utc::now()),
        Some("worker-3".into()),
    );
    let out = sim.apply(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(running)),
    );
    assert!(!out.changed);
    assert_eq!(out.stale_attempts, vec![job.key()], "stop attempt 1");
    // A stale RUNNING of an attempt that was not resubmitted (a retried one) is only dropped.
    let (sim, job) = Sim::dispatched();
    let mut other = WorkerTaskResult::running(
        &job,
        State::new_at(StateType::Running, Utc::now()),
        Some("w".into()),
    );
    other.attempt = 2;
    let out = sim.apply(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(other)),
    );
    assert!(out.stale_attempts.is_empty());
}

#[test]
fn a_duplicate_or_stale_resubmit_is_ignored() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    sim.step(sim.resubmit(&job, 3));
    // The same command delivered twice: attempt 1 is not the current attempt any more.
    let out = sim.apply(Some(sim.execution.clone()), sim.resubmit(&job, 3));
    assert!(!out.changed);
    assert!(out.worker_tasks.is_empty());
    assert!(out.ignored.is_some());
}

#[test]
fn an_attempt_taken_over_by_another_worker_is_not_resubmitted() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    // The lease ran out first: the queue delivered the job again to worker-2, which says RUNNING.
    let r = WorkerTaskResult::running(
        &job,
        State::new_at(StateType::Running, Utc::now()),
        Some("worker-2".into()),
    );
    let out = sim.step(ExecutorEvent::WorkerResult(Box::new(r)));
    assert!(out.changed, "the attempt records its new worker");
    assert!(out.worker_tasks.is_empty());
    assert_eq!(
        sim.execution.task_run_list[0].attempts[0]
            .worker_id
            .as_deref(),
        Some("worker-2")
    );
    let out = sim.apply(Some(sim.execution.clone()), sim.resubmit(&job, 3));
    assert!(!out.changed, "worker-2 runs it: no second copy");
    assert!(out.worker_tasks.is_empty());
    assert!(
        out.ignored
            .as_deref()
            .is_some_and(|w| w.contains("taken over by worker worker-2")),
        "{:?}",
        out.ignored
    );
    // worker-2 finishes it.
    sim.step(Sim::result(&job, StateType::Success));
    assert_eq!(sim.execution.current(), StateType::Success);
}

#[test]
fn an_attempt_that_ended_is_not_resubmitted() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "w");
    sim.step(Sim::result(&job, StateType::Success));
    assert_eq!(sim.execution.current(), StateType::Success);
    let out = sim.apply(Some(sim.execution.clone()), sim.resubmit(&job, 3));
    assert!(!out.changed, "an ended execution is never resubmitted");
    assert!(out.worker_tasks.is_empty());
    assert!(out.ignored.is_some());
}

#[test]
fn a_killing_execution_is_not_resubmitted() {
    let (mut sim, job) = Sim::dispatched();
    sim.running(&job, "dead-worker");
    sim.step(ExecutorEvent::Command(ExecutionCommand::Kill {
        execution_id: sim.execution.id.clone(),
    }));
    assert_eq!(sim.execution.current(), StateType::Killing);
    let out = sim.apply(Some(sim.execution.clone()), sim.resubmit(&job, 3));
    assert!(!out.changed);
    assert!(out.worker_tasks.is_empty());
    assert!(
        out.ignored
            .as_deref()
            .is_some_and(|w| w.contains("KILLING")),
        "{:?}",
        out.ignored
    );
}

#[test]
fn past_the_maximum_the_task_run_fails_with_a_clear_error() {
    let (mut sim, mut job) = Sim::dispatched();
    for n in 1..=2u32 {
        // Each new attempt lands on a worker that dies too (all named as the command says).
        sim.running(&job, "dead-worker");
        let out = sim.step(sim.resubmit(&job, 2));
        assert_eq!(out.worker_tasks.len(), 1, "resubmission {n}");
        job = out.worker_tasks[0].clone();
    }
    sim.running(&job, "dead-worker");
    let out = sim.step(sim.resubmit(&job, 2));
    assert!(out.worker_tasks.is_empty(), "not resubmitted a third time");
    assert_eq!(
        sim.attempts(),
        vec![
            StateType::Resubmitted,
            StateType::Resubmitted,
            StateType::Failed
        ]
    );
    assert_eq!(sim.execution.task_run_list[0].current(), StateType::Failed);
    assert_eq!(sim.execution.current(), StateType::Failed);
    let error = out
        .logs
        .iter()
        .find(|l| l.level == kestra_core::model::Level::Error)
        .expect("an ERROR line");
    assert!(
        error.message.contains("resubmitted 2 time(s)")
            && error.message.contains("maximum 2")
            && error.message.contains("dead-worker"),
        "{}",
        error.message
    );
}

fn dead_worker(jobs: &[(&str, Option<&str>)]) -> LivenessState {
    let now = Utc::now();
    LivenessState {
        instance: ServiceInstance {
            id: "w1".into(),
            type_: ServiceType::Worker,
            state: ServiceState::NotRunning,
            hostname: "h".into(),
            created_date: now,
            updated_date: now,
            props: serde_json::Map::new(),
        },
        last_seen: now,
        jobs: jobs
            .iter()
            .map(|(key, execution)| {
                (
                    key.to_string(),
                    HeldJob {
                        key: key.to_string(),
                        execution_id: execution.map(str::to_string),
                        taken_at: now,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        check_pending: false,
    }
}

#[test]
fn each_strategy_resubmits_when_it_says() {
    let dead = dead_worker(&[("tr1/2", Some("ex1")), ("trigger-uid", None)]);
    let now = Utc::now();
    let config = |strategy| ResubmitConfig {
        strategy,
        grace_period: Duration::from_secs(60),
        max_resubmissions: 3,
    };
    let immediately = resubmit_commands(&dead, &config(RestartStrategy::Immediately), now);
    assert_eq!(
        immediately,
        vec![(
            ExecutionCommand::Resubmit {
                execution_id: "ex1".into(),
                task_run_id: "tr1".into(),
                attempt: Some(2),
                worker_id: Some("w1".into()),
                max_resubmissions: 3,
            },
            None
        )],
        "one command per task job, now; the trigger evaluation is not a task"
    );
    let after = resubmit_commands(
        &dead,
        &config(RestartStrategy::AfterTerminationGracePeriod),
        now,
    );
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, Some(now + chrono::Duration::seconds(60)));
    assert!(resubmit_commands(&dead, &config(RestartStrategy::Never), now).is_empty());
    assert_eq!(
        ResubmitConfig::default().strategy,
        RestartStrategy::AfterTerminationGracePeriod
    );
}

#[test]
fn strategies_parse_by_their_kestra_names() {
    for (text, strategy) in [
        ("IMMEDIATELY", RestartStrategy::Immediately),
        (
            "after_termination_grace_period",
            RestartStrategy::AfterTerminationGracePeriod,
        ),
        ("NEVER", RestartStrategy::Never),
    ] {
        assert_eq!(text.parse::<RestartStrategy>(), Ok(strategy));
    }
    let err = "SOMETIMES".parse::<RestartStrategy>().unwrap_err();
    assert!(
        err.contains("SOMETIMES") && err.contains("IMMEDIATELY"),
        "{err}"
    );
}
