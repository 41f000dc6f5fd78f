//! The executor features that involve time or several executions - Pause, LoopUntil, Subflow,
//! ForEachItem, flow concurrency limits, CREATE_NEW_EXECUTION retries, `scheduleDate` - driven in memory: a
//! `World` plays the runtime (queue of events, delayed commands with a simulated clock, the flows'
//! keyed slot stage with its own queue of slot requests, subflow completion) around the pure
//! `process`, and a fake worker answers jobs at once
//! (Fail fails, Return renders `format`, a ForEachItem split gives 3 batches, a ForEachItem merge
//! reports how many outputs it got, anything else succeeds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use kestra_core::executor::FlowIndex;
use kestra_core::executor::concurrency::{
    ConcurrencySlots, SlotMessage, SlotRequest, apply_slot_request,
};
use kestra_core::executor::process::process;
use kestra_core::executor::subflow::{complete_child, result_for_parent};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::messages::{
    ExecutionCommand, ExecutorEvent, SubflowExecutionResult, WorkerTask, WorkerTaskResult,
};
use kestra_core::model::{Execution, Label, State, StateType, TaskRun};
use serde_json::{Map, json};

struct World {
    flows: HashMap<String, FlowIndex>,
    expr: ExpressionEngine,
    now: DateTime<Utc>,
    executions: HashMap<String, Execution>,
    order: Vec<String>,
    events: VecDeque<ExecutorEvent>,
    delays: Vec<(DateTime<Utc>, ExecutionCommand)>,
    slots: HashMap<String, ConcurrencySlots>,
    /// Slot requests on their way to the flow's stage (keyed by flow, handled in order).
    slot_requests: VecDeque<SlotMessage>,
    killed_children: Vec<String>,
    max_running: usize,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

impl World {
    fn new(sources: &[&str]) -> World {
        let registry = TaskRegistry::default();
        let mut flows = HashMap::new();
        for (rev, yaml) in sources.iter().enumerate() {
            let mut flow = parse_flow(yaml, &registry).unwrap_or_else(|e| panic!("{e}"));
            flow.revision = Some(rev as i32 + 1);
            let key = format!("{}.{}", flow.namespace, flow.id);
            flows.insert(key, FlowIndex::new(Arc::new(flow), &registry).unwrap());
        }
        World {
            flows,
            expr: ExpressionEngine::default(),
            now: t0(),
            executions: HashMap::new(),
            order: Vec::new(),
            events: VecDeque::new(),
            delays: Vec::new(),
            slots: HashMap::new(),
            slot_requests: VecDeque::new(),
            killed_children: Vec::new(),
            max_running: 0,
        }
    }

    fn start(&mut self, flow: &str, configure: impl FnOnce(&mut Execution)) -> String {
        let index = &self.flows[flow];
        let mut e = Execution::new(index.flow.namespace.clone(), index.flow.id.clone(), 1);
        e.state = State::new_at(StateType::Created, self.now);
        configure(&mut e);
        let id = e.id.clone();
        self.events.push_back(ExecutorEvent::Execution(Box::new(e)));
        id
    }

    fn command(&mut self, cmd: ExecutionCommand) {
        self.events.push_back(ExecutorEvent::Command(cmd));
    }

