//! The executor's pure `process`, driven in memory: a fake worker answers each job according to the
//! task type (Return renders `format`, Fail fails, Log succeeds), so these tests pin the orchestration
//! rules without any backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use kestra_core::executor::FlowIndex;
use kestra_core::executor::process::{RunPositions, process, process_keeping};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::messages::{ExecutionCommand, ExecutorEvent, WorkerTask, WorkerTaskResult};
use kestra_core::model::{Execution, State, StateType};
use serde_json::{Map, Value, json};

struct Sim {
    index: FlowIndex,
    expr: ExpressionEngine,
    execution: Execution,
    pending: Vec<WorkerTask>,
    fail_attempts: std::collections::HashMap<String, u32>,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let registry = TaskRegistry::default();
        let flow = parse_flow(yaml, &registry).unwrap_or_else(|e| panic!("{e}"));
        let index = FlowIndex::new(Arc::new(flow), &registry).unwrap();
        let execution = Execution::new(index.flow.namespace.clone(), index.flow.id.clone(), 1);
        Sim {
            index,
            expr: ExpressionEngine::default(),
            execution,
            pending: Vec::new(),
            fail_attempts: Default::default(),
        }
    }

    fn inputs(mut self, inputs: Value) -> Sim {
        self.execution.inputs = inputs.as_object().cloned().unwrap_or_default();
        self
    }

    fn step(&mut self, current: Option<Execution>, event: ExecutorEvent) {
        let before = current.clone();
        let mut positions = RunPositions::default();
        let out = process_keeping(
            &self.index,
            &self.expr,
            Utc::now(),
            current,
            &event,
            &mut positions,
        )
        .expect("outcome");
        assert_changes_listed(before.as_ref(), &out.execution, positions.take_changed());
        self.execution = out.execution;
        self.pending.extend(out.worker_tasks);
    }

    fn worker(&mut self, job: &WorkerTask) -> WorkerTaskResult {
        let ty = job
            .task
            .task_type
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut outputs = None;
        let state = match ty.as_str() {
            "Return" => {
                let format = job
                    .task
                    .properties
                    .get("format")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                match self.expr.render(format, &job.context) {
                    Ok(v) => {
                        let mut m = Map::new();
                        m.insert("value".into(), json!(v));
                        outputs = Some(m);
                        StateType::Success
                    }
                    Err(_) => StateType::Failed,
                }
            }
            "Fail" => StateType::Failed,
            "Flaky" => StateType::Failed,
            _ => {
                // Tasks whose id starts with "flaky" fail on their first N attempts (N = digit suffix).
                if let Some(n) = job
                    .task
                    .id
                    .strip_prefix("flaky")
                    .and_then(|d| d.parse::<u32>().ok())
                {
                    let seen = self
                        .fail_attempts
                        .entry(job.task_run.id.clone())
                        .or_default();
                    *seen += 1;
                    if *seen <= n {
                        StateType::Failed
                    } else {
                        StateType::Success
                    }
                } else {
                    StateType::Success
                }
            }
        };
        let mut attempt_state = State::new();
        attempt_state.transition(StateType::Running).unwrap();
        attempt_state.transition(state).unwrap();
        WorkerTaskResult {
            execution_id: job.task_run.execution_id.clone(),
            task_run_id: job.task_run.id.clone(),
            attempt: job.attempt,
            state,
            attempt_state,
            outputs,
            child_task_runs: Vec::new(),
            worker_id: None,
        }
    }

    /// The RUNNING message of a worker that starts `job` at `at`.
    fn started_at(job: &WorkerTask, at: chrono::DateTime<Utc>) -> WorkerTaskResult {
        WorkerTaskResult::running(
            job,
            State::new_at(StateType::Running, at),
            Some("worker-1".into()),
        )
    }

    /// A worker starts `job` now: its RUNNING message is processed.
    fn start(&mut self, job: &WorkerTask) {
        let running = Sim::started_at(job, Utc::now());
        let current = Some(self.execution.clone());
        self.step(current, ExecutorEvent::WorkerResult(Box::new(running)));
    }

    /// Run to completion: start, then answer jobs one at a time (FIFO: RUNNING, then the final
    /// result); retries are fired at once.
    fn run(mut self) -> Sim {
        let start = self.execution.clone();
        self.step(None, ExecutorEvent::Execution(Box::new(start)));
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 10_000, "did not converge");
            if !self.pending.is_empty() {
                let job = self.pending.remove(0);
                self.start(&job);
                let result = self.worker(&job);
                let current = Some(self.execution.clone());
                self.step(current, ExecutorEvent::WorkerResult(Box::new(result)));
                continue;
            }
            // fire due retries
            let retrying: Vec<_> = self
                .execution
                .task_run_list
                .iter()
                .filter(|r| r.current() == StateType::Retrying)
                .map(|r| (r.id.clone(), r.attempts.len() as u32 + 1))
                .collect();
            if retrying.is_empty() {
                break;
            }
            for (id, attempt) in retrying {
                let cmd = ExecutionCommand::RetryDue {
                    execution_id: self.execution.id.clone(),
                    task_run_id: id,
                    attempt,
                };
                let current = Some(self.execution.clone());
                self.step(current, ExecutorEvent::Command(cmd));
            }
        }
        self
    }

    fn state(&self) -> StateType {
        self.execution.current()
    }

    fn runs(&self, task_id: &str) -> Vec<&kestra_core::model::TaskRun> {
        self.execution
            .task_run_list
            .iter()
            .filter(|r| r.task_id == task_id)
            .collect()
    }

    fn run_state(&self, task_id: &str) -> StateType {
        let runs = self.runs(task_id);
        assert_eq!(
            runs.len(),
            1,
            "expected one task run of {task_id}, got {}",
            runs.len()
        );
        runs[0].current()
    }
}

const HEAD: &str = "id: f\nnamespace: tests.pure\n";

