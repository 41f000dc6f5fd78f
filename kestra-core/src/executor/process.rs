//! The executor's pure heart: [`process`] takes the current execution (if any), one event and the
//! flow, and returns the execution's next state and everything to emit ([`Outcome`]).
//!
//! It is deterministic for a given `now`: task run ids are derived from (execution id, parent task
//! run, task id, value), so re-running it on an unchanged execution creates nothing new, and a
//! redelivered event is recognised as stale or duplicate and dropped.
//!
//! # Rules (SEMANTICS.md)
//! - A group (flow `tasks`, a flowable's children) runs its tasks sequentially, in parallel or as a
//!   DAG; when a main task fails the rest are not created, `errors` run sequentially, then `finally`.
//!   The group's state is the worst state of its main task runs (KILLED > FAILED > WARNING > PAUSED >
//!   SUCCESS); errors and finally never change it.
//! - `runIf` is evaluated when the task run is created: false-ish gives SKIPPED. Disabled tasks create
//!   no task run.
//! - A runnable task run stays CREATED (RETRYING for a retry, RESTARTED for a restart) when its job is
//!   emitted: it waits for a worker. The worker answers RUNNING when it starts the attempt (the
//!   task run goes RUNNING at the worker's start date), then the attempt's final state. A RUNNING
//!   for a task run that is already RUNNING or ended, or for another attempt, is ignored; a final
//!   result whose RUNNING never came records RUNNING first. A FAILED attempt is retried (new attempt
//!   on the same task run, RETRYING meanwhile) while the retry policy allows; `warningOnRetry` turns a
//!   success after retries into WARNING; `allowFailure` turns FAILED into WARNING and `allowWarning`
//!   WARNING into SUCCESS.
//! - Kill: the execution goes KILLING (workers are told), task runs not started yet (CREATED -
//!   including those whose job waits for a worker -, RETRYING, RESTARTED, PAUSED) end KILLED at
//!   once, nothing new is created, and the execution ends KILLED once every task run is terminal
//!   (a RUNNING one when its worker answers).
//! - `afterExecution` runs once the final state is known (visible as `execution.state`), then the
//!   execution takes that state.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::executor::concurrency::SlotRequest;
use crate::executor::context::{
    execution_context, execution_context_without_runs, insert_nested, loop_values_by,
    task_run_context,
};
use crate::executor::for_each_item as for_each_item_types;
use crate::executor::index::{FlowIndex, Flowable, Group, NodeKind, Slot, types};
use crate::executor::subflow::SubflowRequest;
use crate::expression::ExpressionEngine;
use crate::flow::model::{InputType, Retry, RetryType};
use crate::flow::property::{Property, is_expression};
use crate::messages::{Delay, ExecutionCommand, ExecutorEvent, WorkerTask, WorkerTaskResult};
use crate::model::execution::system_labels;
use crate::model::id::encode_base62;
use crate::model::{Execution, Label, Level, LogEntry, State, StateType, TaskRun, TaskRunAttempt};
use lookup::RunIndex;

/// Seconds between repeated kill signals while an execution is KILLING.
pub const KILL_REPEAT_SECS: i64 = 5;

/// Everything one call of [`process`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The execution after the event (unchanged if `changed` is false).
    pub execution: Execution,
    /// Whether anything changed (if not, nothing needs saving).
    pub changed: bool,
    /// Jobs to send to workers.
    pub worker_tasks: Vec<WorkerTask>,
    /// Delayed commands to schedule (retries).
    pub delays: Vec<Delay>,
    /// Tell workers to stop this execution's running attempts.
    pub kill_broadcast: bool,
    /// Log lines from the executor (expression errors, ...).
    pub logs: Vec<LogEntry>,
    /// Why the event was ignored, if it was (stale or duplicate result, ...).
    pub ignored: Option<String>,
    /// Child executions to create for Subflow tasks and ForEachItem batches (the runtime resolves
    /// their flow and inputs).
    pub subflow_requests: Vec<SubflowRequest>,
    /// New executions to publish as they are (CREATE_NEW_EXECUTION retries).
    pub new_executions: Vec<Execution>,
    /// Executions to kill (children of a killed Subflow or ForEachItem task run).
    pub kill_executions: Vec<String>,
    /// Executions to restart (failed children of a restarted ForEachItem, `RETRY_FAILED`).
    pub restart_executions: Vec<String>,
    /// What the flow's concurrency limit needs from the runtime (see `executor::concurrency`).
    pub slot: SlotRequest,
    /// Job keys of resubmitted attempts a worker says it started (their job was delivered again):
    /// the runtime tells the workers to stop them.
    pub stale_attempts: Vec<String>,
}

// Extensions of the walk, one file per feature (they reach `Run`'s private state).
mod admission;
mod for_each;
mod for_each_item;
mod lookup;
mod loop_until;
mod pause;
mod resubmit;
mod sla;
mod subflow;

/// Apply `event` to the execution (`current` is the stored one; `None` for a new execution) and
/// compute what follows. Returns `None` if there is no execution to work on.
pub fn process(
    index: &FlowIndex,
    expr: &ExpressionEngine,
    now: DateTime<Utc>,
    current: Option<Execution>,
    event: &ExecutorEvent,
) -> Option<Outcome> {
    process_keeping(
        index,
        expr,
        now,
        current,
        event,
        &mut RunPositions::default(),
    )
}

/// The positions of an execution's task runs, kept by the caller between calls of
/// [`process_keeping`] on the same execution, so that each event does not index the whole list of
/// task runs again (O(n) per event, O(n^2) over an execution of n task runs).
///
/// Valid only for the execution the last call returned (in its [`Outcome`]): when the execution
/// comes from anywhere else (loaded, replaced), start from [`RunPositions::default`]. A hit is
/// always checked against the list, and positions that no longer fit the list (shorter, or its last
/// indexed entry changed) are dropped before use.
#[derive(Default)]
pub struct RunPositions(RunIndex);

impl std::fmt::Debug for RunPositions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPositions").finish_non_exhaustive()
    }
}

impl RunPositions {
    /// The positions (ascending) of the task runs that the last [`process_keeping`] or
    /// [`process_walking`] call given these positions changed in place, in the execution it was
    /// given; `None` when that is not known (the list was shortened or replaced, as a restart
    /// does). Task runs the call added at the end of the list are not listed. For a backend that
    /// stores task runs apart: the others need not be compared nor written
    /// ([`crate::queue::UnitOfWork::save_execution_changed`]).
    pub fn take_changed(&mut self) -> Option<Vec<usize>> {
        self.0.take_changed()
    }
}

/// [`process`], reusing (and updating) the positions of the execution's task runs that an earlier
/// call on the same execution left in `positions`. Same result as [`process`].
pub fn process_keeping(
    index: &FlowIndex,
    expr: &ExpressionEngine,
    now: DateTime<Utc>,
    current: Option<Execution>,
    event: &ExecutorEvent,
    positions: &mut RunPositions,
) -> Option<Outcome> {
    process_walking(index, expr, now, current, event, positions, Walk::Now)
}

/// Whether [`process_walking`] walks the flow after applying its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Walk now (what [`process`] does).
    Now,
    /// The caller applies another event to this execution right after this one (a worker's final
    /// result, which always walks): a final worker result only records the task run's state, and
    /// the walk is left to that event. One walk then decides for every result applied before it,
    /// as consecutive walks would have: a walk visits the whole tree (every iteration of a
    /// ForEach), so a unit of work that applies n results of one execution walks once, not n
    /// times. Ignored, and the walk done now, unless the event is a worker's final result and the
    /// execution, after it, is neither ended nor being killed.
    Later,
}