    fn worker(&self, job: &WorkerTask) -> WorkerTaskResult {
        let ty = job.task.task_type.rsplit('.').next().unwrap_or_default();
        let mut outputs = None;
        let state = match ty {
            "Fail" => StateType::Failed,
            "Return" => {
                let format = job.task.properties["format"].as_str().unwrap_or("");
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
            "ForEachItem$ForEachItemSplit" => {
                let o = json!({
                    "numberOfBatches": 3,
                    "batchUriPrefix": "kestra:///t/parent/batch-",
                    "batchUriSuffix": ".txt",
                });
                outputs = o.as_object().cloned();
                StateType::Success
            }
            "ForEachItem$ForEachItemMergeOutputs" => {
                let got = job.task.properties["subflowOutputs"]
                    .as_object()
                    .map(|o| o.len())
                    .unwrap_or(0);
                let mut m = Map::new();
                m.insert("subflowOutputs".into(), json!(format!("merged {got}")));
                outputs = Some(m);
                StateType::Success
            }
            _ => StateType::Success,
        };
        let mut attempt_state = State::new_at(StateType::Running, self.now);
        attempt_state.transition_at(state, self.now).unwrap();
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

    fn index_of(&self, e: &Execution) -> &FlowIndex {
        &self.flows[&format!("{}.{}", e.namespace, e.flow_id)]
    }

    /// One event through `process` plus what the runtime does around it.
    fn handle(&mut self, event: ExecutorEvent) {
        let id = event.execution_id().to_string();
        let current = self.executions.get(&id).cloned();
        let restart = matches!(
            &event,
            ExecutorEvent::Command(ExecutionCommand::Restart { .. })
        );
        if !restart && current.as_ref().is_some_and(|c| c.state.is_terminated()) {
            return;
        }
        let reference = current.clone().or(match &event {
            ExecutorEvent::Execution(e) => Some((**e).clone()),
            _ => None,
        });
        let Some(reference) = reference else { return };
        let index = self.index_of(&reference).clone();
        let was_terminated = current.as_ref().is_some_and(|c| c.state.is_terminated());
        let Some(out) = process(&index, &self.expr, self.now, current, &event) else {
            return;
        };
        if !self.executions.contains_key(&id) {
            self.order.push(id.clone());
        }
        self.executions.insert(id.clone(), out.execution.clone());
        for job in &out.worker_tasks {
            let r = self.worker(job);
            self.events
                .push_back(ExecutorEvent::WorkerResult(Box::new(r)));
        }
        for d in out.delays {
            self.delays.push((d.at, d.command));
        }
        for e in out.new_executions {
            self.events.push_back(ExecutorEvent::Execution(Box::new(e)));
        }
        for k in out.kill_executions {
            self.killed_children.push(k.clone());
            self.events
                .push_front(ExecutorEvent::Command(ExecutionCommand::Kill {
                    execution_id: k,
                }));
        }
        for r in out.restart_executions {
            self.events
                .push_back(ExecutorEvent::Command(ExecutionCommand::Restart {
                    execution_id: r,
                }));
        }
        for req in out.subflow_requests {
            let key = format!("{}.{}", req.execution.namespace, req.execution.flow_id);
            match self.flows.get(&key) {
                Some(child_index) => {
                    let mut child = complete_child(&req, &child_index.flow);
                    child.inputs = req.inputs.clone();
                    self.events
                        .push_back(ExecutorEvent::Execution(Box::new(child)));
                }
                None => {
                    let r = req.failure(format!("flow {key} not found"));
                    self.events
                        .push_back(ExecutorEvent::SubflowResult(Box::new(r)));
                }
            }
        }
        if out.slot != SlotRequest::None
            && let Some(c) = &index.flow.concurrency
        {
            // The slots belong to the flow's stage: a message keyed by the flow.
            self.slot_requests.push_back(SlotMessage {
                tenant_id: out.execution.tenant_id.clone(),
                namespace: out.execution.namespace.clone(),
                flow_id: out.execution.flow_id.clone(),
                execution_id: id.clone(),
                request: out.slot,
                concurrency: c.clone(),
            });
        }
        if !was_terminated
            && let Some(e) = self.executions.get(&id)
            && let Some(r) = result_for_parent(e)
        {
            self.events
                .push_back(ExecutorEvent::SubflowResult(Box::new(r)));
        }
        let running = self
            .executions
            .values()
            .filter(|e| e.current() == StateType::Running)
            .count();
        self.max_running = self.max_running.max(running);
    }

    /// The flow's slot stage handles one request: its commands go back keyed by execution.
    fn slot_step(&mut self) -> bool {
        let Some(m) = self.slot_requests.pop_front() else {
            return false;
        };
        let slots = self.slots.entry(m.flow_id.clone()).or_default();
        let d = apply_slot_request(slots, m.request, &m.execution_id, &m.concurrency);
        for c in d.follow_up.into_iter().chain(d.start) {
            self.events.push_back(ExecutorEvent::Command(c));
        }
        true
    }

    /// Handle execution events only (the slot stage lags behind).
    fn run_events(&mut self) {
        while let Some(ev) = self.events.pop_front() {
            self.handle(ev);
        }
    }

    /// Drain events and slot requests (interleaved); then, if `advance_clock`, move the clock to
    /// the next delay and go on.
    fn run(&mut self, advance_clock: bool) {
        for _ in 0..100_000 {
            let slot = self.slot_step();
            if let Some(ev) = self.events.pop_front() {
                self.handle(ev);
                continue;
            }
            if slot {
                continue;
            }
            if !advance_clock || self.delays.is_empty() {
                return;
            }
            self.delays.sort_by_key(|(at, _)| *at);
            let (at, cmd) = self.delays.remove(0);
            if at > self.now {
                self.now = at;
            }
            self.events.push_back(ExecutorEvent::Command(cmd));
        }
        panic!("did not converge");
    }

    fn exec(&self, id: &str) -> &Execution {
        &self.executions[id]
    }

    fn runs<'a>(&'a self, id: &str, task: &str) -> Vec<&'a TaskRun> {
        self.exec(id)
            .task_run_list
            .iter()
            .filter(|r| r.task_id == task)
            .collect()
    }

    fn run_state(&self, id: &str, task: &str) -> StateType {
        let runs = self.runs(id, task);
        assert_eq!(runs.len(), 1, "one task run of {task}");
        runs[0].current()
    }
}

const LOG: &str = "io.kestra.plugin.core.log.Log";

fn pause_flow(extra: &str) -> String {
    format!(
        "id: p\nnamespace: t\ntasks:\n  - id: wait\n    type: io.kestra.plugin.core.flow.Pause\n{extra}  - id: after\n    type: {LOG}\n    message: done\n"
    )
}

#[test]
fn pause_with_duration_holds_then_resumes_when_it_elapses() {
    let mut w = World::new(&[&pause_flow("    pauseDuration: PT1H\n")]);
    let id = w.start("t.p", |_| {});
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Paused);
    assert_eq!(w.run_state(&id, "wait"), StateType::Paused);
    assert!(w.runs(&id, "after").is_empty());
    assert_eq!(w.delays.len(), 1);
    assert_eq!(w.delays[0].0, t0() + Duration::hours(1));
    // Re-processing the paused execution (any event) creates nothing new.
    w.command(ExecutionCommand::Restart {
        execution_id: id.clone(),
    });
    w.run(false);
    assert_eq!(w.delays.len(), 1);
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    assert_eq!(w.run_state(&id, "wait"), StateType::Success);
    assert_eq!(w.run_state(&id, "after"), StateType::Success);
}

#[test]
fn pause_behaviors_apply_when_the_duration_elapses() {
    for (behavior, task_state, exec_state) in [
        ("WARN", StateType::Warning, StateType::Warning),
        ("FAIL", StateType::Failed, StateType::Failed),
        ("CANCEL", StateType::Killed, StateType::Cancelled),
    ] {
        let mut w = World::new(&[&pause_flow(&format!(
            "    delay: PT5M\n    behavior: {behavior}\n"
        ))]);
        let id = w.start("t.p", |_| {});
        w.run(true);
        assert_eq!(w.run_state(&id, "wait"), task_state, "{behavior}");
        assert_eq!(w.exec(&id).current(), exec_state, "{behavior}");
        if behavior != "WARN" {
            assert!(w.runs(&id, "after").is_empty(), "{behavior}");
        }
    }
}