#[test]
fn sequential_tasks_see_previous_outputs() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: hello\n  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.a.value }}}} world\"\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.execution.task_run_list.len(), 2);
    let b = sim.runs("b")[0];
    assert_eq!(b.outputs.as_ref().unwrap()["value"], "hello world");
    // creation order = flow order
    assert_eq!(sim.execution.task_run_list[0].task_id, "a");
}

#[test]
fn failure_stops_tasks_runs_errors_and_finally() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.execution.Fail\n  - id: never\n    type: io.kestra.plugin.core.log.Log\n    message: x\nerrors:\n  - id: e1\n    type: io.kestra.plugin.core.log.Log\n    message: err\nfinally:\n  - id: fin\n    type: io.kestra.plugin.core.log.Log\n    message: fin\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Failed);
    assert!(sim.runs("never").is_empty());
    assert_eq!(sim.run_state("e1"), StateType::Success);
    assert_eq!(sim.run_state("fin"), StateType::Success);
    assert_eq!(sim.execution.task_run_list.len(), 3);
}

#[test]
fn run_if_false_skips_and_disabled_creates_nothing() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    runIf: \"{{{{ 1 == 2 }}}}\"\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    disabled: true\n  - id: c\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    runIf: \"0\"\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.run_state("a"), StateType::Skipped);
    assert!(sim.runs("b").is_empty());
    assert_eq!(sim.run_state("c"), StateType::Skipped);
}

#[test]
fn allow_failure_gives_warning() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.execution.Fail\n    allowFailure: true\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ))
    .run();
    assert_eq!(sim.run_state("a"), StateType::Warning);
    assert_eq!(sim.run_state("b"), StateType::Success);
    assert_eq!(sim.state(), StateType::Warning);
}

#[test]
fn allow_failure_flowable_and_parallel() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: af\n    type: io.kestra.plugin.core.flow.AllowFailure\n    tasks:\n      - id: p\n        type: io.kestra.plugin.core.flow.Parallel\n        tasks:\n          - id: ok\n            type: io.kestra.plugin.core.log.Log\n            message: x\n          - id: ko\n            type: io.kestra.plugin.core.execution.Fail\n"
    ))
    .run();
    assert_eq!(sim.run_state("p"), StateType::Failed);
    assert_eq!(sim.run_state("af"), StateType::Warning);
    assert_eq!(sim.state(), StateType::Warning);
}

#[test]
fn switch_if_and_outputs() {
    let sim = Sim::new(&format!(
        "{HEAD}inputs:\n  - id: v\n    type: STRING\ntasks:\n  - id: sw\n    type: io.kestra.plugin.core.flow.Switch\n    value: \"{{{{ inputs.v }}}}\"\n    cases:\n      A:\n        - id: ca\n          type: io.kestra.plugin.core.log.Log\n          message: a\n    defaults:\n      - id: cd\n        type: io.kestra.plugin.core.log.Log\n        message: d\n  - id: cond\n    type: io.kestra.plugin.core.flow.If\n    condition: \"{{{{ inputs.v == 'A' }}}}\"\n    then:\n      - id: t\n        type: io.kestra.plugin.core.log.Log\n        message: t\n    else:\n      - id: e\n        type: io.kestra.plugin.core.log.Log\n        message: e\n"
    ))
    .inputs(json!({"v": "A"}))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.run_state("ca"), StateType::Success);
    assert!(sim.runs("cd").is_empty());
    assert_eq!(sim.runs("sw")[0].outputs.as_ref().unwrap()["value"], "A");
    assert_eq!(sim.run_state("t"), StateType::Success);
    assert!(sim.runs("e").is_empty());
}

#[test]
fn switch_without_match_or_defaults_fails() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: sw\n    type: io.kestra.plugin.core.flow.Switch\n    value: Z\n    cases:\n      A:\n        - id: ca\n          type: io.kestra.plugin.core.log.Log\n          message: a\n"
    ))
    .run();
    assert_eq!(sim.run_state("sw"), StateType::Failed);
    assert_eq!(sim.state(), StateType::Failed);
}

#[test]
fn for_each_runs_body_per_value_with_outputs_keyed_by_value() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [\"a\", \"b\", \"c\"]\n    concurrencyLimit: 0\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"v={{{{ taskrun.value }}}}\"\n      - id: l\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ outputs.r[taskrun.value].value }}}}!\"\n  - id: after\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ outputs.r.b.value }}}}\"\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.execution.task_run_list.len(), 1 + 6 + 1);
    let l_b = sim
        .runs("l")
        .into_iter()
        .find(|r| r.value.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(l_b.outputs.as_ref().unwrap()["value"], "v=b!");
    assert_eq!(
        sim.runs("after")[0].outputs.as_ref().unwrap()["value"],
        "v=b"
    );
}

#[test]
fn nested_for_each_sees_parent_value() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: outer\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [1, 2]\n    tasks:\n      - id: inner\n        type: io.kestra.plugin.core.flow.ForEach\n        values: [\"x\", \"y\"]\n        tasks:\n          - id: r\n            type: io.kestra.plugin.core.debug.Return\n            format: \"{{{{ parent.taskrun.value }}}}-{{{{ taskrun.value }}}}\"\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    let mut values: Vec<String> = sim
        .runs("r")
        .iter()
        .map(|r| {
            r.outputs.as_ref().unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    values.sort();
    assert_eq!(values, vec!["1-x", "1-y", "2-x", "2-y"]);
    // 1 outer + 2 inner + 4 r
    assert_eq!(sim.execution.task_run_list.len(), 7);
}

#[test]
fn dag_respects_dependencies() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: dag\n    type: io.kestra.plugin.core.flow.Dag\n    tasks:\n      - task:\n          id: c\n          type: io.kestra.plugin.core.log.Log\n          message: c\n        dependsOn: [a, b]\n      - task:\n          id: a\n          type: io.kestra.plugin.core.log.Log\n          message: a\n      - task:\n          id: b\n          type: io.kestra.plugin.core.log.Log\n          message: b\n        dependsOn: [a]\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    let order: Vec<&str> = sim
        .execution
        .task_run_list
        .iter()
        .map(|r| r.task_id.as_str())
        .collect();
    assert_eq!(order, vec!["dag", "a", "b", "c"]);
}

#[test]
fn retries_make_new_attempts_on_the_same_task_run() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: flaky2\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    retry:\n      type: constant\n      interval: PT0.1S\n      maxAttempts: 5\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    let run = sim.runs("flaky2")[0];
    assert_eq!(run.attempts.len(), 3);
    assert_eq!(run.current(), StateType::Success);
}

#[test]
fn retries_stop_at_max_attempts_and_warning_on_retry() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: flaky9\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    retry:\n      type: constant\n      interval: PT0.1S\n      maxAttempt: 3\n  - id: never\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Failed);
    assert_eq!(sim.runs("flaky9")[0].attempts.len(), 3);
    assert!(sim.runs("never").is_empty());

    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: flaky1\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    retry:\n      type: exponential\n      interval: PT0.1S\n      maxInterval: PT1S\n      maxAttempts: 3\n      warningOnRetry: true\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Warning);
}