/// [`process_keeping`] that can leave the walk to the next event applied to the execution (see
/// [`Walk::Later`]); with [`Walk::Now`], the same result as [`process`].
pub fn process_walking(
    index: &FlowIndex,
    expr: &ExpressionEngine,
    now: DateTime<Utc>,
    current: Option<Execution>,
    event: &ExecutorEvent,
    positions: &mut RunPositions,
    walk: Walk,
) -> Option<Outcome> {
    let runs = std::mem::take(&mut positions.0);
    let (execution, is_new) = match (current, event) {
        (Some(e), _) => (e, false),
        (None, ExecutorEvent::Execution(e)) => ((**e).clone(), true),
        (None, _) => return None,
    };
    let mut run = Run {
        index,
        expr,
        now,
        exec: execution,
        changed: is_new,
        progress: 0,
        worker_tasks: Vec::new(),
        delays: Vec::new(),
        kill_broadcast: false,
        logs: Vec::new(),
        ignored: None,
        base_ctx: None,
        exit: None,
        pending_final: None,
        iteration: None,
        due_loops: Vec::new(),
        subflow_requests: Vec::new(),
        new_executions: Vec::new(),
        kill_executions: Vec::new(),
        restart_executions: Vec::new(),
        slot: SlotRequest::None,
        was_terminated: false,
        started_only: false,
        runs,
        stale_attempts: Vec::new(),
    };
    if is_new {
        run.runs.reset();
    } else {
        run.runs.check(&run.exec.task_run_list);
    }
    // The task runs this call changes, from here (see `RunPositions::take_changed`).
    run.runs.take_changed();
    run.was_terminated = run.exec.state.is_terminated();
    run.apply(event, is_new);
    let later = walk == Walk::Later
        && matches!(event, ExecutorEvent::WorkerResult(r) if r.state.is_terminated())
        && !run.exec.state.is_terminated()
        && !run.killing();
    // A worker's RUNNING only moves a waiting task run to RUNNING: nothing in the tree can follow
    // from it, so the walk is skipped (it is the one extra message per task; keep it cheap).
    if !later && !run.started_only && !run.hold_before_start(event, is_new) {
        run.process();
    }
    run.slot_after();
    positions.0 = std::mem::take(&mut run.runs);
    Some(Outcome {
        execution: run.exec,
        changed: run.changed,
        worker_tasks: run.worker_tasks,
        delays: run.delays,
        kill_broadcast: run.kill_broadcast,
        logs: run.logs,
        ignored: run.ignored,
        subflow_requests: run.subflow_requests,
        new_executions: run.new_executions,
        kill_executions: run.kill_executions,
        restart_executions: run.restart_executions,
        slot: run.slot,
        stale_attempts: run.stale_attempts,
    })
}

/// Whether a rendered value is "false-ish" for `runIf` and conditions: `false`, `0`, `-0`, empty,
/// null.
pub fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            let t = s.trim();
            t.is_empty() || t.eq_ignore_ascii_case("false") || t == "0" || t == "-0"
        }
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Severity order for the final state: KILLED > FAILED > WARNING > PAUSED > SUCCESS.
fn severity(s: StateType) -> u8 {
    match s {
        StateType::Killed => 5,
        StateType::Failed | StateType::Cancelled => 4,
        StateType::Warning => 3,
        StateType::Paused => 2,
        _ => 1,
    }
}

fn worst(a: StateType, b: StateType) -> StateType {
    let norm = |s: StateType| match s {
        StateType::Skipped | StateType::Retried => StateType::Success,
        StateType::Cancelled => StateType::Failed,
        other => other,
    };
    let (a, b) = (norm(a), norm(b));
    if severity(b) > severity(a) { b } else { a }
}