#[test]
fn manual_resume_checks_on_resume_inputs_and_a_stale_timer_is_ignored() {
    let mut w = World::new(&[&pause_flow(
        "    pauseDuration: PT1H\n    behavior: FAIL\n    onResume:\n      - id: approved\n        type: BOOL\n",
    )]);
    let id = w.start("t.p", |_| {});
    w.run(false);
    // A bad value is refused: still paused.
    let mut bad = Map::new();
    bad.insert("approved".into(), json!("maybe"));
    w.command(ExecutionCommand::Resume {
        execution_id: id.clone(),
        task_run_id: None,
        inputs: bad,
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Paused);
    let mut good = Map::new();
    good.insert("approved".into(), json!(true));
    w.command(ExecutionCommand::Resume {
        execution_id: id.clone(),
        task_run_id: None,
        inputs: good,
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let wait = w.runs(&id, "wait")[0];
    assert_eq!(wait.current(), StateType::Success);
    assert_eq!(wait.outputs.as_ref().unwrap()["onResume"]["approved"], true);
    // The FAIL timer fires later: ignored (the run already ended SUCCESS).
    let wait_id = wait.id.clone();
    let before = w.exec(&id).clone();
    let out = process(
        w.index_of(&before),
        &w.expr,
        t0() + Duration::hours(2),
        Some(before.clone()),
        &ExecutorEvent::Command(ExecutionCommand::PauseElapsed {
            execution_id: id.clone(),
            task_run_id: wait_id,
        }),
    )
    .unwrap();
    assert!(!out.changed);
    assert!(out.ignored.is_some());
}

#[test]
fn pause_without_duration_waits_for_a_resume() {
    let mut w = World::new(&[&pause_flow("")]);
    let id = w.start("t.p", |_| {});
    w.run(true);
    assert!(w.delays.is_empty());
    assert_eq!(w.exec(&id).current(), StateType::Paused);
    w.command(ExecutionCommand::Resume {
        execution_id: id.clone(),
        task_run_id: None,
        inputs: Map::new(),
    });
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
}

#[test]
fn killing_a_paused_execution_ends_it_killed() {
    let mut w = World::new(&[&pause_flow("")]);
    let id = w.start("t.p", |_| {});
    w.run(false);
    w.command(ExecutionCommand::Kill {
        execution_id: id.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Killed);
    assert_eq!(w.run_state(&id, "wait"), StateType::Killed);
}

fn loop_flow(check: &str, condition: &str) -> String {
    format!(
        "id: l\nnamespace: t\ntasks:\n  - id: loop\n    type: io.kestra.plugin.core.flow.LoopUntil\n    condition: \"{condition}\"\n{check}    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ taskrun.iteration }}}}\"\n"
    )
}

#[test]
fn loop_until_iterates_with_the_interval_until_the_condition_holds() {
    let mut w = World::new(&[&loop_flow(
        "    checkFrequency:\n      interval: PT10S\n",
        "{{ outputs.r.value == '2' }}",
    )]);
    let id = w.start("t.l", |_| {});
    w.run(false);
    // iteration 0 done, next one delayed by the interval
    assert_eq!(w.runs(&id, "r").len(), 1);
    assert_eq!(w.delays.len(), 1);
    assert_eq!(w.delays[0].0, t0() + Duration::seconds(10));
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let iterations: Vec<Option<u32>> = w.runs(&id, "r").iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, vec![Some(0), Some(1), Some(2)]);
    let ids: std::collections::HashSet<&str> =
        w.runs(&id, "r").iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each iteration has its own task run id");
    let l = w.runs(&id, "loop")[0];
    assert_eq!(l.outputs.as_ref().unwrap()["iterationCount"], 3);
    assert_eq!(w.now, t0() + Duration::seconds(20));
}

#[test]
fn loop_until_limits_end_success_or_failed_with_fail_on_max_reached() {
    for (fail, expected) in [("false", StateType::Success), ("true", StateType::Failed)] {
        let mut w = World::new(&[&loop_flow(
            &format!(
                "    failOnMaxReached: {fail}\n    checkFrequency:\n      interval: PT1S\n      maxIterations: 4\n"
            ),
            "{{ false }}",
        )]);
        let id = w.start("t.l", |_| {});
        w.run(true);
        assert_eq!(w.exec(&id).current(), expected, "failOnMaxReached {fail}");
        // Kestra's LoopUntil stops once iterationCount > maxIterations: one more iteration.
        assert_eq!(w.runs(&id, "r").len(), 5);
        assert_eq!(
            w.runs(&id, "loop")[0].outputs.as_ref().unwrap()["iterationCount"],
            5
        );
    }
    // maxDuration: iterations every minute for at most 3 minutes, checked after each iteration
    // (Kestra: `creationDate + maxDuration` before now).
    let mut w = World::new(&[&loop_flow(
        "    checkFrequency:\n      maxDuration: PT3M\n      interval: PT1M\n",
        "{{ false }}",
    )]);
    let id = w.start("t.l", |_| {});
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    // Iterations at 0, 1, 2, 3 (3 minutes are not more than the limit) and 4 minutes, then over.
    assert_eq!(w.runs(&id, "r").len(), 5);
    assert_eq!(w.now, t0() + Duration::minutes(4));
}

#[test]
fn wait_for_runs_again_while_the_condition_holds() {
    let flow = "id: w\nnamespace: t\ntasks:\n  - id: loop\n    type: io.kestra.plugin.core.flow.WaitFor\n    condition: \"{{ outputs.r.value != '3' }}\"\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{ outputs.loop.iterationCount }}\"\n";
    let mut w = World::new(&[flow]);
    let id = w.start("t.w", |_| {});
    w.run(false);
    // The default interval (PT1S) delays the next iteration.
    assert_eq!(w.runs(&id, "r").len(), 1);
    assert_eq!(w.delays.len(), 1);
    assert_eq!(w.delays[0].0, t0() + Duration::seconds(1));
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let values: Vec<serde_json::Value> = w
        .runs(&id, "r")
        .iter()
        .map(|r| r.outputs.as_ref().unwrap()["value"].clone())
        .collect();
    assert_eq!(values, vec![json!("1"), json!("2"), json!("3")]);
    assert_eq!(
        w.runs(&id, "loop")[0].outputs.as_ref().unwrap()["iterationCount"],
        3
    );
}

const CHILD: &str = "id: child\nnamespace: t\nlabels:\n  team: data\ninputs:\n  - id: n\n    type: INT\n    required: false\ntasks:\n  - id: c\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ inputs.n }}\"\noutputs:\n  - id: got\n    type: STRING\n    value: \"{{ outputs.c.value }}\"\n";
const FAILING_CHILD: &str =
    "id: bad\nnamespace: t\ntasks:\n  - id: f\n    type: io.kestra.plugin.core.execution.Fail\n";

fn parent(extra: &str, flow: &str) -> String {
    format!(
        "id: parent\nnamespace: t\nlabels:\n  owner: me\ntasks:\n  - id: sub\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: t\n    flowId: {flow}\n{extra}  - id: after\n    type: {LOG}\n    message: \"{{{{ outputs.sub.outputs.got }}}}\"\n"
    )
}

#[test]
fn subflow_waits_for_the_child_and_gets_its_outputs() {
    let mut w = World::new(&[
        CHILD,
        &parent(
            "    inputs:\n      n: \"{{ 40 + 2 }}\"\n    labels:\n      extra: x\n",
            "child",
        ),
    ]);
    let id = w.start("t.parent", |e| e.labels.push(Label::new("owner", "me")));
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let sub = w.runs(&id, "sub")[0];
    let out = sub.outputs.as_ref().unwrap();
    let child_id = out["executionId"].as_str().unwrap().to_string();
    assert_eq!(out["state"], "SUCCESS");
    assert_eq!(out["outputs"]["got"], "42");
    let child = w.exec(&child_id);
    assert_eq!(child.parent_id.as_deref(), Some(id.as_str()));
    let trigger = child.trigger.as_ref().unwrap();
    assert_eq!(trigger.type_, "io.kestra.plugin.core.flow.Subflow");
    assert_eq!(trigger.variables["executionId"], json!(id));
    assert_eq!(trigger.variables["flowId"], "parent");
    assert_eq!(child.label("system.correlationId"), Some(id.as_str()));
    assert_eq!(child.label("team"), Some("data"));
    assert_eq!(child.label("extra"), Some("x"));
    assert_eq!(
        child.label("owner"),
        None,
        "inheritLabels is false by default"
    );
    // taskRunList of the parent: created in order, `after` saw the child's output.
    assert_eq!(w.run_state(&id, "after"), StateType::Success);
}

#[test]
fn subflow_inherit_labels_and_no_wait() {
    let mut w = World::new(&[
        CHILD,
        &parent(
            "    wait: false\n    inheritLabels: true\n    inputs:\n      n: 1\n",
            "child",
        ),
    ]);
    let id = w.start("t.parent", |e| e.labels.push(Label::new("owner", "me")));
    // First step only: the parent's Subflow task run ends SUCCESS at once.
    let ev = w.events.pop_front().unwrap();
    w.handle(ev);
    let sub = w.runs(&id, "sub")[0];
    assert_eq!(sub.current(), StateType::Success);
    let child_id = sub.outputs.as_ref().unwrap()["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    w.run(true);
    assert_eq!(w.exec(&child_id).label("owner"), Some("me"));
    assert_eq!(w.exec(&id).current(), StateType::Success);
}

#[test]
fn subflow_transmit_failed_rules() {
    for (transmit, expected) in [("true", StateType::Failed), ("false", StateType::Success)] {
        let mut w = World::new(&[
            FAILING_CHILD,
            &parent(&format!("    transmitFailed: {transmit}\n"), "bad"),
        ]);
        let id = w.start("t.parent", |_| {});
        w.run(true);
        assert_eq!(
            w.run_state(&id, "sub"),
            expected,
            "transmitFailed {transmit}"
        );
        let sub = w.runs(&id, "sub")[0];
        assert_eq!(sub.outputs.as_ref().unwrap()["state"], "FAILED");
    }
}

#[test]
fn subflow_retry_starts_a_new_child_per_attempt() {
    let mut w = World::new(&[
        FAILING_CHILD,
        &parent(
            "    retry:\n      type: constant\n      interval: PT30S\n      maxAttempts: 3\n",
            "bad",
        ),
    ]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Failed);
    let sub = w.runs(&id, "sub")[0];
    assert_eq!(sub.current(), StateType::Failed);
    // One FAILED attempt per child, three children, each retry after the interval.
    assert_eq!(sub.attempts.len(), 3);
    assert!(
        sub.attempts
            .iter()
            .all(|a| a.state.current() == StateType::Failed)
    );
    let children: Vec<&Execution> = w
        .executions
        .values()
        .filter(|e| e.parent_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(children.len(), 3, "a new child execution per attempt");
    let history: Vec<StateType> = sub.state.histories().iter().map(|h| h.state).collect();
    assert_eq!(
        history,
        vec![
            StateType::Created,
            StateType::Running,
            StateType::Retrying,
            StateType::Running,
            StateType::Retrying,
            StateType::Running,
            StateType::Failed
        ]
    );
    assert_eq!(w.now, t0() + Duration::seconds(60));
}

#[test]
fn subflow_of_a_missing_flow_fails_the_task() {
    let mut w = World::new(&[&parent("", "nope")]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    assert_eq!(w.run_state(&id, "sub"), StateType::Failed);
    assert_eq!(w.exec(&id).current(), StateType::Failed);
}

#[test]
fn killing_the_parent_kills_the_running_child() {
    let child = "id: slow\nnamespace: t\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n";
    let mut w = World::new(&[child, &parent("", "slow")]);
    let id = w.start("t.parent", |_| {});
    w.run(false);
    let child_id = w.runs(&id, "sub")[0].outputs.as_ref().unwrap()["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(w.exec(&child_id).current(), StateType::Paused);
    w.command(ExecutionCommand::Kill {
        execution_id: id.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Killed);
    assert_eq!(w.killed_children, vec![child_id.clone()]);
    assert_eq!(w.exec(&child_id).current(), StateType::Killed);
}

#[test]
fn recursive_subflows_stop_at_the_depth_cap() {
    let ping = "id: ping\nnamespace: t\ntasks:\n  - id: call\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: t\n    flowId: pong\n";
    let pong = "id: pong\nnamespace: t\ntasks:\n  - id: call\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: t\n    flowId: ping\n";
    let mut w = World::new(&[ping, pong]);
    let id = w.start("t.ping", |_| {});
    w.run(true);
    // 1 root + 10 children; the deepest one's task fails, and the failure climbs up.
    assert_eq!(w.executions.len(), 11);
    assert_eq!(w.exec(&id).current(), StateType::Failed);
}

#[test]
fn a_late_or_duplicate_subflow_result_is_ignored() {
    let mut w = World::new(&[CHILD, &parent("    inputs:\n      n: 1\n", "child")]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let before = w.exec(&id).clone();
    let sub = w.runs(&id, "sub")[0].id.clone();
    let out = process(
        w.index_of(&before),
        &w.expr,
        w.now,
        Some(before.clone()),
        &ExecutorEvent::SubflowResult(Box::new(SubflowExecutionResult {
            parent_execution_id: id.clone(),
            parent_task_run_id: sub,
            child_execution_id: "other".into(),
            state: StateType::Failed,
            outputs: Map::new(),
            error: None,
            iteration: None,
        })),
    )
    .unwrap();
    assert!(!out.changed);
}

fn limited(behavior: &str) -> String {
    format!(
        "id: c\nnamespace: t\nconcurrency:\n  limit: 1\n  behavior: {behavior}\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n    pauseDuration: PT1M\n  - id: a\n    type: {LOG}\n    message: hi\n"
    )
}

#[test]
fn concurrency_limit_queue_runs_fifty_executions_one_at_a_time() {
    let mut w = World::new(&[&limited("QUEUE")]);
    let ids: Vec<String> = (0..50).map(|_| w.start("t.c", |_| {})).collect();
    w.run(false);
    let running: Vec<_> = ids
        .iter()
        .filter(|id| w.exec(id).current() == StateType::Paused)
        .collect();
    assert_eq!(
        running.len(),
        1,
        "one holds the slot (paused executions keep it)"
    );
    assert_eq!(running[0], &ids[0]);
    assert!(
        ids[1..]
            .iter()
            .all(|id| w.exec(id).current() == StateType::Queued)
    );
    w.run(true);
    assert!(w.max_running <= 1, "never two running at once");
    assert!(
        ids.iter()
            .all(|id| w.exec(id).current() == StateType::Success)
    );
    // FIFO: each started after the previous one ended.
    for pair in ids.windows(2) {
        let end = w.exec(&pair[0]).state.end_date().unwrap();
        let start = w
            .exec(&pair[1])
            .state
            .last_date_of(StateType::Running)
            .unwrap();
        assert!(start >= end);
    }
    let slots = &w.slots["c"];
    assert!(slots.running.is_empty() && slots.queued.is_empty());
}

#[test]
fn concurrency_limit_cancel_and_fail() {
    for (behavior, expected) in [
        ("CANCEL", StateType::Cancelled),
        ("FAIL", StateType::Failed),
    ] {
        let mut w = World::new(&[&limited(behavior)]);
        let first = w.start("t.c", |_| {});
        let second = w.start("t.c", |_| {});
        w.run(false);
        assert_eq!(w.exec(&second).current(), expected, "{behavior}");
        assert!(w.exec(&second).task_run_list.is_empty());
        w.run(true);
        assert_eq!(w.exec(&first).current(), StateType::Success);
        // The slot is free again.
        let third = w.start("t.c", |_| {});
        w.run(true);
        assert_eq!(w.exec(&third).current(), StateType::Success, "{behavior}");
    }
}

#[test]
fn killing_a_queued_execution_leaves_the_queue() {
    let mut w = World::new(&[&limited("QUEUE")]);
    let first = w.start("t.c", |_| {});
    let second = w.start("t.c", |_| {});
    w.run(false);
    w.command(ExecutionCommand::Kill {
        execution_id: second.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&second).current(), StateType::Killed);
    assert!(w.slots["c"].queued.is_empty());
    w.run(true);
    assert_eq!(w.exec(&first).current(), StateType::Success);
}

#[test]
fn an_execution_killed_before_its_granted_slot_arrives_frees_it() {
    let mut w = World::new(&[&limited("QUEUE")]);
    let first = w.start("t.c", |_| {});
    w.run(false);
    let second = w.start("t.c", |_| {});
    w.run(false);
    assert_eq!(w.exec(&second).current(), StateType::Queued);
    // `first` ends; its release reaches the flow's stage, which grants the slot to `second` ...
    w.command(ExecutionCommand::Resume {
        execution_id: first.clone(),
        task_run_id: None,
        inputs: Map::new(),
    });
    w.run_events();
    assert_eq!(w.exec(&first).current(), StateType::Success);
    assert!(w.slot_step());
    assert_eq!(w.slots["c"].running, vec![second.clone()]);
    // ... but `second` is killed before its `Start` is processed.
    w.events
        .push_front(ExecutorEvent::Command(ExecutionCommand::Kill {
            execution_id: second.clone(),
        }));
    w.run(false);
    assert_eq!(w.exec(&second).current(), StateType::Killed);
    let slots = &w.slots["c"];
    assert!(
        slots.running.is_empty() && slots.queued.is_empty(),
        "the killed execution's release freed the slot it was granted: {slots:?}"
    );
    let third = w.start("t.c", |_| {});
    w.run(true);
    assert_eq!(w.exec(&third).current(), StateType::Success);
}

#[test]
fn a_restarted_execution_takes_a_slot_again() {
    let mut w = World::new(&[&limited("QUEUE")]);
    let first = w.start("t.c", |_| {});
    w.run(false);
    w.command(ExecutionCommand::Kill {
        execution_id: first.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&first).current(), StateType::Killed);
    let second = w.start("t.c", |_| {});
    w.run(false);
    assert_eq!(
        w.exec(&second).current(),
        StateType::Paused,
        "holds the slot"
    );

    w.command(ExecutionCommand::Restart {
        execution_id: first.clone(),
    });
    w.run(false);
    assert_eq!(
        w.exec(&first).current(),
        StateType::Queued,
        "the restart waits for the slot held by the paused execution"
    );
    assert_eq!(w.run_state(&first, "hold"), StateType::Restarted);
    assert_eq!(w.slots["c"].queued, vec![first.clone()]);

    w.run(true);
    assert!(w.max_running <= 1, "never two running at once");
    assert_eq!(w.exec(&second).current(), StateType::Success);
    assert_eq!(w.exec(&first).current(), StateType::Success);
    assert_eq!(w.run_state(&first, "a"), StateType::Success);
    let restarted_at = w
        .exec(&first)
        .state
        .last_date_of(StateType::Running)
        .unwrap();
    assert!(restarted_at >= w.exec(&second).state.end_date().unwrap());
    let slots = &w.slots["c"];
    assert!(slots.running.is_empty() && slots.queued.is_empty());
}

#[test]
fn a_restart_refused_by_the_limit_ends_per_behavior_and_frees_nothing() {
    for (behavior, expected) in [
        ("CANCEL", StateType::Cancelled),
        ("FAIL", StateType::Failed),
    ] {
        let mut w = World::new(&[&limited(behavior)]);
        let first = w.start("t.c", |_| {});
        w.run(false);
        w.command(ExecutionCommand::Kill {
            execution_id: first.clone(),
        });
        w.run(false);
        let second = w.start("t.c", |_| {});
        w.run(false);
        w.command(ExecutionCommand::Restart {
            execution_id: first.clone(),
        });
        w.run(false);
        assert_eq!(w.exec(&first).current(), expected, "{behavior}");
        assert_eq!(w.run_state(&first, "hold"), expected, "{behavior}");
        assert_eq!(w.slots["c"].running, vec![second.clone()], "{behavior}");
        w.run(true);
        assert_eq!(w.exec(&second).current(), StateType::Success);
    }
}

#[test]
fn killing_a_queued_restart_leaves_the_queue() {
    let mut w = World::new(&[&limited("QUEUE")]);
    let first = w.start("t.c", |_| {});
    w.run(false);
    w.command(ExecutionCommand::Kill {
        execution_id: first.clone(),
    });
    w.run(false);
    let second = w.start("t.c", |_| {});
    w.run(false);
    w.command(ExecutionCommand::Restart {
        execution_id: first.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&first).current(), StateType::Queued);
    w.command(ExecutionCommand::Kill {
        execution_id: first.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&first).current(), StateType::Killed);
    assert!(w.slots["c"].queued.is_empty());
    assert_eq!(w.slots["c"].running, vec![second.clone()]);
    w.run(true);
    assert_eq!(w.exec(&second).current(), StateType::Success);
    assert!(w.slots["c"].running.is_empty());
}

#[test]
fn retry_create_new_execution_ends_retried_and_starts_a_replay() {
    let flow = "id: r\nnamespace: t\ntasks:\n  - id: f\n    type: io.kestra.plugin.core.execution.Fail\n    retry:\n      type: constant\n      interval: PT30S\n      maxAttempts: 3\n      behavior: CREATE_NEW_EXECUTION\n";
    let mut w = World::new(&[flow]);
    let id = w.start("t.r", |_| {});
    w.run(true);
    assert_eq!(w.order.len(), 3, "3 attempts = 3 executions");
    let execs: Vec<&Execution> = w.order.iter().map(|i| w.exec(i)).collect();
    assert_eq!(execs[0].id, id);
    assert_eq!(execs[0].current(), StateType::Retried);
    assert_eq!(execs[1].current(), StateType::Retried);
    assert_eq!(execs[2].current(), StateType::Failed);
    for (i, e) in execs.iter().enumerate() {
        assert_eq!(e.metadata.attempt_number, i as u32 + 1);
    }
    assert_eq!(execs[1].label("system.replay"), Some(id.as_str()));
    assert_eq!(execs[1].original_id.as_deref(), Some(id.as_str()));
    // The successor waits for the retry interval (scheduleDate).
    assert_eq!(
        execs[1].schedule_date,
        Some(execs[0].state.end_date().unwrap() + Duration::seconds(30))
    );
}

#[test]
fn schedule_date_in_the_future_keeps_the_execution_created() {
    let flow =
        format!("id: s\nnamespace: t\ntasks:\n  - id: a\n    type: {LOG}\n    message: hi\n");
    let mut w = World::new(&[&flow]);
    let at = t0() + Duration::hours(3);
    let id = w.start("t.s", |e| e.schedule_date = Some(at));
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Created);
    assert!(w.exec(&id).task_run_list.is_empty());
    assert_eq!(w.delays.len(), 1);
    // An early wake-up does nothing.
    w.command(ExecutionCommand::ScheduledStart {
        execution_id: id.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Created);
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let started = w.exec(&id).state.last_date_of(StateType::Running).unwrap();
    assert_eq!(started, at);
}

const FILE_CHILD: &str = "id: fchild\nnamespace: t\ninputs:\n  - id: file\n    type: STRING\ntasks:\n  - id: c\n    type: io.kestra.plugin.core.debug.Return\n    format: \"{{ inputs.file }}\"\noutputs:\n  - id: got\n    type: STRING\n    value: \"{{ outputs.c.value }}\"\n";

fn for_each_item_parent(extra: &str, flow: &str) -> String {
    format!(
        "id: parent\nnamespace: t\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEachItem\n    items: kestra:///t/parent/items.txt\n    namespace: t\n    flowId: {flow}\n    inputs:\n      file: \"{{{{ taskrun.items }}}}\"\n{extra}"
    )
}

fn children_of<'a>(w: &'a World, parent: &str) -> Vec<&'a Execution> {
    let mut c: Vec<&Execution> = w
        .executions
        .values()
        .filter(|e| e.parent_id.as_deref() == Some(parent))
        .collect();
    c.sort_by_key(|e| {
        e.trigger
            .as_ref()
            .and_then(|t| t.variables.get("taskRunIteration"))
            .and_then(|v| v.as_u64())
    });
    c
}

#[test]
fn for_each_item_runs_one_child_per_batch_and_merges_their_outputs() {
    let mut w = World::new(&[FILE_CHILD, &for_each_item_parent("", "fchild")]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    for task in ["each", "each_split", "each_items", "each_merge"] {
        assert_eq!(w.run_state(&id, task), StateType::Success, "{task}");
    }
    let each = w.runs(&id, "each")[0].outputs.clone().unwrap();
    assert_eq!(each["numberOfBatches"], 3);
    assert_eq!(each["iterations"]["SUCCESS"], 3);
    assert_eq!(each["iterations"]["CREATED"], 0);
    assert_eq!(
        each["uri"], "merged 3",
        "the merge job got the 3 children's outputs"
    );
    let items_run = w.runs(&id, "each_items")[0].id.clone();
    let children = children_of(&w, &id);
    assert_eq!(children.len(), 3);
    for (i, child) in children.iter().enumerate() {
        let iteration = i as u64;
        let uri = format!("kestra:///t/parent/batch-{iteration}.txt");
        assert_eq!(
            child.inputs["file"],
            json!(uri),
            "taskrun.items of batch {iteration}"
        );
        assert_eq!(child.outputs["got"], json!(uri));
        let trigger = child.trigger.as_ref().unwrap();
        assert_eq!(
            trigger.type_,
            "io.kestra.plugin.core.flow.ForEachItem$ForEachItemExecutable"
        );
        assert_eq!(trigger.id, "each_items");
        assert_eq!(trigger.variables["taskRunIteration"], json!(iteration));
        assert_eq!(trigger.variables["taskRunId"], json!(items_run));
        assert_eq!(trigger.variables["executionId"], json!(id));
        assert_eq!(child.label("system.correlationId"), Some(id.as_str()));
    }
}

const PAUSED_CHILD: &str = "id: slow\nnamespace: t\ninputs:\n  - id: file\n    type: STRING\ntasks:\n  - id: hold\n    type: io.kestra.plugin.core.flow.Pause\n";

#[test]
fn for_each_item_creates_each_child_once_and_counts_each_result_once() {
    let mut w = World::new(&[PAUSED_CHILD, &for_each_item_parent("", "slow")]);
    let id = w.start("t.parent", |_| {});
    w.run(false);
    assert_eq!(w.run_state(&id, "each_items"), StateType::Running);
    let children: Vec<String> = children_of(&w, &id).iter().map(|e| e.id.clone()).collect();
    assert_eq!(children.len(), 3);
    let before = w.exec(&id).clone();
    let index = w.index_of(&before).clone();
    // Processing the unchanged execution again (a redelivered message) creates no child again.
    let again = process(
        &index,
        &w.expr,
        w.now,
        Some(before.clone()),
        &ExecutorEvent::Execution(Box::new(before.clone())),
    )
    .unwrap();
    assert!(again.subflow_requests.is_empty());
    assert!(!again.changed);
    let items_run = w.runs(&id, "each_items")[0].id.clone();
    let result = |child: &str, iteration: u32| {
        ExecutorEvent::SubflowResult(Box::new(SubflowExecutionResult {
            parent_execution_id: id.clone(),
            parent_task_run_id: items_run.clone(),
            child_execution_id: child.to_string(),
            state: StateType::Success,
            outputs: Map::new(),
            error: None,
            iteration: Some(iteration),
        }))
    };
    let first = process(
        &index,
        &w.expr,
        w.now,
        Some(before.clone()),
        &result(&children[0], 0),
    )
    .unwrap();
    assert!(first.changed);
    let items = first.execution.task_run(&items_run).unwrap().clone();
    assert_eq!(items.outputs.as_ref().unwrap()["iterations"]["SUCCESS"], 1);
    assert_eq!(
        items.current(),
        StateType::Running,
        "two batches still running"
    );
    // The same result again, or a result naming another child for that batch, is ignored.
    let after_first = first.execution.clone();
    let duplicate = process(
        &index,
        &w.expr,
        w.now,
        Some(after_first.clone()),
        &result(&children[0], 0),
    )
    .unwrap();
    assert!(!duplicate.changed);
    assert!(duplicate.ignored.is_some());
    let wrong = process(
        &index,
        &w.expr,
        w.now,
        Some(after_first),
        &result(&children[1], 0),
    )
    .unwrap();
    assert!(!wrong.changed);
    assert!(wrong.ignored.is_some());
}

#[test]
fn killing_a_for_each_item_parent_kills_the_children_still_running() {
    let mut w = World::new(&[PAUSED_CHILD, &for_each_item_parent("", "slow")]);
    let id = w.start("t.parent", |_| {});
    w.run(false);
    let children: Vec<String> = children_of(&w, &id).iter().map(|e| e.id.clone()).collect();
    assert_eq!(children.len(), 3);
    w.command(ExecutionCommand::Kill {
        execution_id: id.clone(),
    });
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Killed);
    assert_eq!(w.run_state(&id, "each_items"), StateType::Killed);
    let mut killed = w.killed_children.clone();
    killed.sort();
    let mut expected = children.clone();
    expected.sort();
    assert_eq!(killed, expected);
    for c in &children {
        assert_eq!(w.exec(c).current(), StateType::Killed);
    }
}

#[test]
fn for_each_item_without_wait_ends_once_the_children_are_requested() {
    let mut w = World::new(&[
        PAUSED_CHILD,
        &for_each_item_parent("    wait: false\n", "slow"),
    ]);
    let id = w.start("t.parent", |_| {});
    w.run(false);
    assert_eq!(w.exec(&id).current(), StateType::Success);
    let items = w.runs(&id, "each_items")[0].outputs.clone().unwrap();
    assert_eq!(items["numberOfBatches"], 3);
    assert_eq!(items["iterations"]["CREATED"], 3);
    assert_eq!(children_of(&w, &id).len(), 3);
    assert!(
        children_of(&w, &id)
            .iter()
            .all(|c| c.current() == StateType::Paused)
    );
}

const FAILING_FILE_CHILD: &str = "id: fbad\nnamespace: t\ninputs:\n  - id: file\n    type: STRING\ntasks:\n  - id: f\n    type: io.kestra.plugin.core.execution.Fail\n";

#[test]
fn restarting_a_failed_for_each_item_restarts_its_failed_children() {
    let mut w = World::new(&[FAILING_FILE_CHILD, &for_each_item_parent("", "fbad")]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    assert_eq!(w.exec(&id).current(), StateType::Failed);
    let items = w.runs(&id, "each_items")[0].outputs.clone().unwrap();
    assert_eq!(items["iterations"]["FAILED"], 3);
    let children: Vec<String> = children_of(&w, &id).iter().map(|e| e.id.clone()).collect();
    w.command(ExecutionCommand::Restart {
        execution_id: id.clone(),
    });
    w.run(true);
    // RETRY_FAILED (default): the same three children ran again (and failed again).
    assert_eq!(children_of(&w, &id).len(), 3);
    for c in &children {
        assert_eq!(w.exec(c).metadata.attempt_number, 2, "child {c} restarted");
        assert_eq!(w.exec(c).current(), StateType::Failed);
    }
    assert_eq!(w.exec(&id).current(), StateType::Failed);
    let items = w.runs(&id, "each_items")[0].outputs.clone().unwrap();
    assert_eq!(items["iterations"]["FAILED"], 3);
    assert_eq!(items["iterations"]["CREATED"], 0);
}

#[test]
fn restarting_a_for_each_item_with_new_execution_creates_new_children() {
    let mut w = World::new(&[
        FAILING_FILE_CHILD,
        &for_each_item_parent("    restartBehavior: NEW_EXECUTION\n", "fbad"),
    ]);
    let id = w.start("t.parent", |_| {});
    w.run(true);
    let first: Vec<String> = children_of(&w, &id).iter().map(|e| e.id.clone()).collect();
    w.command(ExecutionCommand::Restart {
        execution_id: id.clone(),
    });
    w.run(true);
    let all = children_of(&w, &id);
    assert_eq!(all.len(), 6, "three new children");
    for c in &first {
        assert_eq!(
            w.exec(c).metadata.attempt_number,
            1,
            "old child {c} untouched"
        );
    }
    let new: Vec<&&Execution> = all.iter().filter(|e| !first.contains(&e.id)).collect();
    assert_eq!(new.len(), 3);
    assert!(new.iter().all(|e| e.current() == StateType::Failed));
    assert_eq!(w.exec(&id).current(), StateType::Failed);
    let items = w.runs(&id, "each_items")[0].outputs.clone().unwrap();
    assert_eq!(items["iterations"]["FAILED"], 3);
}

/// As Kestra's `ExecutionService.markAs`: a Pause whose duration elapses goes from PAUSED straight
/// to its behavior's state (no second RUNNING); RESUME goes RUNNING then SUCCESS.
#[test]
fn an_elapsed_pause_records_kestras_history() {
    for (behavior, expected) in [
        (
            "FAIL",
            vec![
                StateType::Created,
                StateType::Running,
                StateType::Paused,
                StateType::Failed,
            ],
        ),
        (
            "WARN",
            vec![
                StateType::Created,
                StateType::Running,
                StateType::Paused,
                StateType::Warning,
            ],
        ),
        (
            "RESUME",
            vec![
                StateType::Created,
                StateType::Running,
                StateType::Paused,
                StateType::Running,
                StateType::Success,
            ],
        ),
    ] {
        let mut w = World::new(&[&pause_flow(&format!(
            "    pauseDuration: PT5M\n    behavior: {behavior}\n"
        ))]);
        let id = w.start("t.p", |_| {});
        w.run(true);
        let exec = w.exec(&id);
        let run = exec
            .task_run_list
            .iter()
            .find(|r| r.task_id == "wait")
            .unwrap();
        let history: Vec<StateType> = run.state.histories().iter().map(|h| h.state).collect();
        assert_eq!(history, expected, "{behavior}");
    }
}