#[test]
fn duplicate_and_stale_results_are_dropped() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: y\n"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    let job = sim.pending.remove(0);
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result.clone())),
    );
    let snapshot = sim.execution.clone();
    let again = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(snapshot.clone()),
        &ExecutorEvent::WorkerResult(Box::new(result)),
    )
    .unwrap();
    assert!(!again.changed, "a duplicate result changes nothing");
    assert!(again.worker_tasks.is_empty());
    assert!(again.ignored.is_some());
    // a stale attempt number is refused as well
    let job_b = sim.pending[0].clone();
    let mut stale = sim.worker(&job_b);
    stale.attempt = 7;
    let out = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(snapshot),
        &ExecutorEvent::WorkerResult(Box::new(stale)),
    )
    .unwrap();
    assert!(!out.changed);
}

#[test]
fn processing_is_idempotent_for_a_redelivered_creation() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start.clone())));
    let again = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Execution(Box::new(start)),
    )
    .unwrap();
    assert!(!again.changed);
    assert!(again.worker_tasks.is_empty());
}

#[test]
fn kill_ends_pending_task_runs_killed() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: p\n    type: io.kestra.plugin.core.flow.Parallel\n    concurrent: 1\n    tasks:\n      - id: a\n        type: io.kestra.plugin.core.log.Log\n        message: x\n      - id: b\n        type: io.kestra.plugin.core.log.Log\n        message: y\n  - id: never\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    assert_eq!(sim.pending.len(), 1, "concurrent: 1 starts one child");
    let running = sim.pending[0].clone();
    sim.start(&running);
    let kill = ExecutionCommand::Kill {
        execution_id: sim.execution.id.clone(),
    };
    let out = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(kill),
    )
    .unwrap();
    assert!(out.kill_broadcast);
    assert_eq!(out.execution.current(), StateType::Killing);
    sim.execution = out.execution;
    // the worker answers KILLED for the running attempt
    let job = sim.pending.remove(0);
    let mut result = sim.worker(&job);
    result.state = StateType::Killed;
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    assert_eq!(sim.state(), StateType::Killed);
    assert!(sim.runs("b").is_empty());
    assert!(sim.runs("never").is_empty());
    assert_eq!(sim.run_state("p"), StateType::Killed);
}

#[test]
fn restart_runs_failed_task_again_with_a_new_attempt() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: ok\n    type: io.kestra.plugin.core.log.Log\n    message: x\n  - id: flaky1\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ));
    sim = sim.run();
    assert_eq!(sim.state(), StateType::Failed);
    let cmd = ExecutionCommand::Restart {
        execution_id: sim.execution.id.clone(),
    };
    let current = Some(sim.execution.clone());
    sim.step(current, ExecutorEvent::Command(cmd));
    assert_eq!(sim.pending.len(), 1);
    let job = sim.pending.remove(0);
    assert_eq!(job.attempt, 2);
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.execution.metadata.attempt_number, 2);
    assert_eq!(
        sim.runs("ok")[0].attempts.len(),
        1,
        "successful tasks are not re-run"
    );
}

#[test]
fn after_execution_sees_final_state_and_does_not_change_it() {
    let sim = Sim::new(&format!("{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.execution.Fail\nafterExecution:\n  - id: onfail\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ execution.state }}}}\"\n    runIf: \"{{{{ execution.state == 'FAILED' }}}}\"\n"))
    .run();
    assert_eq!(sim.state(), StateType::Failed);
    assert_eq!(
        sim.runs("onfail")[0].outputs.as_ref().unwrap()["value"],
        "FAILED"
    );
}

#[test]
fn labels_and_exit_run_in_the_executor() {
    let sim = Sim::new(&format!("{HEAD}tasks:\n  - id: lab\n    type: io.kestra.plugin.core.execution.Labels\n    labels:\n      team: data\n  - id: ex\n    type: io.kestra.plugin.core.execution.Exit\n    state: WARNING\n  - id: never\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"))
    .run();
    assert_eq!(sim.execution.label("team"), Some("data"));
    assert_eq!(sim.state(), StateType::Warning);
    assert!(sim.runs("never").is_empty());
}

#[test]
fn flow_outputs_are_rendered_at_the_end() {
    let sim = Sim::new(&format!("{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.debug.Return\n    format: \"42\"\noutputs:\n  - id: answer\n    type: STRING\n    value: \"{{{{ outputs.a.value }}}}\"\n"))
    .run();
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(sim.execution.outputs["answer"], "42");
}

/// The job of a worker that died while its execution was being killed, delivered again by the
/// queue to a worker that never saw the kill signal: its RUNNING signals the kill again at once
/// (not at the next repeat), so that the copy stops (issue 14, faults suite).
#[test]
fn a_job_started_while_killing_signals_the_kill_again_at_once() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    let job = sim.pending[0].clone();
    sim.start(&job);
    let killing = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(ExecutionCommand::Kill {
            execution_id: sim.execution.id.clone(),
        }),
    )
    .unwrap();
    assert_eq!(killing.execution.current(), StateType::Killing);
    let mut again = Sim::started_at(&job, Utc::now());
    again.worker_id = Some("another-worker".into());
    let out = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(killing.execution.clone()),
        &ExecutorEvent::WorkerResult(Box::new(again)),
    )
    .unwrap();
    assert!(out.kill_broadcast, "the copy is told at once");
    assert_eq!(out.execution.current(), StateType::Killing);
}