/// Deterministic task run id.
fn task_run_id(
    execution_id: &str,
    parent: Option<&str>,
    task_id: &str,
    value: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    for part in [
        execution_id,
        parent.unwrap_or(""),
        task_id,
        value.unwrap_or("\u{0}"),
    ] {
        h.update(part.as_bytes());
        h.update([0xff]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    encode_base62(u128::from_be_bytes(bytes))
}

/// Deterministic id of a log line the executor emits: processing the same execution state at the
/// same instant again gives the same ids, so the indexer stores such a line once.
fn log_id(
    execution_id: &str,
    task_run_id: Option<&str>,
    now: DateTime<Utc>,
    index: usize,
    message: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        execution_id,
        task_run_id.unwrap_or("\u{0}"),
        &now.to_rfc3339(),
        &index.to_string(),
        message,
    ] {
        h.update(part.as_bytes());
        h.update([0xff]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    encode_base62(u128::from_be_bytes(bytes))
}

enum Status {
    Running,
    Done(StateType),
}

struct Run<'a> {
    index: &'a FlowIndex,
    expr: &'a ExpressionEngine,
    now: DateTime<Utc>,
    exec: Execution,
    changed: bool,
    progress: u64,
    worker_tasks: Vec<WorkerTask>,
    delays: Vec<Delay>,
    kill_broadcast: bool,
    logs: Vec<LogEntry>,
    ignored: Option<String>,
    base_ctx: Option<Map<String, Value>>,
    exit: Option<StateType>,
    pending_final: Option<StateType>,
    /// LoopUntil iteration of the task runs being walked (part of their identity).
    iteration: Option<u32>,
    /// LoopUntil iterations whose timer fired in this call: (loop task run, iteration).
    due_loops: Vec<(String, u32)>,
    subflow_requests: Vec<SubflowRequest>,
    new_executions: Vec<Execution>,
    kill_executions: Vec<String>,
    restart_executions: Vec<String>,
    slot: SlotRequest,
    was_terminated: bool,
    /// The event only marked a task run RUNNING (a worker started it).
    started_only: bool,
    /// Positions of `exec`'s task runs (lookups without scanning the list).
    runs: RunIndex,
    /// See [`Outcome::stale_attempts`].
    stale_attempts: Vec<String>,
}

/// States of a runnable task run whose attempt waits for a worker to start it.
fn awaits_worker(state: StateType) -> bool {
    matches!(
        state,
        StateType::Created | StateType::Retrying | StateType::Restarted | StateType::Resubmitted
    )
}

/// When the worker started the attempt a result is about: the attempt's RUNNING date.
fn attempt_started(r: &WorkerTaskResult, now: DateTime<Utc>) -> DateTime<Utc> {
    let histories = r.attempt_state.histories();
    histories
        .iter()
        .find(|h| h.state == StateType::Running)
        .or(histories.first())
        .map_or(now, |h| h.date)
}

impl Run<'_> {
    fn touch(&mut self) {
        self.touch_keeping_context();
        self.base_ctx = None;
    }

    /// A change that leaves the execution's context as it is (or that updates it itself).
    fn touch_keeping_context(&mut self) {
        self.changed = true;
        self.progress += 1;
    }

    /// Add a new task run (no outputs yet) to the context, if built, as building it again would
    /// (`tasks.<id>[.<loop values>].state`); otherwise it is built again when next needed.
    fn add_to_context(&mut self, run_id: &str) {
        let Some(base) = self.base_ctx.as_mut() else {
            return;
        };
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id) else {
            self.base_ctx = None;
            return;
        };
        let Some(Value::Object(states)) = base.get_mut("tasks").filter(|_| run.outputs.is_none())
        else {
            self.base_ctx = None;
            return;
        };
        let keys = if run.value.is_some() {
            loop_values_by(self.index, run, |id| {
                lookup::task_run(&self.exec, &self.runs, id)
            })
        } else {
            Vec::new()
        };
        insert_nested(
            states,
            &run.task_id,
            &keys,
            json!({"state": run.state.current().as_str()}),
        );
    }

    fn killing(&self) -> bool {
        self.exec.current() == StateType::Killing
    }

    fn log(&mut self, run: Option<&TaskRun>, level: Level, message: String) {
        tracing::debug!(execution_id = %self.exec.id, %message, "executor log");
        let id = log_id(
            &self.exec.id,
            run.map(|r| r.id.as_str()),
            self.now,
            self.logs.len(),
            &message,
        );
        self.logs.push(LogEntry {
            id,
            tenant_id: self.exec.tenant_id.clone(),
            namespace: self.exec.namespace.clone(),
            flow_id: self.exec.flow_id.clone(),
            task_id: run.map(|r| r.task_id.clone()),
            execution_id: Some(self.exec.id.clone()),
            task_run_id: run.map(|r| r.id.clone()),
            attempt_number: None,
            trigger_id: None,
            timestamp: self.now,
            level,
            thread: Some("executor".into()),
            message,
        });
    }

    fn set_exec_state(&mut self, to: StateType) {
        // The first RUNNING starts the flow's MAX_DURATION SLA timers.
        let first_start = to == StateType::Running
            && !self
                .exec
                .state
                .histories()
                .iter()
                .any(|h| h.state == StateType::Running);
        if self.exec.state.transition_at(to, self.now).is_ok() {
            self.touch();
            if first_start {
                self.schedule_slas();
            }
        }
    }

    fn set_run_state(&mut self, run_id: &str, to: StateType) {
        let now = self.now;
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id)
            && r.state.transition_at(to, now).is_ok()
        {
            self.touch();
        }
    }

    // ------------------------------------------------------------------ events

    fn apply(&mut self, event: &ExecutorEvent, is_new: bool) {
        match event {
            ExecutorEvent::Execution(_) => {
                if !is_new {
                    self.ignored = Some("execution already known (redelivered creation)".into());
                }
            }
            ExecutorEvent::Command(cmd) => self.apply_command(cmd),
            ExecutorEvent::WorkerResult(r) => self.apply_result(r),
            ExecutorEvent::SubflowResult(r) => self.apply_subflow_result(r),
        }
    }

    fn apply_command(&mut self, cmd: &ExecutionCommand) {
        match cmd {
            ExecutionCommand::Kill { .. } => {
                if self.exec.state.is_terminated() {
                    self.ignored = Some("kill: execution already terminated".into());
                    return;
                }
                if !self.killing() {
                    self.set_exec_state(StateType::Killing);
                }
                // Broadcast delivery is best effort: repeat the signal every few seconds while the
                // execution is KILLING (`KillRepeat`).
                self.repeat_kill_signal();
            }
            ExecutionCommand::KillRepeat { .. } => {
                if !self.killing() {
                    self.ignored =
                        Some(format!("kill repeat: execution is {}", self.exec.current()));
                    return;
                }
                self.repeat_kill_signal();
            }
            ExecutionCommand::RetryDue {
                task_run_id,
                attempt,
                ..
            } => {
                let ok = lookup::task_run(&self.exec, &self.runs, task_run_id).is_some_and(|r| {
                    r.current() == StateType::Retrying && r.attempts.len() as u32 + 1 == *attempt
                });
                if !ok || self.killing() || self.exec.state.is_terminated() {
                    self.ignored = Some(format!("stale retry for task run {task_run_id}"));
                    return;
                }
                if !self.retry_subflow_due(task_run_id) {
                    self.start_attempt(task_run_id);
                }
            }
            ExecutionCommand::Restart { .. } => self.restart(),
            ExecutionCommand::Resume {
                task_run_id,
                inputs,
                ..
            } => self.resume(task_run_id.as_deref(), inputs),
            ExecutionCommand::PauseElapsed { task_run_id, .. } => self.pause_elapsed(task_run_id),
            ExecutionCommand::LoopIterationDue {
                task_run_id,
                iteration,
                ..
            } => self.loop_iteration_due(task_run_id, *iteration),
            ExecutionCommand::SlaDue { sla_id, .. } => self.sla_due(sla_id),
            ExecutionCommand::ScheduledStart { .. }
            | ExecutionCommand::Start { .. }
            | ExecutionCommand::ConcurrencyLimited { .. } => self.admission_command(cmd),
            ExecutionCommand::Resubmit {
                task_run_id,
                attempt,
                worker_id,
                max_resubmissions,
                ..
            } => self.resubmit(
                task_run_id,
                *attempt,
                worker_id.as_deref(),
                *max_resubmissions,
            ),
            ExecutionCommand::SetLabels { labels, .. } => self.set_labels(labels),
        }
    }

    /// [`ExecutionCommand::SetLabels`]: `system.*` labels stay, the others are replaced. The walk
    /// is skipped: a label changes nothing else (no start, no slot request, no end).
    fn set_labels(&mut self, labels: &[crate::model::Label]) {
        self.started_only = true;
        let mut next: Vec<crate::model::Label> = self
            .exec
            .labels
            .iter()
            .filter(|l| l.key.starts_with("system."))
            .cloned()
            .collect();
        for label in labels.iter().filter(|l| !l.key.starts_with("system.")) {
            next.retain(|l| l.key != label.key);
            next.push(label.clone());
        }
        if next == self.exec.labels {
            self.ignored = Some("set labels: unchanged".into());
            return;
        }
        self.exec.labels = next;
        self.touch();
    }

    fn apply_result(&mut self, r: &WorkerTaskResult) {
        let Some(task_run) = lookup::task_run(&self.exec, &self.runs, &r.task_run_id) else {
            self.ignored = Some(format!("result for unknown task run {}", r.task_run_id));
            return;
        };
        if task_run.state.is_terminated() {
            self.ignored = Some(format!(
                "duplicate result for finished task run {}",
                r.task_run_id
            ));
            return;
        }
        if task_run.attempts.len() as u32 != r.attempt {
            if r.state == StateType::Running
                && r.attempt
                    .checked_sub(1)
                    .and_then(|i| task_run.attempts.get(i as usize))
                    .is_some_and(|a| a.state.current() == StateType::Resubmitted)
            {
                self.stale_attempts
                    .push(format!("{}/{}", r.task_run_id, r.attempt));
            }
            self.ignored = Some(format!(
                "stale result for attempt {} of task run {} (current attempt {})",
                r.attempt,
                r.task_run_id,
                task_run.attempts.len()
            ));
            return;
        }
        if task_run
            .attempts
            .last()
            .is_some_and(|a| a.state.is_terminated())
        {
            // e.g. a redelivered result of a failed attempt while its retry is pending.
            self.ignored = Some(format!(
                "duplicate result for ended attempt {} of task run {}",
                r.attempt, r.task_run_id
            ));
            return;
        }
        if r.state == StateType::Running {
            if self.killing() {
                // A worker started a job of an execution being killed: typically the job of a
                // worker that died before it could answer the kill, delivered again by the queue
                // to a worker that started after the kill signal (a broadcast it never saw).
                // Signal it now, not at the next repeat, so that the copy stops at once.
                self.kill_broadcast = true;
            }
            self.apply_started(r);
            return;
        }
        if !r.state.is_terminated() {
            self.ignored = Some(format!(
                "result with the non-final state {} for task run {}",
                r.state, r.task_run_id
            ));
            return;
        }
        // The worker's RUNNING was lost (or it never ran the attempt, e.g. answered KILLED): the
        // history still shows when the attempt started.
        if awaits_worker(task_run.current()) {
            self.mark_started(&r.task_run_id, attempt_started(r, self.now));
        }
        let Some(task_run) = lookup::task_run(&self.exec, &self.runs, &r.task_run_id) else {
            return;
        };
        let task_id = task_run.task_id.clone();
        let attempts = task_run.attempts.len() as u32;
        let first_start = task_run.state.start_date().unwrap_or(self.now);
        let now = self.now;
        if let Some(tr) = lookup::task_run_mut(&mut self.exec, &self.runs, &r.task_run_id) {
            if let Some(last) = tr.attempts.last_mut() {
                last.state = r.attempt_state.clone();
                // The worker that answered (another one than the RUNNING's after a redelivery).
                if r.worker_id.is_some() {
                    last.worker_id = r.worker_id.clone();
                }
            }
            tr.outputs = r.outputs.clone();
        }
        for child in &r.child_task_runs {
            if lookup::task_run(&self.exec, &self.runs, &child.id).is_none() {
                self.exec.task_run_list.push(child.clone());
            }
        }
        self.touch();
        let node = self.index.node(&task_id);
        let mut state = r.state;
        if state == StateType::Failed
            && !self.killing()
            && self.retry_as_new_execution(&task_id, &r.task_run_id)
        {
            return;
        }
        if state == StateType::Failed
            && !self.killing()
            && let Some(retry) = self.index.retry_for(&task_id)
            && let Some(delay) = retry_delay(retry, attempts, first_start, now, &r.task_run_id)
        {
            self.set_run_state(&r.task_run_id, StateType::Retrying);
            self.delays.push(Delay {
                at: now + delay,
                command: ExecutionCommand::RetryDue {
                    execution_id: self.exec.id.clone(),
                    task_run_id: r.task_run_id.clone(),
                    attempt: attempts + 1,
                },
            });
            return;
        }
        if state == StateType::Success
            && attempts > 1
            && self
                .index
                .retry_for(&task_id)
                .is_some_and(|r| r.warning_on_retry)
        {
            state = StateType::Warning;
        }
        if let Some(node) = node {
            state = allow_transform(state, node.task.allow_failure, node.task.allow_warning);
        }
        self.set_run_state(&r.task_run_id, state);
    }

    /// A worker started the current attempt: a task run waiting for it goes RUNNING at the
    /// worker's start date, and the attempt takes the worker's state and id.
    fn apply_started(&mut self, r: &WorkerTaskResult) {
        let current = lookup::task_run(&self.exec, &self.runs, &r.task_run_id).map(|t| t.current());
        match current {
            Some(s) if awaits_worker(s) => {}
            Some(StateType::Running) if r.worker_id.is_some() && self.taken_over(r) => return,
            Some(s) => {
                self.ignored = Some(format!(
                    "RUNNING for task run {} that is already {s}",
                    r.task_run_id
                ));
                return;
            }
            None => return,
        }
        if let Some(last) = lookup::task_run_mut(&mut self.exec, &self.runs, &r.task_run_id)
            .and_then(|t| t.attempts.last_mut())
        {
            last.state = r.attempt_state.clone();
            last.worker_id = r.worker_id.clone();
        }
        self.mark_started(&r.task_run_id, attempt_started(r, self.now));
        self.touch();
        self.started_only = true;
    }

    /// A RUNNING of the current attempt, already RUNNING, from another worker: the queue
    /// delivered the job again (its first worker died or lost its lease) and that worker took it
    /// over. The attempt records its new worker, so that a resubmission meant for the dead one is
    /// not applied to it ([`ExecutionCommand::Resubmit`]).
    fn taken_over(&mut self, r: &WorkerTaskResult) -> bool {
        let Some(last) = lookup::task_run_mut(&mut self.exec, &self.runs, &r.task_run_id)
            .and_then(|t| t.attempts.last_mut())
        else {
            return false;
        };
        if last.worker_id == r.worker_id {
            return false;
        }
        last.worker_id = r.worker_id.clone();
        self.touch_keeping_context();
        self.started_only = true;
        true
    }

    /// Move a task run waiting for a worker to RUNNING at `at` (a worker's clock), kept between
    /// its last history date and `now` so that the history stays ordered.
    fn mark_started(&mut self, run_id: &str, at: DateTime<Utc>) {
        let now = self.now;
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
            let last = r.state.histories().last().map_or(at, |h| h.date);
            let at = at.min(now).max(last);
            if r.state.transition_at(StateType::Running, at).is_ok() {
                self.touch();
            }
        }
    }

    /// A task run ended by the executor while its attempt waited for a worker: the attempt ends
    /// KILLED too (a worker's late RUNNING or result for it is then ignored).
    fn kill_waiting_attempt(&mut self, run_id: &str) {
        let now = self.now;
        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id)
            && awaits_worker(r.current())
            && let Some(last) = r.attempts.last_mut()
            && !last.state.is_terminated()
        {
            let _ = last.state.transition_at(StateType::Killed, now);
        }
    }

    /// Broadcast the kill signal now and again in [`KILL_REPEAT_SECS`] while KILLING.
    fn repeat_kill_signal(&mut self) {
        self.kill_broadcast = true;
        self.delays.push(Delay {
            at: self.now + chrono::Duration::seconds(KILL_REPEAT_SECS),
            command: ExecutionCommand::KillRepeat {
                execution_id: self.exec.id.clone(),
            },
        });
    }

    fn restart(&mut self) {
        if !matches!(self.exec.current(), StateType::Failed | StateType::Killed) {
            self.ignored = Some(format!("restart: execution is {}", self.exec.current()));
            return;
        }
        // Failed task runs and all their ancestors run again.
        let failed: Vec<String> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| matches!(r.current(), StateType::Failed | StateType::Killed))
            .map(|r| r.id.clone())
            .collect();
        let mut restart: Vec<String> = Vec::new();
        for id in failed {
            let mut cur = Some(id);
            while let Some(c) = cur {
                if !restart.contains(&c) {
                    restart.push(c.clone());
                }
                cur = lookup::task_run(&self.exec, &self.runs, &c)
                    .and_then(|r| r.parent_task_run_id.clone());
            }
        }
        // Task runs of errors/finally/afterExecution groups are dropped so they run again.
        let idx = self.index;
        self.exec.task_run_list.retain(|r| {
            !matches!(
                idx.node(&r.task_id).map(|n| n.slot),
                Some(Slot::Errors | Slot::Finally | Slot::AfterExecution)
            )
        });
        self.runs.reset();
        self.set_exec_state(StateType::Restarted);
        self.exec.metadata.attempt_number += 1;
        if self.exec.label(system_labels::RESTARTED).is_none() {
            self.exec
                .labels
                .push(Label::new(system_labels::RESTARTED, "true"));
        }
        for id in &restart {
            self.set_run_state(id, StateType::Restarted);
        }
        if self.index.flow.concurrency.is_some() {
            // A limited flow: the execution stays RESTARTED and asks for a slot like a new one
            // (`hold_before_start`); its task runs start when the slot is granted.
            return;
        }
        self.set_exec_state(StateType::Running);
        self.start_restarted_task_runs();
    }

    /// Start the task runs a restart marked RESTARTED: runnable ones get a new attempt, flowables
    /// run again (their children are walked).
    pub(super) fn start_restarted_task_runs(&mut self) {
        let restarted: Vec<(String, bool, bool)> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| r.current() == StateType::Restarted)
            .map(|r| {
                let runnable = matches!(
                    self.index.node(&r.task_id).map(|n| &n.kind),
                    Some(NodeKind::Runnable)
                );
                let batches = for_each_item::is_batches_task(self.index, &r.task_id);
                (r.id.clone(), runnable, batches)
            })
            .collect();
        for (id, runnable, batches) in restarted {
            if runnable {
                self.start_attempt(&id);
            } else {
                self.set_run_state(&id, StateType::Running);
                if batches {
                    self.restart_batches(&id);
                }
            }
        }
    }

    // ------------------------------------------------------------------ the walk

    fn process(&mut self) {
        if self.exec.state.is_terminated() {
            return;
        }
        if matches!(
            self.exec.current(),
            StateType::Created | StateType::Restarted
        ) {
            self.set_exec_state(StateType::Running);
        }
        // Walk until nothing moves (executor-side tasks and flowables resolve within one call).
        for _ in 0..10_000 {
            let before = self.progress;
            let status = self.walk_root();
            if let Status::Done(state) = status {
                self.finish(state);
                return;
            }
            if self.progress == before {
                return;
            }
        }
        tracing::error!(execution_id = %self.exec.id, "executor walk did not converge");
    }

    fn walk_root(&mut self) -> Status {
        if let Some(state) = self.exit {
            return Status::Done(state);
        }
        let index = self.index;
        let root = &index.root;
        let main = match self.walk_group(None, None, root, Mode::Sequential) {
            Status::Running => return Status::Running,
            Status::Done(s) => s,
        };
        if let Some(state) = self.exit {
            return Status::Done(state);
        }
        let after = &index.after_execution;
        if !after.is_empty() && !self.killing() {
            // `execution.state` shows the final state to afterExecution tasks.
            self.pending_final = Some(main);
            let r = self.walk_sequence(None, None, after);
            if let Status::Running = r {
                return Status::Running;
            }
        }
        Status::Done(if self.killing() {
            StateType::Killed
        } else {
            main
        })
    }

    fn finish(&mut self, state: StateType) {
        let mut state = state;
        if state == StateType::Paused {
            state = StateType::Success;
        }
        if !self.killing() {
            state = self.check_assertion_slas(state);
        }
        if matches!(state, StateType::Success | StateType::Warning)
            && (!self.index.flow.outputs.is_empty() || self.subflow_outputs_mapping().is_some())
        {
            match self.flow_outputs() {
                Ok(o) => self.exec.outputs = o,
                Err(e) => {
                    self.log(
                        None,
                        Level::Error,
                        format!("flow outputs could not be rendered: {e}"),
                    );
                    state = StateType::Failed;
                }
            }
        }
        if self.killing() {
            state = StateType::Killed;
        }
        self.set_exec_state(state);
    }

    /// The `outputs` mapping of the Subflow task that started this execution, if any.
    fn subflow_outputs_mapping(&self) -> Option<Map<String, Value>> {
        let trigger = self.exec.trigger.as_ref()?;
        if trigger.type_ != crate::executor::subflow::SUBFLOW_TRIGGER_TYPE {
            return None;
        }
        match trigger
            .variables
            .get(crate::executor::subflow::SUBFLOW_OUTPUTS_VARIABLE)?
        {
            Value::Object(m) => Some(m.clone()),
            _ => None,
        }
    }

    fn flow_outputs(&mut self) -> Result<Map<String, Value>, String> {
        let ctx = Value::Object(self.base().clone());
        let mut out = Map::new();
        if self.index.flow.outputs.is_empty()
            && let Some(mapping) = self.subflow_outputs_mapping()
        {
            // The child flow declares no outputs: its parent's Subflow `outputs` mapping, rendered
            // in this (the child's) context, gives the outputs sent back.
            for (id, value) in mapping {
                let v = self
                    .expr
                    .render_value(&value, &ctx, true)
                    .map_err(|e| format!("subflow output '{id}': {e}"))?;
                out.insert(id, v);
            }
            return Ok(out);
        }
        for o in &self.index.flow.outputs {
            let v = self
                .expr
                .render_value(&o.value, &ctx, true)
                .map_err(|e| format!("output '{}': {e}", o.id))?;
            let v =
                coerce_output(&o.output_type, v).map_err(|e| format!("output '{}': {e}", o.id))?;
            out.insert(o.id.clone(), v);
        }
        Ok(out)
    }

    fn base(&mut self) -> &Map<String, Value> {
        if self.base_ctx.is_none() {
            let mut ctx = execution_context(&self.exec, self.index);
            if let Some(s) = self.pending_final
                && let Some(e) = ctx.get_mut("execution")
            {
                e["state"] = json!(s.as_str());
            }
            self.base_ctx = Some(ctx);
        }
        self.base_ctx.get_or_insert_with(Map::new)
    }

    /// The context of a worker job: without `outputs` and `tasks` for a task that does not read
    /// them ([`TaskNode::reads_run_history`](crate::executor::index::TaskNode::reads_run_history)),
    /// so that a job's size, and the cost of making it, do not grow with the execution.
    fn job_context(&mut self, run_id: &str, reads_run_history: bool) -> Value {
        if reads_run_history {
            return self.context_for(run_id);
        }
        let base = match &self.base_ctx {
            Some(full) => full
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "outputs" | "tasks"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => {
                let mut ctx = execution_context_without_runs(&self.exec, self.index);
                if let Some(s) = self.pending_final
                    && let Some(e) = ctx.get_mut("execution")
                {
                    e["state"] = json!(s.as_str());
                }
                ctx
            }
        };
        match lookup::task_run(&self.exec, &self.runs, run_id) {
            Some(run) => task_run_context(&base, &self.exec, self.index, run),
            None => Value::Object(base),
        }
    }

    fn context_for(&mut self, run_id: &str) -> Value {
        self.base();
        let base = self.base_ctx.clone().unwrap_or_default();
        match lookup::task_run(&self.exec, &self.runs, run_id) {
            Some(run) => task_run_context(&base, &self.exec, self.index, run),
            None => Value::Object(base),
        }
    }

    fn find_run(
        &self,
        task_id: &str,
        parent: Option<&str>,
        value: Option<&str>,
    ) -> Option<&TaskRun> {
        let list = &self.exec.task_run_list;
        let i = self
            .runs
            .find(list, task_id, parent, value, self.iteration)?;
        list.get(i)
    }

    fn walk_group(
        &mut self,
        parent: Option<&str>,
        value: Option<&str>,
        group: &Group,
        mode: Mode,
    ) -> Status {
        let main = match mode {
            Mode::Sequential => self.walk_sequence(parent, value, &group.tasks),
            Mode::Parallel(limit) => self.walk_parallel(parent, value, &group.tasks, limit),
        };
        let state = match main {
            Status::Running => return Status::Running,
            Status::Done(s) => s,
        };
        if state == StateType::Failed
            && !group.errors.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(parent, value, &group.errors)
        {
            return Status::Running;
        }
        if !group.finally.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(parent, value, &group.finally)
        {
            return Status::Running;
        }
        Status::Done(state)
    }

    /// Advance one existing task run; returns its state afterwards.
    fn advance(&mut self, run_id: &str) -> StateType {
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id) else {
            return StateType::Failed;
        };
        let state = run.current();
        if state.is_terminated() {
            return state;
        }
        if self.killing()
            && matches!(
                state,
                StateType::Created
                    | StateType::Retrying
                    | StateType::Restarted
                    | StateType::Resubmitted
                    | StateType::Paused
            )
        {
            // Not started by a worker: killed here (Kestra's `handleCreatedKilling`).
            self.kill_waiting_attempt(run_id);
            self.set_run_state(run_id, StateType::Killed);
            return StateType::Killed;
        }
        let task_id = run.task_id.clone();
        let index = self.index;
        if let Some(NodeKind::Flowable(f)) = index.node(&task_id).map(|n| &n.kind)
            && state == StateType::Running
            && let Status::Done(s) = self.walk_flowable(run_id, f)
        {
            let node = self.index.node(&task_id);
            let (af, aw) = node
                .map(|n| (n.task.allow_failure, n.task.allow_warning))
                .unwrap_or((false, false));
            let allow_failure_flowable = matches!(
                **f,
                Flowable::Sequential {
                    allow_failure: true,
                    ..
                }
            );
            let s = allow_transform(s, af || allow_failure_flowable, aw);
            let s = if self.killing() && s != StateType::Failed {
                StateType::Killed
            } else {
                s
            };
            self.set_run_state(run_id, s);
            return s;
        }
        lookup::task_run(&self.exec, &self.runs, run_id)
            .map(|r| r.current())
            .unwrap_or(StateType::Failed)
    }

    fn walk_sequence(
        &mut self,
        parent: Option<&str>,
        value: Option<&str>,
        tasks: &[String],
    ) -> Status {
        let mut state = StateType::Success;
        for task_id in tasks {
            let existing = self.find_run(task_id, parent, value).map(|r| r.id.clone());
            let run_id = match existing {
                Some(id) => id,
                None => {
                    if self.killing() || self.exit.is_some() {
                        return Status::Done(worst(state, StateType::Killed));
                    }
                    self.create(task_id, parent, value);
                    return Status::Running;
                }
            };
            let s = self.advance(&run_id);
            if !s.is_terminated() {
                return Status::Running;
            }
            state = worst(state, s);
            if matches!(
                s,
                StateType::Failed | StateType::Killed | StateType::Cancelled
            ) {
                return Status::Done(state);
            }
        }
        Status::Done(state)
    }

    fn walk_parallel(
        &mut self,
        parent: Option<&str>,
        value: Option<&str>,
        tasks: &[String],
        limit: u32,
    ) -> Status {
        let mut state = StateType::Success;
        let mut running = 0u32;
        let mut missing = Vec::new();
        let mut failed = false;
        for task_id in tasks {
            match self.find_run(task_id, parent, value).map(|r| r.id.clone()) {
                None => missing.push(task_id.clone()),
                Some(id) => {
                    let s = self.advance(&id);
                    if s.is_terminated() {
                        state = worst(state, s);
                        failed |= matches!(s, StateType::Failed | StateType::Killed);
                    } else {
                        running += 1;
                    }
                }
            }
        }
        if !missing.is_empty() && !failed && !self.killing() && self.exit.is_none() {
            for task_id in missing {
                if limit > 0 && running >= limit {
                    break;
                }
                self.create(&task_id, parent, value);
                running += 1;
            }
            return Status::Running;
        }
        if running > 0 {
            return Status::Running;
        }
        if !missing.is_empty() && (self.killing() || self.exit.is_some()) {
            state = worst(state, StateType::Killed);
        }
        Status::Done(state)
    }

    fn render_limit(
        &mut self,
        run_id: &str,
        p: &Option<Property<u32>>,
        default: u32,
    ) -> Result<u32, String> {
        match p {
            None => Ok(default),
            Some(Property::Value(v)) => Ok(*v),
            Some(Property::Expression(e)) => {
                let ctx = self.context_for(run_id);
                let v = self.expr.render_typed(e, &ctx).map_err(|e| e.to_string())?;
                match &v {
                    Value::Number(n) => n
                        .as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| format!("'{v}' is not a positive integer")),
                    Value::String(s) => s
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| format!("'{s}' is not a positive integer")),
                    other => Err(format!("'{other}' is not a positive integer")),
                }
            }
        }
    }

    fn fail_run(&mut self, run_id: &str, message: String) -> Status {
        let run = lookup::task_run(&self.exec, &self.runs, run_id).cloned();
        self.log(run.as_ref(), Level::Error, message);
        let (af, aw) = run
            .and_then(|r| {
                self.index
                    .node(&r.task_id)
                    .map(|n| (n.task.allow_failure, n.task.allow_warning))
            })
            .unwrap_or((false, false));
        let s = allow_transform(StateType::Failed, af, aw);
        Status::Done(s)
    }

    fn walk_flowable(&mut self, run_id: &str, f: &Flowable) -> Status {
        let (parent, value) = match lookup::task_run(&self.exec, &self.runs, run_id) {
            Some(r) => (r.id.clone(), r.value.clone()),
            None => return Status::Done(StateType::Failed),
        };
        let parent = Some(parent.as_str());
        let value = value.as_deref();
        match f {
            Flowable::Sequential { group, .. } => {
                self.walk_group(parent, value, group, Mode::Sequential)
            }
            Flowable::Parallel { group, concurrent } => {
                match self.render_limit(run_id, concurrent, 0) {
                    Ok(limit) => self.walk_group(parent, value, group, Mode::Parallel(limit)),
                    Err(e) => self.fail_run(run_id, format!("invalid 'concurrent': {e}")),
                }
            }
            Flowable::Dag {
                nodes,
                concurrent,
                group,
            } => match self.render_limit(run_id, concurrent, 0) {
                Ok(limit) => self.walk_dag(parent, value, nodes, group, limit),
                Err(e) => self.fail_run(run_id, format!("invalid 'concurrent': {e}")),
            },
            Flowable::Switch {
                value: v,
                cases,
                defaults,
                group,
            } => {
                // The chosen value is rendered once and kept in the Switch's outputs.
                let chosen = match lookup::task_run(&self.exec, &self.runs, run_id)
                    .and_then(|r| r.outputs.clone())
                {
                    Some(o) => o,
                    None => {
                        let ctx = self.context_for(run_id);
                        let rendered = match v {
                            Value::String(s) => self.expr.render(s, &ctx).map(Value::String),
                            other => Ok(Value::String(match other {
                                Value::Null => String::new(),
                                x => x.to_string(),
                            })),
                        };
                        let rendered = match rendered {
                            Ok(Value::String(s)) => s,
                            Ok(other) => other.to_string(),
                            Err(e) => return self.fail_run(run_id, format!("switch value: {e}")),
                        };
                        let is_default = !cases.contains_key(&rendered);
                        let o = json!({"value": rendered, "defaults": is_default});
                        let o = o.as_object().cloned().unwrap_or_default();
                        if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) {
                            r.outputs = Some(o.clone());
                        }
                        self.touch();
                        o
                    }
                };
                let key = chosen
                    .get("value")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                let tasks = match cases.get(&key) {
                    Some(t) => t.clone(),
                    None => match defaults {
                        Some(d) => d.clone(),
                        None => {
                            return self.fail_run(
                                run_id,
                                format!(
                                    "switch: no case matches '{key}' and there are no defaults"
                                ),
                            );
                        }
                    },
                };
                let g = Group {
                    tasks,
                    errors: group.errors.clone(),
                    finally: group.finally.clone(),
                };
                self.walk_group(parent, value, &g, Mode::Sequential)
            }
            Flowable::If {
                condition,
                then,
                else_tasks,
                group,
            } => {
                let ctx = self.context_for(run_id);
                let truth = match self.condition(condition, &ctx) {
                    Ok(t) => t,
                    Err(e) => return self.fail_run(run_id, format!("if condition: {e}")),
                };
                let tasks = if truth {
                    then.clone()
                } else {
                    else_tasks.clone()
                };
                let g = Group {
                    tasks,
                    errors: group.errors.clone(),
                    finally: group.finally.clone(),
                };
                self.walk_group(parent, value, &g, Mode::Sequential)
            }
            Flowable::ForEach {
                values,
                concurrency_limit,
                group,
            } => {
                let limit = match self.render_limit(run_id, concurrency_limit, 1) {
                    Ok(l) => l,
                    Err(e) => {
                        return self.fail_run(run_id, format!("invalid 'concurrencyLimit': {e}"));
                    }
                };
                self.walk_for_each(run_id, value, values, group, limit)
            }
            Flowable::Pause { spec, group } => self.walk_pause(run_id, value, spec, group),
            Flowable::LoopUntil { spec, group } => self.walk_loop(run_id, value, spec, group),
            Flowable::Subflow(task) => self.walk_subflow(run_id, task),
            Flowable::ForEachItem { group } => self.walk_for_each_item(run_id, value, group),
            Flowable::ForEachItemBatches(task) => self.walk_for_each_item_batches(run_id, task),
        }
    }

    fn condition(&mut self, condition: &Value, ctx: &Value) -> Result<bool, String> {
        match condition {
            Value::String(s) if is_expression(s) => {
                let v = self.expr.render_typed(s, ctx).map_err(|e| e.to_string())?;
                Ok(!is_falsy(&v))
            }
            other => Ok(!is_falsy(other)),
        }
    }

    fn loop_values(&mut self, values: &Value, ctx: &Value) -> Result<Vec<String>, String> {
        let v = match values {
            Value::String(s) if is_expression(s) => {
                self.expr.render_typed(s, ctx).map_err(|e| e.to_string())?
            }
            other => other.clone(),
        };
        let list = match v {
            Value::Array(a) => a,
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(a)) => a,
                _ => return Err(format!("'{s}' is not a list or a JSON array")),
            },
            other => return Err(format!("'{other}' is not a list")),
        };
        if list.iter().any(Value::is_null) {
            // Kestra's FlowableUtils.resolveValues: a null item fails the ForEach.
            return Err(format!(
                "Found a null value inside the iteration values={}",
                serde_json::to_string(values).unwrap_or_default()
            ));
        }
        Ok(list
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect())
    }

    fn walk_dag(
        &mut self,
        parent: Option<&str>,
        value: Option<&str>,
        nodes: &[(String, Vec<String>)],
        group: &Group,
        limit: u32,
    ) -> Status {
        let mut state = StateType::Success;
        let mut running = 0u32;
        let mut failed = false;
        let mut done: Vec<String> = Vec::new();
        let mut missing = Vec::new();
        for (task_id, deps) in nodes {
            match self.find_run(task_id, parent, value).map(|r| r.id.clone()) {
                None => missing.push((task_id.clone(), deps.clone())),
                Some(id) => {
                    let s = self.advance(&id);
                    if s.is_terminated() {
                        state = worst(state, s);
                        if matches!(s, StateType::Failed | StateType::Killed) {
                            failed = true;
                        } else {
                            done.push(task_id.clone());
                        }
                    } else {
                        running += 1;
                    }
                }
            }
        }
        if !missing.is_empty() && !failed && !self.killing() && self.exit.is_none() {
            let mut created = false;
            for (task_id, deps) in &missing {
                if limit > 0 && running >= limit {
                    break;
                }
                if deps.iter().all(|d| done.contains(d)) {
                    self.create(task_id, parent, value);
                    running += 1;
                    created = true;
                }
            }
            if created || running > 0 {
                return Status::Running;
            }
        }
        if running > 0 {
            return Status::Running;
        }
        if !missing.is_empty() && (self.killing() || self.exit.is_some()) {
            state = worst(state, StateType::Killed);
        }
        let rest = Group {
            tasks: Vec::new(),
            errors: group.errors.clone(),
            finally: group.finally.clone(),
        };
        if state == StateType::Failed
            && !rest.errors.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(parent, value, &rest.errors)
        {
            return Status::Running;
        }
        if !rest.finally.is_empty()
            && !self.killing()
            && let Status::Running = self.walk_sequence(parent, value, &rest.finally)
        {
            return Status::Running;
        }
        Status::Done(state)
    }

    // ------------------------------------------------------------------ creating task runs

    fn create(&mut self, task_id: &str, parent: Option<&str>, value: Option<&str>) {
        let Some(node) = self.index.node(task_id) else {
            tracing::error!(execution_id = %self.exec.id, task_id, "task not in flow index");
            return;
        };
        let kind = node.kind.clone();
        let run_if = node.task.run_if.clone();
        let mut run = TaskRun::new(&self.exec, task_id);
        // A LoopUntil iteration is part of the identity (the value part of the hash, so that ids
        // outside loops are unchanged).
        let id_value = match self.iteration {
            Some(i) => Some(format!("{}\u{1}{i}", value.unwrap_or(""))),
            None => value.map(str::to_string),
        };
        run.id = task_run_id(&self.exec.id, parent, task_id, id_value.as_deref());
        run.parent_task_run_id = parent.map(str::to_string);
        run.value = value.map(str::to_string);
        run.iteration = self.iteration;
        run.state = State::new_at(StateType::Created, self.now);
        let run_id = run.id.clone();
        self.exec.task_run_list.push(run);
        // The context gains the new run's state, without being built again (a ForEach starting
        // n iterations at once would build it n times).
        self.touch_keeping_context();
        self.add_to_context(&run_id);

        if let Some(cond) = run_if {
            let ctx = self.context_for(&run_id);
            match self.condition(&Value::String(cond), &ctx) {
                Ok(true) => {}
                Ok(false) => {
                    self.set_run_state(&run_id, StateType::Skipped);
                    return;
                }
                Err(e) => {
                    let run = lookup::task_run(&self.exec, &self.runs, &run_id).cloned();
                    self.log(
                        run.as_ref(),
                        Level::Error,
                        format!("runIf could not be evaluated: {e}"),
                    );
                    self.set_run_state(&run_id, StateType::Running);
                    self.set_run_state(&run_id, StateType::Failed);
                    return;
                }
            }
        }
        match kind {
            NodeKind::Runnable => self.start_attempt(&run_id),
            NodeKind::Flowable(_) => self.set_run_state(&run_id, StateType::Running),
            NodeKind::ExecutorSide => self.run_executor_side(&run_id),
            NodeKind::Unsupported(message) => {
                self.set_run_state(&run_id, StateType::Running);
                if let Status::Done(s) = self.fail_run(&run_id, message) {
                    self.set_run_state(&run_id, s);
                }
            }
        }
    }

    /// Add an attempt to a runnable task run and emit its job. The task run keeps its state
    /// (CREATED, RETRYING, RESTARTED) until the worker that picks the job up says RUNNING.
    fn start_attempt(&mut self, run_id: &str) {
        let now = self.now;
        let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, run_id) else {
            return;
        };
        r.attempts.push(TaskRunAttempt {
            state: State::new_at(StateType::Created, now),
            log_file: None,
            worker_id: None,
        });
        let attempt = r.attempts.len() as u32;
        let task_id = r.task_id.clone();
        // An attempt is not part of the context.
        self.touch_keeping_context();
        let reads_run_history = self
            .index
            .node(&task_id)
            .is_none_or(|n| n.reads_run_history);
        let context = self.job_context(run_id, reads_run_history);
        let Some(task_run) = lookup::task_run(&self.exec, &self.runs, run_id).cloned() else {
            return;
        };
        let Some(node) = self.index.node(&task_id) else {
            return;
        };
        let mut task = node.task.clone();
        if node.type_name == for_each_item_types::MERGE_TYPE {
            task.properties.insert(
                for_each_item_types::MERGE_OUTPUTS_PROPERTY.into(),
                self.merge_job_outputs(run_id),
            );
        }
        self.worker_tasks.push(WorkerTask {
            task_run,
            task,
            context,
            attempt,
            flow_revision: self.exec.flow_revision,
        });
    }

    fn run_executor_side(&mut self, run_id: &str) {
        self.set_run_state(run_id, StateType::Running);
        let Some(run) = lookup::task_run(&self.exec, &self.runs, run_id).cloned() else {
            return;
        };
        let Some(node) = self.index.node(&run.task_id) else {
            return;
        };
        let task = node.task.clone();
        let ctx = self.context_for(run_id);
        let result: Result<StateType, String> = match node.type_name {
            types::LABELS => self.apply_labels(
                &task
                    .properties
                    .get("labels")
                    .cloned()
                    .unwrap_or(Value::Null),
                &ctx,
            ),
            types::EXIT => {
                let state = task
                    .properties
                    .get("state")
                    .cloned()
                    .unwrap_or(json!("SUCCESS"));
                let rendered = match &state {
                    Value::String(s) => self.expr.render(s, &ctx).map_err(|e| e.to_string()),
                    other => Ok(other.to_string()),
                };
                match rendered
                    .and_then(|s| s.trim().parse::<StateType>().map_err(|e| e.to_string()))
                {
                    Ok(
                        s @ (StateType::Success
                        | StateType::Warning
                        | StateType::Failed
                        | StateType::Killed
                        | StateType::Cancelled),
                    ) => {
                        self.exit_execution(run_id, s);
                        return;
                    }
                    Ok(other) => Err(format!(
                        "exit state must be SUCCESS, WARNING, FAILED, KILLED or CANCELLED, not {other}"
                    )),
                    Err(e) => Err(e),
                }
            }
            other => Err(format!("task type '{other}' cannot run in the executor")),
        };
        match result {
            Ok(s) => self.set_run_state(run_id, s),
            Err(e) => {
                if let Status::Done(s) = self.fail_run(run_id, e) {
                    self.set_run_state(run_id, s);
                }
            }
        }
    }

    fn apply_labels(&mut self, labels: &Value, ctx: &Value) -> Result<StateType, String> {
        let rendered = self
            .expr
            .render_value(labels, ctx, true)
            .map_err(|e| e.to_string())?;
        let pairs: Vec<(String, String)> = match rendered {
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| (k, value_to_string(&v)))
                .collect(),
            Value::Array(a) => a
                .into_iter()
                .map(|l| {
                    let k = l
                        .get("key")
                        .map(value_to_string)
                        .ok_or("label without 'key'")?;
                    let v = l
                        .get("value")
                        .map(value_to_string)
                        .ok_or("label without 'value'")?;
                    Ok((k, v))
                })
                .collect::<Result<_, &str>>()?,
            other => {
                return Err(format!(
                    "labels must be a map or a list of {{key, value}}, not {other}"
                ));
            }
        };
        for (k, _) in &pairs {
            if k.starts_with("system.") {
                return Err(format!(
                    "label '{k}': keys starting with 'system.' are reserved"
                ));
            }
        }
        for (k, v) in pairs {
            match self.exec.labels.iter_mut().find(|l| l.key == k) {
                Some(l) => l.value = v,
                None => self.exec.labels.push(Label::new(k, v)),
            }
        }
        self.touch();
        Ok(StateType::Success)
    }

    fn exit_execution(&mut self, run_id: &str, state: StateType) {
        let task_state = if state == StateType::Cancelled {
            StateType::Killed
        } else {
            state
        };
        self.set_run_state(run_id, task_state);
        // The Exit's parent flowables end with the exit state (Kestra's Exit); every other open task
        // run is killed.
        let mut parent = lookup::task_run(&self.exec, &self.runs, run_id)
            .and_then(|r| r.parent_task_run_id.clone());
        while let Some(p) = parent {
            parent = lookup::task_run(&self.exec, &self.runs, &p)
                .and_then(|r| r.parent_task_run_id.clone());
            self.set_run_state(&p, task_state);
        }
        let open: Vec<String> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| !r.state.is_terminated())
            .map(|r| r.id.clone())
            .collect();
        if open.iter().any(|id| {
            lookup::task_run(&self.exec, &self.runs, id).is_some_and(|r| {
                matches!(
                    self.index.node(&r.task_id).map(|n| &n.kind),
                    Some(NodeKind::Runnable)
                )
            })
        }) {
            self.kill_broadcast = true;
        }
        for id in open {
            self.kill_waiting_attempt(&id);
            self.set_run_state(&id, StateType::Killed);
        }
        self.exit = Some(state);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Sequential,
    Parallel(u32),
}