#[test]
fn kill_signal_repeats_until_the_execution_ends() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    let running = sim.pending[0].clone();
    sim.start(&running);
    let kill = ExecutionCommand::Kill {
        execution_id: sim.execution.id.clone(),
    };
    let first = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(kill.clone()),
    )
    .unwrap();
    assert!(first.kill_broadcast);
    assert_eq!(first.delays.len(), 1, "a repeat of the kill is scheduled");
    let repeat = first.delays[0].command.clone();
    assert!(matches!(repeat, ExecutionCommand::KillRepeat { .. }));
    // The repeated kill, while still KILLING, signals workers again and re-arms itself.
    let again = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(first.execution.clone()),
        &ExecutorEvent::Command(repeat.clone()),
    )
    .unwrap();
    assert!(again.kill_broadcast);
    assert_eq!(again.delays.len(), 1);
    // Once the execution has ended, the chain stops.
    let job = sim.pending.remove(0);
    let mut result = sim.worker(&job);
    result.state = StateType::Killed;
    sim.step(
        Some(again.execution),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    assert_eq!(sim.state(), StateType::Killed);
    let after = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(kill),
    )
    .unwrap();
    assert!(!after.kill_broadcast);
    assert!(after.delays.is_empty());
    // Restarted, the execution is not KILLING: a stale repeat neither kills nor signals it.
    let restarted = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(ExecutionCommand::Restart {
            execution_id: sim.execution.id.clone(),
        }),
    )
    .unwrap();
    assert_eq!(restarted.execution.current(), StateType::Running);
    let stale = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(restarted.execution.clone()),
        &ExecutorEvent::Command(repeat),
    )
    .unwrap();
    assert!(!stale.kill_broadcast);
    assert!(stale.delays.is_empty());
    assert_eq!(stale.execution.current(), StateType::Running);
    assert!(stale.ignored.is_some());
}

// ---------------------------------------------------------------------------------------------
// A task run is RUNNING when a worker starts it
// ---------------------------------------------------------------------------------------------

const ONE_TASK: &str = "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: y\n";

fn histories(run: &kestra_core::model::TaskRun) -> Vec<StateType> {
    run.state.histories().iter().map(|h| h.state).collect()
}

/// Started: the first job is emitted, nobody picked it up yet.
fn dispatched(flow: &str) -> (Sim, WorkerTask) {
    let mut sim = Sim::new(&format!("{HEAD}{flow}"));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    let job = sim.pending.remove(0);
    (sim, job)
}

fn apply(sim: &Sim, result: WorkerTaskResult) -> kestra_core::executor::process::Outcome {
    apply_at(sim, result, Utc::now())
}

fn apply_at(
    sim: &Sim,
    result: WorkerTaskResult,
    now: chrono::DateTime<Utc>,
) -> kestra_core::executor::process::Outcome {
    process(
        &sim.index,
        &sim.expr,
        now,
        Some(sim.execution.clone()),
        &ExecutorEvent::WorkerResult(Box::new(result)),
    )
    .unwrap()
}

#[test]
fn a_dispatched_task_run_stays_created_until_its_worker_says_running() {
    let (mut sim, job) = dispatched(ONE_TASK);
    let a = sim.runs("a")[0].clone();
    assert_eq!(a.current(), StateType::Created, "dispatched, not started");
    assert_eq!(job.task_run.current(), StateType::Created);
    assert_eq!(a.attempts.len(), 1);
    assert_eq!(a.attempts[0].state.current(), StateType::Created);

    // The worker picks the job up later: RUNNING at its start date, with its id.
    let created = a.state.start_date().unwrap();
    let at = created + chrono::Duration::milliseconds(1500);
    let now = at + chrono::Duration::milliseconds(20);
    let out = apply_at(&sim, Sim::started_at(&job, at), now);
    assert!(out.changed);
    assert!(out.ignored.is_none(), "{:?}", out.ignored);
    assert!(out.worker_tasks.is_empty(), "RUNNING creates nothing");
    let a = out.execution.task_run(&job.task_run.id).unwrap().clone();
    assert_eq!(histories(&a), vec![StateType::Created, StateType::Running]);
    assert_eq!(a.state.last_date_of(StateType::Running), Some(at));
    assert_eq!(a.attempts[0].state.current(), StateType::Running);
    assert_eq!(a.attempts[0].worker_id.as_deref(), Some("worker-1"));
    sim.execution = out.execution;

    // Idempotent: the same RUNNING again (a redelivery) changes nothing.
    let again = apply_at(&sim, Sim::started_at(&job, at), now);
    assert!(!again.changed);
    assert!(again.ignored.is_some());

    // The final result keeps the RUNNING date: CREATED, RUNNING, SUCCESS.
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    let a = sim.runs("a")[0].clone();
    assert_eq!(
        histories(&a),
        vec![StateType::Created, StateType::Running, StateType::Success]
    );
    assert_eq!(a.state.last_date_of(StateType::Running), Some(at));
    assert_eq!(sim.pending.len(), 1, "b is dispatched");
    assert_eq!(sim.run_state("b"), StateType::Created);
}

#[test]
fn running_after_the_final_result_or_for_another_attempt_is_ignored() {
    let (mut sim, job) = dispatched(ONE_TASK);
    // A RUNNING for an attempt that is not the current one.
    let mut stale = Sim::started_at(&job, Utc::now());
    stale.attempt = 2;
    let out = apply(&sim, stale);
    assert!(!out.changed);
    assert!(out.ignored.is_some());

    // The final result first (the RUNNING was delayed, e.g. a redelivery), then the RUNNING.
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    let late = apply(&sim, Sim::started_at(&job, Utc::now()));
    assert!(!late.changed, "a RUNNING after the result changes nothing");
    assert!(late.ignored.is_some());
    assert!(late.worker_tasks.is_empty());
    assert_eq!(
        late.execution.task_run(&job.task_run.id).unwrap().current(),
        StateType::Success
    );
}

#[test]
fn a_final_result_whose_running_was_lost_still_records_running() {
    let (mut sim, job) = dispatched(ONE_TASK);
    let result = sim.worker(&job);
    let started = result
        .attempt_state
        .last_date_of(StateType::Running)
        .unwrap();
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    let a = sim.runs("a")[0].clone();
    assert_eq!(
        histories(&a),
        vec![StateType::Created, StateType::Running, StateType::Success]
    );
    assert_eq!(
        a.state.last_date_of(StateType::Running),
        Some(started),
        "RUNNING at the attempt's start on the worker"
    );
}

#[test]
fn a_running_date_before_the_creation_is_kept_in_order() {
    let (sim, job) = dispatched(ONE_TASK);
    let created = sim.runs("a")[0].state.start_date().unwrap();
    // A worker whose clock is behind the executor's.
    let out = apply(
        &sim,
        Sim::started_at(&job, created - chrono::Duration::seconds(5)),
    );
    let a = out.execution.task_run(&job.task_run.id).unwrap();
    assert_eq!(a.state.last_date_of(StateType::Running), Some(created));
}

#[test]
fn kill_ends_a_dispatched_task_run_that_no_worker_started() {
    let (mut sim, job) = dispatched(ONE_TASK);
    let kill = ExecutionCommand::Kill {
        execution_id: sim.execution.id.clone(),
    };
    sim.step(Some(sim.execution.clone()), ExecutorEvent::Command(kill));
    // Not started: KILLED at once (attempt too), and the execution ends KILLED.
    let a = sim.runs("a")[0].clone();
    assert_eq!(a.current(), StateType::Killed);
    assert_eq!(a.attempts[0].state.current(), StateType::Killed);
    assert_eq!(sim.state(), StateType::Killed);
    assert!(sim.runs("b").is_empty());
    // The worker that picks the job up late: its RUNNING and its result are ignored.
    let late = apply(&sim, Sim::started_at(&job, Utc::now()));
    assert!(!late.changed);
    let result = sim.worker(&job);
    let late = apply(&sim, result);
    assert!(!late.changed);
    assert_eq!(late.execution.current(), StateType::Killed);
}

#[test]
fn a_retry_waits_in_retrying_until_its_worker_starts_it() {
    let (mut sim, job) = dispatched(
        "tasks:\n  - id: flaky1\n    type: io.kestra.plugin.core.log.Log\n    message: x\n    retry:\n      type: constant\n      interval: PT1S\n      maxAttempts: 3\n",
    );
    sim.start(&job);
    let failed = sim.worker(&job);
    assert_eq!(failed.state, StateType::Failed);
    let out = apply(&sim, failed.clone());
    assert_eq!(out.delays.len(), 1, "a retry is planned");
    sim.execution = out.execution;
    assert_eq!(sim.run_state("flaky1"), StateType::Retrying);
    // A redelivered result of the failed attempt plans nothing more.
    let dup = apply(&sim, failed);
    assert!(!dup.changed);
    assert!(dup.delays.is_empty());

    let retry = ExecutionCommand::RetryDue {
        execution_id: sim.execution.id.clone(),
        task_run_id: job.task_run.id.clone(),
        attempt: 2,
    };
    sim.step(Some(sim.execution.clone()), ExecutorEvent::Command(retry));
    let second = sim.pending.remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        sim.run_state("flaky1"),
        StateType::Retrying,
        "the new attempt waits for a worker"
    );
    sim.start(&second);
    assert_eq!(sim.run_state("flaky1"), StateType::Running);
    let ok = sim.worker(&second);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(ok)),
    );
    assert_eq!(sim.state(), StateType::Success);
    let run = sim.runs("flaky1")[0].clone();
    assert_eq!(
        histories(&run),
        vec![
            StateType::Created,
            StateType::Running,
            StateType::Retrying,
            StateType::Running,
            StateType::Success
        ]
    );
}

#[test]
fn a_restarted_task_waits_in_restarted_until_its_worker_starts_it() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: flaky1\n    type: io.kestra.plugin.core.log.Log\n    message: x\n"
    ))
    .run();
    assert_eq!(sim.state(), StateType::Failed);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::Command(ExecutionCommand::Restart {
            execution_id: sim.execution.id.clone(),
        }),
    );
    let job = sim.pending.remove(0);
    assert_eq!(job.attempt, 2);
    assert_eq!(sim.run_state("flaky1"), StateType::Restarted);
    // Killed before a worker took it: it ends KILLED at once.
    let kill = ExecutionCommand::Kill {
        execution_id: sim.execution.id.clone(),
    };
    let out = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(kill),
    )
    .unwrap();
    assert_eq!(out.execution.current(), StateType::Killed);
    // Or started by a worker: RUNNING, then its result.
    sim.start(&job);
    assert_eq!(sim.run_state("flaky1"), StateType::Running);
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    assert_eq!(sim.state(), StateType::Success);
}