fn value_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Give a rendered flow output the JSON type its `type` declares (INT, FLOAT, BOOL, JSON); other
/// types keep the rendered value.
fn coerce_output(output_type: &InputType, value: Value) -> Result<Value, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    };
    match output_type {
        InputType::Int => match &value {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value),
            v => text(v)
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("'{}' is not an integer", text(v))),
        },
        InputType::Float => match &value {
            Value::Number(_) => Ok(value),
            v => text(v)
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("'{}' is not a number", text(v))),
        },
        InputType::Bool => match &value {
            Value::Bool(_) => Ok(value),
            v => match text(v).as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                other => Err(format!("'{other}' is not a boolean")),
            },
        },
        InputType::Json => match &value {
            Value::String(s) => serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}")),
            _ => Ok(value),
        },
        _ => Ok(value),
    }
}

/// `allowFailure`: FAILED counts as WARNING; `allowWarning`: WARNING counts as SUCCESS.
pub fn allow_transform(state: StateType, allow_failure: bool, allow_warning: bool) -> StateType {
    let s = if allow_failure && state == StateType::Failed {
        StateType::Warning
    } else {
        state
    };
    if allow_warning && s == StateType::Warning {
        StateType::Success
    } else {
        s
    }
}

/// The delay before the next attempt, or `None` if the policy allows no more attempts.
/// `attempts` is the number of attempts made so far; `first_start` when the first one started.
pub fn retry_delay(
    retry: &Retry,
    attempts: u32,
    first_start: DateTime<Utc>,
    now: DateTime<Utc>,
    seed: &str,
) -> Option<chrono::Duration> {
    if let Some(max) = retry.max_attempts
        && attempts >= max
    {
        return None;
    }
    let to_chrono =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    let interval = retry.interval.as_ref().map(|d| to_chrono(d.duration()));
    let max_interval = retry.max_interval.as_ref().map(|d| to_chrono(d.duration()));
    let delay = match retry.retry_type {
        RetryType::Constant => interval.unwrap_or(chrono::Duration::zero()),
        RetryType::Exponential => {
            let base = interval.unwrap_or(chrono::Duration::seconds(1));
            let factor = retry.delay_factor.unwrap_or(2.0).max(1.0);
            let ms =
                base.num_milliseconds() as f64 * factor.powi(attempts.saturating_sub(1) as i32);
            let d = chrono::Duration::milliseconds(ms.min(i64::MAX as f64 / 2.0) as i64);
            match max_interval {
                Some(m) if d > m => m,
                _ => d,
            }
        }
        RetryType::Random => {
            let min = retry
                .min_interval
                .as_ref()
                .map(|d| to_chrono(d.duration()))
                .unwrap_or(chrono::Duration::zero());
            let max = max_interval.unwrap_or(min);
            let span = (max - min).num_milliseconds().max(0) as u64;
            // Deterministic pseudo-random pick (process must stay pure).
            let mut h = Sha256::new();
            h.update(seed.as_bytes());
            h.update(attempts.to_be_bytes());
            let d = h.finalize();
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            let r = u64::from_be_bytes(b);
            min + chrono::Duration::milliseconds(if span == 0 {
                0
            } else {
                (r % (span + 1)) as i64
            })
        }
    };
    if retry.max_attempts.is_none() && retry.max_duration.is_none() {
        // Kestra requires one of the limits; without any, retry once more at most... stay safe:
        // never retry forever.
        if attempts >= 1_000 {
            return None;
        }
    }
    if let Some(max) = &retry.max_duration {
        let limit = first_start + to_chrono(max.duration());
        if now + delay > limit {
            return None;
        }
    }
    Some(delay)
}