/// The executor's log lines carry ids derived from what it processed (issue 9 item 7): processing the
/// same state at the same instant again gives the same ids (the indexer stores such a line once),
/// and the lines of one step have ids of their own.
#[test]
fn executor_log_lines_have_stable_distinct_ids() {
    let sim = Sim::new(&format!(
        "{HEAD}tasks:\n  - id: p\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n      - id: s1\n        type: io.kestra.plugin.core.flow.Switch\n        value: Z\n        cases:\n          A:\n            - id: ca\n              type: io.kestra.plugin.core.log.Log\n              message: a\n      - id: s2\n        type: io.kestra.plugin.core.flow.Switch\n        value: Z\n        cases:\n          A:\n            - id: cb\n              type: io.kestra.plugin.core.log.Log\n              message: b\n"
    ));
    let now = Utc::now();
    let start = ExecutorEvent::Execution(Box::new(sim.execution.clone()));
    let once = process(&sim.index, &sim.expr, now, None, &start).unwrap();
    let again = process(&sim.index, &sim.expr, now, None, &start).unwrap();
    let ids = |logs: &[kestra_core::model::LogEntry]| -> Vec<String> {
        logs.iter().map(|l| l.id.clone()).collect()
    };
    assert!(
        once.logs.len() >= 2,
        "both switches log why they failed: {:?}",
        once.logs
    );
    assert_eq!(ids(&once.logs), ids(&again.logs), "same step, same ids");
    let distinct: std::collections::BTreeSet<String> = ids(&once.logs).into_iter().collect();
    assert_eq!(distinct.len(), once.logs.len(), "each line has its own id");
    let later = process(
        &sim.index,
        &sim.expr,
        now + chrono::Duration::seconds(1),
        None,
        &start,
    )
    .unwrap();
    assert!(
        ids(&later.logs).iter().all(|id| !distinct.contains(id)),
        "the same lines emitted at another instant are other lines"
    );
}

/// `taskrun.attemptsCount` counts the attempts made before the one being started, as Kestra's
/// (0 on the first attempt); a restart keeps the previous attempts, so they count.
#[test]
fn attempts_count_is_the_number_of_previous_attempts() {
    let (mut sim, job) = dispatched(
        "tasks:\n  - id: flaky1\n    type: io.kestra.plugin.core.log.Log\n    message: x\n",
    );
    assert_eq!(job.context["taskrun"]["attemptsCount"], json!(0));
    let result = sim.worker(&job);
    sim.step(
        Some(sim.execution.clone()),
        ExecutorEvent::WorkerResult(Box::new(result)),
    );
    assert_eq!(sim.state(), StateType::Failed);
    let cmd = ExecutionCommand::Restart {
        execution_id: sim.execution.id.clone(),
    };
    sim.step(Some(sim.execution.clone()), ExecutorEvent::Command(cmd));
    let job = sim.pending.remove(0);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.context["taskrun"]["attemptsCount"], json!(1));
}

#[test]
fn sla_max_duration_is_a_staged_timer_that_fails_a_running_execution() {
    let mut sim = Sim::new(&format!(
        "{HEAD}sla:\n  - id: max\n    type: MAX_DURATION\n    behavior: FAIL\n    duration: PT10M\n    labels:\n      sla: missed\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n  - id: b\n    type: io.kestra.plugin.core.log.Log\n    message: y\n"
    ));
    let start = sim.execution.clone();
    let now = Utc::now();
    let first = process(
        &sim.index,
        &sim.expr,
        now,
        None,
        &ExecutorEvent::Execution(Box::new(start)),
    )
    .unwrap();
    // The timer goes through the queue: staged once, when the execution starts, 10 minutes later.
    let timers: Vec<_> = first
        .delays
        .iter()
        .filter(|d| matches!(d.command, ExecutionCommand::SlaDue { .. }))
        .collect();
    assert_eq!(timers.len(), 1, "one SLA timer: {:?}", first.delays);
    assert_eq!(timers[0].at, now + chrono::Duration::minutes(10));
    let due = timers[0].command.clone();
    sim.execution = first.execution;
    sim.pending.extend(first.worker_tasks);
    let job = sim.pending[0].clone();
    sim.start(&job);
    // A later pass stages no second timer.
    let result = sim.worker(&job);
    let again = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::WorkerResult(Box::new(result)),
    )
    .unwrap();
    assert!(
        !again
            .delays
            .iter()
            .any(|d| matches!(d.command, ExecutionCommand::SlaDue { .. }))
    );
    sim.execution = again.execution;
    // The timer fires while `b` is running: FAILED at once, `b` killed, workers told, label added.
    let fired = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(sim.execution.clone()),
        &ExecutorEvent::Command(due.clone()),
    )
    .unwrap();
    assert_eq!(fired.execution.current(), StateType::Failed);
    let b: Vec<_> = fired
        .execution
        .task_run_list
        .iter()
        .filter(|r| r.task_id == "b")
        .collect();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].current(), StateType::Killed);
    assert!(fired.kill_broadcast);
    assert!(
        fired
            .execution
            .labels
            .iter()
            .any(|l| l.key == "sla" && l.value == "missed")
    );
    // Fired again (a redelivery) on the ended execution: nothing changes.
    let stale = process(
        &sim.index,
        &sim.expr,
        Utc::now(),
        Some(fired.execution.clone()),
        &ExecutorEvent::Command(due),
    )
    .unwrap();
    assert!(stale.ignored.is_some());
    assert_eq!(stale.execution.current(), StateType::Failed);
}

#[test]
fn sla_execution_assertion_is_checked_when_the_tasks_are_done() {
    let flow = |behavior: &str| {
        format!(
            "{HEAD}sla:\n  - id: check\n    type: EXECUTION_ASSERTION\n    behavior: {behavior}\n    assert: \"{{{{ outputs.r.value == 'yes' }}}}\"\n    labels:\n      sla: broken\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{{{ inputs.answer }}}}\"\n"
        )
    };
    let holds = Sim::new(&flow("FAIL"))
        .inputs(json!({"answer": "yes"}))
        .run();
    assert_eq!(holds.state(), StateType::Success);
    assert!(holds.execution.labels.iter().all(|l| l.key != "sla"));
    for (behavior, end) in [
        ("FAIL", StateType::Failed),
        ("CANCEL", StateType::Cancelled),
        ("NONE", StateType::Success),
    ] {
        let sim = Sim::new(&flow(behavior))
            .inputs(json!({"answer": "no"}))
            .run();
        assert_eq!(sim.state(), end, "behavior {behavior}");
        assert_eq!(sim.run_state("r"), StateType::Success);
        assert!(
            sim.execution
                .labels
                .iter()
                .any(|l| l.key == "sla" && l.value == "broken"),
            "behavior {behavior}: {:?}",
            sim.execution.labels
        );
    }
}

/// A worker job carries the execution's `outputs` and `tasks` maps only for a task whose definition
/// mentions them: the plugin type `io.kestra.plugin.core.debug.Return` is no mention of `debug`
/// (it was, and every Return job carried the whole run history: a ForEach of n Returns cost
/// O(n^2) memory at its start).
#[test]
fn a_job_carries_the_run_history_only_when_its_task_reads_it() {
    let mut sim = Sim::new(&format!(
        "{HEAD}tasks:
  - id: a
    type: io.kestra.plugin.core.debug.Return
    format: \"{{{{ taskrun.id }}}}\"
  - id: b
    type: io.kestra.plugin.core.debug.Return
    format: \"{{{{ outputs.a.value }}}}\"
  - id: c
    type: io.kestra.plugin.core.log.Log
    message: \"{{{{ tasks.a.state }}}}\"
"
    ));
    let start = sim.execution.clone();
    sim.step(None, ExecutorEvent::Execution(Box::new(start)));
    let mut seen = Vec::new();
    while !sim.pending.is_empty() {
        let job = sim.pending.remove(0);
        let context = job.context.as_object().cloned().unwrap_or_default();
        seen.push((
            job.task.id.clone(),
            context.contains_key("outputs"),
            context.contains_key("tasks"),
        ));
        let result = sim.worker(&job);
        sim.step(
            Some(sim.execution.clone()),
            ExecutorEvent::WorkerResult(Box::new(result)),
        );
    }
    assert_eq!(sim.state(), StateType::Success);
    assert_eq!(
        seen,
        vec![
            ("a".to_string(), false, false),
            ("b".to_string(), true, true),
            ("c".to_string(), true, true),
        ]
    );
    let b = sim.runs("b")[0];
    let value = b.outputs.as_ref().and_then(|o| o.get("value"));
    assert_eq!(value, Some(&json!(sim.runs("a")[0].id)));
}

/// Every task run that a `process_*` call changed in place is in what its positions say it
/// changed (`RunPositions::take_changed`; `None` claims nothing): a backend that stores task runs
/// apart writes only those, so one missing would be a change lost.
fn assert_changes_listed(
    before: Option<&Execution>,
    after: &Execution,
    changed: Option<Vec<usize>>,
) {
    let (Some(before), Some(changed)) = (before, changed) else {
        return;
    };
    for (pos, (old, new)) in before
        .task_run_list
        .iter()
        .zip(&after.task_run_list)
        .enumerate()
    {
        assert!(
            old == new || changed.contains(&pos),
            "task run {pos} ({}) changed ({:?} -> {:?}) but is not listed as changed: {changed:?}",
            new.task_id,
            old.current(),
            new.current()
        );
    }
}

/// Drive `yaml`'s execution to its end both ways, `process` (fresh positions) and
/// `process_keeping` (positions, and what the ForEach walks learned, kept between the events of
/// the execution, as the executor service does), asserting the same outcome at every step. The
/// worker results are answered in an order drawn from `seed`. Returns the ended execution.
fn drive_both_ways(yaml: &str, seed: u64) -> Execution {
    let mut sim = Sim::new(yaml);
    let now = Utc::now();
    let mut kept = RunPositions::default();
    let mut execution: Option<Execution> = None;
    let mut events = vec![ExecutorEvent::Execution(Box::new(sim.execution.clone()))];
    let mut draw = seed;
    let mut steps = 0;
    while !events.is_empty() {
        // A small linear congruential generator: reproducible orders without a dependency.
        draw = draw
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pick = usize::try_from(draw >> 33).unwrap_or(0) % events.len();
        let event = events.remove(pick);
        steps += 1;
        let fresh = process(&sim.index, &sim.expr, now, execution.clone(), &event);
        let reused = process_keeping(
            &sim.index,
            &sim.expr,
            now,
            execution.clone(),
            &event,
            &mut kept,
        );
        assert_eq!(fresh, reused, "seed {seed}, step {steps}");
        let Some(outcome) = reused else { break };
        assert_changes_listed(execution.as_ref(), &outcome.execution, kept.take_changed());
        for job in &outcome.worker_tasks {
            events.push(ExecutorEvent::WorkerResult(Box::new(sim.worker(job))));
        }
        execution = Some(outcome.execution);
    }
    execution.expect("an execution")
}

/// `process_keeping` decides exactly what `process` decides: a ForEach with a sequential body,
/// all iterations at once, driven event by event both ways.
#[test]
fn kept_positions_give_the_same_outcomes_as_fresh_ones() {
    let yaml = format!(
        "{HEAD}tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [\"x\", \"y\", \"z\", \"w\"]
    concurrencyLimit: 0
    tasks:
      - id: a
        type: io.kestra.plugin.core.debug.Return
        format: \"{{{{ taskrun.value }}}}\"
      - id: b
        type: io.kestra.plugin.core.debug.Return
        format: \"{{{{ outputs.a[taskrun.value].value }}}}\"
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: done
"
    );
    for seed in [0, 7, 42] {
        let execution = drive_both_ways(&yaml, seed);
        assert_eq!(execution.current(), StateType::Success);
        assert_eq!(
            execution
                .task_run_list
                .iter()
                .filter(|r| r.task_id == "b")
                .count(),
            4
        );
    }
}

/// The ForEach walk that skips iterations whose task runs did not change (positions kept)
/// decides what a walk of every iteration decides, in the shapes where skipping is not allowed
/// or ends: a failing iteration with the ForEach's own errors and finally, limits of 1 and 2,
/// a flowable in the body, repeated values, a ForEach inside a ForEach; results answered in
/// several orders.
#[test]
fn a_for_each_walk_that_skips_unchanged_iterations_decides_as_a_full_walk() {
    let failing = format!(
        "{HEAD}tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [\"a\", \"b\", \"c\", \"d\", \"e\"]
    concurrencyLimit: {{limit}}
    tasks:
      - id: first
        type: io.kestra.plugin.core.debug.Return
        format: \"{{{{ taskrun.value }}}}\"
      - id: check
        type: io.kestra.plugin.core.flow.If
        condition: \"{{{{ taskrun.value == 'c' }}}}\"
        then:
          - id: boom
            type: io.kestra.plugin.core.execution.Fail
    errors:
      - id: handled
        type: io.kestra.plugin.core.debug.Return
        format: handled
    finally:
      - id: cleanup
        type: io.kestra.plugin.core.debug.Return
        format: cleanup
"
    );
    // Also longer: many iterations end before the failing one (the walk neither visits nor
    // checks the iterations known ended while none of their task runs changes).
    let long = failing.replace(
        "[\"a\", \"b\", \"c\", \"d\", \"e\"]",
        "[\"a1\", \"a2\", \"a3\", \"a4\", \"a5\", \"a6\", \"a7\", \"a8\", \"a9\", \"c\", \"d\", \"e\"]",
    );
    // (flow, limits, seeds, iterations started one at a time: up to the failing one)
    let shapes = [
        (&failing, &[0, 1, 2][..], &[1, 2, 3][..], 3),
        (&long, &[1, 3][..], &[11, 12][..], 10),
    ];
    for (flow, limits, seeds, sequential) in shapes {
        for &limit in limits {
            for &seed in seeds {
                let yaml = flow.replace("{limit}", &limit.to_string());
                let execution = drive_both_ways(&yaml, seed);
                assert_eq!(execution.current(), StateType::Failed, "limit {limit}");
                let ran = |id: &str| execution.task_run_list.iter().any(|r| r.task_id == id);
                assert!(ran("handled") && ran("cleanup"), "limit {limit}");
                let firsts = execution
                    .task_run_list
                    .iter()
                    .filter(|r| r.task_id == "first")
                    .count();
                if limit == 1 {
                    assert_eq!(firsts, sequential, "nothing starts after the failing one");
                }
            }
        }
    }
    let repeated = format!(
        "{HEAD}tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [\"x\", \"y\", \"x\", \"z\"]
    concurrencyLimit: 2
    tasks:
      - id: r
        type: io.kestra.plugin.core.debug.Return
        format: \"{{{{ taskrun.value }}}}\"
"
    );
    for seed in [4, 5] {
        let execution = drive_both_ways(&repeated, seed);
        assert_eq!(execution.current(), StateType::Success);
    }
    let nested = format!(
        "{HEAD}tasks:
  - id: outer
    type: io.kestra.plugin.core.flow.ForEach
    values: [1, 2, 3]
    concurrencyLimit: 2
    tasks:
      - id: inner
        type: io.kestra.plugin.core.flow.ForEach
        values: \"[10, 20]\"
        concurrencyLimit: 1
        tasks:
          - id: r
            type: io.kestra.plugin.core.debug.Return
            format: \"{{{{ parent.taskrun.value }}}}-{{{{ taskrun.value }}}}\"
"
    );
    for seed in [6, 8] {
        let execution = drive_both_ways(&nested, seed);
        assert_eq!(execution.current(), StateType::Success);
        let rs = execution
            .task_run_list
            .iter()
            .filter(|r| r.task_id == "r")
            .count();
        assert_eq!(rs, 6);
    }
}

/// `Walk::Later` (the executor service leaves the walk of a worker's final result to a later final
/// result of the same execution in the same unit of work) decides what walking after each result
/// decides: a ForEach two at a time, its results answered in batches, both ways. Same executions
/// after each batch, the same jobs emitted over the run, and the deferred results emit nothing.
#[test]
fn a_walk_left_to_the_last_result_of_a_batch_decides_as_a_walk_after_each() {
    use kestra_core::executor::{Walk, process_walking};
    let yaml = format!(
        "{HEAD}tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [\"v1\", \"v2\", \"v3\", \"v4\", \"v5\", \"v6\"]
    concurrencyLimit: 2
    tasks:
      - id: a
        type: io.kestra.plugin.core.debug.Return
        format: \"{{{{ taskrun.value }}}}\"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: \"{{{{ outputs.a['v6'].value }}}}\"
"
    );
    let mut sim = Sim::new(&yaml);
    let now = Utc::now();
    let start = ExecutorEvent::Execution(Box::new(sim.execution.clone()));
    let first = process(&sim.index, &sim.expr, now, None, &start).expect("an outcome");
    let (mut each, mut batched) = (first.execution.clone(), first.execution.clone());
    let mut jobs_each: Vec<String> = first
        .worker_tasks
        .iter()
        .map(|j| j.task_run.id.clone())
        .collect();
    let mut jobs_batched = jobs_each.clone();
    let mut pending: Vec<WorkerTask> = first.worker_tasks;
    let mut batches = 0;
    while !pending.is_empty() {
        batches += 1;
        let results: Vec<ExecutorEvent> = pending
            .drain(..)
            .map(|job| ExecutorEvent::WorkerResult(Box::new(sim.worker(&job))))
            .collect();
        for (i, result) in results.iter().enumerate() {
            let walk_now =
                process(&sim.index, &sim.expr, now, Some(each), result).expect("outcome");
            jobs_each.extend(walk_now.worker_tasks.iter().map(|j| j.task_run.id.clone()));
            each = walk_now.execution;
            let last = i + 1 == results.len();
            let walk = if last { Walk::Now } else { Walk::Later };
            let outcome = process_walking(
                &sim.index,
                &sim.expr,
                now,
                Some(batched),
                result,
                &mut RunPositions::default(),
                walk,
            )
            .expect("outcome");
            if !last {
                assert!(
                    outcome.worker_tasks.is_empty(),
                    "a deferred walk emits nothing"
                );
            }
            jobs_batched.extend(outcome.worker_tasks.iter().map(|j| j.task_run.id.clone()));
            pending.extend(outcome.worker_tasks);
            batched = outcome.execution;
        }
        assert_eq!(batched, each, "batch {batches}");
    }
    jobs_each.sort();
    jobs_batched.sort();
    assert_eq!(jobs_batched, jobs_each);
    assert_eq!(batched.current(), StateType::Success);
    assert_eq!(jobs_batched.len(), 7, "six iterations and the task after");
    assert!(
        batches >= 4,
        "answered in batches of two, then the last task: {batches}"
    );
}
